"""Training-time augmentation, by name, with the semantics of Keras 3 preprocessing layers.

    flip         keras.layers.RandomFlip                 (default mode "horizontal")
    rrc          random resized crop (Inception-style)   (scale, ratio)
    rotate       keras.layers.RandomRotation             (default factor 0.05 = +-18 degrees)
    color        keras.layers.RandomColorJitter          (brightness, contrast, saturation, hue)
    randaugment  keras.layers.RandAugment                (num_ops, factor)
    erasing      keras.layers.RandomErasing              (factor = probability, scale)
    mixup        keras.layers.MixUp                      (alpha) - mixes the labels too
    cutmix       keras.layers.CutMix                     (factor) - mixes the labels too

Each name still constructs its Keras layer, whose constructor checks the
options and parses the factor ranges; the pixels are then computed by plain
TensorFlow ops (utils/input/batch_ops: same draws, same clips, same label
mixing; tests/input/test_augment_stats.py holds the Keras layers' statistics).
The layers themselves ran each op as a chain of whole-batch kernels: a flip
cost more CPU than the JPEG decode, RandAugment computed all its 11 ops for
each slot (bench/augment.py measures both). Options the plain ops do not
cover (a rotation's other fill modes) still run the Keras layer.

Names come as a list, a dict {name: kwargs} (YAML) or the command line's "a,b"
(`split_names`, the one parser of that list; train's --augment uses it too).

`build_augmenter(names, image_size, seed)` returns ONE callable `(images, labels)
-> (images, labels)` working on a BATCH (float32 [B, H, W, C] in [0, 255], dense
float32 labels [B, K] or a per-class dict {name: [B, 1]}). Batch level because
a batch is one XLA-compiled pass for all consecutive ops (erasing runs between
them as a scatter of the pixels it erases), and MixUp/CutMix need
partners from the same batch anyway. The callable is pure TensorFlow (stateful
random ops, no Keras call), so a caller may run it in the tf.data pipeline or
inside its own train step.

Random resized crop is not a batch op: the pipeline does it per image at DECODE
time (`decode_crop` gives its options, utils/input/image_ops.train_crop_image
crops), before the resize to the model's input, so the crop keeps full
resolution and a JPEG only decodes the cropped window. The flip, too, runs per
image in the pipeline, on the decoded image before its resize (`decode_flip`,
image_ops.flipped_resize: only the flipped half pays for a copy, of uint8
pixels); build_augmenter leaves out the names in `at_decode`.

Ops are applied in a fixed order whatever order the names come in: geometry,
then colour, then erasing, then label mixing last (mixing before a colour jitter
would jitter two images' pixels with one draw; erasing after mixing would erase
a patch whose label mass has already been counted). With both mixup and cutmix,
each batch gets one of the two (p = 0.5), as timm does.

Validation never augments: the pipeline calls this for training only.
"""
from __future__ import annotations

from functools import partial
from typing import Callable, NamedTuple

import tensorflow as tf

from utils.errors import UsageError, first_line
from utils.input import batch_ops as ops
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
AT_DECODE = ("rrc", "flip")  # per-image ops the pipeline runs while decoding, not in the batch augmenter
FLIP_MODES = ("horizontal", "vertical", "horizontal_and_vertical")
NEEDS_RGB = ("color", "randaugment")  # hue/saturation and RandAugment's colour ops are RGB-only
MIXERS = ("mixup", "cutmix")

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

class _Op(NamedTuple):
    draw: Callable  # images -> params (the op's random choices, small tensors)
    apply: Callable  # (images, labels, params) -> (images, labels), deterministic
    jit: bool  # apply can be compiled by XLA with its neighbours
    # the same apply, its output clipped to [0, 255] in the same pass (the chain's last op saves one)
    clipped: Callable | None = None


def _layer_op(layer, mixes_labels: bool = False) -> _Op:
    """A Keras layer as an op, for the options the plain-TF ops do not cover."""
    # training=True explicitly: inside tf.data Keras cannot see a training
    # phase and would default to inference (MixUp then passes labels through).
    def apply(images, labels, _):
        if mixes_labels:
            out = layer({"images": images, "labels": labels}, training=True)
            return out["images"], out["labels"]
        return layer(images, training=True), labels

    return _Op(lambda images: (), apply, False)


# RandAugment's geometric ops: Keras' matrix from its draws -> batch_ops.affine_apply
_RA_MATRIX = {
    "random_shear": lambda layer, t: layer._get_shear_matrix(t["shear_factor"]),
    "random_translation": lambda layer, t: layer._get_translation_matrix(t["translations"]),
    "random_rotation": lambda layer, t: t["rotation_matrix"],
}
# measured slower under XLA (sharpness: a depthwise conv)
_RA_PLAIN = ("random_sharpness",)


