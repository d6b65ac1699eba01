"""utils/dataset/tfrecord.py: our framing, read back (checksums included) by tf.data."""
import pytest
import tensorflow as tf

from utils.dataset import schema, tfrecord


def test_framed_records_are_read_by_tf_data_and_checksums_hold(tmp_path):
    path = str(tmp_path / "x.tfrecord")
    recs = [schema.serialize([bytes([i]) * (i * 100)], "png", i, i, 3, [i], f"id{i}") for i in range(1, 6)]
    with open(path, "wb") as f:
        for r in recs:
            header, footer = tfrecord.frame_parts(r)
            f.write(header + r + footer)
    assert [r.numpy() for r in tf.data.TFRecordDataset(path)] == recs
    # TensorFlow checks our crc32c: a flipped byte is a DataLossError, not a silent change
    data = bytearray(open(path, "rb").read())
    data[40] ^= 0xFF
    open(path, "wb").write(bytes(data))
    with pytest.raises(tf.errors.DataLossError):
        list(tf.data.TFRecordDataset(path))

