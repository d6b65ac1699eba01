"""Train an image classifier on a dataset built by generate_dataset.py.

    python train.py --data data/demo --model densenet121 --weights none --image-size 64 --epochs 8

Reads data/NAME (TFRecord shards + manifest.json), builds model/ (backbone +
head), fits under a tf.distribute strategy and writes (NAME = the --out stem):
  model_save/NAME.h5, NAME.keras         last epoch (inference model: `import model`, then load_model)
  model_save/NAME.best.h5, NAME.best.keras   best epoch by the validation score
  model_save/NAME.json, NAME.config.yaml     metadata for detect.py, the resolved config
  log/NAME/epochs.csv, curves.png, TensorBoard events
  model_save/NAME.resume/                    crash-safe state for --resume (removed when done)
The last stdout line is the validation score, e.g. "val_accuracy 0.873 (best epoch 4)".

Freeze-then-fine-tune: --warmup-epochs N trains only the heads for N epochs,
then --layers at --finetune-lr-mult x --lr, with a fresh optimizer and
schedule. --lr-warmup-epochs is the linear LR warm-up inside each phase.
Settings: utils/config.py (defaults < --config YAML < flags).
"""
from __future__ import annotations

import math
import os
import sys
import warnings

from utils.train import config as C
from utils.errors import UsageError, import_tensorflow_quietly, run_cli


def resolve_run(cfg: dict, info: dict, spec) -> dict:
    """Fill the dataset-dependent settings: head, image size, output path."""
    cfg = dict(cfg)
    if cfg["head"] is None:
        cfg["head"] = "sigmoid" if info["multi_label"] else "softmax"
    if info["multi_label"] and cfg["head"] == "softmax":
        raise UsageError(f"{cfg['data']} is multi-label: use --head sigmoid or per-class, not softmax")
    cfg["image_size"] = cfg["image_size"] or spec.default_size
    if cfg["image_size"] < spec.min_size:
        raise UsageError(f"{spec.name} needs --image-size >= {spec.min_size}, got {cfg['image_size']}")
    if not cfg["out"]:
        data_name = os.path.basename(os.path.normpath(cfg["data"]))
        fold = f"_fold{cfg['fold']}" if cfg["fold"] is not None else ""
        cfg["out"] = os.path.join("model_save", f"{data_name}_{spec.name}{fold}.h5")
    if not cfg["out"].endswith((".h5", ".keras")):
        raise UsageError(f"--out must end in .h5 (the .keras twin is written beside it), got {cfg['out']}")
    cfg["model"] = spec.name
    return cfg


def split_sizes(cfg: dict, info: dict) -> tuple[int, int, list[int]]:
    """(train count, val count, train class counts); a missing/empty split is an error."""
    from utils.dataset.manifest import DatasetError, class_counts, load_manifest, select_shards, split_count

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


def preview(cfg: dict, info: dict, log_dir: str) -> str:
    """One augmented training batch as a PNG grid (labels as titles)."""
    import numpy as np

    from utils.input.pipeline import make_dataset
    from utils.plots import save_image_grid

    ds = make_dataset(cfg["data"], "train", image_size=(cfg["image_size"],) * 2, batch_size=16, training=True,
                      head="sigmoid" if cfg["head"] == "per-class" else cfg["head"], fold=cfg["fold"],
                      augment=C.augment_list(cfg["augment"]), seed=cfg["seed"], shuffle_buffer=cfg["shuffle_buffer"])
    images, labels = next(iter(ds))
    names, y = info["class_names"], np.asarray(labels)
    if cfg["head"] == "softmax":
        titles = [f"{names[int(i)]} {p:.2f}" for i, p in zip(y.argmax(1), y.max(1))]
    else:
        titles = [",".join(names[j] for j in np.flatnonzero(r > 0.5)) or "-" for r in y]
    path = os.path.join(log_dir, "preview.png")
    save_image_grid(np.asarray(images), titles, path)
    return path


def main(argv=None) -> int:
    cfg = C.resolve(C.build_parser(__doc__.split("\n\n")[0]).parse_args(argv))
    out = train(cfg)
    if out.get("preview"):
        print(f"wrote {out['preview']}")
    elif out["chief"]:
        run = out["run"]
        print(f"saved {out['base']}.h5 (+ .keras, .best.*, .json); logs in {out['log_dir']}")
        score = "nan" if run["best"] is None else f"{run['best']:.3f}"
        print(f"{out['monitor']} {score} (best epoch {run['best_epoch']})")
    return 0


