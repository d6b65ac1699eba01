"""The TFRecord keys as DESIGN.md documents them, written out literally (not taken
from utils.dataset.schema): what another tool, knowing only the documentation, would use."""


def documented_spec():
    import tensorflow as tf

    return {
        "image/encoded": tf.io.VarLenFeature(tf.string),
        "image/format": tf.io.FixedLenFeature([], tf.string),
        "image/height": tf.io.FixedLenFeature([], tf.int64),
        "image/width": tf.io.FixedLenFeature([], tf.int64),
        "image/channels": tf.io.FixedLenFeature([], tf.int64),
        "image/class/label": tf.io.VarLenFeature(tf.int64),
        "image/source_id": tf.io.FixedLenFeature([], tf.string),
    }
