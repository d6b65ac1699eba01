"""What every source yields, and how the writer asks for bytes.

A source turns one input shape (folder, CSV, BSON, URL list, ...) into a
stream of `Item`s (one per sample) and `Skip`s (inputs that cannot become a
sample, with a reason). Items are light: they carry a `load` callable, not the
bytes, so the writer can index millions of samples, plan splits and shards,
and only then read bytes shard by shard (possibly in worker processes, hence
`load` must be picklable: `file_loader(paths)`, a `FileRange`, or a
`functools.partial` of a module-level function). The index keeps the first
two as numbers and strings in arrays, any other loader as the object itself.

Sources do NOT decode or validate images; the writer does that once for all.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

from utils.errors import SourceError  # (also re-exported: the writer and tests catch it from here)


@dataclass(frozen=True, slots=True)
class Item:
    """One sample: where its bytes come from and what it is."""

    key: str                      # unique, stable name of the input (rel. path, "file.bson#product/photo", URL id)
    source_id: str                # -> image/source_id; a product's photos share it (val split groups by it)
    labels: tuple[str, ...]       # class NAMES; () = unlabeled
    load: Callable[[], list[bytes]] = field(compare=False)  # -> encoded planes (1, or N for multi-channel)
    size: int = 0                 # estimated encoded bytes (for sharding by size)
    split: str | None = None      # one of utils.dataset.manifest.SPLITS when the source dictates it


@dataclass(frozen=True, slots=True)
class Skip:
    """An input that cannot become a sample; a row of skipped.csv."""

    key: str                      # same naming as Item.key
    reason: str                   # short, stable, human readable: "label not in label list: foo"


def read_files(paths: Sequence[str]) -> list[bytes]:
    """Planes from files, in order."""
    out = []
    for p in paths:
        with open(p, "rb") as f:
            out.append(f.read())
    return out


SIZED_READ_LIMIT = 1 << 30   # one os.read returns at most ~2 GiB on Linux: bigger files take read_files


def read_file(path: str, size: int) -> list[bytes]:
    """read_files((path,)) in three system calls, for a file whose size the index holds.

    Asks one byte more than `size`: getting it means the file grew since it
    was indexed, and the rest is read too, so the bytes are the file's as
    read_files gives them whatever happened to it. (open() + BufferedReader
    .read() make 9 calls: fstat, ioctl, lseek, fstat, read, read, close ...;
    measured on 110 KB photos, 28.5 -> 26.3 us per file.)

    Args:
        path: the file.
        size: its size when indexed (any value is safe, the exact one is fastest).
    Returns:
        [the file's bytes].
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        data = os.read(fd, size + 1)
        if len(data) > size:
            parts = [data]
            while chunk := os.read(fd, 1 << 20):
                parts.append(chunk)
            data = b"".join(parts)
    finally:
        os.close(fd)
    return [data]


def file_loader(*paths: str) -> Callable[[], list[bytes]]:
    """A picklable Item.load that reads `paths` (one file per plane)."""
    return functools.partial(read_files, tuple(paths))


class FileRange:
    """Item.load for `length` bytes at `offset` of one file (a photo inside a BSON dump).

    Slotted and picklable; the index (utils.generate.index) stores it as two
    numbers in arrays instead of keeping the object.
    """

    __slots__ = ("path", "offset", "length")

    def __init__(self, path: str, offset: int, length: int) -> None:
        self.path, self.offset, self.length = path, offset, length

    def __call__(self) -> list[bytes]:
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read(self.length)
        if len(data) < self.length:
            raise SourceError(f"{self.path}: file cut short at byte {self.offset + len(data)}")
        return [data]

    def __getstate__(self):
        return self.path, self.offset, self.length

    def __setstate__(self, state) -> None:
        self.path, self.offset, self.length = state


def file_item(key: str, source_id: str, labels: tuple[str, ...], *paths: str, split: str | None = None) -> Item:
    """The Item of a sample stored in files (one per plane); its size is theirs on disk."""
    return Item(key=key, source_id=source_id, labels=labels, load=file_loader(*paths),
                size=sum(os.path.getsize(p) for p in paths), split=split)


class Source:
    """Base class. Subclasses set `kind` and implement `items()`.

    Attributes:
        classes: class names in index order when the source fixes them
            (--label-names, --categories, a folder's class dirs); None means
            "the sorted set of labels seen" (the writer derives it).
        multi_label: True when a sample may carry several labels.
        args: what to record in manifest.json under source.args.
        readable: optional {class name: readable name} kept in the manifest
            (Cdiscount category_id -> "level1 / level2 / level3").
    """

    kind: str = "?"

    def __init__(self) -> None:
        self.classes: list[str] | None = None
        self.multi_label: bool = False
        self.args: dict = {}
        self.readable: dict[str, str] | None = None

    def items(self) -> Iterator[Item | Skip]:
        """Every input, in a stable order, as exactly one Item or Skip."""
        raise NotImplementedError
