"""The artifact writers: Keras model with one `probs` output -> SavedModel, ONNX or LiteRT file.

Each writer builds the artifact at the path it is given (export.py passes a
temporary one and renames it after the self-check). See export.py for the
artifact contract (input `image`, output `probs`, the `serve_bytes` signature).
"""
from __future__ import annotations

import contextlib
import warnings

import numpy as np

from utils.detect.runtimes import require
from utils.errors import UsageError

OUTPUT = "probs"
INPUT = "image"
BYTES_INPUT = "images"


def probs_model(model, meta: dict):
    """The model with one dict output {"probs": [B, K]} (per-class outputs concatenated in class order)."""
    import keras

    if len(model.inputs) != 1:
        raise UsageError(f"export handles one image input; {model.name} has {len(model.inputs)}")
    outputs = dict(zip(model.output_names, model.outputs))
    order = list(meta.get("outputs") or [])
    if sorted(order) != sorted(outputs):
        order = list(model.output_names)  # NAME.json from elsewhere: the model's own order
    tensors = [outputs[n] for n in order]
    probs = tensors[0] if len(tensors) == 1 else keras.layers.Concatenate(axis=-1, name="export_probs")(tensors)
    k = len(meta["class_names"])
    if probs.shape[-1] != k:
        raise UsageError(f"the model outputs {probs.shape[-1]} values per image but its NAME.json lists {k} classes")
    exported = keras.Model(model.input, {OUTPUT: probs}, name=f"{model.name}_export")
    # Keras's onnx export refuses a model that was never called (it reads the traced signature)
    exported(np.zeros((1, *model.input.shape[1:]), np.float32), training=False)
    return exported


def write_saved_model(model, path: str, meta: dict) -> None:
    """`model` (probs_model's) -> SavedModel with the `serve` and `serve_bytes` signatures."""
    import tensorflow as tf
    from keras.export import ExportArchive

    from utils.input.pipeline import eval_image

    h, w = (int(v) for v in meta["input_size"])
    channels, planes = int(meta.get("channels", 3)), int(meta.get("planes", 1))
    archive = ExportArchive()
    serve = archive.track_and_add_endpoint(
        "serve", model, input_signature=[tf.TensorSpec([None, h, w, channels], tf.float32, name=INPUT)])
    class_names = tf.constant([str(c) for c in meta["class_names"]])
    pixels = tf.TensorSpec([h, w, channels], tf.float32)

    def serve_bytes(images):
        # one row of `planes` encoded strings per sample, as eval_image reads a TFRecord's image/encoded
        rows = tf.reshape(images, [-1, planes])
        x = tf.map_fn(lambda row: eval_image(row, (h, w), channels, planes), rows, fn_output_signature=pixels)
        probs = serve(x)[OUTPUT]
        return {OUTPUT: probs, "label": tf.gather(class_names, tf.argmax(probs, axis=-1))}

    archive.add_endpoint("serve_bytes", serve_bytes, input_signature=[
        tf.TensorSpec([None] if planes == 1 else [None, planes], tf.string, name=BYTES_INPUT)])
    archive.write_out(path, verbose=False)


def write_onnx(model, path: str, meta: dict) -> None:
    """`model` -> one .onnx file through Keras's export (tf2onnx underneath, default opset)."""
    require("tf2onnx", "the onnx export")
    with _normalization_as_constants(model), warnings.catch_warnings():
        # Keras 3.15's patch_tf2onnx probes `hasattr(np, "object")`, which numpy 2 answers
        # with a FutureWarning on every export; remove with that patch (keras/src/export/tf2onnx_lib.py)
        warnings.filterwarnings("ignore", message="In the future `np.object`", category=FutureWarning)
        model.export(path, format="onnx", verbose=False)


@contextlib.contextmanager
def _normalization_as_constants(model):
    """Let tf2onnx see an adapted Normalization layer's mean/variance as constants.

    Keras 3.15's Normalization.finalize_state keeps them as eager tensors, which the
    traced function captures as extra inputs; tf2onnx 1.17 freezes captured variables
    but leaves such captures as graph inputs, so the .onnx asks for
    ".../normalization/Sub/y:0" at run time (every EfficientNet B0-B7 has this layer).
    As numpy arrays they become Const nodes of the trace instead. Remove once Keras
    stores them as variables or tf2onnx folds captured constants.
    """
    import keras

    from model.build import _leaf_layers

    swapped = []
    for layer in _leaf_layers(model):
        if isinstance(layer, keras.layers.Normalization) and getattr(layer, "mean", None) is not None:
            swapped.append((layer, layer.mean, layer.variance))
            layer.mean, layer.variance = np.asarray(layer.mean), np.asarray(layer.variance)
    try:
        yield
    finally:
        for layer, mean, variance in swapped:
            layer.mean, layer.variance = mean, variance


def litert_options(quantize: str | None) -> dict:
    """--quantize -> TFLiteConverter attributes (Keras's litert export sets its kwargs on the converter)."""
    import tensorflow as tf

    if quantize is None:
        return {}
    options = {"optimizations": [tf.lite.Optimize.DEFAULT]}  # alone: dynamic-range int8 weights
    if quantize == "float16":
        options["target_spec"] = {"supported_types": [tf.float16]}
    return options


def write_litert(model, path: str, meta: dict, quantize: str | None = None) -> None:
    """`model` -> one .tflite file through Keras's export; `quantize`: None | dynamic | float16."""
    model.export(path, format="litert", verbose=False, **litert_options(quantize))


def write_artifact(fmt: str, model, path: str, meta: dict, quantize: str | None = None) -> None:
    """Dispatch on the export format (saved_model | onnx | litert)."""
    if fmt == "saved_model":
        write_saved_model(model, path, meta)
    elif fmt == "onnx":
        write_onnx(model, path, meta)
    else:
        write_litert(model, path, meta, quantize)
