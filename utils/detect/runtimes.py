"""Exported models as predictors: one callable per runtime, the same contract as a Keras member.

A predictor maps a float32 batch [B, H, W, C], RGB in [0, 255] (what eval_image
yields), to a float32 probability array [B, K] in class order; per-class
(multi-output) models come out concatenated in output-name order, which is class
order. `.meta` is the export's metadata (class names, input size, channels, head,
thresholds), `.path` the artifact.

  SavedModelPredictor  a SavedModel folder, run by TensorFlow (its serving_default
                       signature; our exports also have `serve_bytes`)
  OnnxPredictor        an .onnx file, run by onnxruntime on the CPU provider
  LiteRTPredictor      a .tflite file, run by ai-edge-litert's interpreter
  open_exported(path)  picks one by the path

Where the metadata lives (`export_meta_path`): inside a SavedModel folder as
metadata.json (the folder ships whole, e.g. as a TF Serving version folder);
beside a file as FILE.json (x.onnx -> x.onnx.json, model.meta's rule for any
other extension, so it never overwrites model_save/x.json). A SavedModel folder
without one falls back to model_save/x.json beside it, the layout detect.py
already reads for `model.export()` folders.
"""
from __future__ import annotations

import json
import os

import numpy as np

from utils.errors import UsageError, first_line
from utils.files import natural_key

META_IN_FOLDER = "metadata.json"
SIGNATURE = "serving_default"
BYTES_SIGNATURE = "serve_bytes"


def export_meta_path(artifact: str, folder: bool | None = None) -> str:
    """Where an exported artifact's metadata JSON is (see the module docstring).

    Args:
        artifact: the SavedModel folder or the .onnx / .tflite file.
        folder: whether it is a folder; None looks at the disk (the export passes
            it, since it asks before the artifact exists).
    """
    from model.meta import meta_path

    artifact = artifact.rstrip("/\\")
    if os.path.isdir(artifact) if folder is None else folder:
        return os.path.join(artifact, META_IN_FOLDER)
    return meta_path(artifact)


META_KEYS = ("class_names", "input_size")   # what any predictor needs from its metadata


def require_meta_keys(meta: dict, path: str) -> dict:
    """`meta` itself when it has META_KEYS, else a one-line UsageError naming `path`."""
    missing = [k for k in META_KEYS if k not in meta]
    if missing:
        raise UsageError(f"{path} lacks {', '.join(missing)}")
    return meta


def read_export_meta(artifact: str) -> dict:
    """The metadata of an exported artifact; missing or broken -> one-line UsageError."""
    from model.meta import meta_path

    candidates = [export_meta_path(artifact)]
    if os.path.isdir(artifact):
        candidates.append(meta_path(artifact))
    for path in candidates:
        if os.path.isfile(path):
            try:
                with open(path) as f:
                    meta = json.load(f)
            except ValueError as e:
                raise UsageError(f"{path} is not valid JSON: {e}") from None
            return require_meta_keys(meta, path)
    raise UsageError(f"no metadata for {artifact}: expected {candidates[0]} (written by the export)")


def require(module: str, what: str):
    """Import a runtime package; not installed -> one UsageError line naming the pip package."""
    import importlib

    pip = {"onnxruntime": "onnxruntime", "tf2onnx": "tf2onnx", "ai_edge_litert": "ai-edge-litert"}
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UsageError(f"{what} needs the {module} package, which is not installed "
                         f"(pip install {pip.get(module, module)})") from None


def outputs_to_matrix(out, names: list[str] | None):
    """A model's output (tensor, list of [B, 1] per class, or dict) -> one [B, K] tensor.

    Per-class heads have one output per class; concatenating them in the
    NAME.json "outputs" order gives the same [N, K] matrix as a sigmoid head.
    """
    import tensorflow as tf  # lazy: only a dict/list output needs it

    if isinstance(out, dict):
        keys = [n for n in (names or []) if n in out]
        if len(keys) != len(out):
            # a SavedModel export names them output_0, output_1, ..., output_10: numeric order
            keys = sorted(out, key=natural_key)
        out = [out[k] for k in keys]
    if isinstance(out, (list, tuple)):
        out = [tf.reshape(tf.cast(o, tf.float32), [tf.shape(o)[0], -1]) for o in out]
        return out[0] if len(out) == 1 else tf.concat(out, axis=-1)
    return tf.cast(out, tf.float32)


