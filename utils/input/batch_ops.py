"""Batch augmentation ops in plain TensorFlow, each split into draw + apply.

    draw(images)                  -> params: small tensors ([B] or [B, k]), every random choice
    apply(images, labels, params) -> (images, labels): pure arithmetic, no randomness

Why split: `apply` of consecutive ops is compiled by XLA as ONE function
(augment.py), which fuses the per-pixel arithmetic into a single pass over the
batch. The Keras layers these replace ran each op as a chain of separate
kernels over float32 [B, H, W, C] tensors (a flip alone: a reverse, a select
and a cast, 1.65 ms per 224 px image where one pass costs ~0.1 ms) and
RandAugment computed all 11 of its ops for every slot and kept two. The
draws stay outside XLA as ordinary stateful random ops (seeded per op), so a
tf.data map or a train step owns their state and no tf.random.Generator
variable has to exist under a tf.distribute strategy. Erasing is the one op
left to plain TF: it scatters the ~4% of pixels it erases (params["index"],
its draw), where XLA would make a whole-batch select of it.

What a pass costs here (1 core, 224 px, bench/augment.py): reading and writing
a float32 batch once is ~0.1 ms per image, so each op is written to touch the
batch as few times as it can: a per-channel formula broadcast from
[B, H, W, 1] planes (not a stack of three), a reduction shaped as rows XLA can
vectorise, the final clip inside the last compiled pass.

Semantics are the Keras 3.15 layers' (ranges parsed by those layers' own
constructors, augment.py): the same distributions per image, the same clips,
the same label mixing; tests/input/test_augment_stats.py compares them.
All ops take float32 [B, H, W, C] in [0, 255] and keep the shape.
"""
from __future__ import annotations

import math

import tensorflow as tf


def _uniform(shape, lo, hi, seed):
    return tf.random.uniform(shape, float(lo), float(hi), seed=seed)


def _beta(n, alpha, seed):
    """Beta(alpha, alpha) draws from two gammas (what keras.random.beta does)."""
    a = tf.random.gamma([n], alpha, seed=seed)
    b = tf.random.gamma([n], alpha, seed=None if seed is None else seed + 1)
    return a / (a + b)


def _bcast(v):
    return tf.reshape(v, [-1, 1, 1, 1])


# ----------------------------------------------------------------- flip

def flip_draw(images, seed=None):
    return {"flips": tf.random.uniform([tf.shape(images)[0]], seed=seed) <= 0.5}


def flip_apply(images, labels, p, mode="horizontal"):
    """Keras RandomFlip: "horizontal_and_vertical" flips both axes with ONE draw, as Keras does."""
    axes = {"horizontal": [2], "vertical": [1], "horizontal_and_vertical": [1, 2]}[mode]
    return tf.where(_bcast(p["flips"]), tf.reverse(images, axes), images), labels


# ----------------------------------------------------------------- colour jitter

def color_draw(images, brightness=None, contrast=None, saturation=None, hue=None, seed=None):
    """Factor ranges as Keras' sub-layers parsed them ((lo, hi) or None = off)."""
    b = tf.shape(images)[0]
    s = (lambda i: None) if seed is None else (lambda i: seed + 7 * i)
    p = {}
    if brightness is not None:
        p["delta"] = _uniform([b], *brightness, s(1)) * 255.0
    if contrast is not None:
        p["contrast"] = _uniform([b], 1.0 - contrast[0], 1.0 + contrast[1], s(2))
    if saturation is not None:
        u = _uniform([b], *saturation, s(3))
        p["saturation"] = u / (1.0 - u + 1e-7)  # keras.backend.epsilon()
    if hue is not None:
        sign = tf.where(tf.random.uniform([b], seed=s(4)) > 0.5, -1.0, 1.0)
        p["hue"] = sign * _uniform([b], *hue, s(5)) * 0.5
    return p


