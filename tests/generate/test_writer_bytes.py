"""The local writer's output, byte for byte, against hashes stored before its speed-up.

The expected sha256 of every file a build leaves (shards, manifest.json,
labels.json, skipped.csv) were computed with the writer as it was before the
pass-through and resize paths were made faster (git b818f37); a faster path
that changes one byte of the output fails here. The inputs are made here,
deterministically (fixed seeds, Pillow-encoded), and cover what the writer
treats differently: JPEG / PNG / GIF / BMP passed through, a TIFF converted,
an RGBA PNG, a gray JPEG, two-plane samples, skips of every kind, a repeat
(--dedupe), several shards per split, and the resize path inline and in worker
processes.
"""
from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest

from tests.conftest import encode_image, random_image
from tests.generate.common import FakeSource, build
from utils.generate import pool
from utils.sources.base import Item, file_loader


def _write(path, data: bytes) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return str(path)


class _Planes(FakeSource):
    """Two-plane samples (one gray PNG file per plane) and one whose file is not there."""

    def __init__(self, samples, **kw):
        super().__init__([], **kw)
        self.samples = samples

    def items(self):
        for i, paths in enumerate(self.samples):
            yield Item(f"k/{i}", f"s{i // 2}", ("ab"[i % 2],), file_loader(*paths),
                       sum(os.path.getsize(p) for p in paths))
        yield Item("k/lost", "lost", ("a",), file_loader("/nonexistent/lost.png"), 100)


def _planes_source(root) -> FakeSource:
    samples = [[_write(os.path.join(root, f"{i}-{c}.png"), encode_image(random_image(300 + 2 * i + c, 32, 40, c=1)))
                for c in range(2)] for i in range(8)]
    return _Planes(samples, classes=["a", "b"])


