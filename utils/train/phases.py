"""The phases of a run: what trains, for which epochs, at which LR, image size and batch.

Freeze-then-fine-tune is two phases: `heads` for --warmup-epochs (backbone
frozen, at --lr), then `main` with --layers at --finetune-lr-mult x --lr. Each
named phase gets a fresh optimizer and one LR schedule over its own epochs; the
resume state records the phase's name.

Progressive resizing (--progressive 128:4,192:4,224) cuts each named phase
into parts of one image size (and, with --progressive-batch, one batch size).
The parts of a phase share its name, its optimizer and its one LR schedule, so
patience, plateau scale and the schedule's position run on across a size
change. Pure: no TensorFlow here.
"""
from __future__ import annotations

from dataclasses import dataclass

from utils.errors import UsageError


@dataclass(frozen=True)
class Phase:
    """One stretch of epochs trained with one trainable set, image size and batch.

    Attributes:
        name: saved in the resume state ("heads", "main"); a phase's progressive
            parts share it (and its optimizer and LR schedule).
        start: the first epoch, 0-based (fit's initial_epoch).
        end: epochs completed when the phase is over (fit's epochs).
        layers: what trains: heads, all or a REGEX (model.build.set_trainable).
        lr_mult: the phase's peak LR is --lr x lr_mult.
        image_size: input side in pixels.
        batch_size: global batch of the part; None: --batch-size.
    """

    name: str
    start: int
    end: int
    layers: str
    lr_mult: float
    image_size: int
    batch_size: int | None = None

    @property
    def epochs(self) -> int:
        """The part's length in epochs."""
        return self.end - self.start

    def peak_lr(self, lr: float) -> float:
        """The phase's peak LR for --lr `lr`."""
        return lr * self.lr_mult


def parse_progressive(spec: str, epochs: int) -> list[tuple[int, int]]:
    """--progressive "128:4,192:4,224" -> [(128, 0), (192, 4), (224, 8)]: (size, first epoch).

    Args:
        spec: SIZE:EPOCHS entries, the last one a bare SIZE that runs to --epochs.
        epochs: --epochs.

    Raises:
        UsageError: a malformed entry, sizes that do not increase, or epochs that
            leave the last size no epoch.
    """
    entries = [e.strip() for e in str(spec).split(",")]
    out, start = [], 0
    for i, entry in enumerate(entries):
        last = i == len(entries) - 1
        size, _, count = entry.partition(":")
        try:
            size = int(size)
            count = None if last and not _ else int(count)
        except ValueError:
            raise UsageError(f"--progressive {spec!r}: bad entry {entry!r} (write SIZE:EPOCHS,...,SIZE, "
                             "e.g. 128:4,192:4,224)") from None
        if size < 1 or (count is not None and count < 1):
            raise UsageError(f"--progressive {spec!r}: sizes and epochs must be >= 1, got {entry!r}")
        if last and count is not None:
            raise UsageError(f"--progressive {spec!r}: the last entry runs to --epochs: write {size}, not {entry}")
        if out and size <= out[-1][0]:
            raise UsageError(f"--progressive {spec!r}: sizes must increase, got {out[-1][0]} then {size}")
        out.append((size, start))
        start += count or 0
    if start >= epochs:
        raise UsageError(f"--progressive {spec!r} uses {start} epochs before its last size; --epochs is {epochs}")
    return out


def scaled_batch(batch: int, size: int, final: int, replicas: int = 1) -> int:
    """--progressive-batch: batch x (final / size)^2 (memory ~ batch x side^2), a multiple of `replicas`."""
    scaled = batch * (final / size) ** 2
    return max(replicas, int(round(scaled / replicas)) * replicas)


def plan_phases(cfg: dict, replicas: int = 1) -> list[Phase]:
    """The phases (progressive parts included) of a resolved config, in training order.

    Args:
        cfg: resolved (image_size filled in: the final size).
        replicas: replicas in sync, so a scaled batch splits evenly.
    """
    warmup = cfg["warmup_epochs"]
    size = cfg["image_size"]
    heads = [Phase("heads", 0, warmup, "heads", 1.0, size)] if warmup else []
    named = heads + [Phase("main", warmup, cfg["epochs"], cfg["layers"],
                           cfg["finetune_lr_mult"] if warmup else 1.0, size)]
    if not cfg.get("progressive"):
        return named
    sizes = parse_progressive(cfg["progressive"], cfg["epochs"])
    bounds = [s for _, s in sizes[1:]] + [cfg["epochs"]]
    out = []
    for p in named:
        for (side, first), end in zip(sizes, bounds):
            lo, hi = max(p.start, first), min(p.end, end)
            if lo < hi:
                batch = scaled_batch(cfg["batch_size"], side, size, replicas) if cfg.get("progressive_batch") \
                    else cfg["batch_size"]
                out.append(Phase(p.name, lo, hi, p.layers, p.lr_mult, side, batch))
    return out


def schedule_parts(phases: list[Phase], phase: Phase) -> list[Phase]:
    """The parts of `phase`'s named phase: its one LR schedule spans them all."""
    return [p for p in phases if p.name == phase.name]


def warp_segments(parts: list[tuple[int, int]], ref_steps: int) -> list[tuple[int, int, float]]:
    """Map a schedule's real micro-steps to steps of `ref_steps` per epoch (parts of other step counts).

    With --progressive-batch an epoch at 128 px takes fewer (bigger) steps than at
    224 px; the LR schedule must move by epochs, not by steps. The virtual step is
    sum_i clip(step - start_i, 0, length_i) * scale_i over the segments.

    Args:
        parts: (epochs, steps per epoch) of each part, in order.
        ref_steps: the steps per epoch the schedule was made with.

    Returns:
        (start_i, length_i, scale_i) per part, in real micro-steps.
    """
    out, start = [], 0
    for epochs, steps in parts:
        out.append((start, epochs * steps, ref_steps / steps))
        start += epochs * steps
    return out
