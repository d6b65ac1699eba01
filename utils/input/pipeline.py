"""tf.data input pipeline: shards -> interleave -> parse -> decode/crop/resize -> batch -> augment -> prefetch.

This module only assembles the dataset: the pixel ops are utils/input/image_ops
(the pixel contract), the label layouts utils/input/labels, the batch
augmentation utils/input/augment.

Order of `make_dataset` and why (as in big_vision's input_pipeline):
  files (shuffled per epoch when training) -> [shard by file] -> interleave
  -> [shard by data] -> cache -> shuffle -> repeat -> parse+decode+resize
  -> skip failures -> batch -> augment -> labels to the head's format -> prefetch
- Records stay ENCODED through cache and shuffle: a shuffle buffer of 2048
  JPEG strings is a few tens of MB, of decoded images several GB; and the cache
  then holds what the disk held, not 30x more.
- shuffle BEFORE repeat keeps epoch boundaries: every record is seen once per
  epoch before any record is seen twice (repeat -> shuffle would blur them).
- repeat BEFORE the decode map so the parallel map's workers keep running
  across the epoch boundary instead of draining and restarting the pipeline.
- batch BEFORE augment: the batch ops run as one XLA-compiled pass per batch
  (augment.build_augmenter) and MixUp/CutMix need partners from the same
  batch. The random resized crop and the flip are the exceptions: they run per
  image inside the decode, the crop on the full-resolution image
  (image_ops.train_crop_image), the flip where only flipped images pay a copy.
- prefetch LAST so the whole pipeline runs ahead of the training step.
- train.py's stream (`skip=`, `_resumable_stream`) replaces shuffle -> repeat by
  passes over the data each shuffled with its own seed, so its position is one
  integer and a resumed run continues mid-epoch without repeating a record.

Decode failures: a record whose image cannot be decoded (or whose Example
cannot be parsed) makes the decode step raise; an `ignore_errors()` that sees
only that step drops the element and the epoch goes on. It does not see the
shard reader: a corrupted shard must fail loudly, not lose its tail silently
(see `_decode_skipping_failures`). tf.data has no hook that reports what
ignore_errors dropped, so the decode step counts records entering (`seen`,
before parsing) and records decoded (`ok`, after the image exists) in two int64
variables; `decode_failures()` = seen - ok. Exact once an epoch has been fully
consumed; mid-epoch it may include records still being decoded. Process-wide
(every dataset made here) and cumulative across epochs: a caller that wants the
count of one run takes the difference before and after it.
"""
from __future__ import annotations

import functools
import os

import tensorflow as tf

from utils.dataset import schema
from utils.dataset.manifest import (DatasetError, check_shards_on_disk, load_labels, load_manifest, select_shards,
                                    split_count)
from utils.errors import UsageError
from utils.input import augment as aug
from utils.input.corruption import read_shard_past_corruption
from utils.input.image_ops import as_hw, eval_image, random_flip, train_crop_image
from utils.input.labels import HEADS, dense_labels, split_labels

AUTOTUNE = tf.data.AUTOTUNE


# --------------------------------------------------------------- decode-failure counter

_COUNTERS: dict | None = None


def _local_variable(name: str) -> tf.Variable:
    """An int64 variable on this host's CPU that no tf.distribute strategy mirrors.

    make_dataset may first run inside strategy.scope() or a
    distribute_datasets_from_function call; tf.Variable there would become a
    MirroredVariable (under MultiWorkerMirroredStrategy even a cross-worker
    broadcast). ResourceVariable's own constructor bypasses the strategy's
    variable creator.
    """
    with tf.init_scope(), tf.device("/cpu:0"):
        try:
            # private TF API (tensorflow.python.ops, TF 2.21): should a release move it,
            # the fallback below is mirrored under a strategy and
            # test_failure_counters_are_never_mirrored_by_a_strategy says so
            from tensorflow.python.ops.resource_variable_ops import ResourceVariable

            return ResourceVariable(0, dtype=tf.int64, trainable=False, name=name)
        except ImportError:  # pragma: no cover
            return tf.Variable(0, dtype=tf.int64, trainable=False, name=name)


