"""utils/generate/neardup.py: dHash and the near-pair search, against brute force."""
from __future__ import annotations

import itertools

import cv2
import numpy as np
import pytest

from utils.generate import neardup


def photo(seed: int, h: int = 120, w: int = 160) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    return cv2.resize(base, (w, h), interpolation=cv2.INTER_CUBIC)


def test_dhash_survives_resize_reencode_and_brightness_but_tells_pictures_apart():
    img = photo(0)
    h = neardup.dhash(img)
    smaller = cv2.resize(img, (90, 70), interpolation=cv2.INTER_AREA)
    jpeg = cv2.imdecode(cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 60])[1], cv2.IMREAD_COLOR)
    brighter = np.clip(img.astype(np.int16) + 20, 0, 255).astype(np.uint8)
    for copy in (smaller, jpeg, brighter):  # imencode/imdecode keep the channel order
        assert neardup.hamming(h, neardup.dhash(copy)) <= 4
    others = [neardup.hamming(h, neardup.dhash(photo(s))) for s in range(1, 21)]
    assert min(others) > 8 and 20 < np.mean(others) < 44
    gray = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    assert neardup.dhash(gray) == neardup.dhash(gray[..., None]) == neardup.dhash(np.dstack([gray, gray]))
    assert 0 <= h < 2 ** 64
    with pytest.raises(ValueError):
        neardup.dhash(np.zeros((0, 0), np.uint8))


def brute(hashes, k):
    """Every exact copy with the first position of its hash; every near pair of first positions."""
    first = {}
    for i, h in enumerate(hashes):
        first.setdefault(h, i)
    copies = [(first[h], i, 0) for i, h in enumerate(hashes) if first[h] != i]
    reps = sorted(first.items(), key=lambda t: t[1])
    near = [(i, j, neardup.hamming(a, b)) for (a, i), (b, j) in itertools.combinations(reps, 2)
            if neardup.hamming(a, b) <= k]
    return sorted(copies + near)


@pytest.mark.parametrize("k", [0, 1, 3, 4, 8])
def test_near_pairs_equals_brute_force(k):
    rng = np.random.default_rng(k)
    base = [int(x) for x in rng.integers(0, 2 ** 63, 300, dtype=np.uint64)]
    hashes = list(base)
    for i in range(0, 300, 7):  # planted neighbours at 0..6 bits, and exact copies
        flips = rng.choice(64, size=int(rng.integers(0, 7)), replace=False)
        hashes.append(base[i] ^ sum(1 << int(b) for b in flips))
    hashes += [hashes[5]] * 3
    got = sorted(neardup.near_pairs(hashes, k))
    assert got == brute(hashes, k)
    assert len(got) == len(set((i, j) for i, j, _ in got))  # each pair once


def test_near_pairs_edge_cases():
    assert list(neardup.near_pairs([], 4)) == []
    assert list(neardup.near_pairs([7], 4)) == []
    assert sorted(neardup.near_pairs([2 ** 64 - 1, 2 ** 64 - 1, 2 ** 64 - 2], 1)) == [(0, 1, 0), (0, 2, 1)]
    with pytest.raises(ValueError):
        list(neardup.near_pairs([1, 2], 40))


def test_report_leaves_out_a_products_own_photos_and_counts_leaks(tmp_path):
    import csv

    h = neardup.dhash(photo(0))
    rows = [("train", "s0.tfrecord", 0, "p1", (0,), h),        # two photos of product p1: alike by design
            ("train", "s0.tfrecord", 1, "p1", (0,), h ^ 1),
            ("test", "t0.tfrecord", 0, "p9", (), h ^ 3),         # the same picture in test: a leak
            ("train", "s0.tfrecord", 2, "p2", (1,), h ^ (2 ** 64 - 1))]
    n = neardup.report(rows, ["cat", "dog"], str(tmp_path / "n.csv"), 4)
    got = [(r["source_id_a"], r["labels_a"], r["split_b"], r["source_id_b"], r["distance"], r["record_b"])
           for r in csv.DictReader(open(tmp_path / "n.csv", newline=""))]
    assert got == [("p1", "cat", "test", "p9", "1", "0"), ("p1", "cat", "test", "p9", "2", "0")]
    assert n == {"pairs": 2, "cross_split": 2, "label_conflicts": 2}
