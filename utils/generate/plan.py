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
from utils.generate.strata import (assign_folds, assign_folds_arrays, distinct, intern,  # noqa: F401
                                   pick_stratified, pick_stratified_arrays)

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
    """estimate_bytes of every size at once (a new int64 array)."""
    b = np.asarray(sizes).astype(np.int64)
    b[b == 0] = DEFAULT_ITEM_BYTES
    cap = _size_cap(max_side, short_side)
    if cap is not None:
        np.minimum(b, cap, out=b)
    b += 64  # Example framing
    return b


def shard_count(total: int, shard_bytes: int) -> int:
    """How many shards `total` bytes make: the fewest of at most about `shard_bytes` each."""
    return -(-int(total) // int(shard_bytes)) if total > 0 else 0


def cut_cumulative(cum: np.ndarray, shard_bytes: int) -> list[tuple[int, int]]:
    """(start, end) of consecutive runs, from the running sum of the sizes: as many as
    shard_count says, all of one size (each within one item of total / count)."""
    total = int(cum[-1]) if len(cum) else 0
    return _even_cuts([cum], total, shard_count(total, shard_bytes))


def _even_cuts(cums, total: int, k: int) -> list[tuple[int, int]]:
    """cut_cumulative over the running sum given as consecutive chunks (each an int64 array).

    Run j (1..k) holds the items whose running sum falls in (T(j-1), T(j)],
    T(j) = j * total // k; an item bigger than a whole run leaves the runs it
    spans empty, and empty runs are dropped (it gets a run of its own).

    Even runs rather than full ones: a greedy fill to --shard-mb left the last
    shard of each split a remainder (220 MB as 157 + 64 MB), and shards are the
    unit of parallel work, in the writer's workers (utils.generate.apart), on
    Beam, and in a reader's per-worker file shards: the biggest one sets the wall time.
    """
    out, start, off, j = [], 0, 0, 1
    for cum in cums:
        while j <= k:
            t = j * total // k
            if len(cum) == 0 or t > int(cum[-1]):
                break                               # run j ends in a later chunk
            end = off + int(np.searchsorted(cum, t, side="right"))
            if end > start:
                out.append((start, end))
                start = end
            j += 1
        off += len(cum)
    return out


def cut_by_size(order: list[int], sizes: Callable[[int], int], shard_bytes: int) -> list[list[int]]:
    """`order` as cut_cumulative's runs, given each item's size."""
    cum = np.cumsum(np.array([sizes(i) for i in order], dtype=np.int64))
    return [list(order[a:e]) for a, e in cut_cumulative(cum, shard_bytes)]


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
    split_of = to_base[codes]                # code -1 picks the trailing 0: "train"
    top = max((s[0] for s in sets if s), default=0)
    primary_of_set = np.array([s[0] if s else -1 for s in sets] + [-1], dtype=np.int16 if top < 2 ** 15 - 1 else np.int32)
    primary = primary_of_set[lid]            # unlabeled: its own stratum, -1
    n_prim = int(primary_of_set.max()) + 2
    train, val, test = (SPLITS.index(s) for s in ("train", "val", "test"))

    if fraction is not None and fraction < 1:
        sid = split_of.astype(np.int32) * n_prim + primary.astype(np.int32) + 1
        keys = {s: (all_names[s // n_prim], s % n_prim - 1) for s in distinct(sid)}
        chosen = pick_stratified_arrays(sid, keys, group, fraction, random.Random(f"{seed}/fraction"),
                                        at_least_one=True)
        del sid
        split_of[~chosen] = -1               # not in the subset: in no split
        del chosen
    if val_fraction is not None and (val_fraction > 0 or not dictated):
        # an explicit --val-fraction re-splits everything that is not test
        in_pool = (split_of >= 0) & (split_of != test)
        picked = _pick_in(in_pool, primary, group, val_fraction, random.Random(f"{seed}/val"))
        split_of[in_pool] = np.where(picked, np.int8(val), np.int8(train))
        del in_pool, picked

    fold_of = None
    if folds >= 2:
        in_train = split_of == train
        fold_of = np.full(n, -1, dtype=np.int8)
        fold_of[in_train] = _folds_in(in_train, primary, group, folds, random.Random(f"{seed}/folds"))
        del in_train
    del primary

    shard_bytes = max(1, int(shard_mb * 1024 * 1024))
    sizes = np.asarray(sizes)
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
            order = _shuffled_members(mask, random.Random(f"{seed}/shuffle/{split}/{f}"))  # mix classes
            total = 0
            for cum in _running_sums(sizes, order, max_side, short_side):
                total = int(cum[-1])                # a running sum: its last value is the total
            cuts = _even_cuts(_running_sums(sizes, order, max_side, short_side), total,
                              shard_count(total, shard_bytes))
            chunks += [(f, order[a:e]) for a, e in cuts]
        k = len(chunks)
        plan += [ShardPlan(shard_name(split, j, k), split, f, c) for j, (f, c) in enumerate(chunks)]
    return plan


def _selected(mask: np.ndarray, out: np.ndarray | None = None, chunk: int = 1 << 16) -> np.ndarray:
    """np.flatnonzero(mask) as int32, filled in chunks (no int64 index of every item), into `out` if given."""
    if out is None:
        out = np.empty(int(np.count_nonzero(mask)), dtype=np.int32)
    j = 0
    for a in range(0, len(mask), chunk):
        nz = np.flatnonzero(mask[a:a + chunk])
        out[j:j + len(nz)] = nz + a
        j += len(nz)
    return out


def _pick_in(mask: np.ndarray, primary: np.ndarray, group: np.ndarray, frac: float,
             rng: random.Random) -> np.ndarray:
    """pick_stratified_arrays by primary class over the items in `mask` (views when that is all)."""
    if mask.all():
        prim, grp = primary, group
    else:
        idx = _selected(mask)
        prim, grp = primary[idx], group[idx]
        del idx
    keys = {p: (p,) for p in distinct(prim)}
    return pick_stratified_arrays(prim, keys, grp, frac, rng)


def _folds_in(mask: np.ndarray, primary: np.ndarray, group: np.ndarray, k: int, rng: random.Random) -> np.ndarray:
    """assign_folds_arrays by primary class over the items in `mask`."""
    idx = _selected(mask)
    prim, grp = primary[idx], group[idx]
    del idx
    keys = {p: (p,) for p in distinct(prim)}
    return assign_folds_arrays(prim, keys, grp, k, rng)


def _shuffled_members(mask: np.ndarray, rng: random.Random) -> np.ndarray:
    """The items in `mask`, ascending, then shuffled by rng as a list of them would be (int32)."""
    ms = array("i", [0]) * int(np.count_nonzero(mask))
    if not len(ms):
        return np.zeros(0, np.int32)
    _selected(mask, np.frombuffer(ms, dtype=np.int32))
    rng.shuffle(ms)
    return np.frombuffer(ms, dtype=np.int32)


def _running_sums(sizes: np.ndarray, order: np.ndarray, max_side, short_side, chunk: int = 1 << 16):
    """The running sum of estimate_sizes(sizes[order]), as int64 chunks (never a whole int64 column)."""
    carry = 0
    for a in range(0, len(order), chunk):
        cum = np.cumsum(estimate_sizes(sizes[order[a:a + chunk]], max_side, short_side))
        cum += carry
        carry = int(cum[-1])
        yield cum
