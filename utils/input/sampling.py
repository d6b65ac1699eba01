"""Hard-example sampling: draw some records (by source id) more often than the rest.

The Cdiscount write-up's open TODO: after a first model, fine-tune with the
records it got most wrong drawn more often. Nothing is duplicated on disk: the
one record stream of utils/input/pipeline.make_dataset (shuffled, repeated,
still serialized) is split by a source-id filter into two streams, the hard
records and the rest, and `tf.data.Dataset.sample_from_datasets` draws from them
with fixed probabilities (`mixer`, passed to make_dataset as `records_fn`).

With n_hard hard records drawn `weight` times as often as each of the n_rest
others, a drawn record is hard with probability
    p = weight * n_hard / (weight * n_hard + n_rest)        (`hard_probability`).
Both streams read the same shards (each keeps its share): reading is cheap next
to decoding, and decoding still happens once per drawn record, after the mix.

TensorFlow is imported inside the functions: detect's numpy-only evaluation
imports LOSSES_COLUMNS from here.
"""
from __future__ import annotations

from utils.dataset import schema

# detect.py --evaluate writes PREFIX.eval/losses.csv with these columns, train.py
# --hard-examples reads it: one row per predicted record, labels as class names
# separated by spaces, the loss of utils/detect/report.sample_losses.
LOSSES_COLUMNS = ["source_id", "labels", "loss", "predicted"]


def hard_probability(n_hard: int, n_rest: int, weight: float) -> float:
    """The chance that a drawn record is hard when each hard one is `weight` times as likely.

    Args:
        n_hard, n_rest: records in the hard subset and in the rest (> 0 each).
        weight: how many times as often a hard record is drawn as another.

    Returns:
        p in (0, 1).
    """
    return weight * n_hard / (weight * n_hard + n_rest)


def _source_id(serialized):
    """serialized Example -> its image/source_id, parsing nothing else."""
    import tensorflow as tf

    spec = {schema.SOURCE_ID: schema.feature_spec()[schema.SOURCE_ID]}
    return tf.io.parse_single_example(serialized, spec)[schema.SOURCE_ID]


def mixer(hard_ids, p_hard: float, seed: int | None = None):
    """A `records_fn` for make_dataset: serialized records -> hard and other records mixed at p_hard.

    Args:
        hard_ids: the source ids (str) of the hard records.
        p_hard: the share of drawn records that come from the hard subset.
        seed: None draws differently every run; an int repeats the draws.

    Returns:
        records (a tf.data.Dataset of serialized Examples) -> the mixed dataset. The
        input must repeat (training does) or contain both kinds of record: a
        stream with none of one kind would be filtered forever.
    """
    import tensorflow as tf

    hard_ids = sorted({str(i) for i in hard_ids})

    def mix(records):
        # the table is built inside the function that tf.data traces, so it belongs to this dataset's graph
        table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(hard_ids, tf.string),
                                                tf.ones(len(hard_ids), tf.int32)), default_value=0)

        def is_hard(r):
            return table.lookup(_source_id(r)) > 0

        hard = records.filter(is_hard)
        rest = records.filter(lambda r: tf.logical_not(is_hard(r)))
        return tf.data.Dataset.sample_from_datasets([hard, rest], weights=[p_hard, 1.0 - p_hard], seed=seed)

    return mix


def source_ids(files: list[str]) -> list[str]:
    """The source id of every record of these shards, in order (parses only that key)."""
    import tensorflow as tf

    ds = tf.data.TFRecordDataset(files).map(_source_id, num_parallel_calls=tf.data.AUTOTUNE).batch(4096)
    return [b.decode("utf-8", "replace") for batch in ds.as_numpy_iterator() for b in batch]
