"""Leaf helpers every stage uses: atomic writes, name order, sha256.

Nothing here imports the project's other modules, so any stage may import it.
"""
from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import re
from typing import Iterable, Iterator

TMP_SUFFIX = ".tmp"


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w", *, tmp_suffix: str = TMP_SUFFIX, fsync: bool = True,
                **open_kw) -> Iterator:
    """Open `path + tmp_suffix` for writing; on success it replaces `path` in one rename.

    Readers see the old file or the whole new one, never a half-written one. On any
    failure (or KeyboardInterrupt) the temporary file is removed and the error re-raised.

    Args:
        path: the final file.
        mode: "w" (text, UTF-8, no newline translation unless given) or "wb".
        tmp_suffix: the temporary name's suffix; matplotlib picks its format from the
            extension, so plots pass e.g. ".tmp.png".
        fsync: flush to the disk before the rename, so a power cut cannot leave an
            empty file under the final name.
    """
    tmp = path + tmp_suffix
    if "b" not in mode:
        open_kw.setdefault("encoding", "utf-8")
        open_kw.setdefault("newline", "")
    try:
        with open(tmp, mode, **open_kw) as f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


@contextlib.contextmanager
def atomic_path(path: str, *, tmp_suffix: str = TMP_SUFFIX) -> Iterator[str]:
    """A temporary path for a writer that wants a file name (matplotlib, Keras); renamed on success."""
    tmp = path + tmp_suffix
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def atomic_write_text(path: str, text: str, **kw) -> None:
    with atomic_open(path, "w", **kw) as f:
        f.write(text)


def atomic_write_bytes(path: str, data: bytes, **kw) -> None:
    with atomic_open(path, "wb", **kw) as f:
        f.write(data)


def atomic_write_json(path: str, obj, *, indent: int | None = 1, **kw) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent) + "\n", **kw)


def atomic_write_csv(path: str, header: list[str] | None, rows: Iterable[Iterable], **kw) -> int:
    """Write a CSV atomically; returns the number of data rows written."""
    n = 0
    with atomic_open(path, "w", **kw) as f:
        w = csv.writer(f)
        if header is not None:
            w.writerow(header)
        for row in rows:
            w.writerow(row)
            n += 1
    return n


def natural_key(name: str):
    """'c2' < 'c10'; all-digit names (Cdiscount / iMet ids) sort numerically."""
    return [(0, int(t), t) if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", name) if t]


def file_sha256(path: str, chunk: int = 4 << 20) -> str:
    """Hex sha256 of a file, read in `chunk`-byte pieces."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                return h.hexdigest()
            h.update(b)


class LockedError(OSError):
    """Another live process holds the lock; str() is the one line a CLI prints."""


@contextlib.contextmanager
def exclusive_lock(lock_path: str, what: str, hint: str = "wait for it or choose another --out") -> Iterator[None]:
    """Hold an exclusive advisory lock on `lock_path` for the duration of the block.

    flock locks belong to the open file: the kernel releases them when the process
    dies, so a kill -9 never leaves a stale lock behind, and the lock file itself is
    left in place (removing it would let a third process lock a different inode).
    The holder's pid is written into the file so the refusal can name it.

    Args:
        lock_path: the lock file (created when missing; its folder must exist).
        what: the output it guards, for the message (e.g. "data/pets").
        hint: what the user can do, after the semicolon.
    Raises:
        LockedError: another process holds it:
            "<what> is being written by another run (pid N); <hint>".
    """
    import fcntl

    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockedError(f"{what} is being written by another run (pid {_lock_holder(fd)}); {hint}") from None
        pid = f"{os.getpid()}\n".encode()
        os.pwrite(fd, pid, 0)            # write, then cut: the file never reads empty while held
        os.ftruncate(fd, len(pid))
        try:
            yield
        finally:
            os.ftruncate(fd, 0)          # a clean exit leaves no pid behind (a kill -9 leaves its own)
    finally:
        os.close(fd)     # releases the lock


def _lock_holder(fd: int, wait: float = 2.0) -> str:
    """The pid in a held lock file. The holder writes it just after taking the lock, so a
    process refused inside that gap sees an empty file: wait up to `wait` seconds for it."""
    import time

    deadline = time.monotonic() + wait
    while True:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").split("\n")[0].strip()
        if holder or time.monotonic() > deadline:
            return holder or "unknown"
        time.sleep(0.01)
