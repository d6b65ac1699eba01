"""The direct JPEG path (image_ops.direct_jpeg, `direct=True`): when the manifest proves it, and
that it gives the general path's pixels bit for bit, keeping failure counting and loud shards."""
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import encode_image, random_image
from tests.input.test_pipeline import collect, dataset, record
from tests.input.test_pipeline_faults import consume, flip
from utils.dataset import schema
from utils.dataset.manifest import IMAGES, add_image, images_summary
from utils.input import image_ops, pipeline, records


def summary(fmt="jpeg", short=40):
    return {"formats": {fmt: 3}, "max_short_side": short}


def with_summaries(data_dir) -> str:
    """Give every shard entry of data_dir's manifest the writer's image summary, from its records."""
    path = os.path.join(data_dir, "manifest.json")
    with open(path) as f:
        man = json.load(f)
    for split in man["splits"].values():
        for s in split["shards"]:
            s[IMAGES] = images_summary()
            for r in tf.data.TFRecordDataset(os.path.join(data_dir, s["file"])).as_numpy_iterator():
                ex = schema.parse_numpy(r)
                add_image(s[IMAGES], ex[schema.FORMAT], ex[schema.HEIGHT], ex[schema.WIDTH])
    with open(path, "w") as f:
        json.dump(man, f)
    return data_dir


def jpegs(shapes, c=3):
    return [encode_image(random_image(i, h, w, c=c, blocky=False), "jpeg") for i, (h, w) in enumerate(shapes)]


def mapped(fn, encoded: list[bytes]) -> np.ndarray:
    """fn over each image's planes, in one sequential tf.data map (one random stream, in order)."""
    ds = tf.data.Dataset.from_tensor_slices(tf.constant(encoded)[:, None]).map(fn)
    return np.stack([x.numpy() for x in ds])


def both_paths(size, channels=3, seed=5):
    """The eval and the train (random resized crop, fixed seed) decode, as fn(planes, direct)."""
    return [lambda p, direct: image_ops.eval_image(p, size, channels, direct=direct),
            lambda p, direct: image_ops.train_crop_image(p, size, channels, seed=seed, direct=direct)]


def test_direct_only_when_every_record_is_a_jpeg_shorter_than_twice_the_target():
    assert image_ops.direct_jpeg(summary(short=47), (24, 32))
    assert not image_ops.direct_jpeg(summary(short=48), (24, 32))   # 48 x 100 at 24 x 32: a 2x shrink
    assert not image_ops.direct_jpeg(summary(short=48), (32, 24))
    assert image_ops.direct_jpeg(summary(short=63), 32) and not image_ops.direct_jpeg(summary(short=64), 32)
    assert not image_ops.direct_jpeg(summary("png"), 32)
    assert not image_ops.direct_jpeg({"formats": {"jpeg": 2, "png": 1}, "max_short_side": 8}, 32)
    assert not image_ops.direct_jpeg({"formats": {}, "max_short_side": 0}, 32)   # no records
    assert not image_ops.direct_jpeg(None, 32)                                    # an older manifest


@pytest.mark.parametrize("size", [(24, 32), (32, 24), (28, 28)])
def test_the_bound_is_where_the_general_path_starts_to_branch(size):
    """Shorter side 2 x min(h, w) - 1, either orientation, long other side: general == direct,
    bit for bit; at 2 x min(h, w) the general path shrinks (area / scaled decode) and differs."""
    m = min(size)
    inside = jpegs([(2 * m - 1, 200), (200, 2 * m - 1), (2 * m - 1, 2 * m - 1)])
    for fn in both_paths(size):
        np.testing.assert_array_equal(mapped(lambda p: fn(p, False), inside), mapped(lambda p: fn(p, True), inside))
    at = jpegs([(2 * m, 400)] if size[0] == m else [(400, 2 * m)])
    assert not np.array_equal(mapped(lambda p: image_ops.eval_image(p, size), at),
                              mapped(lambda p: image_ops.eval_image(p, size, direct=True), at))


@pytest.mark.parametrize("channels,c", [(3, 3), (3, 1), (1, 3), (1, 1)])
def test_direct_eval_and_train_equal_general_bit_for_bit(channels, c):
    enc = jpegs([(40, 48), (33, 60), (47, 47), (24, 30), (64, 40)], c=c)
    for fn in both_paths((24, 32), channels, seed=11):
        general, direct = mapped(lambda p: fn(p, False), enc), mapped(lambda p: fn(p, True), enc)
        assert general.shape == (5, 24, 32, channels)
        np.testing.assert_array_equal(general, direct)


