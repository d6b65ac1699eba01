"""utils/writer.py on a fake Source (tiny OpenCV images) and, when present, the real ones.

The fake source and `fake_prepare` keep these tests independent of the sources
and imagecheck modules; `real_prepare` tests run once utils/imagecheck.py exists.
TensorFlow is imported inside tests only, because worker processes import this
module to unpickle `fake_prepare`.
"""
from __future__ import annotations

import collections
import csv
import hashlib
import json
import os
from typing import NamedTuple

import cv2
import numpy as np
import pytest

from utils.dataset import manifest as mf
from utils.dataset import schema
from utils.sources.base import Item, Skip, Source, SourceError, file_loader
from utils.generate import writer


class Info(NamedTuple):
    fmt: str
    height: int
    width: int
    channels: int
    frames: int = 1


def fake_prepare(planes, *, max_side, short_side=None, max_pixels):
    """A tiny stand-in for utils.image.prepare.prepare_planes."""
    out, info = [], None
    for p in planes:
        img = cv2.imdecode(np.frombuffer(p, np.uint8), cv2.IMREAD_UNCHANGED)
        if img is None:
            raise ValueError("not an image")
        fmt = "png" if p[:4] == b"\x89PNG" else "jpeg"
        s = min(max_side / max(img.shape[:2]) if max_side else 1.0,
                short_side / min(img.shape[:2]) if short_side else 1.0)
        if s < 1.0:
            img = cv2.resize(img, (max(1, round(img.shape[1] * s)), max(1, round(img.shape[0] * s))))
            p = cv2.imencode(".png", img)[1].tobytes()
            fmt = "png"
        out.append(p)
        info = Info(fmt, img.shape[0], img.shape[1], 1 if img.ndim == 2 else img.shape[2])
    return out, info


def has_imagecheck() -> bool:
    try:
        import utils.image.prepare  # noqa: F401
        return True
    except ImportError:
        return False


class FakeSource(Source):
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
    """per_class {name: n} -> entries; `group` photos share a source_id."""
    rng = np.random.default_rng(seed)
    entries = []
    os.makedirs(root, exist_ok=True)
    for c, n in per_class.items():
        for j in range(n):
            img = rng.integers(0, 256, (size, size + 8, 3), dtype=np.uint8)
            path = os.path.join(root, f"{c}_{j}{ext}")
            cv2.imwrite(path, img)
            labels = [c] if c else []
            entries.append((f"{os.path.basename(root)}/{c}/{j}", f"{os.path.basename(root)}-{c}-{j // group}", labels, path, split))
    return entries


def records(out_dir, split=None):
    import tensorflow as tf

    man = mf.load_manifest(out_dir)
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
    kw.setdefault("name", "t")
    kw.setdefault("progress", False)
    kw.setdefault("prepare", fake_prepare)
    kw.setdefault("workers", 2)
    return writer.write_dataset(src, str(out), log=lambda m: None, **kw)


def shard_hashes(man):
    return [(s["file"], s["sha256"]) for v in man["splits"].values() for s in v["shards"]]


# ----------------------------------------------------------------------------- tests

