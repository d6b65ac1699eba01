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
  (image_ops.train_crop_image), the flip on the decoded uint8 image before its
  resize, where only flipped images pay a copy (image_ops.flipped_resize).
- prefetch LAST so the whole pipeline runs ahead of the training step.
- train.py's stream (`skip=`, `resumable_stream`) replaces shuffle -> repeat by
  passes over the data each shuffled with its own seed, so its position is one
  integer and a resumed run continues mid-epoch without repeating a record.

Decode failures: a record whose image cannot be decoded (or whose Example
cannot be parsed) makes the decode step raise; an `ignore_errors()` that sees
only that step drops the element and the epoch goes on. It does not see the
shard reader: a corrupted shard must fail loudly, not lose its tail silently
(see `decode_skipping_failures`). tf.data has no hook that reports what
ignore_errors dropped, so the decode step counts records entering (`seen`,
before parsing) and records decoded (`ok`, after the image exists) in two int64
variables; `decode_failures()` = seen - ok. Exact once an epoch has been fully
consumed; mid-epoch it may include records still being decoded. Process-wide
(every dataset made here) and cumulative across epochs: a caller that wants the
count of one run takes the difference before and after it.
"""
from __future__ import annotations

import tensorflow as tf

from utils.dataset import schema
from utils.dataset.manifest import (DatasetError, check_shards_on_disk, load_labels, load_manifest, merged_images,
                                    select_shards, split_count)
from utils.errors import UsageError
from utils.input import augment as aug
from utils.input.image_ops import as_hw, direct_jpeg, eval_image, train_crop_image
from utils.input.labels import HEADS, dense_labels, split_labels
from utils.input.records import (AUTOTUNE, counters, decode_skipping_failures, pipeline_options, read_records,
                                 resumable_stream, shuffle_size)

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

def _decoder(size, channels: int, planes: int, num_classes: int, head: str, crop: dict | None,
             flip: str | None, seed, with_ids: bool, direct: bool = False):
    """serialized record -> (image, dense labels[, source id]), counting records in and out.

    direct: the manifest proves every record takes the plain JPEG path
    (image_ops.direct_jpeg): the decode is built without its control flow.
    """
    counter = counters()

    def decode(serialized):
        with tf.control_dependencies([counter["seen"].assign_add(1)]):
            ex = schema.parse(serialized)
        # the flip per image, on the decoded uint8 before its resize: only the
        # flipped half pays for a copy, of the smaller image (image_ops.flipped_resize)
        flipping = {"flip": flip, "flip_seed": None if seed is None else seed + 1}
        if crop is not None:
            img = train_crop_image(ex[schema.ENCODED], size, channels, planes, seed=seed, direct=direct,
                                   **flipping, **crop)
        else:
            img = eval_image(ex[schema.ENCODED], size, channels, planes, direct=direct, **flipping)
        with tf.control_dependencies([img]):
            done = counter["ok"].assign_add(1)
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
            resumable stream (`resumable_stream`) of which the first `skip`
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
        ds = resumable_stream(shards, seed=seed, cache=cache, shuffle_buffer=shuffle_buffer,
                               input_context=input_context, skip=skip, training=training, repeat=repeat)
    else:
        ds, n_pipelines, by_file = read_records(
            files, training=training, seed=seed, deterministic=deterministic, input_context=input_context,
            counts=[int(s["count"]) for s in shards] if skip_corrupt_shards else None)
        if cache:
            ds = ds.cache()  # serialized (still encoded) records; decoding stays per epoch
        if training:  # before repeat: epochs stay whole (module docstring)
            ds = ds.shuffle(shuffle_size(shards, shuffle_buffer, n_pipelines, by_file), seed=seed,
                            reshuffle_each_iteration=True)
        if repeat:  # before the decode map: its workers run on across the epoch boundary
            ds = ds.repeat()
    if records_fn is not None:  # still serialized: what it drops or draws again costs no decode
        ds = records_fn(ds)

    spec = aug.parse_names(augment) if training else {}
    crop = aug.decode_crop(spec)
    # the manifest's summary of the shards read may fix every record's branch (image_ops.direct_jpeg)
    direct = planes == 1 and direct_jpeg(merged_images(shards), size)
    decode = _decoder(size, channels, planes, num_classes, head, crop, aug.decode_flip(spec), seed, with_ids, direct)
    ds = decode_skipping_failures(ds, decode, deterministic)
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

    options = pipeline_options(tf.data.Options())  # autotuning off: records.pipeline_options says why
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
