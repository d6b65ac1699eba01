"""utils/generate/shards.py: one shard from a plan entry and its items, no output folder."""
from __future__ import annotations

import hashlib
import os

import pytest

from tests.conftest import encode_image, random_image
from utils.dataset import schema
from utils.generate import shards
from utils.generate.plan import ShardPlan
from utils.sources.base import Item


def read_records(path):
    import tensorflow as tf

    return [r.numpy() for r in tf.data.TFRecordDataset(path)]   # checks every length and crc32c


@pytest.mark.parametrize("writev", ["whole", "short", "absent"])
def test_shard_sink_writes_framed_records_whatever_writev_does(tmp_path, monkeypatch, writev):
    real = os.writev
    if writev == "short":   # the kernel may write less than asked: the rest must still follow
        monkeypatch.setattr(os, "writev", lambda fd, parts: real(fd, [bytes(parts[0])[:3]]))
    elif writev == "absent":  # Windows has no os.writev
        monkeypatch.delattr(os, "writev")
    recs = [bytes([i]) * (1000 * i) for i in range(1, 5)]
    sink = shards.ShardSink(str(tmp_path / "s.tfrecord"))
    for r in recs:
        sink.write(r)
    size, sha = sink.close()
    data = (tmp_path / "s.tfrecord").read_bytes()
    assert read_records(str(tmp_path / "s.tfrecord")) == recs
    assert size == len(data) == sum(len(r) + 16 for r in recs) and sha == hashlib.sha256(data).hexdigest()


def test_prepare_item_turns_bad_input_into_a_reason():
    png = encode_image(random_image(0, 8, 8))

    def vanished():
        raise FileNotFoundError("[Errno 2] No such file or directory: 'x.png'")

    none = {"max_side": None, "short_side": None}
    assert shards.prepare_item(vanished, none, 10**8, False) == (
        "skip", "cannot read input: [Errno 2] No such file or directory: 'x.png'")
    assert shards.prepare_item(lambda: [png, b""], none, 10**8, False) == ("skip", "empty file")
    assert shards.prepare_item(lambda: [b"text"], none, 10**8, False) == ("skip", "not an image")
    ok, planes, info, digest = shards.prepare_item(lambda: [png], none, 10**8, True)
    assert (ok, planes, info) == ("ok", [png], ("png", 8, 8, 3))
    assert digest == hashlib.sha1(hashlib.sha1(png).digest()).hexdigest()


def test_write_shard_from_a_plan_entry_and_its_items(tmp_path):
    pngs = [encode_image(random_image(i, 8, 8)) for i in range(3)]
    items = [Item(f"k{i}", f"s{i}", (), None) for i in range(4)]
    labels = [(0,), (1, 0), (1,), (0,)]
    entry = ShardPlan("train-00000-of-00001.tfrecord", "train", 2, [3, 0, 1, 2])
    prepared = iter([("ok", [pngs[0]], ("png", 8, 8, 3), "h0"), ("ok", [pngs[1]], ("png", 8, 8, 3), "h1"),
                     ("ok", [pngs[2]], ("png", 8, 8, 3), "h2"), ("skip", "not an image")])
    seen = {"h1": "earlier"}
    ticks = []
    path = str(tmp_path / entry.file)
    meta = shards.write_shard(entry, items, labels, prepared, path, num_classes=2, seen=seen, tick=ticks.append)
    recs = read_records(path)
    assert [schema.parse_numpy(r)[schema.SOURCE_ID] for r in recs] == ["s3", "s1"]
    assert [schema.parse_numpy(r)[schema.LABEL] for r in recs] == [[0], [1, 0]]
    assert meta["skipped"] == [["k0", "duplicate of earlier"], ["k2", "not an image"]]
    assert (meta["file"], meta["count"], meta["fold"], meta["class_counts"]) == (entry.file, 2, 2, [2, 1])
    assert (meta["planes"], meta["channels"], meta["hashes"]) == ([1], [3], {"h0": "k3", "h2": "k1"})
    assert seen == {"h1": "earlier", "h0": "k3", "h2": "k1"}
    data = open(path, "rb").read()
    assert meta["bytes"] == len(data) and meta["sha256"] == hashlib.sha256(data).hexdigest()
    assert [t > 0 for t in ticks] == [True, False, True, False]
    assert os.listdir(tmp_path) == [entry.file]   # the .tmp was renamed