def _counters() -> dict:
    """Two process-wide counters, created on first use (never at import:
    MultiWorkerMirroredStrategy must be created before the TF runtime starts)."""
    global _COUNTERS
    if _COUNTERS is None:
        _COUNTERS = {"seen": _local_variable("pipeline_records_seen"),
                     "ok": _local_variable("pipeline_records_decoded"),
                     "lost": _local_variable("pipeline_records_lost_to_corruption")}
    return _COUNTERS


def decode_failures() -> int:
    """Records skipped because they failed to parse or decode (all datasets, all epochs)."""
    if _COUNTERS is None:
        return 0
    return int(_COUNTERS["seen"].numpy() - _COUNTERS["ok"].numpy())


# --------------------------------------------------------------- what the dataset holds

def _image_size(image_size) -> tuple[int, int]:
    h, w = as_hw(image_size)
    if h < 1 or w < 1:
        raise UsageError(f"image size must be positive, got {h}x{w}")
    return h, w


def _resolve_channels(manifest: dict, channels: int | None) -> tuple[int, int]:
    planes = int(manifest.get("planes") or 1)
    if channels is None:
        channels = int(manifest.get("channels") or (planes if planes > 1 else 3))
    if planes > 1 and channels != planes:
        raise UsageError(f"this dataset has {planes} planes per record, so {planes} channels, not {channels}")
    if planes == 1 and channels not in (1, 3):
        raise UsageError(f"single-plane images give 1 or 3 channels, not {channels}")
    return int(channels), planes


def _output_names(head: str, num_classes: int, output_names) -> list[str] | None:
    if head != "per-class":
        return None
    if output_names is None:
        raise UsageError("per-class head: pass output_names (model.heads.output_names)")
    output_names = list(output_names)
    if len(output_names) != num_classes:
        raise UsageError(f"per-class head: {len(output_names)} output names for {num_classes} classes")
    return output_names


def _shards(manifest: dict, data_dir: str, split: str, fold) -> list[dict]:
    shards = select_shards(manifest, data_dir, split, fold)
    if not shards or split_count(shards) == 0:
        have = ", ".join(s for s, v in manifest.get("splits", {}).items() if v.get("count")) or "none"
        what = f"split {split!r}" + (f" (fold {fold})" if fold is not None else "")
        raise DatasetError(f"{what} of {data_dir} is empty or absent (non-empty splits: {have})")
    check_shards_on_disk(shards, data_dir)   # before the first step, not hours into an epoch
    return shards


# --------------------------------------------------------------- dataset assembly

def corrupt_records_lost() -> int:
    """Records that skip_corrupt_shards left unread (all datasets, all epochs; see decode_failures)."""
    return 0 if _COUNTERS is None else int(_COUNTERS["lost"].numpy())


def _read_records(files: list[str], *, training: bool, seed, deterministic: bool, input_context,
                  counts: list[int] | None = None):
    """File names -> serialized records, sharded across input pipelines.

    By FILE when every pipeline gets at least one file (each reads only its
    share); else by DATA (each reads everything and keeps every n-th record,
    which needs the same record order in every pipeline: deterministic
    interleave, file order shuffled with a shared seed or not at all).
    counts: each file's record count (the manifest's): read past a corrupted
    shard, losing its tail with a warning (utils.input.corruption).
    """
    n, index = 1, 0
    if input_context is not None:
        n, index = input_context.num_input_pipelines, input_context.input_pipeline_id
    by_file = n > 1 and len(files) >= n
    by_data = n > 1 and not by_file
    if counts is None:
        ds = tf.data.Dataset.from_tensor_slices(files)
        read = lambda f: tf.data.TFRecordDataset(f, buffer_size=1 << 20)  # noqa: E731
    else:
        ds = tf.data.Dataset.from_tensor_slices((files, tf.constant(counts, tf.int64)))
        read = functools.partial(read_shard_past_corruption, lost=_counters()["lost"])
    if by_file:
        ds = ds.shard(n, index)
    n_files = len(files) // n if by_file else len(files)
    if training and (seed is not None or not by_data):
        # new file order every epoch: records of one shard are not always neighbours
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    ds = ds.interleave(
        read,
        cycle_length=max(1, min(n_files, 16)),  # parallel reads, one reader per shard
        block_length=1,
        num_parallel_calls=AUTOTUNE,
        deterministic=deterministic or by_data,
    )
    if by_data:
        ds = ds.shard(n, index)
    return ds, n, by_file


