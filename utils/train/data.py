"""The datasets of a training run: split sizes, the no-validation reasons, the train and
val pipelines distributed over the strategy's replicas (--train-on-val mixing, --resume skip,
--data-service, what --augment-on leaves to the pipeline).

Pure of the model: utils.train.loop builds these before the model, once per phase.
"""
from __future__ import annotations

import tensorflow as tf

from utils.dataset.manifest import class_counts, load_manifest, select_shards, split_count
from utils.errors import DatasetError
from utils.input.pipeline import make_dataset
from utils.input.service import through_service
from utils.train import distribute
from utils.train.augment_step import pipeline_augment, replica_seed
from utils.train.phases import Phase


def split_sizes(cfg: dict, info: dict) -> tuple[int, int, list[int], list[int]]:
    """(train count, val count, train class counts, val class counts) of --data (and --fold).

    Raises:
        DatasetError: the train split is missing or empty.
    """
    manifest = load_manifest(cfg["data"])
    shards = {split: select_shards(manifest, cfg["data"], split, cfg["fold"]) for split in ("train", "val")}
    n_train = split_count(shards["train"])
    if n_train == 0:
        hint = f" for fold {cfg['fold']}" if cfg["fold"] is not None else ""
        raise DatasetError(f"{cfg['data']} has no train records{hint}")
    return (n_train, split_count(shards["val"]), class_counts(shards["train"], info["num_classes"]),
            class_counts(shards["val"], info["num_classes"]))


def without_validation(cfg: dict, n_val: int) -> str | None:
    """Why this run trains without validation (the start of its one-line note), or None when it validates."""
    if cfg["train_on_val"]:
        return f"--train-on-val: training on train + val ({n_val} val records)" if n_val else \
            f"{cfg['data']} has no val records (--train-on-val adds none)"
    if cfg["val_split"] == "none":
        return "--val-split none"
    if n_val == 0:
        return f"{cfg['data']} has no val records" + (f" for fold {cfg['fold']}" if cfg["fold"] is not None else "")
    return None


def mix_splits(a, b, n_a: int, n_b: int):
    """Batches of two repeating datasets interleaved in proportion n_a : n_b (deterministic, no duplicates on disk).

    Step i takes from `b` when floor((i+1) n_b / T) > floor(i n_b / T), T = n_a + n_b:
    over T steps exactly n_b batches come from `b`, spread evenly.
    """
    total = n_a + n_b
    choice = tf.data.Dataset.range(total).map(
        lambda i: tf.cast((i + 1) * n_b // total - i * n_b // total, tf.int64)).repeat()
    return tf.data.Dataset.choose_from_datasets([a, b], choice)


def skip_records(steps_done: int, batch: int, ctx) -> int:
    """Records one input pipeline has given after `steps_done` steps of per-replica `batch`.

    A pipeline feeds num_replicas_in_sync / num_input_pipelines replicas, one batch each per step.
    """
    per_step = 1 if ctx is None else ctx.num_replicas_in_sync // ctx.num_input_pipelines
    return int(steps_done) * int(batch) * max(1, per_step)


def pipeline_seed(seed, ctx):
    """The seed of one training input pipeline: that of the first replica it feeds (augment_step.replica_seed).

    Under MultiWorkerMirroredStrategy each worker's pipeline then shuffles, crops
    and augments its records with its own random stream (the same seed on every
    worker drew the same sequence on all of them), the stream --augment-on device
    gives that replica too; one pipeline (no strategy, MirroredStrategy, worker 0)
    keeps --seed itself, so those runs draw as before.

    Args:
        seed: --seed (None stays None).
        ctx: the pipeline's tf.distribute.InputContext, or None.
    """
    if ctx is None:
        return seed
    per_pipeline = max(1, ctx.num_replicas_in_sync // ctx.num_input_pipelines)
    return replica_seed(seed, ctx.input_pipeline_id * per_pipeline)


def make_datasets(cfg: dict, info: dict, strategy, phase: Phase, out_names: list[str], *, val_repeat: bool,
                  validate: bool, counts: tuple[int, int] | None = None, steps_done: int = 0, records_fn=None):
    """(train, val or None) datasets at the phase's size and batch, distributed over the strategy's replicas.

    The train set repeats (fit runs a fixed number of steps per epoch, so the LR
    schedule knows its length); val is read to its end each epoch, or repeated for
    a fixed --val-steps when distributed (every replica must run the same steps).
    `counts` (train, val records): --train-on-val mixes the val records into training.
    `steps_done`: the train stream starts after that many of the phase's steps (--resume;
    exact for one split: with --train-on-val each split's stream restarts its pass; through
    --data-service the service orders the records, so the stream starts anew: steps stay exact).
    `records_fn`: applied to the serialized train records (--hard-examples).
    """
    common = dict(image_size=(phase.image_size, phase.image_size), head=cfg["head"], output_names=out_names,
                  channels=info["channels"], fold=cfg["fold"])
    batch = phase.batch_size or cfg["batch_size"]

    def train_split(split, b, ctx, skip):
        return make_dataset(cfg["data"], split, batch_size=b, training=True, augment=pipeline_augment(cfg),
                            cache=cfg["cache"], shuffle_buffer=cfg["shuffle_buffer"], repeat=True,
                            drop_remainder=True, input_context=ctx, skip=skip, records_fn=records_fn,
                            seed=pipeline_seed(cfg["seed"], ctx), **common)

    if cfg.get("data_service"):  # each split's stream runs on the workers, one job per input pipeline (its shard)
        local_split = train_split

        def served_split(split, b, ctx, skip):  # the service orders the records: no exact resume skip
            return through_service(local_split(split, b, ctx, None), cfg["data_service"])

        train_split = served_split  # what train() below calls

    def train(b, ctx):
        if counts is None:
            return train_split("train", b, ctx, skip_records(steps_done, b, ctx))
        return mix_splits(train_split("train", b, ctx, None), train_split("val", b, ctx, None), *counts)

    train_ds = distribute.distributed_dataset(strategy, train, batch)
    if not validate:
        return train_ds, None
    val = distribute.distributed_dataset(strategy, lambda b, ctx: make_dataset(
        cfg["data"], "val", batch_size=b, training=False, repeat=val_repeat, input_context=ctx, seed=cfg["seed"],
        **common), batch)
    return train_ds, val
