"""Training machinery for train.py: strategy, LR schedule, optimizer, resume state, callbacks.

Resume design (why not keras.callbacks.BackupAndRestore): in Keras 3.15 it saves
the model weights and a separate epoch JSON non-atomically (a kill between the
two leaves them out of step), it restores only `fit`'s epoch counter (not our
best score, early-stopping patience, plateau LR scale or freeze/fine-tune phase)
and it knows nothing about our epoch CSV. So `EpochEnd` writes ONE file,
model_save/NAME.resume/state.npz, atomically (tmp + fsync + rename) at every
epoch end: all model variables, all optimizer variables (iteration counter,
moments, EMA and gradient accumulators included) and a JSON run state. The LR
schedule is a pure function of the optimizer's iteration counter (times a
plateau scale kept in the run state), so restoring the counter restores the
schedule position exactly (Keras issue 22010: a schedule held outside the
optimizer's variables is silently lost).

ReduceLROnPlateau vs schedules: Keras's callback assigns `optimizer.learning_rate`,
which a schedule does not have. Our rule: `--schedule plateau` is a constant
LR (after the linear warm-up) multiplied by `--plateau-factor` whenever the
validation score has not improved for `--plateau-patience` epochs; cosine and
step schedules never react to plateaus.

Multi-worker: every worker runs the same save calls (reading distributed
variables may need collectives on all workers), but only the chief writes
to model_save/ and log/; the others write into a throw-away temp dir.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import tempfile

import keras
import numpy as np
import tensorflow as tf

from utils.errors import UsageError
from utils.files import atomic_open, atomic_path, atomic_write_text

# ----------------------------------------------------------------- strategy


def tf_config() -> dict:
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except ValueError:
        raise UsageError("TF_CONFIG is not valid JSON") from None


def is_chief(cfg: dict | None = None) -> bool:
    """The chief is task 'chief', or worker 0 when the cluster has no chief."""
    cfg = tf_config() if cfg is None else cfg
    task = cfg.get("task") or {}
    if not task:
        return True
    cluster = cfg.get("cluster") or {}
    if task.get("type") == "chief":
        return True
    return task.get("type") == "worker" and int(task.get("index", 0)) == 0 and "chief" not in cluster


def make_strategy(name: str) -> tf.distribute.Strategy:
    """auto: MultiWorker when TF_CONFIG lists >1 worker, Mirrored with >1 GPU, else default."""
    cluster = tf_config().get("cluster") or {}
    workers = sum(len(v) for k, v in cluster.items() if k in ("chief", "worker"))
    if name == "auto":
        if workers > 1:
            name = "multiworker"
        else:
            name = "mirrored" if len(tf.config.list_physical_devices("GPU")) > 1 else "none"
    if name == "none":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":
        if not cluster:
            raise UsageError("--strategy multiworker needs TF_CONFIG with a cluster and this task")
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise UsageError(f"unknown strategy {name!r}")


def is_distributed(strategy) -> bool:
    return strategy.num_replicas_in_sync > 1 or isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def distributed_dataset(strategy, make, global_batch: int):
    """`make(batch_size, input_context)` -> tf.data.Dataset, distributed over replicas.

    The pipeline shards by file (or by record when files are too few) using the
    InputContext, so tf.data's autosharding never runs (and never warns).
    """
    if not is_distributed(strategy):
        return make(global_batch, None)

    def fn(ctx: tf.distribute.InputContext):
        return make(ctx.get_per_replica_batch_size(global_batch), ctx)

    return strategy.distribute_datasets_from_function(fn)


def fix_multiworker_build(model, strategy) -> None:
    """Work around two Keras 3.15 + MultiWorkerMirroredStrategy failures in fit().

    1. Before training, Keras's TF trainer takes one batch to build metrics and
       losses and, when its values are PerReplica, calls
       `strategy.reduce("MEAN", batch)` on the whole (images, labels) tuple,
       which the multi-worker cross-device reduce cannot convert ("unsupported
       type PerReplica"; cf. keras-team/keras#20329). Only shapes and dtypes
       matter for that build, so an instance-level override uses the first
       local replica's values instead.
    2. Per-step logs are reduced with a hard-coded
       `strategy.reduce("MEAN", v, axis=0)`, which fails on scalar metrics
       ("Invalid reduction dimension 0"; tensorflow/tensorflow#72388). The step
       logs are given shape [1] so that reduce works (a mean over workers).
       The EPOCH logs (what our callbacks, CSV and best-model choice use) do
       not depend on this: Keras re-reads them from the metric variables in
       cross-replica context, where sync-on-read variables sum over all
       workers, so they are exact global values.
    """
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return

    def local(x):
        if isinstance(x, tf.distribute.DistributedValues):
            return strategy.experimental_local_results(x)[0]
        return x

    def maybe_symbolic_build(iterator=None, data_batch=None):
        if iterator is not None:
            for _, _, it in iterator:
                data_batch = tf.nest.map_structure(local, next(it))
                break
        with strategy.scope():
            model._symbolic_build(data_batch=data_batch)

    def rank1(step):
        def wrapped(data):
            return {k: tf.reshape(v, [1]) if tf.is_tensor(v) and v.shape.rank == 0 else v
                    for k, v in step(data).items()}
        return wrapped

    model._maybe_symbolic_build = maybe_symbolic_build
    model.train_step = rank1(model.train_step)
    model.test_step = rank1(model.test_step)


def worker_dir(base: str, chief: bool) -> str:
    """Where this worker writes: `base` on the chief, a temp dir elsewhere."""
    if chief:
        return base
    return tempfile.mkdtemp(prefix="imgcls-worker-")


# ----------------------------------------------------------------- LR schedule


class WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """lr(step) = peak * warm-up(step) * shape(step) * scale, step = optimizer micro-step.

    A pure function of the optimizer's iteration counter, so restoring the
    counter restores the position. `scale` is a variable the plateau rule
    lowers; its value is kept in the resume state.
    """

    def __init__(self, peak: float, total_steps: int, warmup_steps: int = 0, kind: str = "cosine",
                 step_every: int = 1, step_gamma: float = 0.1, scale: keras.Variable | None = None):
        self.peak = float(peak)
        self.total_steps = max(1, int(total_steps))
        self.warmup_steps = max(0, int(warmup_steps))
        self.kind = kind
        self.step_every = max(1, int(step_every))
        self.step_gamma = float(step_gamma)
        self.scale = scale

    def __call__(self, step):
        ops = keras.ops
        step = ops.cast(step, "float32")
        lr = ops.convert_to_tensor(self.peak, "float32")
        if self.warmup_steps:
            lr = lr * ops.minimum(1.0, (step + 1.0) / float(self.warmup_steps))
        after = ops.maximum(0.0, step - float(self.warmup_steps))
        if self.kind == "cosine":
            span = float(max(1, self.total_steps - self.warmup_steps))
            progress = ops.minimum(1.0, after / span)
            lr = lr * 0.5 * (1.0 + ops.cos(math.pi * progress))
        elif self.kind == "step":
            lr = lr * ops.power(self.step_gamma, ops.floor(after / float(self.step_every)))
        if self.scale is not None:
            lr = lr * ops.cast(self.scale, "float32")
        return lr

    def get_config(self):
        return {"peak": self.peak, "total_steps": self.total_steps, "warmup_steps": self.warmup_steps,
                "kind": self.kind, "step_every": self.step_every, "step_gamma": self.step_gamma}


def make_schedule(cfg: dict, peak: float, epochs: int, steps_per_epoch: int, scale=None) -> WarmupSchedule:
    """cfg's schedule over `epochs` epochs of `steps_per_epoch` micro-steps each."""
    step_epochs = cfg.get("step_epochs") or max(1, epochs // 3)
    return WarmupSchedule(
        peak, total_steps=epochs * steps_per_epoch,
        warmup_steps=round(cfg.get("lr_warmup_epochs", 0) * steps_per_epoch),
        kind=cfg["schedule"], step_every=step_epochs * steps_per_epoch,
        step_gamma=cfg.get("step_gamma", 0.1), scale=scale)


def make_optimizer(cfg: dict, learning_rate) -> keras.optimizers.Optimizer:
    wd = cfg.get("weight_decay")
    if wd is None:
        wd = 0.004 if cfg["optimizer"] == "adamw" else 0.0
    common = dict(learning_rate=learning_rate, weight_decay=wd or None, use_ema=bool(cfg.get("ema")),
                  gradient_accumulation_steps=cfg["accum_steps"] if cfg.get("accum_steps", 1) > 1 else None)
    if cfg["optimizer"] == "sgd":
        opt = keras.optimizers.SGD(momentum=cfg.get("momentum", 0.9), **common)
    elif cfg["optimizer"] == "adam":
        opt = keras.optimizers.Adam(**common)
    elif cfg["optimizer"] == "adamw":
        opt = keras.optimizers.AdamW(**common)
    else:
        raise UsageError(f"unknown optimizer {cfg['optimizer']!r}")
    if wd:
        # decay the kernels only: shrinking biases and BatchNorm scales just hurts
        opt.exclude_from_weight_decay(var_names=["bias", "gamma", "beta", "moving_"])
    return opt


def current_lr(optimizer) -> float:
    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))


def iterations(optimizer) -> int:
    return int(keras.ops.convert_to_numpy(optimizer.iterations))


# ----------------------------------------------------------------- resume state

STATE_FILE = "state.npz"


def save_state(resume_dir: str, model, optimizer, run: dict) -> str:
    """Model + optimizer variables + run state -> resume_dir/state.npz, atomically."""
    os.makedirs(resume_dir, exist_ok=True)
    arrays = {f"m{i:05d}": np.asarray(v.numpy()) for i, v in enumerate(model.weights)}
    arrays.update({f"o{i:05d}": np.asarray(v.numpy()) for i, v in enumerate(optimizer.variables)})
    arrays["run"] = np.array(json.dumps(run))
    path = os.path.join(resume_dir, STATE_FILE)
    with atomic_open(path, "wb") as f:
        np.savez(f, **arrays)
    return path


def load_state(resume_dir: str) -> dict | None:
    """{'run': dict, 'model': [arrays], 'optimizer': [arrays]} or None when there is none."""
    path = os.path.join(resume_dir, STATE_FILE)
    if not os.path.isfile(path):
        return None
    with np.load(path, allow_pickle=False) as z:
        keys = sorted(z.files)
        return {"run": json.loads(str(z["run"])),
                "model": [z[k] for k in keys if k.startswith("m")],
                "optimizer": [z[k] for k in keys if k.startswith("o")]}


def assign_all(variables, arrays, what: str) -> None:
    if len(variables) != len(arrays):
        raise UsageError(f"resume state does not fit this run ({what}: {len(arrays)} saved vs {len(variables)} "
                         "variables): drop --resume or delete the .resume folder")
    for v, a in zip(variables, arrays):
        if tuple(v.shape) != tuple(a.shape):
            raise UsageError(f"resume state does not fit this run ({what} {v.path}: {a.shape} vs {tuple(v.shape)})")
    for v, a in zip(variables, arrays):
        v.assign(a)


def restore_model(model, saved: dict) -> None:
    assign_all(model.weights, saved["model"], "model")


def restore_optimizer(model, optimizer, saved: dict) -> None:
    """Build the optimizer's slots for the current trainable set, then overwrite them."""
    if not optimizer.built:
        optimizer.build(model.trainable_variables)
    assign_all(optimizer.variables, saved["optimizer"], "optimizer")


# ----------------------------------------------------------------- saving


def inference_view(model):
    """The same layers as an uncompiled functional model (no optimizer, losses, schedule).

    Saved files then load with nothing but `import model`, whatever training
    objects were used; a dict of outputs stays a dict.
    """
    try:
        return keras.Model(model.inputs, model.output, name=model.name)
    except (AttributeError, ValueError):
        return model


def save_model_files(model, base: str) -> list[str]:
    """base.h5 and base.keras, each written under a temp name and renamed into place."""
    import logging

    view = inference_view(model)
    folder, stem = os.path.split(base)
    written = []
    quiet = _DropMessage("saving your model as an HDF5 file")  # .h5 is in our contract on purpose
    logging.getLogger("absl").addFilter(quiet)
    try:
        for ext in (".h5", ".keras"):
            # Keras picks the format from the extension, so the temp name keeps it
            with atomic_path(base + ext, tmp_suffix=f".tmp{ext}") as tmp:
                view.save(tmp)
            written.append(base + ext)
    finally:
        logging.getLogger("absl").removeFilter(quiet)
    return written


class _DropMessage:
    def __init__(self, text: str):
        self.text = text

    def filter(self, record) -> bool:
        return self.text not in record.getMessage()


# ----------------------------------------------------------------- epoch CSV


def read_csv_rows(path: str) -> list[dict]:
    if not os.path.isfile(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_csv_rows(path: str, rows: list[dict]) -> None:
    """Rewrite the whole (small) CSV atomically; columns = union in first-seen order."""
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, restval="", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def rows_up_to(rows: list[dict], n: int) -> list[dict]:
    """Rows of the first `n` epochs, the last one kept per epoch (a resumed run rewrites).

    The "epoch" column counts from 0, as keras.callbacks.CSVLogger does (and
    utils.plots.save_history_plot expects).
    """
    by_epoch = {}
    for r in rows:
        e = int(float(r["epoch"]))
        if e < n:
            by_epoch[e] = r
    return [by_epoch[e] for e in sorted(by_epoch)]


# ----------------------------------------------------------------- monitor


def metric_names(metrics) -> list[str]:
    """Names, as fit logs them, of a compile() metrics list (strings or Metric objects)."""
    if not isinstance(metrics, (list, tuple)):
        return []  # a dict per output: names get output prefixes; the monitor is val_loss
    return [m if isinstance(m, str) else m.name for m in metrics]


def pick_monitor(model_metrics_names: list[str], head: str) -> tuple[str, str]:
    """(log key, 'max'|'min') for best checkpoint, early stop and plateau.

    Single-output: the first compiled metric on validation (val_accuracy,
    val_f1...). Per-class heads have one metric per output: use val_loss.
    """
    if head != "per-class":
        for name in model_metrics_names:
            if name not in ("loss", "compile_metrics") and "loss" not in name:
                return "val_" + name, "max"
    return "val_loss", "min"


def improved(value: float, best: float | None, mode: str) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    if best is None:
        return True
    return value > best if mode == "max" else value < best


# ----------------------------------------------------------------- epoch-end callback


class EpochEnd(keras.callbacks.Callback):
    """Everything that happens once per epoch, in a crash-safe order.

    1. score vs best -> save NAME.best.{h5,keras}; patience counters; plateau LR scale
    2. the epoch's CSV row (whole file rewritten; "epoch" from 0 like CSVLogger)
    3. the resume state (last, so state epoch N implies steps 1-2 of epoch N are done)

    `run` (a plain dict) is the state that survives --resume: epoch (epochs
    completed), phase, best, best_epoch (1-based), wait, plateau_wait, lr_scale,
    stopped, iterations (optimizer steps in this phase).
    """

    def __init__(self, *, run: dict, cfg: dict, monitor: str, mode: str, csv_path: str, rows: list[dict],
                 best_base: str, resume_dir: str, scale: keras.Variable | None, on_best=None):
        super().__init__()
        self.run, self.cfg, self.monitor, self.mode = run, cfg, monitor, mode
        self.csv_path, self.rows, self.best_base, self.resume_dir = csv_path, rows, best_base, resume_dir
        self.scale, self.on_best = scale, on_best

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        opt = self.model.optimizer
        self.run["epoch"] = epoch + 1
        value = logs.get(self.monitor)
        value = None if value is None else float(value)
        if improved(value, self.run.get("best"), self.mode):
            self.run.update(best=value, best_epoch=epoch + 1, wait=0, plateau_wait=0)
            save_model_files(self.model, self.best_base)
            if self.on_best:
                self.on_best(self.run)
        else:
            self.run["wait"] = self.run.get("wait", 0) + 1
            self.run["plateau_wait"] = self.run.get("plateau_wait", 0) + 1
        if self.cfg["schedule"] == "plateau" and self.scale is not None \
                and self.run["plateau_wait"] >= self.cfg["plateau_patience"]:
            self.run["lr_scale"] = self.run.get("lr_scale", 1.0) * self.cfg["plateau_factor"]
            self.scale.assign(self.run["lr_scale"])
            self.run["plateau_wait"] = 0
        if self.cfg.get("early_stop") and self.run["wait"] >= self.cfg["early_stop"]:
            self.run["stopped"] = True
            self.model.stop_training = True

        row = {"epoch": epoch}
        row.update({k: _num(v) for k, v in sorted(logs.items()) if k not in ("learning_rate",)})
        row["lr"] = current_lr(opt)  # the LR the next step will use
        self.run["iterations"] = iterations(opt)
        self.rows[:] = rows_up_to(self.rows, epoch) + [row]
        write_csv_rows(self.csv_path, self.rows)
        save_state(self.resume_dir, self.model, opt, self.run)


def _num(v):
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
            try:
                value = float(value)
            except (TypeError, ValueError):
                continue
            with self._writer(kind).as_default():
                tf.summary.write("epoch_" + tag, tf.constant(value, tf.float32), step=epoch, metadata=meta)
        for w in self._writers.values():
            w.flush()

    def on_train_end(self, logs=None):
        for w in self._writers.values():
            w.close()
        self._writers = {}


def remove_dir(path: str) -> None:
    """The resume folder once a run is complete; a non-chief worker's temp dirs."""
    shutil.rmtree(path, ignore_errors=True)
