"""The local run's resize workers: a process pool started early, fed in chunks.

`--max-side` / `--short-side` decode, resize and re-encode every image: CPU
work that a process pool spreads over the cores. What used to eat the gain
(measured with bench/generate.py, 1,000 photos, 2 workers on 2 cores):

* start-up: a forkserver pool had to start a fresh interpreter and import
  numpy + Pillow + this package before its first image (1.4-1.7 s, as long
  as resizing 400 photos). Where it is safe, the workers are now forked
  (no interpreter start, nothing to import), and in any case the pool is
  started BEFORE the index is built, so whatever start-up is left overlaps
  the index and the plan.
* one future per image: ~0.27 ms of parent time per task (submit, pickle,
  wake-ups), taken from the same two cores the workers resize on. Images
  now go CHUNK at a time. The executor's own threads in the parent (its
  manager, which receives and unpickles results, and the call queue's
  feeder) cost about a fixed amount per task, so the chunk size sets the
  parent's share. Measured with per-thread CPU time (600 photos,
  --max-side 256, 2 workers; wall times on the loaded machine were noise):
  parent CPU per image (all its threads) 243-244 us with 2 per task
  (manager 90, feeder 31, main thread 95-101), 193-195 with 4, 151-175
  with 8 (manager 47, feeder 12, main 70-90), 127-132 with 16; the
  workers' ~3,100 us per image did not move. 8, not 16: a task's results
  (~20 KB per resized photo) pass a 64 KiB pipe, and the first results and
  the last task's tail wait for a whole chunk (~8 x 1.5 ms).

A fork is safe here when nothing the child could trip over is running: on
Linux, with TensorFlow not imported (its threads and locks do not survive a
fork) and no other Python thread alive (the sink thread, a progress bar's
monitor). Otherwise the pool uses forkserver (this module preloaded) or
spawn. A forked worker asks the kernel to kill it when the writer dies: it
holds copies of the writer's open files, the output folder's lock among
them, and a kill -9 of the writer must still release that lock.
"""
from __future__ import annotations

import collections
import concurrent.futures as cf
import multiprocessing
import os
import sys
import threading
from typing import Callable, Iterable, Iterator

CHUNK = 8              # images per task (see the module doc)
CHUNKS_PER_WORKER = 4  # tasks in flight per worker: one running, the next ones queued (64 images for 2)


def start_method() -> str:
    """'fork' where it is safe and cheap (see the module doc), else 'forkserver', else 'spawn'."""
    methods = multiprocessing.get_all_start_methods()
    if (sys.platform.startswith("linux") and "fork" in methods and "tensorflow" not in sys.modules
            and threading.active_count() == 1):
        return "fork"
    return "forkserver" if "forkserver" in methods else "spawn"


def _die_with(parent: int) -> None:
    """Worker initializer after a fork: killed with the writer (PR_SET_PDEATHSIG), gone if it already died."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))   # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:   # the writer died between the fork and the prctl
        os._exit(1)


def _ready() -> int:
    """The warm-up task: makes the pool start its workers now."""
    return os.getpid()


def make_executor(resizing: bool, workers: int) -> cf.Executor | None:
    """A started process pool for prepare_item when resizing with 2+ workers, else None (run inline).

    Pass-through runs inline: a read plus a header check is cheap and
    GIL-bound, and the sink thread already overlaps hashing and writing with
    it. Measured on 2,000 JPEGs (bench/generate.py, medians of 3 rounds):
    inline 0.61x of a plain copy, a 2-thread pool 0.35x.

    Args:
        resizing: --max-side or --short-side was given.
        workers: --workers.
    Returns:
        the executor, its workers already starting; shut it down when done.
    """
    if workers <= 1 or not resizing:
        return None
    method = start_method()
    ctx = multiprocessing.get_context(method)
    kw = {}
    if method == "fork":
        kw = {"initializer": _die_with, "initargs": (os.getpid(),)}
    elif method == "forkserver":
        ctx.set_forkserver_preload(["utils.generate.shards"])   # imported once, in the server
    executor = cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx, **kw)
    for _ in range(workers):   # fork: all workers at the first submit; others: one per submit
        executor.submit(_ready)
    return executor


def _run_chunk(fn: Callable, chunk: list[tuple]) -> list:
    return [fn(*a) for a in chunk]


def ordered_results(fn: Callable, args: Iterable[tuple], executor: cf.Executor | None,
                    workers: int = 1) -> Iterator:
    """map() in chunks of CHUNK with bounded look-ahead, results in order; inline without an executor.

    Args:
        fn: a module-level function (it is pickled by reference).
        args: argument tuples, consumed lazily.
        executor: from make_executor, or None.
        workers: the executor's worker count (sets the look-ahead).
    """
    if executor is None:
        for a in args:
            yield fn(*a)
        return
    window = max(1, workers) * CHUNKS_PER_WORKER
    pending: collections.deque = collections.deque()
    it = iter(args)
    while True:
        chunk = [a for _, a in zip(range(CHUNK), it)]
        if chunk:
            pending.append(executor.submit(_run_chunk, fn, chunk))
        if pending and (len(pending) >= window or not chunk):
            yield from pending.popleft().result()
        elif not chunk:
            return
