"""utils/pipeline.py on tiny datasets written here (schema.serialize + TFRecordWriter),
independent of the writer: formats, channels, corrupt records, labels per head,
folds, ids, eval == eval_image, augmentation at train only, input_context sharding."""
import hashlib
import io
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from utils.input import pipeline
from utils.dataset import schema
from utils.errors import UsageError
from utils.dataset.manifest import DatasetError

K = 4


def encode(arr: np.ndarray, fmt: str = "jpeg", mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format={"jpeg": "JPEG", "png": "PNG"}[fmt])
    return buf.getvalue()


def image(seed: int, h=40, w=48, c=3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, c), dtype=np.uint8)
    big = np.kron(base, np.ones((8, 8, 1), dtype=np.uint8))[:h, :w]  # blocky: survives JPEG
    return big if c > 1 else big[..., 0]


def record(i: int, labels=None, planes=None, fmt="jpeg", channels=3, h=40, w=48) -> bytes:
    if planes is None:
        planes = [encode(image(i, h, w), fmt)]
    if labels is None:
        labels = [i % K]
    return schema.serialize(planes, fmt, h, w, channels, labels, f"id{i:03d}")


def write_dataset(root, splits: dict, *, num_classes=K, multi_label=False, planes=1,
                  channels=3, folds=0) -> str:
    """splits: {split: [shard, ...]}, a shard = (list of serialized records, fold or None)."""
    root = str(root)
    os.makedirs(root, exist_ok=True)
    man = {"schema_version": 1, "name": "t", "num_classes": num_classes, "multi_label": multi_label,
           "planes": planes, "channels": channels, "folds": folds, "splits": {}}
    for split, shards in splits.items():
        entries = []
        for i, (records, fold) in enumerate(shards):
            name = f"{split}-{i:05d}-of-{len(shards):05d}.tfrecord"
            path = os.path.join(root, name)
            with tf.io.TFRecordWriter(path) as w:
                for r in records:
                    w.write(r)
            data = open(path, "rb").read()
            entries.append({"file": name, "count": len(records), "bytes": len(data),
                            "sha256": hashlib.sha256(data).hexdigest(), "fold": fold})
        man["splits"][split] = {"count": sum(e["count"] for e in entries), "shards": entries,
                                "class_counts": [0] * num_classes}
    json.dump(man, open(os.path.join(root, "manifest.json"), "w"))
    json.dump([f"class{i}" for i in range(num_classes)], open(os.path.join(root, "labels.json"), "w"))
    return root


def collect(ds):
    imgs, labels, ids = [], [], []
    for batch in ds:
        imgs.append(batch[0].numpy())
        labels.append(batch[1] if isinstance(batch[1], dict) else batch[1].numpy())
        if len(batch) == 3:
            ids.extend(x.decode() for x in batch[2].numpy())
    return imgs, labels, ids


