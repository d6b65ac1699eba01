"""The Keras callbacks of a run: the monitored score, best model, early stop, plateau LR,
the epoch CSV row (persisted by checkpoint.Checkpoint), TensorBoard scalars, and the
mid-epoch checkpoints and graceful stop on SIGTERM/SIGINT (StepCheckpoint).
"""
from __future__ import annotations

import math
import os
import sys
import time

import keras
import tensorflow as tf

from utils.train.checkpoint import Checkpoint, save_model_files
from utils.train.interrupt import agree
from utils.train.optim import current_lr


def metric_names(metrics) -> list[str]:
    """Names, as fit logs them, of a compile() metrics list (strings or Metric objects)."""
    if not isinstance(metrics, (list, tuple)):
        return []  # a dict per output: names get output prefixes; the monitor is val_loss
    return [m if isinstance(m, str) else m.name for m in metrics]


def pick_monitor(model_metrics_names: list[str], head: str, validate: bool = True) -> tuple[str, str]:
    """The score that picks the best model and drives early stop and plateau.

    Single-output: the first compiled metric on validation (val_accuracy,
    val_f1...). Per-class heads have one metric per output: use val_loss.
    Without validation (no val split, --val-split none, --train-on-val): the
    training loss, the one training score that falls as the fit improves
    (training accuracy saturates and, under MixUp/CutMix, is not comparable).

    Returns:
        (log key, "max" or "min").
    """
    if not validate:
        return "loss", "min"
    if head != "per-class":
        for name in model_metrics_names:
            if name not in ("loss", "compile_metrics") and "loss" not in name:
                return "val_" + name, "max"
    return "val_loss", "min"


