"""Prediction: load models (+ NAME.json), expand inputs, stream batches, TTA, ensembles, output rows.

How a run flows (detect.py wires these together):
  load_ensemble(paths)            Member per model: its callable, input size, channels, classes
  plan_inputs(inputs, ...)        InputSpec per argument (files, folder, glob, URL list, .bson,
                                  dataset folder): cheap checks now, samples() streams later
  predict_stream(members, specs)  tf.data: Python generator of encoded bytes -> eval_image at
                                  EACH member's size (the training pipeline's eval function, not
                                  a copy) -> TTA views -> batch -> prefetch; yields one Row per
                                  image, ensemble-averaged; unreadable images become skips
  group_rows(rows)                consecutive rows of one product (BSON) averaged into one
  make_formatter(fmt, ...)        Row -> CSV cells for probs|label|topk|multilabel|binary|cdiscount

Memory does not grow with the number of images: bytes are read in the
generator, at most a few batches are in flight, and rows go straight to the
CSV unless an evaluation needs them all.
"""
from __future__ import annotations

import collections
import csv
import glob
import json
import os
import sys
import zipfile
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

from utils.errors import UsageError
from utils.files import atomic_write_json

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"}
LIST_EXTS = {".txt", ".csv", ".tsv", ".lst"}
FORMATS = ("probs", "label", "topk", "multilabel", "binary", "cdiscount")
# TTA views in the order they are added: N views = the first N of these.
VIEWS = ("identity", "hflip", "zoom", "zoom_hflip", "crop_tl", "crop_br", "crop_tr", "crop_bl",
         "crop_tl_hflip", "crop_br_hflip", "crop_tr_hflip", "crop_bl_hflip")
CROP = 0.875    # crops/zooms keep this share of each side (the usual 224/256)


# --------------------------------------------------------------------------- models

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

    Keras' safe_mode refuses lambdas when it deserialises them; reading the
    config ourselves makes the refusal independent of the file format and of
    how a given Keras version treats legacy .h5 files. None for SavedModels
    (a traced graph: loading it runs no Python code from the file).
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
    import h5py

    try:
        with h5py.File(path, "r") as f:
            raw = f.attrs.get("model_config")
    except OSError:
        raise UsageError(f"not a Keras model file: {path} (not HDF5)") from None
    if raw is None:
        raise UsageError(f"not a Keras model file: {path} has no model config (weights only?)")
    return json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw)


def _import_custom_objects() -> None:
    """Register the project's custom layers/losses so saved models deserialise."""
    import importlib

    for name in ("model", "model.layers", "model.heads", "model.losses", "model.metrics"):
        try:
            importlib.import_module(name)
        except ImportError:
            pass


@dataclass
class Member:
    """One model of the ensemble and what is needed to feed it."""
    path: str
    meta: dict
    call: Callable          # float32 [B, h, w, C] in [0, 255] -> float32 [B, K]
    weight: float = 1.0

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


def outputs_to_matrix(out, names: list[str] | None):
    """A model's output (tensor, list of [B, 1] per class, or dict) -> one [B, K] tensor.

    Per-class heads have one output per class; concatenating them in the
    NAME.json "outputs" order gives the same [N, K] matrix as a sigmoid head.
    """
    import tensorflow as tf

    from utils.files import natural_key

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


