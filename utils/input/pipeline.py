"""tf.data input pipeline: shards -> interleave -> parse -> decode -> augment -> batch -> prefetch.

Pixel contract (shared by train.py and detect.py): the pipeline yields float32
images in [0, 255], RGB order, at the model's input size, with the model's
channel count. Backbone-specific normalisation lives INSIDE the model (a
registered Preprocess layer, model/layers.py), so a saved model needs no
external preprocessing and detect.py cannot get it wrong.

`decode_planes` + `eval_image` are the ONE decode/eval-preprocess path; detect.py
imports them rather than copying them, and `make_dataset(training=False)` maps
exactly `eval_image` over the records.

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
- batch BEFORE augment: Keras augmentation layers are vectorised (one kernel
  per batch) and MixUp/CutMix need partners from the same batch.
- prefetch LAST so the whole pipeline runs ahead of the training step.

Decode failures: a record whose image cannot be decoded (or whose Example
cannot be parsed) makes the decode step raise; an `ignore_errors()` that sees
only that step drops the element and the epoch goes on. It does not see the
shard reader: a corrupted shard must fail loudly, not lose its tail silently
(see `_decode_skipping_failures`). tf.data has no hook that reports what
ignore_errors dropped, so the decode step counts records entering (`seen`,
before parsing) and records decoded (`ok`, after the image exists) in two int64
variables; `decode_failures()` = seen - ok. Exact once an epoch has been fully
consumed; mid-epoch it may include records still being decoded. Process-wide
(every dataset made here), cumulative across epochs; `reset_decode_failures()`
zeroes them.

JPEG fast paths (JPEG recognised by its magic bytes, not by image/format, so
a mislabelled record still decodes): eval decodes with `tf.io.decode_jpeg` at
1/2, 1/4 or 1/8 scale when the image is at least that much larger than the
target (DCT-domain scaling); training with random resized crop uses
`tf.io.decode_and_crop_jpeg`, which decodes only the crop window. Everything
else goes through `tf.io.decode_image` (the same kernel, all formats).
"""
from __future__ import annotations

import os

import tensorflow as tf

from utils.dataset import schema
from utils.dataset.manifest import DatasetError, load_labels, load_manifest, select_shards, split_count
from utils.errors import UsageError
from utils.input.labels import HEADS

AUTOTUNE = tf.data.AUTOTUNE
JPEG_MAGIC = b"\xff\xd8\xff"


# --------------------------------------------------------------- decode (the pixel contract)

def to_channels(img: tf.Tensor, channels: int) -> tf.Tensor:
    """uint8 [H, W, c] with c in 1..4 (gray, gray+alpha, RGB, RGBA) -> [H, W, channels]."""
    if img.shape.rank == 3 and img.shape[-1] == channels:
        return img  # already right (static shape): no cond, no copy
    c = tf.shape(img)[-1]
    if channels == 3:
        # gray / gray+alpha -> replicate the gray plane; RGBA -> drop alpha
        img = tf.cond(c < 3, lambda: tf.tile(img[..., :1], [1, 1, 3]), lambda: img[..., :3])
    elif channels == 1:
        img = tf.cond(c < 3, lambda: img[..., :1], lambda: tf.image.rgb_to_grayscale(img[..., :3]))
    else:
        raise ValueError(f"a single plane can give 1 or 3 channels, not {channels}")
    img.set_shape([None, None, channels])
    return img


