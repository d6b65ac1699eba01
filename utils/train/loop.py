"""One training run: datasets (utils.train.data), model, its phases fitted in turn, the saved artefacts.

    cfg = config.resolve(...)    # train.py
    out = loop.run(cfg)

The order matters in three places: the strategy is created before any other
TensorFlow work (MultiWorkerMirroredStrategy requires it); --resume settings are
checked before the datasets and the model are built; the resume state goes only
once every artefact is written, so a crash at any point leaves a run that
--resume can finish.

Without validation (no val split, --val-split none, --train-on-val) the training
loss is the monitor and the last epoch is the model (no NAME.best.*).
"""
from __future__ import annotations

import contextlib
import math
import os
import sys
import warnings
from dataclasses import dataclass

import keras
import tensorflow as tf

from model import build, heads, losses, metrics, registry
from model.meta import save_meta
from utils.input.corruption import explain_data_error
from utils.input.pipeline import dataset_info
from utils.input.records import decode_failures
from utils.plots import save_history_plot
from utils.train import augment_step, config, distribute, hard, lr_finder, optim
from utils.train.callbacks import EpochEnd, ScalarLog, StepCheckpoint, metric_names, pick_monitor
from utils.train.data import make_datasets, split_sizes, without_validation
from utils.train.checkpoint import Checkpoint, read_csv_rows, remove_dir, run_lock, save_model_files
from utils.train.interrupt import catch_signals
from utils.train.phases import Phase, plan_phases, schedule_parts
from utils.train.preview import save_preview
from utils.train.report import write_run_report
from utils.train.progressive import WarpedSchedule, carry_optimizer, model_size, optimizer_arrays, rebuild


@dataclass(frozen=True)
class RunPaths:
    """Where a run writes; a non-chief worker's folders are throw-away temp dirs.

    Attributes:
        base: model_save/NAME, the stem of NAME.h5, NAME.keras, NAME.best.*, NAME.json.
        log_dir: log/NAME (epochs.csv, curves.png, TensorBoard events, preview.png).
    """

    name: str
    save_dir: str
    log_dir: str
    chief: bool

    @property
    def base(self) -> str:
        return os.path.join(self.save_dir, self.name)

    @property
    def resume_dir(self) -> str:
        return self.base + ".resume"

    @property
    def csv_path(self) -> str:
        return os.path.join(self.log_dir, "epochs.csv")


def run_paths(out: str, chief: bool) -> RunPaths:
    """The folders for --out (NAME.h5 or NAME.keras), created."""
    stem = out[: -len(".keras")] if out.endswith(".keras") else out[: -len(".h5")]
    name = os.path.basename(stem)
    paths = RunPaths(name, distribute.worker_dir(os.path.dirname(stem) or ".", chief),
                     distribute.worker_dir(os.path.join("log", name), chief), chief)
    os.makedirs(paths.save_dir, exist_ok=True)
    os.makedirs(paths.log_dir, exist_ok=True)
    return paths


def phase_schedule(cfg: dict, phases: list[Phase], phase: Phase, steps_of, scale):
    """One LR schedule over all parts of `phase`'s named phase (progressive sizes share it).

    Parts with other steps per epoch (--progressive-batch) move it by epochs (WarpedSchedule).
    """
    parts = schedule_parts(phases, phase)
    ref = steps_of(parts[-1])
    schedule = optim.make_schedule(cfg, phase.peak_lr(cfg["lr"]), sum(p.epochs for p in parts), ref, scale=scale)
    counts = [(p.epochs, steps_of(p)) for p in parts]
    return schedule if all(s == ref for _, s in counts) else WarpedSchedule(schedule, counts, ref)


