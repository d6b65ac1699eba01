"""One training run: datasets, model, its phases fitted in turn, the saved artefacts.

    cfg = config.resolve(...)    # train.py
    out = loop.run(cfg)

The order matters in three places: the strategy is created before any other
TensorFlow work (MultiWorkerMirroredStrategy requires it); --resume settings are
checked before the datasets and the model are built; the resume state goes only
once every artefact is written, so a crash at any point leaves a run that
--resume can finish.
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
from utils.dataset.manifest import class_counts, load_manifest, select_shards, split_count
from utils.errors import DatasetError
from utils.input.corruption import explain_data_error
from utils.input.pipeline import dataset_info, decode_failures, make_dataset
from utils.plots import save_history_plot
from utils.train import config, distribute, hard, optim
from utils.train.callbacks import EpochEnd, ScalarLog, StepCheckpoint, metric_names, pick_monitor
from utils.train.checkpoint import Checkpoint, read_csv_rows, remove_dir, run_lock, save_model_files
from utils.train.interrupt import catch_signals
from utils.train.phases import Phase, plan_phases
from utils.train.preview import save_preview
from utils.train.report import write_run_report


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


def split_sizes(cfg: dict, info: dict) -> tuple[int, int, list[int]]:
    """(train count, val count, train class counts) of --data (and --fold).

    Raises:
        DatasetError: the train or val split is missing or empty.
    """
    manifest = load_manifest(cfg["data"])
    counts = []
    for split in ("train", "val"):
        shards = select_shards(manifest, cfg["data"], split, cfg["fold"])
        n = split_count(shards)
        if n == 0:
            hint = f" for fold {cfg['fold']}" if cfg["fold"] is not None else " (rebuild with a validation fraction or use --fold)"
            raise DatasetError(f"{cfg['data']} has no {split} records{hint}")
        counts.append(n)
        if split == "train":
            train_classes = class_counts(shards, info["num_classes"])
    return counts[0], counts[1], train_classes


def _common(cfg: dict, info: dict, image_size: int, out_names: list[str]) -> dict:
    return dict(image_size=(image_size, image_size), head=cfg["head"], output_names=out_names,
                channels=info["channels"], fold=cfg["fold"], seed=cfg["seed"])


def skip_records(steps_done: int, batch: int, ctx) -> int:
    """Records one input pipeline has given after `steps_done` steps of per-replica `batch`.

    A pipeline feeds num_replicas_in_sync / num_input_pipelines replicas, one batch each per step.
    """
    per_step = 1 if ctx is None else ctx.num_replicas_in_sync // ctx.num_input_pipelines
    return int(steps_done) * int(batch) * max(1, per_step)


def make_train_dataset(cfg: dict, info: dict, strategy, image_size: int, out_names: list[str],
                       steps_done: int = 0, records_fn=None):
    """The repeating train stream of a phase, positioned after `steps_done` of its steps (--resume)."""
    common = _common(cfg, info, image_size, out_names)
    return distribute.distributed_dataset(strategy, lambda batch, ctx: make_dataset(
        cfg["data"], "train", batch_size=batch, training=True, augment=cfg["augment"], cache=cfg["cache"],
        shuffle_buffer=cfg["shuffle_buffer"], repeat=True, drop_remainder=True, input_context=ctx,
        skip=skip_records(steps_done, batch, ctx), records_fn=records_fn, **common), cfg["batch_size"])


def make_datasets(cfg: dict, info: dict, strategy, image_size: int, out_names: list[str], val_repeat: bool,
                  records_fn=None):
    """(train, val) datasets at `image_size`, distributed over the strategy's replicas.

    The train set repeats (fit runs a fixed number of steps per epoch, so the LR
    schedule knows its length); val is read to its end each epoch, or repeated for
    a fixed --val-steps when distributed (every replica must run the same steps).
    """
    common = _common(cfg, info, image_size, out_names)
    train = make_train_dataset(cfg, info, strategy, image_size, out_names, records_fn=records_fn)
    val = distribute.distributed_dataset(strategy, lambda batch, ctx: make_dataset(
        cfg["data"], "val", batch_size=batch, training=False, repeat=val_repeat, input_context=ctx, **common),
        cfg["batch_size"])
    return train, val


def run(cfg: dict) -> dict:
    """The whole run for a config from config.resolve.

    Returns:
        with --preview {"preview": PNG path, "chief"}; else {"model", "run" (the
        run record), "monitor", "base" (model_save/NAME), "log_dir", "chief",
        "config" (resolved)}.
    """
    spec = registry.get(cfg["model"])
    strategy = distribute.make_strategy(cfg["strategy"])  # first: MultiWorker must exist before other TF work
    info = dataset_info(cfg["data"])
    cfg = config.resolve_run(cfg, info, spec)
    n_train, n_val, train_classes = split_sizes(cfg, info)
    paths = run_paths(cfg["out"], distribute.is_chief())
    with contextlib.ExitStack() as held:  # one writer per output; SIGTERM/SIGINT stop after a step
        if paths.chief:
            held.enter_context(run_lock(paths.log_dir, paths.base))
        else:  # its throw-away dirs go on an interrupt too
            held.callback(remove_dir, paths.log_dir)
            held.callback(remove_dir, paths.save_dir)
        stop = held.enter_context(catch_signals())
        try:
            return train_locked(cfg, spec, strategy, info, paths, (n_train, n_val, train_classes), stop)
        except tf.errors.DataLossError as e:   # a corrupted shard: one line naming it, not a traceback
            raise explain_data_error(e, cfg["data"]) from None


def train_locked(cfg: dict, spec, strategy, info: dict, paths: RunPaths, sizes: tuple, stop) -> dict:
    """run() once it holds the outputs' lock; `stop` is the interrupt.StopRequest."""
    n_train, n_val, train_classes = sizes
    if cfg["preview"]:
        return {"preview": save_preview(cfg, info, paths.log_dir), "chief": paths.chief}

    keras.utils.set_random_seed(cfg["seed"])
    if cfg["mixed_precision"]:
        distribute.use_mixed_precision()
    checkpoint = Checkpoint(paths.resume_dir, paths.csv_path, cfg)
    checkpoint.load()

    phases = plan_phases(cfg)
    steps = cfg["steps_per_epoch"] or max(1, math.ceil(n_train / cfg["batch_size"]))
    distributed = distribute.is_distributed(strategy)
    val_steps = cfg["val_steps"] or (math.ceil(n_val / cfg["batch_size"]) if distributed else None)
    out_names = heads.output_names(cfg["head"], info["num_classes"], info["class_names"])
    mix = hard.prepare(cfg, paths.chief)  # --hard-examples: hard records drawn more often
    datasets = {size: make_datasets(cfg, info, strategy, size, out_names, val_repeat=distributed, records_fn=mix)
                for size in dict.fromkeys(p.image_size for p in phases)}

    with strategy.scope():
        model = build.build_model(spec.name, info["num_classes"], input_size=(cfg["image_size"],) * 2,
                                  channels=info["channels"], weights=cfg["weights"], head=cfg["head"],
                                  dropout=cfg["dropout"], head_bn=cfg["head_bn"], class_names=info["class_names"])
        scale = keras.Variable(1.0, trainable=False, name="lr_scale", dtype="float32")
    distribute.fix_multiworker_build(model, strategy)
    class_w = losses.class_weights(train_classes, cfg["class_weights"], num_samples=n_train,
                                   class_names=info["class_names"], multi_label=cfg["head"] != "softmax")
    loss, loss_weights = losses.make_loss(cfg["head"], info["num_classes"], out_names, class_weights=class_w,
                                          label_smoothing=cfg["label_smoothing"], focal=cfg["focal"],
                                          focal_gamma=cfg["focal_gamma"], ohem=cfg["ohem"])
    monitor, mode = pick_monitor(metric_names(metrics.make_metrics(cfg["head"], info["num_classes"], out_names)),
                                 cfg["head"])
    checkpoint.restore(model, scale)

    for phase in phases:
        if checkpoint.run["epoch"] >= phase.end or checkpoint.run["stopped"]:
            continue
        with strategy.scope():
            build.set_trainable(model, phase.layers)
            schedule = optim.make_schedule(cfg, phase.peak_lr(cfg["lr"]), phase.epochs, steps, scale=scale)
            optimizer = optim.make_optimizer(cfg, schedule)
            model.compile(optimizer=optimizer, loss=loss, loss_weights=loss_weights, jit_compile=cfg["jit"],
                          metrics=metrics.make_metrics(cfg["head"], info["num_classes"], out_names))
            checkpoint.restore_phase_optimizer(phase.name, model, optimizer)
        checkpoint.enter_phase(phase.name, scale)
        callbacks = [EpochEnd(checkpoint=checkpoint, cfg=cfg, monitor=monitor, mode=mode,
                              best_base=paths.base + ".best", scale=scale),
                     ScalarLog(paths.log_dir),
                     StepCheckpoint(checkpoint=checkpoint, phase_start=phase.start, steps=steps,
                                    every=cfg["checkpoint_every"], minutes=cfg["checkpoint_minutes"], stop=stop,
                                    strategy=strategy, chief=paths.chief)]
        fit_phase(model, phase, datasets[phase.image_size], steps=steps, val_steps=val_steps,
                  initial_epoch=checkpoint.run["epoch"], callbacks=callbacks, chief=paths.chief,
                  first_step=checkpoint.run["step"],
                  restart=lambda done, size=phase.image_size: make_train_dataset(cfg, info, strategy, size,
                                                                                 out_names, done, mix))

    save_artefacts(model, cfg, info, spec, paths, checkpoint.run, monitor, out_names)
    if decode_failures() and paths.chief:
        print(f"note: {decode_failures()} record(s) could not be decoded and were skipped "
              f"(check with: python generate_dataset.py verify {cfg['data']})", file=sys.stderr)
    checkpoint.finish()
    if not paths.chief:
        remove_dir(paths.save_dir)
        remove_dir(paths.log_dir)
    return {"model": model, "run": checkpoint.run, "monitor": monitor, "base": paths.base,
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
                   out_names: list[str]) -> None:
    """NAME.h5/.keras (+ .best.* when no epoch scored), NAME.config.yaml, NAME.json, curves.png.

    Every worker runs these calls (reading distributed variables may need all of
    them); only the chief's land in model_save/ and log/.
    """
    base = paths.base
    save_model_files(model, base)
    if run["best_epoch"] is None:  # nothing scored (NaN loss): the last model is also "best"
        save_model_files(model, base + ".best")
    config.save_yaml(cfg, base + ".config.yaml")
    save_meta(base + ".h5", {
        "name": paths.name, "architecture": spec.name, "class_names": info["class_names"],
        "readable_names": info.get("readable_names"), "input_size": [cfg["image_size"]] * 2,
        "channels": info["channels"], "planes": info.get("planes", 1), "preprocess": spec.preprocess,
        "head": cfg["head"], "multi_label": bool(info["multi_label"]), "outputs": out_names, "thresholds": None,
        "dataset": cfg["data"], "config": cfg,
        "history": {"best_epoch": run["best_epoch"], "val_metric": monitor, "val_score": run["best"],
                    "epochs_run": run["epoch"], "iterations": run["iterations"],
                    "early_stopped": bool(run["stopped"])}})
    if os.path.exists(paths.csv_path):
        save_history_plot(paths.csv_path, os.path.join(paths.log_dir, "curves.png"))
    write_run_report(paths.log_dir, paths.name, cfg, run, monitor, read_csv_rows(paths.csv_path),
                     os.path.join(paths.log_dir, "curves.png"))