def _randaugment_branch(layer, key):
    """One of RandAugment's ops as (images, its Keras draws) -> images, as fast as it goes."""
    sub = getattr(layer, key)
    if key in _RA_MATRIX:
        if sub.fill_mode != "reflect" or sub.interpolation != "bilinear":
            return sub.transform_images
        return tf.function(lambda x, t: ops.affine_apply(x, tf.cast(_RA_MATRIX[key](sub, t), tf.float32)),
                           jit_compile=True)
    if key == "equalization" and tuple(sub.value_range) == (0, 255):
        return tf.function(lambda x, t: ops.equalize(x, sub.bins), jit_compile=True)
    if key in _RA_PLAIN or key == "equalization":
        return sub.transform_images
    return tf.function(lambda x, t: tf.cast(sub.transform_images(x, t), tf.float32), jit_compile=True)


def _randaugment_op(layer) -> _Op:
    """Keras RandAugment's draws (its ops' indices, per batch, and every op's
    parameters), but only the chosen ops computed: Keras computed all 11 for
    each of num_ops slots and selected with `where` (36 ms per image)."""
    layer.build(None)
    keys = list(layer._AUGMENT_LAYERS)
    branch = {key: _randaugment_branch(layer, key) for key in keys}

    def draw(images):
        return layer.get_random_transformation(images, training=True)

    def apply(images, labels, t):
        for i in range(layer.num_ops):
            branches = [lambda key=key, x=images: tf.ensure_shape(
                tf.cast(branch[key](x, t["transforms"][key]), tf.float32), x.shape) for key in keys]
            images = tf.switch_case(tf.cast(t["layer_idxes"][i], tf.int32), branches)
        return images, labels

    return _Op(draw, apply, False)


def _make_op(name: str, kwargs: dict, seed) -> _Op:
    # lazy: Keras is needed only when a dataset augments, not to parse names.
    # Each Keras layer is still constructed: its constructor validates the
    # options and parses the factor ranges, so both stay exactly Keras'.
    import keras

    layers = keras.layers
    # dtype float32 pinned: a global mixed_float16 policy must not make the
    # pipeline emit float16 pixels (the pixel contract is float32).
    common = {"seed": seed, "dtype": "float32"}
    if name == "flip":
        mode = layers.RandomFlip(**kwargs, **common).mode
        return _Op(partial(ops.flip_draw, seed=seed), partial(ops.flip_apply, mode=mode), True)
    if name == "rotate":
        layer = layers.RandomRotation(**kwargs, **common)
        if layer.fill_mode != "reflect" or layer.interpolation != "bilinear":
            return _layer_op(layer)
        return _Op(partial(ops.rotate_draw, factor=layer.factor, seed=seed), ops.rotate_apply, True)
    if name == "color":
        layer = layers.RandomColorJitter(value_range=(0, 255), **kwargs, **common)
        ranges = {k: getattr(getattr(layer, f"random_{k}"), "factor", None)
                  for k in ("brightness", "contrast", "saturation", "hue")}
        return _Op(partial(ops.color_draw, **ranges, seed=seed), ops.color_apply, True)
    if name == "randaugment":
        return _randaugment_op(layers.RandAugment(value_range=(0, 255), **kwargs, **common))
    if name == "erasing":
        layer = layers.RandomErasing(value_range=(0, 255), **kwargs, **common)
        # not XLA: a scatter of the erased pixels only, which XLA would turn into a whole-batch pass
        return _Op(partial(ops.erasing_draw, factor=layer.factor, scale=layer.scale, seed=seed,
                           fill_value=layer.fill_value),
                   ops.erasing_apply, False, partial(ops.erasing_apply, clip=True))
    if name == "mixup":
        alpha = layers.MixUp(**kwargs, **common).alpha
        return _Op(partial(ops.mixup_draw, alpha=alpha, seed=seed), ops.mixup_apply, True)
    if name == "cutmix":
        factor = layers.CutMix(**kwargs, **common).factor
        return _Op(partial(ops.cutmix_draw, factor=factor, seed=seed), ops.cutmix_apply, True)
    raise UsageError(f"unknown augmentation {name!r}; valid: {', '.join(NAMES)}")


