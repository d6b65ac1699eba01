"""PLAN: which sample goes to which split, fold and shard. Pure and deterministic.

A plan is a function of the index's columns (labels, source ids, the source's
splits, estimated sizes) and the arguments alone: no files, no image bytes, no
clock. Each phase draws from its own RNG seeded by (seed, phase), so adding
--folds does not move the val split. The local writer and a distributed runner
execute the same plan, shard by shard.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

from utils.dataset.manifest import SPLITS, shard_name

DEFAULT_ITEM_BYTES = 64 * 1024       # size estimate for items whose source gives none
RESIZED_BYTES_PER_PIXEL = 0.4        # rough JPEG size after --max-side, for shard cutting


@dataclass
class ShardPlan:
    """One shard to write: its file name, split, fold (K-fold train shards) and members."""

    file: str
    split: str
    fold: int | None
    members: list[int]                 # indices into the index's items, in write order


def _groups_by_stratum(indices: Iterable[int], stratum: Callable[[int], object],
                       group: Callable[[int], str]) -> dict[object, list[list[int]]]:
    """{stratum: [group, ...]}: members grouped by source_id WITHIN their stratum.

    A product's photos share a class, so they still form one group; but equal ids
    in different classes (Caltech-style `<class>/image_0001.jpg` in every class
    folder: folder items' source_id is the file stem) are different images, and
    grouping them across classes would put every class but one in no stratum.
    """
    out: dict[object, dict[str, list[int]]] = {}
    for i in indices:
        out.setdefault(stratum(i), {}).setdefault(group(i), []).append(i)
    return {s: list(groups.values()) for s, groups in out.items()}


def pick_stratified(indices: Iterable[int], frac: float, stratum: Callable[[int], object],
                    group: Callable[[int], str], rng: random.Random, at_least_one: bool = False) -> set[int]:
    """About `frac` of each stratum, whole groups only (a product never straddles).

    Args:
        indices: the candidates.
        frac: the fraction to pick.
        stratum: index -> its stratum (e.g. the primary class).
        group: index -> its group (the source_id); a group is picked whole.
        rng: shuffles groups and breaks apportionment ties.
        at_least_one: pick at least one group from every stratum.

    Returns:
        the picked indices.
    """
    chosen: set[int] = set()
    by = _groups_by_stratum(indices, stratum, group)
    strata = sorted(by, key=repr)
    # largest-remainder apportionment: per-stratum targets that add up to
    # round(frac * N), so many small classes still yield a val split
    exact = {s: frac * sum(len(m) for m in by[s]) for s in strata}
    targets = {s: math.floor(exact[s]) for s in strata}
    spare = round(frac * sum(sum(len(m) for m in by[s]) for s in strata)) - sum(targets.values())
    order = list(strata)
    rng.shuffle(order)                      # ties broken at random, deterministically
    order.sort(key=lambda s: exact[s] - targets[s], reverse=True)
    for s in order[:max(0, spare)]:
        targets[s] += 1
    for s in strata:
        groups = by[s]
        rng.shuffle(groups)
        target = max(1, targets[s]) if at_least_one else targets[s]
        taken = 0
        for members in groups:
            if taken >= target:
                break
            # take a group unless it overshoots the target more than leaving it out would
            if taken and taken + len(members) - target > target - taken:
                continue
            chosen.update(members)
            taken += len(members)
    return chosen


def assign_folds(indices: Iterable[int], k: int, stratum: Callable[[int], object],
                 group: Callable[[int], str], rng: random.Random) -> dict[int, int]:
    """Stratified, grouped K-fold: each group goes to the fold with fewest of its stratum.

    Returns:
        {index: fold}.
    """
    fold_of: dict[int, int] = {}
    total = [0] * k
    by = _groups_by_stratum(indices, stratum, group)
    for s in sorted(by, key=repr):
        groups = by[s]
        rng.shuffle(groups)
        per = [0] * k
        for members in groups:
            f = min(range(k), key=lambda j: (per[j], total[j], j))
            per[f] += len(members)
            total[f] += len(members)
            for i in members:
                fold_of[i] = f
    return fold_of


def estimate_bytes(size: int, max_side: int | None, short_side: int | None = None) -> int:
    """A record's expected bytes on disk, for cutting shards to --shard-mb.

    Args:
        size: the source's size of the encoded input (0: unknown).
        max_side, short_side: the resize limits, if any.
    """
    b = size or DEFAULT_ITEM_BYTES
    if max_side or short_side:
        # the resized area: at most max_side^2; a short-side limit alone leaves
        # the long side open, so assume a 3:2 photo
        area = min(max_side ** 2 if max_side else float("inf"),
                   1.5 * short_side ** 2 if short_side else float("inf"))
        b = min(b, int(area * RESIZED_BYTES_PER_PIXEL) + 1)
    return b + 64  # Example framing


def cut_by_size(order: list[int], sizes: Callable[[int], int], shard_bytes: int) -> list[list[int]]:
    """Consecutive runs of `order` of at most `shard_bytes` each (a lone bigger item gets its own)."""
    chunks, cur, cur_b = [], [], 0
    for i in order:
        b = sizes(i)
        if cur and cur_b + b > shard_bytes:
            chunks.append(cur)
            cur, cur_b = [], 0
        cur.append(i)
        cur_b += b
    if cur:
        chunks.append(cur)
    return chunks


def make_plan(labels: Sequence[tuple[int, ...]], source_ids: Sequence[str], splits: Sequence[str | None],
              sizes: Sequence[int], *, val_fraction: float | None = None, folds: int = 0,
              fraction: float | None = None, shard_mb: float = 150, max_side: int | None = None,
              short_side: int | None = None, seed: int = 0) -> list[ShardPlan]:
    """The shards to write, in order, each with its members.

    Args:
        labels: class indices per item.
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
    dictated = any(splits)

    def base_split(i: int) -> str:
        return splits[i] or "train"

    def primary(i: int) -> int:
        return labels[i][0] if labels[i] else -1   # unlabeled / all-zero multi-hot: own stratum

    def group(i: int) -> str:
        return source_ids[i]

    indices = list(range(len(labels)))
    if fraction is not None and fraction < 1:
        chosen = pick_stratified(indices, fraction, lambda i: (base_split(i), primary(i)), group,
                                 random.Random(f"{seed}/fraction"), at_least_one=True)
        indices = [i for i in indices if i in chosen]

    split_of = {i: base_split(i) for i in indices}
    if val_fraction is not None and (val_fraction > 0 or not dictated):
        # an explicit --val-fraction re-splits everything that is not test
        pool = [i for i in indices if split_of[i] != "test"]
        val = pick_stratified(pool, val_fraction, lambda i: (primary(i),), group,
                              random.Random(f"{seed}/val"))
        for i in pool:
            split_of[i] = "val" if i in val else "train"

    fold_of: dict[int, int] = {}
    if folds >= 2:
        train = [i for i in indices if split_of[i] == "train"]
        fold_of = assign_folds(train, folds, lambda i: (primary(i),), group, random.Random(f"{seed}/folds"))

    shard_bytes = max(1, int(shard_mb * 1024 * 1024))

    def size_of(i: int) -> int:
        return estimate_bytes(sizes[i], max_side, short_side)

    plan: list[ShardPlan] = []
    for split in SPLITS:
        members = [i for i in indices if split_of[i] == split]
        if not members:
            continue
        bins: list[tuple[int | None, list[int]]]
        if split == "train" and folds >= 2:
            bins = [(f, [i for i in members if fold_of[i] == f]) for f in range(folds)]
        else:
            bins = [(None, members)]
        chunks: list[tuple[int | None, list[int]]] = []
        for f, ms in bins:
            random.Random(f"{seed}/shuffle/{split}/{f}").shuffle(ms)  # mix classes within shards
            chunks += [(f, c) for c in cut_by_size(ms, size_of, shard_bytes)]
        n = len(chunks)
        plan += [ShardPlan(shard_name(split, j, n), split, f, c) for j, (f, c) in enumerate(chunks)]
    return plan