def decode_one(encoded: tf.Tensor, size: tuple[int, int] | None = None, channels: int = 0) -> tf.Tensor:
    """Encoded bytes (JPEG, PNG, GIF first frame, BMP, WebP) -> uint8 [H, W, c].

    channels: 0 keeps the file's own count; 1 or 3 converts (to_channels; for
    JPEG libjpeg converts while decoding, which saves a copy).
    size: the (h, w) the image will be resized to. A JPEG at least twice as
    large on both sides is then decoded at 1/2, 1/4 or 1/8 scale inside libjpeg
    (DCT-domain scaling: far less work, and an antialiased downsample), never
    below `size`. Without size: full resolution.
    """
    def full():
        # decode_image with expand_animations=False returns 3-D for every format,
        # first frame of an animation; 16-bit PNG is scaled to uint8.
        img = tf.io.decode_image(encoded, channels=0, dtype=tf.uint8, expand_animations=False)
        return to_channels(img, channels) if channels else img

    if size is None:
        return full()

    def scaled_jpeg():
        shape = tf.cast(tf.io.extract_jpeg_shape(encoded), tf.float32)
        factor = tf.minimum(shape[0] / size[0], shape[1] / size[1])
        # branch index 0..3 -> ratio 1, 2, 4, 8 (the largest that keeps both sides >= size)
        index = tf.cast(factor >= 2.0, tf.int32) + tf.cast(factor >= 4.0, tf.int32) + tf.cast(factor >= 8.0, tf.int32)
        branches = [lambda r=r: tf.io.decode_jpeg(encoded, channels=channels, ratio=r) for r in (1, 2, 4, 8)]
        return tf.switch_case(index, branches)

    is_jpeg = tf.equal(tf.strings.substr(encoded, 0, 3), JPEG_MAGIC)
    return tf.cond(is_jpeg, scaled_jpeg, full)


def decode_planes(planes: tf.Tensor, channels: int, num_planes: int = 1,
                  size: tuple[int, int] | None = None) -> tf.Tensor:
    """1-D string tensor of encoded planes -> uint8 [H, W, channels].

    num_planes == 1: an ordinary image, converted to `channels` (1 or 3).
    num_planes  > 1: each plane is one grayscale channel, stacked in order
    (6-channel microscopy); then channels must equal num_planes.
    size: the later resize target, lets JPEGs decode at a reduced scale (decode_one).
    """
    if num_planes == 1:
        if channels not in (1, 3):
            raise ValueError(f"a single plane can give 1 or 3 channels, not {channels}")
        return to_channels(decode_one(planes[0], size, channels), channels)
    if channels != num_planes:
        raise ValueError(f"{num_planes} planes give {num_planes} channels, not {channels}")
    # full-resolution planes: a reduced-scale decode could differ in size between planes
    img = tf.concat([to_channels(decode_one(planes[i]), 1) for i in range(num_planes)], axis=-1)
    img.set_shape([None, None, channels])
    return img


def resize_image(img: tf.Tensor, size: tuple[int, int]) -> tf.Tensor:
    """Any-dtype [H, W, C] -> float32 [h, w, C] in [0, 255].

    Shrinking by 2x or more on both sides: area averaging (a box filter, no
    aliasing of fine texture: OpenCV's INTER_AREA advice). Anything else:
    bilinear, whose 2-tap footprint covers a shrink below 2x well enough.
    Measured on 300-500 px JPEGs -> 224: area everywhere costs 20% of the whole
    decode+resize, bilinear with antialias=True (ScaleAndTranslate) 4x; JPEGs
    that are 2x larger than the target already came out of the DCT-scaled
    decode (decode_one) smaller, so area mostly serves big PNGs.

    The image is cast to float32 BEFORE resizing: TF's resize kernels run 40%
    faster on float input than on uint8 (0.074 vs 0.117 ms per 290x224 ->
    224x224 image, measured), with the same result. Both filters are convex
    combinations of input pixels, so the output stays in [0, 255] unclipped.
    """
    img = tf.cast(img, tf.float32)
    shape = tf.cast(tf.shape(img), tf.float32)
    factor = tf.minimum(shape[0] / size[0], shape[1] / size[1])
    return tf.cond(factor >= 2.0,
                   lambda: tf.image.resize(img, size, method="area"),
                   lambda: tf.image.resize(img, size, method="bilinear"))


def eval_image(planes: tf.Tensor, size: tuple[int, int], channels: int = 3, num_planes: int = 1) -> tf.Tensor:
    """The evaluation preprocessing: decode, resize to `size` (h, w), float32 in [0, 255]."""
    size = tuple(int(s) for s in size)
    return resize_image(decode_planes(planes, channels, num_planes, size=size), size)


