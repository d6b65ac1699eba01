"""utils/generate/writer.py end to end: a FakeSource over image files -> a dataset folder.

The images go through the real utils.image.prepare; TensorFlow is imported
inside tests only (for reading records back).
"""
from __future__ import annotations

import collections
import csv
import json
import os

import numpy as np
import pytest

from tests.conftest import write_image
from tests.generate.common import FakeSource, build, huge_png, make_images, records, shard_hashes
from utils.dataset import schema
from utils.dataset.manifest import class_counts, select_shards
from utils.errors import SourceError
from utils.generate import outdir, shards, writer
from utils.generate.verify import verify_dataset


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
    assert not os.path.exists(tmp_path / "out" / outdir.WORK)
    assert not [n for n in os.listdir(tmp_path / "out") if n.endswith(".tmp")]
    assert verify_dataset(str(tmp_path / "out"), progress=False) == []


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
    # targets 10, 5, 3; photos come in pairs, and an odd target takes the pair that
    # overshoots by one rather than stop one short
    assert man["splits"]["val"]["class_counts"] == [10, 6, 4]
    recs = records(tmp_path / "out")
    by_split = collections.defaultdict(set)
    for sp, _, sid, _, _ in recs:
        by_split[sp].add(sid)
    assert by_split["train"] and by_split["val"]
    assert not by_split["train"] & by_split["val"], "a product straddles train and val"


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
    train_shards = man["splits"]["train"]["shards"]
    assert man["folds"] == 3
    assert {s["fold"] for s in train_shards} == {0, 1, 2}
    per_fold = collections.Counter()
    for s in train_shards:
        per_fold[s["fold"]] += s["count"]
    assert sorted(per_fold.values()) == [15, 15, 15]
    recs = records(tmp_path / "out")
    fold_of_sid = collections.defaultdict(set)
    for _, fold, sid, _, _ in recs:
        fold_of_sid[sid].add(fold)
    assert all(len(f) == 1 for f in fold_of_sid.values()), "a group straddles folds"
    # stratified in whole groups of 3: a's 10 groups go 4/3/3, then b's 5 groups
    # fill the folds with fewer records first, so every fold holds 15
    per_class = [class_counts(select_shards(man, str(tmp_path / "out"), "val", fold=k), 2) for k in range(3)]
    assert per_class == [[12, 3], [9, 6], [9, 6]]


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
    train_shards = man["splits"]["train"]["shards"]
    n = len(train_shards)
    assert n >= 8
    assert [s["file"] for s in train_shards] == [f"train-{i:05d}-of-{n:05d}.tfrecord" for i in range(n)]
    assert all(s["bytes"] <= 5 * (each + 300) for s in train_shards)
    # classes are mixed within shards, not one class after another
    assert sum(1 for s in train_shards if all(s["class_counts"])) >= n // 2


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
    man = writer.write_dataset(FakeSource(entries), str(out), name="t", progress=False, log=msgs.append)
    assert any("already built" in m for m in msgs)
    assert man["inputs"] == 10
    after = {n: (os.path.getmtime(out / n), open(out / n, "rb").read()) for n in os.listdir(out)}
    assert after == before
    man2 = build(FakeSource(entries, path="other"), out, overwrite=True)
    assert man2["source"]["path"] == "other"


class Interrupt(BaseException):
    pass


