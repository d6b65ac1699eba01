#!/usr/bin/env python
"""Benchmark generate_dataset.py --runner beam against --runner local in the same run.

Both build the same ~500 tiny (32-64 px) PNGs with --max-side 24 (the resize
path: the per-item work Beam spreads over its workers); beam runs the local
DirectRunner with 2 worker processes (direct_running_mode=multi_processing).
Each round is a fresh subprocess per runner, alternating; prints the medians
and the ratio beam/local of wall time (Beam's start-up included), and checks
that both wrote the same shard bytes.

--urls serves the same images from a local HTTP server (127.0.0.1, this
process) and builds from a URL list instead: each run downloads everything
into its own --out's cache, the local run in this machine's threads, the Beam
run in its workers (a download pipeline, then the write pipeline).

    python bench/beam_runner.py [--n 500] [--rounds 3] [--workers 2] [--urls]
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from http.server import SimpleHTTPRequestHandler

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.conftest import QuietHandler, random_image, serve, write_image  # noqa: E402


def make_images(root: str, n: int, classes: int = 5) -> None:
    for i in range(n):
        side = 32 + (i * 7) % 33
        write_image(os.path.join(root, f"class{i % classes}", f"{i:05d}.png"), random_image(i, side, side, blocky=False))


class QuietFiles(QuietHandler, SimpleHTTPRequestHandler):
    pass


@contextlib.contextmanager
def serve_list(src: str, list_path: str):
    """Serve `src` on 127.0.0.1 (stopped on leaving) and write a URL list of its images
    (id,url,one 0/1 column per class)."""
    with serve(functools.partial(QuietFiles, directory=src)) as srv:
        classes = sorted(os.listdir(src))
        with open(list_path, "w") as f:
            for c in classes:
                for n in sorted(os.listdir(os.path.join(src, c))):
                    flags = ",".join("1" if c == k else "0" for k in classes)
                    f.write(f"{c}-{n},{srv.base}/{c}/{n},{flags}\n")
        yield srv


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
    ap.add_argument("--urls", action="store_true", help="build from a URL list served on 127.0.0.1 (downloads included)")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "src")
        make_images(src, a.n)
        what = os.path.join(tmp, "list.txt") if a.urls else src
        local, beam = [], []
        with serve_list(src, what) if a.urls else contextlib.nullcontext():
            for _ in range(a.rounds):
                local.append(run(what, os.path.join(tmp, "local"), a.workers, beam=False))
                beam.append(run(what, os.path.join(tmp, "beam"), a.workers, beam=True))
        same = shard_digest(os.path.join(tmp, "local")) == shard_digest(os.path.join(tmp, "beam"))
    lm, bm = statistics.median(local), statistics.median(beam)
    kind = "URL list on 127.0.0.1" if a.urls else "image folder"
    print(f"{a.n} images ({kind}), --max-side 24, --workers {a.workers}, medians of {a.rounds} rounds "
          "(wall time, start-up included)")
    print(f"  local runner            {lm:6.2f} s")
    print(f"  beam DirectRunner x{a.workers}    {bm:6.2f} s")
    print(f"  beam / local            {bm / lm:6.2f}x wall time   (same shard bytes: {same})")


if __name__ == "__main__":
    main()
