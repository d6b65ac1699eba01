"""WRITE, pass-through of 2+ shards: whole shards written side by side by forked workers.

Inline, one process does all of a pass-through's work: reading and checking
on its main thread, sha256 and writes on the sink's, with the GIL between
them. A shard's sha256 is one sequential stream, but shards are
independent: N processes writing N shards share nothing but the disk, so a
dataset of many shards uses every core. The workers are forked after the
plan and inherit the index, so a shard costs the parent one small message.
Sidecars are saved as shards finish, in whatever order (each names its
shard); the bytes are those of the inline writer (tests/generate/test_apart.py).

Measured (bench/generate.py's 2,000 photos of 110 KB, 2 cores, alternating
runs, medians, us per photo, inline -> apart): 6 shards of 40 MB 175 -> 138
and 159 -> 127; 2 of 110 MB 168 -> 137 and 155 -> 135; 2 of 157 + 64 MB
(the bench's default before the plan cut even shards) 169 -> 152, the
second worker idle once its small shard was done. With a sink thread in
every worker from the start (as inline): 200 -> 169 at 40 MB, 189 -> 159
at 110 MB, so a worker hashes and writes on its own thread until the run's
tail (_forked_shard).

Tried and left out: a second process per shard hashing the file as its
writer wrote it (read back from the page cache, the writer hashing nothing),
so that the tail's last shard has two processes with no GIL between them.
Alternating runs of the two versions (us per photo, this one first): 40 MB
shards 171 / 195 and 186 / 184, the bench's 2 shards 181 / 191 and 176 /
175: the read-back and the extra processes cost what the split gains.
"""
from __future__ import annotations

import itertools
import multiprocessing
import os

from utils.generate import outdir
from utils.generate.index import Index
from utils.generate.plan import ShardPlan
from utils.generate.pool import WorkerPool, start_method
from utils.generate.progress import writing_bar
from utils.generate.shards import item_tasks, prepare_item, write_shard

# What the forked workers inherit: (index, shards, out_dir, resize, max_pixels, the shared
# counts, cores). Set just before the fork and cleared after it: nothing is pickled but a number.
_FORKED: tuple | None = None


def wanted(todo: list[ShardPlan], resize: dict, seen: dict | None, workers: int) -> bool:
    """Whether to write whole shards in worker processes: a pass-through, no --dedupe (its
    first-seen order crosses shards), 2+ shards and workers, and a safe fork (pool.start_method)."""
    return (not any(resize.values()) and seen is None and workers >= 2 and len(todo) >= 2
            and start_method() == "fork")


def write_shards(todo: list[ShardPlan], index: Index, out_dir: str, done: dict[str, dict], *,
                 resize: dict, max_pixels: int, workers: int, progress: bool) -> None:
    """Write the `todo` shards in forked workers; add each one's metadata to `done` as it finishes.

    Raises:
        utils.generate.pool.WorkerDied: a worker died (the run resumes).
        OSError: a worker's write failed (a full disk).
    """
    global _FORKED
    n = min(workers, len(todo))
    # [shards not started yet, shards being written]: shared with the workers (see _forked_shard)
    counts = multiprocessing.get_context("fork").Array("i", [len(todo), 0])
    _FORKED = (index, todo, out_dir, resize, max_pixels, counts, min(n, os.cpu_count() or 1))
    try:
        executor = WorkerPool(n, "fork")
    finally:
        _FORKED = None
    try:
        with writing_bar(progress, todo) as bar:
            written_mb = 0.0
            sends = (executor.send(_forked_shard, [(k,)]) for k in range(len(todo)))
            for _ in itertools.islice(sends, 2 * n):   # a free worker always finds the next shard queued
                pass
            while executor.outstanding:
                _, (meta,) = executor.receive_next()
                outdir.save_done(out_dir, meta)   # the worker renamed the shard: it is done
                done[meta["file"]] = meta
                written_mb += meta["bytes"] / 1e6
                bar.update(meta["count"] + len(meta["skipped"]))
                bar.set_postfix_str(f"{written_mb:.0f} MB", refresh=False)
                next(sends, None)
    finally:
        executor.shutdown()


def _forked_shard(k: int) -> dict:
    """In a forked worker: write shard k of the inherited plan -> its metadata.

    Hashing and writing stay on this thread while every core has a shard
    of its own, and move to a sink thread once one does not: every shard
    started and fewer being written than there are cores (a run's tail).
    """
    index, todo, out_dir, resize, max_pixels, counts, cores = _FORKED
    s = todo[k]
    prepared = (prepare_item(*t) for t in item_tasks(index, s.members, resize, max_pixels, False))
    with counts.get_lock():
        counts[0] -= 1
        counts[1] += 1
    try:
        return write_shard(s, index.items, index.labels, prepared, os.path.join(out_dir, s.file),
                           num_classes=len(index.classes), background=lambda: counts[0] <= 0 and counts[1] < cores)
    finally:
        with counts.get_lock():
            counts[1] -= 1