def simple(tmp_path, n=10, shards=2, **kw):
    recs = [record(i) for i in range(n)]
    per = -(-n // shards)
    return write_dataset(tmp_path / "d", {"train": [(recs[i:i + per], None) for i in range(0, n, per)],
                                          "val": [(recs[:4], None)]}, **kw)


def test_eval_yields_exactly_eval_image_in_manifest_order(tmp_path):
    d = simple(tmp_path)
    ds = pipeline.make_dataset(d, "train", image_size=(32, 24), batch_size=3, training=False, with_ids=True)
    imgs, labels, ids = collect(ds)
    x = np.concatenate(imgs)
    assert x.shape == (10, 32, 24, 3) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 255.0
    # deterministic interleave of two shards: 0,5,1,6,...
    assert ids == [f"id{i:03d}" for i in (0, 5, 1, 6, 2, 7, 3, 8, 4, 9)]
    for k, sid in enumerate(ids):
        planes = tf.constant([encode(image(int(sid[2:])), "jpeg")])
        np.testing.assert_array_equal(x[k], pipeline.eval_image(planes, (32, 24)).numpy())


def test_formats_gray_rgba_16bit_png(tmp_path):
    rgb = image(1)
    gray = image(2, c=1)
    rgba = np.concatenate([image(3), np.full((40, 48, 1), 7, np.uint8)], axis=-1)
    g16 = (image(4, c=1).astype(np.uint16) * 257)
    buf = io.BytesIO()
    Image.fromarray(g16).save(buf, format="PNG")  # mode I;16
    recs = [
        schema.serialize([encode(rgb, "png")], "png", 40, 48, 3, [0], "rgbpng"),
        schema.serialize([encode(gray, "jpeg")], "jpeg", 40, 48, 1, [1], "grayjpg"),
        schema.serialize([encode(rgba, "png", "RGBA")], "png", 40, 48, 4, [2], "rgba"),
        schema.serialize([buf.getvalue()], "png", 40, 48, 1, [3], "g16"),
    ]
    d = write_dataset(tmp_path / "d", {"val": [(recs, None)]})
    imgs, _, ids = collect(pipeline.make_dataset(d, "val", image_size=(40, 48), batch_size=4,
                                                 training=False, with_ids=True))
    x = dict(zip(ids, imgs[0]))
    np.testing.assert_allclose(x["rgbpng"], rgb, atol=1.0)  # same size: resize is ~identity
    assert np.abs(x["grayjpg"][..., 0] - x["grayjpg"][..., 2]).max() == 0  # gray replicated to 3
    np.testing.assert_allclose(x["rgba"], rgba[..., :3], atol=1.0)  # alpha dropped
    np.testing.assert_allclose(x["g16"][..., 0], image(4, c=1), atol=1.0)  # 16-bit scaled to 8


def test_six_plane_records_stack_to_six_channels(tmp_path):
    recs = []
    for i in range(3):
        planes = [encode(np.full((16, 16), 10 * p + i, np.uint8), "png") for p in range(6)]
        recs.append(schema.serialize(planes, "png", 16, 16, 1, [i], f"s{i}"))
    d = write_dataset(tmp_path / "d", {"train": [(recs, None)]}, planes=6, channels=6)
    assert pipeline.dataset_info(d)["channels"] == 6
    imgs, _, _ = collect(pipeline.make_dataset(d, "train", image_size=(8, 8), batch_size=3, training=False))
    x = imgs[0]
    assert x.shape == (3, 8, 8, 6)
    np.testing.assert_allclose(x[1, 0, 0], [10 * p + 1 for p in range(6)], atol=1e-3)
    # training with rrc/flip/rotate works on 6 channels too; colour ops refuse
    ds = pipeline.make_dataset(d, "train", image_size=(8, 8), batch_size=3, training=True,
                               augment=["rrc", "flip", "rotate"], seed=1)
    assert next(iter(ds))[0].shape == (3, 8, 8, 6)
    with pytest.raises(UsageError, match="3-channel"):
        pipeline.make_dataset(d, "train", image_size=(8, 8), batch_size=3, training=True, augment=["color"])


def test_corrupt_record_in_the_middle_is_skipped_and_counted(tmp_path):
    recs = [record(i) for i in range(9)]
    bad_image = schema.serialize([b"\xff\xd8\xffnot really a jpeg"], "jpeg", 40, 48, 3, [0], "bad")
    not_an_example = b"\x00garbage that is no tf.train.Example"
    recs = recs[:4] + [bad_image] + recs[4:7] + [not_an_example] + recs[7:]
    d = write_dataset(tmp_path / "d", {"train": [(recs, None)]})
    pipeline.reset_decode_failures()
    for training in (False, True):
        ds = pipeline.make_dataset(d, "train", image_size=(16, 16), batch_size=4, training=training,
                                   with_ids=True, seed=0)
        _, _, ids = collect(ds)
        assert sorted(ids) == [f"id{i:03d}" for i in range(9)]
    assert pipeline.decode_failures() == 4  # two bad records, two epochs
    pipeline.reset_decode_failures()
    assert pipeline.decode_failures() == 0


def test_labels_per_head(tmp_path):
    recs = [record(0, labels=[2]), record(1, labels=[0, 3]), record(2, labels=[])]
    d = write_dataset(tmp_path / "d", {"train": [(recs, None)]}, multi_label=True)
    kw = dict(image_size=(8, 8), batch_size=3, training=False)
    y = next(iter(pipeline.make_dataset(d, "train", head="softmax", **kw)))[1].numpy()
    np.testing.assert_array_equal(y, [[0, 0, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    assert y.dtype == np.float32
    y = next(iter(pipeline.make_dataset(d, "train", head="sigmoid", **kw)))[1].numpy()
    np.testing.assert_array_equal(y, [[0, 0, 1, 0], [1, 0, 0, 1], [0, 0, 0, 0]])
    names = ["a", "b", "c", "d"]
    y = next(iter(pipeline.make_dataset(d, "train", head="per-class", output_names=names, **kw)))[1]
    assert list(y) == names
    assert y["d"].shape == (3, 1)
    np.testing.assert_array_equal(np.concatenate([y[n].numpy() for n in names], 1),
                                  [[0, 0, 1, 0], [1, 0, 0, 1], [0, 0, 0, 0]])
    with pytest.raises(UsageError, match="2 output names for 4"):
        pipeline.make_dataset(d, "train", head="per-class", output_names=["a", "b"], **kw)
    with pytest.raises(UsageError, match="unknown head"):
        pipeline.make_dataset(d, "train", head="softmaxx", **kw)


def test_mixup_on_per_class_labels_mixes_before_split(tmp_path):
    recs = [record(i, labels=[i % K]) for i in range(8)]
    d = write_dataset(tmp_path / "d", {"train": [(recs, None)]}, multi_label=True)
    names = ["a", "b", "c", "d"]
    ds = pipeline.make_dataset(d, "train", image_size=(8, 8), batch_size=8, training=True,
                               head="per-class", output_names=names, augment={"mixup": {"alpha": 1.0}}, seed=3)
    y = next(iter(ds))[1]
    dense = np.concatenate([y[n].numpy() for n in names], 1)
    np.testing.assert_allclose(dense.sum(1), 1.0, atol=1e-5)  # still a distribution
    assert ((dense > 0.01) & (dense < 0.99)).any()  # and actually mixed


def test_folds_select_the_right_shards(tmp_path):
    shards = [([record(10 * f + i) for i in range(3)], f) for f in range(3)]
    d = write_dataset(tmp_path / "d", {"train": shards}, folds=3)
    kw = dict(image_size=(8, 8), batch_size=4, training=False, with_ids=True)
    _, _, val = collect(pipeline.make_dataset(d, "val", fold=1, **kw))
    _, _, train = collect(pipeline.make_dataset(d, "train", fold=1, **kw))
    assert sorted(val) == ["id010", "id011", "id012"]
    assert sorted(train) == sorted(f"id{x:03d}" for x in (0, 1, 2, 20, 21, 22))
    with pytest.raises(DatasetError, match="fold 5 does not exist"):
        pipeline.make_dataset(d, "val", fold=5, **kw)
    info = pipeline.dataset_info(d)
    assert info["folds"] == 3 and info["counts"] == {"train": 9} and info["class_names"][1] == "class1"


def test_bad_split_and_missing_dataset(tmp_path):
    d = simple(tmp_path)
    with pytest.raises(DatasetError, match="'test'.*empty or absent"):
        pipeline.make_dataset(d, "test", image_size=8, batch_size=2, training=False)
    with pytest.raises(DatasetError, match="no dataset folder"):
        pipeline.make_dataset(str(tmp_path / "nope"), "train", image_size=8, batch_size=2, training=False)


def test_training_shuffles_augments_and_repeats(tmp_path):
    d = simple(tmp_path, n=12, shards=3)
    ev = pipeline.make_dataset(d, "train", image_size=(16, 16), batch_size=12, training=False,
                               augment=["flip", "color"], with_ids=True)  # augment ignored at eval
    x_eval, _, ids_eval = collect(ev)
    ref = {i: x for i, x in zip(ids_eval, x_eval[0])}
    for k, sid in enumerate(ids_eval):
        planes = tf.constant([encode(image(int(sid[2:])), "jpeg")])
        np.testing.assert_array_equal(x_eval[0][k], pipeline.eval_image(planes, (16, 16)).numpy())
    tr = pipeline.make_dataset(d, "train", image_size=(16, 16), batch_size=12, training=True,
                               augment=["flip", "color"], seed=0, with_ids=True)
    x_tr, _, ids_tr = collect(tr)
    assert sorted(ids_tr) == sorted(ids_eval) and ids_tr != ids_eval  # shuffled, complete
    assert any(not np.array_equal(ref[i], x) for i, x in zip(ids_tr, x_tr[0]))  # augmented
    rep = pipeline.make_dataset(d, "train", image_size=(16, 16), batch_size=5, training=True,
                                repeat=True, drop_remainder=True, augment=["rrc"], seed=0)
    batches = list(rep.take(7))  # 35 > 12 records: repeat crosses epochs
    assert all(b[0].shape == (5, 16, 16, 3) for b in batches)


class Ctx:
    def __init__(self, n, i):
        self.num_input_pipelines, self.input_pipeline_id = n, i


def test_input_context_shards_by_file_then_by_data(tmp_path):
    d = simple(tmp_path, n=12, shards=3)  # 3 files of 4
    kw = dict(image_size=(8, 8), batch_size=4, training=False, with_ids=True)
    parts = [collect(pipeline.make_dataset(d, "train", input_context=Ctx(3, i), **kw))[2] for i in range(3)]
    assert sorted(sum(parts, [])) == [f"id{i:03d}" for i in range(12)]
    assert all(len(p) == 4 for p in parts)
    assert {int(x[2:]) // 4 for x in parts[1]} == {1}  # one whole file each: sharded by file
    parts = [collect(pipeline.make_dataset(d, "train", input_context=Ctx(5, i), **kw))[2] for i in range(5)]
    assert sorted(sum(parts, [])) == [f"id{i:03d}" for i in range(12)]  # 5 workers > 3 files: by data
    assert [len(p) for p in parts] == [3, 3, 2, 2, 2]
    # training with a seed: workers still partition the data exactly
    parts = [collect(pipeline.make_dataset(d, "train", input_context=Ctx(5, i), training=True, seed=4,
                                           image_size=8, batch_size=4, with_ids=True))[2] for i in range(5)]
    assert sorted(sum(parts, [])) == [f"id{i:03d}" for i in range(12)]
    ds = pipeline.make_dataset(d, "train", input_context=Ctx(3, 0), **kw)
    assert ds.options().experimental_distribute.auto_shard_policy == tf.data.experimental.AutoShardPolicy.OFF


def test_cache_keeps_results_and_unlabeled_test_split(tmp_path):
    recs = [record(i, labels=[]) for i in range(5)]
    d = write_dataset(tmp_path / "d", {"test": [(recs, None)]})
    ds = pipeline.make_dataset(d, "test", image_size=(8, 8), batch_size=2, training=False, cache=True, with_ids=True)
    a, la, ia = collect(ds)
    b, _, ib = collect(ds)
    assert ia == ib == [f"id{i:03d}" for i in range(5)]
    np.testing.assert_array_equal(np.concatenate(a), np.concatenate(b))
    assert np.concatenate(la).sum() == 0 and np.concatenate(la).shape == (5, K)


def test_rrc_jpeg_fast_path_matches_generic_crop_shape():
    planes = tf.constant([encode(image(7, 64, 80), "jpeg")])
    out = pipeline.train_crop_image(planes, (24, 24), 3, 1, seed=5)
    assert out.shape == (24, 24, 3) and out.dtype == tf.float32
    full = pipeline.train_crop_image(planes, (64, 80), 3, 1, scale=(1.0, 1.0), ratio=(1.25, 1.25))
    np.testing.assert_allclose(full.numpy(), pipeline.eval_image(planes, (64, 80)).numpy(), atol=1e-3)


def test_failure_counters_are_never_mirrored_by_a_strategy():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        v = pipeline._local_variable("probe")
    assert not isinstance(v, tf.distribute.DistributedValues)
    assert type(v).__name__ == "ResourceVariable"


def test_large_jpeg_decodes_at_reduced_scale_close_to_full_decode():
    small = np.random.default_rng(11).integers(0, 256, (10, 8, 3), dtype=np.uint8)
    big = np.asarray(Image.fromarray(small).resize((256, 320), Image.BICUBIC))  # photo-like: smooth
    planes = tf.constant([encode(big, "jpeg")])
    # 320x256 -> 40x32 is 8x on both sides: libjpeg decodes at 1/8 scale
    dec = pipeline.decode_one(planes[0], (40, 32))
    assert tuple(dec.shape) == (40, 32, 3)
    assert tuple(pipeline.decode_one(planes[0], (100, 32)).shape) == (160, 128, 3)  # 3.2x: ratio 2
    assert tuple(pipeline.decode_one(planes[0]).shape) == (320, 256, 3)  # no size: full
    fast = pipeline.eval_image(planes, (40, 32)).numpy()
    full = pipeline.resize_image(pipeline.decode_one(planes[0]), (40, 32)).numpy()
    assert np.abs(fast - full).mean() < 4.0  # both are proper area-like downsamples
    # PNG has no reduced-scale decode: full size, then area resize
    png = tf.constant([encode(big, "png")])
    np.testing.assert_allclose(pipeline.eval_image(png, (40, 32)).numpy(),
                               tf.image.resize(big, (40, 32), method="area").numpy(), atol=1e-3)


def test_resize_shrinks_2x_by_area_else_bilinear():
    img = tf.constant(np.tile(np.array([0, 255], np.uint8), 8).reshape(1, 16, 1).repeat(4, 0))  # stripes
    small = pipeline.resize_image(img, (2, 8)).numpy()
    np.testing.assert_allclose(small, 127.5, atol=1e-3)  # 2x: area averages the stripes, no aliasing
    mild = pipeline.resize_image(img, (4, 12)).numpy()  # 1.33x: bilinear
    np.testing.assert_allclose(mild, tf.image.resize(img, (4, 12)).numpy(), atol=1e-4)
    up = pipeline.resize_image(tf.constant([[[0], [255]]], tf.uint8), (1, 4)).numpy()[0, :, 0]
    assert up[0] < up[1] < up[2] < up[3]


@pytest.mark.parametrize("size", [(10, 7), (40, 30), (70, 90)])  # area (>= 2x), bilinear, upscale
def test_resize_of_float_input_equals_uint8_input_and_stays_in_range(size):
    img = tf.constant(np.random.default_rng(0).integers(0, 256, (48, 40, 3), dtype=np.uint8))
    out = pipeline.resize_image(img, size).numpy()
    method = "area" if min(48 / size[0], 40 / size[1]) >= 2 else "bilinear"
    np.testing.assert_allclose(out, tf.image.resize(img, size, method=method).numpy(), atol=1e-3)
    assert out.dtype == np.float32 and out.min() >= 0.0 and out.max() <= 255.0


def test_corrupted_shard_fails_loudly_instead_of_losing_its_tail(tmp_path):
    d = write_dataset(tmp_path / "d", {"train": [([record(i) for i in range(6)], None)]})
    path = os.path.join(d, "train-00000-of-00001.tfrecord")
    blob = bytearray(open(path, "rb").read())
    blob[len(blob) // 2] ^= 0xFF  # inside a record's payload: its CRC no longer matches
    open(path, "wb").write(bytes(blob))
    ds = pipeline.make_dataset(d, "train", image_size=8, batch_size=2, training=False)
    with pytest.raises(tf.errors.DataLossError):
        for _ in ds:
            pass
