"""What detect.py writes: the prediction CSV in one of its formats, the skipped list, sidecar paths.

  probs       id + one probability column per class
  label       id,label (the most likely class)
  topk        id + k (name, score) pairs, best first
  multilabel  id + the space-separated classes at or above their thresholds
              (`--ids`: class indices under `id,attribute_ids`, the iMet submission)
  binary      id + 0/1 per class
  cdiscount   _id,category_id (the Cdiscount submission)

Every file is written atomically: a half-written submission never replaces a good one.
Plain prediction streams into OUT.partial with checkpoints in OUT.partial.json
(PartialCsv), so `--resume` continues a killed run; OUT appears by one rename at the end.
"""
from __future__ import annotations

import csv
import io
import json
import os
import sys
import time

import numpy as np

from utils.detect.thresholds import DEFAULT, passes
from utils.errors import UsageError
from utils.files import atomic_write_csv, atomic_write_json

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


CHECKPOINT_ROWS = 1000      # rows between checkpoints (also every CHECKPOINT_SECONDS)
CHECKPOINT_SECONDS = 10.0


class PartialCsv:
    """The prediction CSV as OUT.partial, checkpointed, renamed to OUT when complete.

    A checkpoint (OUT.partial.json, atomic) records what the run is (`run`), the
    byte length of the rows flushed and fsync'ed so far, the input position
    after the last of them (Row.end), the skips before that position and the
    caller's running state (the Cdiscount prior). A resumed run cuts the partial
    file back to that length (a kill -9 may leave a torn row after it) and goes on
    from the position; rows are a pure function of the inputs, so the result is
    a clean run's.
    """

    def __init__(self, out: str, header: list[str], run: dict, *, resume: bool) -> None:
        """Open OUT.partial: fresh, or (resume) as the last checkpoint left it.

        Raises:
            UsageError: --resume over a partial run with other arguments.
        """
        self.out, self.partial, self.state_path = out, out + ".partial", out + ".partial.json"
        state = None
        if resume:
            state = self._load(run)
            if state is None:
                print(f"note: no unfinished run for {out} to resume: starting from the beginning", file=sys.stderr)
        if state is None:
            state = {"run": run, "bytes": 0, "rows": 0, "samples": 0, "skipped": [], "carry": {}}
            self.f = open(self.partial, "wb")
            self._write_cells(header)
            state["bytes"] = self.f.tell()
        else:
            self.f = open(self.partial, "r+b")
            self.f.truncate(state["bytes"])
            self.f.seek(state["bytes"])
            print(f"resuming {out} after {state['rows']} rows", file=sys.stderr)
        self.state = state
        self.rows = state["rows"]
        self._last = time.monotonic()

    def _load(self, run: dict) -> dict | None:
        if not (os.path.isfile(self.state_path) and os.path.isfile(self.partial)):
            return None
        try:
            with open(self.state_path) as f:
                state = json.load(f)
        except ValueError:
            return None
        if state.get("run") != run:
            raise UsageError(f"the unfinished {self.partial} was written with other models, inputs or format "
                             "options: rerun them, or drop --resume to start over")
        if os.path.getsize(self.partial) < state["bytes"]:
            return None
        return state

    @property
    def start(self) -> int:
        """Input samples the checkpoint covers (predict_stream's `start`)."""
        return int(self.state["samples"])

    @property
    def skipped(self) -> list[tuple[str, str]]:
        return [tuple(x) for x in self.state["skipped"]]

    @property
    def carry(self) -> dict:
        """The caller's running state as of the checkpoint (a copy to update)."""
        return dict(self.state["carry"])

    def _write_cells(self, cells) -> None:
        buf = io.StringIO()
        csv.writer(buf).writerow(cells)
        self.f.write(buf.getvalue().encode("utf-8"))

    def write(self, cells, end: int, checkpoint) -> None:
        """One row; every CHECKPOINT_ROWS rows or CHECKPOINT_SECONDS, `checkpoint(end)` -> (skips, carry)."""
        self._write_cells(cells)
        self.rows += 1
        if self.rows % CHECKPOINT_ROWS == 0 or time.monotonic() - self._last > CHECKPOINT_SECONDS:
            skips, carry = checkpoint(end)
            self.save(end, skips, carry)

    def save(self, end: int, skips, carry: dict) -> None:
        """Flush the rows to the disk, then record them: the checkpoint never names unwritten rows."""
        self.f.flush()
        os.fsync(self.f.fileno())
        self.state.update(bytes=self.f.tell(), rows=self.rows, samples=int(end),
                          skipped=[list(x) for x in skips], carry=carry)
        atomic_write_json(self.state_path, self.state, indent=None)
        self._last = time.monotonic()

    def finish(self) -> int:
        """All rows written: OUT.partial becomes OUT in one rename; returns the row count."""
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
        os.replace(self.partial, self.out)
        if os.path.exists(self.state_path):
            os.remove(self.state_path)
        return self.rows

    def close(self) -> None:
        """Stop without finishing (an error): the partial file and its checkpoint stay for --resume."""
        if not self.f.closed:
            self.f.close()
