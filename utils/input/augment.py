"""Training-time augmentation, by name, from Keras 3 core preprocessing layers.

    flip         keras.layers.RandomFlip                 (default mode "horizontal")
    rrc          random resized crop (Inception-style)   (scale, ratio)
    rotate       keras.layers.RandomRotation             (default factor 0.05 = +-18 degrees)
    color        keras.layers.RandomColorJitter          (brightness, contrast, saturation, hue)
    randaugment  keras.layers.RandAugment                (num_ops, factor)
    erasing      keras.layers.RandomErasing              (factor = probability, scale)
    mixup        keras.layers.MixUp                      (alpha) - mixes the labels too
    cutmix       keras.layers.CutMix                     (factor) - mixes the labels too

`build_augmenter(names, image_size)` returns ONE callable `(images, labels) ->
(images, labels)` working on a BATCH (float32 [B, H, W, C] in [0, 255], dense
float32 labels [B, K] or a per-class dict {name: [B, 1]}). Batch level because
Keras layers are vectorised (one kernel per batch instead of per image) and
MixUp/CutMix need partners from the same batch anyway.

Random resized crop is special: the pipeline does it per image at DECODE time
(`random_resized_crop` / `rrc_window`), before the resize to the model's input,
so the crop keeps full resolution and a JPEG only decodes the cropped window
(`tf.io.decode_and_crop_jpeg`). The batch version here (crop_and_resize on the
already-resized batch) exists for callers that have no decode step.

Ops are applied in a fixed order whatever order the names come in: geometry,
then colour, then erasing, then label mixing last (mixing before a colour jitter
would jitter two images' pixels with one draw; erasing after mixing would erase
a patch whose label mass has already been counted). With both mixup and cutmix,
each batch gets one of the two (p = 0.5), as timm does.

Validation never augments: the pipeline calls this for training only.
"""
from __future__ import annotations

import math
from typing import Callable

import tensorflow as tf

from utils.errors import UsageError, first_line

# name -> default kwargs; the order here is the order of application
DEFAULTS: dict[str, dict] = {
    "rrc": {"scale": (0.08, 1.0), "ratio": (3 / 4, 4 / 3)},
    "flip": {"mode": "horizontal"},
    "rotate": {"factor": 0.05, "fill_mode": "reflect"},
    "color": {"brightness_factor": 0.2, "contrast_factor": 0.2, "saturation_factor": (0.3, 0.7), "hue_factor": 0.02},
    "randaugment": {"num_ops": 2, "factor": 0.5},
    "erasing": {"factor": 0.5, "scale": (0.02, 0.33)},
    "mixup": {"alpha": 0.2},
    "cutmix": {"factor": 1.0},
}
NAMES = tuple(DEFAULTS)
NEEDS_RGB = ("color", "randaugment")  # hue/saturation and RandAugment's colour ops are RGB-only
MIXERS = ("mixup", "cutmix")

Op = Callable[[tf.Tensor, tf.Tensor], tuple]


def parse_names(names) -> dict[str, dict]:
    """list ["flip", "mixup"], "flip,mixup", or dict {name: kwargs|None} -> {name: kwargs}.

    Unknown names -> UsageError listing the valid ones.
    """
    if names is None:
        return {}
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
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


def _seed(seed, index):
    return None if seed is None else int(seed) + 1009 * index


# ----------------------------------------------------------------- random resized crop

def rrc_window(shape: tf.Tensor, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), seed=None) -> tf.Tensor:
    """Image shape [H, W, ...] -> crop window int32 [y, x, h, w] (Inception-style sampling).

    Returned as a window rather than a cropped image so a JPEG can be decoded
    for that window only (tf.io.decode_and_crop_jpeg).
    """
    begin, size, _ = tf.image.sample_distorted_bounding_box(
        tf.concat([tf.cast(shape[:2], tf.int32), [1]], 0),  # channels do not matter here
        bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4]),
        min_object_covered=0.0,
        aspect_ratio_range=tuple(ratio),
        area_range=tuple(scale),
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
        seed=seed or 0,
    )
    return tf.stack([begin[0], begin[1], size[0], size[1]])


def random_resized_crop(image: tf.Tensor, size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), seed=None) -> tf.Tensor:
    """One image [H, W, C] (any dtype) -> float32 [h, w, C] in the input's value range."""
    win = rrc_window(tf.shape(image), scale, ratio, seed)
    crop = tf.image.crop_to_bounding_box(image, win[0], win[1], win[2], win[3])
    from utils.input.pipeline import resize_image  # lazy: pipeline imports this module

    return resize_image(crop, tuple(int(s) for s in size))


