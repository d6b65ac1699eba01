"""TFRecord schema, version 1: the ONE place the record keys live.

Keys follow the TF Model Garden / TFDS convention so other tools can read our
shards with plain `tf.io.parse_single_example`. See ../shared/DESIGN.md.

One `tf.train.Example` per sample:
  image/encoded      bytes list  original encoded bytes; several = channel planes in order
  image/format       bytes       'jpeg', 'png', ...
  image/height       int64       after any resize
  image/width        int64
  image/channels     int64       channels of ONE decoded plane (what decode_image gives)
  image/class/label  int64 list  0-based class indices into labels.json; empty = unlabeled
  image/source_id    bytes       original id; a product's photos share it

Writing needs no TensorFlow (importing it costs ~700 MB RSS and 3 s); parsing
uses it and imports it lazily.
"""
from __future__ import annotations

from typing import Sequence

from utils.dataset import tfrecord

SCHEMA_VERSION = 1

ENCODED = "image/encoded"
FORMAT = "image/format"
HEIGHT = "image/height"
WIDTH = "image/width"
CHANNELS = "image/channels"
LABEL = "image/class/label"
SOURCE_ID = "image/source_id"


def feature_spec():
    """The parsing spec: a dict, as in TF Model Garden's tfexample_decoder."""
    import tensorflow as tf

    return {
        ENCODED: tf.io.VarLenFeature(tf.string),
        FORMAT: tf.io.FixedLenFeature([], tf.string, default_value=""),
        HEIGHT: tf.io.FixedLenFeature([], tf.int64, default_value=0),
        WIDTH: tf.io.FixedLenFeature([], tf.int64, default_value=0),
        CHANNELS: tf.io.FixedLenFeature([], tf.int64, default_value=0),
        LABEL: tf.io.VarLenFeature(tf.int64),
        SOURCE_ID: tf.io.FixedLenFeature([], tf.string, default_value=""),
    }


def serialize(
    planes: Sequence[bytes],
    fmt: str,
    height: int,
    width: int,
    channels: int,
    labels: Sequence[int] = (),
    source_id: str | bytes = b"",
) -> bytes:
    """One sample -> serialized tf.train.Example bytes.

    Encoded without TensorFlow (utils/dataset/tfrecord.py) so the writer stays
    light; the bytes parse with tf.io.parse_single_example (tested).

    Args:
        planes: the encoded image bytes, one per channel plane.
        fmt: their format, e.g. "jpeg".
        height, width, channels: of one decoded plane.
        labels: class indices.
        source_id: the sample's original id.

    Raises:
        ValueError: no plane.
    """
    return b"".join(serialize_chunks(planes, fmt, height, width, channels, labels, source_id))


def serialize_chunks(
    planes: Sequence[bytes],
    fmt: str,
    height: int,
    width: int,
    channels: int,
    labels: Sequence[int] = (),
    source_id: str | bytes = b"",
) -> list[bytes]:
    """serialize(), as chunks whose join is its bytes: the planes are not copied.

    The shard writer checksums, hashes and writes the chunks as they are
    (utils.dataset.tfrecord.encode_example_chunks). Same arguments and errors
    as serialize.
    """
    if not planes:
        raise ValueError("a record needs at least one encoded plane")
    if isinstance(source_id, str):
        source_id = source_id.encode("utf-8")
    return tfrecord.encode_example_chunks({
        ENCODED: tfrecord.bytes_feature(planes),
        FORMAT: tfrecord.bytes_feature([fmt.encode("ascii")]),
        HEIGHT: tfrecord.int64_feature([height]),
        WIDTH: tfrecord.int64_feature([width]),
        CHANNELS: tfrecord.int64_feature([channels]),
        LABEL: tfrecord.int64_feature(labels),
        SOURCE_ID: tfrecord.bytes_feature([source_id]),
    })


def parse(serialized):
    """Serialized Example (scalar string tensor) -> dict of dense tensors.

    Works eagerly and inside `tf.data` (graph mode). `image/encoded` becomes a
    1-D string tensor of planes; `image/class/label` a 1-D int64 tensor.
    """
    import tensorflow as tf

    ex = tf.io.parse_single_example(serialized, feature_spec())
    ex[ENCODED] = tf.sparse.to_dense(ex[ENCODED], default_value=b"")
    ex[LABEL] = tf.sparse.to_dense(ex[LABEL], default_value=0)
    return ex


def parse_numpy(serialized: bytes) -> dict:
    """Serialized Example -> plain Python values (for verify and tests; no graph)."""
    import tensorflow as tf

    ex = tf.train.Example.FromString(serialized)
    f = ex.features.feature

    def ints(key):
        return list(f[key].int64_list.value) if key in f else []

    def first_bytes(key):
        v = f[key].bytes_list.value if key in f else []
        return v[0] if v else b""

    return {
        ENCODED: list(f[ENCODED].bytes_list.value) if ENCODED in f else [],
        FORMAT: first_bytes(FORMAT).decode("ascii"),
        HEIGHT: (ints(HEIGHT) or [0])[0],
        WIDTH: (ints(WIDTH) or [0])[0],
        CHANNELS: (ints(CHANNELS) or [0])[0],
        LABEL: ints(LABEL),
        SOURCE_ID: first_bytes(SOURCE_ID).decode("utf-8", "replace"),
    }
