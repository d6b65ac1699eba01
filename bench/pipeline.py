"""Benchmark: our read pipeline vs keras.utils.image_dataset_from_directory.

Same JPEGs (written here, 300-500 px, a folder per class), same output size,
same batch size, no model: decode + resize + batch (+ prefetch) only. Ours reads
them from TFRecord shards made here with utils.schema.serialize (the original
bytes, as generate_dataset.py stores them). After a warm-up pass each, `--rounds`
timed passes alternate between the two so load from other processes hits both
alike; the best pass of each is reported with the ratio (target: ours >= 1.5x).

Two conditions:
  cold  before every pass the files of BOTH pipelines are evicted from the page
        cache (posix_fadvise DONTNEED on our own files only, no root needed):
        an epoch over a dataset that does not fit in RAM, or the first epoch.
  warm  everything in the page cache: pure CPU (decode + resize dominate).

    python bench/pipeline.py [--images 1500] [--size 224] [--batch 32]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

CLASSES = 5


def draw_photo(rng: np.random.Generator, h: int, w: int):
    """A photo-like image: smooth colour fields plus grain (JPEG size ~ a real photo's)."""
    from PIL import Image

    base = rng.integers(0, 256, (max(2, h // 24), max(2, w // 24), 3), dtype=np.uint8)
    img = np.asarray(Image.fromarray(base).resize((w, h), Image.BICUBIC), dtype=np.float32)
    img += rng.normal(0, 10, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def make_images(folder: str, n: int, lo: int, hi: int, seed: int) -> list[tuple[str, int]]:
    rng = np.random.default_rng(seed)
    out = []
    for c in range(CLASSES):
        os.makedirs(os.path.join(folder, f"class{c}"), exist_ok=True)
    for i in tqdm(range(n), desc="jpegs", unit="img"):
        c = i % CLASSES
        h, w = (int(v) for v in rng.integers(lo, hi + 1, 2))
        path = os.path.join(folder, f"class{c}", f"{i:05d}.jpg")
        draw_photo(rng, h, w).save(path, format="JPEG", quality=90)
        out.append((path, c))
    return out


def write_shards(files: list[tuple[str, int]], out_dir: str, shards: int) -> str:
    """The same files -> TFRecord shards + manifest.json + labels.json (our layout)."""
    import tensorflow as tf
    from PIL import Image

    from utils import schema

    os.makedirs(out_dir, exist_ok=True)
    entries = []
    for s in range(shards):
        name = f"val-{s:05d}-of-{shards:05d}.tfrecord"
        path = os.path.join(out_dir, name)
        part = files[s::shards]
        with tf.io.TFRecordWriter(path) as w:
            for f, c in part:
                data = open(f, "rb").read()
                with Image.open(f) as im:
                    width, height = im.size
                w.write(schema.serialize([data], "jpeg", height, width, 3, [c], os.path.basename(f)))
        blob = open(path, "rb").read()
        entries.append({"file": name, "count": len(part), "bytes": len(blob),
                        "sha256": hashlib.sha256(blob).hexdigest(), "fold": None})
    manifest = {"schema_version": 1, "name": "bench", "num_classes": CLASSES, "multi_label": False,
                "planes": 1, "channels": 3, "folds": 0,
                "splits": {"val": {"count": len(files), "shards": entries, "class_counts": [0] * CLASSES}}}
    with open(os.path.join(out_dir, "manifest.json"), "w") as f:
        json.dump(manifest, f)
    with open(os.path.join(out_dir, "labels.json"), "w") as f:
        json.dump([f"class{c}" for c in range(CLASSES)], f)
    return out_dir


def evict(paths: list[str]) -> None:
    """Drop these files' pages from the OS page cache, so the next read hits the disk."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def one_pass(ds) -> tuple[int, float, float]:
    """-> (images, wall seconds, CPU seconds of this process: all TF threads)."""
    t, c = time.perf_counter(), time.process_time()
    n = 0
    for batch in ds:
        n += int(batch[0].shape[0])
    return n, time.perf_counter() - t, time.process_time() - c


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=1500, help="number of JPEGs to write (default 1500)")
    p.add_argument("--min-side", type=int, default=300, help="smallest image side in px (default 300)")
    p.add_argument("--max-side", type=int, default=500, help="largest image side in px (default 500)")
    p.add_argument("--size", type=int, default=224, help="output size in px, both pipelines (default 224)")
    p.add_argument("--batch", type=int, default=32, help="batch size (default 32)")
    p.add_argument("--shards", type=int, default=8, help="TFRecord shards for our pipeline (default 8)")
    p.add_argument("--rounds", type=int, default=3, help="timed passes per pipeline (default 3)")
    p.add_argument("--mode", choices=("cold", "warm", "both"), default="both",
                   help="page cache evicted before each pass (cold), kept (warm), or both (default)")
    p.add_argument("--workdir", default=None, help="where to write images and shards (default: a temp dir, removed)")
    p.add_argument("--seed", type=int, default=0, help="image generation seed")
    args = p.parse_args(argv)

    import keras
    import tensorflow as tf

    from utils.pipeline import make_dataset

    work = args.workdir or tempfile.mkdtemp(prefix="bench-pipeline-")
    try:
        folder = os.path.join(work, "images")
        files = make_images(folder, args.images, args.min_side, args.max_side, args.seed)
        data_dir = write_shards(files, os.path.join(work, "data"), args.shards)
        size = (args.size, args.size)

        def keras_ds():
            ds = keras.utils.image_dataset_from_directory(
                folder, image_size=size, batch_size=args.batch, shuffle=False, verbose=False)
            return ds.prefetch(tf.data.AUTOTUNE)

        def ours_ds():
            return make_dataset(data_dir, "val", image_size=size, batch_size=args.batch, training=False)

        pipes = {"keras image_dataset_from_directory": keras_ds(), "ours (TFRecord shards)": ours_ds()}
        all_files = [f for f, _ in files] + [os.path.join(data_dir, f) for f in os.listdir(data_dir)]
        for ds in pipes.values():  # warm-up: tf.function tracing, autotune
            one_pass(ds)
        modes = ["cold", "warm"] if args.mode == "both" else [args.mode]
        best = {(m, k): 0.0 for m in modes for k in pipes}
        cpu = {(m, k): float("inf") for m in modes for k in pipes}
        for _ in tqdm(range(args.rounds), desc="timed rounds", unit="round"):
            for mode in modes:
                for name, ds in pipes.items():
                    if mode == "cold":
                        evict(all_files)
                    n, dt, dc = one_pass(ds)
                    assert n == args.images, f"{name} yielded {n} images, expected {args.images}"
                    best[mode, name] = max(best[mode, name], n / dt)
                    cpu[mode, name] = min(cpu[mode, name], 1000.0 * dc / n)
        print(f"\n{args.images} JPEGs {args.min_side}-{args.max_side} px -> {args.size}x{args.size}, "
              f"batch {args.batch}, {os.cpu_count()} CPUs, best of {args.rounds} passes")
        for mode in modes:
            k = best[mode, "keras image_dataset_from_directory"]
            o = best[mode, "ours (TFRecord shards)"]
            ck = cpu[mode, "keras image_dataset_from_directory"]
            co = cpu[mode, "ours (TFRecord shards)"]
            print(f"  {mode}: keras {k:7.1f} images/s   ours {o:7.1f} images/s   ratio {o / k:.2f}x (target >= 1.5x)"
                  f"   | CPU ms/image keras {ck:.2f} ours {co:.2f}")
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
