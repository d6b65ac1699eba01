"""train.py's configuration: the defaults, the flags, YAML files, the resolved record.

One table (OPTIONS) holds every setting with its default, unit and help text,
nanoGPT style; train.py's argparse flags are generated from it, so a flag, its
YAML key and its saved value cannot drift apart. Precedence, lowest first:
the defaults below < `--config x.yaml` < command-line flags. The resolved
config (after `resolve_run` fills in dataset-dependent values such as the head
and the image size) is saved as model_save/NAME.config.yaml and inside NAME.json.
"""
from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass
from typing import Any

import yaml

from utils.errors import OneLineParser, UsageError, read_yaml_mapping
from utils.files import atomic_write_text
from utils.input.labels import HEADS
from utils.input.service import parse_address
from utils.train.phases import parse_progressive


@dataclass(frozen=True)
class Option:
    """One setting: its default, --help text, type and allowed values."""

    default: Any
    help: str
    type: Any = str  # str | int | float | bool ("bool" flags get --x / --no-x)
    choices: tuple | None = None


OPTIONS: dict[str, Option] = {
    # --- what to train
    "data": Option(None, "dataset folder built by generate_dataset.py (data/NAME)"),
    "model": Option("densenet121", "backbone name from model/registry.py (e.g. densenet121, inceptionv3, efficientnetb0)"),
    "weights": Option("imagenet", "backbone weights: imagenet (downloaded once), none (from scratch) or PATH to a local no-top weights file"),
    "head": Option(None, "softmax (one label), sigmoid (multi-label) or per-class (one output per class); default from the manifest: multi_label -> sigmoid, else softmax",
                   choices=HEADS),
    "layers": Option("all", "which layers train: heads (backbone frozen, its BatchNorm in inference mode), all, or a REGEX over layer names"),
    "image_size": Option(None, "input side in pixels (square); default the model's registry size", int),
    "dropout": Option(0.2, "dropout before the classifier (fraction)", float),
    "head_bn": Option(False, "BatchNorm in the head", bool),
    # --- final fit without validation, progressive resizing, LR finder
    "val_split": Option("auto", "auto: validate on the val split (or --fold's) when the dataset has one, else train "
                                "without validation (the last epoch is the model); none: never validate",
                        choices=("auto", "none")),
    "train_on_val": Option(False, "also train on the val records, without validation (the final fit of a split "
                                  "or K-fold dataset)", bool),
    "progressive": Option(None, "progressive resizing SIZE:EPOCHS,...,SIZE, e.g. 128:4,192:4,224: 4 epochs at 128 px, "
                                "4 at 192, the rest at 224 (the final size: the saved model's)"),
    "progressive_batch": Option(False, "with --progressive: batch x (final/size)^2 at each size (memory about constant)",
                                bool),
    "find_lr": Option(False, "run a short exponential LR sweep, write log/NAME/lr_find.png and print a suggested "
                             "--lr, then exit (no model saved)", bool),
    "find_lr_range": Option("1e-7,10", "--find-lr: the swept LR range MIN,MAX"),
    "find_lr_steps": Option(100, "--find-lr: sweep steps (one batch each; stops early when the loss diverges)", int),
    # --- optimisation
    "batch_size": Option(32, "global batch size in images per step (split over replicas/workers)", int),
    "epochs": Option(10, "total epochs, head warm-up included", int),
    "steps_per_epoch": Option(None, "optimizer micro-steps per epoch; default one pass over the training split", int),
    "val_steps": Option(None, "validation batches per epoch; default the whole val split", int),
    "lr": Option(1e-3, "peak learning rate (per step, no scaling with batch size)", float),
    "optimizer": Option("adam", "sgd (with --momentum), adam or adamw", choices=("sgd", "adam", "adamw")),
    "momentum": Option(0.9, "SGD momentum", float),
    "weight_decay": Option(None, "decoupled weight decay per step x lr; default 0.004 for adamw, 0 otherwise", float),
    "schedule": Option("cosine", "LR schedule after warm-up: cosine (to 0 at the last epoch), step (x step-gamma every step-epochs), plateau (constant, x plateau-factor when val stalls)",
                       choices=("cosine", "step", "plateau", "constant")),
    "lr_warmup_epochs": Option(0.0, "linear LR warm-up from 0, in epochs (fractions allowed)", float),
    "step_epochs": Option(None, "step schedule: epochs between LR drops; default a third of the epochs", int),
    "step_gamma": Option(0.1, "step schedule: LR multiplier at each drop", float),
    "plateau_patience": Option(2, "plateau schedule: epochs without val improvement before the LR drops", int),
    "plateau_factor": Option(0.2, "plateau schedule: LR multiplier at each drop", float),
    "warmup_epochs": Option(0, "freeze-then-fine-tune: train only the heads for N epochs, then --layers at --finetune-lr-mult x lr", int),
    "finetune_lr_mult": Option(0.1, "LR multiplier for the fine-tuning phase after --warmup-epochs", float),
    "accum_steps": Option(1, "gradient accumulation: apply the averaged gradient every N micro-batches", int),
    "ema": Option(False, "keep an exponential moving average of the weights (used for the saved models)", bool),
    "mixed_precision": Option(False, "float16 compute on GPU, bfloat16 on CPU; variables stay float32", bool),
    "jit": Option(False, "XLA-compile the train step", bool),
    # --- losses and imbalance
    "label_smoothing": Option(0.0, "label smoothing (fraction of the target mass spread over classes)", float),
    "focal": Option(False, "focal loss instead of cross-entropy", bool),
    "focal_gamma": Option(2.0, "focal loss focusing parameter", float),
    "class_weights": Option("none", "none, balanced (from the manifest's class counts) or FILE (JSON list/dict or CSV name,weight)"),
    # --- hard examples (utils/train/hard.py, utils/input/sampling.py)
    "hard_examples": Option(None, "losses.csv from detect.py --split train --evaluate (PREFIX.eval/losses.csv): draw the hardest records more often"),
    "hard_fraction": Option(0.2, "--hard-examples: the highest-loss fraction of the file's rows that counts as hard", float),
    "hard_weight": Option(3.0, "--hard-examples: a hard record is drawn this many times as often as another", float),
    "ohem": Option(None, "online hard example mining: only this fraction of each batch's highest per-sample losses counts (e.g. 0.5; the reported loss too)", float),
    # --- data
    "augment": Option("flip", "comma list of train augmentations: flip,rrc,rotate,color,randaugment,mixup,cutmix,erasing (or none); in YAML also {name: {kwargs}}"),
    "augment_on": Option(None, "where --augment's batch ops (rotate, color, randaugment, erasing, mixup, cutmix) "
                               "run: cpu (in the tf.data pipeline) or device (inside the train step, per replica, "
                               "on the accelerator); flip and rrc run per image while decoding either way; "
                               "default device when a GPU is visible, else cpu", choices=("cpu", "device")),
    "fold": Option(None, "K-fold dataset: validate on fold k, train on the others", int),
    "cache": Option(False, "cache the encoded records in memory after the first epoch (datasets that fit in RAM; decoding still runs each epoch)", bool),
    "shuffle_buffer": Option(2048, "shuffle buffer in records", int),
    "data_service": Option(None, "grpc://HOST:PORT of a tf.data service dispatcher (python -m utils.input.service): "
                                 "the train set is read, decoded and augmented on its workers, validation stays "
                                 "here; --resume then restarts the stream (the service orders it) with exact step "
                                 "counts; records that fail to decode are skipped on the workers but not counted in "
                                 "the end-of-run note (run generate_dataset.py verify)"),
    # --- run control
    "early_stop": Option(0, "stop after N epochs without validation improvement (of the training loss when there is no validation; 0: never)", int),
    "resume": Option(False, "continue an interrupted run from model_save/NAME.resume/ (weights, optimizer, LR schedule, epoch)", bool),
    "strategy": Option("auto", "auto (MultiWorkerMirrored when TF_CONFIG lists >1 worker, else Mirrored with "
                               ">1 GPU, else none), mirrored, multiworker (from TF_CONFIG; only the chief writes "
                               "files) or none",
                       choices=("auto", "mirrored", "multiworker", "none")),
    "out": Option(None, "model file model_save/NAME.h5 (also NAME.keras, NAME.best.*, NAME.json); default named after data and model"),
    "preview": Option(False, "write a PNG grid of augmented training images to log/NAME/ and exit", bool),
    "seed": Option(0, "random seed (shuffling, augmentation, initialisation)", int),
    # --- fault tolerance: mid-epoch resume state (SIGTERM/SIGINT also write it, then exit 143/130)
    "checkpoint_every": Option(0, "also write the resume state every N steps inside an epoch (0: only at epoch ends, "
                                  "on SIGTERM/SIGINT and by --checkpoint-minutes)", int),
    "checkpoint_minutes": Option(30.0, "also write the resume state when M minutes have passed since the last "
                                       "one (0: never)", float),
}