def test_records_plus_skipped_equals_inputs(tmp_path):
    entries = make_images(tmp_path / "img", {"cat": 6, "dog": 5, "emu": 4})
    bad = tmp_path / "img" / "junk.png"
    bad.write_bytes(b"this is not an image")
    empty = tmp_path / "img" / "empty.png"
    empty.write_bytes(b"")
    entries += [("junk", "junk", ["cat"], str(bad), None), ("empty", "empty", ["dog"], str(empty), None),
                ("strange", "strange", ["zebra"], entries[0][3], None)]
    src = FakeSource(entries, skips=[("row9", "CSV row without an image")], classes=["cat", "dog", "emu"])
    man = build(src, tmp_path / "out")

    assert man["inputs"] == 19
    recs = records(tmp_path / "out")
    assert len(recs) == 15
    assert man["skipped"]["count"] == 4
    assert len(recs) + man["skipped"]["count"] == man["inputs"]
    with open(tmp_path / "out" / "skipped.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["key", "reason"]
    got = dict(rows[1:])
    assert got["row9"] == "CSV row without an image"
    assert got["junk"] == "not an image"
    assert got["empty"] == "empty file"
    assert got["strange"] == "label not in label list: zebra"
    assert json.load(open(tmp_path / "out" / "labels.json")) == ["cat", "dog", "emu"]
    assert man["splits"]["train"]["class_counts"] == [6, 5, 4]
    assert man["num_classes"] == 3 and man["planes"] == 1 and man["channels"] == 3
    assert "val" not in man["splits"]
    assert not os.path.exists(tmp_path / "out" / writer.WORK)
    assert not [n for n in os.listdir(tmp_path / "out") if n.endswith(".tmp")]
    assert writer.verify_dataset(str(tmp_path / "out"), progress=False) == []


def test_strict_makes_skips_fatal(tmp_path):
    entries = make_images(tmp_path / "img", {"a": 2})
    src = FakeSource(entries, skips=[("row3", "CSV row without an image")])
    with pytest.raises(SourceError, match="row3"):
        build(src, tmp_path / "out", strict=True)
    src = FakeSource(entries, classes=["b"])
    with pytest.raises(SourceError, match="label not in label list: a"):
        build(src, tmp_path / "out2", strict=True)


def test_deterministic_for_a_seed(tmp_path):
    entries = make_images(tmp_path / "img", {"a": 12, "b": 12, "c": 12})
    m1 = build(FakeSource(entries), tmp_path / "o1", val_fraction=0.25, shard_mb=0.02)
    m2 = build(FakeSource(entries), tmp_path / "o2", val_fraction=0.25, shard_mb=0.02, workers=1)
    m3 = build(FakeSource(entries), tmp_path / "o3", val_fraction=0.25, shard_mb=0.02, seed=1)
    assert len(shard_hashes(m1)) > 3
    assert shard_hashes(m1) == shard_hashes(m2)
    assert shard_hashes(m1) != shard_hashes(m3)


def test_val_split_stratified_and_grouped(tmp_path):
    entries = make_images(tmp_path / "img", {"a": 40, "b": 20, "c": 12}, group=2)
    man = build(FakeSource(entries), tmp_path / "out", val_fraction=0.25)
    cc = man["splits"]["val"]["class_counts"]
    assert cc == [10, 5, 3] or all(abs(x - y) <= 1 for x, y in zip(cc, [10, 5, 3]))
    recs = records(tmp_path / "out")
    by_split = collections.defaultdict(set)
    for sp, _, sid, _, _ in recs:
        by_split[sp].add(sid)
    assert by_split["train"] and by_split["val"]
    assert not by_split["train"] & by_split["val"], "a product straddles train and val"


def test_same_file_name_in_every_class_is_not_one_product():
    # Caltech-style folders: <class>/image_0001.jpg in every class, so folder items
    # share source_id (the stem) across classes; the split must still be stratified
    items, labels = [], []
    for c, n in enumerate([100, 10]):
        for j in range(n):
            items.append(Item(f"{c}/image_{j:04d}.jpg", f"image_{j:04d}", (str(c),), None, 1000))
            labels.append((c,))
    index = writer.Index(items, labels, [], ["0", "1"])
    for seed in range(4):
        plan = writer.make_plan(index, val_fraction=0.2, seed=seed)
        val = collections.Counter(labels[i][0] for s in plan if s.split == "val" for i in s.members)
        assert (val[0], val[1]) == (20, 2), seed
        plan = writer.make_plan(index, fraction=0.05, seed=seed)
        kept = collections.Counter(labels[i][0] for s in plan for i in s.members)
        assert (kept[0], kept[1]) == (5, 1), seed


def test_source_splits_kept_and_unlabeled_test(tmp_path):
    tr = make_images(tmp_path / "tr", {"a": 6, "b": 6}, split="train")
    va = make_images(tmp_path / "va", {"a": 2, "b": 2}, split="val", seed=1)
    te = make_images(tmp_path / "te", {"": 5}, split="test", seed=2)
    man = build(FakeSource(tr + va + te), tmp_path / "out")
    assert {k: v["count"] for k, v in man["splits"].items()} == {"train": 12, "val": 4, "test": 5}
    assert man["splits"]["test"]["class_counts"] == [0, 0]
    assert all(r[3] == () for r in records(tmp_path / "out", "test"))
    # an explicit --val-fraction re-splits train+val but never touches test
    man = build(FakeSource(tr + va + te), tmp_path / "out2", val_fraction=0.5)
    assert man["splits"]["val"]["count"] == 8 and man["splits"]["test"]["count"] == 5


def test_multi_label_and_empty_labels(tmp_path):
    e = make_images(tmp_path / "img", {"x": 8})
    e = [(k, s, lab, p, sp) for (k, s, _, p, sp), lab in zip(e, [["1"], ["2", "10"], [], ["10"]] * 2)]
    man = build(FakeSource(e, multi_label=True), tmp_path / "out", val_fraction=0.25)
    assert json.load(open(tmp_path / "out" / "labels.json")) == ["1", "2", "10"]
    assert man["multi_label"] is True
    total = [a + b for a, b in zip(man["splits"]["train"]["class_counts"], man["splits"]["val"]["class_counts"])]
    assert total == [2, 2, 4]
    assert sorted(r[3] for r in records(tmp_path / "out")).count(()) == 2


def test_folds_each_in_own_shards(tmp_path):
    entries = make_images(tmp_path / "img", {"a": 30, "b": 15}, group=3)
    man = build(FakeSource(entries), tmp_path / "out", folds=3, shard_mb=0.02)
    shards = man["splits"]["train"]["shards"]
    assert man["folds"] == 3
    assert {s["fold"] for s in shards} == {0, 1, 2}
    per_fold = collections.Counter()
    for s in shards:
        per_fold[s["fold"]] += s["count"]
    assert sorted(per_fold.values()) == [15, 15, 15]
    recs = records(tmp_path / "out")
    fold_of_sid = collections.defaultdict(set)
    for _, fold, sid, _, _ in recs:
        fold_of_sid[sid].add(fold)
    assert all(len(f) == 1 for f in fold_of_sid.values()), "a group straddles folds"
    # each fold stratified (to within one group of 3): class a ~10 per fold, class b ~5
    for k in range(3):
        sel = mf.select_shards(man, str(tmp_path / "out"), "val", fold=k)
        a, b = mf.class_counts(sel, 2)
        assert abs(a - 10) <= 3 and abs(b - 5) <= 3


def test_fraction_is_stratified_subset(tmp_path):
    entries = make_images(tmp_path / "img", {"a": 20, "b": 10, "c": 2})
    man = build(FakeSource(entries), tmp_path / "out", fraction=0.5)
    assert man["splits"]["train"]["class_counts"] == [10, 5, 1]
    assert man["inputs"] == 16


def test_dedupe(tmp_path):
    entries = make_images(tmp_path / "img", {"a": 4, "b": 3})
    dup = tmp_path / "img" / "copy.png"
    dup.write_bytes(open(entries[0][3], "rb").read())
    entries.append(("copy", "copy", ["b"], str(dup), None))
    man = build(FakeSource(entries), tmp_path / "out", dedupe=True, shard_mb=0.005)
    assert man["inputs"] == 8 and man["skipped"]["count"] == 1
    rows = list(csv.reader(open(tmp_path / "out" / "skipped.csv")))[1:]
    assert len(rows) == 1 and rows[0][1].startswith("duplicate of ")
    assert {rows[0][0], rows[0][1][len("duplicate of "):]} == {"copy", entries[0][0]}
    assert len(set(r[4] for r in records(tmp_path / "out"))) == 7


def test_shard_size_cut_and_names(tmp_path):
    entries = make_images(tmp_path / "img", {"a": 20, "b": 20}, size=48)
    each = os.path.getsize(entries[0][3])
    man = build(FakeSource(entries), tmp_path / "out", shard_mb=4 * each / 2**20)
    shards = man["splits"]["train"]["shards"]
    n = len(shards)
    assert n >= 8
    assert [s["file"] for s in shards] == [f"train-{i:05d}-of-{n:05d}.tfrecord" for i in range(n)]
    assert all(s["bytes"] <= 5 * (each + 300) for s in shards)
    # classes are mixed within shards, not one class after another
    assert sum(1 for s in shards if all(s["class_counts"])) >= n // 2


def test_verify_detects_a_flipped_byte(tmp_path):
    entries = make_images(tmp_path / "img", {"a": 5, "b": 5})
    man = build(FakeSource(entries), tmp_path / "out", val_fraction=0.2)
    out = str(tmp_path / "out")
    assert writer.verify_dataset(out, progress=False) == []
    path = os.path.join(out, man["splits"]["train"]["shards"][0]["file"])
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(path, "wb").write(bytes(data))
    problems = writer.verify_dataset(out, progress=False)
    assert any("sha256" in p for p in problems)


def test_other_dataset_refused_same_one_already_built(tmp_path):
    entries = make_images(tmp_path / "img", {"a": 5, "b": 5})
    out = tmp_path / "out"
    build(FakeSource(entries), out)
    before = {n: (os.path.getmtime(out / n), open(out / n, "rb").read()) for n in os.listdir(out)}
    with pytest.raises(SourceError, match="different"):
        build(FakeSource(entries, path="other"), out)
    with pytest.raises(SourceError, match="different"):
        build(FakeSource(entries), out, val_fraction=0.3)
    msgs = []
    man = writer.write_dataset(FakeSource(entries), str(out), name="t", progress=False,
                               prepare=fake_prepare, log=msgs.append)
    assert any("already built" in m for m in msgs)
    assert man["inputs"] == 10
    after = {n: (os.path.getmtime(out / n), open(out / n, "rb").read()) for n in os.listdir(out)}
    assert after == before
    man2 = build(FakeSource(entries, path="other"), out, overwrite=True)
    assert man2["source"]["path"] == "other"


class Interrupt(BaseException):
    pass


_calls = {"n": 0, "limit": 10**9}


def dying_prepare(planes, *, max_side, short_side=None, max_pixels):
    _calls["n"] += 1
    if _calls["n"] > _calls["limit"]:
        raise Interrupt()   # like Ctrl-C in the middle of a shard
    return fake_prepare(planes, max_side=max_side, short_side=short_side, max_pixels=max_pixels)


def test_interrupted_run_resumes_to_the_clean_result(tmp_path):
    entries = make_images(tmp_path / "img", {"a": 15, "b": 15})
    clean = build(FakeSource(entries), tmp_path / "clean", val_fraction=0.2, shard_mb=0.01, dedupe=True)
    _calls.update(n=0, limit=17)
    with pytest.raises(Interrupt):
        build(FakeSource(entries), tmp_path / "out", val_fraction=0.2, shard_mb=0.01, dedupe=True,
              workers=1, prepare=dying_prepare)
    names = os.listdir(tmp_path / "out")
    assert "manifest.json" not in names and writer.WORK in names
    assert any(n.endswith(".tmp") for n in names)
    done_before = {n: open(tmp_path / "out" / n, "rb").read() for n in names if n.endswith(".tfrecord")}
    assert done_before
    msgs = []
    _calls.update(n=0, limit=10**9)
    man = writer.write_dataset(FakeSource(entries), str(tmp_path / "out"), name="t", val_fraction=0.2,
                               shard_mb=0.01, dedupe=True, progress=False, workers=1,
                               prepare=dying_prepare, log=msgs.append)
    assert any("resuming" in m for m in msgs)
    assert _calls["n"] < 30, "completed shards were rewritten"
    assert shard_hashes(man) == shard_hashes(clean)
    assert sorted(records(tmp_path / "out")) == sorted(records(tmp_path / "clean"))
    assert not [n for n in os.listdir(tmp_path / "out") if n.endswith(".tmp") or n == writer.WORK]
    for n, b in done_before.items():
        assert open(tmp_path / "out" / n, "rb").read() == b


def test_plain_tf_data_reads_the_documented_keys(tmp_path):
    import tensorflow as tf

    entries = make_images(tmp_path / "img", {"a": 3, "b": 2})
    man = build(FakeSource(entries), tmp_path / "out")
    from tests.dataset.documented_keys import documented_spec

    spec = documented_spec()
    files = [str(tmp_path / "out" / s["file"]) for s in man["splits"]["train"]["shards"]]
    ds = tf.data.TFRecordDataset(files).map(lambda s: tf.io.parse_single_example(s, spec))
    n = 0
    for ex in ds:
        img = tf.io.decode_image(tf.sparse.to_dense(ex["image/encoded"])[0], expand_animations=False)
        assert img.shape == (int(ex["image/height"]), int(ex["image/width"]), int(ex["image/channels"]))
        assert ex["image/format"].numpy() == b"png"
        assert tf.sparse.to_dense(ex["image/class/label"]).numpy().tolist() in ([0], [1])
        n += 1
    assert n == 5


@pytest.mark.parametrize("limit, side", [({"max_side": 20}, max), ({"short_side": 20}, min)])
def test_resize_limits_apply_in_worker_processes(tmp_path, limit, side):
    entries = make_images(tmp_path / "img", {"a": 4, "b": 4}, size=64)
    prepare = None if has_imagecheck() else fake_prepare
    man = build(FakeSource(entries), tmp_path / "out", workers=2, prepare=prepare, **limit)
    assert man["splits"]["train"]["count"] == 8
    n = 0
    for raw in __import__("tensorflow").data.TFRecordDataset(
            str(tmp_path / "out" / man["splits"]["train"]["shards"][0]["file"])).as_numpy_iterator():
        r = schema.parse_numpy(raw)
        assert side(r[schema.HEIGHT], r[schema.WIDTH]) == 20
        n += 1
    assert n == 8
    assert writer.verify_dataset(str(tmp_path / "out"), progress=False) == []


def test_resize_estimate_keeps_shards_full_when_only_the_short_side_is_limited():
    item = writer.Item(key="k", source_id="k", labels=(), load=None, size=3_000_000)  # a 12 MP camera JPEG
    plain = writer.estimate_bytes(item, None)
    short = writer.estimate_bytes(item, None, 224)
    assert plain > 3_000_000 and short < plain / 20  # not counted at its original size
    assert writer.estimate_bytes(item, 256, 224) <= writer.estimate_bytes(item, 256)


def test_real_imagecheck_skips_bad_images_and_keeps_channels(tmp_path):
    pytest.importorskip("utils.image.prepare")
    import struct
    import zlib

    d = tmp_path / "img"
    d.mkdir()
    rng = np.random.default_rng(0)
    good = {"rgb.jpg": rng.integers(0, 256, (20, 24, 3), dtype=np.uint8),
            "gray.png": rng.integers(0, 256, (20, 24), dtype=np.uint8),
            "rgba.png": rng.integers(0, 256, (20, 24, 4), dtype=np.uint8)}
    for n, img in good.items():
        cv2.imwrite(str(d / n), img)
    jpg = (d / "rgb.jpg").read_bytes()
    (d / "truncated.jpg").write_bytes(jpg[: len(jpg) // 2])
    (d / "empty.jpg").write_bytes(b"")
    (d / "text.png").write_bytes(b"hello, not an image")
    chunk = b"IHDR" + struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0)
    (d / "huge.png").write_bytes(b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk
                                 + struct.pack(">I", zlib.crc32(chunk)) + b"\x00" * 64)
    names = sorted(os.listdir(d))
    entries = [(n, n, ["x"], str(d / n), None) for n in names]
    man = build(FakeSource(entries), tmp_path / "out", prepare=None)
    assert man["inputs"] == 7
    assert man["splits"]["train"]["count"] == 3 and man["skipped"]["count"] == 4
    skipped = dict(list(csv.reader(open(tmp_path / "out" / "skipped.csv")))[1:])
    assert set(skipped) == {"truncated.jpg", "empty.jpg", "text.png", "huge.png"}
    assert all(skipped.values())
    import tensorflow as tf

    shard = tmp_path / "out" / man["splits"]["train"]["shards"][0]["file"]
    chans = {schema.parse_numpy(r)[schema.SOURCE_ID]: schema.parse_numpy(r)[schema.CHANNELS]
             for r in tf.data.TFRecordDataset(str(shard)).as_numpy_iterator()}
    assert chans == {"rgb.jpg": 3, "gray.png": 1, "rgba.png": 4}
    assert man["channels"] == 3
    assert writer.verify_dataset(str(tmp_path / "out"), progress=False) == []


@pytest.mark.parametrize("writev", ["whole", "short", "absent"])
def test_shard_sink_writes_framed_records_whatever_writev_does(tmp_path, monkeypatch, writev):
    from utils.dataset import tfrecord

    real = os.writev
    if writev == "short":   # the kernel may write less than asked: the rest must still follow
        monkeypatch.setattr(os, "writev", lambda fd, parts: real(fd, [bytes(parts[0])[:3]]))
    elif writev == "absent":  # Windows has no os.writev
        monkeypatch.delattr(os, "writev")
    recs = [bytes([i]) * (1000 * i) for i in range(1, 5)]
    sink = writer._ShardSink(str(tmp_path / "s.tfrecord"))
    for r in recs:
        sink.write(r)
    size, sha = sink.close()
    data = (tmp_path / "s.tfrecord").read_bytes()
    assert data == b"".join(h + r + f for r in recs for h, f in [tfrecord.frame_parts(r)])
    assert size == len(data) and sha == hashlib.sha256(data).hexdigest()
