"""WRITE: one planned shard -> a framed, hashed .tfrecord file and its metadata.

Per sample, `prepare_item` (inline, or in the worker processes of
utils.generate.pool) loads the bytes and checks or resizes them with
utils.image.prepare.prepare_planes; per shard, `write_shard` serializes the
records (utils.dataset.schema) and hands them to a sink thread that frames
them (utils.dataset.tfrecord, no TensorFlow), hashes them and writes them to
`<shard>.tmp`, then renames the file. Nothing here knows
about the output folder's resume state (utils.generate.outdir) or the other
shards, except through the `seen` hashes of --dedupe.

No TensorFlow: worker processes import this module, and TensorFlow would cost
each of them ~700 MB RSS and seconds of start-up.
"""
from __future__ import annotations

import hashlib
import os
import queue
import threading
from typing import Callable, Iterator, Sequence

from utils.dataset import schema, tfrecord
from utils.dataset.manifest import add_image, images_summary
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
    if not planes or not all(planes):
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


def item_tasks(index, members, resize: dict, max_pixels: int, want_hash: bool) -> Iterator[tuple]:
    """prepare_item's argument tuples for these members of an Index (utils.generate.index), lazily."""
    loads, sizes, sids = index.loads, index.sizes, index.source_ids
    return ((loads.reader(i, sizes.item(i), sids[i]), resize, max_pixels, want_hash) for i in members)


def _iov_max() -> int:
    """How many buffers one writev takes (Linux: 1024; POSIX promises 16)."""
    try:
        n = os.sysconf("SC_IOV_MAX")
    except (AttributeError, ValueError, OSError):
        n = -1
    return n if n > 0 else 16


_IOV_MAX = _iov_max()


def _write_all(f, parts: list[bytes]) -> None:
    """Write parts to the unbuffered file f in order: writev, up to _IOV_MAX at a time, where there is one."""
    for start in range(0, len(parts), _IOV_MAX):
        group = parts[start:start + _IOV_MAX]
        done = os.writev(f.fileno(), group) if hasattr(os, "writev") else 0
        total = sum(map(len, group))
        if done < total:  # a short writev (signals, odd filesystems) or no writev at all
            rest = memoryview(b"".join(group))[done:]
            while rest:
                rest = rest[f.write(rest):]


class ShardSink:
    """Hashes and writes framed records on a background thread, in batches.

    Records come as chunks (utils.dataset.schema.serialize_chunks) and are
    never joined: the caller's thread frames them (crc32c), and this one
    hashes (sha256) and writes them (writev) where they are. sha256 and
    writev release the GIL, so they run beside the main thread's reading
    and header checks (sha256 alone costs about what the plain copy of the
    same bytes does). Records are handed over ~1 MiB at a time and written
    with one writev per batch: one queue hand-off and one system call per
    batch, not per record. Measured on bench/generate.py pass-through
    (1,000 photos, 111 MB, CPU time of the whole run, loaded 2-core
    machine): 308-350 ms before (a writev and a queue item per record),
    253-264 ms with batches. The crc32c is the caller's because
    google_crc32c holds the GIL below 1 MiB (its _crc32c.c releases it only
    from there): on this thread it stopped the main thread as long as it
    would there (~13 us per 110 KB photo), and left this thread, the
    pass-through's busier one (sha256 ~85 + crc32c ~13 + writev ~20 us per
    photo, against ~105 on the main thread), with more to do. (Calling the
    same C function through ctypes, which releases the GIL, was tried: in
    80 us calls another thread got to run in only 11-17% of them, the
    wake-up costs more than a photo's 13 us.) A bounded queue caps memory
    (depth x batch).

    `background` may instead be a function: the work then starts on the
    caller's thread, and moves to a sink thread at the first batch for
    which the function says yes. For a process that is one of several
    writing shards side by side: while the others keep the cores busy, a
    thread would only contend for them (and for this process's GIL); once
    they are done, the thread takes up the core they leave
    (utils.generate.apart, measured there).
    """

    BATCH_BYTES = 1 << 20

    def __init__(self, path: str, depth: int = 4, background: bool | Callable[[], bool] = True) -> None:
        self.path, self.size, self.error = path, 0, None
        self._sha = hashlib.sha256()
        self._batch: list[bytes] = []   # framed records' chunks, in order
        self._pending = 0
        self._depth = depth
        self._q: queue.Queue | None = None
        self._file = None
        self._later = None if background is True else background if callable(background) else (lambda: False)
        if self._later is None:
            self._start()
        else:
            self._file = open(path, "wb", buffering=0)

    def _start(self) -> None:
        self._q = queue.Queue(maxsize=self._depth)
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _put(self, f, batch: list[bytes]) -> None:
        _write_all(f, batch)
        for c in batch:
            self._sha.update(c)

    def _run(self) -> None:
        try:
            # a sink thread from the start opens the file itself (an open error surfaces in close())
            with self._file or open(self.path, "wb", buffering=0) as f:
                while (batch := self._q.get()) is not None:
                    self._put(f, batch)
        except BaseException as e:  # surfaced by close()
            self.error = e
            while self._q.get() is not None:   # keep draining so write() never blocks forever
                pass

    def write(self, rec: bytes) -> None:
        """Add one serialized record."""
        self.write_chunks([rec])

    def write_chunks(self, chunks: list[bytes]) -> int:
        """Add one record given as chunks whose join is the serialized record; -> its size."""
        framed = tfrecord.frame_chunks(chunks)
        self._batch += framed
        n = sum(map(len, framed))
        self.size += n
        self._pending += n
        if self._pending >= self.BATCH_BYTES:
            self._flush()
        return n - tfrecord.FRAME_BYTES

    def _flush(self) -> None:
        if self._batch:
            if self._q is None and self._later():
                self._start()
            if self._q is None:
                try:
                    self._put(self._file, self._batch)
                except BaseException as e:
                    self.error = e   # close() raises it, as it does the sink thread's, and writes no more
                    raise
            else:
                self._q.put(self._batch)
            self._batch, self._pending = [], 0

    def close(self) -> tuple[int, str]:
        """-> (bytes, sha256) once everything is on disk (in the page cache)."""
        if self._q is None:   # inline so far: the last batch may still move to the thread
            try:
                if self.error is None:
                    self._flush()
            finally:
                if self._q is None:
                    self._file.close()
        if self._q is not None:
            self._flush()
            self._q.put(None)
            self._t.join()
        if self.error is not None:
            raise self.error
        return self.size, self._sha.hexdigest()


