"""Near-duplicate images: a 64-bit difference hash per image, and the pairs of
hashes within a small Hamming distance, found without comparing all pairs.

dHash: the image in grayscale, shrunk (area average) to 9x8, one bit per pair
of horizontal neighbours (left brighter than right). Resizing, re-encoding,
mild blur and brightness or contrast changes leave most bits alone; a
different picture differs in ~32 of 64. Distance <= 4 is a conservative
"same picture" (a crop, flip or rotation is NOT caught: they move the bits).

Search (multi-index hashing): cut the 64 bits into max_distance + 1 bands. Two
hashes within max_distance differ in at most max_distance bits, so by
pigeonhole at least one band is identical; only hashes that share a band value
are compared. Identical hashes are grouped first, so a thousand copies of a
blank image give a thousand pairs (each with the first copy), not a million.
Within a band bucket the comparison is all pairs (vectorised), so the cost
grows as N^2 / 2^bits-per-band: 100k images take seconds, tens of millions
would want a larger max_distance split into more, smaller searches.
"""
from __future__ import annotations

from typing import Iterator

import cv2
import numpy as np

from utils.files import atomic_write_csv

HASH_BITS = 64
DEFAULT_MAX_DISTANCE = 4
MAX_DISTANCE_LIMIT = HASH_BITS // 2 - 1   # half the bits or more: unrelated pictures would match


def dhash(image: np.ndarray) -> int:
    """uint8 [H, W] or [H, W, C] (gray, gray+alpha, RGB, RGBA) -> 64-bit dHash.

    Raises:
        ValueError: not a 2-D or 3-D image, or an empty one.
    """
    img = np.asarray(image)
    if img.ndim == 3:
        c = img.shape[2]
        img = img[..., 0] if c < 3 else cv2.cvtColor(np.ascontiguousarray(img[..., :3]), cv2.COLOR_RGB2GRAY)
    if img.ndim != 2 or img.size == 0:
        raise ValueError(f"dhash needs a 2-D or 3-D image, got shape {np.shape(image)}")
    small = cv2.resize(img.astype(np.float32), (9, 8), interpolation=cv2.INTER_AREA)
    bits = (small[:, :-1] > small[:, 1:]).ravel()
    return int(np.packbits(bits).view(">u8")[0])


def hamming(a: int, b: int) -> int:
    """The number of bits in which two hashes differ."""
    return (int(a) ^ int(b)).bit_count()


def _bands(max_distance: int) -> list[tuple[int, int]]:
    """(shift, mask) of max_distance + 1 bands covering the 64 bits."""
    n = max_distance + 1
    edges = [round(i * HASH_BITS / n) for i in range(n + 1)]
    return [(lo, (1 << (hi - lo)) - 1) for lo, hi in zip(edges, edges[1:])]


def near_pairs(hashes, max_distance: int = DEFAULT_MAX_DISTANCE) -> Iterator[tuple[int, int, int]]:
    """The pairs of positions in `hashes` within `max_distance` bits, each once.

    Every position whose hash repeats an earlier one is paired with that first
    position (distance 0); and every pair of such first positions within
    max_distance bits. So N copies of a picture are N - 1 pairs, and its other
    copies reach a near neighbour through the first one.

    Yields:
        (i, j, distance) with i < j.

    Raises:
        ValueError: max_distance outside 0..MAX_DISTANCE_LIMIT.
    """
    if not 0 <= max_distance <= MAX_DISTANCE_LIMIT:
        raise ValueError(f"max_distance must be in 0..{MAX_DISTANCE_LIMIT}, got {max_distance}")
    h = np.asarray(hashes, dtype=np.uint64)
    if h.size == 0:
        return
    order = np.argsort(h, kind="stable")
    uniq, first = np.unique(h[order], return_index=True)
    groups = np.split(order, first[1:])      # positions of each distinct hash, ascending
    for g in groups:                         # exact copies: each with the first
        for j in g[1:]:
            yield int(g[0]), int(j), 0
    if max_distance == 0 or len(uniq) < 2:
        return
    seen: set[tuple[int, int]] = set()
    for shift, mask in _bands(max_distance):
        keys = (uniq >> np.uint64(shift)) & np.uint64(mask)
        by = np.argsort(keys, kind="stable")
        starts = np.flatnonzero(np.r_[True, keys[by][1:] != keys[by][:-1]])
        ends = np.r_[starts[1:], len(by)]
        for s, e in zip(starts, ends):
            if e - s < 2:
                continue
            members = np.sort(by[s:e])
            vals = uniq[members]
            for x in range(len(members) - 1):   # one vectorised row of the bucket at a time
                dist = np.bitwise_count(vals[x] ^ vals[x + 1:])
                for y in np.flatnonzero(dist <= max_distance):
                    a, b = int(members[x]), int(members[x + 1 + y])
                    if (a, b) in seen:
                        continue
                    seen.add((a, b))
                    i, j = int(groups[a][0]), int(groups[b][0])
                    yield (i, j, int(dist[y])) if i < j else (j, i, int(dist[y]))


REPORT_COLUMNS = ("distance", "split_a", "source_id_a", "labels_a", "shard_a", "record_a",
                  "split_b", "source_id_b", "labels_b", "shard_b", "record_b")


def report(rows: list[tuple], class_names: list[str], path: str,
           max_distance: int = DEFAULT_MAX_DISTANCE) -> dict:
    """Write the near-duplicate pairs among verified records to a CSV.

    Pairs of one source (a product's photos: same source_id and labels) are
    left out: they are meant to look alike. Sorted by distance, then position.

    Args:
        rows: (split, shard file, record number, source_id, label ids, dHash)
            per record, as utils.generate.verify.verify_dataset collects them.
        class_names: labels.json, to write label names.
        path: the CSV (REPORT_COLUMNS).
        max_distance: the most differing bits of a pair.

    Returns:
        counts: {"pairs", "cross_split", "label_conflicts"}.
    """
    def side(row: tuple) -> list:
        """split, source_id, label names, shard, record: one half of a CSV line."""
        split, shard, record, source_id, ids, _ = row
        names = " ".join(class_names[i] if 0 <= i < len(class_names) else str(i) for i in ids)
        return [split, source_id, names, shard, record]

    pairs = []
    for i, j, d in near_pairs([r[5] for r in rows], max_distance):
        first, second = rows[i], rows[j]
        if first[3] == second[3] and first[4] == second[4]:
            continue
        pairs.append((d, i, j))
    pairs.sort()
    atomic_write_csv(path, REPORT_COLUMNS,
                     ([d, *side(rows[i]), *side(rows[j])] for d, i, j in pairs))
    return {"pairs": len(pairs),
            "cross_split": sum(rows[i][0] != rows[j][0] for _, i, j in pairs),
            "label_conflicts": sum(rows[i][4] != rows[j][4] for _, i, j in pairs)}
