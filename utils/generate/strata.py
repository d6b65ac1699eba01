"""Stratified, grouped picking and K-fold assignment on arrays (the plan's two draws).

Every candidate has a stratum id (e.g. its primary class) and a group id (its
source_id's number); a group is picked or folded whole, within its stratum.
The draws replay exactly the RNG calls of the list-based versions they
replaced: strata in repr order of their keys, groups in order of first
appearance within a stratum, one `rng.shuffle` of each stratum's groups. So
a seed gives the same split as before, with no Python object per item.
"""
from __future__ import annotations

import math
import random
from array import array
from typing import Callable, Iterable, Iterator

import numpy as np


def _strata(stratum: np.ndarray, keys) -> Iterator[tuple[int, np.ndarray]]:
    """(stratum id, positions of its candidates, ascending), strata in repr order of keys[id].

    One sort of (stratum << 32 | position) in int64: 8 bytes per candidate,
    where an argsort plus the sorted strata would take 13. `keys` holds every
    stratum id that occurs ({id: key}, or a list indexed by id).
    """
    packed = stratum.astype(np.int64)
    packed <<= 32
    for a in range(0, len(packed), 1 << 16):      # no int64 arange of every candidate
        packed[a:a + (1 << 16)] |= np.arange(a, min(len(packed), a + (1 << 16)), dtype=np.int64)
    packed.sort()
    ids = sorted(keys) if isinstance(keys, dict) else list(range(len(keys)))
    bounds = np.searchsorted(packed, np.array(ids + [ids[-1] + 1] if ids else [], dtype=np.int64) << 32).tolist()
    spans = {s: (bounds[j], bounds[j + 1]) for j, s in enumerate(ids) if bounds[j] < bounds[j + 1]}
    for s in sorted(spans, key=lambda s: repr(keys[s])):
        a, b = spans[s]
        yield s, (packed[a:b] & 0xFFFFFFFF).astype(np.int64)


def distinct(values: np.ndarray, chunk: int = 1 << 16) -> list[int]:
    """The distinct small integers in `values`, ascending: counts per value, a chunk at a time
    (bincount widens its input to int64, so never the whole column at once)."""
    if not len(values):
        return []
    lo, hi = int(values.min()), int(values.max())
    seen = np.zeros(hi - lo + 1, dtype=bool)
    for a in range(0, len(values), chunk):
        part = values[a:a + chunk].astype(np.int64) - lo
        seen[np.flatnonzero(np.bincount(part, minlength=hi - lo + 1))] = True
    return (np.flatnonzero(seen) + lo).tolist()


def _groups(pos: np.ndarray, group: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """The groups among candidates `pos` in order of first appearance: (group number per candidate, sizes)."""
    uniq, first, inv = np.unique(group[pos], return_index=True, return_inverse=True)
    rank = np.empty(len(uniq), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(uniq))
    per = rank[inv.reshape(-1)]
    return per, np.bincount(per, minlength=len(uniq)).tolist()


def _shuffled(n: int, rng: random.Random) -> array:
    """The permutation rng.shuffle applies to a list of n: the same calls, 4 bytes per entry."""
    perm = array("i", range(n))
    rng.shuffle(perm)
    return perm


def pick_stratified_arrays(stratum: np.ndarray, keys, group: np.ndarray, frac: float,
                           rng: random.Random, at_least_one: bool = False) -> np.ndarray:
    """About `frac` of each stratum, whole groups only; -> a boolean mask over the candidates.

    Args:
        stratum: per candidate, its stratum id (int, -2**31 <= id < 2**31).
        keys: {stratum id: its key} (strata go in repr order of their keys, as the list version's did).
        group: per candidate, its group number.
        frac: the fraction to pick.
        rng: shuffles groups and breaks apportionment ties.
        at_least_one: pick at least one group from every stratum.
    """
    chosen = np.zeros(len(stratum), dtype=bool)
    strata = list(_strata(stratum, keys))
    count = {s: len(pos) for s, pos in strata}
    # largest-remainder apportionment: per-stratum targets that add up to
    # round(frac * N), so many small classes still yield a val split
    exact = {s: frac * count[s] for s, _ in strata}
    targets = {s: math.floor(exact[s]) for s in exact}
    spare = round(frac * sum(count.values())) - sum(targets.values())
    order = [s for s, _ in strata]
    rng.shuffle(order)                      # ties broken at random, deterministically
    order.sort(key=lambda s: exact[s] - targets[s], reverse=True)
    for s in order[:max(0, spare)]:
        targets[s] += 1
    for s, pos in strata:
        per, sizes = _groups(pos, group)
        target = max(1, targets[s]) if at_least_one else targets[s]
        taken, picked = 0, []
        for g in _shuffled(len(sizes), rng):
            if taken >= target:
                break
            n = sizes[g]
            # take a group unless it overshoots the target more than leaving it out would
            if taken and taken + n - target > target - taken:
                continue
            picked.append(g)
            taken += n
        if picked:
            chosen[pos[np.isin(per, picked)]] = True
    return chosen


def assign_folds_arrays(stratum: np.ndarray, keys, group: np.ndarray, k: int,
                        rng: random.Random) -> np.ndarray:
    """Stratified, grouped K-fold: each group goes to the fold with fewest of its stratum.

    Returns:
        the fold of every candidate (int8).
    """
    fold = np.zeros(len(stratum), dtype=np.int8)
    total = [0] * k
    for _, pos in _strata(stratum, keys):
        per, sizes = _groups(pos, group)
        of_group = np.zeros(len(sizes), dtype=np.int8)
        counts = [0] * k
        for g in _shuffled(len(sizes), rng):
            f = min(range(k), key=lambda j: (counts[j], total[j], j))
            counts[f] += sizes[g]
            total[f] += sizes[g]
            of_group[g] = f
        fold[pos] = of_group[per]
    return fold


def intern(values: Iterable) -> tuple[np.ndarray, list]:
    """-> (id per value, distinct values in order of first appearance; a dict of id -> value works too)."""
    ids: dict = {}
    out = array("q", (ids.setdefault(v, len(ids)) for v in values))
    return np.frombuffer(out, dtype=np.int64) if len(out) else np.zeros(0, np.int64), list(ids)


def pick_stratified(indices: Iterable[int], frac: float, stratum: Callable[[int], object],
                    group: Callable[[int], str], rng: random.Random, at_least_one: bool = False) -> set[int]:
    """pick_stratified_arrays over indices described by callables; -> the picked indices."""
    idx = list(indices)
    sid, keys = intern(stratum(i) for i in idx)
    gid, _ = intern(group(i) for i in idx)
    mask = pick_stratified_arrays(sid, keys, gid, frac, rng, at_least_one)
    return {i for i, m in zip(idx, mask.tolist()) if m}


def assign_folds(indices: Iterable[int], k: int, stratum: Callable[[int], object],
                 group: Callable[[int], str], rng: random.Random) -> dict[int, int]:
    """assign_folds_arrays over indices described by callables; -> {index: fold}."""
    idx = list(indices)
    sid, keys = intern(stratum(i) for i in idx)
    gid, _ = intern(group(i) for i in idx)
    return dict(zip(idx, assign_folds_arrays(sid, keys, gid, k, rng).tolist()))
