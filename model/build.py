"""Backbone + head -> one keras.Model, and which of its layers train.

Graph (all registered layers, no lambdas, saves as .h5 and .keras):

    Input "image" float32 [h, w, C] in [0, 255]
      -> ChannelAdapter "input_adapter"   (only when C != 3; see model/layers.py)
      -> Preprocess "preprocess"          (the backbone's own normalisation)
      -> keras.applications backbone, include_top=False, pooling="avg", named "backbone"
      -> head (model/heads.py)            "probs", or one output per class

The backbone is a nested model named "backbone" so `set_trainable` can freeze it
as a unit, and so its weights can be exported to / loaded from a no-top file.

Weights:
  "none"      random init.
  "imagenet"  keras.applications downloads the no-top file (cached in ~/.keras).
  PATH        a local no-top weights file (.h5 as Keras distributes them, or
              .weights.h5 / .h5 made by `save_backbone_weights`). It is handed to
              keras.applications in place of the ImageNet download, so the backbone
              graph is exactly the "imagenet" one (EfficientNet B0-B7 only adds its
              ImageNet std rescaling when built for ImageNet weights).
"""
from __future__ import annotations

import contextlib
import os
import re
import urllib.error

import keras
from keras.src.utils import file_utils  # private API: _weights_file_as_download patches it

from model import registry
from model.heads import build_head, check_head
from model.layers import ChannelAdapter, Preprocess
from utils.errors import UsageError, first_line
from utils.input.image_ops import as_hw

BACKBONE = "backbone"


def resolve_size(spec: registry.ModelSpec, input_size) -> tuple[int, int]:
    """The (height, width) to build `spec` at.

    Args:
        input_size: None (the spec's default size), an int (square) or (h, w).

    Raises:
        UsageError: a side below the spec's minimum.
    """
    h, w = as_hw(spec.default_size if input_size is None else input_size)
    if min(h, w) < spec.min_size:
        raise UsageError(
            f"{spec.name} needs at least {spec.min_size}x{spec.min_size} input, got {h}x{w}"
        )
    return h, w


@contextlib.contextmanager
def _weights_file_as_download(path: str):
    """Make keras.applications' ImageNet download return `path` for the duration.

    Workaround, Keras 3.15: keras.applications builds a different graph for
    weights=PATH than for weights="imagenet" (EfficientNet B0-B7 add their ImageNet
    std Rescaling only `if weights == "imagenet"`, keras/src/applications/
    efficientnet.py, cf. tensorflow/tensorflow#49930), so an ImageNet no-top file
    passed as a path would load into the wrong graph. The ImageNet code path is
    kept and its download (the private keras.src.utils.file_utils.get_file) answers
    with the local file. Remove when keras.applications builds the same graph for
    a path; then pass weights=path directly (tests/model/test_io.py covers both).
    """
    original = file_utils.get_file

    def local_file(*args, **kwargs):
        return path

    file_utils.get_file = local_file
    try:
        yield
    finally:
        file_utils.get_file = original


def _is_download_error(e: BaseException) -> bool:
    # Keras 3.15's get_file wraps URLError/HTTPError in a bare Exception("URL fetch failure ...")
    # and reports a hash mismatch as "Incomplete or corrupted file"; on a Keras upgrade re-check
    # these strings (tests/model/test_io.py::test_imagenet_without_network pins the first).
    msg = str(e)
    return isinstance(e, (OSError, urllib.error.URLError)) or "URL fetch failure" in msg or "corrupted file" in msg


def build_backbone(arch: str, input_size=None, weights: str | None = "none") -> keras.Model:
    """The no-top, average-pooled keras.applications model for `arch`, named "backbone".

    Args:
        arch: a registry name.
        input_size: see resolve_size.
        weights: "none", "imagenet" or a local no-top weights file (module docstring).

    Raises:
        UsageError: an unknown arch, a size below its minimum, no network for
            "imagenet", or a weights file that is missing or not this arch's.
    """
    backbone = _construct(registry.get(arch), input_size, weights)
    # renamed afterwards: EfficientNetV2 looks its block layout up by the name argument
    backbone.name = BACKBONE
    return backbone


def _construct(spec: registry.ModelSpec, input_size, weights) -> keras.Model:
    h, w = resolve_size(spec, input_size)
    kwargs = dict(include_top=False, input_shape=(h, w, 3), pooling="avg")
    if weights in (None, "none", ""):
        return spec.constructor(weights=None, **kwargs)
    if weights == "imagenet":
        try:
            return spec.constructor(weights="imagenet", **kwargs)
        except Exception as e:  # noqa: BLE001 - narrowed by _is_download_error
            if _is_download_error(e):
                raise UsageError(
                    f"could not download ImageNet weights for {spec.name} (no network?): "
                    "pass --weights PATH to a local no-top weights file, or --weights none"
                ) from None
            raise
    path = os.fspath(weights)
    if not os.path.isfile(path):
        raise UsageError(f"weights file not found: {path} (use imagenet, none or a local no-top weights file)")
    try:
        with _weights_file_as_download(path):
            return spec.constructor(weights="imagenet", **kwargs)
    except Exception as e:  # noqa: BLE001 - any failure here means "not this model's weights"
        raise UsageError(f"{path} is not a no-top {spec.name} weights file: {first_line(e, 300).rstrip(' :')}") from None


