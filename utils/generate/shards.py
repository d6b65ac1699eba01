"""WRITE: one planned shard -> a framed, hashed .tfrecord file and its metadata.

Per sample, `prepare_item` (in a worker: threads or processes) loads the bytes
and checks or resizes them with utils.image.prepare.prepare_planes; per shard,
`write_shard` serializes the records (utils.dataset.schema), frames them
(utils.dataset.tfrecord, no TensorFlow) and writes them to `<shard>.tmp` on a
sink thread that hashes as it writes, then renames the file. Nothing here knows
about the output folder's resume state (utils.generate.outdir) or the other
shards, except through the `seen` hashes of --dedupe.

No TensorFlow: worker processes import this module, and TensorFlow would cost
each of them ~700 MB RSS and seconds of start-up.
"""
from __future__ import annotations

import collections
import concurrent.futures as cf
import hashlib
import multiprocessing
import os
import queue
import threading
from typing import Callable, Iterable, Iterator, Sequence

from utils.dataset import schema, tfrecord
from utils.errors import first_line
from utils.files import TMP_SUFFIX
from utils.generate.plan import ShardPlan
from utils.image.prepare import prepare_planes
from utils.sources.base import Item


def prepare_item(load: Callable[[], list[bytes]], resize: dict, max_pixels: int, want_hash: bool) -> tuple:
    """Load and check (or resize) one sample; runs in a worker. Never raises for bad input.

    Args:
        load: the Item's loader.
        resize: {"max_side": N | None, "short_side": N | None}, passed on to prepare_planes.
        max_pixels: refuse larger images.
        want_hash: also return the sha1 of the input planes (--dedupe).

    Returns:
        ("ok", planes, (fmt, height, width, channels), sha1 hex or None), or
        ("skip", reason).
    """
    try:
        planes = load()
    except Exception as e:  # a vanished file, a failed download, ...
        return ("skip", f"cannot read input: {first_line(e, 200)}")
    if not planes or any(not p for p in planes):
        return ("skip", "empty file")
    digest = None
    if want_hash:
        h = hashlib.sha1()
        for p in planes:
            h.update(hashlib.sha1(p).digest())
        digest = h.hexdigest()
    try:
        out, info = prepare_planes(planes, **resize, max_pixels=max_pixels)
    except MemoryError:
        return ("skip", "image too large to decode")
    except Exception as e:  # BadImage's text is the reason; any decoder error is a bad image too
        return ("skip", first_line(e, 200))
    return ("ok", out, (info.fmt, int(info.height), int(info.width), int(info.channels)), digest)


def ordered_results(fn: Callable, args: Iterable[tuple], executor: cf.Executor | None, window: int) -> Iterator:
    """map() with bounded look-ahead, results in submission order; inline without an executor."""
    if executor is None:
        for a in args:
            yield fn(*a)
        return
    pending: collections.deque = collections.deque()
    for a in args:
        pending.append(executor.submit(fn, *a))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def make_executor(resizing: bool, workers: int) -> tuple[cf.Executor | None, int]:
    """-> (executor or None, look-ahead window) for prepare_item.

    Resizing is CPU-bound: a process pool (forkserver/spawn, never a fork of a
    process that may hold TensorFlow). Pass-through runs inline: a read plus a
    header check is cheap and GIL-bound, and the sink thread already overlaps
    hashing and writing with it. Measured on 2,000 JPEGs (bench/generate.py,
    medians of 3 rounds): inline 0.61x of a plain copy, a 2-thread pool 0.35x.
    """
    if workers <= 1 or not resizing:
        return None, 1
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    return cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx), workers * 8


def _write_all(f, parts: tuple[bytes, ...]) -> None:
    """Write parts to the unbuffered file f in order, one writev where there is one."""
    done = os.writev(f.fileno(), parts) if hasattr(os, "writev") else 0
    rest = memoryview(b"".join(parts))[done:] if done < sum(map(len, parts)) else b""
    while rest:  # a short writev (signals, odd filesystems) or no writev at all
        rest = rest[f.write(rest):]


