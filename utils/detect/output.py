"""What detect.py writes: the prediction CSV in one of its formats, the skipped list, sidecar paths.

  probs       id + one probability column per class
  label       id,label (the most likely class)
  topk        id + k (name, score) pairs, best first
  multilabel  id + the space-separated classes at or above their thresholds
              (`--ids`: class indices under `id,attribute_ids`, the iMet submission)
  binary      id + 0/1 per class
  cdiscount   _id,category_id (the Cdiscount submission)

Every file is written atomically: a half-written submission never replaces a good one.
"""
from __future__ import annotations

import os
import sys

import numpy as np

from utils.detect.thresholds import DEFAULT, passes
from utils.errors import UsageError
from utils.files import atomic_write_csv

FORMATS = ("probs", "label", "topk", "multilabel", "binary", "cdiscount")
MAX_LISTED_SKIPS = 20    # skipped inputs echoed on stderr; the full list is in the CSV


def header_and_formatter(fmt: str, class_names: list[str], *, k: int = 5, thresholds=None,
                         ids: bool = False, at_least_one: bool = False):
    """The CSV layout of one --format.

    Returns:
        (header cells, a function probs [K] -> the cells after the id).
    Raises:
        UsageError: an unknown format.
    """
    if fmt not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    names = list(class_names)
    cuts = thresholds if thresholds is not None else [DEFAULT] * len(names)

    def above(p):
        on = np.nonzero(passes(p, cuts))[0]
        if at_least_one and not len(on):
            on = [int(np.argmax(p))]
        return on

    if fmt == "probs":
        return ["id"] + names, lambda p: [f"{v:.6g}" for v in p]
    if fmt == "label":
        return ["id", "label"], lambda p: [names[int(np.argmax(p))]]
    if fmt == "cdiscount":
        return ["_id", "category_id"], lambda p: [names[int(np.argmax(p))]]
    if fmt == "topk":
        kk = max(1, min(k, len(names)))
        head = ["id"] + [c for i in range(1, kk + 1) for c in (f"label_{i}", f"score_{i}")]

        def topk(p):
            top = np.argsort(-p, kind="stable")[:kk]
            return [c for i in top for c in (names[i], f"{p[i]:.6g}")]
        return head, topk
    if fmt == "binary":
        return ["id"] + names, lambda p: [str(int(v)) for v in passes(p, cuts)]
    # multilabel
    if ids:
        return ["id", "attribute_ids"], lambda p: [" ".join(str(int(i)) for i in above(p))]
    return ["id", "labels"], lambda p: [" ".join(names[int(i)] for i in above(p))]


def write_rows(path: str, header: list[str], fmt_row, rows) -> int:
    """Stream Rows into the CSV at `path`; returns the number of rows written."""
    return atomic_write_csv(path, header, ([r.id] + fmt_row(r.probs) for r in rows))


def sidecar(out_path: str, suffix: str) -> str:
    """predictions.csv -> predictions<suffix> (skipped list, eval folder beside the output)."""
    stem = out_path[:-4] if out_path.lower().endswith(".csv") else out_path
    return stem + suffix


def write_skipped(path: str, skipped: list[tuple[str, str]]) -> None:
    """PREFIX.skipped.csv: `id,reason`, one line per input that gave no row."""
    atomic_write_csv(path, ["id", "reason"], skipped)


def report_skipped(out: str, skipped: list[tuple[str, str]]) -> None:
    """PREFIX.skipped.csv beside `out` and the first skips on stderr; no skips: no (stale) file."""
    path = sidecar(out, ".skipped.csv")
    if not skipped:
        if os.path.isfile(path):
            os.remove(path)          # a stale list from an earlier run would mislead
        return
    write_skipped(path, skipped)
    for sid, reason in skipped[:MAX_LISTED_SKIPS]:
        print(f"skipped {sid}: {reason}", file=sys.stderr)
    more = len(skipped) - MAX_LISTED_SKIPS
    print(f"skipped {len(skipped)} input(s){f' ({more} not shown)' if more > 0 else ''}: see {path}", file=sys.stderr)
