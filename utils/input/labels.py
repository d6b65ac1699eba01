"""The label layouts the pipeline yields, one per model head kind.

softmax: one-hot [B, K]; sigmoid: multi-hot [B, K]; per-class: {output name: [B, 1]}.
Dense everywhere, so MixUp/CutMix and label smoothing work the same for every head:
a per-class dict is joined to [B, K] for mixing and split again afterwards.

HEADS is read by train.py's flag table and model/heads.py; this module imports
TensorFlow inside the functions that need it, so `train.py --help` stays fast.
"""
from __future__ import annotations

HEADS = ("softmax", "sigmoid", "per-class")


def dense_labels(label_ids, num_classes: int, head: str):
    """One record's int64 [n] class ids -> float32 [K]: one-hot (softmax, first id) or multi-hot.

    Empty ids (unlabeled test split) -> zeros. Ids outside [0, K) are ignored.
    """
    import tensorflow as tf  # lazy: see the module docstring

    ids = label_ids[:1] if head == "softmax" else label_ids
    hot = tf.one_hot(tf.cast(ids, tf.int32), num_classes, dtype=tf.float32)
    out = tf.minimum(tf.reduce_sum(hot, axis=0), 1.0)  # sum over an empty axis = zeros
    out.set_shape([num_classes])
    return out


def split_labels(labels, output_names: list[str]) -> dict:
    """[B, K] -> {name_i: [B, 1]} for the per-class head (after MixUp, which mixes [B, K])."""
    return {name: labels[:, i : i + 1] for i, name in enumerate(output_names)}


def join_labels(labels):
    """Labels of any head -> (float32 [B, K], output names or None); split_labels undoes it.

    Args:
        labels: dense [B, K], or a per-class dict {name: [B, 1]} (its key order is kept).
    """
    if not isinstance(labels, dict):
        return labels, None
    import tensorflow as tf  # lazy: see the module docstring

    names = list(labels)
    return tf.concat([tf.cast(labels[n], tf.float32) for n in names], axis=-1), names
