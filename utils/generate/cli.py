"""generate_dataset.py's commands, given parsed arguments: build, verify, demo.

The script only parses flags (generate_dataset.py); everything it runs is here.
The stage modules are imported when a command runs: numpy, Pillow and the
sources cost ~0.4 s that `--help` and a bad flag should not pay.
"""
from __future__ import annotations

import argparse
import os
import sys

from utils.errors import UsageError, import_tensorflow_quietly


def run(command: str, args: argparse.Namespace) -> int:
    """Run one command; returns the exit code.

    Args:
        command: "build" (SOURCE --out DIR ...), "verify" (DIR ...) or "demo"
            (args.source: the folder to draw the demo images into, args.out).

    Raises:
        UsageError: a flag value out of range.
    """
    return {"build": build, "verify": verify, "demo": demo}[command](args)


def build(args: argparse.Namespace) -> int:
    """SOURCE --out DIR: open the source and write the dataset."""
    if args.source is None:
        raise UsageError("SOURCE is missing (give it on the command line or as 'source:' in --config)")
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers must be at least 1, got {args.workers}")
    if args.concurrency is not None and args.concurrency < 1:
        raise UsageError(f"--concurrency must be at least 1, got {args.concurrency}")
    if args.timeout is not None and not args.timeout > 0:   # requests refuses 0 for every URL
        raise UsageError(f"--timeout must be a positive number of seconds, got {args.timeout}")
    from utils.generate.outdir import lock_out_dir
    from utils.generate.writer import write_dataset  # on use: see the module docstring
    from utils.sources import open_source

    shard_writer = _shard_writer(args)   # before the source: a bad Beam option costs no index
    name = os.path.basename(os.path.normpath(args.out))

    def run(out: str, source=None) -> dict:
        if source is None:
            source = open_source(args.kind, args.source, argparse.Namespace(**{**vars(args), "out": out}))
        if shard_writer is not None:   # a URL list: Beam's workers download it
            shard_writer.attach(source, out)
        val_fraction = args.val_fraction if args.val_fraction is not None else default_val_fraction(source, args.folds)
        manifest = write_dataset(source, out, name=name, val_fraction=val_fraction, folds=args.folds,
                                 fraction=args.fraction, shard_mb=args.shard_mb, max_side=args.max_side,
                                 short_side=args.short_side, max_pixels=args.max_pixels, dedupe=args.dedupe,
                                 strict=args.strict, seed=args.seed, workers=args.workers,
                                 progress=not args.no_progress, overwrite=args.overwrite, shard_writer=shard_writer)
        if args.val_fraction is None and val_fraction and "val" in manifest["splits"]:
            print(f"  val is {val_fraction:.0%} of the labelled samples by default (the source has no val split of "
                  "its own; --val-fraction 0 builds none)", file=sys.stderr)
        return manifest

    if getattr(shard_writer, "remote_out", None):   # gs://, s3://, ...: the state lives in a local mirror
        from utils.generate.remote import write_remote

        write_remote(args.out, args.overwrite, run)
    else:
        source = open_source(args.kind, args.source, args)   # checks the input; writes nothing
        with lock_out_dir(args.out):
            run(args.out, source)
    return 0


def _shard_writer(args: argparse.Namespace):
    """--runner: None (write_dataset's own local writer) or a Beam one.

    Raises:
        UsageError: --beam-option without --runner beam, or an option or runner Beam refuses.
    """
    runner, options = getattr(args, "runner", "local") or "local", getattr(args, "beam_option", None) or []
    if runner == "local":
        if options:
            raise UsageError("--beam-option needs --runner beam")
        return None
    from utils.generate.beam import BeamShardWriter
    from utils.generate.remote import check_out, is_local

    writer = BeamShardWriter(options, workers=args.workers, remote_out=None if is_local(args.out) else args.out)
    check_out(args.out)
    return writer


DEFAULT_VAL_FRACTION = 0.1  # --val-fraction when not given, for sources without a val split of their own


def default_val_fraction(source, folds: int) -> float | None:
    """The --val-fraction a build without the flag uses.

    DEFAULT_VAL_FRACTION, so that train.py can validate, unless the source has its
    own val split (a folder with train/ and val/, kept as it is), the dataset is
    K-fold (each fold is a validation set), or the folder is flat (unlabelled:
    everything is test). Unlabelled samples of any source stay test either way.
    """
    layout = getattr(source, "layout", None)  # only FolderSource dictates train/val
    if folds >= 2 or layout == "flat":
        return None
    if layout == "splits" and os.path.isdir(os.path.join(source.root, "val")):
        return None
    return DEFAULT_VAL_FRACTION


def verify(args: argparse.Namespace) -> int:
    """verify DIR: 0 when intact, else 1 with the problems on stderr."""
    from utils.dataset.manifest import load_labels, load_manifest  # on use: see the module docstring
    from utils.generate import neardup
    from utils.generate.verify import verify_dataset

    if not 0 <= args.max_distance <= neardup.MAX_DISTANCE_LIMIT:
        raise UsageError(f"--max-distance must be in 0..{neardup.MAX_DISTANCE_LIMIT} bits, got {args.max_distance}")
    load_manifest(args.data)  # a wrong folder is one line at once, not after TensorFlow's import (seconds)
    import_tensorflow_quietly()  # verify decodes every image with TF
    hashes = [] if args.near_duplicates else None
    problems = verify_dataset(args.data, progress=not args.no_progress, hashes=hashes)
    if args.near_duplicates:
        n = neardup.report(hashes, load_labels(args.data), args.near_duplicates, args.max_distance)
        print(f"near-duplicates: {n['pairs']} pair(s) within {args.max_distance} bits, {n['cross_split']} across "
              f"splits, {n['label_conflicts']} with different labels -> {args.near_duplicates}")
    if problems:
        print(f"{args.data}: {len(problems)} problem(s):", file=sys.stderr)
        for line in problems[:200]:
            print(f"  {line}", file=sys.stderr)
        if len(problems) > 200:
            print(f"  ... and {len(problems) - 200} more", file=sys.stderr)
        return 1
    print(f"OK: {args.data} verified")
    return 0


def demo(args: argparse.Namespace) -> int:
    """No arguments: draw the demo images into args.source and build args.out from them."""
    from utils.generate.outdir import lock_out_dir
    from utils.generate.writer import write_dataset  # on use: see the module docstring
    from utils.sources.demo import draw_demo
    from utils.sources.folder import FolderSource

    with lock_out_dir(args.out):   # before drawing: two demo runs would draw into one folder
        write_dataset(FolderSource(draw_demo(args.source)), args.out, name="demo", val_fraction=0.2, shard_mb=1)
    return 0