def _channel_mean(x):
    """Per-image, per-channel mean [B, 1, 1, C], summed as [B, N/k, k*C] over axis 1 first.

    XLA lowers reduce_mean over (H, W) of a channel-minor batch to a column
    reduction with a 3-wide minor dimension; k pixels side by side give it a
    k*C-wide row to vectorise (measured 0.05 vs 0.15 ms per 224 px image).
    """
    n, c = x.shape[1] * x.shape[2], x.shape[3]
    k = next(k for k in (16, 8, 4, 2, 1) if n % k == 0)
    rows = tf.reduce_sum(tf.reshape(x, [-1, n // k, k * c]), axis=1)
    return tf.reshape(tf.reduce_sum(tf.reshape(rows, [-1, k, c]), axis=1), [-1, 1, 1, c]) / float(n)


def _hue_saturation(x, hue, saturation):
    """RGB -> HSV, H + hue, S * saturation, -> RGB, written out without HSV planes.

    With V = max, R = max - min: HSV's inverse gives channel k as
    V - V * S' * (1 - d_k(H')) and V * S' = saturation * R, so no division by
    V and no stacked HSV tensor; H is XLA's RGBToHSV formula (red's sector
    first, then green's). The per-pixel planes stay [B, H, W, 1] and meet
    per-channel constants by broadcasting: a stack of three channel formulas
    made XLA select per element (0.48 vs 0.28 ms per 224 px image). Same
    values as the round trip up to float rounding.
    """
    r, g, b = x[..., 0:1], x[..., 1:2], x[..., 2:3]
    top = tf.maximum(tf.maximum(r, g), b)
    spread = top - tf.minimum(tf.minimum(r, g), b)
    norm = tf.where(spread > 0.0, 1.0 / tf.where(spread > 0.0, spread, 1.0), 0.0) / 6.0
    h = tf.where(top == r, (g - b) * norm, tf.where(top == g, (b - r) * norm + 2.0 / 6.0, (r - g) * norm + 4.0 / 6.0))
    h = tf.where(h < 0.0, h + 1.0, h) + _bcast(hue)
    h6 = 6.0 * tf.where(h > 1.0, h - 1.0, tf.where(h < 0.0, h + 1.0, h))
    k = spread if saturation is None else spread * _bcast(saturation)
    # XLA's HSVToRGB: red clip(|6H - 3| - 1), green clip(2 - |6H - 2|), blue clip(2 - |6H - 4|)
    d = tf.clip_by_value(tf.constant([1.0, -1.0, -1.0]) * tf.abs(h6 - tf.constant([3.0, 2.0, 4.0]))
                         + tf.constant([-1.0, 2.0, 2.0]), 0.0, 1.0)
    return tf.clip_by_value(top - k * (1.0 - d), 0.0, 255.0)


def color_apply(images, labels, p):
    """Brightness, contrast, saturation, hue in Keras RandomColorJitter's order and clips.

    Saturation and hue share one pass (Keras made two HSV round trips,
    _hue_saturation); scaling S in HSV is exactly a blend towards the
    pixel's max channel, so without a hue shift no hue is computed at all.
    """
    x = images
    if "delta" in p:
        x = tf.clip_by_value(x + _bcast(p["delta"]), 0.0, 255.0)
    if "contrast" in p:
        mean = _channel_mean(x)
        x = tf.clip_by_value((x - mean) * _bcast(p["contrast"]) + mean, 0.0, 255.0)
    if "hue" in p:
        x = _hue_saturation(x, p["hue"], p.get("saturation"))
    elif "saturation" in p:
        top = tf.reduce_max(x, axis=-1, keepdims=True)
        x = top - _bcast(p["saturation"]) * (top - x)
    return x, labels


def equalize(images, bins: int = 256):
    """Keras Equalization (value range 0-255), bit for bit: ONE histogram per channel over the whole batch.

    Keras' form (a bincount, cumsum and take per channel, each a whole-batch
    TF kernel: 2.9 ms per 224 px image) in one XLA-compilable function; the
    two index formulas stay Keras' own (they round differently).
    """
    c = images.shape[-1]
    offset = tf.range(c) * bins  # channel k's bins are [k * bins, (k + 1) * bins)
    hist_index = tf.clip_by_value(tf.cast((images - 0.0) * (bins - 1) / 255.0, tf.int32), 0, bins - 1)
    hist = tf.raw_ops.DenseBincount(input=tf.reshape(hist_index + offset, [-1]), size=c * bins,
                                    weights=tf.constant([], tf.int32))
    hist = tf.reshape(hist, [c, bins])
    cdf = tf.cumsum(hist, axis=1)
    first = tf.argmax(tf.cast(cdf > 0, tf.int32), axis=1, output_type=tf.int32)
    cdf_min = tf.gather(cdf, first, batch_dims=1)[:, None]
    span = cdf[:, -1:] - cdf_min
    span = tf.where(span == 0, 1, span)
    table = tf.round(tf.cast((cdf - cdf_min) * 255, tf.float32) / tf.cast(span, tf.float32))
    table = tf.reshape(tf.clip_by_value(table, 0.0, 255.0), [-1])
    lookup = tf.cast(tf.clip_by_value((images / 255.0) * (bins - 1), 0.0, float(bins - 1)), tf.int32)
    flat = tf.reshape(tf.math.count_nonzero(hist, axis=1) <= 1, [1, 1, 1, c])  # one used bin: left as it is
    return tf.where(flat, images, tf.gather(table, lookup + offset))


# ----------------------------------------------------------------- rotation

def rotate_draw(images, factor=(-0.05, 0.05), seed=None):
    return {"angle": _uniform([tf.shape(images)[0]], factor[0] * 360.0, factor[1] * 360.0, seed)}


def _reflect(c, n: int):
    """Integer-valued coordinates -> inside [0, n) by reflection (d c b a | a b c d | d c b a)."""
    period = 2.0 * n
    c = c - period * tf.floor(c / period)
    return tf.where(c >= n, period - 1.0 - c, c)


def rotation_matrix(angle, h: int, w: int):
    """Degrees [B] -> Keras' output -> input affine matrices [B, 8] for a rotation about the centre."""
    rad = angle * (math.pi / 180.0)
    cos, sin = tf.cos(rad), tf.sin(rad)
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    zero = tf.zeros_like(cos)
    return tf.stack([cos, -sin, cx - cx * cos + cy * sin, sin, cos, cy - cx * sin - cy * cos, zero, zero], axis=1)


def affine_apply(images, matrix):
    """ImageProjectiveTransformV3's affine case, fill_mode reflect, bilinear, in plain TF.

    matrix [B, 8]: Keras' output -> input mapping (a0 a1 a2 b0 b1 b2 0 0):
    in_x = a0 x + a1 y + a2, in_y = b0 x + b1 y + b2. The four bilinear taps
    are gathered once per pixel for all channels (the TF kernel recomputes the
    mapping per channel and cannot be compiled by XLA).

    Measured (1 core, 224 px, XLA, ms/image): this 0.54; integer tap indices
    with a one-fold reflect 0.55 (the gathers are the cost); channels gathered
    apart 2.3; RGB packed in an int32/int64 (4 scalar gathers) 6.4-7.2;
    float16 rows 0.67; pixel pairs [N, 6] 1.2, 2x2 quads [N, 12] 2.4. Per
    image at decode (one XLA call per image in the decode map) gave 0.84
    added in bench/augment.py where this batch op gave 0.44 in the same run.
    Also tried, timed on one batch under load (this 0.58-0.78 in the same
    runs): tap indices from a separate compiled pass 1.07; RGBA rows (a 4th
    channel padded on) 1.0; a 42 px SYMMETRIC-padded copy, taps without a
    reflect, 1.0 (the pad costs more than the reflect); channel planes
    [C, B, H, W] 3.5; the 2x2 quad as one XLA window gather (slice
    [1, 2, 2, C]) 1.5; ImageProjectiveTransformV3 3.4. Its parts: the index
    arithmetic alone 0.24, one tap 0.38, two 0.46, a bare read + write of the
    batch 0.2: the taps are the cost, not the reflect. Ruled out by the
    pinned 0.02 against the Keras kernel (tests/input/test_rotate.py): three
    1-D shears (Paeth) differ from bilinear by up to 26 of 255 in the middle;
    uint8 or float16 taps round the float pixels by up to 0.5 or 0.125.
    One floor per axis (the +1 tap folded from the first): same pixels, same 0.80 as this under load.
    """
    shape = tf.shape(images)
    b, h, w, c = shape[0], images.shape[1], images.shape[2], images.shape[3]
    m = [tf.reshape(matrix[:, i], [-1, 1, 1]) for i in range(6)]
    yy, xx = tf.meshgrid(tf.range(h, dtype=tf.float32), tf.range(w, dtype=tf.float32), indexing="ij")
    sx = m[0] * xx + m[1] * yy + m[2]
    sy = m[3] * xx + m[4] * yy + m[5]
    x0, y0 = tf.floor(sx), tf.floor(sy)
    fx, fy = (sx - x0)[..., None], (sy - y0)[..., None]
    flat = tf.reshape(images, [-1, c])
    base = tf.reshape(tf.range(b) * (h * w), [-1, 1, 1])

    def tap(yi, xi):
        index = tf.cast(_reflect(yi, h), tf.int32) * w + tf.cast(_reflect(xi, w), tf.int32)
        return tf.gather(flat, base + index)

    top_left, top_right = tap(y0, x0), tap(y0, x0 + 1.0)
    bottom_left, bottom_right = tap(y0 + 1.0, x0), tap(y0 + 1.0, x0 + 1.0)
    top = top_left + (top_right - top_left) * fx
    bottom = bottom_left + (bottom_right - bottom_left) * fx
    return top + (bottom - top) * fy


def rotate_apply(images, labels, p):
    """Keras RandomRotation (fill_mode reflect, bilinear): rotation about the centre."""
    return affine_apply(images, rotation_matrix(p["angle"], images.shape[1], images.shape[2])), labels


# ----------------------------------------------------------------- boxes: erasing, cutmix

def _box(n, length, ratio, seed):
    """Keras' crop bounds: a run of ratio * length starting uniformly where it fits."""
    run = ratio * float(length)
    start = tf.random.uniform([n], seed=seed) * (float(length) - run)
    return start, start + run


def _col(v):
    """A per-image value [B] -> [B, 1, 1], against [B, rows, columns] grids."""
    return tf.reshape(v, [-1, 1, 1])


def _box_pixels(x0, x1, y0, y1, keep, h: int, w: int, max_h: int, max_w: int):
    """The (b, y, x) of every pixel inside image b's box, for the images `keep` says -> [N, 3] int32.

    A pixel is inside when x0 <= x < x1 and y0 <= y < y1, i.e. x in
    [ceil(x0), ceil(x1)). max_h, max_w bound a box's pixel
    rows and columns: the grid they span per image is all that is looked at.
    """
    def run(lo, hi, size):
        start = tf.cast(tf.math.ceil(lo), tf.int32)
        return start, tf.minimum(tf.cast(tf.math.ceil(hi), tf.int32), size) - start

    ys, ny = run(y0, y1, h)
    xs, nx = run(x0, x1, w)
    i = tf.reshape(tf.range(max_h), [1, -1, 1])
    j = tf.reshape(tf.range(max_w), [1, 1, -1])
    inside = (i < _col(ny)) & (j < _col(nx)) & _col(keep)
    where = tf.cast(tf.where(inside), tf.int32)
    n = where[:, 0]
    return tf.stack([n, tf.gather(ys, n) + where[:, 1], tf.gather(xs, n) + where[:, 2]], axis=1)


def erasing_draw(images, factor=(0.0, 0.5), scale=(0.02, 0.33), seed=None, fill_value=None):
    """The boxes, which images get theirs, and the fill of exactly the pixels erased.

    Only the erased pixels draw noise (~4% of a batch at the defaults): one
    N(0, 1) sample per pixel and channel, as Keras drew for every pixel and
    then masked (3.3 ms per 224 px image, the op's whole cost).
    """
    b = tf.shape(images)[0]
    h, w, c = images.shape[1], images.shape[2], images.shape[3]
    s = (lambda i: None) if seed is None else (lambda i: seed + 7 * i)
    side = tf.sqrt(_uniform([b, 2], *scale, s(1)))
    x0, x1 = _box(b, w, side[:, 0], s(2))
    y0, y1 = _box(b, h, side[:, 1], s(3))
    apply = tf.random.uniform([b], seed=s(4)) < _uniform([b], *factor, s(5))
    # a side is at most sqrt(scale[1]) of the image: ceil of that run, +1 for rounding
    bound = lambda n: min(n, int(math.ceil(math.sqrt(float(scale[1])) * n)) + 1)  # noqa: E731
    index = _box_pixels(x0, x1, y0, y1, apply, h, w, bound(h), bound(w))
    if fill_value is None:
        fill = tf.random.normal([tf.shape(index)[0], c], seed=s(6)) * 255.0
    else:
        fill = tf.broadcast_to(tf.constant(fill_value, tf.float32), [tf.shape(index)[0], c])
    return {"box": (x0, x1, y0, y1), "apply": apply, "index": index, "fill": fill}


def erasing_apply(images, labels, p, clip: bool = False):
    """Keras RandomErasing: each drawn box filled with N(0, 1) * 255 noise (or fill_value).

    One scatter into a copy of the batch instead of a whole-batch select.
    clip=True returns the batch clipped to [0, 255], in the same one pass
    over the batch (clipping commutes with the scatter).
    """
    fill = p["fill"]
    if clip:
        images, fill = _clip_255(images), tf.clip_by_value(fill, 0.0, 255.0)
    return tf.tensor_scatter_nd_update(images, p["index"], fill), labels


# TF's clip_by_value is a minimum and a maximum kernel, two passes; compiled it is one
_clip_255 = tf.function(lambda x: tf.clip_by_value(x, 0.0, 255.0), jit_compile=True)


def cutmix_draw(images, factor=(0.0, 1.0), seed=None):
    b = tf.shape(images)[0]
    h, w = images.shape[1], images.shape[2]
    s = (lambda i: None) if seed is None else (lambda i: seed + 7 * i)
    alpha = _uniform([], *factor, s(1)) + 1e-6
    ratio = tf.sqrt(1.0 - _beta(b, alpha, s(2)))
    x0, x1 = _box(b, w, ratio, s(4))
    y0, y1 = _box(b, h, ratio, s(5))
    weight = 1.0 - (x1 - x0) * (y1 - y0) / float(w * h)
    return {"box": (x0, x1, y0, y1), "weight": weight, "order": tf.random.shuffle(tf.range(b), seed=s(6))}


def cutmix_apply(images, labels, p):
    """Keras CutMix: a box from a partner image; labels weighted by the box's exact area.

    The pixels with x0 <= x < x1 and y0 <= y < y1, but the batch is taken as
    rows [B, H, W * C] and the box's columns as the runs [C ceil(x0), C ceil(x1)) of a row
    (x0 <= x < x1 for an integer x is ceil(x0) <= x < ceil(x1)): XLA's select
    then loops over a W * C-wide minor dimension, not a 3-wide one (measured
    0.145 vs 0.195 ms per 224 px image on one batch, the same pixels).
    """
    h, w, c = images.shape[1], images.shape[2], images.shape[3]
    x0, x1, y0, y1 = p["box"]
    rows = tf.reshape(images, [-1, h, w * c])
    run = lambda v: _col(c * tf.cast(tf.math.ceil(v), tf.int32))  # noqa: E731
    j = tf.reshape(tf.range(w * c), [1, 1, -1])
    gy = tf.reshape(tf.range(h, dtype=tf.float32), [1, -1, 1])
    inside = (j >= run(x0)) & (j < run(x1)) & (gy >= _col(y0)) & (gy < _col(y1))
    images = tf.reshape(tf.where(inside, tf.gather(rows, p["order"]), rows), tf.shape(images))
    w = tf.reshape(p["weight"], [-1, 1])
    return images, w * labels + (1.0 - w) * tf.gather(labels, p["order"])


# ----------------------------------------------------------------- mixup

def mixup_draw(images, alpha=0.2, seed=None):
    b = tf.shape(images)[0]
    return {"weight": _beta(b, float(alpha), seed),
            "order": tf.random.shuffle(tf.range(b), seed=None if seed is None else seed + 3)}


def mixup_apply(images, labels, p):
    """Keras MixUp: w * x + (1 - w) * partner, w ~ Beta(alpha, alpha) per image; labels alike."""
    w = p["weight"]
    images = _bcast(w) * images + _bcast(1.0 - w) * tf.gather(images, p["order"])
    w = tf.reshape(w, [-1, 1])
    return images, w * labels + (1.0 - w) * tf.gather(labels, p["order"])