def _rrc_batch(image_size, seed, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> Op:
    """Batch version: per-sample boxes, crop_and_resize back to image_size."""
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    gen = tf.random.Generator.from_seed(seed) if seed is not None else None

    def uniform(n, lo, hi):
        if gen is not None:
            return gen.uniform([n], lo, hi)
        return tf.random.uniform([n], lo, hi)

    def op(images, labels):
        b = tf.shape(images)[0]
        area = uniform(b, scale[0], scale[1])
        r = tf.exp(uniform(b, log_r[0], log_r[1]))
        # box side lengths as fractions of the (h, w) of the batch
        h = tf.minimum(tf.sqrt(area / r), 1.0)
        w = tf.minimum(tf.sqrt(area * r), 1.0)
        y0 = uniform(b, 0.0, 1.0) * (1.0 - h)
        x0 = uniform(b, 0.0, 1.0) * (1.0 - w)
        boxes = tf.stack([y0, x0, y0 + h, x0 + w], axis=1)
        out = tf.image.crop_and_resize(images, boxes, tf.range(b), list(image_size))
        return out, labels

    return op


# ----------------------------------------------------------------- Keras-layer ops

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


def _make_op(name: str, kwargs: dict, image_size, seed) -> Op:
    import keras

    L = keras.layers
    # dtype float32 pinned: a global mixed_float16 policy must not make the
    # pipeline emit float16 pixels (the pixel contract is float32).
    common = {"seed": seed, "dtype": "float32"}
    if name == "rrc":
        return _rrc_batch(image_size, seed, **kwargs)
    if name == "flip":
        return _layer_op(L.RandomFlip(**kwargs, **common))
    if name == "rotate":
        return _layer_op(L.RandomRotation(**kwargs, **common))
    if name == "color":
        return _layer_op(L.RandomColorJitter(value_range=(0, 255), **kwargs, **common))
    if name == "randaugment":
        return _layer_op(L.RandAugment(value_range=(0, 255), **kwargs, **common))
    if name == "erasing":
        return _layer_op(L.RandomErasing(value_range=(0, 255), **kwargs, **common))
    if name == "mixup":
        return _layer_op(L.MixUp(**kwargs, **common), mixes_labels=True)
    if name == "cutmix":
        return _layer_op(L.CutMix(**kwargs, **common), mixes_labels=True)
    raise UsageError(f"unknown augmentation {name!r}; valid: {', '.join(NAMES)}")


def _one_of(a: Op, b: Op, seed) -> Op:
    gen = tf.random.Generator.from_seed(seed) if seed is not None else None

    def op(images, labels):
        u = gen.uniform([]) if gen is not None else tf.random.uniform([])
        return tf.cond(u < 0.5, lambda: a(images, labels), lambda: b(images, labels))

    return op


def _labels_dense(labels):
    """Per-class dict {name: [B, 1]} -> ([B, K], names) so mixing treats every head alike."""
    if isinstance(labels, dict):
        names = list(labels)
        return tf.concat([tf.cast(labels[n], tf.float32) for n in names], axis=-1), names
    return labels, None


def _labels_back(dense, names):
    if names is None:
        return dense
    return {n: dense[:, i : i + 1] for i, n in enumerate(names)}


def build_augmenter(names, image_size, seed=None, *, channels: int = 3, skip=()) -> Callable | None:
    """names (list | dict | "a,b") -> callable (images, labels) -> (images, labels), or None.

    image_size: (h, w) of the batch (needed by the batch random resized crop).
    channels: the image channel count; colour ops need 3.
    skip: names handled elsewhere (the pipeline passes ("rrc",) because it crops at decode).
    """
    spec = parse_names(names)
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    image_size = tuple(int(s) for s in image_size)
    for name in spec:
        if name in NEEDS_RGB and channels != 3:
            raise UsageError(f"augmentation {name!r} needs 3-channel images, these have {channels}")
    ops: list[Op] = []
    mixers: list[Op] = []
    for index, name in enumerate(NAMES):
        if name not in spec or name in skip:
            continue
        kwargs = dict(DEFAULTS[name], **spec[name])
        try:
            op = _make_op(name, kwargs, image_size, _seed(seed, index))
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
        dense, label_names = _labels_dense(labels)
        images = tf.cast(images, tf.float32)
        for op in ops:
            images, dense = op(images, dense)
        images = tf.clip_by_value(tf.cast(images, tf.float32), 0.0, 255.0)
        return images, _labels_back(dense, label_names)

    augment.names = [n for n in NAMES if n in spec and n not in skip]
    return augment
