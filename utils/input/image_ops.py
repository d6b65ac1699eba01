"""The pixel contract: decode, resize and crop one image, as small pure TensorFlow functions.

Shared by train.py and detect.py: an image leaves here as float32 in [0, 255],
RGB order, at the model's input size, with the model's channel count.
Backbone-specific normalisation lives INSIDE the model (a registered Preprocess
layer, model/layers.py), so a saved model needs no external preprocessing and
detect.py cannot get it wrong.

`decode_planes` + `eval_image` are the ONE decode/eval-preprocess path; detect
maps `eval_image` over its inputs rather than copying it, and
`make_dataset(training=False)` maps exactly `eval_image` over the records.

JPEG fast paths (JPEG recognised by its magic bytes, not by image/format, so a
mislabelled record still decodes): eval decodes with `tf.io.decode_jpeg` at 1/2,
1/4 or 1/8 scale when the image is at least that much larger than the target
(DCT-domain scaling); training with random resized crop uses
`tf.io.decode_and_crop_jpeg`, which decodes only the crop window. Everything
else goes through `tf.io.decode_image` (the same kernel, all formats).

The direct path (`direct=True`, when `direct_jpeg` proves it from the
manifest): every record is one JPEG plane too small for a scaled decode or an
area resize, so the choices above are known before the first record and their
tf.cond / tf.switch_case are left out of the graph (measured on 1 core, 224 px
--short-side shards: 13-19% of the CPU per record). Same ops on the same
bytes, so the same pixels, bit for bit (tests/input/test_direct_jpeg.py). The
writer names a record's format from the same magic bytes (utils.image.headers),
so "every record is JPEG" in the manifest means `_is_jpeg` holds for each.

Every function works on ONE example, eagerly or inside a tf.data map.
"""
from __future__ import annotations

import tensorflow as tf

JPEG_MAGIC = b"\xff\xd8\xff"
RRC_SCALE = (0.08, 1.0)  # random resized crop: fraction of the image area (Inception)
RRC_RATIO = (3 / 4, 4 / 3)  # and aspect ratio (w / h) of the crop window
DCT_SHRINK = 2.0  # a JPEG this many times the target (both sides) decodes at 1/2 scale or less
AREA_SHRINK = 2.0  # an image this many times the target (both sides) resizes by area, else bilinear


def as_hw(size) -> tuple[int, int]:
    """An image size as (h, w) ints: an int is a square side, a pair is (h, w).

    Conversion only: each caller says in its own words which sizes it accepts
    (make_dataset: positive; model.build: at least the backbone's minimum).
    """
    if isinstance(size, int):
        size = (size, size)
    h, w = (int(s) for s in size)
    return h, w


def _is_jpeg(encoded: tf.Tensor) -> tf.Tensor:
    return tf.equal(tf.strings.substr(encoded, 0, 3), JPEG_MAGIC)


def _shrink(shape: tf.Tensor, size: tuple[int, int]) -> tf.Tensor:
    """How many times an image of `shape` [H, W, ...] is larger than `size` on its tighter side."""
    shape = tf.cast(shape, tf.float32)
    return tf.minimum(shape[0] / size[0], shape[1] / size[1])


def _check_single_plane(channels: int) -> None:
    if channels not in (1, 3):
        raise ValueError(f"a single plane can give 1 or 3 channels, not {channels}")


def to_channels(img: tf.Tensor, channels: int) -> tf.Tensor:
    """uint8 [H, W, c] with c in 1..4 (gray, gray+alpha, RGB, RGBA) -> [H, W, channels].

    Raises:
        ValueError: channels is not 1 or 3 (and the image does not have them already).
    """
    if img.shape.rank == 3 and img.shape[-1] == channels:
        return img  # already right (static shape): no cond, no copy
    _check_single_plane(channels)
    c = tf.shape(img)[-1]
    if channels == 3:
        # gray / gray+alpha -> replicate the gray plane; RGBA -> drop alpha
        img = tf.cond(c < 3, lambda: tf.tile(img[..., :1], [1, 1, 3]), lambda: img[..., :3])
    else:
        img = tf.cond(c < 3, lambda: img[..., :1], lambda: tf.image.rgb_to_grayscale(img[..., :3]))
    img.set_shape([None, None, channels])
    return img


