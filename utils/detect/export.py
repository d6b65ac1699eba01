"""Export a trained model (.h5 / .keras) as a SavedModel, ONNX or LiteRT artifact, checked.

    export_model("model_save/x.h5", "export/x", "saved_model")
    export_model("model_save/x.h5", "export/x.onnx", "onnx")
    export_model("model_save/x.h5", "export/x.tflite", "litert", quantize="float16")

Every artifact has ONE output, `probs`: float32 [B, K] in class order. A per-class
(multi-output) model's [B, 1] outputs are concatenated in its NAME.json "outputs"
order, which is class order (model/heads.py names them c000_..., c001_...), so a
consumer reads every head the same way and detect.py's matrix code needs no names.
The input is `image`: float32 [B, H, W, C], RGB in [0, 255], as eval_image yields it
(the model normalises inside, model/layers.py).

  saved_model  keras.export.ExportArchive (what `model.export` uses) with two
               signatures: `serve` (also serving_default) on float pixels, and
               `serve_bytes` on encoded images, tf.string [B] ([B, planes] for
               multi-plane models), decoded and resized INSIDE the graph by the
               pipeline's own eval_image; it returns `probs` and `label` (the
               top class name, [B]), so a TF Serving client sends JPEG/PNG bytes.
  onnx         `model.export(format="onnx")` (tf2onnx underneath), checked with onnxruntime.
  litert       `model.export(format="litert")` (TFLiteConverter underneath; its kwargs
               set converter attributes, which is how `quantize` reaches it),
               checked with ai-edge-litert's Interpreter.

The metadata a consumer needs (classes, input size, channels, planes, head,
thresholds, the check's numbers) is written as JSON at runtimes.export_meta_path:
inside the SavedModel folder, beside a file (x.onnx.json).

The self-check runs the artifact in its own runtime on a few images (random ones,
or `check_images`) and compares with Keras on the same eval_image pixels. Bounds
on the max absolute difference of probabilities: 1e-4 for float exports (measured:
at most 1.2e-7 on tiny models and 64-px DenseNet121 / EfficientNetB0); for quantized
LiteRT the looser QUANT_BOUND: float16 weights keep 11 significant bits (relative
error 5e-4 per weight), int8 dynamic-range weights 1/254 of each channel's range,
so a confident trained model's probabilities move by up to ~1e-3 and a few 1e-2
respectively (measured on untrained 64-px DenseNet121: 6.8e-6 and 3.1e-4).
The artifact is built under a temporary name and renamed into place only after
the check passes, so a failed export leaves nothing half-made behind (and an
existing output is replaced only by a checked one).
"""
from __future__ import annotations

import contextlib
import os
import shutil

import numpy as np

from utils.detect.export_formats import BYTES_INPUT, INPUT, OUTPUT, probs_model, write_artifact
from utils.detect.export_names import EXPORT_FORMATS as FORMATS
from utils.detect.export_names import QUANTIZE
from utils.detect.runtimes import export_meta_path, open_exported, require
from utils.errors import UsageError, first_line
from utils.files import atomic_write_json

SUFFIX = {"onnx": ".onnx", "litert": ".tflite"}
FLOAT_BOUND = 1e-4
QUANT_BOUND = {"float16": 5e-3, "dynamic": 5e-2}
CHECK_IMAGES = 4  # random check images: sizes differ, one grayscale, so decode and resize are exercised


def check_request(out: str, fmt: str, *, quantize: str | None = None, overwrite: bool = False,
                  model_path: str | None = None) -> None:
    """Refuse a bad export request before any model is loaded (one UsageError line each)."""
    if fmt not in FORMATS:
        raise UsageError(f"unknown export format {fmt!r}; valid formats: {', '.join(FORMATS)}")
    if quantize is not None:
        if fmt != "litert":
            raise UsageError(f"--quantize is for the litert format, not {fmt}")
        if quantize not in QUANTIZE:
            raise UsageError(f"unknown --quantize {quantize!r}; valid values: {', '.join(QUANTIZE)}")
    if fmt in SUFFIX and not out.lower().endswith(SUFFIX[fmt]):
        raise UsageError(f"a {fmt} export is one file ending in {SUFFIX[fmt]}, not {out}")
    if model_path is not None and os.path.abspath(out) == os.path.abspath(model_path):
        raise UsageError(f"the export would overwrite its own model {model_path}")
    if os.path.lexists(out) and not overwrite:
        raise UsageError(f"{out} exists: pass --overwrite to replace it")