def load_member(path: str, *, unsafe: bool = False, weight: float = 1.0) -> Member:
    """A model file (.h5, .keras) or SavedModel folder + its NAME.json -> Member.

    A model with a Lambda layer is refused unless unsafe=True: loading it would
    run Python code stored in the file.
    """
    from model.meta import load_meta, meta_path

    if not os.path.exists(path):
        raise UsageError(f"model not found: {path}")
    config = read_model_config(path)
    if config is not None and not unsafe:
        found = lambda_layers(config)
        if found:
            raise UsageError(f"refusing {path}: it contains a Lambda layer ({', '.join(found[:3])}) that would "
                             "run Python code from the file; pass --unsafe if you trust it")
    try:
        meta = load_meta(path)
    except FileNotFoundError:
        raise UsageError(f"no metadata for {path}: expected {meta_path(path)} (train.py writes it)") from None
    except ValueError as e:
        raise UsageError(f"{meta_path(path)} is not valid JSON: {e}") from None
    missing = [k for k in ("class_names", "input_size") if k not in meta]
    if missing:
        raise UsageError(f"{meta_path(path)} lacks {', '.join(missing)}")

    import keras
    import tensorflow as tf

    _import_custom_objects()
    try:
        if config is None:
            model = keras.layers.TFSMLayer(path, call_endpoint="serving_default")
        else:
            model = keras.models.load_model(path, compile=False, safe_mode=not unsafe)
    except Exception as e:  # Keras raises many types for a bad file; all mean the same to a user
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UsageError(f"cannot load model {path}: {first[:300]}") from None

    names = meta.get("outputs")
    h, w = (int(v) for v in meta["input_size"])
    spec = tf.TensorSpec([None, h, w, int(meta.get("channels", 3))], tf.float32)

    # One traced graph per member (fixed signature: no retracing on the last,
    # smaller batch); much faster than eager calls, as model.predict does.
    @tf.function(input_signature=[spec])
    def call(x):
        return outputs_to_matrix(model(x, training=False), names)

    return Member(path=path, meta=meta, call=call, weight=weight)


def parse_weights(text: str | None, n: int) -> list[float]:
    if not text:
        return [1.0 / n] * n
    try:
        w = [float(v) for v in text.split(",")]
    except ValueError:
        raise UsageError(f"--model-weights must be numbers separated by commas, got {text!r}") from None
    if len(w) != n:
        raise UsageError(f"--model-weights has {len(w)} values for {n} models")
    if any(v < 0 for v in w) or sum(w) <= 0:
        raise UsageError("--model-weights must be >= 0 and not all 0")
    return [v / sum(w) for v in w]


def load_ensemble(paths: list[str], *, weights: str | None = None, unsafe: bool = False) -> list[Member]:
    """Load every model; all must predict the same classes in the same order."""
    ws = parse_weights(weights, len(paths))
    members = [load_member(p, unsafe=unsafe, weight=w) for p, w in zip(paths, ws)]
    first = members[0]
    for m in members[1:]:
        if m.class_names != first.class_names:
            a, b = first.class_names, m.class_names
            diff = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            raise UsageError(f"class lists differ: {first.path} has {len(a)} classes, {m.path} has {len(b)} "
                             f"(first difference at index {diff})")
        if m.planes != first.planes:
            raise UsageError(f"{first.path} reads {first.planes} planes per sample, {m.path} reads {m.planes}")
        if m.multi_label != first.multi_label:
            raise UsageError(f"cannot average a multi-label and a single-label model ({first.path}, {m.path})")
    return members


# --------------------------------------------------------------------------- inputs

@dataclass
class Sample:
    id: str                                    # the output row id
    load: Callable[[], list[bytes]]            # -> encoded planes
    label: tuple[int, ...] | None = None       # class indices into the model's classes; None = unlabelled
    group: str | None = None                   # rows with the same group (consecutive) are averaged
    rereadable: bool = False                   # load() is cheap to call again (to explain a failure)


@dataclass
class InputSpec:
    name: str
    count: int | None                          # samples, when known up front (progress bar)
    samples: Callable[[], Iterator[Sample]]
    labelled: bool = False                     # every sample carries a label
    unit: str = "images"                       # what one output row is ("products" for BSON)
    kind: str = "files"                        # files | urls | bson | dataset
    skipped: list = field(default_factory=list)  # (id, reason) found while planning (downloads)


def _read_file(path: str) -> list[bytes]:
    """A file's bytes, made decodable by TensorFlow with the writer's own check.

    prepare_planes passes JPEG/PNG/... through untouched after a header check and
    converts what TF cannot decode (TIFF) or would crash on (animated WebP) to PNG;
    a bad file raises BadImage whose text is the skipped.csv reason.
    """
    from utils.image.prepare import prepare_planes

    with open(path, "rb") as f:
        data = f.read()
    planes, _ = prepare_planes([data], max_side=None)
    return planes


def _file_loader(path: str):
    return lambda: _read_file(path)


def _class_index(class_names: list[str]) -> dict[str, int]:
    return {n: i for i, n in enumerate(class_names)}