def improved(value: float | None, best: float | None, mode: str) -> bool:
    """Whether `value` beats `best` in `mode` ("max" or "min"); None and NaN never do."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    if best is None:
        return True
    return value > best if mode == "max" else value < best


class EpochEnd(keras.callbacks.Callback):
    """Everything that happens once per epoch, in a crash-safe order.

    1. score vs best -> save NAME.best.{h5,keras}; patience counters; plateau LR scale
    2. the epoch's CSV row, then the resume state (checkpoint.end_epoch)

    Args:
        checkpoint: the run's Checkpoint; its `run` record is read and updated here.
        cfg: the resolved config (schedule, plateau_patience, plateau_factor, early_stop).
        monitor, mode: from pick_monitor.
        best_base: model_save/NAME.best (the .h5 / .keras suffixes are added); None
            writes no best model (no validation: the last epoch is the model).
        scale: the LR schedule's plateau variable (optim.WarmupSchedule), or None.
    """

    def __init__(self, *, checkpoint: Checkpoint, cfg: dict, monitor: str, mode: str, best_base: str | None,
                 scale: keras.Variable | None):
        super().__init__()
        self.checkpoint, self.cfg, self.monitor, self.mode = checkpoint, cfg, monitor, mode
        self.best_base, self.scale = best_base, scale

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        run = self.checkpoint.run
        opt = self.model.optimizer
        run["epoch"] = epoch + 1
        value = logs.get(self.monitor)
        value = None if value is None else float(value)
        if improved(value, run.get("best"), self.mode):
            run.update(best=value, best_epoch=epoch + 1, wait=0, plateau_wait=0)
            if self.best_base is not None:
                save_model_files(self.model, self.best_base)
        else:
            run["wait"] = run.get("wait", 0) + 1
            run["plateau_wait"] = run.get("plateau_wait", 0) + 1
        if self.cfg["schedule"] == "plateau" and self.scale is not None \
                and run["plateau_wait"] >= self.cfg["plateau_patience"]:
            run["lr_scale"] = run.get("lr_scale", 1.0) * self.cfg["plateau_factor"]
            self.scale.assign(run["lr_scale"])
            run["plateau_wait"] = 0
        if self.cfg.get("early_stop") and run["wait"] >= self.cfg["early_stop"]:
            run["stopped"] = True
            self.model.stop_training = True

        row = {"epoch": epoch}
        row.update({k: _num(v) for k, v in sorted(logs.items()) if k not in ("learning_rate",)})
        row["lr"] = current_lr(opt)  # the LR the next step will use
        self.checkpoint.end_epoch(epoch, row, self.model, opt)


def _num(v):
    """A log value as a float where it is one (CSV cells, TensorBoard scalars)."""
    try:
        return float(v)
    except (TypeError, ValueError):
        return v


class ScalarLog(keras.callbacks.Callback):
    """TensorBoard scalars per epoch, written with TensorFlow core only.

    keras.callbacks.TensorBoard needs the `tensorboard` package (tf.summary.scalar
    lives there), which is not a dependency; `tf.summary.write` with the scalars
    plugin tag is core TF and gives the same event files: log_dir/train and
    log_dir/validation, tags "epoch_<metric>" as Keras names them.
    """

    def __init__(self, log_dir: str):
        super().__init__()
        self.log_dir = log_dir
        self._writers = {}

    def _writer(self, kind: str):
        if kind not in self._writers:
            self._writers[kind] = tf.summary.create_file_writer(os.path.join(self.log_dir, kind))
        return self._writers[kind]

    def on_epoch_end(self, epoch, logs=None):
        meta = tf.compat.v1.SummaryMetadata(plugin_data=tf.compat.v1.SummaryMetadata.PluginData(plugin_name="scalars"))
        logs = dict(logs or {}, learning_rate=current_lr(self.model.optimizer))
        for key, value in logs.items():
            kind, tag = ("validation", key[4:]) if key.startswith("val_") else ("train", key)
            value = _num(value)
            if not isinstance(value, float):
                continue
            with self._writer(kind).as_default():
                tf.summary.write("epoch_" + tag, tf.constant(value, tf.float32), step=epoch, metadata=meta)
        for w in self._writers.values():
            w.flush()

    def on_train_end(self, logs=None):
        for w in self._writers.values():
            w.close()
        self._writers = {}


class StepCheckpoint(keras.callbacks.Callback):
    """Mid-epoch resume state (every N steps, every M minutes) and the graceful stop.

    Placed after EpochEnd in the callback list: a stop asked during an epoch's last
    step or its validation is served at the epoch's end, once EpochEnd has written
    that epoch (there is no "validation half done" state to resume).

    The position comes from the optimizer's micro-step counter at fit's start
    (steps done in this phase) and is counted on from there, so it is right in
    a resumed phase and in the shortened first fit of a mid-epoch resume.

    Args:
        checkpoint: the run's Checkpoint (save_step writes the state).
        phase_start: the phase's first epoch, 0-based.
        steps: steps per epoch.
        every: write every N steps (0: never); minutes: when M minutes have passed
            since the last write (0: never).
        stop: the interrupt.StopRequest of the run.
        strategy: the run's tf.distribute strategy (workers agree on stopping).
        chief: only the chief writes the mid-epoch state and prints.
    """

    def __init__(self, *, checkpoint: Checkpoint, phase_start: int, steps: int, every: int, minutes: float,
                 stop, strategy, chief: bool):
        super().__init__()
        self.checkpoint, self.phase_start, self.steps = checkpoint, phase_start, steps
        self.every, self.seconds = int(every or 0), float(minutes or 0) * 60
        self.stop, self.strategy, self.chief = stop, strategy, chief
        self.done, self.last = 0, time.monotonic()

    def on_train_begin(self, logs=None):
        self.done = int(keras.ops.convert_to_numpy(self.model.optimizer._iterations))  # micro-steps
        self.last = time.monotonic()

    def on_train_batch_end(self, batch, logs=None):
        self.done += 1
        epoch, step = divmod(self.done, self.steps)
        if step == 0:  # the epoch's last step: EpochEnd writes, on_epoch_end stops
            return
        if agree(self.strategy, self.stop.requested):
            self._save(step)
            self._exit(self.phase_start + epoch + 1, step)
        due = (self.every and self.done % self.every == 0) or \
              (self.seconds and time.monotonic() - self.last >= self.seconds)
        if due:
            self._save(step)

    def on_epoch_end(self, epoch, logs=None):
        self.last = time.monotonic()  # EpochEnd has just written the state
        if agree(self.strategy, self.stop.requested):
            self._exit(epoch + 2, 0)  # epoch is 0-based and complete: the next one, at step 0

    def _save(self, step: int) -> None:
        if self.chief:  # reading mirrored variables is local: the others need not take part
            self.checkpoint.save_step(step, self.model, self.model.optimizer)
        self.last = time.monotonic()

    def _exit(self, epoch: int, step: int):
        """The stop line (epoch 1-based, as fit shows it) and exit 128 + signal."""
        if self.chief:
            print(f"interrupted: saved epoch {epoch} step {step} to {self.checkpoint.resume_dir}{os.sep} "
                  "(continue with --resume)", file=sys.stderr, flush=True)
        raise SystemExit(self.stop.code)
