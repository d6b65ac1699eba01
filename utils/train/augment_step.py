"""--augment-on device: the batch augmentation inside the train step, per replica, on the accelerator.

    cpu     make_dataset(augment=--augment): decode + crop + flip per image, then
            the batch ops (utils/input/augment.build_augmenter) as a tf.data map.
    device  make_dataset(augment=only rrc and flip): decode + crop + flip + resize;
            the SAME build_augmenter callable runs at the start of the model's
            train_step, inside Keras' compiled step, once per replica.

Why an instance-level `train_step` wrapper (as distribute.fix_multiworker_build
already does) rather than a trainer model wrapping the real one: Keras 3.15's
TF trainer calls `self.train_step(data)` inside `strategy.run` (one call per
replica, in replica context) within its tf.function, so a wrapper there is
per replica by construction; the model object stays the one that is
checkpointed, rebuilt for --progressive and saved (checkpoint.inference_view
saves the layers only: the augmenter is plain TensorFlow, never a layer, so no
.h5/.keras/export can contain it). `test_step` is not wrapped: validation is
never augmented.

Random draws: build_augmenter's ops are stateful TF random ops with op-level
seeds. Inside a tf.function each op keeps its state across steps like the
tf.data map's does; under MirroredStrategy each replica traces its own copy of
the ops, so each replica gets its own augmenter with seed + replica * 7919
(the same seeds would give every replica the same draws). Replica 0 uses
--seed itself, as the pipeline does. Nothing here creates a variable inside
the step (no tf.random.Generator under a strategy).

XLA (--jit): rotate and color (and flip) compile; erasing (a dynamic-shape scatter), MixUp/CutMix (Beta
draws from tf.random.gamma) and RandAugment (equalization's histograms) do
not. With --jit the augmenter therefore runs per replica in a strategy.run of
its own, in the step's outer tf.function, and only Keras' train step is
XLA-compiled (`jit_train_function`).

Mixed precision: the augmenter computes in float32 (build_augmenter casts and
pins its layers to float32); the model's first layer casts to the compute dtype.
"""
from __future__ import annotations

import sys

import keras
import tensorflow as tf

from utils.input import augment as aug

PLACEMENTS = ("cpu", "device")
REPLICA_SEED_STRIDE = 7919  # a prime: replica k's op seeds never meet replica 0's (augment._seed uses 1009 * i)


def default_placement() -> str:
    """device when TensorFlow sees a GPU, else cpu."""
    return "device" if tf.config.list_physical_devices("GPU") else "cpu"


def resolve_placement(cfg: dict, chief: bool = True) -> dict:
    """cfg with --augment-on filled in (default_placement when not given); one stderr note if that chose device."""
    if cfg.get("augment_on"):
        return cfg
    cfg = dict(cfg, augment_on=default_placement())
    if cfg["augment_on"] == "device" and chief and batch_names(cfg["augment"]):
        print("note: a GPU is visible: --augment-on device (batch augmentations run in the train step; "
              "--augment-on cpu keeps them in the input pipeline)", file=sys.stderr)
    return cfg


def batch_names(names) -> list[str]:
    """The augmentation names that are batch ops (everything but the per-image decode-time ones)."""
    return [n for n in aug.parse_names(names) if n not in aug.AT_DECODE]


def pipeline_augment(cfg: dict):
    """What make_dataset gets as `augment` for training: all of --augment on cpu, its decode-time ops on device.

    Raises:
        UsageError: an unknown augmentation name (augment.parse_names).
    """
    if cfg.get("augment_on") != "device":
        return cfg["augment"]
    return {name: kwargs for name, kwargs in aug.parse_names(cfg["augment"]).items() if name in aug.AT_DECODE}


def replica_seed(seed, replica: int):
    """The augmenter seed of replica `replica` (None stays None: fresh randomness)."""
    return None if seed is None else int(seed) + REPLICA_SEED_STRIDE * int(replica)