# Settings that may change between an interrupted run and its --resume.
RESUME_MUTABLE = {"resume", "early_stop", "strategy", "preview", "config", "val_steps", "cache", "shuffle_buffer"}
RESUME_MUTABLE |= {"checkpoint_every", "checkpoint_minutes"}  # when to save, not what is trained
RESUME_MUTABLE |= {"augment_on"}  # where the same augmentation runs (a resume may land on a machine without a GPU)
RESUME_MUTABLE |= {"data_service"}  # where the input is decoded, not what is trained


def defaults() -> dict:
    """{option name: default} for every OPTIONS entry."""
    return {k: o.default for k, o in OPTIONS.items()}


def flag(name: str) -> str:
    """An option name as its command-line flag: batch_size -> --batch-size."""
    return "--" + name.replace("_", "-")


def build_parser(description: str) -> argparse.ArgumentParser:
    """argparse parser with one flag per OPTIONS entry, all defaulting to None.

    None means "not given on the command line", so YAML values are only
    overridden by flags the user actually typed.
    """
    p = OneLineParser(prog="train.py", description=description)
    p.add_argument("--config", metavar="YAML", help="YAML file of defaults (keys as the flags, '-' or '_'); flags override it")
    for name, o in OPTIONS.items():
        help_ = o.help + (f" [default: {o.default}]" if o.default not in (None, False) else "")
        if o.type is bool:
            p.add_argument(flag(name), dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_)
        else:
            metavar = None if o.choices else {int: "N", float: "X"}.get(o.type, "VALUE")
            p.add_argument(flag(name), dest=name, type=o.type, choices=o.choices, default=None, help=help_,
                           metavar=metavar)
    return p


