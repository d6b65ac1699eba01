"""utils/generate/plan.py on plain lists: no files, no Items, no images."""
from __future__ import annotations

import collections
import random

import numpy as np

from utils.generate import plan


def columns(per_class: list[int], group: int = 1, split=None, size: int = 1000):
    """labels, source_ids, splits, sizes for classes 0, 1, ... with per_class[c] items each."""
    labels, sids = [], []
    for c, n in enumerate(per_class):
        for j in range(n):
            labels.append((c,))
            sids.append(f"{c}-{j // group}")
    return labels, sids, [split] * len(labels), [size] * len(labels)


def counts(shard_plan, labels, split=None, fold=None):
    return collections.Counter(labels[i][0] for s in shard_plan if split in (None, s.split)
                               and fold in (None, s.fold) for i in s.members)


def test_same_file_name_in_every_class_is_not_one_product():
    # Caltech-style folders: <class>/image_0001.jpg in every class, so folder items
    # share source_id (the stem) across classes; the split must still be stratified
    labels, sids = [], []
    for c, n in enumerate([100, 10]):
        for j in range(n):
            labels.append((c,))
            sids.append(f"image_{j:04d}")
    cols = (labels, sids, [None] * len(labels), [1000] * len(labels))
    for seed in range(4):
        val = counts(plan.make_plan(*cols, val_fraction=0.2, seed=seed), labels, "val")
        assert (val[0], val[1]) == (20, 2), seed
        kept = counts(plan.make_plan(*cols, fraction=0.05, seed=seed), labels)
        assert (kept[0], kept[1]) == (5, 1), seed


def test_val_split_is_exact_per_class_and_keeps_groups_whole():
    labels, sids, splits, sizes = columns([40, 20, 12], group=2)
    for seed in range(3):
        shard_plan = plan.make_plan(labels, sids, splits, sizes, val_fraction=0.25, seed=seed)
        val = counts(shard_plan, labels, "val")
        assert [val[c] for c in range(3)] == [10, 6, 4]   # targets 10, 5, 3 in whole pairs
        by_split = collections.defaultdict(set)
        for s in shard_plan:
            by_split[s.split].update(sids[i] for i in s.members)
        assert not by_split["train"] & by_split["val"]


def test_many_small_classes_still_give_a_val_split():
    # 10 classes of 3: no class reaches one val sample alone, but 20% of 30 is 6
    labels, sids, splits, sizes = columns([3] * 10)
    val = counts(plan.make_plan(labels, sids, splits, sizes, val_fraction=0.2), labels, "val")
    assert sum(val.values()) == 6 and set(val.values()) == {1}


def test_adding_folds_does_not_move_the_val_split():
    labels, sids, splits, sizes = columns([30, 15], group=3)

    def val_members(**kw):
        return sorted(i for s in plan.make_plan(labels, sids, splits, sizes, val_fraction=0.2, **kw)
                      if s.split == "val" for i in s.members)

    assert val_members() == val_members(folds=3) == val_members(folds=5, shard_mb=0.001)


def test_folds_are_grouped_stratified_and_in_their_own_shards():
    labels, sids, splits, sizes = columns([30, 15], group=3)
    shard_plan = plan.make_plan(labels, sids, splits, sizes, folds=3)
    assert [s.file for s in shard_plan] == [f"train-{i:05d}-of-00003.tfrecord" for i in range(3)]
    assert [s.fold for s in shard_plan] == [0, 1, 2]
    assert [[counts(shard_plan, labels, fold=f)[c] for c in range(2)] for f in range(3)] == [[12, 3], [9, 6], [9, 6]]


def test_source_splits_kept_test_untouched_and_shards_named_per_split():
    labels, sids, _, sizes = columns([6, 6, 4])
    splits = ["train"] * 8 + ["val"] * 4 + ["test"] * 4
    shard_plan = plan.make_plan(labels, sids, splits, sizes, shard_mb=3 * 1064 / 2**20)
    # at most 3 items a shard, each split in the fewest shards of one size (8 -> 2 + 3 + 3, 4 -> 2 + 2)
    assert [(s.split, len(s.members)) for s in shard_plan] == [("train", 2), ("train", 3), ("train", 3)] + [
        ("val", 2), ("val", 2), ("test", 2), ("test", 2)]
    assert [s.file for s in shard_plan if s.split == "val"] == ["val-00000-of-00002.tfrecord",
                                                               "val-00001-of-00002.tfrecord"]
    # --val-fraction re-splits train + val, never test
    resplit = plan.make_plan(labels, sids, splits, sizes, val_fraction=0.5)
    assert sorted(i for s in resplit if s.split == "test" for i in s.members) == list(range(12, 16))


def test_pick_stratified_targets_add_up_to_the_rounded_total():
    rng = random.Random(0)
    picked = plan.pick_stratified(range(7), 0.5, lambda i: i % 3, str, rng)  # strata of 3, 2, 2 -> 3.5
    assert len(picked) == 4
    assert plan.pick_stratified(range(3), 0.1, lambda i: 0, str, rng) == set()
    assert len(plan.pick_stratified(range(3), 0.1, lambda i: 0, str, rng, at_least_one=True)) == 1


def test_cut_by_size_makes_the_fewest_shards_of_one_size():
    sizes = {i: 10 for i in range(22)}          # 220 bytes, at most 150 a shard: 2 of 110, not 150 + 70
    assert [len(r) for r in plan.cut_by_size(list(range(22)), sizes.get, 150)] == [11, 11]
    sizes = {0: 5, 1: 5, 2: 1, 3: 20, 4: 1}     # 32 bytes in runs of 8: the 20-byte item spans one, dropped
    assert plan.cut_by_size([0, 1, 2, 3, 4], sizes.get, 10) == [[0], [1, 2], [3, 4]]
    assert plan.cut_by_size([], sizes.get, 10) == []
    assert plan.shard_count(0, 10) == 0 and plan.shard_count(10, 10) == 1 and plan.shard_count(11, 10) == 2


def test_even_cuts_over_chunks_are_the_cuts_of_the_whole_running_sum():
    rng = np.random.default_rng(0)
    for n, big in ((1, False), (37, True), (500, True), (500, False)):
        sizes = rng.integers(64, 5000, n)
        if big:
            sizes[n // 2] = 200_000             # one item bigger than a shard
        cum = np.cumsum(sizes)
        whole = plan.cut_cumulative(cum, 20_000)
        k = plan.shard_count(int(cum[-1]), 20_000)
        chunks = [cum[a:a + 41] for a in range(0, n, 41)]
        assert plan._even_cuts(chunks, int(cum[-1]), k) == whole
        assert whole[0][0] == 0 and whole[-1][1] == n and all(a[1] == b[0] for a, b in zip(whole, whole[1:]))
        runs = [int(sizes[a:e].sum()) for a, e in whole]
        assert len(runs) <= k and max(runs) <= cum[-1] / k + sizes.max()
        if not big:
            assert max(runs) - min(runs) <= 2 * 5000  # even: each within an item of total / k


def test_resize_estimate_keeps_shards_full_when_only_the_short_side_is_limited():
    size = 3_000_000   # a 12 MP camera JPEG
    plain = plan.estimate_bytes(size, None)
    short = plan.estimate_bytes(size, None, 224)
    assert plain > 3_000_000 and short < plain / 20  # not counted at its original size
    assert plan.estimate_bytes(size, 256, 224) <= plan.estimate_bytes(size, 256)
    assert plan.estimate_bytes(0, None) == plan.DEFAULT_ITEM_BYTES + 64   # unknown size
