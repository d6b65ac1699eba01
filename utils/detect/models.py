"""Saved models as predictors, and ensembles of them.

A predictor is what the rest of utils/detect needs from a model, whatever its file:
  predictor(x)      x float32 [B, H, W, C] in [0, 255] (what eval_image yields), a
                    tf.Tensor -> [B, K] probabilities in class order (a tensor or an
                    array); per-class (multi-output) models come out concatenated
  predictor.meta    its metadata (NAME.json: class_names, input_size, channels, planes,
                    head, outputs, thresholds)
  predictor.path    the file or folder it came from
`open_predictor` picks the backend from the path: .h5 and .keras files through Keras,
SavedModel folders through Keras's TFSMLayer. Another runtime (an exported SavedModel
signature, ONNX) is one more class with the same three members and one more branch
there. A `Member` is a predictor plus its share of the ensemble average.

A model with a Lambda layer is refused unless --unsafe: loading it would run Python
code stored in the file. The config is read without Keras, so the refusal does not
depend on the file format or on how a Keras version treats legacy .h5 files.

TensorFlow and Keras are imported inside the functions that need them: `detect.py
--help` and flag errors answer before they load.
"""
from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass
from typing import Callable, Iterator

from utils.detect.runtimes import export_meta_path, is_exported, open_exported, outputs_to_matrix, require_meta_keys
from utils.errors import UsageError, first_line


def _walk_configs(node) -> Iterator[dict]:
    """Every dict inside a (nested) Keras config, so layers of sub-models are seen too."""
    if isinstance(node, dict):
        yield node
        for v in node.values():
            yield from _walk_configs(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk_configs(v)


def lambda_layers(config: dict) -> list[str]:
    """Names of Lambda layers anywhere in a model config."""
    return [str((d.get("config") or {}).get("name", "?")) for d in _walk_configs(config)
            if d.get("class_name") == "Lambda"]


def read_model_config(path: str) -> dict | None:
    """The architecture JSON stored in a .h5 or .keras file, without building the model.

    Returns:
        the config, or None for a SavedModel folder (a traced graph: loading it runs
        no Python code from the file).
    Raises:
        UsageError: the path is not a model this project can load.
    """
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "saved_model.pb")):
            raise UsageError(f"not a model: {path} is a folder without saved_model.pb")
        return None
    if path.endswith(".keras"):
        try:
            with zipfile.ZipFile(path) as z:
                return json.loads(z.read("config.json"))
        except (zipfile.BadZipFile, KeyError, ValueError, OSError):
            raise UsageError(f"not a Keras model file: {path}") from None
    import h5py  # lazy: only .h5 models need it

    try:
        with h5py.File(path, "r") as f:
            raw = f.attrs.get("model_config")
    except OSError:
        raise UsageError(f"not a Keras model file: {path} (not HDF5)") from None
    if raw is None:
        raise UsageError(f"not a Keras model file: {path} has no model config (weights only?)")
    return json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw)


def refuse_lambdas(path: str, config: dict | None, unsafe: bool) -> None:
    """Raise UsageError when `config` has a Lambda layer and the user did not pass --unsafe."""
    found = lambda_layers(config) if config is not None and not unsafe else []
    if found:
        raise UsageError(f"refusing {path}: it contains a Lambda layer ({', '.join(found[:3])}) that would "
                         "run Python code from the file; pass --unsafe if you trust it")


def read_meta(path: str) -> dict:
    """The NAME.json beside a model; missing, broken or incomplete -> one-line UsageError."""
    from model.meta import load_meta, meta_path  # lazy: model/ imports Keras

    try:
        meta = load_meta(path)
    except FileNotFoundError:
        raise UsageError(f"no metadata for {path}: expected {meta_path(path)} (train.py writes it)") from None
    except ValueError as e:
        raise UsageError(f"{meta_path(path)} is not valid JSON: {e}") from None
    return require_meta_keys(meta, meta_path(path))


def load_keras_model(path: str, config: dict | None, *, unsafe: bool = False):
    """The Keras object of a .h5 / .keras file, or a TFSMLayer over a SavedModel folder (config None)."""
    import keras  # lazy: see the module docstring

    import model  # noqa: F401  (registers the project's custom layers and losses for deserialising)

    try:
        if config is None:
            return keras.layers.TFSMLayer(path, call_endpoint="serving_default")
        return keras.models.load_model(path, compile=False, safe_mode=not unsafe)
    except Exception as e:  # Keras raises many types for a bad file; all mean the same to a user
        raise UsageError(f"cannot load model {path}: {first_line(e, 300)}") from None


