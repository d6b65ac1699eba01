"""Benchmark: what each training augmentation adds, in CPU ms per image, on a fixed number of cores.

The same `--short-side SIZE` shards (synthetic photo-like JPEGs, written and
built as bench/pipeline.py does) go through make_dataset(training=True,
augment=NAME), each NAME against augment=none as its baseline.

Isolation: every augmentation is measured in its OWN child process
(bench/pinned.py: pinned to `--cores` CPUs before its interpreter starts, so
TensorFlow sizes its thread pools for them), holding just two pipelines, NAME
and none. Measured in one process, a figure moved with the other pipelines
that process had run before (rotate 0.45-0.77, mixup 0.09-0.27 ms added in
runs of the same code); `--one-process` keeps that layout, to compare.

Each pass is a fresh iterator run to its end, so no prefetch buffer carries
work from one pass into the next one's CPU time. A pass costs a start-up
(iterator and function instantiation: ~0.6 s of CPU for RandAugment's 22
branch functions, ~40 ms for one XLA function) plus a cost per image, so each
pipeline runs, per round, a short pass (a quarter of the batches) and a long
one (`--epochs` epochs): the per-image figures are the DIFFERENCE of the two
(long - short over the extra images: the start-up and the end-of-pass
run-ahead cancel), the start-up is what the short pass spent beyond that.
The long pass is 8 epochs of 200 images: at 3, flip's quartiles spanned
-0.09 to +0.12 ms on a quiet machine, wider than its whole 0.05 target;
at 8 they span about 0.05 (run times: ~1 min an augmentation).
Rounds alternate the two pipelines ABBA (none first in even rounds, NAME first
in odd ones). Reported are medians over ALL rounds (none dropped) of:
  images/s     extra images / extra wall clock (a round whose long pass took no
               longer than its short one, under load, gives no rate)
  CPU ms/img   extra process CPU time (all threads) / extra images, decode included
  added        CPU ms/img minus augment=none's IN THE SAME ROUND, same process
  spread       the quartiles of the rounds' added figures (how steady it was)
  start-up     CPU ms of one pass beyond its images (once per iterator, i.e. per run)
next to albumentations' CPU ms/img for the same operation (measured on real
photos, 1 core; the issue's reference, albumentations is not a dependency)
and the target: added <= 2x albumentations (RandAugment <= 1.5 ms, MixUp and
CutMix <= 0.2 ms), and OpenCV's own kernels for flip, rotate and rrc (what
albumentations calls) timed in this run on the same photos and the first
CPU (bench/opencv_ref.py): the reference's machine is not this one.

Before the rounds every pipeline runs `--warmup` untimed passes: tracing
and XLA compilation are one-off costs, and RandAugment compiles each
of its 11 ops the first time a batch draws it (one pass of 12 batches misses
a given op with p = 0.1, and a compile in a timed pass costs more than the
pass), so the rounds time the steady state a training run sees.

make_dataset switches tf.data's autotuning model off (utils/input/records.
pipeline_options): it could leave a pinned core idle for a third of a pass,
and grow buffers as a pass goes, so that a short and a long pass ended with
different run-ahead (the long - short difference cancels only the same run-ahead).

    python bench/augment.py [--cores 1] [--images 200] [--epochs 8] [--rounds 9] [--warmup 2] [--only flip,color]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from image_flags import add_image_flags, work_dir  # noqa: E402  (bench/image_flags.py, next to this file)
from spread import quartiles  # noqa: E402  (bench/spread.py, next to this file)

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


def one_pass(ds) -> tuple[int, float, float]:
    """Run a fresh iterator over `ds` to its end -> (images, wall seconds, CPU seconds of this process)."""
    t, c = time.perf_counter(), time.process_time()
    n = 0
    for images, _ in ds:
        n += int(images.shape[0])
    return n, time.perf_counter() - t, time.process_time() - c


def measure(data: str, ops: list[str], args) -> dict:
    """In this process: none and every name of `ops`, alternating rounds -> {name: {per-round lists}}.

    Args:
        data: the dataset folder (its train split).
        ops: augmentation names, none not among them.
        args: the parsed flags (size, batch, images, epochs, rounds, warmup).
    Returns:
        {name: {"rate": [...], "cpu": [...], "added": [...], "startup": [...]}} for none and `ops`,
        one entry per round (rate: only the rounds that gave one).
    """
    from utils.input.pipeline import make_dataset

    short, steps = pass_batches(args)

    def dataset(name):
        ds = make_dataset(data, "train", image_size=args.size, batch_size=args.batch, training=True,
                          augment=name, repeat=True, drop_remainder=True)
        return ds.take(short), ds.take(steps)

    pipes = {name: dataset(name) for name in ["none", *ops]}
    for _ in range(args.warmup):  # tracing, XLA compilation: not per-image costs
        for pair in pipes.values():
            one_pass(pair[1])
    out = {k: no_rounds() for k in pipes}
    extra = (steps - short) * args.batch
    for r in range(args.rounds):
        this = {}
        # ABBA: none goes first in even rounds, last in odd ones
        for name in (list(pipes) if r % 2 == 0 else list(pipes)[::-1]):
            n0, wall0, cpu0 = one_pass(pipes[name][0])
            n1, wall1, cpu1 = one_pass(pipes[name][1])
            assert (n0, n1) == (short * args.batch, steps * args.batch), f"{name} yielded {n0}, {n1} images"
            ms = 1000.0 * (cpu1 - cpu0) / extra
            if wall1 > wall0:  # under load the long pass can end no later than the short one: no rate then
                out[name]["rate"].append(extra / (wall1 - wall0))
            out[name]["cpu"].append(ms)
            out[name]["startup"].append(1000.0 * cpu0 - ms * n0)
            this[name] = ms
        for name in pipes:
            out[name]["added"].append(this[name] - this["none"])
    return out


def pass_batches(args) -> tuple[int, int]:
    """(batches of the short pass, of the long one): `--epochs` epochs, and a quarter of that."""
    steps = args.epochs * args.images // args.batch
    return max(1, steps // 4), steps


def no_rounds() -> dict:
    """One pipeline's per-round lists, before the first round."""
    return {"rate": [], "cpu": [], "added": [], "startup": []}


