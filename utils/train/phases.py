"""The phases of a run: what trains, for which epochs, at which LR and image size.

Freeze-then-fine-tune is two phases: `heads` for --warmup-epochs (backbone
frozen, at --lr), then `main` with --layers at --finetune-lr-mult x --lr. Each
phase gets a fresh optimizer and LR schedule over its own epochs; the resume
state records the phase's name. Pure: no TensorFlow here.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Phase:
    """One stretch of epochs trained with one trainable set and one schedule.

    Attributes:
        name: saved in the resume state ("heads", "main").
        start: the first epoch, 0-based (fit's initial_epoch).
        end: epochs completed when the phase is over (fit's epochs).
        layers: what trains: heads, all or a REGEX (model.build.set_trainable).
        lr_mult: the phase's peak LR is --lr x lr_mult.
        image_size: input side in pixels.
    """

    name: str
    start: int
    end: int
    layers: str
    lr_mult: float
    image_size: int

    @property
    def epochs(self) -> int:
        """The phase's length; its LR schedule spans exactly these epochs."""
        return self.end - self.start

    def peak_lr(self, lr: float) -> float:
        """The phase's peak LR for --lr `lr`."""
        return lr * self.lr_mult


def plan_phases(cfg: dict) -> list[Phase]:
    """The phases of a resolved config (image_size filled in), in training order."""
    warmup = cfg["warmup_epochs"]
    size = cfg["image_size"]
    heads = [Phase("heads", 0, warmup, "heads", 1.0, size)] if warmup else []
    return heads + [Phase("main", warmup, cfg["epochs"], cfg["layers"],
                          cfg["finetune_lr_mult"] if warmup else 1.0, size)]
