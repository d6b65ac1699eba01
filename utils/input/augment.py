"""Training-time augmentation, by name, from Keras 3 core preprocessing layers.

    flip         keras.layers.RandomFlip                 (default mode "horizontal")
    rrc          random resized crop (Inception-style)   (scale, ratio)
    rotate       keras.layers.RandomRotation             (default factor 0.05 = +-18 degrees)
    color        keras.layers.RandomColorJitter          (brightness, contrast, saturation, hue)
    randaugment  keras.layers.RandAugment                (num_ops, factor)
    erasing      keras.layers.RandomErasing              (factor = probability, scale)
    mixup        keras.layers.MixUp                      (alpha) - mixes the labels too
    cutmix       keras.layers.CutMix                     (factor) - mixes the labels too

Names come as a list, a dict {name: kwargs} (YAML) or the command line's "a,b"
(`split_names`, the one parser of that list; train's --augment uses it too).

`build_augmenter(names, image_size, seed)` returns ONE callable `(images, labels)
-> (images, labels)` working on a BATCH (float32 [B, H, W, C] in [0, 255], dense
float32 labels [B, K] or a per-class dict {name: [B, 1]}). Batch level because
Keras layers are vectorised (one kernel per batch instead of per image) and
MixUp/CutMix need partners from the same batch anyway. Each op is a small
function of (images, labels), so a caller may run the callable in the tf.data
pipeline or inside its own train step.

Random resized crop is not a batch op: the pipeline does it per image at DECODE
time (`decode_crop` gives its options, utils/input/image_ops.train_crop_image
crops), before the resize to the model's input, so the crop keeps full
resolution and a JPEG only decodes the cropped window. build_augmenter leaves it out.

Ops are applied in a fixed order whatever order the names come in: geometry,
then colour, then erasing, then label mixing last (mixing before a colour jitter
would jitter two images' pixels with one draw; erasing after mixing would erase
a patch whose label mass has already been counted). With both mixup and cutmix,
each batch gets one of the two (p = 0.5), as timm does.

Validation never augments: the pipeline calls this for training only.
"""
from __future__ import annotations

from typing import Callable

import tensorflow as tf

from utils.errors import UsageError, first_line
from utils.input.image_ops import RRC_RATIO, RRC_SCALE, as_hw
from utils.input.labels import join_labels, split_labels

# name -> default kwargs; the order here is the order of application
DEFAULTS: dict[str, dict] = {
    "rrc": {"scale": RRC_SCALE, "ratio": RRC_RATIO},
    "flip": {"mode": "horizontal"},
    "rotate": {"factor": 0.05, "fill_mode": "reflect"},
    "color": {"brightness_factor": 0.2, "contrast_factor": 0.2, "saturation_factor": (0.3, 0.7), "hue_factor": 0.02},
    "randaugment": {"num_ops": 2, "factor": 0.5},
    "erasing": {"factor": 0.5, "scale": (0.02, 0.33)},
    "mixup": {"alpha": 0.2},
    "cutmix": {"factor": 1.0},
}
NAMES = tuple(DEFAULTS)
AT_DECODE = ("rrc",)  # per-image ops the pipeline runs while decoding, not in the batch augmenter
NEEDS_RGB = ("color", "randaugment")  # hue/saturation and RandAugment's colour ops are RGB-only
MIXERS = ("mixup", "cutmix")

Op = Callable[[tf.Tensor, tf.Tensor], tuple]


def split_names(spec):
    """The command line's "flip,rrc" -> ["flip", "rrc"]; "", "none" and None -> [].

    A list or a dict (YAML's {name: {kwargs}}) passes through unchanged.
    """
    if spec is None:
        return []
    if not isinstance(spec, str):
        return spec
    if spec.strip().lower() == "none":
        return []
    return [s.strip() for s in spec.split(",") if s.strip()]


def parse_names(names) -> dict[str, dict]:
    """list ["flip", "mixup"], "flip,mixup", or dict {name: kwargs|None} -> {name: kwargs}.

    Raises:
        UsageError: an unknown name (the message lists the valid ones).
    """
    names = split_names(names)
    if isinstance(names, dict):
        items = [(str(k), dict(v or {})) for k, v in names.items()]
    else:
        items = [(str(n), {}) for n in names]
    out = {}
    for name, kwargs in items:
        key = name.lower()
        if key in ("none", ""):
            continue
        if key not in DEFAULTS:
            raise UsageError(f"unknown augmentation {name!r}; valid: {', '.join(NAMES)}")
        out[key] = kwargs
    return out