def _files_spec(name: str, files: list[tuple[str, str]], class_names: list[str], root: str | None) -> InputSpec:
    """(path, id) pairs -> spec. Under a folder, an image's parent folder named
    after a class is its label (folder-per-class, also root/val/<class>/x.jpg)."""
    index = _class_index(class_names)

    def label_of(path):
        if root is None:
            return None
        parent = os.path.basename(os.path.dirname(os.path.abspath(path)))
        if os.path.abspath(os.path.dirname(path)) == os.path.abspath(root):
            return None
        return (index[parent],) if parent in index else None

    labels = [label_of(p) for p, _ in files]

    def samples():
        for (p, sid), lab in zip(files, labels):
            if os.path.splitext(p)[1].lower() not in IMAGE_EXTS:
                yield Sample(sid, _unsupported(p), lab)
            else:
                yield Sample(sid, _file_loader(p), lab, rereadable=True)

    return InputSpec(name, len(files), samples, labelled=bool(files) and all(l is not None for l in labels))


def _unsupported(path: str):
    def load():
        raise ValueError(f"unsupported file type: {os.path.splitext(path)[1] or '(none)'}")
    return load


def _walk_folder(root: str) -> list[tuple[str, str]]:
    """Every file under root (sorted, hidden files left out) with id = relative path minus extension."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fn in sorted(filenames):
            if fn.startswith("."):
                continue
            p = os.path.join(dirpath, fn)
            rel = os.path.relpath(p, root).replace(os.sep, "/")
            out.append((p, os.path.splitext(rel)[0]))
    return out


def _read_url_list(path: str) -> list[tuple[str, str]]:
    """`id,url[,labels...]` lines, read as generate_dataset.py reads them (a header line allowed)."""
    from utils.sources.table import read_csv_rows

    pairs = []
    for n, row in read_csv_rows(path):
        if len(row) < 2 or "://" not in row[1]:
            if not pairs and n == 1:
                continue        # header
            raise UsageError(f"{path}:{n}: expected `id,url`, got {','.join(row)[:80]!r}")
        pairs.append((row[0], row[1]))
    if not pairs:
        raise UsageError(f"{path}: no `id,url` lines")
    return pairs


def _url_spec(path: str, cache_dir: str) -> InputSpec:
    from utils.sources.download import fetch_all

    pairs = _read_url_list(path)
    got = fetch_all(pairs, cache_dir)
    ok = [(got[k], k) for k, _ in pairs if isinstance(got.get(k), str)]
    bad = [(k, f"download failed: {got.get(k)}") for k, _ in pairs if not isinstance(got.get(k), str)]

    def samples():
        for p, k in ok:
            yield Sample(k, _file_loader(p), rereadable=True)

    return InputSpec(path, len(ok), samples, skipped=bad, kind="urls")


def _bson_spec(path: str, class_names: list[str]) -> InputSpec:
    """One sample per photo, grouped by product: rows are averaged per product."""
    from utils.sources.bsondump import iter_products

    index = _class_index(class_names)

    def samples():
        for pid, cat, pics in iter_products(path):
            label = (index[cat],) if cat in index else None
            if not pics:
                yield Sample(pid, _raiser("product has no readable photo"), label, group=pid)
            for i, pic in enumerate(pics):
                yield Sample(f"{pid}#{i}", (lambda b=pic: [b]), label, group=pid, rereadable=True)

    # Labelled when the file has categories our model knows; checked on the first product only
    # (a BSON dump is either train (categories) or test (none)), so nothing is read twice.
    first = next(iter_products(path), None)
    labelled = first is not None and first[1] in index
    return InputSpec(path, None, samples, labelled=labelled, unit="products", kind="bson")


def _raiser(reason: str):
    def load():
        raise ValueError(reason)
    return load


def _dataset_spec(data_dir: str, split: str | None, class_names: list[str], planes: int) -> InputSpec:
    """A data/NAME folder: the records of one split, labels mapped to the model's classes by name."""
    from utils.dataset.manifest import DatasetError, load_labels, load_manifest, select_shards, split_count

    manifest = load_manifest(data_dir)
    splits = manifest.get("splits", {})
    if split is None:
        split = "val" if "val" in splits else "test"
    if split not in splits:
        raise DatasetError(f"{data_dir} has no {split!r} split (it has: {', '.join(sorted(splits)) or 'none'})")
    if int(manifest.get("planes", 1)) != planes:
        raise DatasetError(f"{data_dir} has {manifest.get('planes', 1)} planes per record, the model reads {planes}")
    shards = select_shards(manifest, data_dir, split)
    names = load_labels(data_dir)
    index = _class_index(class_names)
    mapping = {i: index.get(str(n)) for i, n in enumerate(names)}

    def samples():
        import tensorflow as tf

        from utils.dataset import schema

        ds = tf.data.TFRecordDataset([s["path"] for s in shards]).map(schema.parse)
        for n, ex in enumerate(ds.as_numpy_iterator()):
            planes_ = [bytes(b) for b in ex[schema.ENCODED]]
            labs = [mapping.get(int(i)) for i in ex[schema.LABEL]]
            label = tuple(labs) if labs and None not in labs else None
            sid = ex[schema.SOURCE_ID].decode("utf-8", "replace") or f"{split}-{n}"
            yield Sample(sid, (lambda p=planes_: p), label, rereadable=True)

    counts = splits[split].get("class_counts") or []
    labelled = sum(counts) > 0 and all(mapping.get(i) is not None for i, c in enumerate(counts) if c)
    return InputSpec(f"{data_dir} ({split})", split_count(shards), samples, labelled=labelled, kind="dataset")


