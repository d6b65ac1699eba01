"""utils/input/pipeline.py on tiny datasets written here (schema.serialize + TFRecordWriter),
independent of the writer: formats, channels, corrupt records, labels per head,
folds, ids, eval == eval_image, augmentation at train only, input_context sharding."""
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import encode_image, random_image, write_dataset
from utils.dataset import schema
from utils.dataset.manifest import DatasetError
from utils.errors import UsageError
from utils.input import pipeline, records
from utils.input.image_ops import eval_image

K = 4
CLASSES = [f"class{i}" for i in range(K)]


def record(i: int, labels=None, planes=None, fmt="jpeg", channels=3, h=40, w=48) -> bytes:
    if planes is None:
        planes = [encode_image(random_image(i, h, w), fmt)]
    if labels is None:
        labels = [i % K]
    return schema.serialize(planes, fmt, h, w, channels, labels, f"id{i:03d}")


def record_planes(i: int) -> tf.Tensor:
    """Record i's image/encoded, as the pipeline reads it."""
    return tf.constant([encode_image(random_image(i), "jpeg")])


def dataset(root, splits: dict, **kw) -> str:
    """conftest.write_dataset with this file's K classes (class0 .. class3)."""
    return write_dataset(root, splits, class_names=CLASSES, **kw)


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
    return dataset(tmp_path / "d", {"train": [recs[i:i + per] for i in range(0, n, per)], "val": [recs[:4]]}, **kw)


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
        np.testing.assert_array_equal(x[k], eval_image(record_planes(int(sid[2:])), (32, 24)).numpy())


def test_formats_gray_rgba_16bit_png(tmp_path):
    rgb = random_image(1)
    gray = random_image(2, c=1)
    rgba = np.concatenate([random_image(3), np.full((40, 48, 1), 7, np.uint8)], axis=-1)
    g16 = random_image(4, c=1).astype(np.uint16) * 257  # Pillow mode I;16
    recs = [
        schema.serialize([encode_image(rgb, "png")], "png", 40, 48, 3, [0], "rgbpng"),
        schema.serialize([encode_image(gray, "jpeg")], "jpeg", 40, 48, 1, [1], "grayjpg"),
        schema.serialize([encode_image(rgba, "png")], "png", 40, 48, 4, [2], "rgba"),
        schema.serialize([encode_image(g16, "png")], "png", 40, 48, 1, [3], "g16"),
    ]
    d = dataset(tmp_path / "d", {"val": [recs]})
    imgs, _, ids = collect(pipeline.make_dataset(d, "val", image_size=(40, 48), batch_size=4,
                                                 training=False, with_ids=True))
    x = dict(zip(ids, imgs[0]))
    np.testing.assert_allclose(x["rgbpng"], rgb, atol=1.0)  # same size: resize is ~identity
    assert np.abs(x["grayjpg"][..., 0] - x["grayjpg"][..., 2]).max() == 0  # gray replicated to 3
    np.testing.assert_allclose(x["rgba"], rgba[..., :3], atol=1.0)  # alpha dropped
    np.testing.assert_allclose(x["g16"][..., 0], random_image(4, c=1), atol=1.0)  # 16-bit scaled to 8


def six_plane_dataset(tmp_path) -> str:
    recs = []
    for i in range(3):
        planes = [encode_image(np.full((16, 16), 10 * p + i, np.uint8), "png") for p in range(6)]
        recs.append(schema.serialize(planes, "png", 16, 16, 1, [i], f"s{i}"))
    return dataset(tmp_path / "d", {"train": [recs]}, planes=6, channels=6)


def test_six_plane_records_stack_to_six_channels(tmp_path):
    d = six_plane_dataset(tmp_path)
    assert pipeline.dataset_info(d)["channels"] == 6
    imgs, _, _ = collect(pipeline.make_dataset(d, "train", image_size=(8, 8), batch_size=3, training=False))
    x = imgs[0]
    assert x.shape == (3, 8, 8, 6)
    np.testing.assert_allclose(x[1, 0, 0], [10 * p + 1 for p in range(6)], atol=1e-3)