def _source(root) -> FakeSource:
    """~30 inputs in three classes: every format path, bad inputs and a repeat."""
    entries = []
    n = 0

    def add(name, data, label, split=None):
        nonlocal n
        path = _write(os.path.join(root, name), data)
        entries.append((f"k/{name}", f"s{n // 2}", [label], path, split))   # pairs share a source_id
        n += 1

    for i in range(12):
        h, w = 40 + 4 * i, 72 - 2 * i
        add(f"j{i}.jpg", encode_image(random_image(i, h, w, blocky=False), "jpeg", quality=90), "abc"[i % 3])
    for i in range(5):
        add(f"p{i}.png", encode_image(random_image(100 + i, 36, 44, blocky=False)), "abc"[i % 3])
    rgba = np.dstack([random_image(200, 32, 32), np.full((32, 32), 128, np.uint8)])
    add("rgba.png", encode_image(rgba), "a")
    add("gray.jpg", encode_image(random_image(201, 48, 40, c=1), "jpeg"), "b")
    add("g.gif", encode_image(random_image(202, 30, 30), "gif"), "c")
    add("b.bmp", encode_image(random_image(203, 30, 34), "bmp"), "a")
    add("t.tiff", encode_image(random_image(204, 34, 30), "tiff"), "b")
    jpeg = encode_image(random_image(205, 50, 60, blocky=False), "jpeg")
    add("cut.jpg", jpeg[: len(jpeg) // 2], "c")
    add("junk.png", b"this is not an image", "a")
    add("empty.png", b"", "b")
    add("again.jpg", open(os.path.join(root, "j3.jpg"), "rb").read(), "a")   # a repeat of j3
    return FakeSource(entries, skips=[("row0", "CSV row without an image")], classes=["a", "b", "c"])


def _file_hashes(out) -> dict[str, str]:
    return {n: hashlib.sha256(open(os.path.join(out, n), "rb").read()).hexdigest()[:16]
            for n in sorted(os.listdir(out)) if not n.startswith(".")}


# Computed at git b818f37 (before the speed-up), with these inputs and arguments.
# manifest.json's hashes were updated when shard entries gained their "images" summary
# (formats, largest shorter side): with those entries removed, each manifest still hashes to
# what b818f37 wrote (9958bb54..., 75e1f134..., 01cfd725..., f21ae4bb...).
# All were stored again when the plan cut each split into even shards instead of filling
# each to --shard-mb (utils.generate.plan._even_cuts; passthrough 6 -> 5 train shards,
# resize 7 -> 6): every case's records, read back split by split in order, were checked
# byte for byte against the writer before that change (950d5af + f8ad9eb); only the cut moved.
EXPECTED: dict[str, dict[str, str]] = {
    "passthrough": {
        "labels.json": "2066893fa8c7d30a",
        "manifest.json": "b11dc3f536bd57aa",
        "skipped.csv": "aceb08e3c4b18954",
        "train-00000-of-00005.tfrecord": "b14bcc5d356822ea",
        "train-00001-of-00005.tfrecord": "47ab856d2be2d025",
        "train-00002-of-00005.tfrecord": "64255cd08aa9a196",
        "train-00003-of-00005.tfrecord": "92fefeb4c483162f",
        "train-00004-of-00005.tfrecord": "7cbb31d220a8ed92",
        "val-00000-of-00001.tfrecord": "a654d16882cea255",
    },
    "planes": {
        "labels.json": "221163eeed0a06bb",
        "manifest.json": "0bd04685e84c7bbd",
        "skipped.csv": "4728f8e9d156a044",
        "train-00000-of-00002.tfrecord": "1ba848ae3f402a90",
        "train-00001-of-00002.tfrecord": "a98a8700f1bb5ef9",
        "val-00000-of-00001.tfrecord": "90656144c7115acd",
    },
    "planes-resize-2-workers": {
        "labels.json": "221163eeed0a06bb",
        "manifest.json": "605269a6da375da4",
        "skipped.csv": "4728f8e9d156a044",
        "train-00000-of-00002.tfrecord": "f6c513c363753240",
        "train-00001-of-00002.tfrecord": "43fc729bce29aa63",
        "val-00000-of-00001.tfrecord": "d88f97bc523dab6c",
    },
    "resize-2-workers": {
        "labels.json": "2066893fa8c7d30a",
        "manifest.json": "e59f73c485de2c7f",
        "skipped.csv": "aceb08e3c4b18954",
        "train-00000-of-00006.tfrecord": "ba7d2e71566c981c",
        "train-00001-of-00006.tfrecord": "8874dd3e100e5cae",
        "train-00002-of-00006.tfrecord": "de9104f9facf8a53",
        "train-00003-of-00006.tfrecord": "13fd8094479ddb93",
        "train-00004-of-00006.tfrecord": "700e8424e0796e18",
        "train-00005-of-00006.tfrecord": "38c0a5369f05230b",
        "val-00000-of-00002.tfrecord": "65888e2417c02f28",
        "val-00001-of-00002.tfrecord": "a5445d7bf84e738a",
    },
}
# one worker process or two: the same bytes
EXPECTED["resize-inline"] = EXPECTED["resize-2-workers"]
EXPECTED["passthrough-2"] = EXPECTED["passthrough"]

CASES = {
    "passthrough": dict(workers=1, shard_mb=0.02),
    "passthrough-2": dict(workers=2, shard_mb=0.02),
    "resize-inline": dict(workers=1, max_side=24, shard_mb=0.001),
    "resize-2-workers": dict(workers=2, max_side=24, shard_mb=0.001),
    "planes": dict(workers=1, shard_mb=0.002),
    "planes-resize-2-workers": dict(workers=2, max_side=20, shard_mb=0.001),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_output_bytes_are_unchanged(tmp_path, monkeypatch, case):
    # the worker cases on forkserver here; test_forked_workers_give_the_same_bytes forks them
    monkeypatch.setattr(pool, "start_method", lambda: "forkserver")
    src = (_planes_source if case.startswith("planes") else _source)(tmp_path / "img")
    kw = dict(CASES[case], val_fraction=0.25, dedupe=True, seed=3)
    build(src, tmp_path / "out", **kw)
    got = _file_hashes(tmp_path / "out")
    assert len([n for n in got if n.endswith(".tfrecord")]) >= 3   # several shards
    assert got == EXPECTED[case]


_FORKED = """
import json, pathlib, sys
sys.path.insert(0, {root!r})
from tests.generate import test_writer_bytes as T
from tests.generate.common import build
from utils.generate import pool
assert "tensorflow" not in sys.modules and pool.start_method() == "fork"
if __name__ == "__main__":
    d = pathlib.Path({tmp!r})
    src = (T._planes_source if {case!r}.startswith("planes") else T._source)(d / "img")
    build(src, d / "out", **dict(T.CASES[{case!r}], val_fraction=0.25, dedupe=True, seed=3))
    print(json.dumps(T._file_hashes(d / "out")))
"""


@pytest.mark.parametrize("case", ["resize-2-workers", "planes-resize-2-workers"])
def test_forked_workers_give_the_same_bytes(tmp_path, case):
    # a fresh interpreter without TensorFlow forks its workers, as generate_dataset.py does
    import json
    import subprocess
    import sys

    from tests.conftest import ROOT

    script = tmp_path / "run.py"
    script.write_text(_FORKED.format(root=ROOT, tmp=str(tmp_path), case=case))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout) == EXPECTED[case]
