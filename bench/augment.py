"""Benchmark: what each training augmentation adds, in CPU ms per image, on a fixed number of cores.

The same `--short-side SIZE` shards (synthetic photo-like JPEGs, written and
built as bench/pipeline.py does) go through make_dataset(training=True,
augment=NAME) for every NAME, and through augment=none as the baseline. Each
pass is a fresh iterator run to its end, so no prefetch buffer carries work
from one pipeline's pass into the next one's CPU time. A pass costs a start-up
(iterator and function instantiation: ~0.6 s of CPU for RandAugment's 22
branch functions, ~40 ms for one XLA function) plus a cost per image, so every
round runs each pipeline twice, a short pass (a quarter of the batches) and a
long one (`--epochs` epochs): the per-image figures are the DIFFERENCE of the
two (long - short over the extra images, the start-up and the end-of-pass
run-ahead cancel), the start-up is what the short pass spent beyond that.
Rounds alternate over the pipelines, in reversed order every other round
(load from other processes hits all alike); reported are medians over rounds of:
  images/s     extra images / extra wall clock (a round whose long pass took no
               longer than its short one, under load, gives no rate)
  CPU ms/img   extra process CPU time (all threads) / extra images, decode included
  added        CPU ms/img minus augment=none's IN THE SAME ROUND
  start-up     CPU ms of one pass beyond its images (once per iterator, i.e. per run)
next to albumentations' CPU ms/img for the same operation (measured on real
photos, 1 core; the issue's reference, albumentations is not a dependency)
and the target: added <= 2x albumentations (RandAugment <= 1.5 ms, MixUp and
CutMix <= 0.2 ms).

Before the rounds every pipeline runs `--warmup` untimed passes: tracing,
autotune and XLA compilation are one-off costs, and RandAugment compiles each
of its 11 ops the first time a batch draws it (one pass of 12 batches misses
a given op with p = 0.1, and a compile in a timed pass costs more than the
pass), so the rounds time the steady state a training run sees.

The process pins itself to `--cores` CPUs (sched_setaffinity, as taskset)
BEFORE TensorFlow starts, so TF sizes its thread pools for them.

    python bench/augment.py [--cores 1] [--images 200] [--epochs 3] [--rounds 3] [--warmup 2] [--only flip,color]
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
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from image_flags import add_image_flags, work_dir  # noqa: E402  (bench/image_flags.py, next to this file)

# name -> (albumentations' op, its CPU ms/img on 1 core, our target for the ADDED ms/img)
REFERENCE = {
    "none": ("-", None, None),
    "rrc": ("RandomResizedCrop", 0.065, 0.15),
    "flip": ("HorizontalFlip", 0.010, 0.05),
    "color": ("ColorJitter(.4,.4,.4,.1)", 0.30, 0.6),
    "rotate": ("Rotate(15)", 0.23, 0.5),
    "randaugment": ("-", None, 1.5),
    "mixup": ("-", None, 0.2),
    "cutmix": ("-", None, 0.2),
    "erasing": ("-", None, None),
}


def pin(cores: int) -> list[int]:
    """Restrict this process to its first `cores` allowed CPUs -> the CPUs kept."""
    cpus = sorted(os.sched_getaffinity(0))[:max(1, cores)]
    os.sched_setaffinity(0, cpus)
    return cpus


def one_pass(ds) -> tuple[int, float, float]:
    """Run a fresh iterator over `ds` to its end -> (images, wall seconds, CPU seconds of this process)."""
    t, c = time.perf_counter(), time.process_time()
    n = 0
    for images, _ in ds:
        n += int(images.shape[0])
    return n, time.perf_counter() - t, time.process_time() - c


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cores", type=int, default=1, help="CPUs this process may use (default 1)")
    add_image_flags(p, images=200, max_side=400)
    p.add_argument("--epochs", type=int, default=3,
                   help="epochs of the long timed pass; the short one is a quarter of it (default 3)")
    p.add_argument("--rounds", type=int, default=3, help="timed pairs of passes per pipeline (default 3)")
    p.add_argument("--warmup", type=int, default=2,
                   help="untimed passes per pipeline before the rounds (default 2: every RandAugment op compiled)")
    p.add_argument("--only", default=None, help="comma list of augmentations to time (default: all); none is always timed")
    args = p.parse_args(argv)
    names = list(REFERENCE)
    if args.only:
        wanted = [s.strip() for s in args.only.split(",") if s.strip()]
        bad = [s for s in wanted if s not in REFERENCE]
        if bad:
            p.error(f"unknown augmentation(s) {', '.join(bad)}; valid: {', '.join(REFERENCE)}")
        names = ["none"] + [s for s in wanted if s != "none"]
    cpus = pin(args.cores)

    sys.path.insert(0, HERE)
    from pipeline import build, make_images  # bench/pipeline.py: the one copy of the photo maker

    from utils.input.pipeline import make_dataset

    with work_dir(args.workdir, "bench-augment-") as work:
        folder = os.path.join(work, "images")
        data = os.path.join(work, "short")
        if not os.path.isfile(os.path.join(data, "manifest.json")):
            with contextlib.redirect_stderr(io.StringIO()):
                make_images(folder, args.images, args.min_side, args.max_side, seed=0)
            build(folder, data, "--short-side", str(args.size))
        steps = args.epochs * args.images // args.batch
        short = max(1, steps // 4)

        def dataset(name):
            ds = make_dataset(data, "train", image_size=args.size, batch_size=args.batch, training=True,
                              augment=name, repeat=True, drop_remainder=True)
            return ds.take(short), ds.take(steps)

        pipes = {name: dataset(name) for name in names}
        for _ in range(args.warmup):  # tracing, XLA compilation, autotune: not per-image costs
            for pair in pipes.values():
                one_pass(pair[1])
        rates = {k: [] for k in pipes}
        cpu = {k: [] for k in pipes}
        added = {k: [] for k in pipes}
        startup = {k: [] for k in pipes}
        extra = (steps - short) * args.batch
        for r in range(args.rounds):
            this = {}
            # the order flips every round: the first pass after another one's end must not always be the same
            for name in (list(pipes) if r % 2 == 0 else list(pipes)[::-1]):
                n0, wall0, cpu0 = one_pass(pipes[name][0])
                n1, wall1, cpu1 = one_pass(pipes[name][1])
                assert (n0, n1) == (short * args.batch, steps * args.batch), f"{name} yielded {n0}, {n1} images"
                ms = 1000.0 * (cpu1 - cpu0) / extra
                if wall1 > wall0:  # under load the long pass can end no later than the short one: no rate then
                    rates[name].append(extra / (wall1 - wall0))
                cpu[name].append(ms)
                startup[name].append(1000.0 * cpu0 - ms * n0)
                this[name] = ms
            for name in pipes:
                added[name].append(this[name] - this["none"])
        med = statistics.median
        print(f"\n{args.images} JPEGs {args.min_side}-{args.max_side} px as --short-side {args.size} shards -> "
              f"{args.size}x{args.size}, batch {args.batch}, {len(cpus)} core(s) {cpus}, passes of "
              f"{short * args.batch} and {steps * args.batch} images, medians of {args.rounds} rounds")
        print(f"| augment= | ours img/s ({len(cpus)} core) | ours CPU ms/img | added ms/img | target added "
              f"| albumentations, same op, 1 core | start-up CPU ms |")
        print("|---|---|---|---|---|---|---|")
        for name in pipes:
            op, ref, target = REFERENCE[name]
            a = med(added[name])
            verdict = "-" if target is None else f"<= {target} {'met' if a <= target else 'NOT met'}"
            rate = f"{med(rates[name]):,.0f}" if rates[name] else "- (load)"
            print(f"| {name} | {rate} | {med(cpu[name]):.2f} | "
                  f"{'-' if name == 'none' else f'{a:.3f}'} | {verdict} | "
                  f"{op if ref is None else f'{op} {ref} ms'} | {med(startup[name]):,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