def train(cfg: dict) -> dict:
    """The whole run for a resolved config; returns model, run state, paths, monitor."""
    import_tensorflow_quietly()
    import keras

    from model import build, heads, losses, metrics, registry
    from model.meta import save_meta
    from utils.train import training as T
    from utils.input.pipeline import dataset_info, make_dataset

    spec = registry.get(cfg["model"])
    strategy = T.make_strategy(cfg["strategy"])  # first: MultiWorker must exist before other TF work
    info = dataset_info(cfg["data"])
    cfg = resolve_run(cfg, info, spec)
    n_train, n_val, train_classes = split_sizes(cfg, info)

    # paths: non-chief workers write the same files into a throw-away dir
    base = cfg["out"][: -len(".keras")] if cfg["out"].endswith(".keras") else cfg["out"][: -len(".h5")]
    name, chief = os.path.basename(base), T.is_chief()
    save_dir = T.worker_dir(os.path.dirname(base) or ".", chief)
    log_dir = T.worker_dir(os.path.join("log", name), chief)
    base, resume_dir, csv_path = os.path.join(save_dir, name), os.path.join(save_dir, name + ".resume"), \
        os.path.join(log_dir, "epochs.csv")
    os.makedirs(save_dir, exist_ok=True)
    os.makedirs(log_dir, exist_ok=True)
    if cfg["preview"]:
        return {"preview": preview(cfg, info, log_dir), "chief": chief}

    keras.utils.set_random_seed(cfg["seed"])
    if cfg["mixed_precision"]:
        import tensorflow as tf

        keras.mixed_precision.set_global_policy(
            "mixed_float16" if tf.config.list_physical_devices("GPU") else "mixed_bfloat16")
    saved = T.load_state(resume_dir) if cfg["resume"] else None
    if cfg["resume"] and saved is None:
        print(f"note: no resume state in {resume_dir}; starting from epoch 1", file=sys.stderr)
    changed = C.resume_mismatch(saved["run"]["config"], cfg) if saved else []
    if changed:
        raise UsageError(f"--resume with different settings ({', '.join(changed)}): use the interrupted run's flags")

    # data: fixed steps per epoch over a repeated train set, so the schedule knows its length
    size, gbs = (cfg["image_size"], cfg["image_size"]), cfg["batch_size"]
    steps = cfg["steps_per_epoch"] or max(1, math.ceil(n_train / gbs))
    distributed = T.is_distributed(strategy)
    val_steps = cfg["val_steps"] or (math.ceil(n_val / gbs) if distributed else None)
    out_names = heads.output_names(cfg["head"], info["num_classes"], info["class_names"])
    common = dict(image_size=size, head=cfg["head"], output_names=out_names, channels=info["channels"],
                  fold=cfg["fold"], seed=cfg["seed"])
    train_ds = T.distributed_dataset(strategy, lambda bs, ctx: make_dataset(
        cfg["data"], "train", batch_size=bs, training=True, augment=C.augment_list(cfg["augment"]),
        cache=cfg["cache"], shuffle_buffer=cfg["shuffle_buffer"], repeat=True, drop_remainder=True,
        input_context=ctx, **common), gbs)
    val_ds = T.distributed_dataset(strategy, lambda bs, ctx: make_dataset(
        cfg["data"], "val", batch_size=bs, training=False, repeat=distributed, input_context=ctx, **common), gbs)

    with strategy.scope():
        model = build.build_model(spec.name, info["num_classes"], input_size=size, channels=info["channels"],
                                  weights=cfg["weights"], head=cfg["head"], dropout=cfg["dropout"],
                                  head_bn=cfg["head_bn"], class_names=info["class_names"])
        scale = keras.Variable(1.0, trainable=False, name="lr_scale", dtype="float32")
    T.fix_multiworker_build(model, strategy)
    class_w = losses.class_weights(train_classes, cfg["class_weights"], num_samples=n_train,
                                   class_names=info["class_names"], multi_label=cfg["head"] != "softmax")
    loss, loss_weights = losses.make_loss(cfg["head"], info["num_classes"], out_names, class_weights=class_w,
                                          label_smoothing=cfg["label_smoothing"], focal=cfg["focal"],
                                          focal_gamma=cfg["focal_gamma"])
    monitor, mode = T.pick_monitor(
        T.metric_names(metrics.make_metrics(cfg["head"], info["num_classes"], out_names)), cfg["head"])

    run = {"epoch": 0, "phase": None, "best": None, "best_epoch": None, "wait": 0, "plateau_wait": 0,
           "lr_scale": 1.0, "stopped": False, "iterations": 0, "config": cfg}
    rows = []
    if saved:
        run.update(saved["run"], config=cfg)
        T.restore_model(model, saved)
        scale.assign(run["lr_scale"])
        rows = T.rows_up_to(T.read_csv_rows(csv_path), run["epoch"])
        print(f"resuming after epoch {run['epoch']} ({run['phase']} phase)", file=sys.stderr)
    if rows:
        T.write_csv_rows(csv_path, rows)  # drops rows of an epoch that died before its checkpoint
    elif os.path.exists(csv_path):
        os.remove(csv_path)

    # phases: [heads for --warmup-epochs,] then --layers; each a fresh optimizer + schedule
    hw = cfg["warmup_epochs"]
    phases = ([("heads", 0, hw, "heads", cfg["lr"])] if hw else []) + \
        [("main", hw, cfg["epochs"], cfg["layers"], cfg["lr"] * (cfg["finetune_lr_mult"] if hw else 1.0))]
    for phase, start, end, layers, peak in phases:
        if run["epoch"] >= end or run["stopped"]:
            continue
        with strategy.scope():
            build.set_trainable(model, layers)
            optimizer = T.make_optimizer(cfg, T.make_schedule(cfg, peak, end - start, steps, scale=scale))
            model.compile(optimizer=optimizer, loss=loss, loss_weights=loss_weights, jit_compile=cfg["jit"],
                          metrics=metrics.make_metrics(cfg["head"], info["num_classes"], out_names))
            if saved and saved["run"]["phase"] == phase:
                T.restore_optimizer(model, optimizer, saved)
        if run["phase"] != phase:
            run.update(phase=phase, wait=0, plateau_wait=0, lr_scale=1.0)
            scale.assign(1.0)
        callbacks = [T.EpochEnd(run=run, cfg=cfg, monitor=monitor, mode=mode, csv_path=csv_path, rows=rows,
                                best_base=base + ".best", resume_dir=resume_dir, scale=scale),
                     T.ScalarLog(log_dir)]
        with warnings.catch_warnings():
            # The val set is read to its end each epoch (its length is unknown: bad records are
            # skipped), which Keras reports as "ran out of data"; train data repeats forever.
            warnings.filterwarnings("ignore", message="Your input ran out of data")
            model.fit(train_ds, epochs=end, initial_epoch=run["epoch"], steps_per_epoch=steps, shuffle=False,
                      validation_data=val_ds, validation_steps=val_steps, callbacks=callbacks,
                      verbose=(1 if sys.stdout.isatty() else 2) if chief else 0)

    # artefacts (every worker runs these calls; only the chief's land in model_save/ and log/)
    T.save_model_files(model, base)
    if run["best_epoch"] is None:  # nothing scored (NaN loss): the last model is also "best"
        T.save_model_files(model, base + ".best")
    C.save_yaml(cfg, base + ".config.yaml")
    save_meta(base + ".h5", {
        "name": name, "architecture": spec.name, "class_names": info["class_names"],
        "readable_names": info.get("readable_names"), "input_size": list(size), "channels": info["channels"],
        "planes": info.get("planes", 1), "preprocess": spec.preprocess, "head": cfg["head"],
        "multi_label": bool(info["multi_label"]), "outputs": out_names, "thresholds": None,
        "dataset": cfg["data"], "config": cfg,
        "history": {"best_epoch": run["best_epoch"], "val_metric": monitor, "val_score": run["best"],
                    "epochs_run": run["epoch"], "iterations": run["iterations"],
                    "early_stopped": bool(run["stopped"])}})
    if os.path.exists(csv_path):
        from utils.plots import save_history_plot

        save_history_plot(csv_path, os.path.join(log_dir, "curves.png"))
    from utils.input.pipeline import decode_failures

    if decode_failures() and chief:
        print(f"note: {decode_failures()} record(s) could not be decoded and were skipped "
              f"(check with: python generate_dataset.py verify {cfg['data']})", file=sys.stderr)
    T.remove_dir(resume_dir)
    if not chief:
        T.remove_dir(save_dir)
        T.remove_dir(log_dir)
    return {"model": model, "run": run, "monitor": monitor, "base": base, "log_dir": log_dir, "chief": chief,
            "config": cfg}


if __name__ == "__main__":
    sys.exit(run_cli(main))