def run(cfg: dict) -> dict:
    """The whole run for a config from config.resolve.

    Returns:
        with --preview {"preview": PNG path, "chief"}; with --find-lr {"find_lr":
        lr_finder.find_lr's result, "chief"}; else {"model", "run" (the run
        record), "monitor", "validate", "last_loss", "base" (model_save/NAME),
        "log_dir", "chief", "config" (resolved)}.
    """
    spec = registry.get(cfg["model"])
    strategy = distribute.make_strategy(cfg["strategy"])  # first: MultiWorker must exist before other TF work
    info = dataset_info(cfg["data"])
    cfg = config.resolve_run(cfg, info, spec)
    cfg = augment_step.resolve_placement(cfg, distribute.is_chief())  # --augment-on's default needs TF
    sizes = split_sizes(cfg, info)
    paths = run_paths(cfg["out"], distribute.is_chief())
    with contextlib.ExitStack() as held:  # one writer per output; SIGTERM/SIGINT stop after a step
        if paths.chief:
            held.enter_context(run_lock(paths.log_dir, paths.base))
        else:  # its throw-away dirs go on an interrupt too
            held.callback(remove_dir, paths.log_dir)
            held.callback(remove_dir, paths.save_dir)
        stop = held.enter_context(catch_signals())
        try:
            return train_locked(cfg, spec, strategy, info, paths, sizes, stop)
        except tf.errors.DataLossError as e:   # a corrupted shard: one line naming it, not a traceback
            raise explain_data_error(e, cfg["data"]) from None


