#!/usr/bin/env python
"""generate_dataset.py: images in any supported shape -> verified, sharded TFRecords.

    python generate_dataset.py                          # the demo: draws data/demo_src, builds data/demo
    python generate_dataset.py SOURCE --out data/NAME   # folder, labels CSV, multi-channel, BSON, URL list
    python generate_dataset.py verify data/NAME         # re-read and check everything

This script only parses flags; utils/generate/cli.py runs the command.
"""
from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.abspath(__file__))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from utils.errors import OneLineParser, UsageError, read_yaml_mapping, run_cli  # noqa: E402
from utils.generate import cli  # noqa: E402

DEMO_SRC = os.path.join(ROOT, "data", "demo_src")
DEMO_OUT = os.path.join(ROOT, "data", "demo")

DESCRIPTION = """\
Convert images into sharded TFRecords (schema v1) + manifest.json, labels.json, skipped.csv.

SOURCE kinds (detected unless --kind says):
  folder        DIR/<class>/*  or  DIR/train/<class>/*, DIR/val/<class>/*, DIR/test/*
  csv           a flat image folder + --labels CSV (id,label  or  id,attribute_ids "3 17 42")
  multichannel  a folder of grayscale planes {id}_w1.png ... + --channels w1,...,w6
  bson          a Cdiscount-style BSON dump (.bson); optional --categories CSV
  urls          a list "id,url,l0,...,l12" (or "id,url" for a test list), downloaded
                into OUT/cache (a rerun requests nothing it already has)

Original image bytes are copied untouched after a validity check unless
--max-side or --short-side asks for a resize (aspect kept, EXIF orientation
honoured, re-encoded). Training at 224 px? --short-side 224 (or a little more
for random crops) stores every pixel the model can use, and each epoch then
decodes 2-3x fewer pixels than from the originals (bench/pipeline.py).
Animated images (GIF, WebP, APNG) keep their first frame only. Corrupt, truncated,
empty, non-image and oversized inputs are skipped and listed in OUT/skipped.csv
with the reason; records + skipped == inputs. A killed run resumes where it
stopped when rerun with the same arguments.

  python generate_dataset.py verify data/NAME   re-reads every shard: sha256,
      counts, labels, and decodes every image (exit 1 with a report if anything is off).
"""


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="generate_dataset.py", description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="With no arguments: draws a small demo image set into data/demo_src and builds data/demo.")
    p.add_argument("source", metavar="SOURCE", help="image folder, .bson file or URL list (see above)")
    p.add_argument("--out", required=True, metavar="DIR", help="output dataset folder, e.g. data/NAME")
    p.add_argument("--kind", choices=["folder", "csv", "bson", "urls", "multichannel"],
                   help="source kind (default: detected from SOURCE)")
    p.add_argument("--labels", metavar="CSV", help="labels CSV for a flat image folder: id,label or id,attribute_ids")
    p.add_argument("--label-names", metavar="FILE|a,b,c",
                   help="readable class names: a file (csv: labels.csv of iMet; urls: one name per line) "
                        "or a comma-separated list (URL lists)")
    p.add_argument("--label-mode", choices=("auto", "single", "multi"), default="auto",
                   help="how to read the --labels column: auto (multi-label when the column is attribute_ids/"
                        "labels/tags or a value holds spaces), single (one label per row, spaces allowed in "
                        "class names), multi (space-separated labels)")
    p.add_argument("--channels", metavar="S1,S2,...",
                   help="multi-channel: file-name suffixes of the planes, in order, e.g. w1,w2,w3,w4,w5,w6")
    p.add_argument("--categories", metavar="CSV",
                   help="BSON: category_names.csv; fixes the class list to every category and keeps readable names")
    p.add_argument("--val-fraction", type=float, metavar="F",
                   help="put this fraction of the non-test samples in val, stratified by class and grouped by "
                        "source id (default: keep the source's own val split, else 0.1 for labelled samples "
                        "without --folds; 0: no val)")
    p.add_argument("--folds", type=int, default=0, metavar="K",
                   help="split train into K stratified, grouped folds; each train shard holds one fold (default 0: none)")
    p.add_argument("--fraction", type=float, metavar="F",
                   help="keep only a stratified fraction of the samples, for quick experiments (default: all)")
    p.add_argument("--shard-mb", type=float, default=150, metavar="MB",
                   help="largest shard size in MB, about (default 150): each split is cut into "
                        "the fewest shards of one size under it")
    p.add_argument("--max-side", type=int, metavar="N",
                   help="resize so the longer side is at most N pixels and re-encode (default: bytes untouched)")
    p.add_argument("--short-side", type=int, metavar="N",
                   help="resize so the shorter side is at most N pixels and re-encode: the smallest copy that "
                        "still fills an N x N model input (default: bytes untouched; with --max-side both hold)")
    p.add_argument("--max-pixels", type=int, default=100_000_000, metavar="N",
                   help="refuse images whose header claims more pixels than this (default 100,000,000)")
    p.add_argument("--dedupe", action="store_true",
                   help="drop exact duplicate images (same content hash); listed in skipped.csv as 'duplicate of KEY'")
    p.add_argument("--strict", action="store_true",
                   help="stop at the first input the source cannot use (label not in the list, CSV row without "
                        "image, image without row, malformed URL line, ...); unreadable images are still skipped")
    p.add_argument("--seed", type=int, default=0, help="seed for splits, folds, fraction and shuffling (default 0)")
    p.add_argument("--workers", type=int, metavar="N", help="processes for --max-side/--short-side resizing (default: CPU count); pass-through runs in one process, which measured faster")
    p.add_argument("--concurrency", type=int, metavar="N", help="URL lists: parallel downloads (default 16)")
    p.add_argument("--timeout", type=float, metavar="S", help="URL lists: per-request timeout in seconds (default 10)")
    p.add_argument("--runner", choices=("local", "beam"), default="local",
                   help="who writes the shards: local (this machine's processes) or beam (Apache Beam: the same "
                        "plan and the same bytes; locally the DirectRunner with --workers processes, or any runner "
                        "--beam-option names)")
    p.add_argument("--beam-option", action="append", default=[], metavar="KEY=VALUE",
                   help="--runner beam: a Beam pipeline option, repeatable, e.g. runner=DataflowRunner, "
                        "project=P, region=R, temp_location=gs://B/tmp, flink_master=HOST:8081")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a dataset already in --out (default: refuse a different one, skip the same one)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--config", metavar="FILE.yaml",
                   help="YAML file of defaults for these flags (keys as flag names, e.g. shard_mb: 50); flags override")
    return p