def load_yaml(path: str) -> dict:
    """A --config file -> {option name: value of the option's type}.

    Raises:
        UsageError: a missing or malformed file, an unknown key or a bad value.
    """
    out = {}
    for name, value in read_yaml_mapping(path).items():
        if name not in OPTIONS:
            raise UsageError(f"unknown key '{name}' in {path} (valid: {', '.join(OPTIONS)})")
        out[name] = coerce(name, value, path)
    return out


def coerce(name: str, value, where: str):
    """A YAML value -> the option's type (argparse does this for flags only).

    Raises:
        UsageError: the value does not convert, or is not one of the choices.
    """
    o = OPTIONS[name]
    if value is None:
        return None
    if name == "augment" and isinstance(value, (dict, list)):
        return value  # YAML may give {name: {kwargs}} (see utils/input/augment.py) or a list of names
    try:
        if o.type is bool:
            if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
                return value.lower() in ("true", "yes", "1")
            if not isinstance(value, bool):
                raise ValueError
            return value
        if o.type is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        if isinstance(value, bool) and o.type is not bool:
            raise ValueError
        value = o.type(value)
    except (TypeError, ValueError):
        raise UsageError(f"{name} in {where} must be {o.type.__name__}, got {value!r}") from None
    if o.choices and value not in o.choices:
        raise UsageError(f"{name} in {where} must be one of {', '.join(o.choices)}, got {value!r}")
    return value


def resolve(args: argparse.Namespace) -> dict:
    """defaults < YAML < flags -> one plain dict (no dataset-dependent values yet)."""
    cfg = defaults()
    if getattr(args, "config", None):
        cfg.update(load_yaml(args.config))
    for name in OPTIONS:
        v = getattr(args, name, None)
        if v is not None:
            cfg[name] = v
    cfg["config"] = getattr(args, "config", None)
    validate(cfg)
    return cfg