def build_model(arch: str, num_classes: int, *, input_size=None, channels: int = 3, weights: str = "none",
                head: str = "softmax", dropout: float = 0.2, head_bn: bool = False,
                class_names: list[str] | None = None, head_units: int = 64) -> keras.Model:
    """Input float32 RGB [0, 255] -> (adapter) -> Preprocess -> backbone -> head.

    Args:
        arch: a registry name.
        num_classes: K, the classifier's width.
        input_size: see resolve_size.
        channels: of the input image; other than 3 puts a ChannelAdapter in front.
        weights: see build_backbone.
        head, dropout, head_bn, class_names, head_units: see model.heads.build_head.

    Raises:
        UsageError: an unknown arch or head, too few classes, channels < 1, and
            build_backbone's errors.
    """
    spec = registry.get(arch)
    check_head(head)
    h, w = resolve_size(spec, input_size)
    if int(num_classes) < 1 or (head == "softmax" and int(num_classes) < 2):
        raise UsageError(f"a {head} head needs {'at least 2' if head == 'softmax' else 'at least 1'} classes, got {num_classes}")
    if int(channels) < 1:
        raise UsageError(f"channels must be >= 1, got {channels}")
    backbone = build_backbone(spec.name, (h, w), weights)

    inputs = keras.Input(shape=(h, w, int(channels)), dtype="float32", name="image")
    x = inputs
    if int(channels) != 3:
        x = ChannelAdapter(3, name="input_adapter")(x)
    x = Preprocess(spec.preprocess, name="preprocess")(x)
    x = backbone(x)
    outputs = build_head(x, head, int(num_classes), dropout=dropout, head_bn=head_bn,
                         class_names=class_names, units=head_units)
    return keras.Model(inputs, outputs, name=f"{spec.name}_{head.replace('-', '_')}")


def build_training_state(model: keras.Model, data_spec) -> None:
    """Create a compiled model's optimizer, loss and metric variables now, before fit.

    Workaround, Keras 3.15: without a distribution strategy Keras creates them
    lazily inside the first trace of the train step (keras/src/backend/tensorflow/
    trainer.py: _maybe_symbolic_build returns early), and a tf.function that
    creates variables while tracing is traced again without them, so the whole
    forward + backward + update graph is built twice per compile: about half of a
    short run's time (minutes for a real backbone on 2 cores). This runs what Keras
    runs itself under a strategy: the private Trainer._symbolic_build, on the
    batch's shapes only (no data is read, no step runs). The variables and their
    order are the ones the lazy path creates. Remove when Keras builds them before
    tracing without a strategy (tests/model/test_build.py pins the single trace).

    Args:
        model: compiled.
        data_spec: the train dataset's element_spec, (x, y) or (x, y, sample_weight).
    """
    model._symbolic_build(data_batch=data_spec)


def get_backbone(model: keras.Model) -> keras.Model:
    """The nested "backbone" model of a build_model model.

    Raises:
        UsageError: `model` was not built by build_model.
    """
    try:
        return model.get_layer(BACKBONE)
    except ValueError:
        raise UsageError(f"model {model.name!r} has no {BACKBONE!r} layer: not built by model.build") from None


def _leaf_layers(layer):
    """All non-container layers, descending into nested models (the backbone)."""
    for sub in getattr(layer, "layers", []):
        if getattr(sub, "layers", None):
            yield from _leaf_layers(sub)
        else:
            yield sub


def set_trainable(model: keras.Model, layers: str) -> int:
    """Choose what trains. Call before compile(): Keras collects trainable variables then.

    Args:
        layers: "heads": everything but the backbone (head + input adapter); the
            backbone is frozen with trainable=False, which in Keras 3 also runs its
            BatchNormalization in inference mode, so neither weights nor moving
            statistics change. "all": everything. Otherwise a REGEX: layers
            (backbone and head alike, at any depth) whose names match (re.search)
            train; all others are frozen, frozen BN in inference mode. Head layers
            are all named "head_*".

    Returns:
        the number of trainable weight arrays.

    Raises:
        UsageError: an invalid regex, or one that matches no layer with weights.
    """
    backbone = get_backbone(model)
    model.trainable = True  # resets every layer; each mode then freezes what it must
    backbone.trainable = True  # Keras 3.15 leaves a nested model frozen by an earlier "heads" call
    if layers == "all":
        pass
    elif layers == "heads":
        backbone.trainable = False
    else:
        try:
            rx = re.compile(layers)
        except re.error as e:
            raise UsageError(f"--layers {layers!r} is neither heads, all nor a valid regex: {e}") from None
        matched = 0
        for layer in _leaf_layers(model):
            layer.trainable = bool(rx.search(layer.name))
            matched += bool(layer.trainable and layer.weights)
        if matched == 0:
            raise UsageError(f"--layers {layers!r} matches no layer with weights (try heads, all or e.g. 'head_|conv5')")
    return len(model.trainable_weights)


def save_backbone_weights(source, path: str, *, input_size=None, weights: str = "none") -> str:
    """Write a no-top backbone weights file usable as build_model(weights=path).

    Args:
        source: a registry name (a fresh backbone, `weights` init) or a model built
            by build_model (its trained backbone, e.g. to start another run from it).
        path: ".weights.h5" (Keras 3 format) or ".h5" (legacy whole-model HDF5, the
            layout of the files Keras distributes; load_weights reads either).
        input_size, weights: for a registry name, see build_backbone.

    Returns:
        path.

    Raises:
        UsageError: any other extension.
    """
    if isinstance(source, str):
        backbone = build_backbone(source, input_size, weights)
    else:
        backbone = get_backbone(source) if any(l.name == BACKBONE for l in source.layers) else source
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if path.endswith(".weights.h5"):
        backbone.save_weights(path)
    elif path.endswith((".h5", ".hdf5")):
        backbone.save(path)
    else:
        raise UsageError(f"backbone weights path must end in .weights.h5 or .h5, not {path}")
    return path
