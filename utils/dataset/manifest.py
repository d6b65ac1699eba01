"""manifest.json and labels.json of a dataset folder: reading and shard selection.

The writer (utils/generate/writer.py) produces this layout; the pipeline,
train.py and detect.py only read it through these functions.

manifest.json (schema version 1):
{
  "schema_version": 1,
  "name": "demo",
  "source": {"kind": "folder", "path": "...", "args": {...}},
  "num_classes": 5,
  "multi_label": false,
  "planes": 1,                 # encoded planes per record (6 for 6-channel microscopy)
  "channels": 3,               # channels the model should see: planes * channels of a plane,
                               # 3 for ordinary photos (grayscale/alpha are made 3 by the pipeline)
  "folds": 0,                  # K when written with --folds K, else 0
  "seed": 0,
  "inputs": 1234,              # everything the source offered (with --fraction: the selected
                               # items plus the source's skips; unselected items are not listed)
  "splits": {
    "train": {"count": N, "class_counts": [..num_classes..],
              "shards": [{"file": "train-00000-of-00002.tfrecord", "count": n, "bytes": b,
                          "sha256": "...", "fold": null or k, "class_counts": [...],
                          "images": {"formats": {"jpeg": n}, "max_short_side": 224}}]},
    "val": {...}, "test": {...}          # a split with no records is absent
  },
  "skipped": {"count": k, "by_reason": {"truncated image": 2, ...}},
  "readable_names": {...} or null       # class name -> readable name (Cdiscount)
}
`records + skipped == inputs`, where records is the sum of split counts
(minus `dedupe` drops, which are skips with reason "duplicate of KEY").

A shard's "images" summarises its records' image/format and image/height x
width (records per format; the largest shorter side): the input pipeline reads
it to prove, before decoding anything, that a plain JPEG decode and resize is
all every record needs (utils.input.image_ops.direct_jpeg). Manifests written
before it have no "images": the pipeline then takes its general path.
"""
from __future__ import annotations

import json
import os
import re

from utils.errors import DatasetError

SPLITS = ("train", "val", "test")   # the only split names, in manifest order
MANIFEST = "manifest.json"
LABELS = "labels.json"
SKIPPED = "skipped.csv"
SHARD_PATTERN = rf"({'|'.join(SPLITS)})-\d{{5}}-of-\d{{5}}\.tfrecord"   # a regex for shard_name's names


IMAGES = "images"   # a shard entry's summary of its records' images (images_summary)


def images_summary() -> dict:
    """An empty shard's image summary; `add_image` counts each record into it."""
    return {"formats": {}, "max_short_side": 0}


def add_image(summary: dict, fmt: str, height: int, width: int) -> None:
    """Count one record (its image/format, image/height, image/width) into a shard's summary."""
    formats = summary["formats"]
    formats[fmt] = formats.get(fmt, 0) + 1
    short = min(height, width)
    if short > summary["max_short_side"]:
        summary["max_short_side"] = short


def merged_images(shards: list[dict]) -> dict | None:
    """The image summary of several shard entries together; None when one has none (older manifest).

    Returns:
        {"formats": {fmt: records}, "max_short_side": px}, formats in sorted order.
    """
    formats: dict[str, int] = {}
    short = 0
    for s in shards:
        summary = s.get(IMAGES)
        if summary is None:
            return None
        for fmt, n in summary["formats"].items():
            formats[fmt] = formats.get(fmt, 0) + int(n)
        short = max(short, int(summary["max_short_side"]))
    return {"formats": dict(sorted(formats.items())), "max_short_side": short}


def shard_name(split: str, i: int, n: int) -> str:
    """The file of shard i of a split's n shards: `train-00003-of-00012.tfrecord`."""
    return f"{split}-{i:05d}-of-{n:05d}.tfrecord"