def _no_tick(nbytes: int) -> None:
    pass


def write_shard(entry: ShardPlan, items: Sequence[Item], labels: Sequence[tuple[int, ...]],
                prepared: Iterator[tuple], path: str, *, num_classes: int, seen: dict[str, str] | None = None,
                tick: Callable[[int], None] = _no_tick, background: bool | Callable[[], bool] = True) -> dict:
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
        background: hash and write on a sink thread, or from when this says so (ShardSink).

    Returns:
        the shard's metadata: file, count, fold, class_counts, planes, channels,
        images (the manifest's summary of the records' formats and sizes),
        skipped ([key, reason] pairs), hashes (this shard's part of `seen`, or
        None), bytes, sha256.
    """
    return write_shard_deferred(entry, items, labels, prepared, path, num_classes=num_classes, seen=seen,
                                tick=tick, background=background)()


def write_shard_deferred(entry: ShardPlan, items: Sequence[Item], labels: Sequence[tuple[int, ...]],
                         prepared: Iterator[tuple], path: str, *, num_classes: int,
                         seen: dict[str, str] | None = None,
                         tick: Callable[[int], None] = _no_tick,
                         background: bool | Callable[[], bool] = True) -> Callable[[], dict]:
    """write_shard, returning as soon as every record is handed to the sink thread.

    The sink may still be hashing and writing the last few MiB; the local
    writer starts the next shard meanwhile instead of waiting for them (on a
    pass-through, ~45 photos of sha256 with the main thread idle at every
    shard's end).

    Returns:
        a function that waits for the sink, renames the file and returns
        write_shard's metadata. Call it exactly once.
    """
    tmp = path + TMP_SUFFIX
    meta = {"file": entry.file, "count": 0, "fold": entry.fold, "class_counts": [0] * num_classes,
            "planes": [], "channels": [], "images": images_summary(), "skipped": [],
            "hashes": {} if seen is not None else None}
    sink = ShardSink(tmp, background=background)   # hashed as written: no second read of the shard
    skipped, class_counts, n_planes, n_channels = meta["skipped"], meta["class_counts"], meta["planes"], meta["channels"]
    images, add, serialize = meta["images"], sink.write_chunks, schema.serialize_chunks
    count = 0
    try:
        for i in entry.members:
            res = next(prepared)
            item = items[i]   # (an index's item is a view made on access: once per record)
            if res[0] == "skip":
                skipped.append([item.key, res[1]])
                tick(0)
                continue
            _, planes, (fmt, height, width, channels), digest = res
            if seen is not None:
                key = item.key
                if digest in seen:
                    skipped.append([key, f"duplicate of {seen[digest]}"])
                    tick(0)
                    continue
                seen[digest] = key
                meta["hashes"][digest] = key
            lab = labels[i]
            size = add(serialize(planes, fmt, height, width, channels, lab, item.source_id))
            count += 1
            for c in lab:
                class_counts[c] += 1
            if len(planes) not in n_planes:
                n_planes.append(len(planes))
            if channels not in n_channels:
                n_channels.append(channels)
            add_image(images, fmt, height, width)   # the same code for the local and the Beam writer
            tick(size)
    except BaseException:
        sink.close()   # (raises the sink's own error first, if it had one)
        raise
    meta["count"] = count

    def finish() -> dict:
        meta["bytes"], meta["sha256"] = sink.close()
        os.replace(tmp, path)
        return meta

    return finish