def load_for_export(model_path: str, *, unsafe: bool = False):
    """A Keras model file + its NAME.json -> (keras.Model, meta dict).

    Raises:
        UsageError: missing model or metadata, not a Keras file, a refused Lambda
            layer, or a file Keras cannot load; one line each (detect's own checks).
    """
    from utils.detect.models import load_keras_model, read_meta, read_model_config, refuse_lambdas

    if not os.path.exists(model_path):
        raise UsageError(f"model not found: {model_path}")
    if os.path.isdir(model_path) or not model_path.endswith((".h5", ".keras")):
        raise UsageError(f"export reads a Keras model file (.h5 or .keras), not {model_path}")
    config = read_model_config(model_path)
    refuse_lambdas(model_path, config, unsafe)
    meta = read_meta(model_path)
    return load_keras_model(model_path, config, unsafe=unsafe), meta


def export_metadata(model_path: str, meta: dict, fmt: str, quantize: str | None) -> dict:
    """What a consumer of the artifact needs; the training config stays with the model."""
    from utils.detect.thresholds import load_thresholds, thresholds_path

    h, w = (int(v) for v in meta["input_size"])
    channels, planes = int(meta.get("channels", 3)), int(meta.get("planes", 1))
    tuned = thresholds_path(model_path)
    thresholds = (load_thresholds(tuned, [str(c) for c in meta["class_names"]]) if os.path.isfile(tuned)
                  else meta.get("thresholds"))
    out = {k: v for k, v in meta.items() if k != "config"}
    out.update(
        source=os.path.basename(model_path), format=fmt, quantize=quantize, thresholds=thresholds,
        outputs=[OUTPUT], source_outputs=meta.get("outputs"),
        input={"name": INPUT, "dtype": "float32", "shape": [None, h, w, channels], "range": [0, 255],
               "color": "RGB" if channels == 3 else f"{channels} channels"},
        output={"name": OUTPUT, "dtype": "float32", "shape": [None, len(meta["class_names"])],
                "columns": "class_names order"})
    if fmt == "saved_model":
        shape = "[B]" if planes == 1 else f"[B, {planes}] (one encoded grayscale plane per channel)"
        out["signatures"] = {
            "serving_default": f"serve: {INPUT} float32 [B, {h}, {w}, {channels}] -> {OUTPUT} [B, K]",
            "serve_bytes": f"{BYTES_INPUT} string {shape} encoded JPEG/PNG/GIF/BMP/WebP -> "
                           f"{OUTPUT} [B, K], label string [B] (top class)"}
    return out


# --------------------------------------------------------------------------- self-check

def check_samples(meta: dict, images=None) -> list[list[bytes]]:
    """Encoded planes per check sample: `images` (paths, or per sample a list of plane paths) or random."""
    from utils.image.prepare import prepare_planes

    planes = int(meta.get("planes", 1))
    if images:
        samples = []
        for item in images:
            paths = [item] if isinstance(item, (str, os.PathLike)) else list(item)
            if len(paths) != planes:
                raise UsageError(f"a check sample of {len(paths)} file(s) for a model that reads {planes} planes")
            data = []
            for p in paths:
                with open(p, "rb") as f:
                    data.append(f.read())
            try:
                samples.append(prepare_planes(data, max_side=None)[0])
            except Exception as e:  # noqa: BLE001 - BadImage and friends: the file is the user's to fix
                raise UsageError(f"check image {paths[0]}: {first_line(e)}") from None
        return samples
    return random_samples(meta)


def random_samples(meta: dict, n: int = CHECK_IMAGES, seed: int = 0) -> list[list[bytes]]:
    """`n` random PNG samples around the model's size (sizes differ; sample 1 is grayscale)."""
    import io

    from PIL import Image

    rng = np.random.default_rng(seed)
    h, w = (int(v) for v in meta["input_size"])
    planes = int(meta.get("planes", 1))
    out = []
    for i in range(n):
        size = (h + 7 * i, w + 3 * i)
        gray = planes > 1 or i == 1
        shape = size if gray else (*size, 3)
        arrays = [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(planes)]
        encoded = []
        for a in arrays:
            buf = io.BytesIO()
            Image.fromarray(a).save(buf, format="PNG")
            encoded.append(buf.getvalue())
        out.append(encoded)
    return out


def eval_pixels(samples: list[list[bytes]], meta: dict) -> np.ndarray:
    """Encoded samples -> float32 [N, h, w, C] through eval_image (what detect.py feeds a model)."""
    import tensorflow as tf

    from utils.input.pipeline import eval_image

    size = tuple(int(v) for v in meta["input_size"])
    channels, planes = int(meta.get("channels", 3)), int(meta.get("planes", 1))
    return np.stack([eval_image(tf.constant(s), size, channels, planes).numpy() for s in samples])