def train_locked(cfg: dict, spec, strategy, info: dict, paths: RunPaths, sizes: tuple, stop) -> dict:
    """run() once it holds the outputs' lock; `stop` is the interrupt.StopRequest."""
    n_train, n_val, train_classes, val_classes = sizes
    if cfg["preview"]:
        return {"preview": save_preview(cfg, info, paths.log_dir), "chief": paths.chief}
    no_val = without_validation(cfg, n_val)
    validate = no_val is None
    mixed = bool(cfg["train_on_val"] and n_val)
    if mixed:
        train_classes = [a + b for a, b in zip(train_classes, val_classes)]
    if no_val and paths.chief and not cfg["find_lr"]:
        print(f"note: {no_val}: training without validation; --early-stop and the plateau schedule watch the "
              f"training loss, and the model is the last epoch: {paths.base}.h5 (no .best)", file=sys.stderr)

    keras.utils.set_random_seed(cfg["seed"])
    if cfg["mixed_precision"]:
        distribute.use_mixed_precision()
    checkpoint = Checkpoint(paths.resume_dir, paths.csv_path, cfg, chief=paths.chief)
    checkpoint.load(share=lambda raw: distribute.from_chief(strategy, raw))  # multi-worker: the chief's, on all

    phases = plan_phases(cfg, strategy.num_replicas_in_sync)
    n_fit = n_train + (n_val if mixed else 0)
    distributed = distribute.is_distributed(strategy)

    def batch_of(p: Phase) -> int:
        return p.batch_size or cfg["batch_size"]

    def steps_of(p: Phase) -> int:
        return cfg["steps_per_epoch"] or max(1, math.ceil(n_fit / batch_of(p)))

    def val_steps_of(p: Phase) -> int | None:
        return cfg["val_steps"] or (math.ceil(n_val / batch_of(p)) if distributed and validate else None)

    out_names = heads.output_names(cfg["head"], info["num_classes"], info["class_names"])
    mix = hard.prepare(cfg, paths.chief)  # --hard-examples: hard records drawn more often
    datasets = {}

    def data_for(p: Phase, strat=strategy):
        key = (p.image_size, batch_of(p), strat is strategy)
        if key not in datasets:
            datasets[key] = make_datasets(cfg, info, strat, p, out_names, val_repeat=distributed, validate=validate,
                                          counts=(n_train, n_val) if mixed else None, records_fn=mix)
        return datasets[key]

    def train_after(p: Phase, steps_done: int):   # the phase's train stream after `steps_done` steps
        return make_datasets(cfg, info, strategy, p, out_names, val_repeat=distributed, validate=False,
                             counts=(n_train, n_val) if mixed else None, steps_done=steps_done,
                             records_fn=mix)[0]

    def build_at(size: int, weights: str = "none"):
        with strategy.scope():
            m = build.build_model(spec.name, info["num_classes"], input_size=(size,) * 2, channels=info["channels"],
                                  weights=weights, head=cfg["head"], dropout=cfg["dropout"], head_bn=cfg["head_bn"],
                                  class_names=info["class_names"])
        distribute.fix_multiworker_build(m, strategy)
        augment_step.attach(m, cfg, strategy, size, info["channels"])  # --augment-on device: in the step
        return m

    model = build_at(phases[0].image_size, cfg["weights"])
    with strategy.scope():
        scale = keras.Variable(1.0, trainable=False, name="lr_scale", dtype="float32")
    class_w = losses.class_weights(train_classes, cfg["class_weights"], num_samples=n_fit,
                                   class_names=info["class_names"], multi_label=cfg["head"] != "softmax")
    loss, loss_weights = losses.make_loss(cfg["head"], info["num_classes"], out_names, class_weights=class_w,
                                          label_smoothing=cfg["label_smoothing"], focal=cfg["focal"],
                                          focal_gamma=cfg["focal_gamma"], ohem=cfg["ohem"])

    def compile_phase(p: Phase, learning_rate):
        with strategy.scope():
            build.set_trainable(model, p.layers)
            optimizer = optim.make_optimizer(cfg, learning_rate)
            model.compile(optimizer=optimizer, loss=loss, loss_weights=loss_weights, jit_compile=cfg["jit"],
                          metrics=metrics.make_metrics(cfg["head"], info["num_classes"], out_names))
            if not distributed:  # a strategy has Keras build them itself, from a real batch
                build.build_training_state(model, data_for(p)[0].element_spec)
        return optimizer

    if cfg["find_lr"]:  # the first phase's layers, size and batch; one process, no strategy
        compile_phase(phases[0], config.parse_lr_range(cfg["find_lr_range"])[0])
        found = lr_finder.find_lr(model, data_for(phases[0], distribute.make_strategy("none"))[0], cfg,
                                  paths.log_dir)
        return {"find_lr": found, "chief": paths.chief}

    monitor, mode = pick_monitor(metric_names(metrics.make_metrics(cfg["head"], info["num_classes"], out_names)),
                                 cfg["head"], validate)
    checkpoint.restore(model, scale)

    prev = None  # (name, optimizer) of the part fitted just before in this process
    for phase in phases:
        if checkpoint.run["epoch"] >= phase.end or checkpoint.run["stopped"]:
            continue
        if model_size(model) != phase.image_size:  # a progressive size change (or a resume into one)
            model = rebuild(model, build_at, phase.image_size)
        carried = optimizer_arrays(prev[1]) if prev and prev[0] == phase.name else None
        optimizer = compile_phase(phase, phase_schedule(cfg, phases, phase, steps_of, scale))
        with strategy.scope():
            if carried is not None:  # the same named phase at a new size: its optimizer runs on
                carry_optimizer(model, optimizer, carried)
            else:
                checkpoint.restore_phase_optimizer(phase.name, model, optimizer)
        checkpoint.enter_phase(phase.name, scale)
        if cfg["progressive"] and paths.chief:
            print(f"progressive: epochs {checkpoint.run['epoch'] + 1}-{phase.end} at {phase.image_size} px, "
                  f"batch {batch_of(phase)}", file=sys.stderr)
        callbacks = [EpochEnd(checkpoint=checkpoint, cfg=cfg, monitor=monitor, mode=mode,
                              best_base=paths.base + ".best" if validate else None, scale=scale),
                     ScalarLog(paths.log_dir),
                     StepCheckpoint(checkpoint=checkpoint, phase_start=phase.start, steps=steps_of(phase),
                                    every=cfg["checkpoint_every"], minutes=cfg["checkpoint_minutes"], stop=stop,
                                    strategy=strategy, chief=paths.chief)]
        fit_phase(model, phase, data_for(phase), steps=steps_of(phase), val_steps=val_steps_of(phase),
                  initial_epoch=checkpoint.run["epoch"], callbacks=callbacks, chief=paths.chief,
                  first_step=checkpoint.run["step"], restart=lambda done, p=phase: train_after(p, done))
        prev = (phase.name, optimizer)

    if model_size(model) != cfg["image_size"]:  # early stop or resume before the final size: saved at it
        model = rebuild(model, build_at, cfg["image_size"])
    save_artefacts(model, cfg, info, spec, paths, checkpoint.run, monitor, out_names, validate)
    if decode_failures() and paths.chief:
        print(f"note: {decode_failures()} record(s) could not be decoded and were skipped "
              f"(check with: python generate_dataset.py verify {cfg['data']})", file=sys.stderr)
    last = checkpoint.rows[-1].get("loss") if checkpoint.rows else None
    checkpoint.finish()
    if not paths.chief:
        remove_dir(paths.save_dir)
        remove_dir(paths.log_dir)
    return {"model": model, "run": checkpoint.run, "monitor": monitor, "validate": validate,
            "last_loss": None if last is None else float(last), "base": paths.base,
            "log_dir": paths.log_dir, "chief": paths.chief, "config": cfg}