def _has_glob(s: str) -> bool:
    return any(ch in s for ch in "*?[")


def check_paths(models: list[str], inputs: list[str]) -> None:
    """Fail fast (before TensorFlow loads) on a missing model or input; globs are checked later."""
    for m in models:
        if not os.path.exists(m):
            raise UsageError(f"model not found: {m}")
    for raw in inputs:
        if not os.path.exists(raw) and not _has_glob(raw):
            raise UsageError(f"input not found: {raw}")


def plan_inputs(inputs: list[str], class_names: list[str], *, split: str | None = None,
                cache_dir: str = ".cache/detect", planes: int = 1) -> list[InputSpec]:
    """Command-line inputs -> InputSpecs. Missing or unsupported inputs fail here, before any work."""
    specs = []
    for raw in inputs:
        if not os.path.exists(raw) and _has_glob(raw):
            matches = sorted(glob.glob(raw, recursive=True))
            if not matches:
                raise UsageError(f"no files match {raw}")
            files = []
            for m in matches:
                files.extend(_walk_folder(m) if os.path.isdir(m) else [(m, os.path.splitext(os.path.basename(m))[0])])
            files = [f for f in files if os.path.splitext(f[0])[1].lower() in IMAGE_EXTS]
            if not files:
                raise UsageError(f"no images match {raw}")
            specs.append(_files_spec(raw, files, class_names, None))
            continue
        if not os.path.exists(raw):
            raise UsageError(f"input not found: {raw}")
        ext = os.path.splitext(raw)[1].lower()
        if os.path.isdir(raw):
            if os.path.isfile(os.path.join(raw, "manifest.json")):
                specs.append(_dataset_spec(raw, split, class_names, planes))
                continue
            files = _walk_folder(raw)
            if not files:
                raise UsageError(f"no files in folder {raw}")
            specs.append(_files_spec(raw, files, class_names, raw))
        elif ext == ".bson":
            specs.append(_bson_spec(raw, class_names))
        elif ext in IMAGE_EXTS:
            specs.append(_files_spec(raw, [(raw, os.path.splitext(os.path.basename(raw))[0])], class_names, None))
        elif ext in LIST_EXTS:
            specs.append(_url_spec(raw, cache_dir))
        else:
            raise UsageError(f"unsupported input {raw}: give images, folders, globs, a URL list "
                             "(.txt/.csv of id,url), a .bson file or a dataset folder")
    if planes > 1 and any(s.kind != "dataset" for s in specs):
        raise UsageError(f"the model reads {planes} planes per sample: give a dataset folder (data/NAME)")
    return specs


# --------------------------------------------------------------------------- streaming prediction