def test_direct_refuses_multi_plane_records():
    planes = tf.constant(jpegs([(16, 16), (16, 16)], c=1))
    with pytest.raises(ValueError, match="single-plane"):
        image_ops.eval_image(planes, 8, channels=2, num_planes=2, direct=True)
    with pytest.raises(ValueError, match="single-plane"):
        image_ops.train_crop_image(planes, 8, channels=2, num_planes=2, direct=True)


def test_whole_record_decode_with_flip_and_crop_is_the_same_on_fixed_seeds(tmp_path):
    recs = [record(i, h=40 + i, w=48 - i) for i in range(8)]
    args = dict(size=(24, 32), channels=3, planes=1, num_classes=4, head="softmax",
                crop=dict(scale=image_ops.RRC_SCALE, ratio=image_ops.RRC_RATIO), flip="horizontal", seed=3,
                with_ids=False)
    out = {}
    for direct in (False, True):
        ds = tf.data.Dataset.from_tensor_slices(recs).map(pipeline._decoder(**args, direct=direct))
        out[direct] = [(img.numpy(), lab.numpy()) for img, lab in ds]
    for (a, la), (b, lb) in zip(out[False], out[True]):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(la, lb)
    assert len(out[True]) == 8 and out[True][0][0].shape == (24, 32, 3)


def spy_direct(monkeypatch) -> list:
    seen = []
    real = pipeline._decoder

    def spy(*a, **kw):
        seen.append(a[-1] if len(a) == 10 else kw.get("direct", False))
        return real(*a, **kw)

    monkeypatch.setattr(pipeline, "_decoder", spy)
    return seen


def test_make_dataset_goes_direct_only_when_the_manifest_proves_it(tmp_path, monkeypatch):
    recs = [record(i) for i in range(6)]                 # 40 x 48 JPEGs
    d = dataset(tmp_path / "d", {"train": [recs[:3], recs[3:]]})
    seen = spy_direct(monkeypatch)
    general = collect(pipeline.make_dataset(d, "train", image_size=(24, 32), batch_size=4, training=False))[0]
    with_summaries(d)
    direct = collect(pipeline.make_dataset(d, "train", image_size=(24, 32), batch_size=4, training=False))[0]
    pipeline.make_dataset(d, "train", image_size=(20, 20), batch_size=4, training=False)   # 40 = 2 x 20
    pipeline.make_dataset(d, "train", image_size=(24, 32), batch_size=4, training=True, augment="flip,rrc")
    assert seen == [False, True, False, True]
    np.testing.assert_array_equal(np.concatenate(general), np.concatenate(direct))


def test_mixed_formats_keep_the_general_path(tmp_path, monkeypatch):
    d = with_summaries(dataset(tmp_path / "d", {"train": [[record(0), record(1, fmt="png")]]}))
    seen = spy_direct(monkeypatch)
    assert sum(len(b) for b in collect(pipeline.make_dataset(d, "train", image_size=24, batch_size=4,
                                                             training=False))[0]) == 2
    assert seen == [False]


def test_direct_path_still_skips_and_counts_a_bad_jpeg_and_a_corrupted_shard_is_loud(tmp_path):
    good = [record(i) for i in range(5)]
    cut = record(9, planes=[encode_image(random_image(9), "jpeg")[:200]])   # JPEG magic, truncated
    d = with_summaries(dataset(tmp_path / "d", {"train": [good[:2] + [cut] + good[2:]]}))
    before = records.decode_failures()
    _, _, ids = collect(pipeline.make_dataset(d, "train", image_size=(24, 32), batch_size=4, training=False,
                                              with_ids=True))
    assert ids == [f"id{i:03d}" for i in range(5)]
    assert records.decode_failures() - before == 1
    flip(os.path.join(d, "train-00000-of-00001.tfrecord"), 16 + len(good[0]) + 12 + 40)   # record 1's payload
    with pytest.raises(tf.errors.DataLossError):
        consume(pipeline.make_dataset(d, "train", image_size=(24, 32), batch_size=4, training=True,
                                      augment="flip,rrc", seed=0))
