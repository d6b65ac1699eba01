"""tf.data input pipeline: shards -> interleave -> parse -> decode -> augment -> batch -> prefetch.

Pixel contract (shared by train.py and detect.py): the pipeline yields float32
images in [0, 255], RGB order, at the model's input size, with the model's
channel count. Backbone-specific normalisation lives INSIDE the model (a
registered Preprocess layer, model/layers.py), so a saved model needs no
external preprocessing and detect.py cannot get it wrong.

`decode_planes` + `eval_image` are the ONE decode/eval-preprocess path; detect.py
imports them rather than copying them.
"""
from __future__ import annotations

import tensorflow as tf


def to_channels(img: tf.Tensor, channels: int) -> tf.Tensor:
    """uint8 [H, W, c] with c in 1..4 (gray, gray+alpha, RGB, RGBA) -> [H, W, channels]."""
    c = tf.shape(img)[-1]
    if channels == 3:
        # gray / gray+alpha -> replicate the gray plane; RGBA -> drop alpha
        img = tf.cond(c < 3, lambda: tf.tile(img[..., :1], [1, 1, 3]), lambda: img[..., :3])
    elif channels == 1:
        img = tf.cond(c < 3, lambda: img[..., :1], lambda: tf.image.rgb_to_grayscale(img[..., :3]))
    else:
        raise ValueError(f"a single plane can give 1 or 3 channels, not {channels}")
    img.set_shape([None, None, channels])
    return img


def decode_one(encoded: tf.Tensor) -> tf.Tensor:
    """Encoded bytes (JPEG, PNG, GIF first frame, BMP, WebP) -> uint8 [H, W, c]."""
    # decode_image with expand_animations=False returns 3-D for every format,
    # first frame of an animation; 16-bit PNG is scaled to uint8.
    return tf.io.decode_image(encoded, channels=0, dtype=tf.uint8, expand_animations=False)


def decode_planes(planes: tf.Tensor, channels: int, num_planes: int = 1) -> tf.Tensor:
    """1-D string tensor of encoded planes -> uint8 [H, W, channels].

    num_planes == 1: an ordinary image, converted to `channels` (1 or 3).
    num_planes  > 1: each plane is one grayscale channel, stacked in order
    (6-channel microscopy); then channels must equal num_planes.
    """
    if num_planes == 1:
        return to_channels(decode_one(planes[0]), channels)
    if channels != num_planes:
        raise ValueError(f"{num_planes} planes give {num_planes} channels, not {channels}")
    img = tf.concat([to_channels(decode_one(planes[i]), 1) for i in range(num_planes)], axis=-1)
    img.set_shape([None, None, channels])
    return img


def eval_image(planes: tf.Tensor, size: tuple[int, int], channels: int = 3, num_planes: int = 1) -> tf.Tensor:
    """The evaluation preprocessing: decode, resize to `size` (h, w), float32 in [0, 255]."""
    img = decode_planes(planes, channels, num_planes)
    img = tf.image.resize(img, size, method="bilinear", antialias=True)
    return tf.clip_by_value(img, 0.0, 255.0)
