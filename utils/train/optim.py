"""How the weights move: the LR schedule with its warm-up, the optimizer, weight decay,
gradient accumulation and the weight EMA (the last two are Keras optimizer options).

The LR schedule is a pure function of the optimizer's iteration counter (times a
plateau scale kept in the resume state), so restoring the counter restores the
schedule position exactly (Keras issue 22010: a schedule held outside the
optimizer's variables is silently lost).

ReduceLROnPlateau vs schedules: Keras's callback assigns `optimizer.learning_rate`,
which a schedule does not have. Our rule: `--schedule plateau` is a constant
LR (after the linear warm-up) multiplied by `--plateau-factor` whenever the
validation score has not improved for `--plateau-patience` epochs (see
callbacks.EpochEnd); cosine and step schedules never react to plateaus.
"""
from __future__ import annotations

import math

import keras

from utils.errors import UsageError

ADAMW_WEIGHT_DECAY = 0.004  # --weight-decay default for adamw (Keras's AdamW default); 0 for the others
NO_DECAY = ["bias", "gamma", "beta", "moving_"]  # biases and BatchNorm: decaying them just hurts


class WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """lr(step) = peak * warm-up(step) * shape(step) * scale, step = optimizer micro-step.

    A pure function of the optimizer's iteration counter, so restoring the
    counter restores the position. `scale` is a variable the plateau rule
    lowers; its value is kept in the resume state.

    Args:
        peak: the LR after the warm-up.
        total_steps: the phase's length in micro-steps (cosine reaches 0 there).
        warmup_steps: linear warm-up from 0 over this many steps.
        kind: cosine, step, plateau or constant (plateau is constant here: the
            callback lowers `scale`).
        step_every, step_gamma: the step schedule's drop interval and factor.
        scale: a float32 variable multiplied in, or None.
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
    """cfg's schedule over `epochs` epochs of `steps_per_epoch` micro-steps each.

    Args:
        cfg: the resolved config (schedule, lr_warmup_epochs, step_epochs, step_gamma).
        peak: the phase's peak LR.
        scale: the plateau rule's variable (see WarmupSchedule).
    """
    step_epochs = cfg.get("step_epochs") or max(1, epochs // 3)
    return WarmupSchedule(
        peak, total_steps=epochs * steps_per_epoch,
        warmup_steps=round(cfg.get("lr_warmup_epochs", 0) * steps_per_epoch),
        kind=cfg["schedule"], step_every=step_epochs * steps_per_epoch,
        step_gamma=cfg.get("step_gamma", 0.1), scale=scale)


def weight_decay(cfg: dict) -> float:
    """--weight-decay, or its default for --optimizer (ADAMW_WEIGHT_DECAY for adamw, else 0)."""
    decay = cfg.get("weight_decay")
    if decay is None:
        decay = ADAMW_WEIGHT_DECAY if cfg["optimizer"] == "adamw" else 0.0
    return decay


def make_optimizer(cfg: dict, learning_rate) -> keras.optimizers.Optimizer:
    """The --optimizer with decoupled weight decay (kernels only), accumulation and EMA.

    Args:
        cfg: the resolved config (optimizer, momentum, weight_decay, accum_steps, ema).
        learning_rate: a float or a schedule (make_schedule).

    Raises:
        UsageError: an unknown optimizer name.
    """
    decay = weight_decay(cfg)
    common = dict(learning_rate=learning_rate, weight_decay=decay or None, use_ema=bool(cfg.get("ema")),
                  gradient_accumulation_steps=cfg["accum_steps"] if cfg.get("accum_steps", 1) > 1 else None)
    if cfg["optimizer"] == "sgd":
        opt = keras.optimizers.SGD(momentum=cfg.get("momentum", 0.9), **common)
    elif cfg["optimizer"] == "adam":
        opt = keras.optimizers.Adam(**common)
    elif cfg["optimizer"] == "adamw":
        opt = keras.optimizers.AdamW(**common)
    else:
        raise UsageError(f"unknown optimizer {cfg['optimizer']!r}")
    if decay:
        opt.exclude_from_weight_decay(var_names=NO_DECAY)
    return opt


def current_lr(optimizer) -> float:
    """The LR the optimizer's next step will use."""
    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))


def iterations(optimizer) -> int:
    """Updates applied so far: Keras's `iterations`, i.e. micro-steps // --accum-steps.

    The schedule itself reads the micro-step counter (optimizer._iterations).
    """
    return int(keras.ops.convert_to_numpy(optimizer.iterations))