def load_manifest(data_dir: str) -> dict:
    path = os.path.join(data_dir, MANIFEST)
    if not os.path.isdir(data_dir):
        raise DatasetError(f"no dataset folder at {data_dir}")
    if not os.path.isfile(path):
        raise DatasetError(f"{data_dir} has no {MANIFEST}: build it with generate_dataset.py")
    try:
        with open(path) as f:
            return json.load(f)
    except ValueError as e:
        raise DatasetError(f"{path} is not valid JSON: {e}") from None


def load_labels(data_dir: str) -> list[str]:
    with open(os.path.join(data_dir, LABELS)) as f:
        return json.load(f)


def select_shards(manifest: dict, data_dir: str, split: str, fold: int | None = None) -> list[dict]:
    """Shard entries (with absolute "path") for a split, honouring K-fold.

    With fold k on a K-fold dataset: split "train" = train shards of every other
    fold, split "val" = train shards of fold k (the dataset's own val split, if
    any, is not used then). Selecting a fold reads no extra data.
    """
    folds = int(manifest.get("folds") or 0)
    if fold is not None:
        if folds < 2:
            raise DatasetError(f"{data_dir} has no folds (rebuild with --folds K) but --fold {fold} was asked")
        if not 0 <= fold < folds:
            raise DatasetError(f"fold {fold} does not exist: {data_dir} has folds 0..{folds - 1}")
        train = manifest["splits"].get("train", {}).get("shards", [])
        if split == "train":
            chosen = [s for s in train if s.get("fold") != fold]
        elif split == "val":
            chosen = [s for s in train if s.get("fold") == fold]
        else:
            chosen = manifest["splits"].get(split, {}).get("shards", [])
    else:
        chosen = manifest["splits"].get(split, {}).get("shards", [])
    return [dict(s, path=os.path.join(data_dir, s["file"])) for s in chosen]


def split_count(shards: list[dict]) -> int:
    return sum(int(s["count"]) for s in shards)


def class_counts(shards: list[dict], num_classes: int) -> list[int]:
    out = [0] * num_classes
    for s in shards:
        for i, c in enumerate(s.get("class_counts") or []):
            out[i] += int(c)
    return out


# --------------------------------------------------------------- shards on disk vs the manifest

_TF_CORRUPTION = re.compile(r"(?:corrupted|truncated) record at (\d+)")


def shard_error(path: str, data_dir: str, problem: str) -> DatasetError:
    """The one line for a shard that cannot be read as listed: what is wrong and the fix."""
    return DatasetError(f"{path} {problem}: run 'generate_dataset.py verify {os.path.normpath(data_dir)}', "
                        "then rebuild or restore that shard")


def check_shards_on_disk(shards: list[dict], data_dir: str) -> None:
    """Every selected shard exists with the manifest's byte size: checked when a dataset opens.

    A missing or cut-short shard would otherwise surface mid-epoch, hours in, as
    a TensorFlow traceback; the sha256 is left to `generate_dataset.py verify`
    (reading every byte is what opening must not cost).

    Args:
        shards: entries from select_shards (with "path").
    Raises:
        DatasetError: the first shard that is missing or has another size.
    """
    for s in shards:
        if not os.path.isfile(s["path"]):
            raise shard_error(s["path"], data_dir, f"is listed in {MANIFEST} but missing")
        size = os.path.getsize(s["path"])
        if "bytes" in s and size != int(s["bytes"]):
            raise shard_error(s["path"], data_dir, f"is {size:,d} bytes, {MANIFEST} says {int(s['bytes']):,d}")


def corruption_offset(message: str) -> int | None:
    """The byte offset in TensorFlow's DataLossError text ("corrupted record at 456336"), else None."""
    m = _TF_CORRUPTION.search(message)
    return int(m.group(1)) if m else None


def corrupted_shard_error(path: str, data_dir: str, offset: int | None) -> DatasetError:
    """`data/NAME/train-00003-of-00008.tfrecord is corrupted near byte 456336: run ... verify ...`."""
    return shard_error(path, data_dir, "is corrupted" + (f" near byte {offset}" if offset is not None else ""))
