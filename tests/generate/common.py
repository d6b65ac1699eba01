"""What the utils.generate tests share: a Source over files, its images, a build and a reader."""
from __future__ import annotations

import hashlib
import os
import struct
import zlib

from tests.conftest import random_image, write_image
from utils.dataset import schema
from utils.dataset.manifest import load_manifest
from utils.generate import writer
from utils.sources.base import Item, Skip, Source, file_loader


class FakeSource(Source):
    """Items from (key, source_id, labels, path, split) entries, after the given Skips."""

    kind = "fake"

    def __init__(self, entries, skips=(), classes=None, multi_label=False, path="fake"):
        super().__init__()
        self.entries, self.skips, self.path = list(entries), list(skips), path
        self.classes, self.multi_label = classes, multi_label
        self.args = {"path": path}

    def items(self):
        for s in self.skips:
            yield Skip(*s)
        for key, sid, labels, path, split in self.entries:
            yield Item(key, sid, tuple(labels), file_loader(path), os.path.getsize(path), split)


def make_images(root, per_class: dict, size=32, seed=0, group=1, split=None, ext=".png"):
    """per_class {name: n} -> FakeSource entries of noise images; `group` photos share a source_id."""
    entries = []
    os.makedirs(root, exist_ok=True)
    name = os.path.basename(root)
    n = 0
    for c, count in per_class.items():
        for j in range(count):
            path = write_image(os.path.join(root, f"{c}_{j}{ext}"),
                               random_image(seed * 100_000 + n, size, size + 8, blocky=False))
            n += 1
            entries.append((f"{name}/{c}/{j}", f"{name}-{c}-{j // group}", [c] if c else [], path, split))
    return entries


def huge_png() -> bytes:
    """A PNG header claiming 60000 x 60000 pixels (and no pixel data to speak of)."""
    chunk = b"IHDR" + struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk)) + b"\x00" * 64


def records(out_dir, split=None):
    """(split, fold, source_id, labels, sha1 of the planes) of every record of a dataset."""
    import tensorflow as tf

    man = load_manifest(str(out_dir))
    out = []
    for sp, v in man["splits"].items():
        if split and sp != split:
            continue
        for s in v["shards"]:
            for raw in tf.data.TFRecordDataset(os.path.join(out_dir, s["file"])).as_numpy_iterator():
                r = schema.parse_numpy(raw)
                out.append((sp, s["fold"], r[schema.SOURCE_ID], tuple(r[schema.LABEL]),
                            hashlib.sha1(b"".join(r[schema.ENCODED])).hexdigest()))
    return out


def build(src, out, **kw):
    """write_dataset quietly, with two workers unless told."""
    kw.setdefault("name", "t")
    kw.setdefault("progress", False)
    kw.setdefault("workers", 2)
    return writer.write_dataset(src, str(out), log=lambda m: None, **kw)


def shard_hashes(man):
    return [(s["file"], s["sha256"]) for v in man["splits"].values() for s in v["shards"]]
