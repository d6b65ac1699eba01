"""Progressive resizing with Keras: a model rebuilt per image size, one LR schedule over its parts.

Why rebuild rather than one model at a dynamic size: model/build.py builds at a
fixed (h, w) (its min-size check and the saved input shape rely on it), and a
functional Keras model built at one size refuses another at call time (its
input spec); re-wrapping it at (None, None) would mean overriding private input
specs on nested models. Rebuilding with build_model and copying the weights uses
public APIs only; every weight of our models (convolutions, BatchNorm, the head
after global pooling) is independent of the input size. A size change retraces
the train step either way, and the saved model is exactly what build_model
makes at the final size. The optimizer's variables are copied too, so moments,
EMA and the iteration counter (the LR schedule's position) carry over.
"""
from __future__ import annotations

import keras

from utils.train.checkpoint import restore_optimizer
from utils.train.phases import warp_segments


def model_size(model) -> int:
    """The square input side a model was built at."""
    return int(model.inputs[0].shape[1])


def rebuild(model, build, size: int):
    """A new model from `build(size)` holding `model`'s weights (same architecture, another size)."""
    new = build(size)
    new.set_weights(model.get_weights())
    return new


def optimizer_arrays(optimizer) -> list | None:
    """The optimizer's variable values, to carry into the next part's optimizer (None if unbuilt)."""
    if optimizer is None or not optimizer.built:
        return None
    return [v.numpy() for v in optimizer.variables]


def carry_optimizer(model, optimizer, arrays: list) -> None:
    """Give a freshly compiled optimizer the previous part's state (checkpoint.restore_optimizer's path)."""
    restore_optimizer(model, optimizer, {"optimizer": arrays})


class WarpedSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """schedule(virtual step): parts with other steps per epoch move the schedule by epochs.

    Args:
        schedule: made with `ref_steps` steps per epoch over all the parts' epochs.
        parts: (epochs, steps per epoch) of each part (phases.warp_segments).
        ref_steps: the schedule's steps per epoch.
    """

    def __init__(self, schedule, parts: list[tuple[int, int]], ref_steps: int):
        self.schedule = schedule
        self.segments = warp_segments(parts, ref_steps)

    def __call__(self, step):
        ops = keras.ops
        step = ops.cast(step, "float32")
        virtual = ops.convert_to_tensor(0.0, "float32")
        for start, length, scale in self.segments:
            virtual = virtual + ops.clip(step - float(start), 0.0, float(length)) * scale
        return self.schedule(virtual)

    def get_config(self):
        return {"schedule": self.schedule.get_config(), "segments": self.segments}
