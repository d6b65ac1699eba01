"""utils/dataset/schema.py: the record keys, our TF-free encoder against TensorFlow's parser."""
import numpy as np
import tensorflow as tf

from utils.dataset import schema


def _example():
    return schema.serialize([b"\xff\xd8abc", b"plane2"], "jpeg", 12, 34, 1, [3, 7], "prod-0042")


def test_round_trip_graph_parse():
    parsed = schema.parse(tf.constant(_example()))
    assert parsed[schema.ENCODED].numpy().tolist() == [b"\xff\xd8abc", b"plane2"]
    assert parsed[schema.FORMAT].numpy() == b"jpeg"
    assert int(parsed[schema.HEIGHT]) == 12 and int(parsed[schema.WIDTH]) == 34
    assert int(parsed[schema.CHANNELS]) == 1
    np.testing.assert_array_equal(parsed[schema.LABEL].numpy(), [3, 7])
    assert parsed[schema.SOURCE_ID].numpy() == b"prod-0042"


def test_round_trip_inside_tf_data_and_unlabeled():
    rec = schema.serialize([b"x"], "png", 1, 1, 3, [], "a")
    ds = tf.data.Dataset.from_tensor_slices([rec, _example()]).map(schema.parse)
    out = list(ds.as_numpy_iterator())
    assert out[0][schema.LABEL].tolist() == []
    assert out[1][schema.LABEL].tolist() == [3, 7]


def test_parse_numpy_matches():
    p = schema.parse_numpy(_example())
    assert p[schema.ENCODED] == [b"\xff\xd8abc", b"plane2"]
    assert (p[schema.FORMAT], p[schema.HEIGHT], p[schema.WIDTH], p[schema.CHANNELS]) == ("jpeg", 12, 34, 1)
    assert p[schema.LABEL] == [3, 7] and p[schema.SOURCE_ID] == "prod-0042"


def test_plain_tf_reader_with_documented_keys_only():
    """Another tool, knowing only the documented keys, can read a record."""
    from tests.dataset.documented_keys import documented_spec

    spec = documented_spec()
    ex = tf.io.parse_single_example(_example(), spec)
    assert tf.sparse.to_dense(ex["image/class/label"]).numpy().tolist() == [3, 7]


def test_hand_encoded_example_equals_tensorflow_encoding():
    """Our TF-free encoder produces the same message TensorFlow's protobuf does."""
    ours = tf.train.Example.FromString(_example())
    theirs = tf.train.Example()
    f = theirs.features.feature
    f[schema.ENCODED].bytes_list.value.extend([b"\xff\xd8abc", b"plane2"])
    f[schema.FORMAT].bytes_list.value.append(b"jpeg")
    f[schema.HEIGHT].int64_list.value.append(12)
    f[schema.WIDTH].int64_list.value.append(34)
    f[schema.CHANNELS].int64_list.value.append(1)
    f[schema.LABEL].int64_list.value.extend([3, 7])
    f[schema.SOURCE_ID].bytes_list.value.append(b"prod-0042")
    assert ours == theirs
    # big label ids and an empty label list survive too
    big = tf.train.Example.FromString(schema.serialize([b"x"], "png", 70000, 1, 3, [5269, 300], "z"))
    assert list(big.features.feature[schema.LABEL].int64_list.value) == [5269, 300]
    assert big.features.feature[schema.HEIGHT].int64_list.value[0] == 70000