def self_check(path: str, model, meta: dict, samples: list[list[bytes]]) -> dict:
    """Max |probability - Keras| of each entry point of the artifact on the samples."""
    x = eval_pixels(samples, meta)
    want = np.asarray(model(x, training=False)[OUTPUT], dtype=np.float32)
    predictor = open_exported(path, meta)
    try:
        diffs = {"serve": float(np.abs(predictor(x) - want).max())}
        if meta["format"] == "saved_model":
            batch = [s[0] for s in samples] if int(meta.get("planes", 1)) == 1 else samples
            diffs["serve_bytes"] = float(np.abs(predictor.predict_bytes(batch) - want).max())
    except Exception as e:  # noqa: BLE001 - each runtime raises its own types; the artifact is unusable
        raise UsageError(f"the {meta['format']} export does not run in {predictor.runtime}: "
                         f"{first_line(e, 300)}") from None
    return {"images": len(samples), "runtime": predictor.runtime, "max_abs_diff": diffs}


# --------------------------------------------------------------------------- the export

def export_model(model_path: str, out: str, fmt: str, *, quantize: str | None = None, overwrite: bool = False,
                 unsafe: bool = False, check_images=None, loaded: tuple | None = None) -> dict:
    """Export `model_path` to `out` in `fmt`, write its metadata, check it against Keras.

    Args:
        model_path: model_save/NAME.h5 or .keras (NAME.json beside it).
        out: a SavedModel folder, or the .onnx / .tflite file.
        fmt: saved_model | onnx | litert.
        quantize: litert only: dynamic (int8 weights) | float16.
        overwrite: replace an existing `out` (only once the new one passed its check).
        unsafe: load a model with Lambda layers (runs Python code from the file).
        check_images: image paths (per sample a list of plane paths for multi-plane
            models) to check on; None: CHECK_IMAGES random images.
        loaded: load_for_export(model_path)'s (model, meta), so that several formats
            exported from one model load it once (a real backbone takes seconds);
            None: loaded here.
    Returns:
        {"path", "format", "quantize", "meta_path", "bound", "images", "runtime", "max_abs_diff": {entry: diff}}.
    Raises:
        UsageError: bad request, a runtime not installed, a failed conversion or check.
    """
    out = os.fspath(out).rstrip("/\\") or os.fspath(out)
    check_request(out, fmt, quantize=quantize, overwrite=overwrite, model_path=model_path)
    # fail before the slow load when a runtime is missing
    needs = {"onnx": [("tf2onnx", "the onnx export"), ("onnxruntime", "checking the onnx export")],
             "litert": [("ai_edge_litert.interpreter", "checking the litert export")]}
    for module, what in needs.get(fmt, []):
        require(module, what)
    model, meta = loaded if loaded is not None else load_for_export(model_path, unsafe=unsafe)
    exported = probs_model(model, meta)
    info = export_metadata(model_path, meta, fmt, quantize)
    samples = check_samples(meta, check_images)
    bound = QUANT_BOUND[quantize] if quantize else FLOAT_BOUND

    folder = fmt == "saved_model"
    stem, ext = (out, "") if folder else os.path.splitext(out)
    tmp = f"{stem}.tmp-export{ext}"  # keeps the extension: the litert writer insists on .tflite
    _remove(tmp)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    try:
        try:
            write_artifact(fmt, exported, tmp, info, quantize)
        except UsageError:
            raise
        except Exception as e:  # noqa: BLE001 - converters raise anything; the user needs the first line
            raise UsageError(f"{fmt} export of {model_path} failed: {first_line(e, 300)}") from None
        check = self_check(tmp, exported, info, samples)
        worst = max(check["max_abs_diff"].values())
        summary = ", ".join(f"{k} {v:.2e}" for k, v in check["max_abs_diff"].items())
        print(f"{fmt}{f' ({quantize})' if quantize else ''}: max |prob - keras| on {check['images']} images "
              f"({check['runtime']}): {summary} (bound {bound:g})")
        if not worst <= bound:  # `not <=` also catches NaN
            raise UsageError(f"{fmt} export differs from Keras by {worst:.3g} (more than {bound:g}) "
                             f"on {check['images']} images: not written")
        info["check"] = dict(check, bound=bound)
        if folder:
            atomic_write_json(export_meta_path(tmp, folder=True), info, indent=2)
        _remove(out)
        os.replace(tmp, out)
    except BaseException:
        _remove(tmp)
        raise
    meta_file = export_meta_path(out, folder=folder)
    if not folder:
        atomic_write_json(meta_file, info, indent=2)
    return {"path": out, "format": fmt, "quantize": quantize, "meta_path": meta_file, "bound": bound, **check}


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