def _shuffle_size(shards: list[dict], shuffle_buffer: int, n_pipelines: int, by_file: bool) -> int:
    count = split_count(shards) // (1 if by_file or n_pipelines == 1 else n_pipelines)
    return max(1, min(int(shuffle_buffer), count))


def pass_length(counts: list[int], n_pipelines: int, index: int) -> tuple[int, bool]:
    """(records one pass over the data gives pipeline `index` of `n_pipelines`, by file?).

    Mirrors `_read_records`: by file, pipeline i reads files i, i+n, ...; by data
    it keeps every n-th record of the whole stream, starting at record i.
    """
    if n_pipelines > 1 and len(counts) >= n_pipelines:
        return sum(counts[index::n_pipelines]), True
    total = sum(counts)
    return (total - index + n_pipelines - 1) // n_pipelines, False


PASS_SEED_STRIDE = 1_000_003  # pass d of seed s shuffles with s * stride + d: distinct for any d < stride


def _resumable_stream(shards: list[dict], *, seed, cache: bool, shuffle_buffer: int, input_context,
                      skip: int, training: bool, repeat: bool):
    """Serialized training records, endlessly, whose position is one integer.

    Why not tf.data iterator checkpointing: Keras fit owns its iterator (there is
    no public way to save or restore it), a distributed iterator cannot be
    checkpointed, and the saved state would hold the shuffle buffer and every
    prefetched batch (tens of MB of decoded images per checkpoint). Instead, pass
    d over the data (one "data epoch") is shuffled, files and records, with its
    own seed derived from (seed, d), so pass d starts without replaying passes
    0..d-1, and its record order is a pure function of (seed, d). Resuming at
    record `skip` = pass skip // L, then `skip % L` records of it read and dropped
    before the decode (I/O only, at most one pass). A checkpoint then costs two
    integers; a resume costs reading at most one pass of encoded records.
    Records that fail to decode are dropped after the skip, so a resume after k
    such failures in the current pass repeats k records (their count is reported).
    """
    if not (training and repeat and seed is not None):
        raise UsageError("a resumable stream (skip=) needs training=True, repeat=True and an int seed")
    n, index = 1, 0
    if input_context is not None:
        n, index = input_context.num_input_pipelines, input_context.input_pipeline_id
    files = [s["path"] for s in shards]
    length, by_file = pass_length([int(s["count"]) for s in shards], n, index)
    if length < 1:
        raise DatasetError(f"input pipeline {index} of {n} gets no training records")
    buf = _shuffle_size(shards, shuffle_buffer, n, by_file)
    first, offset = divmod(int(skip), length)
    seed = int(seed)
    cached = None
    if cache:  # one read, in a fixed order; each pass reshuffles the cached records
        cached = _read_records(files, training=True, seed=seed, deterministic=True,
                               input_context=input_context)[0].cache()

    def one_pass(d):
        # Traced as a graph, so this sets the seed of this function's graph only. Without it, a
        # global seed of 0 (keras.utils.set_random_seed(0)) makes tf's get_seed compare the
        # tensor pass_seed with 0 in Python and fail; any fixed value keeps the order a pure
        # function of (seed, d).
        tf.random.set_seed(PASS_SEED_STRIDE)
        pass_seed = seed * PASS_SEED_STRIDE + d
        records = cached if cached is not None else _read_records(
            files, training=True, seed=pass_seed, deterministic=True, input_context=input_context)[0]
        return records.shuffle(buf, seed=pass_seed, reshuffle_each_iteration=False)

    ds = tf.data.Dataset.range(first, 2 ** 62).flat_map(one_pass)
    return ds.skip(offset) if offset else ds


DECODE_CHUNK = 16  # records per decode task (see _decode_skipping_failures)