def fit_phase(model, phase: Phase, datasets, *, steps: int, val_steps: int | None, initial_epoch: int,
              callbacks: list, chief: bool, first_step: int = 0, restart=None) -> None:
    """model.fit over the phase's epochs, from `initial_epoch` (later than phase.start on --resume).

    Args:
        first_step: steps of epoch `initial_epoch` already done (a mid-epoch --resume).
        restart: `restart(steps_done)` -> the train stream after that many of the
            phase's steps; used when resuming inside the phase, so that no record
            is repeated or skipped. A mid-epoch resume fits the rest of that epoch
            (its train metrics cover those steps only), then the other epochs.
    """
    train_ds, val_ds = datasets
    epoch = initial_epoch
    if restart is not None and (first_step or epoch > phase.start):
        train_ds = restart((epoch - phase.start) * steps + first_step)
    with warnings.catch_warnings():
        # The val set is read to its end each epoch (its length is unknown: bad records are
        # skipped), which Keras reports as "ran out of data"; train data repeats forever.
        warnings.filterwarnings("ignore", message="Your input ran out of data")

        def fit(data, end, start, n):
            model.fit(data, epochs=end, initial_epoch=start, steps_per_epoch=n, shuffle=False,
                      validation_data=val_ds, validation_steps=val_steps, callbacks=callbacks,
                      verbose=(1 if sys.stdout.isatty() else 2) if chief else 0)

        if first_step and restart is not None:
            fit(train_ds, epoch + 1, epoch, steps - first_step)
            epoch += 1
            if epoch >= phase.end or model.stop_training:
                return
            train_ds = restart((epoch - phase.start) * steps)
        fit(train_ds, phase.end, epoch, steps)


def save_artefacts(model, cfg: dict, info: dict, spec, paths: RunPaths, run: dict, monitor: str,
                   out_names: list[str], validate: bool = True) -> None:
    """NAME.h5/.keras (+ .best.* when no epoch scored), NAME.config.yaml, NAME.json, curves.png.

    Without validation there is no .best: the last epoch is the model.

    Every worker runs these calls (reading distributed variables may need all of
    them); only the chief's land in model_save/ and log/.
    """
    base = paths.base
    save_model_files(model, base)
    if validate and run["best_epoch"] is None:  # nothing scored (NaN loss): the last model is also "best"
        save_model_files(model, base + ".best")
    config.save_yaml(cfg, base + ".config.yaml")
    save_meta(base + ".h5", {
        "name": paths.name, "architecture": spec.name, "class_names": info["class_names"],
        "readable_names": info.get("readable_names"), "input_size": [cfg["image_size"]] * 2,
        "channels": info["channels"], "planes": info.get("planes", 1), "preprocess": spec.preprocess,
        "head": cfg["head"], "multi_label": bool(info["multi_label"]), "outputs": out_names, "thresholds": None,
        "dataset": cfg["data"], "config": cfg,
        "history": {"best_epoch": run["best_epoch"] if validate else None, "validation": validate,
                    "val_metric": monitor if validate else None, "val_score": run["best"] if validate else None,
                    "epochs_run": run["epoch"], "iterations": run["iterations"],
                    "early_stopped": bool(run["stopped"])}})
    if os.path.exists(paths.csv_path):
        save_history_plot(paths.csv_path, os.path.join(paths.log_dir, "curves.png"))
    write_run_report(paths.log_dir, paths.name, cfg, run, monitor, read_csv_rows(paths.csv_path),
                     os.path.join(paths.log_dir, "curves.png"))
