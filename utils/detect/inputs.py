"""Command-line INPUTs -> InputSpecs: what to predict, found through utils/sources.

  image files        one sample each, id = file stem
  folders            every non-hidden file (utils.sources.folder's walk), id = relative
                     path minus extension; a parent folder named after one of the
                     model's classes is the label (root/<class>/x.jpg, root/val/<class>/x.jpg)
  globs              the matching images (folders among the matches are walked), unlabelled
  URL lists          utils.sources.urls.read_url_list, downloaded by utils.sources.download;
                     the label columns are carried by position (see _url_spec)
  .bson files        one sample per photo (utils.sources.bsondump.iter_products), grouped
                     by product so its rows are averaged into one
  dataset folders    data/NAME: the records of one split, labels mapped by class name

`plan_inputs` does the cheap checks up front (a missing or unsupported input fails
before any work); each spec's `samples()` streams later, reading bytes only when a
sample's `load()` is called.
"""
from __future__ import annotations

import glob
import os
import sys
from dataclasses import dataclass, field
from typing import Callable, Iterator

from utils.dataset import schema
from utils.dataset.manifest import (MANIFEST, check_shards_on_disk, corrupted_shard_error, corruption_offset,
                                    load_labels, load_manifest, select_shards, split_count)
from utils.errors import DatasetError, UsageError
from utils.sources.folder import extension_problem, rel_key, stem, walk_files
from utils.sources.urls import LIST_EXTENSIONS, default_label_names, read_url_list


@dataclass
class Sample:
    """One image (or multi-plane record) to predict, read only when `load()` is called."""
    id: str                                    # the output row id
    load: Callable[[], list[bytes]]            # -> encoded planes
    label: tuple[int, ...] | None = None       # class indices into the model's classes; None = unlabelled
    group: str | None = None                   # rows with the same group (consecutive) are averaged
    rereadable: bool = False                   # load() is cheap to call again (to explain a failure)


@dataclass
class InputSpec:
    """One INPUT argument, planned: its samples stream from `samples()`."""
    name: str
    count: int | None                          # samples, when known up front (progress bar)
    samples: Callable[[], Iterator[Sample]]
    labelled: bool = False                     # every sample carries a label
    unit: str = "images"                       # what one output row is ("products" for BSON)
    kind: str = "files"                        # files | urls | bson | dataset
    skipped: list = field(default_factory=list)  # (id, reason) found while planning (downloads)


def read_image_file(path: str) -> list[bytes]:
    """A file's bytes, made decodable by TensorFlow with the writer's own check.

    prepare_planes passes JPEG/PNG/... through untouched after a header check and
    converts what TF cannot decode (TIFF) or would crash on (animated WebP) to PNG;
    a bad file raises BadImage whose text is the skipped.csv reason.
    """
    from utils.image.prepare import prepare_planes  # lazy: Pillow's plugins load only when images are read

    with open(path, "rb") as f:
        data = f.read()
    planes, _ = prepare_planes([data], max_side=None)
    return planes


def _file_loader(path: str):
    return lambda: read_image_file(path)


def _failing(reason: str):
    """A load() for an input that is known not to be an image: it raises `reason`."""
    def load():
        raise ValueError(reason)
    return load


def _class_index(class_names: list[str]) -> dict[str, int]:
    return {n: i for i, n in enumerate(class_names)}


def _walk_folder(root: str) -> list[tuple[str, str]]:
    """(path, id) of every file under root, id = relative path minus extension."""
    return [(p, os.path.splitext(rel_key(p, root))[0]) for p in walk_files(root)]


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
            problem = extension_problem(p)
            if problem:
                yield Sample(sid, _failing(problem), lab)
            else:
                yield Sample(sid, _file_loader(p), lab, rereadable=True)

    return InputSpec(name, len(files), samples, labelled=bool(files) and all(lab is not None for lab in labels))


def _url_spec(path: str, class_names: list[str], cache_dir: str) -> InputSpec:
    """A URL list, downloaded now (the failures are the spec's skips).

    Label column i is the model's class i, so a labelled line's Sample has its label.
    The spec still says unlabelled (as before the columns were read): --evaluate on a
    URL list would first have to tell an all-zero line (a negative for every class,
    label ()) apart from an unlabelled one.
    """
    from utils.sources.download import fetch_all  # lazy: requests loads only for URL lists

    rows = read_url_list(path)
    got = fetch_all([(r.image_id, r.url) for r in rows], cache_dir)
    ok = [r for r in rows if isinstance(got.get(r.image_id), str)]
    bad = [(r.image_id, f"download failed: {got.get(r.image_id)}") for r in rows
           if not isinstance(got.get(r.image_id), str)]
    column = _class_index(default_label_names(len(class_names)))

    def label_of(row):
        if row.split == "test" or row.labels is None or not all(n in column for n in row.labels):
            return None
        return tuple(column[n] for n in row.labels)

    def samples():
        for r in ok:
            yield Sample(r.image_id, _file_loader(got[r.image_id]), label_of(r), rereadable=True)

    return InputSpec(path, len(ok), samples, skipped=bad, kind="urls")


def _bson_spec(path: str, class_names: list[str]) -> InputSpec:
    """One sample per photo, grouped by product: rows are averaged per product."""
    from utils.sources.bsondump import iter_products  # lazy: pymongo's bson loads only for .bson inputs

    index = _class_index(class_names)

    def samples():
        for pid, cat, pics in iter_products(path):
            label = (index[cat],) if cat in index else None
            if not pics:
                yield Sample(pid, _failing("product has no readable photo"), label, group=pid)
            for i, pic in enumerate(pics):
                yield Sample(f"{pid}#{i}", (lambda b=pic: [b]), label, group=pid, rereadable=True)

    # Labelled when the file has categories our model knows; checked on the first product only
    # (a BSON dump is either train (categories) or test (none)), so nothing is read twice.
    first = next(iter_products(path), None)
    labelled = first is not None and first[1] in index
    return InputSpec(path, None, samples, labelled=labelled, unit="products", kind="bson")