def train_crop_image(planes: tf.Tensor, size, channels: int = 3, num_planes: int = 1,
                     scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), seed=None) -> tf.Tensor:
    """Training decode with random resized crop at full resolution -> float32 [h, w, C]."""
    from utils.input.augment import random_resized_crop, rrc_window

    def generic():
        return random_resized_crop(decode_planes(planes, channels, num_planes), size, scale, ratio, seed)

    if num_planes != 1:
        return generic()

    def jpeg():
        # decode only the crop window: most of a 0.08-area crop is never decoded
        win = rrc_window(tf.io.extract_jpeg_shape(planes[0]), scale, ratio, seed)
        return resize_image(tf.io.decode_and_crop_jpeg(planes[0], win, channels=channels), size)

    is_jpeg = tf.equal(tf.strings.substr(planes[0], 0, 3), JPEG_MAGIC)
    return tf.cond(is_jpeg, jpeg, generic)


# --------------------------------------------------------------- decode-failure counter

_COUNTERS: dict | None = None


def _local_variable(name: str) -> tf.Variable:
    """An int64 variable on this host's CPU that no tf.distribute strategy mirrors.

    make_dataset may first run inside strategy.scope() or a
    distribute_datasets_from_function call; tf.Variable there would become a
    MirroredVariable (under MultiWorkerMirroredStrategy even a cross-worker
    broadcast). ResourceVariable's own constructor bypasses the strategy's
    variable creator; tf.Variable is the fallback should that private path move.
    """
    with tf.init_scope(), tf.device("/cpu:0"):
        try:
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
                     "ok": _local_variable("pipeline_records_decoded")}
    return _COUNTERS


def decode_failures() -> int:
    """Records skipped because they failed to parse or decode (all datasets, all epochs)."""
    if _COUNTERS is None:
        return 0
    return int(_COUNTERS["seen"].numpy() - _COUNTERS["ok"].numpy())


def records_decoded() -> int:
    return 0 if _COUNTERS is None else int(_COUNTERS["ok"].numpy())


def reset_decode_failures() -> None:
    if _COUNTERS is not None:
        _COUNTERS["seen"].assign(0)
        _COUNTERS["ok"].assign(0)


# --------------------------------------------------------------- labels

def dense_labels(label_ids: tf.Tensor, num_classes: int, head: str) -> tf.Tensor:
    """int64 [n] class ids -> float32 [K]: one-hot (softmax, first id) or multi-hot.

    Empty ids (unlabeled test split) -> zeros. Ids outside [0, K) are ignored.
    """
    ids = label_ids[:1] if head == "softmax" else label_ids
    hot = tf.one_hot(tf.cast(ids, tf.int32), num_classes, dtype=tf.float32)
    out = tf.minimum(tf.reduce_sum(hot, axis=0), 1.0)  # sum over an empty axis = zeros
    out.set_shape([num_classes])
    return out


def split_labels(labels: tf.Tensor, output_names: list[str]):
    """[B, K] -> {name_i: [B, 1]} for the per-class head (after MixUp, which mixes [B, K])."""
    return {name: labels[:, i : i + 1] for i, name in enumerate(output_names)}


# --------------------------------------------------------------- dataset

def _size(image_size) -> tuple[int, int]:
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    h, w = (int(s) for s in image_size)
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


def _output_names(head: str, num_classes: int, output_names, data_dir: str) -> list[str] | None:
    if head != "per-class":
        return None
    if output_names is None:
        try:  # the model package owns the names; fall back to asking the caller
            from model import heads

            output_names = heads.output_names(head, num_classes, load_labels(data_dir))
        except (ImportError, AttributeError, FileNotFoundError):
            raise UsageError("per-class head: pass output_names (model.heads.output_names)") from None
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
    for s in shards:
        if not os.path.isfile(s["path"]):
            raise DatasetError(f"shard {s['path']} is listed in the manifest but missing")
    return shards


def _read_records(files: list[str], *, training: bool, seed, deterministic: bool, input_context):
    """File names -> serialized records, sharded across input pipelines.

    By FILE when every pipeline gets at least one file (each reads only its
    share); else by DATA (each reads everything and keeps every n-th record,
    which needs the same record order in every pipeline: deterministic
    interleave, file order shuffled with a shared seed or not at all).
    """
    n, index = 1, 0
    if input_context is not None:
        n, index = input_context.num_input_pipelines, input_context.input_pipeline_id
    by_file = n > 1 and len(files) >= n
    by_data = n > 1 and not by_file
    ds = tf.data.Dataset.from_tensor_slices(files)
    if by_file:
        ds = ds.shard(n, index)
    n_files = len(files) // n if by_file else len(files)
    if training and (seed is not None or not by_data):
        # new file order every epoch: records of one shard are not always neighbours
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    ds = ds.interleave(
        lambda f: tf.data.TFRecordDataset(f, buffer_size=1 << 20),
        cycle_length=max(1, min(n_files, 16)),  # parallel reads, one reader per shard
        block_length=1,
        num_parallel_calls=AUTOTUNE,
        deterministic=deterministic or by_data,
    )
    if by_data:
        ds = ds.shard(n, index)
    return ds, n, by_file


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