def decode_crop(spec: dict[str, dict]) -> dict | None:
    """The random resized crop's kwargs (defaults filled in) if `spec` (parse_names) asks for one."""
    if "rrc" not in spec:
        return None
    return dict(DEFAULTS["rrc"], **spec["rrc"])


def _seed(seed, index):
    return None if seed is None else int(seed) + 1009 * index


# ----------------------------------------------------------------- batch ops

def _layer_op(layer, mixes_labels: bool = False) -> Op:
    # training=True explicitly: inside tf.data Keras cannot see a training
    # phase and would default to inference (MixUp then passes labels through).
    if mixes_labels:
        def op(images, labels):
            out = layer({"images": images, "labels": labels}, training=True)
            return out["images"], out["labels"]
    else:
        def op(images, labels):
            return layer(images, training=True), labels
    return op


def _make_op(name: str, kwargs: dict, seed) -> Op:
    # lazy: Keras is needed only when a dataset augments, not to parse names
    import keras

    layers = keras.layers
    # dtype float32 pinned: a global mixed_float16 policy must not make the
    # pipeline emit float16 pixels (the pixel contract is float32).
    common = {"seed": seed, "dtype": "float32"}
    if name == "flip":
        return _layer_op(layers.RandomFlip(**kwargs, **common))
    if name == "rotate":
        return _layer_op(layers.RandomRotation(**kwargs, **common))
    if name == "color":
        return _layer_op(layers.RandomColorJitter(value_range=(0, 255), **kwargs, **common))
    if name == "randaugment":
        return _layer_op(layers.RandAugment(value_range=(0, 255), **kwargs, **common))
    if name == "erasing":
        return _layer_op(layers.RandomErasing(value_range=(0, 255), **kwargs, **common))
    if name == "mixup":
        return _layer_op(layers.MixUp(**kwargs, **common), mixes_labels=True)
    if name == "cutmix":
        return _layer_op(layers.CutMix(**kwargs, **common), mixes_labels=True)
    raise UsageError(f"unknown augmentation {name!r}; valid: {', '.join(NAMES)}")


def _one_of(first: Op, second: Op, seed) -> Op:
    gen = tf.random.Generator.from_seed(seed) if seed is not None else None

    def op(images, labels):
        u = gen.uniform([]) if gen is not None else tf.random.uniform([])
        return tf.cond(u < 0.5, lambda: first(images, labels), lambda: second(images, labels))

    return op


def build_augmenter(names, image_size, seed=None, *, channels: int = 3) -> Callable | None:
    """The batch augmentation for `names` as one callable (images, labels) -> (images, labels).

    Args:
        names: list | dict | "a,b" (parse_names). Decode-time names (AT_DECODE: rrc)
            are left to the pipeline.
        image_size: (h, w) of the batch, or an int for a square (every op keeps it).
        seed: None for fresh randomness every run; an int makes the draws repeatable.
        channels: the image channel count; colour ops need 3.
    Returns:
        the callable (`.names`: the ops it applies, in order; `.image_size`: the
        (h, w) it was built for), or None when nothing is left to do at batch level.
    Raises:
        UsageError: an unknown name, a misspelt option, a value Keras refuses, or a
            colour op on non-RGB images.
    """
    spec = parse_names(names)
    image_size = as_hw(image_size)
    for name in spec:
        if name in NEEDS_RGB and channels != 3:
            raise UsageError(f"augmentation {name!r} needs 3-channel images, these have {channels}")
    ops: list[Op] = []
    mixers: list[Op] = []
    for index, name in enumerate(NAMES):
        if name not in spec or name in AT_DECODE:
            continue
        kwargs = dict(DEFAULTS[name], **spec[name])
        try:
            op = _make_op(name, kwargs, _seed(seed, index))
        except TypeError as e:  # a misspelt option in the config
            raise UsageError(f"augmentation {name!r}: {e}") from None
        except ValueError as e:  # Keras' own range checks (factor > 1, ...)
            raise UsageError(f"augmentation {name!r}: {first_line(e)}") from None
        (mixers if name in MIXERS else ops).append(op)
    if len(mixers) == 2:
        ops.append(_one_of(mixers[0], mixers[1], _seed(seed, 99)))
    else:
        ops.extend(mixers)
    if not ops:
        return None

    def augment(images, labels):
        dense, label_names = join_labels(labels)
        images = tf.cast(images, tf.float32)
        for op in ops:
            images, dense = op(images, dense)
        images = tf.clip_by_value(tf.cast(images, tf.float32), 0.0, 255.0)
        return images, dense if label_names is None else split_labels(dense, label_names)

    augment.names = [n for n in NAMES if n in spec and n not in AT_DECODE]
    augment.image_size = image_size
    return augment