def validate(cfg: dict) -> None:
    """Range checks that argparse cannot express; one clear line each."""
    if not cfg.get("data"):
        raise UsageError("--data is required (a dataset folder built by generate_dataset.py)")
    positive = ("batch_size", "epochs", "accum_steps", "shuffle_buffer", "image_size", "steps_per_epoch",
                "val_steps", "step_epochs", "plateau_patience", "find_lr_steps")
    for k in positive:
        if cfg.get(k) is not None and cfg[k] < 1:
            raise UsageError(f"{flag(k)} must be >= 1, got {cfg[k]}")
    for k in ("lr", "finetune_lr_mult", "step_gamma", "plateau_factor"):
        if not cfg[k] > 0:
            raise UsageError(f"{flag(k)} must be > 0, got {cfg[k]}")
    for k in ("lr_warmup_epochs", "warmup_epochs", "early_stop", "focal_gamma", "momentum"):
        if cfg[k] < 0:
            raise UsageError(f"{flag(k)} must be >= 0, got {cfg[k]}")
    for k in ("checkpoint_every", "checkpoint_minutes"):
        if cfg.get(k) is not None and cfg[k] < 0:
            raise UsageError(f"{flag(k)} must be >= 0, got {cfg[k]}")
    if cfg["weight_decay"] is not None and cfg["weight_decay"] < 0:
        raise UsageError(f"--weight-decay must be >= 0, got {cfg['weight_decay']}")
    for k in ("dropout", "label_smoothing"):
        if not 0 <= cfg[k] < 1:
            raise UsageError(f"{flag(k)} must be in [0, 1), got {cfg[k]}")
    if cfg["warmup_epochs"] >= cfg["epochs"]:
        raise UsageError(f"--warmup-epochs ({cfg['warmup_epochs']}) must be below --epochs ({cfg['epochs']})")
    if cfg["warmup_epochs"] and cfg["layers"] == "heads":
        raise UsageError("--warmup-epochs needs --layers all or a REGEX for the fine-tuning phase, not heads")
    if not 0 < cfg["hard_fraction"] < 1 or not cfg["hard_weight"] > 0:
        raise UsageError(f"--hard-fraction must be in (0, 1) and --hard-weight > 0, got {cfg['hard_fraction']} "
                         f"and {cfg['hard_weight']}")
    if cfg["ohem"] is not None and not 0 < cfg["ohem"] <= 1:
        raise UsageError(f"--ohem must be in (0, 1], got {cfg['ohem']}")
    if cfg.get("data_service"):
        parse_address(cfg["data_service"])
    if cfg["fold"] is not None and cfg["fold"] < 0:
        raise UsageError(f"--fold must be >= 0, got {cfg['fold']}")
    if cfg.get("progressive"):
        parse_progressive(cfg["progressive"], cfg["epochs"])
    elif cfg.get("progressive_batch"):
        raise UsageError("--progressive-batch scales the batch per --progressive size: give --progressive too")
    if cfg.get("find_lr"):
        if cfg["resume"]:
            raise UsageError("--find-lr starts from fresh weights and saves nothing: drop --resume")
        parse_lr_range(cfg["find_lr_range"])
    if cfg["layers"] not in ("heads", "all"):
        try:
            re.compile(cfg["layers"])
        except re.error as e:
            raise UsageError(f"--layers {cfg['layers']!r} is not heads, all or a valid regex: {e}") from None


def parse_lr_range(text: str) -> tuple[float, float]:
    """--find-lr-range "1e-7,10" -> (1e-7, 10.0).

    Raises:
        UsageError: not two numbers with 0 < MIN < MAX.
    """
    try:
        lo, hi = (float(v) for v in str(text).split(","))
    except ValueError:
        raise UsageError(f"--find-lr-range must be MIN,MAX (e.g. 1e-7,10), got {text!r}") from None
    if not 0 < lo < hi:
        raise UsageError(f"--find-lr-range needs 0 < MIN < MAX, got {text!r}")
    return lo, hi


def resolve_run(cfg: dict, info: dict, spec) -> dict:
    """Fill the dataset-dependent settings: head, image size, output path.

    Args:
        cfg: from `resolve`.
        info: utils.input.pipeline.dataset_info of --data.
        spec: the model.registry.ModelSpec of --model.

    Returns:
        a new dict; `model` is the registry's spelling of the name.

    Raises:
        UsageError: a softmax head on multi-label data, an image size below the
            backbone's minimum, or --out without .h5 / .keras.
    """
    cfg = dict(cfg)
    if cfg["head"] is None:
        cfg["head"] = "sigmoid" if info["multi_label"] else "softmax"
    if info["multi_label"] and cfg["head"] == "softmax":
        raise UsageError(f"{cfg['data']} is multi-label: use --head sigmoid or per-class, not softmax")
    if cfg.get("progressive"):
        sizes = [s for s, _ in parse_progressive(cfg["progressive"], cfg["epochs"])]
        if cfg["image_size"] not in (None, sizes[-1]):
            raise UsageError(f"--image-size {cfg['image_size']} is not --progressive's final size {sizes[-1]}: drop one")
        if sizes[0] < spec.min_size:
            raise UsageError(f"{spec.name} needs sizes >= {spec.min_size}, got --progressive {cfg['progressive']}")
        cfg["image_size"] = sizes[-1]
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


def save_yaml(cfg: dict, path: str) -> str:
    """The resolved config as YAML (model_save/NAME.config.yaml), in OPTIONS order."""
    atomic_write_text(path, yaml.safe_dump(cfg, sort_keys=False))
    return path


def resume_mismatch(saved: dict, now: dict) -> list[str]:
    """Settings that differ between the interrupted run and this --resume call."""
    keys = (set(saved) | set(now)) - RESUME_MUTABLE
    return sorted(k for k in keys if saved.get(k) != now.get(k))
