"""utils/input/labels.py: one record's ids -> the head's layout, eagerly and inside tf.data."""
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import ROOT
from tests.input.eager_graph import eager_and_in_tf_data
from utils.input import labels


@pytest.mark.parametrize("head,ids,want", [
    ("softmax", [2], [0, 0, 1, 0]),
    ("softmax", [0, 3], [1, 0, 0, 0]),  # one label: the first id
    ("sigmoid", [0, 3], [1, 0, 0, 1]),
    ("sigmoid", [1, 1], [0, 1, 0, 0]),  # a repeated id stays 1
    ("sigmoid", [], [0, 0, 0, 0]),  # unlabeled
    ("softmax", [], [0, 0, 0, 0]),
    ("sigmoid", [2, 7, -1], [0, 0, 1, 0]),  # ids outside [0, K) ignored
])
def test_dense_labels_eager_and_in_tf_data(head, ids, want):
    for out in eager_and_in_tf_data(lambda t: labels.dense_labels(t, 4, head), np.array(ids, np.int64)):
        assert out.dtype == np.float32 and out.shape == (4,)
        np.testing.assert_array_equal(out, want)


def test_split_and_join_are_inverse_and_keep_name_order():
    dense = tf.constant([[0.0, 1.0, 0.0], [0.2, 0.3, 0.5]])
    split = labels.split_labels(dense, ["z", "a", "m"])
    assert list(split) == ["z", "a", "m"] and split["a"].shape == (2, 1)
    np.testing.assert_array_equal(split["m"].numpy(), [[0.0], [0.5]])
    joined, names = labels.join_labels(split)
    assert names == ["z", "a", "m"]
    np.testing.assert_array_equal(joined.numpy(), dense.numpy())
    same, none = labels.join_labels(dense)
    assert same is dense and none is None


def test_heads_are_readable_without_tensorflow():
    # train.py's flag table reads HEADS: --help must not pay for importing TensorFlow
    code = "import sys, utils.input.labels as l; assert l.HEADS; assert 'tensorflow' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