class ShardSink:
    """Frames, hashes and writes records on a background thread.

    crc32c, sha256 and file writes release the GIL, so they overlap with the
    (GIL-bound) serialization in the main thread; a bounded queue caps memory.
    """

    def __init__(self, path: str, depth: int = 64) -> None:
        self.path, self.size, self.error = path, 0, None
        self._sha = hashlib.sha256()
        self._q: queue.Queue = queue.Queue(maxsize=depth)
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        try:
            # Header, record and footer go to the file in one writev, straight
            # from their own buffers: no concatenated copy of the record and no
            # userland file buffer. Measured on bench/generate.py pass-through:
            # 0.64-0.72x of a plain copy, from 0.46-0.53x with one joined copy
            # per record + a buffered file.
            with open(self.path, "wb", buffering=0) as f:
                while (rec := self._q.get()) is not None:
                    header, footer = tfrecord.frame_parts(rec)
                    parts = (header, rec, footer)
                    _write_all(f, parts)
                    for b in parts:
                        self._sha.update(b)
                    self.size += len(header) + len(rec) + len(footer)
        except BaseException as e:  # surfaced by close()
            self.error = e
            while self._q.get() is not None:   # keep draining so write() never blocks forever
                pass

    def write(self, rec: bytes) -> None:
        self._q.put(rec)

    def close(self) -> tuple[int, str]:
        """-> (bytes, sha256) once everything is on disk (in the page cache)."""
        self._q.put(None)
        self._t.join()
        if self.error is not None:
            raise self.error
        return self.size, self._sha.hexdigest()


def _no_tick(nbytes: int) -> None:
    pass


def write_shard(entry: ShardPlan, items: Sequence[Item], labels: Sequence[tuple[int, ...]],
                prepared: Iterator[tuple], path: str, *, num_classes: int, seen: dict[str, str] | None = None,
                tick: Callable[[int], None] = _no_tick) -> dict:
    """Write one planned shard to `path`, through `path + .tmp` and a rename.

    Args:
        entry: the shard's plan.
        items, labels: the index's columns (`entry.members` index them).
        prepared: prepare_item's results for `entry.members`, in order.
        path: the shard file.
        num_classes: the length of the class count list.
        seen: --dedupe: {input sha1: key} of every record written before; a
            repeat is skipped as "duplicate of KEY", a new one added. None: no dedupe.
        tick: called once per member with the record's size (0 when skipped).

    Returns:
        the shard's metadata: file, count, fold, class_counts, planes, channels,
        skipped ([key, reason] pairs), hashes (this shard's part of `seen`, or
        None), bytes, sha256.
    """
    tmp = path + TMP_SUFFIX
    meta = {"file": entry.file, "count": 0, "fold": entry.fold, "class_counts": [0] * num_classes,
            "planes": [], "channels": [], "skipped": [], "hashes": {} if seen is not None else None}
    sink = ShardSink(tmp)   # hashed as written: no second read of the shard
    try:
        for i in entry.members:
            res = next(prepared)
            key = items[i].key
            if res[0] == "skip":
                meta["skipped"].append([key, res[1]])
                tick(0)
                continue
            _, planes, (fmt, height, width, channels), digest = res
            if seen is not None:
                if digest in seen:
                    meta["skipped"].append([key, f"duplicate of {seen[digest]}"])
                    tick(0)
                    continue
                seen[digest] = key
                meta["hashes"][digest] = key
            rec = schema.serialize(planes, fmt, height, width, channels, labels[i], items[i].source_id)
            sink.write(rec)
            meta["count"] += 1
            for lab in labels[i]:
                meta["class_counts"][lab] += 1
            if len(planes) not in meta["planes"]:
                meta["planes"].append(len(planes))
            if channels not in meta["channels"]:
                meta["channels"].append(channels)
            tick(len(rec))
    finally:
        meta["bytes"], meta["sha256"] = sink.close()
    os.replace(tmp, path)
    return meta
