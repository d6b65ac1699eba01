#!/usr/bin/env python
"""Benchmark generate_dataset.py --runner beam against --runner local in the same run.

Both build the same ~500 tiny (32-64 px) PNGs with --max-side 24 (the resize
path: the per-item work Beam spreads over its workers); beam runs the local
DirectRunner with 2 worker processes (direct_running_mode=multi_processing).
Each round is a fresh subprocess per runner, alternating; prints the medians
and the ratio beam/local of wall time (Beam's start-up included), and checks
that both wrote the same shard bytes.

    python bench/beam_runner.py [--n 500] [--rounds 3] [--workers 2]
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.conftest import random_image, write_image  # noqa: E402


def make_images(root: str, n: int, classes: int = 5) -> None:
    for i in range(n):
        side = 32 + (i * 7) % 33
        write_image(os.path.join(root, f"class{i % classes}", f"{i:05d}.png"), random_image(i, side, side, blocky=False))


def run(src: str, out: str, workers: int, beam: bool) -> float:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, os.path.join(ROOT, "generate_dataset.py"), src, "--out", out, "--no-progress",
           "--max-side", "24", "--shard-mb", "0.05", "--workers", str(workers), "--val-fraction", "0.1"]
    if beam:
        cmd += ["--runner", "beam"]
    t = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
    return time.perf_counter() - t


def shard_digest(out: str) -> str:
    h = hashlib.sha256()
    for n in sorted(os.listdir(out)):
        if n.endswith(".tfrecord"):
            h.update(open(os.path.join(out, n), "rb").read())
    return h.hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=500, help="images (default 500)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    ap.add_argument("--workers", type=int, default=2, help="--workers for both runners (default 2)")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "src")
        make_images(src, a.n)
        local, beam = [], []
        for _ in range(a.rounds):
            local.append(run(src, os.path.join(tmp, "local"), a.workers, beam=False))
            beam.append(run(src, os.path.join(tmp, "beam"), a.workers, beam=True))
        same = shard_digest(os.path.join(tmp, "local")) == shard_digest(os.path.join(tmp, "beam"))
    lm, bm = statistics.median(local), statistics.median(beam)
    print(f"{a.n} images, --max-side 24, --workers {a.workers}, medians of {a.rounds} rounds (wall time, start-up included)")
    print(f"  local runner            {lm:6.2f} s")
    print(f"  beam DirectRunner x{a.workers}    {bm:6.2f} s")
    print(f"  beam / local            {bm / lm:6.2f}x wall time   (same shard bytes: {same})")


if __name__ == "__main__":
    main()