def replica_index(count: int) -> int:
    """This replica's index in its sync group (0 outside a strategy, or when it is not a constant)."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None or count == 1:
        return 0
    index = tf.get_static_value(ctx.replica_id_in_sync_group)
    return 0 if index is None else int(index) % count


def build_replica_augmenters(cfg: dict, size: int, channels: int, replicas: int) -> list | None:
    """One build_augmenter callable per replica (replica_seed), or None when --augment has no batch op.

    Raises:
        UsageError: a bad augmentation option (build_augmenter).
    """
    if not batch_names(cfg["augment"]):
        return None
    return [aug.build_augmenter(cfg["augment"], (size, size), replica_seed(cfg["seed"], k), channels=channels)
            for k in range(max(1, int(replicas)))]


def augment_data(augmenters: list, data):
    """A (x, y[, sample_weight]) batch with the batch augmentation applied (this replica's augmenter)."""
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    x, y = augmenters[replica_index(len(augmenters))](x, y)
    return keras.utils.pack_x_y_sample_weight(x, y, sample_weight)


def augmenting_step(step, augmenters: list):
    """train_step(data) that augments the batch, then runs `step` (the model's own train_step)."""
    def train_step(data):
        return step(augment_data(augmenters, data))

    return train_step


def attach(model, cfg: dict, strategy, size: int, channels: int) -> bool:
    """--augment-on device: make `model`'s fit augment its training batches in the train step.

    A no-op (False) on cpu or when --augment has no batch op. Call once per model
    object (loop.build_at does, for every size of --progressive); the saved files
    are unaffected (checkpoint.inference_view).

    Raises:
        UsageError: a bad augmentation option.
    """
    if cfg.get("augment_on") != "device":
        return False
    augmenters = build_replica_augmenters(cfg, size, channels, strategy.num_replicas_in_sync)
    if augmenters is None:
        return False
    plain_step = model.train_step
    model.train_step = augmenting_step(plain_step, augmenters)
    model.make_train_function = jit_train_function(model, plain_step, augmenters)
    return True


def jit_train_function(model, plain_step, augmenters: list):
    """model.make_train_function for --augment-on device: Keras' own unless the step is XLA-compiled.

    With jit_compile, Keras compiles the whole per-replica train step, and the
    augmenter's Beta draws and histograms have no XLA kernels. Then: one
    strategy.run augments each replica's batch in the outer tf.function (not
    compiled), and a second one runs the plain train step under XLA. Keras'
    own steps_per_execution loop is not rebuilt: train.py runs one step per
    execution (the compile call sets none).
    """
    keras_make = model.make_train_function  # the class's, bound

    def make_train_function(force=False):
        if not model.jit_compile or model.steps_per_execution != 1:
            return keras_make(force)
        if model.train_function is not None and not force:
            return model.train_function
        from keras.src.backend.tensorflow.trainer import reduce_per_replica  # what Keras' own step uses

        strategy = model.distribute_strategy

        @tf.function(jit_compile=True, reduce_retracing=True)
        def step_on_data(data):
            out = strategy.run(plain_step, args=(data,))
            return reduce_per_replica(out, strategy, reduction="auto")

        @tf.function(reduce_retracing=True)
        def step_on_iterator(iterator):
            data = strategy.run(lambda d: augment_data(augmenters, d), args=(iterator.get_next(),))
            return tf.experimental.Optional.from_value(step_on_data(data))

        def function(iterator):
            if isinstance(iterator, (tf.data.Iterator, tf.distribute.DistributedIterator)):
                out = step_on_iterator(iterator)
                if not out.has_value():
                    raise StopIteration
                return out.get_value()
            for data in iterator:  # train_on_batch's one-batch generator
                out = step_on_data(strategy.run(lambda d: augment_data(augmenters, d), args=(data,)))
            return out

        model.train_function = function
        return function

    return make_train_function