def child_argv(args, data: str, ops: list[str]) -> list[str]:
    """The flags of a child measuring `ops` (and none) on `data`."""
    return ["--child", ",".join(ops), "--data", data, "--size", str(args.size), "--batch", str(args.batch),
            "--images", str(args.images), "--epochs", str(args.epochs), "--rounds", str(args.rounds),
            "--warmup", str(args.warmup)]


def print_table(results: dict, args, cpus: list[int], layout: str, opencv: dict[str, str]) -> None:
    """The augmentation table: one line per name, none first."""
    short, steps = pass_batches(args)
    med = statistics.median
    print(f"\n{args.images} JPEGs {args.min_side}-{args.max_side} px as --short-side {args.size} shards -> "
          f"{args.size}x{args.size}, batch {args.batch}, {len(cpus)} core(s) {cpus}, passes of "
          f"{short * args.batch} and {steps * args.batch} images, medians of {args.rounds} ABBA rounds, "
          f"{layout}, load average {os.getloadavg()[0]:.1f}")
    print(f"| augment= | ours img/s ({len(cpus)} core) | ours CPU ms/img | added ms/img | spread (quartiles) "
          f"| target added | albumentations, same op, 1 core | OpenCV here, 1 core | start-up CPU ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        op, ref, target = REFERENCE[name]
        a = med(r["added"])
        lo, hi = quartiles(r["added"])
        verdict = "-" if target is None else f"<= {target} {'met' if a <= target else 'NOT met'}"
        rate = f"{med(r['rate']):,.0f}" if r["rate"] else "- (load)"
        print(f"| {name} | {rate} | {med(r['cpu']):.2f} | {'-' if name == 'none' else f'{a:.3f}'} | "
              f"{'-' if name == 'none' else f'{lo:.3f} to {hi:.3f}'} | {verdict} | "
              f"{op if ref is None else f'{op} {ref} ms'} | {opencv.get(name, '-')} | "
              f"{med(r['startup']):,.0f} |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cores", type=int, default=1, help="CPUs each measuring process may use (default 1)")
    add_image_flags(p, images=200, max_side=400)
    p.add_argument("--epochs", type=int, default=8,
                   help="epochs of the long timed pass; the short one is a quarter of it (default 8)")
    p.add_argument("--rounds", type=int, default=9, help="timed ABBA rounds per augmentation (default 9)")
    p.add_argument("--warmup", type=int, default=2,
                   help="untimed passes per pipeline before the rounds (default 2: every RandAugment op compiled)")
    p.add_argument("--only", default=None, help="comma list of augmentations to time (default: all)")
    p.add_argument("--one-process", action="store_true",
                   help="measure every augmentation in one child process, as this bench used to "
                        "(default: a child per augmentation, each with its own none baseline)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)  # internal: measure these names, print JSON
    p.add_argument("--data", default=None, help=argparse.SUPPRESS)  # internal: the child's dataset folder
    args = p.parse_args(argv)
    if args.child is not None:
        print(json.dumps(measure(args.data, args.child.split(","), args)))
        return 0
    names = [n for n in REFERENCE if n != "none"]
    if args.only:
        wanted = [s.strip() for s in args.only.split(",") if s.strip()]
        bad = [s for s in wanted if s not in REFERENCE]
        if bad:
            p.error(f"unknown augmentation(s) {', '.join(bad)}; valid: {', '.join(REFERENCE)}")
        names = [s for s in wanted if s != "none"]
        if not names:
            p.error("--only: name at least one augmentation besides none (none is every child's baseline)")
    cpus = sorted(os.sched_getaffinity(0))[:max(1, args.cores)]

    sys.path.insert(0, HERE)
    from pipeline import build, make_images  # bench/pipeline.py: the one copy of the photo maker
    from pinned import pinned_run

    with work_dir(args.workdir, "bench-augment-") as work:
        folder = os.path.join(work, "images")
        data = os.path.join(work, "short")
        if not os.path.isfile(os.path.join(data, "manifest.json")):
            with contextlib.redirect_stderr(io.StringIO()):
                make_images(folder, args.images, args.min_side, args.max_side, seed=0)
            build(folder, data, "--short-side", str(args.size))
        if args.one_process:
            results = pinned_run(cpus, "augment.py", child_argv(args, data, names))
            layout = "all in one process"
        else:
            results = {"none": no_rounds()}
            for name in names:
                got = pinned_run(cpus, "augment.py", child_argv(args, data, [name]))
                results[name] = got[name]
                for key, values in got["none"].items():  # none's line: its rounds in every child
                    results["none"][key] += values
            layout = "a process per augmentation"
        from opencv_ref import reference   # bench/opencv_ref.py

        print_table(results, args, cpus, layout, reference(folder, args.size, cpus[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
