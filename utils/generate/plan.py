"""PLAN: which sample goes to which split, fold and shard. Pure and deterministic.

A plan is a function of the index's columns (labels, source ids, the source's
splits, estimated sizes) and the arguments alone: no files, no image bytes, no
clock. Each phase draws from its own RNG seeded by (seed, phase), so adding
--folds does not move the val split. The local writer and a distributed runner
execute the same plan, shard by shard. It runs on arrays (utils.generate.strata
for the stratified draws), a few bytes per item, so a 12M-photo index plans in
a few hundred MB.
"""
from __future__ import annotations

import random
from array import array
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from utils.dataset.manifest import SPLITS, shard_name
from utils.generate.strata import (assign_folds, assign_folds_arrays, intern, pick_stratified,  # noqa: F401
                                   pick_stratified_arrays)

DEFAULT_ITEM_BYTES = 64 * 1024       # size estimate for items whose source gives none
RESIZED_BYTES_PER_PIXEL = 0.4        # rough JPEG size after --max-side, for shard cutting


@dataclass
class ShardPlan:
    """One shard to write: its file name, split, fold (K-fold train shards) and members."""

    file: str
    split: str
    fold: int | None
    members: Sequence[int]             # indices into the index's items, in write order (an int32 array)


def _size_cap(max_side: int | None, short_side: int | None) -> int | None:
    """The largest estimate after a resize, or None without one."""
    if not (max_side or short_side):
        return None
    # the resized area: at most max_side^2; a short-side limit alone leaves
    # the long side open, so assume a 3:2 photo
    area = min(max_side ** 2 if max_side else float("inf"),
               1.5 * short_side ** 2 if short_side else float("inf"))
    return int(area * RESIZED_BYTES_PER_PIXEL) + 1


def estimate_bytes(size: int, max_side: int | None, short_side: int | None = None) -> int:
    """A record's expected bytes on disk, for cutting shards to --shard-mb.

    Args:
        size: the source's size of the encoded input (0: unknown).
        max_side, short_side: the resize limits, if any.
    """
    return int(estimate_sizes(np.array([size]), max_side, short_side)[0])


def estimate_sizes(sizes: np.ndarray, max_side: int | None, short_side: int | None = None) -> np.ndarray:
    """estimate_bytes of every size at once (int64)."""
    b = np.where(sizes == 0, DEFAULT_ITEM_BYTES, sizes).astype(np.int64)
    cap = _size_cap(max_side, short_side)
    if cap is not None:
        np.minimum(b, cap, out=b)
    return b + 64  # Example framing


def cut_sizes(sizes: np.ndarray, shard_bytes: int) -> list[tuple[int, int]]:
    """(start, end) of consecutive runs of at most `shard_bytes` each (a lone bigger item gets its own)."""
    cum = np.cumsum(sizes, dtype=np.int64)
    out, start, n = [], 0, len(sizes)
    while start < n:
        base = int(cum[start - 1]) if start else 0
        end = max(start + 1, int(np.searchsorted(cum, base + shard_bytes, side="right")))
        out.append((start, end))
        start = end
    return out


def cut_by_size(order: list[int], sizes: Callable[[int], int], shard_bytes: int) -> list[list[int]]:
    """Consecutive runs of `order` of at most `shard_bytes` each (a lone bigger item gets its own)."""
    b = np.array([sizes(i) for i in order], dtype=np.int64)
    return [list(order[a:e]) for a, e in cut_sizes(b, shard_bytes)]


def _columns(labels, source_ids, splits) -> tuple[np.ndarray, list, np.ndarray, np.ndarray, list]:
    """(label set id per item, the sets, group per item, split code per item (-1: none), split names).

    The index's columns (utils.generate.index) hand over their arrays; plain
    lists (tests, small callers) are interned here.
    """
    if hasattr(labels, "ids"):
        lid, sets = labels.ids, labels.sets
    else:
        lid, sets = intern(tuple(x) for x in labels)
    group = source_ids.group if hasattr(source_ids, "group") else intern(source_ids)[0]
    if hasattr(splits, "codes"):
        codes, names = splits.codes, list(splits.names)
    else:
        ids, vals = intern(splits)
        names = [v for v in vals if v is not None]
        remap = np.array([names.index(v) if v is not None else -1 for v in vals], dtype=np.int8)
        codes = remap[ids] if len(ids) else np.zeros(0, np.int8)
    return lid, sets, group, codes, names