def read_shard_records(shards: list[dict], data_dir: str, *, skip_corrupt: bool = False) -> Iterator[bytes]:
    """Serialized records of `shards`, one shard after the other, in manifest order.

    One reader per shard, so a corrupted one is named: its DataLossError becomes
    the DatasetError "<shard> is corrupted near byte N: run verify ...", or, with
    `skip_corrupt`, a warning with how many of its records were lost, and the
    next shard is read.

    Raises:
        DatasetError: a corrupted shard (unless skip_corrupt).
    """
    import tensorflow as tf  # lazy: detect.py --help and flag errors answer before TF loads

    for s in shards:
        n = 0
        try:
            for raw in tf.data.TFRecordDataset(s["path"]).as_numpy_iterator():
                n += 1
                yield raw
        except tf.errors.DataLossError as e:
            err = corrupted_shard_error(s["path"], data_dir, corruption_offset(str(e)))
            if not skip_corrupt:
                raise err from None
            lost = max(0, int(s["count"]) - n)
            print(f"warning: {str(err).split(': run ')[0]}: skipped its last {lost} of {s['count']} records "
                  "(--skip-corrupt-shards)", file=sys.stderr)


def _dataset_spec(data_dir: str, split: str | None, class_names: list[str], planes: int,
                  skip_corrupt: bool = False) -> InputSpec:
    """A data/NAME folder: the records of one split, labels mapped to the model's classes by name."""
    manifest = load_manifest(data_dir)
    splits = manifest.get("splits", {})
    if split is None:
        split = "val" if "val" in splits else "test"
    if split not in splits:
        raise DatasetError(f"{data_dir} has no {split!r} split (it has: {', '.join(sorted(splits)) or 'none'})")
    if int(manifest.get("planes", 1)) != planes:
        raise DatasetError(f"{data_dir} has {manifest.get('planes', 1)} planes per record, the model reads {planes}")
    shards = select_shards(manifest, data_dir, split)
    check_shards_on_disk(shards, data_dir)        # a missing or cut shard: one line, before any work
    names = load_labels(data_dir)
    index = _class_index(class_names)
    mapping = {i: index.get(str(n)) for i, n in enumerate(names)}

    def samples():
        for n, raw in enumerate(read_shard_records(shards, data_dir, skip_corrupt=skip_corrupt)):
            ex = schema.parse_numpy(raw)
            record_planes = [bytes(b) for b in ex[schema.ENCODED]]
            labs = [mapping.get(int(i)) for i in ex[schema.LABEL]]
            label = tuple(labs) if labs and None not in labs else None
            sid = ex[schema.SOURCE_ID] or f"{split}-{n}"
            yield Sample(sid, (lambda p=record_planes: p), label, rereadable=True)

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


def _glob_spec(pattern: str, class_names: list[str]) -> InputSpec:
    matches = sorted(glob.glob(pattern, recursive=True))
    if not matches:
        raise UsageError(f"no files match {pattern}")
    files = []
    for m in matches:
        files.extend(_walk_folder(m) if os.path.isdir(m) else [(m, stem(m))])
    files = [f for f in files if extension_problem(f[0]) is None]
    if not files:
        raise UsageError(f"no images match {pattern}")
    return _files_spec(pattern, files, class_names, None)


def plan_inputs(inputs: list[str], class_names: list[str], *, split: str | None = None,
                cache_dir: str = ".cache/detect", planes: int = 1, skip_corrupt: bool = False) -> list[InputSpec]:
    """Command-line inputs -> InputSpecs, one per argument.

    skip_corrupt: a dataset folder's corrupted shard loses its remaining records
    with a warning instead of stopping the run (read_shard_records).

    Raises:
        UsageError, DatasetError, SourceError: a missing, empty or unsupported input,
            before any image is read (URL lists are downloaded here).
    """
    specs = []
    for raw in inputs:
        if not os.path.exists(raw) and _has_glob(raw):
            specs.append(_glob_spec(raw, class_names))
            continue
        if not os.path.exists(raw):
            raise UsageError(f"input not found: {raw}")
        ext = os.path.splitext(raw)[1].lower()
        if os.path.isdir(raw):
            if os.path.isfile(os.path.join(raw, MANIFEST)):
                specs.append(_dataset_spec(raw, split, class_names, planes, skip_corrupt))
                continue
            files = _walk_folder(raw)
            if not files:
                raise UsageError(f"no files in folder {raw}")
            specs.append(_files_spec(raw, files, class_names, raw))
        elif ext == ".bson":
            specs.append(_bson_spec(raw, class_names))
        elif extension_problem(raw) is None:
            specs.append(_files_spec(raw, [(raw, stem(raw))], class_names, None))
        elif ext in LIST_EXTENSIONS:
            specs.append(_url_spec(raw, class_names, cache_dir))
        else:
            raise UsageError(f"unsupported input {raw}: give images, folders, globs, a URL list "
                             "(.txt/.csv of id,url), a .bson file or a dataset folder")
    if planes > 1 and any(s.kind != "dataset" for s in specs):
        raise UsageError(f"the model reads {planes} planes per sample: give a dataset folder (data/NAME)")
    return specs
