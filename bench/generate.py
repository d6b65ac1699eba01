#!/usr/bin/env python
"""Benchmark generate_dataset's writer against baselines measured in the same run.

  (1) pass-through (bytes copied untouched after a validity check) vs a plain
      copy of the same files' bytes into one file.            target: >= 0.5x
  (2) --max-side 256 (worker processes) vs ONE process doing OpenCV
      decode + resize + encode on the same files.             target: >= 1.6x on 2 cores

Synthetic, photo-like JPEGs (smooth gradients + blobs + sensor noise, 300-800 px)
are written once into bench/out/images (gitignored). Prints ratios, not pass/fail.

    python bench/generate.py [--n 2000] [--workers N]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

OUT = os.path.join(ROOT, "bench", "out")
IMAGES = os.path.join(OUT, "images")


def photo_like(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Smooth colour field + a few soft blobs + noise: compresses like a photo."""
    small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    img = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC).astype(np.float32)
    for _ in range(6):
        c = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        cv2.circle(img, c, int(rng.integers(10, max(11, min(h, w) // 3))), rng.integers(0, 256, 3).tolist(), -1)
    img = cv2.GaussianBlur(img, (0, 0), 3)
    img += rng.normal(0, 12, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_images(n: int, classes: int = 5, seed: int = 0) -> list[str]:
    marker = os.path.join(IMAGES, f".done-{n}")
    if not os.path.exists(marker):
        shutil.rmtree(IMAGES, ignore_errors=True)
        rng = np.random.default_rng(seed)
        for i in range(n):
            d = os.path.join(IMAGES, f"class{i % classes}")
            os.makedirs(d, exist_ok=True)
            h, w = (int(x) for x in rng.integers(300, 801, 2))
            cv2.imwrite(os.path.join(d, f"{i:05d}.jpg"), photo_like(rng, h, w), [cv2.IMWRITE_JPEG_QUALITY, 90])
        open(marker, "w").close()
    return sorted(os.path.join(dp, f) for dp, _, fs in os.walk(IMAGES) for f in fs if f.endswith(".jpg"))


def plain_copy(files: list[str], dst: str) -> float:
    t = time.perf_counter()
    with open(dst, "wb") as out:
        for p in files:
            with open(p, "rb") as f:
                out.write(f.read())
    return time.perf_counter() - t


def one_process_resize(files: list[str], side: int) -> float:
    t = time.perf_counter()
    for p in files:
        img = cv2.imdecode(np.fromfile(p, np.uint8), cv2.IMREAD_COLOR)
        s = side / max(img.shape[:2])
        if s < 1:
            img = cv2.resize(img, (round(img.shape[1] * s), round(img.shape[0] * s)), interpolation=cv2.INTER_AREA)
        cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return time.perf_counter() - t


def ours(out: str, workers: int, **kw) -> float:
    from utils.sources.folder import FolderSource
    from utils.generate.writer import write_dataset

    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    write_dataset(FolderSource(IMAGES), out, name=os.path.basename(out), workers=workers, progress=False,
                  log=lambda m: None, **kw)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000, help="number of synthetic JPEGs (default 2000)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds; medians are reported (default 3)")
    ap.add_argument("--workers", type=int, default=os.cpu_count(), help="writer workers (default: CPU count)")
    a = ap.parse_args()

    files = make_images(a.n)
    mb = sum(os.path.getsize(p) for p in files) / 1e6
    print(f"{len(files)} JPEGs, {mb:.1f} MB, {os.cpu_count()} CPU(s), workers={a.workers}")
    plain_copy(files, os.path.join(OUT, "copy.bin"))                  # warm the page cache
    # Alternate the contenders over a few rounds and take medians: the machine is
    # shared and noisy. sync before each timing so neither side pays for the other's
    # dirty pages being written back (the copy writes 200+ MB just before ours).
    copies, pts, ones, rss = [], [], [], []
    for _ in range(a.rounds):
        os.sync()
        copies.append(plain_copy(files, os.path.join(OUT, "copy.bin")))
        os.sync()
        pts.append(ours(os.path.join(OUT, "passthrough"), a.workers))
        ones.append(one_process_resize(files, 256))
        os.sync()
        rss.append(ours(os.path.join(OUT, "resized"), a.workers, max_side=256))
    t_copy, t_pt, t_one, t_rs = (statistics.median(x) for x in (copies, pts, ones, rss))
    print(f"medians of {a.rounds} alternating rounds")
    print(f"plain copy        {len(files) / t_copy:8.0f} img/s {mb / t_copy:8.1f} MB/s")
    print(f"pass-through      {len(files) / t_pt:8.0f} img/s {mb / t_pt:8.1f} MB/s   "
          f"ratio vs copy {t_copy / t_pt:.2f}x (target >= 0.5x)")
    print(f"1-process resize  {len(files) / t_one:8.0f} img/s")
    print(f"--max-side 256    {len(files) / t_rs:8.0f} img/s   ratio vs 1 process {t_one / t_rs:.2f}x "
          f"(target >= 1.6x on 2 cores)")
    os.remove(os.path.join(OUT, "copy.bin"))


if __name__ == "__main__":
    main()
