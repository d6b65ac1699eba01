"""Corrupted shards, loud and named: the one line for a DataLossError, and reading past one on request.

TensorFlow's DataLossError names a byte offset ("corrupted record at 456336")
but not the file: the pipeline interleaves several. explain_data_error finds
the shard (utils.dataset.tfrecord.reports_corruption_at) and gives the line
train.py and detect.py print; read_shard_past_corruption is the reader of
make_dataset(skip_corrupt_shards=True).
"""
from __future__ import annotations

import os
import sys

import tensorflow as tf

from utils.dataset.manifest import (DatasetError, corrupted_shard_error, corruption_offset, load_manifest,
                                    select_shards)
from utils.dataset.tfrecord import reports_corruption_at
from utils.errors import first_line


def explain_data_error(err: BaseException, data_dir: str) -> DatasetError:
    """A tf.errors.DataLossError from iterating a make_dataset dataset -> the one line that names the shard.

    TensorFlow's text has the byte offset but not the file (the interleave reads
    several); the shard is the one whose records lead to a bad one at that offset
    (utils.dataset.tfrecord.reports_corruption_at reads only record headers).
    Train's epoch loop catches the error and raises this.

    Args:
        err: the DataLossError (its text, e.g. "... corrupted record at 456336 ...").
        data_dir: the dataset folder the pipeline reads.
    Returns:
        a DatasetError: "data/NAME/train-00003-of-00008.tfrecord is corrupted near byte
        456336: run 'generate_dataset.py verify data/NAME', then rebuild or restore that shard".
    """
    offset = corruption_offset(str(err))
    try:
        manifest = load_manifest(data_dir)
        shards = [s for sp in manifest.get("splits", {}) for s in select_shards(manifest, data_dir, sp)]
    except DatasetError as e:
        return e
    if offset is not None:
        for s in shards:
            if os.path.isfile(s["path"]) and reports_corruption_at(s["path"], offset):
                return corrupted_shard_error(s["path"], data_dir, offset)
    return DatasetError(f"a shard of {data_dir} is corrupted ({first_line(_tf_message(err), 120)}): run "
                        f"'generate_dataset.py verify {os.path.normpath(data_dir)}', then rebuild or restore it")


def _tf_message(err: BaseException) -> str:
    """TensorFlow's error text without its '{{function_node ...}}' prefix and '[Op:...]' suffix."""
    text = str(getattr(err, "message", None) or err)
    text = text.split("}}", 1)[-1] if text.startswith("{{") else text
    return text.split(" [Op:", 1)[0].strip()


def read_shard_past_corruption(path, count, lost, buffer_size: int = 1 << 20):
    """One shard's records; a corrupted one ends where it breaks and the loss is printed and counted.

    ignore_errors() here sees only this shard's reader, whose DataLossError
    ends the shard (TF moves on to the next file); a sentinel after the last
    record compares how many came with the manifest's count, so the loss is
    never silent. The byte offset is TF's error text, which ignore_errors drops.

    Args:
        path: the shard (a string tensor: interleave's element).
        count: its records per the manifest (int64 tensor).
        lost: an int64 variable that gets the records lost.
        buffer_size: bytes per read of the shard (utils.input.records.READ_BUFFER_BYTES).
    Returns:
        the shard's serialized records, up to the corruption.
    """
    records = tf.data.TFRecordDataset(path, buffer_size=buffer_size).ignore_errors()
    marked = records.map(lambda r: (r, False)).concatenate(
        tf.data.Dataset.from_tensors((tf.constant(b""), True)))

    def step(n, x):
        record, end = x
        n_lost = count - n

        def report():
            with tf.control_dependencies([lost.assign_add(n_lost)]):
                line = tf.strings.join(["warning: ", path, " is corrupted: skipped its last ",
                                        tf.strings.as_string(n_lost), " of ", tf.strings.as_string(count),
                                        " records (--skip-corrupt-shards)"])
                return tf.print(line, output_stream=sys.stderr)

        done = tf.cond(tf.logical_and(end, n_lost > 0), report, tf.no_op)
        with tf.control_dependencies([done]):
            return n + 1, (tf.identity(record), end)

    return marked.scan(tf.constant(0, tf.int64), step).filter(lambda r, end: tf.logical_not(end)).map(
        lambda r, end: r)