def make_plan(labels: Sequence[tuple[int, ...]], source_ids: Sequence[str], splits: Sequence[str | None],
              sizes: Sequence[int], *, val_fraction: float | None = None, folds: int = 0,
              fraction: float | None = None, shard_mb: float = 150, max_side: int | None = None,
              short_side: int | None = None, seed: int = 0) -> list[ShardPlan]:
    """The shards to write, in order, each with its members.

    Args:
        labels: class indices per item (an index's LabelColumn, or a list).
        source_ids: per item; items that share one are split, folded and picked together.
        splits: per item, the split its source dictates, or None.
        sizes: per item, its encoded size (0: unknown).
        val_fraction: re-split everything but test into train/val, stratified by the
            first label (None: keep the source's splits; with none dictated, no val).
        folds: K >= 2 folds over train, each fold in its own shards.
        fraction: keep a stratified subset of this fraction first.
        shard_mb: target shard size.
        max_side, short_side: resize limits, for the size estimate.
        seed: the seed of every phase.

    Returns:
        ShardPlans for train, then val, then test; within a split (and fold) the
        members are shuffled so that shards mix classes.
    """
    lid, sets, group, codes, names = _columns(labels, source_ids, splits)
    n = len(lid)
    dictated = bool((codes >= 0).any() and any(names))
    # the split names in play: SPLITS first (their code is their position), then any other a source gave
    all_names = list(SPLITS) + [s for s in names if s not in SPLITS]
    to_base = np.array([all_names.index(s or "train") for s in names] + [0], dtype=np.int8)
    base = to_base[codes]                   # code -1 picks the trailing 0: "train"
    primary_of_set = np.array([s[0] if s else -1 for s in sets] + [-1], dtype=np.int64)
    primary = primary_of_set[lid] if n else np.zeros(0, np.int64)   # unlabeled: its own stratum
    n_prim = int(primary_of_set.max()) + 2

    indices = np.arange(n, dtype=np.int64)
    if fraction is not None and fraction < 1:
        sid = base.astype(np.int64) * n_prim + primary + 1
        keys = {int(s): (all_names[int(s) // n_prim], int(s) % n_prim - 1) for s in np.unique(sid).tolist()}
        chosen = pick_stratified_arrays(sid, keys, group, fraction, random.Random(f"{seed}/fraction"),
                                        at_least_one=True)
        del sid
        indices = indices[chosen]

    split_of = np.full(n, -1, dtype=np.int8)
    split_of[indices] = base[indices]
    del base
    if val_fraction is not None and (val_fraction > 0 or not dictated):
        # an explicit --val-fraction re-splits everything that is not test
        pool = indices[split_of[indices] != SPLITS.index("test")]
        prim = primary[pool]
        keys = {int(p): (int(p),) for p in np.unique(prim).tolist()}
        val = pick_stratified_arrays(prim, keys, group[pool], val_fraction, random.Random(f"{seed}/val"))
        split_of[pool] = np.where(val, SPLITS.index("val"), SPLITS.index("train"))
        del pool, prim, val

    fold_of = None
    if folds >= 2:
        train = indices[split_of[indices] == SPLITS.index("train")]
        prim = primary[train]
        keys = {int(p): (int(p),) for p in np.unique(prim).tolist()}
        fold_of = np.full(n, -1, dtype=np.int8)
        fold_of[train] = assign_folds_arrays(prim, keys, group[train], folds, random.Random(f"{seed}/folds"))
        del train, prim
    del primary, indices

    shard_bytes = max(1, int(shard_mb * 1024 * 1024))
    plan: list[ShardPlan] = []
    for code, split in enumerate(SPLITS):
        in_split = split_of == code
        if not in_split.any():
            continue
        if split == "train" and fold_of is not None:
            bins = [(f, in_split & (fold_of == f)) for f in range(folds)]
        else:
            bins = [(None, in_split)]
        chunks: list[tuple[int | None, np.ndarray]] = []
        for f, mask in bins:
            ms = array("i", np.flatnonzero(mask).astype(np.int32).tobytes())
            random.Random(f"{seed}/shuffle/{split}/{f}").shuffle(ms)  # mix classes within shards
            order = np.frombuffer(ms, dtype=np.int32) if len(ms) else np.zeros(0, np.int32)
            est = estimate_sizes(np.asarray(sizes)[order] if len(order) else np.zeros(0, np.int64),
                                 max_side, short_side)
            chunks += [(f, order[a:e]) for a, e in cut_sizes(est, shard_bytes)]
            del est
        k = len(chunks)
        plan += [ShardPlan(shard_name(split, j, k), split, f, c) for j, (f, c) in enumerate(chunks)]
    return plan