def tta_views(img, n: int):
    """[h, w, C] float image -> [n, h, w, C]: identity, flip, then zooms and corner crops.

    Crops are cut from the eval-preprocessed image and resized back, so every
    view has the member's input size and the identity view equals eval_image.
    """
    import tensorflow as tf

    if not 1 <= n <= len(VIEWS):
        raise UsageError(f"--tta must be 1..{len(VIEWS)}, got {n}")
    h, w = int(img.shape[0]), int(img.shape[1])
    ch, cw = max(1, round(h * CROP)), max(1, round(w * CROP))
    corners = {"tl": (0, 0), "tr": (0, w - cw), "bl": (h - ch, 0), "br": (h - ch, w - cw),
               "zoom": ((h - ch) // 2, (w - cw) // 2)}
    out = []
    for name in VIEWS[:n]:
        v = img
        base = name.replace("_hflip", "").replace("crop_", "")
        if base in corners:
            y, x = corners[base]
            v = tf.image.resize(img[y:y + ch, x:x + cw, :], (h, w), method="bilinear")
        if name.endswith("hflip"):
            v = v[:, ::-1, :]
        out.append(v)
    return tf.stack(out)


@dataclass
class Row:
    id: str
    probs: np.ndarray                 # [K]
    label: tuple[int, ...] | None
    group: str | None
    views: int = 1                    # images averaged into this row


class _Failure:
    """Carries an exception out of the generator thread (tf.data would otherwise
    either stop silently or wrap it in an unreadable error)."""
    error: BaseException | None = None


def predict_stream(members: list[Member], specs: list[InputSpec], *, tta: int = 1, batch_size: int = 32,
                   skipped: list | None = None, progress: bool = True) -> Iterator[Row]:
    """Yield one ensemble-averaged Row per readable image, in input order.

    Unreadable inputs are appended to `skipped` as (id, reason) and the run goes on:
    a file that cannot be read is caught in the generator; a file that does not
    decode fails inside tf.data's map, `ignore_errors` drops that element, and the
    gap in the running sample index tells us which one it was.
    """
    import tensorflow as tf
    from tqdm import tqdm

    from utils.input.pipeline import eval_image

    skipped = skipped if skipped is not None else []
    for s in specs:
        skipped.extend(s.skipped)
    planes_per = members[0].planes
    keys = list(dict.fromkeys(m.key for m in members))     # distinct (size, channels), in order
    pending: collections.deque = collections.deque()
    failure = _Failure()

    def gen():
        index = 0
        try:
            for spec in specs:
                for s in spec.samples():
                    try:
                        planes = s.load()
                    except Exception as e:   # unreadable input: report it, keep going
                        skipped.append((s.id, _reason(e)))
                        continue
                    if len(planes) != planes_per:
                        skipped.append((s.id, f"{len(planes)} planes, the model reads {planes_per}"))
                        continue
                    pending.append((index, s))
                    yield index, np.array(planes, dtype=object)
                    index += 1
        except BaseException as e:  # noqa: BLE001  re-raised in the consumer
            failure.error = e

    def preprocess(index, planes):
        views = tuple(tta_views(eval_image(planes, size, ch, planes_per), tta) for size, ch in keys)
        return index, views

    ds = tf.data.Dataset.from_generator(
        gen, output_signature=(tf.TensorSpec([], tf.int64), tf.TensorSpec([None], tf.string)))
    ds = (ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            .ignore_errors()
            .batch(batch_size)
            .prefetch(tf.data.AUTOTUNE))

    total = None if any(s.count is None for s in specs) else sum(s.count for s in specs)
    bar = tqdm(total=total, unit="img", desc="predict", disable=not progress, smoothing=0.1)
    key_pos = {k: i for i, k in enumerate(keys)}
    try:
        for idx, views in ds:
            probs = None
            for m in members:
                x = views[key_pos[m.key]]                              # [B, V, h, w, C]
                b = tf.shape(x)[0]
                p = m.call(tf.reshape(x, tf.concat([[-1], tf.shape(x)[2:]], 0)))
                p = tf.reduce_mean(tf.reshape(p, [b, tta, -1]), axis=1) * m.weight
                probs = p if probs is None else probs + p
            probs = probs.numpy()
            _check_width(probs, members)
            for i, row_index in enumerate(idx.numpy()):
                while pending and pending[0][0] < row_index:
                    _, s = pending.popleft()
                    skipped.append((s.id, _decode_reason(s)))
                _, s = pending.popleft()
                yield Row(s.id if s.group is None else s.group, probs[i], s.label, s.group)
            bar.update(len(probs))
        while pending:
            _, s = pending.popleft()
            skipped.append((s.id, _decode_reason(s)))
    finally:
        bar.close()
    if failure.error is not None:
        raise failure.error


def _check_width(probs: np.ndarray, members: list[Member]) -> None:
    k = len(members[0].class_names)
    if probs.shape[1] != k:
        raise UsageError(f"the model outputs {probs.shape[1]} values per image but its NAME.json lists {k} classes")


def _reason(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return (msg[0] if msg else type(e).__name__)[:200]


def _decode_reason(s: Sample) -> str:
    """Why an image failed in the pipeline: decode it again eagerly to get TensorFlow's message."""
    if not s.rereadable:
        return "cannot decode image"
    import tensorflow as tf

    try:
        for p in s.load():
            tf.io.decode_image(p, channels=0, expand_animations=False)
    except Exception as e:  # noqa: BLE001  any decode error is the reason we want
        return f"cannot decode image: {_reason(e)}"
    return "cannot decode image"


def group_rows(rows: Iterator[Row]) -> Iterator[Row]:
    """Average consecutive rows of the same group (a product's photos); others pass through."""
    acc: Row | None = None
    for r in rows:
        if acc is not None and r.group is not None and r.group == acc.group:
            acc.probs = acc.probs + r.probs
            acc.views += 1
            continue
        if acc is not None:
            yield _finish(acc)
        acc = Row(r.id, r.probs.astype(np.float64), r.label, r.group)
    if acc is not None:
        yield _finish(acc)


def fill_missing_products(rows: Iterator[Row], skipped: list) -> Iterator[Row]:
    """A submission needs a row for EVERY product (Kaggle rejects one that lacks
    any). A product none of whose photos could be read gets the mean of all
    other products' predictions, i.e. the empirical prior, which beats an
    arbitrary class; its photos stay listed in the skipped CSV. `skipped` is
    complete once `rows` is exhausted (predict_stream fills it as it goes).
    Photo ids are "PRODUCT#i"; a product without photos is skipped as "PRODUCT".
    """
    seen: set[str] = set()
    total, n = None, 0
    for r in rows:
        seen.add(r.group or r.id)
        total = r.probs.astype(np.float64) if total is None else total + r.probs
        n += 1
        yield r
    missing = [pid for pid in dict.fromkeys(sid.split("#")[0] for sid, _ in skipped) if pid not in seen]
    if missing and n:
        prior = (total / n).astype(np.float32)
        print(f"note: {len(missing)} product(s) have no readable photo; their rows get the mean "
              f"prediction of the other {n} (first: {missing[0]})", file=sys.stderr)
        for pid in missing:
            yield Row(pid, prior.copy(), None, pid)


def _finish(r: Row) -> Row:
    r.probs = (r.probs / r.views).astype(np.float32)
    return r


# --------------------------------------------------------------------------- thresholds

def load_thresholds(path: str, class_names: list[str]) -> list[float]:
    """Per-class thresholds from JSON (list, {name: t}, or {"thresholds": [...]}) or CSV (name,threshold)."""
    if not os.path.isfile(path):
        raise UsageError(f"thresholds file not found: {path}")
    try:
        if path.lower().endswith(".csv"):
            with open(path, newline="") as f:
                rows = [r for r in csv.reader(f) if r]
            if rows and not _is_number(rows[0][-1]):
                rows = rows[1:]
            data = {r[0]: float(r[-1]) for r in rows}
        else:
            with open(path) as f:
                data = json.load(f)
            if isinstance(data, dict) and "thresholds" in data:
                # our own NAME.thresholds.json names its classes: match by name, not position,
                # so a file tuned for another model with as many classes is not applied blindly
                saved_names = data.get("class_names")
                data = data["thresholds"]
                if isinstance(saved_names, list) and isinstance(data, list):
                    if len(saved_names) != len(data):
                        raise ValueError(f"{len(saved_names)} class_names but {len(data)} thresholds")
                    data = dict(zip((str(n) for n in saved_names), data))
    except (ValueError, IndexError) as e:
        raise UsageError(f"cannot read thresholds from {path}: {e}") from None
    if isinstance(data, dict):
        known = set(class_names)
        unknown = [c for c in data if c not in known]
        if unknown:
            raise UsageError(f"{path} has a threshold for class {unknown[0]!r} that the model does not know "
                             f"({len(unknown)} unknown): is it for another model?")
        missing = [c for c in class_names if c not in data]
        if missing:
            raise UsageError(f"{path} has no threshold for class {missing[0]!r} ({len(missing)} missing)")
        values = [data[c] for c in class_names]
    elif isinstance(data, list):
        if len(data) != len(class_names):
            raise UsageError(f"{path} has {len(data)} thresholds for {len(class_names)} classes")
        values = data
    else:
        raise UsageError(f"{path}: expected a list or a class -> threshold mapping")
    try:
        return [float(t) for t in values]
    except (TypeError, ValueError):
        bad = next(t for t in values if not isinstance(t, (int, float)) and not _is_number(str(t)))
        raise UsageError(f"{path}: threshold {bad!r} is not a number") from None


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def resolve_thresholds(members: list[Member], *, threshold: float | None = None,
                       thresholds_file: str | None = None) -> list[float]:
    """--threshold, else --thresholds FILE, else the (single) model's tuned ones, else 0.5."""
    names = members[0].class_names
    if threshold is not None:
        return [float(threshold)] * len(names)
    if thresholds_file:
        return load_thresholds(thresholds_file, names)
    tuned = members[0].meta.get("thresholds")
    if len(members) == 1 and isinstance(tuned, list) and len(tuned) == len(names):
        return [float(t) for t in tuned]
    return [0.5] * len(names)


def thresholds_path(model_path: str) -> str:
    from model.meta import meta_path

    return meta_path(model_path)[: -len(".json")] + ".thresholds.json"


def save_thresholds(path: str, class_names: list[str], thresholds: list[float], metric: str, score: float) -> str:
    data = {"metric": metric, "score": score, "class_names": class_names, "thresholds": thresholds}
    atomic_write_json(path, data)
    return path


# --------------------------------------------------------------------------- output rows

def header_and_formatter(fmt: str, class_names: list[str], *, k: int = 5, thresholds=None,
                         ids: bool = False, at_least_one: bool = False):
    """-> (header cells, function probs [K] -> cells after the id) for one --format."""
    if fmt not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    names = list(class_names)
    t = np.asarray(thresholds if thresholds is not None else [0.5] * len(names), dtype=np.float64)

    def above(p):
        on = np.nonzero(p >= t)[0]
        if at_least_one and not len(on):
            on = [int(np.argmax(p))]
        return on

    if fmt == "probs":
        return ["id"] + names, lambda p: [f"{v:.6g}" for v in p]
    if fmt == "label":
        return ["id", "label"], lambda p: [names[int(np.argmax(p))]]
    if fmt == "cdiscount":
        return ["_id", "category_id"], lambda p: [names[int(np.argmax(p))]]
    if fmt == "topk":
        kk = max(1, min(k, len(names)))
        head = ["id"] + [c for i in range(1, kk + 1) for c in (f"label_{i}", f"score_{i}")]

        def topk(p):
            top = np.argsort(-p, kind="stable")[:kk]
            return [c for i in top for c in (names[i], f"{p[i]:.6g}")]
        return head, topk
    if fmt == "binary":
        return ["id"] + names, lambda p: [str(int(v)) for v in (p >= t)]
    # multilabel
    if ids:
        return ["id", "attribute_ids"], lambda p: [" ".join(str(int(i)) for i in above(p))]
    return ["id", "labels"], lambda p: [" ".join(names[int(i)] for i in above(p))]


def sidecar(out_path: str, suffix: str) -> str:
    """predictions.csv -> predictions<suffix> (skipped list, eval folder beside the output)."""
    stem = out_path[:-4] if out_path.lower().endswith(".csv") else out_path
    return stem + suffix


def write_skipped(path: str, skipped: list[tuple[str, str]]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "reason"])
        w.writerows(skipped)