def test_six_plane_training_crops_flips_rotates_but_refuses_colour(tmp_path):
    d = six_plane_dataset(tmp_path)
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
    # conftest.write_dataset parses every record to count its labels: give it a stand-in
    # for the unparseable one, then write the shard again with the real records
    d = dataset(tmp_path / "d", {"train": [[r if r != not_an_example else record(99) for r in recs]]})
    shard = os.path.join(d, "train-00000-of-00001.tfrecord")
    with tf.io.TFRecordWriter(shard) as w:
        for r in recs:
            w.write(r)
    with open(os.path.join(d, "manifest.json")) as f:   # the size checked when the dataset opens
        man = json.load(f)
    man["splits"]["train"]["shards"][0]["bytes"] = os.path.getsize(shard)
    with open(os.path.join(d, "manifest.json"), "w") as f:
        json.dump(man, f)
    before = records.decode_failures()  # process-wide: other tests' datasets count too
    for training in (False, True):
        ds = pipeline.make_dataset(d, "train", image_size=(16, 16), batch_size=4, training=training,
                                   with_ids=True, seed=0)
        _, _, ids = collect(ds)
        assert sorted(ids) == [f"id{i:03d}" for i in range(9)]
    assert records.decode_failures() - before == 4  # two bad records, two epochs


def test_labels_per_head(tmp_path):
    recs = [record(0, labels=[2]), record(1, labels=[0, 3]), record(2, labels=[])]
    d = dataset(tmp_path / "d", {"train": [recs]}, multi_label=True)
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
    with pytest.raises(UsageError, match=r"per-class head: pass output_names \(model.heads.output_names\)"):
        pipeline.make_dataset(d, "train", head="per-class", **kw)
    with pytest.raises(UsageError, match="unknown head"):
        pipeline.make_dataset(d, "train", head="softmaxx", **kw)


def test_bad_sizes_are_usage_errors(tmp_path):
    d = simple(tmp_path)
    with pytest.raises(UsageError, match="image size must be positive, got 0x8"):
        pipeline.make_dataset(d, "train", image_size=(0, 8), batch_size=2, training=False)
    with pytest.raises(UsageError, match="batch size must be at least 1, got 0"):
        pipeline.make_dataset(d, "train", image_size=8, batch_size=0, training=False)


def test_mixup_on_per_class_labels_mixes_before_split(tmp_path):
    recs = [record(i, labels=[i % K]) for i in range(8)]
    d = dataset(tmp_path / "d", {"train": [recs]}, multi_label=True)
    names = ["a", "b", "c", "d"]
    ds = pipeline.make_dataset(d, "train", image_size=(8, 8), batch_size=8, training=True,
                               head="per-class", output_names=names, augment={"mixup": {"alpha": 1.0}}, seed=3)
    y = next(iter(ds))[1]
    dense = np.concatenate([y[n].numpy() for n in names], 1)
    np.testing.assert_allclose(dense.sum(1), 1.0, atol=1e-5)  # still a distribution
    assert ((dense > 0.01) & (dense < 0.99)).any()  # and actually mixed


def test_folds_select_the_right_shards(tmp_path):
    shards = [([record(10 * f + i) for i in range(3)], f) for f in range(3)]
    d = dataset(tmp_path / "d", {"train": shards}, folds=3)
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
    evaluation = pipeline.make_dataset(d, "train", image_size=(16, 16), batch_size=12, training=False,
                                       augment=["flip", "color"], with_ids=True)  # augment ignored at eval
    x_eval, _, ids_eval = collect(evaluation)
    ref = {i: x for i, x in zip(ids_eval, x_eval[0])}
    for k, sid in enumerate(ids_eval):
        np.testing.assert_array_equal(x_eval[0][k], eval_image(record_planes(int(sid[2:])), (16, 16)).numpy())
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


def shard_ids(d, n, **kw):
    """Source ids each of n input pipelines reads."""
    kw = dict(dict(image_size=(8, 8), batch_size=4, training=False, with_ids=True), **kw)
    return [collect(pipeline.make_dataset(d, "train", input_context=Ctx(n, i), **kw))[2] for i in range(n)]