class KerasPredictor:
    """A Keras model (or SavedModel layer) behind one traced graph."""

    def __init__(self, path: str, meta: dict, keras_model) -> None:
        import tensorflow as tf  # lazy: see the module docstring

        self.path, self.meta, self.model = path, meta, keras_model
        names = meta.get("outputs")
        h, w = (int(v) for v in meta["input_size"])
        spec = tf.TensorSpec([None, h, w, int(meta.get("channels", 3))], tf.float32)

        # One traced graph per model (fixed signature: no retracing on the last,
        # smaller batch); much faster than eager calls, as model.predict does.
        @tf.function(input_signature=[spec])
        def call(x):
            return outputs_to_matrix(keras_model(x, training=False), names)

        self._call = call

    def __call__(self, x):
        return self._call(x)


def open_predictor(path: str, *, unsafe: bool = False):
    """A model file (.h5, .keras), a SavedModel folder, or one of our exports -> a predictor.

    Exports (`detect.py --export`: a SavedModel folder with metadata.json, x.onnx +
    x.onnx.json, x.tflite + x.tflite.json) run in their own runtime; a SavedModel
    folder without our metadata runs through Keras with a NAME.json beside it.

    Raises:
        UsageError: missing model or metadata, not a model, a refused Lambda layer,
            or a file Keras cannot load; one line each.
    """
    if not os.path.exists(path):
        raise UsageError(f"model not found: {path}")
    if is_exported(path) and os.path.exists(export_meta_path(path)):
        return open_exported(path)     # our own export: its runtime, its metadata.json
    config = read_model_config(path)
    refuse_lambdas(path, config, unsafe)
    meta = read_meta(path)
    return KerasPredictor(path, meta, load_keras_model(path, config, unsafe=unsafe))


@dataclass
class Member:
    """One model of the ensemble: its predictor, its weight, and what its metadata says."""
    predictor: Callable     # see the module docstring: (x) -> [B, K], .meta, .path
    weight: float = 1.0

    @property
    def path(self) -> str:
        return self.predictor.path

    @property
    def meta(self) -> dict:
        return self.predictor.meta

    @property
    def size(self) -> tuple[int, int]:
        return tuple(int(v) for v in self.meta["input_size"])

    @property
    def channels(self) -> int:
        return int(self.meta.get("channels", 3))

    @property
    def planes(self) -> int:
        return int(self.meta.get("planes", 1))

    @property
    def class_names(self) -> list[str]:
        return [str(c) for c in self.meta["class_names"]]

    @property
    def multi_label(self) -> bool:
        return bool(self.meta.get("multi_label")) or self.meta.get("head") in ("sigmoid", "per-class")

    @property
    def key(self) -> tuple:
        """Members with equal keys share one preprocessed tensor."""
        return (self.size, self.channels)


def parse_weights(text: str | None, n: int) -> list[float]:
    """--model-weights "3,1" for n models -> weights summing to 1 (None: equal)."""
    if not text:
        return [1.0 / n] * n
    try:
        weights = [float(v) for v in text.split(",")]
    except ValueError:
        raise UsageError(f"--model-weights must be numbers separated by commas, got {text!r}") from None
    if len(weights) != n:
        raise UsageError(f"--model-weights has {len(weights)} values for {n} models")
    if any(v < 0 for v in weights) or sum(weights) <= 0:
        raise UsageError("--model-weights must be >= 0 and not all 0")
    return [v / sum(weights) for v in weights]


def load_ensemble(paths: list[str], *, weights: str | None = None, unsafe: bool = False) -> list[Member]:
    """Load every model; all must predict the same classes in the same order.

    Raises:
        UsageError: a model does not load, or the models cannot be averaged.
    """
    shares = parse_weights(weights, len(paths))
    members = [Member(open_predictor(p, unsafe=unsafe), w) for p, w in zip(paths, shares)]
    check_ensemble(members)
    return members


def check_ensemble(members: list[Member]) -> None:
    """Raise UsageError unless every member reads the same planes and predicts the same classes the same way."""
    first = members[0]
    for m in members[1:]:
        if m.class_names != first.class_names:
            ours, theirs = first.class_names, m.class_names
            diff = next((i for i, (x, y) in enumerate(zip(ours, theirs)) if x != y), min(len(ours), len(theirs)))
            raise UsageError(f"class lists differ: {first.path} has {len(ours)} classes, {m.path} has "
                             f"{len(theirs)} (first difference at index {diff})")
        if m.planes != first.planes:
            raise UsageError(f"{first.path} reads {first.planes} planes per sample, {m.path} reads {m.planes}")
        if m.multi_label != first.multi_label:
            raise UsageError(f"cannot average a multi-label and a single-label model ({first.path}, {m.path})")