def decode_one(encoded: tf.Tensor, size: tuple[int, int] | None = None, channels: int = 0) -> tf.Tensor:
    """Encoded bytes (JPEG, PNG, GIF first frame, BMP, WebP) -> uint8 [H, W, c].

    Args:
        encoded: a scalar string tensor.
        size: the (h, w) the image will be resized to. A JPEG at least twice as
            large on both sides is then decoded at 1/2, 1/4 or 1/8 scale inside
            libjpeg (DCT-domain scaling: far less work, and an antialiased
            downsample), never below `size`. None: full resolution.
        channels: 0 keeps the file's own count; 1 or 3 converts (to_channels; for
            JPEG libjpeg converts while decoding, which saves a copy).
    """
    def full():
        # decode_image with expand_animations=False returns 3-D for every format,
        # first frame of an animation; 16-bit PNG is scaled to uint8.
        img = tf.io.decode_image(encoded, channels=0, dtype=tf.uint8, expand_animations=False)
        return to_channels(img, channels) if channels else img

    if size is None:
        return full()

    def scaled_jpeg():
        factor = _shrink(tf.io.extract_jpeg_shape(encoded), size)
        # branch index 0..3 -> ratio 1, 2, 4, 8 (the largest that keeps both sides >= size)
        index = (tf.cast(factor >= DCT_SHRINK, tf.int32) + tf.cast(factor >= 2 * DCT_SHRINK, tf.int32)
                 + tf.cast(factor >= 4 * DCT_SHRINK, tf.int32))
        branches = [lambda r=r: tf.io.decode_jpeg(encoded, channels=channels, ratio=r) for r in (1, 2, 4, 8)]
        return tf.switch_case(index, branches)

    return tf.cond(_is_jpeg(encoded), scaled_jpeg, full)


def decode_planes(planes: tf.Tensor, channels: int, num_planes: int = 1,
                  size: tuple[int, int] | None = None) -> tf.Tensor:
    """1-D string tensor of encoded planes -> uint8 [H, W, channels].

    Args:
        planes: the record's image/encoded list.
        channels: 1 or 3 for an ordinary image; num_planes when planes > 1.
        num_planes: 1: an ordinary image, converted to `channels`. More: each plane
            is one grayscale channel, stacked in order (6-channel microscopy).
        size: the later resize target; lets JPEGs decode at a reduced scale (decode_one).
    Raises:
        ValueError: a channel count the planes cannot give.
    """
    if num_planes == 1:
        _check_single_plane(channels)
        return to_channels(decode_one(planes[0], size, channels), channels)
    if channels != num_planes:
        raise ValueError(f"{num_planes} planes give {num_planes} channels, not {channels}")
    # full-resolution planes: a reduced-scale decode could differ in size between planes
    img = tf.concat([to_channels(decode_one(planes[i]), 1) for i in range(num_planes)], axis=-1)
    img.set_shape([None, None, channels])
    return img


def resize_image(img: tf.Tensor, size: tuple[int, int]) -> tf.Tensor:
    """Any-dtype [H, W, C] -> float32 [h, w, C] in [0, 255].

    Shrinking by 2x or more on both sides: area averaging (a box filter, no
    aliasing of fine texture: OpenCV's INTER_AREA advice). Anything else:
    bilinear, whose 2-tap footprint covers a shrink below 2x well enough.
    Measured on 300-500 px JPEGs -> 224: area everywhere costs 20% of the whole
    decode+resize, bilinear with antialias=True (ScaleAndTranslate) 4x; JPEGs
    that are 2x larger than the target already came out of the DCT-scaled
    decode (decode_one) smaller, so area mostly serves big PNGs.

    The image is cast to float32 BEFORE resizing: TF's resize kernels run 40%
    faster on float input than on uint8 (0.074 vs 0.117 ms per 290x224 ->
    224x224 image, measured), with the same result. Both filters are convex
    combinations of input pixels, so the output stays in [0, 255] unclipped.
    """
    img = tf.cast(img, tf.float32)
    return tf.cond(_shrink(tf.shape(img), size) >= AREA_SHRINK,
                   lambda: tf.image.resize(img, size, method="area"),
                   lambda: tf.image.resize(img, size, method="bilinear"))