def _one_of(first: _Op, second: _Op, seed) -> _Op:
    """Each batch gets one of the two (p = 0.5); both draws are made, one is used."""
    def draw(images):
        return (tf.random.uniform([], seed=seed) < 0.5, first.draw(images), second.draw(images))

    def apply(images, labels, p):
        return tf.cond(p[0], lambda: first.apply(images, labels, p[1]), lambda: second.apply(images, labels, p[2]))

    return _Op(draw, apply, first.jit and second.jit)


def _fuse(group: list[_Op], last: bool) -> Callable:
    """Consecutive ops -> one apply(images, labels, [params]); XLA-compiled when all allow it.

    The chain's last run also clips to [0, 255]: inside the compiled pass, or
    by the op's own `clipped` apply, so the clip costs no pass of its own.
    """
    applies = [op.apply for op in group]
    if last and group[-1].clipped is not None:
        applies[-1], last = group[-1].clipped, False

    def apply(images, labels, params):
        for fn, p in zip(applies, params):
            images, labels = fn(images, labels, p)
        return (tf.clip_by_value(images, 0.0, 255.0) if last else images), labels

    return tf.function(apply, jit_compile=True) if all(op.jit for op in group) else apply


def _segments(ops_: list[_Op]) -> list[tuple[list[_Op], Callable]]:
    """Split the ops into runs that XLA can compile together and single non-XLA ops."""
    runs: list[list[_Op]] = []
    for op in ops_:
        if op.jit and runs and runs[-1][-1].jit:
            runs[-1].append(op)
        else:
            runs.append([op])
    return [(run, _fuse(run, i == len(runs) - 1)) for i, run in enumerate(runs)]


def build_augmenter(names, image_size, seed=None, *, channels: int = 3,
                    at_decode: tuple[str, ...] = AT_DECODE) -> Callable | None:
    """The batch augmentation for `names` as one callable (images, labels) -> (images, labels).

    Args:
        names: list | dict | "a,b" (parse_names).
        image_size: (h, w) of the batch, or an int for a square (every op keeps it).
        seed: None for fresh randomness every run; an int makes the draws repeatable.
        channels: the image channel count; colour ops need 3.
        at_decode: names left out because the caller runs them per image while
            decoding (the pipeline: rrc and flip). A caller that augments whole
            batches elsewhere (a train step) passes ("rrc",) to get a batch flip.
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
    chain: list[_Op] = []
    mixers: list[_Op] = []
    for index, name in enumerate(NAMES):
        if name not in spec or name in at_decode or name == "rrc":
            continue
        kwargs = dict(DEFAULTS[name], **spec[name])
        try:
            op = _make_op(name, kwargs, _seed(seed, index))
        except TypeError as e:  # a misspelt option in the config
            raise UsageError(f"augmentation {name!r}: {e}") from None
        except (ValueError, NotImplementedError) as e:  # Keras' own checks (factor > 1, fill_mode, ...)
            raise UsageError(f"augmentation {name!r}: {first_line(e)}") from None
        (mixers if name in MIXERS else chain).append(op)
    if len(mixers) == 2:
        chain.append(_one_of(mixers[0], mixers[1], _seed(seed, 99)))
    else:
        chain.extend(mixers)
    if not chain:
        return None
    segments = _segments(chain)

    def augment(images, labels):
        dense, label_names = join_labels(labels)
        images = tf.cast(images, tf.float32)
        dense = tf.cast(dense, tf.float32)
        for run, apply in segments:
            # each op draws from the images it will see (shapes only; RandAugment's
            # draws are Keras' own), then the run applies them in one compiled pass
            params = [op.draw(images) for op in run]
            images, dense = apply(images, dense, params)  # the last run clips to [0, 255]
        return images, dense if label_names is None else split_labels(dense, label_names)

    augment.names = [n for n in NAMES if n in spec and n not in at_decode and n != "rrc"]
    augment.image_size = image_size
    return augment


def decode_flip(spec: dict[str, dict]) -> str | None:
    """The flip mode if `spec` (parse_names) asks for a flip, for the per-image flip at decode.

    Raises:
        UsageError: a mode Keras' RandomFlip would refuse.
    """
    if "flip" not in spec:
        return None
    kwargs = dict(DEFAULTS["flip"], **spec["flip"])
    unknown = set(kwargs) - {"mode", "seed"}
    if unknown:
        raise UsageError(f"augmentation 'flip': unexpected option(s) {', '.join(sorted(unknown))}")
    mode = kwargs["mode"]
    if mode not in FLIP_MODES:
        raise UsageError(f"augmentation 'flip': mode must be one of {', '.join(FLIP_MODES)}, not {mode!r}")
    return mode