def verify_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="generate_dataset.py verify",
                      description="Re-read every shard of a dataset: sha256 and byte size, record and "
                                  "per-class counts, labels in range, and decode every image.")
    p.add_argument("data", metavar="DIR", help="dataset folder (with manifest.json)")
    p.add_argument("--near-duplicates", metavar="CSV",
                   help="also list pairs of near-identical images (64-bit dHash; resized, re-encoded or "
                        "re-exposed copies, not crops or flips) in CSV, flagging pairs across splits "
                        "(leakage) and with different labels; a product's own photos are left out")
    p.add_argument("--max-distance", type=int, default=4, metavar="BITS",
                   help="--near-duplicates: most differing hash bits for a pair (0 = exact pixel copies "
                        "at hash resolution; default 4)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def apply_config(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """--config FILE.yaml: its keys become parser defaults, so flags still win."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    if not known.config:
        return
    conf = read_yaml_mapping(known.config)
    valid = {action.dest for action in parser._actions}
    unknown = sorted(set(conf) - valid - {"help"})
    if unknown:
        raise UsageError(f"--config {known.config}: unknown keys {', '.join(unknown)}")
    for action in parser._actions:  # values from the file satisfy required options / positionals
        if action.dest in conf:
            action.required = False
            if not action.option_strings:
                action.nargs = "?"
    parser.set_defaults(**conf)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        command, args = "demo", argparse.Namespace(source=DEMO_SRC, out=DEMO_OUT)
    elif argv[0] == "verify":
        command, args = "verify", verify_parser().parse_args(argv[1:])
    else:
        parser = build_parser()
        apply_config(parser, argv)
        command, args = "build", parser.parse_args(argv)
    return cli.run(command, args)


if __name__ == "__main__":
    sys.exit(run_cli(main))