def make_dataset(data_dir: str, split: str, *, image_size, batch_size: int, training: bool,
                 head: str = "softmax", output_names: list[str] | None = None,
                 channels: int | None = None, fold: int | None = None, augment=None,
                 cache: bool = False, shuffle_buffer: int = 2048, seed: int | None = None,
                 repeat: bool = False, drop_remainder: bool = False, input_context=None,
                 with_ids: bool = False) -> tf.data.Dataset:
    """A batched dataset of (images float32 [B,h,w,C] in [0,255], labels[, source_ids]).

    labels: softmax -> one-hot [B,K]; sigmoid -> multi-hot [B,K]; per-class ->
    {output_name: [B,1]} in output_names order; unlabeled records -> zeros.
    batch_size is the batch THIS dataset yields: under a tf.distribute strategy
    with input_context pass input_context.get_per_replica_batch_size(global).
    augment is ignored unless training (validation is never augmented).
    """
    from utils.input import augment as aug

    if head not in HEADS:
        raise UsageError(f"unknown head {head!r}; valid: {', '.join(HEADS)}")
    if int(batch_size) < 1:
        raise UsageError(f"batch size must be at least 1, got {batch_size}")
    size = _size(image_size)
    manifest = load_manifest(data_dir)
    num_classes = int(manifest["num_classes"])
    channels, planes = _resolve_channels(manifest, channels)
    names = _output_names(head, num_classes, output_names, data_dir)
    shards = _shards(manifest, data_dir, split, fold)
    files = [s["path"] for s in shards]
    deterministic = (not training) or seed is not None

    ds, n_pipelines, by_file = _read_records(
        files, training=training, seed=seed, deterministic=deterministic, input_context=input_context)
    if cache:
        ds = ds.cache()  # serialized (still encoded) records; decoding stays per epoch
    if training:
        count = split_count(shards) // (1 if by_file or n_pipelines == 1 else n_pipelines)
        buf = max(1, min(int(shuffle_buffer), count))
        ds = ds.shuffle(buf, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()

    spec = aug.parse_names(augment) if training else {}
    rrc = spec.get("rrc")
    rrc_kwargs = dict(aug.DEFAULTS["rrc"], **rrc) if rrc is not None else None
    counters = _counters()

    def decode(serialized):
        with tf.control_dependencies([counters["seen"].assign_add(1)]):
            ex = schema.parse(serialized)
        if rrc_kwargs is not None:
            img = train_crop_image(ex[schema.ENCODED], size, channels, planes, seed=seed, **rrc_kwargs)
        else:
            img = eval_image(ex[schema.ENCODED], size, channels, planes)
        with tf.control_dependencies([img]):
            done = counters["ok"].assign_add(1)
        with tf.control_dependencies([done]):
            img = tf.identity(img)
        labels = dense_labels(ex[schema.LABEL], num_classes, head)
        return (img, labels, ex[schema.SOURCE_ID]) if with_ids else (img, labels)

    ds = _decode_skipping_failures(ds, decode, deterministic)
    ds = ds.batch(int(batch_size), drop_remainder=drop_remainder,
                  num_parallel_calls=AUTOTUNE, deterministic=deterministic)

    augmenter = aug.build_augmenter(spec, size, seed, channels=channels, skip=("rrc",)) if spec else None

    def finish(images, labels, *ids):
        if augmenter is not None:
            images, labels = augmenter(images, labels)
        if names is not None:
            labels = split_labels(labels, names)
        return (images, labels, *ids)

    if augmenter is not None or names is not None:  # else batches are final: no extra map
        ds = ds.map(finish, num_parallel_calls=AUTOTUNE, deterministic=deterministic)
    ds = ds.prefetch(AUTOTUNE)

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