def _bilinear(img: tf.Tensor, size: tuple[int, int]) -> tf.Tensor:
    """resize_image's bilinear branch, for an image known to shrink less than AREA_SHRINK."""
    return tf.image.resize(tf.cast(img, tf.float32), size, method="bilinear")


def direct_jpeg(images: dict | None, size) -> bool:
    """Does a dataset's image summary prove that every record takes the direct JPEG path at `size`?

    True when every record is JPEG (so `_is_jpeg` holds) and every shorter side
    is below min(h, w) x 2: then min(H / h, W / w) < 2 for every image (its
    shorter side alone is below twice the matching target side), so no JPEG
    decodes at a reduced scale and no resize is by area, whatever the aspect
    ratio of the image or of the target; a random resized crop is no larger
    than its image, so the same holds for the crop. The bound is tight: an
    image with shorter side 2 x min(h, w) and a long enough other side is a
    2x shrink.

    Args:
        images: utils.dataset.manifest.merged_images of the shards read, or None
            (a manifest without the summary: not proven).
        size: the resize target (h, w), or an int for a square.
    """
    if not images or set(images["formats"]) != {"jpeg"}:
        return False
    return int(images["max_short_side"]) < min(DCT_SHRINK, AREA_SHRINK) * min(as_hw(size))


def _check_direct(num_planes: int) -> None:
    if num_planes != 1:
        raise ValueError(f"the direct JPEG path is for single-plane records, not {num_planes} planes")


def eval_image(planes: tf.Tensor, size, channels: int = 3, num_planes: int = 1, direct: bool = False,
               flip: str | None = None, flip_seed=None) -> tf.Tensor:
    """The evaluation preprocessing: decode, resize to `size`, float32 in [0, 255].

    Args:
        planes: the encoded planes (decode_planes).
        size: (h, w), or an int for a square.
        direct: the caller has proven (direct_jpeg) that every record is one JPEG
            plane with no reduced-scale decode or area resize at this size: a
            plain decode_jpeg + bilinear resize, no control flow. Same pixels.
        flip, flip_seed: training only (the pipeline's flip without a crop):
            random_flip's mode and seed, applied before the resize (flipped_resize).
    Raises:
        ValueError: a channel count the planes cannot give; `direct` with planes > 1.
    """
    size = as_hw(size)
    if direct:
        _check_direct(num_planes)
        _check_single_plane(channels)
        return flipped_resize(_bilinear, flip, flip_seed)(tf.io.decode_jpeg(planes[0], channels=channels), size)
    return flipped_resize(resize_image, flip, flip_seed)(decode_planes(planes, channels, num_planes, size=size), size)


# ----------------------------------------------------------------- per-image augmentation

FLIP_AXES = {"horizontal": [1], "vertical": [0], "horizontal_and_vertical": [0, 1]}


def random_flip(image: tf.Tensor, mode: str = "horizontal", seed=None) -> tf.Tensor:
    """One image [H, W, C] flipped with p = 0.5 (Keras RandomFlip's draw: u <= 0.5).

    Per image at decode rather than on the batch: only the flipped half pays
    for a copy, where a batch op pays a reverse AND a select for every image
    (measured 0.2 ms per 224 px image even fused by XLA). "horizontal_and_vertical"
    flips both axes on one draw, as Keras does.

    Alternatives measured in a one-core tf.data map after the 224 px resize
    (added ms/image; this cond + reverse 0.036-0.12 under load, the cond and
    draw alone ~0.002-0.036, a plain DeepCopy of the float image ~0.05): the
    reverse always 0.06-0.1, a [:, ::-1] slice 1.1, a gather 0.31, XLA 0.10,
    a transpose sandwich 0.15, crop_and_resize with a mirrored box (the flip
    inside the resize) 0.89, ScaleAndTranslate 1.4 (refuses a negative scale).
    Those were timed on the float32 image after the resize; the pipeline now
    flips the decoded uint8 image before its resize (flipped_resize), fewer
    bytes to copy.
    """
    axes = FLIP_AXES[mode]
    return tf.cond(tf.random.uniform([], seed=seed) <= 0.5, lambda: tf.reverse(image, axes), lambda: image)