def _decode_skipping_failures(records, decode, deterministic: bool):
    """records -> decode(record) for every record that decodes; failures dropped.

    ignore_errors() drops an element for ANY error from upstream, including a
    DataLossError of a corrupted shard, after which the TFRecord reader stops:
    the rest of that shard would vanish silently every epoch. So the records are
    cut into chunks and each chunk is decoded by its own small dataset whose
    ignore_errors() sees nothing but decode errors; read errors still reach the
    caller. Chunks are decoded in parallel by interleave (block_length = chunk,
    so with deterministic=True the record order is unchanged); one dataset per
    chunk rather than per record keeps the overhead negligible (per record:
    measured -40% throughput; per 16: within noise of a plain parallel map).
    """
    def decode_chunk(chunk):
        return tf.data.Dataset.from_tensor_slices(chunk).map(decode).ignore_errors()

    return records.batch(DECODE_CHUNK).interleave(
        decode_chunk,
        cycle_length=max(2, os.cpu_count() or 2),
        block_length=DECODE_CHUNK,
        num_parallel_calls=AUTOTUNE,
        deterministic=deterministic,
    )


def _decoder(size, channels: int, planes: int, num_classes: int, head: str, crop: dict | None,
             flip: str | None, seed, with_ids: bool):
    """serialized record -> (image, dense labels[, source id]), counting records in and out."""
    counters = _counters()

    def decode(serialized):
        with tf.control_dependencies([counters["seen"].assign_add(1)]):
            ex = schema.parse(serialized)
        if crop is not None:
            img = train_crop_image(ex[schema.ENCODED], size, channels, planes, seed=seed, **crop)
        else:
            img = eval_image(ex[schema.ENCODED], size, channels, planes)
        if flip is not None:  # per image: only the flipped half pays for a copy (image_ops.random_flip)
            img = random_flip(img, flip, seed=None if seed is None else seed + 1)
        with tf.control_dependencies([img]):
            done = counters["ok"].assign_add(1)
        with tf.control_dependencies([done]):
            img = tf.identity(img)
        labels = dense_labels(ex[schema.LABEL], num_classes, head)
        return (img, labels, ex[schema.SOURCE_ID]) if with_ids else (img, labels)

    return decode