def test_interrupted_run_resumes_to_the_clean_result(tmp_path, monkeypatch):
    entries = make_images(tmp_path / "img", {"a": 15, "b": 15})
    clean = build(FakeSource(entries), tmp_path / "clean", val_fraction=0.2, shard_mb=0.01, dedupe=True)
    calls = {"n": 0, "limit": 17}
    real = shards.prepare_planes

    def dying_prepare(planes, **kw):   # pass-through with workers=1 runs inline, in this process
        calls["n"] += 1
        if calls["n"] > calls["limit"]:
            raise Interrupt()   # like Ctrl-C in the middle of a shard
        return real(planes, **kw)

    monkeypatch.setattr(shards, "prepare_planes", dying_prepare)
    with pytest.raises(Interrupt):
        build(FakeSource(entries), tmp_path / "out", val_fraction=0.2, shard_mb=0.01, dedupe=True, workers=1)
    names = os.listdir(tmp_path / "out")
    assert "manifest.json" not in names and outdir.WORK in names
    # only the interrupted shard is left unfinished: the one before it (whose sink the writer had
    # not joined yet, utils.generate.shards.write_shard_deferred) was still renamed and marked done
    assert len([n for n in names if n.endswith(".tmp")]) == 1
    done_before = {n: open(tmp_path / "out" / n, "rb").read() for n in names if n.endswith(".tfrecord")}
    assert done_before
    assert all(os.path.isfile(outdir._sidecar_path(str(tmp_path / "out"), n)) for n in done_before)
    msgs = []
    calls.update(n=0, limit=10**9)
    man = writer.write_dataset(FakeSource(entries), str(tmp_path / "out"), name="t", val_fraction=0.2,
                               shard_mb=0.01, dedupe=True, progress=False, workers=1, log=msgs.append)
    assert any("resuming" in m for m in msgs)
    assert calls["n"] < 30, "completed shards were rewritten"
    assert shard_hashes(man) == shard_hashes(clean)
    assert sorted(records(tmp_path / "out")) == sorted(records(tmp_path / "clean"))
    assert not [n for n in os.listdir(tmp_path / "out") if n.endswith(".tmp") or n == outdir.WORK]
    for n, b in done_before.items():
        assert open(tmp_path / "out" / n, "rb").read() == b


def test_plain_tf_data_reads_the_documented_keys(tmp_path):
    import tensorflow as tf

    from tests.dataset.documented_keys import documented_spec

    entries = make_images(tmp_path / "img", {"a": 3, "b": 2})
    man = build(FakeSource(entries), tmp_path / "out")
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
    import tensorflow as tf

    entries = make_images(tmp_path / "img", {"a": 4, "b": 4}, size=64)
    man = build(FakeSource(entries), tmp_path / "out", workers=2, **limit)
    assert man["splits"]["train"]["count"] == 8
    n = 0
    shard = str(tmp_path / "out" / man["splits"]["train"]["shards"][0]["file"])
    for raw in tf.data.TFRecordDataset(shard).as_numpy_iterator():
        r = schema.parse_numpy(raw)
        assert side(r[schema.HEIGHT], r[schema.WIDTH]) == 20
        n += 1
    assert n == 8
    assert verify_dataset(str(tmp_path / "out"), progress=False) == []


def test_bad_images_skipped_and_channels_kept(tmp_path):
    import tensorflow as tf

    d = tmp_path / "img"
    rng = np.random.default_rng(0)
    for n, shape in {"rgb.jpg": (20, 24, 3), "gray.png": (20, 24), "rgba.png": (20, 24, 4)}.items():
        write_image(d / n, rng.integers(0, 256, shape, dtype=np.uint8))
    jpg = (d / "rgb.jpg").read_bytes()
    (d / "truncated.jpg").write_bytes(jpg[: len(jpg) // 2])
    (d / "empty.jpg").write_bytes(b"")
    (d / "text.png").write_bytes(b"hello, not an image")
    (d / "huge.png").write_bytes(huge_png())
    names = sorted(os.listdir(d))
    entries = [(n, n, ["x"], str(d / n), None) for n in names]
    man = build(FakeSource(entries), tmp_path / "out")
    assert man["inputs"] == 7
    assert man["splits"]["train"]["count"] == 3 and man["skipped"]["count"] == 4
    skipped = dict(list(csv.reader(open(tmp_path / "out" / "skipped.csv")))[1:])
    assert set(skipped) == {"truncated.jpg", "empty.jpg", "text.png", "huge.png"}
    assert all(skipped.values())
    shard = tmp_path / "out" / man["splits"]["train"]["shards"][0]["file"]
    chans = {schema.parse_numpy(r)[schema.SOURCE_ID]: schema.parse_numpy(r)[schema.CHANNELS]
             for r in tf.data.TFRecordDataset(str(shard)).as_numpy_iterator()}
    assert chans == {"rgb.jpg": 3, "gray.png": 1, "rgba.png": 4}
    assert man["channels"] == 3
    assert verify_dataset(str(tmp_path / "out"), progress=False) == []