def flipped_resize(resize, mode: str | None, seed=None):
    """resize(img, size) that first flips the decoded uint8 image (random_flip), or `resize` itself for mode None.

    The flip before the resize to the model's input: a uint8 value is a
    quarter of a float32 one, so the flipped half copies fewer bytes whenever
    the decoded image (or crop) has under 4x the output's pixels (--short-side
    shards: 3-4x fewer bytes). Both resize filters (half-pixel bilinear, area)
    are mirror-symmetric, so this is the same image as a flip after the resize
    up to float rounding (0.0003 of 255 at most, seen). Measured in bench/minimal.py's pinned
    one-core train path (flip,rrc), alternating runs: ours' CPU per image 0.94x
    of the minimal pipeline's with this, 0.98x with the flip after the resize.
    """
    if mode is None:
        return resize
    return lambda img, size: resize(random_flip(img, mode, seed), size)


# ----------------------------------------------------------------- random resized crop

def rrc_window(shape: tf.Tensor, scale=RRC_SCALE, ratio=RRC_RATIO, seed=None) -> tf.Tensor:
    """Image shape [H, W, ...] -> crop window int32 [y, x, h, w] (Inception-style sampling).

    Returned as a window rather than a cropped image so a JPEG can be decoded
    for that window only (tf.io.decode_and_crop_jpeg). When 10 attempts find no
    window inside the ranges, TF falls back to the whole image.
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


def random_resized_crop(image: tf.Tensor, size, scale=RRC_SCALE, ratio=RRC_RATIO, seed=None,
                        resize=resize_image) -> tf.Tensor:
    """One image [H, W, C] (any dtype) -> float32 [h, w, C] in the input's value range."""
    win = rrc_window(tf.shape(image), scale, ratio, seed)
    crop = tf.image.crop_to_bounding_box(image, win[0], win[1], win[2], win[3])
    return resize(crop, as_hw(size))


def train_crop_image(planes: tf.Tensor, size, channels: int = 3, num_planes: int = 1,
                     scale=RRC_SCALE, ratio=RRC_RATIO, seed=None, direct: bool = False,
                     flip: str | None = None, flip_seed=None) -> tf.Tensor:
    """Training decode with a random resized crop at full resolution -> float32 [h, w, C].

    The crop comes BEFORE the resize to the model's input, so it keeps the
    file's resolution; a JPEG decodes only the crop window.

    Args:
        direct: as in eval_image: the JPEG branch with a bilinear resize, no
            control flow (the same crop windows for the same seed).
        flip, flip_seed: random_flip's mode and seed for the crop, before its
            resize (flipped_resize); None: no flip.
    Raises:
        ValueError: a channel count the planes cannot give; `direct` with planes > 1.
    """
    size = as_hw(size)
    if direct:
        _check_direct(num_planes)
        _check_single_plane(channels)
        return _jpeg_crop(planes[0], size, channels, scale, ratio, seed, flipped_resize(_bilinear, flip, flip_seed))
    resize = flipped_resize(resize_image, flip, flip_seed)

    def generic():
        return random_resized_crop(decode_planes(planes, channels, num_planes), size, scale, ratio, seed, resize)

    if num_planes != 1:
        return generic()

    return tf.cond(_is_jpeg(planes[0]), lambda: _jpeg_crop(planes[0], size, channels, scale, ratio, seed,
                                                           resize), generic)


def _jpeg_crop(encoded: tf.Tensor, size: tuple[int, int], channels: int, scale, ratio, seed, resize) -> tf.Tensor:
    """A JPEG's random resized crop: only the crop window is decoded (most of a 0.08-area crop never is)."""
    win = rrc_window(tf.io.extract_jpeg_shape(encoded), scale, ratio, seed)
    return resize(tf.io.decode_and_crop_jpeg(encoded, win, channels=channels), size)
