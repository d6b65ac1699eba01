"""Benchmark helper: our read pipeline vs a minimal tf.data pipeline on the same shards, on N cores.

bench/pipeline.py runs this file once per core count, as a child process
pinned to the first N CPUs (sched_setaffinity before the interpreter starts,
so TensorFlow sizes its thread pools from the pinned set), and reads the JSON
line it prints. The minimal pipelines are the textbook ones, with none of what
ours adds (decode failures skipped and counted, a corrupted shard loud,
multi-plane records, DCT-scaled decode, shuffling, one-hot labels):
  eval   TFRecordDataset -> parallel map(parse, decode_jpeg, resize) -> batch -> prefetch
  train  TFRecordDataset -> parallel map(parse, sample_distorted_bounding_box +
         decode_and_crop_jpeg, random_flip_left_right, resize) -> batch -> prefetch
and ours is make_dataset(training=False), and make_dataset(training=True,
augment="flip,rrc") (the same crop ranges, p = 0.5 flip).

Both pipelines of a path run in the same process, alternating passes (ABBA),
so load from other processes hits both alike; the ratio is taken per pair of
passes, then the median. TensorFlow's inter-op and intra-op pools are set to
N threads and both datasets get the same tf.data threading options. CPU
utilisation = process CPU seconds / (wall seconds x N) over the timed part of
each pass (first batch to last): on a machine shared with other jobs it reads
low because the other jobs have the cores, not because the pipeline waits.

    python bench/minimal.py --data DIR --cores N [--rounds 5] [--size 224] [--batch 32]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PATHS = ("eval", "train")
AUGMENT = "flip,rrc"
MIN_BATCHES = 2  # a pass is timed from its first batch to its last: one batch leaves nothing to time


def too_few_images(images: int, batch: int) -> str | None:
    """Why `images` are too few to time a pass in batches of `batch`, or None when they are enough.

    Args:
        images: images in one pass.
        batch: the batch size.
    """
    if images >= MIN_BATCHES * batch:
        return None
    return (f"--images must be at least --batch x {MIN_BATCHES} ({MIN_BATCHES * batch}), got {images}: "
            "a pass is timed from its first batch to its last")


def minimal_dataset(files: list[str], size: tuple[int, int], batch: int, training: bool):
    """The minimal pipeline of the issue on `files` (single-plane JPEG records only)."""
    import tensorflow as tf

    spec = {"image/encoded": tf.io.FixedLenFeature([], tf.string),
            "image/class/label": tf.io.VarLenFeature(tf.int64)}

    def parse(record):
        ex = tf.io.parse_single_example(record, spec)
        encoded, label = ex["image/encoded"], ex["image/class/label"].values[0]
        if training:
            begin, crop, _ = tf.image.sample_distorted_bounding_box(
                tf.io.extract_jpeg_shape(encoded), tf.zeros([1, 0, 4]), min_object_covered=0.0,
                aspect_ratio_range=(3 / 4, 4 / 3), area_range=(0.08, 1.0), max_attempts=10,
                use_image_if_no_bounding_boxes=True)
            window = tf.stack([begin[0], begin[1], crop[0], crop[1]])
            image = tf.image.random_flip_left_right(tf.io.decode_and_crop_jpeg(encoded, window, channels=3))
        else:
            image = tf.io.decode_jpeg(encoded, channels=3)
        return tf.image.resize(image, size), label

    return (tf.data.TFRecordDataset(files)
            .map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=not training)
            .batch(batch).prefetch(tf.data.AUTOTUNE))


def steady_state(ds) -> tuple[int, int, float, float, float]:
    """One pass -> (images, images after the first batch, wall s and CPU s (this process, all
    threads) from the first batch to the last, seconds to the first batch).

    Raises:
        SystemExit: the pass was a single batch (or none), so nothing after the first
            batch is timed (images/s would divide by zero).
    """
    t0 = time.perf_counter()
    n = n1 = 0
    t1 = c1 = None
    for batch in ds:
        n += int(batch[0].shape[0])
        if t1 is None:
            t1, c1, n1 = time.perf_counter(), time.process_time(), n
    if n == n1:  # the first batch is all there is (or there is none)
        raise SystemExit(f"error: a pass of {n} images is a single batch: nothing after its first batch to time "
                         f"(give at least {MIN_BATCHES} batches of images)")
    return n, n - n1, time.perf_counter() - t1, time.process_time() - c1, t1 - t0


def timed_pass(ds, cores: int) -> tuple[int, float, float, float]:
    """One pass -> (images, images/s, CPU utilisation, CPU ms/image), timed from the first batch to the last."""
    n, timed, wall, cpu, _ = steady_state(ds)
    return n, timed / wall, cpu / (wall * cores), 1000.0 * cpu / max(1, timed)


def measure(data: str, cores: int, rounds: int, size: int, batch: int) -> dict:
    """{path: {"ours"|"minimal": {rate, util, cpu_ms}, "ratio": median ours/minimal}} on this process's CPUs."""
    import tensorflow as tf

    from utils.input.pipeline import make_dataset

    tf.config.threading.set_inter_op_parallelism_threads(cores)
    tf.config.threading.set_intra_op_parallelism_threads(cores)
    options = tf.data.Options()
    options.threading.private_threadpool_size = cores
    options.threading.max_intra_op_parallelism = 1
    files = sorted(tf.io.gfile.glob(os.path.join(data, "train-*.tfrecord")))
    hw = (size, size)
    out = {}
    for path in PATHS:
        training = path == "train"
        pipes = {
            "ours": make_dataset(data, "train", image_size=hw, batch_size=batch, training=training,
                                 augment=AUGMENT if training else None),
            "minimal": minimal_dataset(files, hw, batch, training),
        }
        pipes = {k: ds.with_options(options) for k, ds in pipes.items()}
        for ds in pipes.values():  # warm-up: tracing, autotune
            timed_pass(ds, cores)
        runs = {k: [] for k in pipes}
        for r in range(rounds):
            order = list(pipes) if r % 2 == 0 else list(pipes)[::-1]  # ABBA: neither always goes first
            for k in order:
                runs[k].append(timed_pass(pipes[k], cores))
        counts = {k: {n for n, *_ in v} for k, v in runs.items()}
        assert counts["ours"] == counts["minimal"] and len(counts["ours"]) == 1, f"{path}: image counts {counts}"
        med = statistics.median
        out[path] = {k: {"rate": med(x[1] for x in v), "util": med(x[2] for x in v), "cpu_ms": med(x[3] for x in v)}
                     for k, v in runs.items()}
        out[path]["ratio"] = med(a[1] / b[1] for a, b in zip(runs["ours"], runs["minimal"]))
        out[path]["cpu_ratio"] = med(a[3] / b[3] for a, b in zip(runs["ours"], runs["minimal"]))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="a dataset folder of single-plane JPEG records (its train split)")
    p.add_argument("--cores", type=int, required=True, help="the CPUs this process is pinned to (for utilisation)")
    p.add_argument("--rounds", type=int, default=5, help="timed passes per pipeline and path (default 5)")
    p.add_argument("--size", type=int, default=224, help="output size in px (default 224)")
    p.add_argument("--batch", type=int, default=32, help="batch size (default 32)")
    args = p.parse_args(argv)
    print(json.dumps(measure(args.data, args.cores, args.rounds, args.size, args.batch)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
