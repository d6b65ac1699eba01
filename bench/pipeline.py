"""Benchmark: our read pipeline vs keras.utils.image_dataset_from_directory and vs a minimal tf.data pipeline.

The same JPEGs (written here, 300-500 px, a folder per class) go through:
  keras        image_dataset_from_directory(folder, image_size=SIZE) (+ prefetch)
  pass-through generate_dataset.py FOLDER             -> make_dataset(training=False)
  short-side   generate_dataset.py FOLDER --short-side SIZE -> make_dataset(training=False)
Same output size (SIZE x SIZE, aspect not kept, as Keras does), same batch size,
no model: read + decode + resize + batch (+ prefetch) only. After a warm-up pass
each, `--rounds` rounds time one pass of every pipeline back to back, so load
from other processes hits all alike. Reported: the median over rounds of each
pipeline's images/s, of its ratio to Keras IN THE SAME ROUND (robust to the
minutes-long swings of a shared VM, which best-of-N is not), and of its CPU
time per image (all threads).

Throughput is timed from each pass's first batch to its last: the steady state
of an epoch, as train.py sees it (one repeated dataset, started once per run).
The start-up, iterator creation to first batch, is printed on its own: ours
takes ~0.1 s (function instantiation, shard readers, decode chunks) where
Keras takes ~0.02 s; over these short passes it would otherwise weigh as much
as 300 images, over a real epoch it is noise.

Where the speed comes from, so the ratio can be judged:
  - pass-through shards hold the original bytes, so each epoch decodes exactly
    what Keras decodes: JPEG decoding is most of the cost, and no pipeline can
    be much faster on those bytes (the decode-only floor is printed).
  - --short-side SIZE does the expensive part once, at generation: each image
    is stored at the smallest size that still fills a SIZE x SIZE input (its
    shorter side = SIZE), so every epoch decodes 2-3x fewer pixels. The one-off
    build time is printed in Keras epochs, and each pipeline's pictures are
    compared (PSNR over --check images) with an anti-aliased resize of the
    original: the stored copy must not cost picture quality.

Two conditions:
  cold  before every pass the files of ALL pipelines are evicted from the page
        cache (posix_fadvise DONTNEED on our own files only, no root needed):
        an epoch over a dataset that does not fit in RAM, or the first epoch.
  warm  everything in the page cache: pure CPU (decode + resize dominate).

Second baseline (bench/minimal.py): the --short-side shards through a minimal
tf.data pipeline (TFRecordDataset -> parallel map -> batch -> prefetch) and
through ours, eval path and training path with flip,rrc, in a child process
pinned to 1 CPU and in one pinned to all of them; printed: images/s, CPU per
image and CPU utilisation (busy = CPU seconds / (wall seconds x cores)) of
each, and ours/minimal (median over alternating rounds). The load average is
printed with them: on a shared machine "busy" reads low because other jobs
hold the cores.

    python bench/pipeline.py [--images 2000] [--size 224] [--batch 32] [--mode both] [--compare both]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

import minimal  # noqa: E402  (bench/minimal.py, next to this file)
from image_flags import add_image_flags, work_dir  # noqa: E402  (bench/image_flags.py, next to this file)
from pinned import pinned_run  # noqa: E402  (bench/pinned.py, next to this file)

CLASSES = 5
TARGET = 2.0  # --short-side shards vs keras, warm and cold
MINIMAL_TARGET = 0.95  # ours vs the minimal pipeline, eval and train, 1 and all cores
BUSY_TARGET = 0.90  # CPU utilisation of ours in steady state
KERAS = "keras image_dataset_from_directory"
PASS = "ours, pass-through shards"
SHORT = "ours, --short-side shards"


def draw_photo(rng: np.random.Generator, h: int, w: int):
    """A photo-like image: smooth colour fields plus grain (JPEG size ~ a real photo's)."""
    from PIL import Image

    base = rng.integers(0, 256, (max(2, h // 24), max(2, w // 24), 3), dtype=np.uint8)
    img = np.asarray(Image.fromarray(base).resize((w, h), Image.BICUBIC), dtype=np.float32)
    img += rng.normal(0, 10, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def make_images(folder: str, n: int, lo: int, hi: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    out = []
    for c in range(CLASSES):
        os.makedirs(os.path.join(folder, f"class{c}"), exist_ok=True)
    for i in tqdm(range(n), desc="jpegs", unit="img"):
        h, w = (int(v) for v in rng.integers(lo, hi + 1, 2))
        path = os.path.join(folder, f"class{i % CLASSES}", f"{i:05d}.jpg")
        draw_photo(rng, h, w).save(path, format="JPEG", quality=90)
        out.append(path)
    return out


def build(folder: str, out: str, *extra: str) -> float:
    """generate_dataset.py FOLDER --out OUT [extra] in this process -> seconds taken."""
    import generate_dataset

    t = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()):
        code = generate_dataset.main([folder, "--out", out, "--shard-mb", "16", "--no-progress",
                                    "--val-fraction", "0", *extra])  # every image in train: passes count them all
    assert code == 0, f"generate_dataset.py failed with {code}"
    return time.perf_counter() - t


def evict(paths: list[str]) -> None:
    """Drop these files' pages from the OS page cache, so the next read hits the disk."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def files_under(folder: str) -> list[str]:
    return [os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs]


def one_pass(ds) -> tuple[int, float, float, float]:
    """-> (images, images/s after the first batch, CPU ms per image after it
    (this process: all TF threads), seconds to the first batch)."""
    n, timed, wall, cpu, first = minimal.steady_state(ds)
    return n, timed / wall, 1000.0 * cpu / max(1, timed), first


def decode_floor(paths: list[str], batch: int) -> float:
    """CPU ms per image to read + decode the original JPEGs and nothing else."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices(paths).map(
        lambda p: (tf.shape(tf.io.decode_jpeg(tf.io.read_file(p), channels=3)),),  # one_pass counts batch[0]
        num_parallel_calls=tf.data.AUTOTUNE).batch(batch).prefetch(tf.data.AUTOTUNE)
    return min(one_pass(ds)[2] for _ in range(2))


def reference(path: str, size: int) -> np.ndarray:
    """The original resized straight to size x size with an anti-aliased filter (Pillow LANCZOS)."""
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB").resize((size, size), Image.Resampling.LANCZOS), np.float32)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0 ** 2 / mse)


def pictures(ds, stems: list[str], wanted: set[str]) -> dict[str, np.ndarray]:
    """stem -> image for the wanted stems; `stems` names the images in dataset order
    (None: the dataset yields (images, labels, ids))."""
    out, i = {}, 0
    for batch in ds:
        images = batch[0].numpy()
        ids = [s.decode() for s in batch[2].numpy()] if stems is None else stems[i: i + len(images)]
        i += len(images)
        for s, img in zip(ids, images):
            if s in wanted:
                out[s] = img
    return out


def keras_compare(args, folder: str, paths: list[str], data: dict, build_s: dict) -> None:
    """Keras vs ours (pass-through and --short-side shards), in this process on every CPU; prints its lines."""
    import keras
    import tensorflow as tf

    from utils.input.image_ops import as_hw
    from utils.input.pipeline import make_dataset

    size = as_hw(args.size)

    def keras_ds():
        ds = keras.utils.image_dataset_from_directory(
            folder, image_size=size, batch_size=args.batch, shuffle=False, verbose=False)
        return ds.prefetch(tf.data.AUTOTUNE), [os.path.splitext(os.path.basename(f))[0] for f in ds.file_paths]

    def ours_ds(d, with_ids=False):
        return make_dataset(d, "train", image_size=size, batch_size=args.batch, training=False, with_ids=with_ids)

    kds, kstems = keras_ds()
    pipes = {KERAS: kds, PASS: ours_ds(data[PASS]), SHORT: ours_ds(data[SHORT])}
    all_files = paths + files_under(data[PASS]) + files_under(data[SHORT])
    for ds in pipes.values():  # warm-up: tf.function tracing, autotune
        one_pass(ds)
    modes = ["cold", "warm"] if args.mode == "both" else [args.mode]
    rates = {(m, k): [] for m in modes for k in pipes}
    cpus = {(m, k): [] for m in modes for k in pipes}
    starts = {(m, k): [] for m in modes for k in pipes}
    for _ in tqdm(range(args.rounds), desc="timed rounds", unit="round"):
        for mode in modes:
            for name, ds in pipes.items():
                if mode == "cold":
                    evict(all_files)
                n, rate, ms, first = one_pass(ds)
                assert n == args.images, f"{name} yielded {n} images, expected {args.images}"
                rates[mode, name].append(rate)
                cpus[mode, name].append(ms)
                starts[mode, name].append(first)
    med = statistics.median
    rate = {key: med(v) for key, v in rates.items()}
    ratio = {(m, k): med(r / b for r, b in zip(rates[m, k], rates[m, KERAS])) for m, k in rates}
    cpu = {key: med(v) for key, v in cpus.items()}
    start = {key: med(v) for key, v in starts.items()}

    # picture quality: the same images from each pipeline vs an anti-aliased resize of the original
    wanted = {os.path.splitext(os.path.basename(f))[0] for f in paths[: args.check]}
    refs = {os.path.splitext(os.path.basename(f))[0]: reference(f, args.size) for f in paths[: args.check]}
    got = {KERAS: pictures(kds, kstems, wanted),
           PASS: pictures(ours_ds(data[PASS], True), None, wanted),
           SHORT: pictures(ours_ds(data[SHORT], True), None, wanted)}
    quality = {k: float(np.mean([psnr(v[s], refs[s]) for s in wanted])) for k, v in got.items()}
    same_as_keras = sum(bool(np.allclose(got[PASS][s], got[KERAS][s], atol=1e-3)) for s in wanted)
    floor = decode_floor(paths, args.batch)

    mb = {k: sum(os.path.getsize(f) for f in files_under(d) if f.endswith(".tfrecord")) / 1e6
          for k, d in data.items()}
    src_mb = sum(os.path.getsize(f) for f in paths) / 1e6
    print(f"\n{args.images} JPEGs {args.min_side}-{args.max_side} px ({src_mb:.0f} MB) -> "
          f"{args.size}x{args.size}, batch {args.batch}, {len(os.sched_getaffinity(0))} CPUs, "
          f"medians of {args.rounds} rounds, load average {os.getloadavg()[0]:.1f}")
    for mode in modes:
        print(f"  {mode}:")
        for name in pipes:
            print(f"    {name:36s} {rate[mode, name]:7.1f} images/s  {ratio[mode, name]:5.2f}x"
                  f"   CPU {cpu[mode, name]:.2f} ms/image   start-up {1000 * start[mode, name]:4.0f} ms")
    print(f"  read + decode of the original JPEGs alone: CPU {floor:.2f} ms/image (the floor for any "
          f"pipeline that decodes them each epoch)")
    print(f"  picture quality, PSNR vs an anti-aliased resize of the original ({len(wanted)} images): "
          + ", ".join(f"{name.split(',')[-1].strip()} {quality[name]:.1f} dB" for name in pipes)
          + f"; pass-through equals keras on {same_as_keras} of {len(wanted)} images (the others shrink "
          "2x or more, where ours averages (area) and Keras samples (bilinear))")
    keras_epoch = args.images / rate[modes[-1], KERAS]
    print(f"  one-off build: pass-through {build_s[PASS]:.1f} s ({mb[PASS]:.0f} MB of shards), "
          f"--short-side {args.size} {build_s[SHORT]:.1f} s ({mb[SHORT]:.0f} MB) = "
          f"{build_s[SHORT] / keras_epoch:.1f} keras epochs")
    if len(modes) == 2:  # which pipeline loses when the bytes come from the disk (same round: same load)
        print("  cold/warm, each pipeline against itself: " + ", ".join(
            f"{name.split(',')[-1].strip()} {med(c / w for c, w in zip(rates['cold', name], rates['warm', name])):.2f}x"
            for name in pipes))
    for mode in modes:
        r = ratio[mode, SHORT]
        print(f"  {mode}: --short-side {args.size} shards vs keras {r:.2f}x "
              f"(target >= {TARGET}x: {'met' if r >= TARGET else 'NOT met'})")


def minimal_compare(args, short_dir: str) -> None:
    """Ours vs the minimal pipeline on the --short-side shards, pinned to 1 CPU and to all; prints its lines."""
    allowed = sorted(os.sched_getaffinity(0))
    core_counts = sorted({1, len(allowed)})
    load = [os.getloadavg()[0]]
    results = {}
    for cores in core_counts:
        results[cores] = pinned_run(allowed[:cores], "minimal.py",
                                    ["--data", short_dir, "--cores", str(cores), "--rounds", str(args.rounds),
                                     "--size", str(args.size), "--batch", str(args.batch)])
        load.append(os.getloadavg()[0])
    name = {"eval": "eval", "train": f"train {minimal.AUGMENT}"}
    print(f"\nours vs minimal (TFRecordDataset -> parallel map -> batch -> prefetch) on the --short-side "
          f"{args.size} shards, {args.images} images, medians of {args.rounds} alternating rounds, "
          f"load average {min(load):.1f}-{max(load):.1f} on {len(allowed)} CPUs")
    for cores, res in results.items():
        for path in minimal.PATHS:
            r = res[path]
            cells = "   ".join(f"{k} {r[k]['rate']:7.1f} images/s CPU {r[k]['cpu_ms']:.2f} ms/image busy "
                               f"{100 * r[k]['util']:3.0f}%" for k in ("ours", "minimal"))
            print(f"  {cores} core{'s' if cores > 1 else ' '} {name[path]:15s} {cells}   ours/minimal "
                  f"{r['ratio']:.2f}x (CPU per image {r['cpu_ratio']:.2f}x)")
    for cores, res in results.items():
        for path in minimal.PATHS:
            r = res[path]["ratio"]
            print(f"  {name[path]}, {cores} core{'s' if cores > 1 else ''}: ours/minimal {r:.3f}x "
                  f"(target >= {MINIMAL_TARGET}x: {'met' if r >= MINIMAL_TARGET else 'NOT met'})")
    busy = min(res[path]["ours"]["util"] for res in results.values() for path in minimal.PATHS)
    print(f"  ours' cores busy in steady state: lowest {100 * busy:.0f}% (target >= {100 * BUSY_TARGET:.0f}%: "
          f"{'met' if busy >= BUSY_TARGET else 'NOT met'}"
          + (f"; load average {max(load):.1f} on {len(allowed)} CPUs: other jobs hold the cores)"
             if max(load) > len(allowed) / 2 else ")"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_image_flags(p, images=2000, max_side=500)
    p.add_argument("--rounds", type=int, default=5, help="timed passes per pipeline (default 5)")
    p.add_argument("--mode", choices=("cold", "warm", "both"), default="both",
                   help="page cache evicted before each pass (cold), kept (warm), or both (default)")
    p.add_argument("--compare", choices=("keras", "minimal", "both"), default="both",
                   help="baselines to run: keras image_dataset_from_directory, the minimal tf.data "
                        "pipeline on 1 and all CPUs, or both (default)")
    p.add_argument("--check", type=int, default=200, help="images compared for picture quality (default 200)")
    p.add_argument("--seed", type=int, default=0, help="image generation seed")
    args = p.parse_args(argv)
    too_few = minimal.too_few_images(args.images, args.batch)
    if too_few:  # before minutes of writing images and shards
        print(f"error: {too_few}", file=sys.stderr)
        return 2

    with work_dir(args.workdir, "bench-pipeline-") as work:
        folder = os.path.join(work, "images")
        paths = make_images(folder, args.images, args.min_side, args.max_side, args.seed)
        data = {PASS: os.path.join(work, "pass"), SHORT: os.path.join(work, "short")}
        build_s = {PASS: build(folder, data[PASS]), SHORT: build(folder, data[SHORT], "--short-side", str(args.size))}
        if args.compare in ("keras", "both"):
            keras_compare(args, folder, paths, data, build_s)
        if args.compare in ("minimal", "both"):
            minimal_compare(args, data[SHORT])
    return 0


if __name__ == "__main__":
    sys.exit(main())
