"""A corrupted or cut shard under the training pipeline: one line naming the file, the offset and the fix.

Train's epoch loop catches TensorFlow's DataLossError (which names only an
offset) and raises utils.input.corruption.explain_data_error's DatasetError; these tests play
that loop's part.
"""
import os

import pytest
import tensorflow as tf

from tests.input.test_pipeline import dataset, record
from utils.dataset.manifest import DatasetError
from utils.dataset.tfrecord import reports_corruption_at
from utils.input import pipeline, records
from utils.input.corruption import explain_data_error

FIX = "then rebuild or restore that shard"


def three_shards(tmp_path):
    """data/NAME, 3 train shards of 4 records -> (folder, the records of each shard)."""
    shards = [[record(10 * s + i) for i in range(4)] for s in range(3)]
    return dataset(tmp_path / "data" / "pets", {"train": shards, "val": [shards[0][:2]]}), shards


def flip(path, offset):
    blob = bytearray(open(path, "rb").read())
    blob[offset] ^= 0xFF
    open(path, "wb").write(bytes(blob))


def consume(ds):
    for _ in ds:
        pass


@pytest.mark.parametrize("where", ["payload", "header"])
def test_data_loss_while_training_names_the_shard_and_offset(tmp_path, where):
    data, shards = three_shards(tmp_path)
    path = os.path.join(data, "train-00001-of-00003.tfrecord")
    start = 16 + len(shards[1][0])                           # record 1 of shard 1
    if where == "payload":
        flip(path, start + 12 + 40)
        offset = start + 12                                  # TF names the payload's start
    else:
        flip(path, start + 2)
        offset = start
    ds = pipeline.make_dataset(data, "train", image_size=8, batch_size=2, training=True, seed=0)
    with pytest.raises(tf.errors.DataLossError) as info:
        consume(ds)
    err = explain_data_error(info.value, data)
    assert isinstance(err, DatasetError)
    assert str(err) == (f"{path} is corrupted near byte {offset}: run 'generate_dataset.py verify {data}', {FIX}")
    # the other shards hold records at that offset too, but none is bad there
    assert [reports_corruption_at(os.path.join(data, f"train-0000{i}-of-00003.tfrecord"), offset)
            for i in range(3)] == [False, True, False]


def test_truncated_tail_is_found_and_an_unknown_error_still_gives_one_line(tmp_path):
    data, shards = three_shards(tmp_path)
    path = os.path.join(data, "train-00002-of-00003.tfrecord")
    start = sum(16 + len(r) for r in shards[2][:3])
    assert reports_corruption_at(path, start) is False
    with open(path, "r+b") as f:                             # the last record cut: TF says "truncated record at"
        f.truncate(start + 30)
    assert reports_corruption_at(path, start)
    err = explain_data_error(tf.errors.DataLossError(None, None, "no offset here"), data)
    assert str(err) == (f"a shard of {data} is corrupted (no offset here): run 'generate_dataset.py verify "
                        f"{data}', then rebuild or restore it")


def test_manifest_that_does_not_match_the_disk_fails_when_the_dataset_opens(tmp_path):
    data, _ = three_shards(tmp_path)
    path = os.path.join(data, "train-00001-of-00003.tfrecord")
    size = os.path.getsize(path)
    with open(path, "ab") as f:
        f.write(b"\0" * 7)
    with pytest.raises(DatasetError) as info:
        pipeline.make_dataset(data, "train", image_size=8, batch_size=2, training=False)
    assert str(info.value) == (f"{path} is {size + 7:,d} bytes, manifest.json says {size:,d}: "
                               f"run 'generate_dataset.py verify {data}', {FIX}")
    os.remove(path)
    with pytest.raises(DatasetError, match=r"train-00001-of-00003.tfrecord is listed in manifest.json but missing: "):
        pipeline.make_dataset(data, "train", image_size=8, batch_size=2, training=False)
    pipeline.make_dataset(data, "val", image_size=8, batch_size=2, training=False)   # other splits still open


def test_skip_corrupt_shards_reads_on_and_counts_the_lost_tail(tmp_path, capfd):
    data, shards = three_shards(tmp_path)
    path = os.path.join(data, "train-00001-of-00003.tfrecord")
    flip(path, 16 + len(shards[1][0]) + 12 + 40)             # record 1 of 4: records 1..3 are lost
    before = records.corrupt_records_lost()
    ds = pipeline.make_dataset(data, "train", image_size=8, batch_size=2, training=False, with_ids=True,
                               skip_corrupt_shards=True)
    ids = [i.decode() for batch in ds for i in batch[2].numpy()]
    assert sorted(ids) == ["id000", "id001", "id002", "id003", "id010", "id020", "id021", "id022", "id023"]
    assert records.corrupt_records_lost() - before == 3
    err = capfd.readouterr().err
    assert f"warning: {path} is corrupted: skipped its last 3 of 4 records (--skip-corrupt-shards)" in err