def make_dataset(data_dir: str, split: str, *, image_size, batch_size: int, training: bool,
                 head: str = "softmax", output_names: list[str] | None = None,
                 channels: int | None = None, fold: int | None = None, augment=None,
                 cache: bool = False, shuffle_buffer: int = 2048, seed: int | None = None,
                 repeat: bool = False, drop_remainder: bool = False, input_context=None,
                 with_ids: bool = False, skip_corrupt_shards: bool = False,
                 skip: int | None = None, records_fn=None) -> tf.data.Dataset:
    """A batched dataset of (images float32 [B,h,w,C] in [0,255], labels[, source_ids]).

    Args:
        data_dir, split, fold: which records (utils.dataset.manifest.select_shards).
        image_size: (h, w), or an int for a square.
        batch_size: the batch THIS dataset yields: under a tf.distribute strategy
            with input_context pass input_context.get_per_replica_batch_size(global).
        training: shuffle (per epoch), random crop and augment; else the eval path,
            in manifest order.
        head: softmax -> one-hot [B,K]; sigmoid -> multi-hot [B,K]; per-class ->
            {output_name: [B,1]} in output_names order; unlabeled records -> zeros.
        channels: None takes the manifest's.
        augment: names for augment.parse_names; ignored unless training
            (validation is never augmented).
        seed: None: a new order and new draws every run; an int repeats them.
        input_context: a tf.distribute.InputContext; this pipeline then reads its share.
        with_ids: also yield each record's image/source_id.
        skip_corrupt_shards: a corrupted shard loses its remaining records with a
            warning on stderr (corrupt_records_lost() counts them) instead of the
            DataLossError that utils.input.corruption.explain_data_error turns into one line.
        skip: None: as above. An int (training, repeat and an int seed only): a
            resumable stream (`_resumable_stream`) of which the first `skip`
            records of THIS pipeline are passed over; train.py's --resume.
        records_fn: serialized records -> serialized records, applied after
            shuffle and repeat, before decoding (utils/input/sampling.mixer draws
            hard examples more often there); None leaves the stream as it is.
    Raises:
        UsageError: a bad head, size, batch size, channel count or augmentation.
        DatasetError: no dataset, or the split is empty, or a shard is missing.
    """
    if head not in HEADS:
        raise UsageError(f"unknown head {head!r}; valid: {', '.join(HEADS)}")
    if int(batch_size) < 1:
        raise UsageError(f"batch size must be at least 1, got {batch_size}")
    size = _image_size(image_size)
    manifest = load_manifest(data_dir)
    num_classes = int(manifest["num_classes"])
    channels, planes = _resolve_channels(manifest, channels)
    names = _output_names(head, num_classes, output_names)
    shards = _shards(manifest, data_dir, split, fold)
    files = [s["path"] for s in shards]
    deterministic = (not training) or seed is not None

    if skip is not None:
        ds = _resumable_stream(shards, seed=seed, cache=cache, shuffle_buffer=shuffle_buffer,
                               input_context=input_context, skip=skip, training=training, repeat=repeat)
    else:
        ds, n_pipelines, by_file = _read_records(
            files, training=training, seed=seed, deterministic=deterministic, input_context=input_context,
            counts=[int(s["count"]) for s in shards] if skip_corrupt_shards else None)
        if cache:
            ds = ds.cache()  # serialized (still encoded) records; decoding stays per epoch
        if training:  # before repeat: epochs stay whole (module docstring)
            ds = ds.shuffle(_shuffle_size(shards, shuffle_buffer, n_pipelines, by_file), seed=seed,
                            reshuffle_each_iteration=True)
        if repeat:  # before the decode map: its workers run on across the epoch boundary
            ds = ds.repeat()
    if records_fn is not None:  # still serialized: what it drops or draws again costs no decode
        ds = records_fn(ds)

    spec = aug.parse_names(augment) if training else {}
    decode = _decoder(size, channels, planes, num_classes, head, aug.decode_crop(spec), aug.decode_flip(spec),
                      seed, with_ids)
    ds = _decode_skipping_failures(ds, decode, deterministic)
    ds = ds.batch(int(batch_size), drop_remainder=drop_remainder,
                  num_parallel_calls=AUTOTUNE, deterministic=deterministic)

    augmenter = aug.build_augmenter(spec, size, seed, channels=channels) if spec else None

    def finish(images, labels, *ids):
        if augmenter is not None:  # after batch: vectorised layers, mixing partners
            images, labels = augmenter(images, labels)
        if names is not None:  # after mixing, which mixes [B, K]
            labels = split_labels(labels, names)
        return (images, labels, *ids)

    if augmenter is not None or names is not None:  # else batches are final: no extra map
        ds = ds.map(finish, num_parallel_calls=AUTOTUNE, deterministic=deterministic)
    ds = ds.prefetch(AUTOTUNE)  # last: everything above runs ahead of the training step

    options = tf.data.Options()
    # We shard ourselves when given an input_context, so tf.distribute must not
    # shard again (OFF); without one, DATA is always correct and, unlike AUTO,
    # never warns about falling back from FILE sharding.
    policy = tf.data.experimental.AutoShardPolicy
    options.experimental_distribute.auto_shard_policy = policy.OFF if input_context is not None else policy.DATA
    return ds.with_options(options)


def dataset_info(data_dir: str) -> dict:
    """What train/detect need to know about a dataset, without reading a record."""
    manifest = load_manifest(data_dir)
    channels, planes = _resolve_channels(manifest, None)
    try:
        class_names = load_labels(data_dir)
    except FileNotFoundError:
        class_names = [str(i) for i in range(int(manifest["num_classes"]))]
    splits = manifest.get("splits", {})
    return {
        "num_classes": int(manifest["num_classes"]),
        "multi_label": bool(manifest.get("multi_label", False)),
        "channels": channels,
        "planes": planes,
        "class_names": class_names,
        "readable_names": manifest.get("readable_names"),
        "counts": {s: int(v.get("count", 0)) for s, v in splits.items()},
        "class_counts": {s: list(v.get("class_counts") or []) for s, v in splits.items()},
        "folds": int(manifest.get("folds") or 0),
    }