class Predictor:
    """Base: `predictor(x)` with x float32 [B, H, W, C] in [0, 255] -> float32 [B, K]."""

    runtime = "?"

    def __init__(self, path: str, meta: dict | None = None):
        self.path = path
        self.meta = meta if meta is not None else read_export_meta(path)

    def __call__(self, x) -> np.ndarray:
        x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
        return self._matrix(self._run(x))

    def _run(self, x: np.ndarray):
        raise NotImplementedError

    def _matrix(self, out) -> np.ndarray:
        return np.asarray(outputs_to_matrix(out, self.meta.get("outputs")), dtype=np.float32)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r})"


class SavedModelPredictor(Predictor):
    """A SavedModel folder through tf.saved_model.load: our export or any `model.export()`."""

    runtime = "tensorflow"

    def __init__(self, path: str, meta: dict | None = None):
        super().__init__(path, meta)
        import tensorflow as tf

        self._tf = tf
        try:
            self.loaded = tf.saved_model.load(path)
        except Exception as e:  # noqa: BLE001 - TF raises many types for a bad folder
            raise UsageError(f"cannot load SavedModel {path}: {first_line(e, 300)}") from None
        if SIGNATURE not in self.loaded.signatures:
            raise UsageError(f"{path} has no {SIGNATURE} signature")
        self._serve = self.loaded.signatures[SIGNATURE]
        self._input = next(iter(self._serve.structured_input_signature[1]))

    @property
    def has_bytes_signature(self) -> bool:
        return BYTES_SIGNATURE in self.loaded.signatures

    def _run(self, x):
        return self._serve(**{self._input: self._tf.constant(x)})

    def predict_bytes(self, images) -> np.ndarray:
        """Encoded images [B] (or [B, planes] for multi-plane models) -> [B, K], decoded in the graph."""
        if not self.has_bytes_signature:
            raise UsageError(f"{self.path} has no {BYTES_SIGNATURE} signature (not exported by this project)")
        sig = self.loaded.signatures[BYTES_SIGNATURE]
        name = next(iter(sig.structured_input_signature[1]))
        out = sig(**{name: self._tf.constant(images, dtype=self._tf.string)})
        return np.asarray(out["probs"], dtype=np.float32)


class OnnxPredictor(Predictor):
    """An .onnx file through onnxruntime's CPU execution provider."""

    runtime = "onnxruntime"

    def __init__(self, path: str, meta: dict | None = None):
        super().__init__(path, meta)
        ort = require("onnxruntime", "running an ONNX model")
        try:
            self.session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own Fail/InvalidGraph types
            raise UsageError(f"cannot load ONNX model {path}: {first_line(e, 300)}") from None
        self._input = self.session.get_inputs()[0].name

    def _run(self, x):
        return self.session.run(None, {self._input: x})


class LiteRTPredictor(Predictor):
    """A .tflite file through ai-edge-litert's Interpreter (its serving_default signature runner)."""

    runtime = "ai_edge_litert"

    def __init__(self, path: str, meta: dict | None = None):
        super().__init__(path, meta)
        interpreter = require("ai_edge_litert.interpreter", "running a LiteRT model")
        try:
            self.interpreter = interpreter.Interpreter(model_path=path)
        except Exception as e:  # noqa: BLE001 - the interpreter raises ValueError/RuntimeError alike
            raise UsageError(f"cannot load LiteRT model {path}: {first_line(e, 300)}") from None
        signatures = self.interpreter.get_signature_list()
        key = SIGNATURE if SIGNATURE in signatures else next(iter(signatures))
        self._runner = self.interpreter.get_signature_runner(key)
        self._input = signatures[key]["inputs"][0]

    def _run(self, x):
        # the runner resizes its input to each batch and returns fresh arrays (copies)
        return self._runner(**{self._input: x})


def open_exported(path: str, meta: dict | None = None) -> Predictor:
    """A SavedModel folder, an .onnx or a .tflite file -> its predictor.

    Args:
        path: the exported artifact.
        meta: its metadata; None reads it from `export_meta_path(path)`.
    Raises:
        UsageError: not an exported model, no metadata, or its runtime is not installed.
    """
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "saved_model.pb")):
            raise UsageError(f"not a model: {path} is a folder without saved_model.pb")
        return SavedModelPredictor(path, meta)
    if not os.path.isfile(path):
        raise UsageError(f"model not found: {path}")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".onnx":
        return OnnxPredictor(path, meta)
    if ext == ".tflite":
        return LiteRTPredictor(path, meta)
    raise UsageError(f"not an exported model: {path} (expected a SavedModel folder, .onnx or .tflite)")


def is_exported(path: str) -> bool:
    """True for what open_exported opens (detect.py routes these away from Keras loading)."""
    return (os.path.isdir(path) or os.path.splitext(path)[1].lower() in (".onnx", ".tflite"))