ALL_12 = [f"id{i:03d}" for i in range(12)]


def test_input_context_shards_by_file_when_files_suffice(tmp_path):
    d = simple(tmp_path, n=12, shards=3)  # 3 files of 4
    parts = shard_ids(d, 3)
    assert sorted(sum(parts, [])) == ALL_12
    assert all(len(p) == 4 for p in parts)
    assert {int(x[2:]) // 4 for x in parts[1]} == {1}  # one whole file each: sharded by file
    ds = pipeline.make_dataset(d, "train", input_context=Ctx(3, 0), image_size=8, batch_size=4, training=False)
    assert ds.options().experimental_distribute.auto_shard_policy == tf.data.experimental.AutoShardPolicy.OFF
    assert ds.options().autotune.enabled is False  # records.pipeline_options: every dataset made here


def test_input_context_shards_by_data_when_files_are_too_few(tmp_path):
    d = simple(tmp_path, n=12, shards=3)
    parts = shard_ids(d, 5)
    assert sorted(sum(parts, [])) == ALL_12  # 5 workers > 3 files: by data
    assert [len(p) for p in parts] == [3, 3, 2, 2, 2]


def test_input_context_by_data_partitions_exactly_when_training_with_a_seed(tmp_path):
    d = simple(tmp_path, n=12, shards=3)
    assert sorted(sum(shard_ids(d, 5, training=True, seed=4, image_size=8), [])) == ALL_12


def test_cache_keeps_results_and_unlabeled_test_split(tmp_path):
    recs = [record(i, labels=[]) for i in range(5)]
    d = dataset(tmp_path / "d", {"test": [recs]})
    ds = pipeline.make_dataset(d, "test", image_size=(8, 8), batch_size=2, training=False, cache=True, with_ids=True)
    a, la, ia = collect(ds)
    b, _, ib = collect(ds)
    assert ia == ib == [f"id{i:03d}" for i in range(5)]
    np.testing.assert_array_equal(np.concatenate(a), np.concatenate(b))
    assert np.concatenate(la).sum() == 0 and np.concatenate(la).shape == (5, K)


def test_failure_counters_are_never_mirrored_by_a_strategy():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        v = records.local_variable("probe")
    assert not isinstance(v, tf.distribute.DistributedValues)
    assert type(v).__name__ == "ResourceVariable"


def test_corrupted_shard_fails_loudly_instead_of_losing_its_tail(tmp_path):
    d = dataset(tmp_path / "d", {"train": [[record(i) for i in range(6)]]})
    path = os.path.join(d, "train-00000-of-00001.tfrecord")
    blob = bytearray(open(path, "rb").read())
    blob[len(blob) // 2] ^= 0xFF  # inside a record's payload: its CRC no longer matches
    open(path, "wb").write(bytes(blob))
    ds = pipeline.make_dataset(d, "train", image_size=8, batch_size=2, training=False)
    with pytest.raises(tf.errors.DataLossError):
        for _ in ds:
            pass


def test_flip_runs_per_image_at_decode_each_image_as_is_or_mirrored(tmp_path):
    d = simple(tmp_path, n=24, shards=1)
    kw = dict(image_size=(32, 24), batch_size=8, training=True, seed=5, with_ids=True)
    plain, _, ids = collect(pipeline.make_dataset(d, "train", **kw))
    flipped, _, fids = collect(pipeline.make_dataset(d, "train", augment="flip", **kw))
    assert fids == ids  # same seeded order: only the pixels differ
    pairs = list(zip(np.concatenate(flipped), np.concatenate(plain)))
    # flipped before the resize: the same image as a flip after it, up to float rounding
    mirrored = [bool(np.allclose(f, p[:, ::-1], atol=0.02)) for f, p in pairs]
    same = [bool(np.allclose(f, p, atol=1e-3)) for f, p in pairs]
    assert all(m or s for m, s in zip(mirrored, same))
    assert 4 <= sum(mirrored) <= 20  # p = 0.5 of 24
