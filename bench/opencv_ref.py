"""OpenCV's own kernels for bench/augment.py's operations, timed here on the same photos and core.

albumentations does its flips, rotations and crops with these OpenCV calls,
on uint8 images. The issue's reference figures were measured on another
machine; timing the same kernels in the same run shows what this machine
gives them (one OpenCV thread, on the first of the bench's CPUs):

  flip    cv2.flip(img, 1) with p = 0.5 (HorizontalFlip's default), on the
          SIZE x SIZE image, uint8 and float32 (ours flips the float image)
  rotate  cv2.warpAffine, bilinear, BORDER_REFLECT_101, a uniform angle in
          +-15 degrees about the centre (Rotate(15)), SIZE x SIZE, uint8 and float32
  rrc     an Inception-style window (area 0.08-1, ratio 3/4-4/3) cut from the
          decoded short-side photo and cv2.resize INTER_LINEAR to SIZE x SIZE (uint8)

The per-image ms are medians of `rounds` timed loops over the photos.
"""
from __future__ import annotations

import math
import os
import statistics
import time

import cv2
import numpy as np


def _photos(folder: str, size: int, limit: int = 64) -> list[np.ndarray]:
    """The bench's JPEGs, decoded and resized to short side `size` (as the --short-side shards hold them)."""
    paths = sorted(os.path.join(dp, f) for dp, _, fs in os.walk(folder) for f in fs if f.endswith(".jpg"))[:limit]
    out = []
    for p in paths:
        img = cv2.imread(p, cv2.IMREAD_COLOR)
        s = size / min(img.shape[:2])
        out.append(cv2.resize(img, (max(size, round(img.shape[1] * s)), max(size, round(img.shape[0] * s))),
                              interpolation=cv2.INTER_AREA))
    return out


def _window(rng: np.random.Generator, h: int, w: int) -> tuple[int, int, int, int]:
    """An Inception-style crop window (y, x, height, width), the whole image after 10 misses."""
    for _ in range(10):
        area = h * w * rng.uniform(0.08, 1.0)
        ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        cw, ch = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
        if 0 < cw <= w and 0 < ch <= h:
            return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
    return 0, 0, h, w


def _ms_per_image(fn, images: list, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        for img in images:
            fn(img)
        times.append((time.perf_counter() - t) / len(images) * 1e3)
    return statistics.median(times)


def reference(folder: str, size: int, cpu: int, rounds: int = 7) -> dict[str, str]:
    """{augment name: "uint8 X / float32 Y ms"} for flip and rotate, {"rrc": "X ms"}, timed on CPU `cpu`."""
    before = os.sched_getaffinity(0)
    threads = cv2.getNumThreads()
    os.sched_setaffinity(0, {cpu})
    cv2.setNumThreads(1)
    try:
        rng = np.random.default_rng(0)
        photos = _photos(folder, size)
        square = [cv2.resize(p, (size, size), interpolation=cv2.INTER_AREA) for p in photos]
        floats = [s.astype(np.float32) for s in square]
        centre = ((size - 1) / 2.0, (size - 1) / 2.0)

        def flip(img):
            if rng.uniform() < 0.5:
                cv2.flip(img, 1)

        def rotate(img):
            m = cv2.getRotationMatrix2D(centre, rng.uniform(-15, 15), 1.0)
            cv2.warpAffine(img, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)

        def rrc(img):
            y, x, h, w = _window(rng, *img.shape[:2])
            cv2.resize(img[y:y + h, x:x + w], (size, size), interpolation=cv2.INTER_LINEAR)

        def both(fn, reps):
            return (f"uint8 {_ms_per_image(fn, square * reps, rounds):.3f} / "
                    f"float32 {_ms_per_image(fn, floats * reps, rounds):.3f} ms")

        return {"flip": both(flip, 20), "rotate": both(rotate, 1),
                "rrc": f"{_ms_per_image(rrc, photos * 4, rounds):.3f} ms"}
    finally:
        cv2.setNumThreads(threads)
        os.sched_setaffinity(0, before)
