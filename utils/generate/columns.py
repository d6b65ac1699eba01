"""The index's storage: strings in one blob, loaders as numbers, growable while a source streams.

A 12.4M-photo dump must index in well under 64 bytes per photo, so nothing
here keeps a Python object per item: strings go into one bytes blob plus end
offsets, a loader into a family id and one integer (utils.sources.base's
FileRange -> its offset, its length being the item's size; a one-file
file_loader -> its folder, once per family, and a row of file names; a
multi-file one -> a row of paths). Any other loader is kept as the object
itself, so every Source still works.
"""
from __future__ import annotations

import functools
import os
from array import array
from collections.abc import Sequence

import numpy as np

from utils.sources.base import SIZED_READ_LIMIT, FileRange, file_loader, read_file, read_files

_OFFSET_LIMIT = 2 ** 32 - 1


class StringColumn(Sequence):
    """Strings appended one by one into a bytes blob; str at i on access."""

    __slots__ = ("_blob", "_ends")

    def __init__(self) -> None:
        self._blob = bytearray()
        self._ends = array("I")        # uint32 end offsets; widened when the blob outgrows them

    def append(self, s: str) -> None:
        blob = self._blob
        blob += s.encode("utf-8", "surrogatepass")
        try:
            self._ends.append(len(blob))
        except OverflowError:          # the blob passed 4 GiB: int64 offsets from now on
            self._ends = array("q", self._ends)
            self._ends.append(len(blob))

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, i) -> str:
        ends = self._ends
        if i < 0:
            i += len(ends)
        return self._blob[ends[i - 1] if i else 0:ends[i]].decode("utf-8", "surrogatepass")

    def raw(self, i: int) -> bytes:
        """The stored bytes of string i (hashing and comparing without decoding)."""
        start = self._ends[i - 1] if i else 0
        return bytes(self._blob[start:self._ends[i]])

    def take(self, keep: np.ndarray) -> "StringColumn":
        """A new column of the strings where the boolean mask `keep` is set, in order."""
        ends = as_array(self._ends, np.uint32 if self._ends.typecode == "I" else np.int64).astype(np.int64)
        lengths = np.diff(ends, prepend=0)
        out = StringColumn()
        blob = np.frombuffer(bytes(self._blob) if not self._blob else self._blob, dtype=np.uint8)
        out._blob = bytearray(blob[np.repeat(keep, lengths)].tobytes())   # one byte of mask per byte
        new_ends = np.cumsum(lengths[keep])
        out._ends = array("I" if len(out._blob) <= _OFFSET_LIMIT else "q", new_ends.astype(
            np.uint32 if len(out._blob) <= _OFFSET_LIMIT else np.int64).tobytes())
        return out


def shorten(s: str, prefix: str) -> str:
    """`s` as stored after `prefix`: \x01 + the rest when it starts with it, \x02 + s when s
    itself starts with \x01 or \x02, else s (lengthen reads it back)."""
    if prefix and s.startswith(prefix):
        return "\x01" + s[len(prefix):]
    return "\x02" + s if s[:1] in ("\x01", "\x02") else s


def lengthen(stored: str, prefix: str) -> str:
    """The string `shorten(s, prefix)` stored."""
    if stored[:1] == "\x01":
        return prefix + stored[1:]
    return stored[1:] if stored[:1] == "\x02" else stored


class LoaderColumn:
    """Every item's Item.load as (family, integer); rebuilt as a fresh loader on access."""

    FILES, RANGE, OBJECT = "files", "range", "object"

    def __init__(self) -> None:
        self.families: list[tuple[str, str | None]] = []   # (kind, path): RANGE per file, FILES per folder
        self._family_ids: dict[tuple[str, str | None], int] = {}
        self.family = array("H")          # per item
        self.ref = array("q")             # per item: row in paths / byte offset / row in objects
        self.paths = StringColumn()       # file names (a folder's family), or whole paths NUL-joined
        self.objects: list = []           # any other loader, as is
        for kind in (self.FILES, self.OBJECT):  # always there, when the ids for folders run out too
            self._family(kind, None)
        self._last_range: tuple[str | None, int | None] = (None, None)

    def _family(self, kind: str, path: str | None) -> int | None:
        """The id of (kind, path); None when it is new and the uint16 ids are used up."""
        fid = self._family_ids.get((kind, path))
        if fid is None:
            if len(self.families) >= 2 ** 16 - 2:
                return None
            fid = self._family_ids[kind, path] = len(self.families)
            self.families.append((kind, path))
        return fid

    def append(self, load, size: int, source_id: str = "") -> None:
        """Store one item's loader.

        Args:
            load: the Item's load.
            size: the item's size (a FileRange's length, when they agree).
            source_id: the item's; a file name that starts with it is stored as the rest.
        """
        fid = None
        if type(load) is FileRange and load.length == size:
            if load.path == self._last_range[0]:    # a dump's photos: all the same file
                fid = self._last_range[1]
            else:
                fid = self._family(self.RANGE, load.path)
                self._last_range = (load.path, fid)
            ref = load.offset
        elif (type(load) is functools.partial and load.func is read_files and not load.keywords
              and len(load.args) == 1 and all("\0" not in p for p in load.args[0])):
            paths = load.args[0]
            if len(paths) == 1:            # one file: its folder once per family, its name per item
                folder, name = os.path.split(paths[0])
                fid, ref = self._family(self.FILES, folder), len(self.paths)
                if fid is None:
                    fid = self._family(self.FILES, None)
                self.paths.append(shorten(name, source_id) if self.families[fid][1] is not None
                                  else shorten(paths[0], ""))
            else:
                fid, ref = self._family(self.FILES, None), len(self.paths)
                self.paths.append(shorten("\0".join(paths), ""))
        if fid is None:
            fid, ref = self._family(self.OBJECT, None), len(self.objects)
            self.objects.append(load)
        self.family.append(fid)
        self.ref.append(ref)

    def get(self, i: int, size: int, source_id: str = ""):
        """A loader equal in effect to the one appended as item i (with the same source_id)."""
        kind, path = self.families[self.family[i]]
        ref = int(self.ref[i])
        if kind == self.RANGE:
            return FileRange(path, ref, size)
        if kind == self.FILES:
            stored = lengthen(self.paths[ref], source_id)
            if path is not None:
                return file_loader(os.path.join(path, stored))
            return file_loader(*stored.split("\0"))
        return self.objects[ref]

    def reader(self, i: int, size: int, source_id: str = ""):
        """get(i, ...), except that a one-file item reads its file with read_file (its size known).

        For the writer: the loader is called once, right away (get() keeps the
        very loader kind a Source made, which tests and Beam's specs compare).
        """
        kind, path = self.families[self.family[i]]
        if kind == self.FILES and path is not None and 0 < size < SIZED_READ_LIMIT:
            return functools.partial(read_file, os.path.join(path, lengthen(self.paths[int(self.ref[i])], source_id)),
                                     size)
        return self.get(i, size, source_id)

    def take(self, keep: np.ndarray) -> None:
        """Keep only the items where the boolean mask `keep` is set (their rows stay where they are)."""
        self.family = as_array(self.family, np.uint16)[keep]
        self.ref = as_array(self.ref, np.int64)[keep]

    def finish(self) -> None:
        """Done appending: the columns become arrays, the family ids one byte where they fit."""
        family = as_array(self.family, np.uint16) if isinstance(self.family, array) else self.family
        self.family = family.astype(np.uint8) if len(self.families) <= 256 else family
        if isinstance(self.ref, array):
            self.ref = as_array(self.ref, np.int64)


def as_array(a: array, dtype) -> np.ndarray:
    """A numpy view of an array.array, no copy (the array must not grow afterwards)."""
    return np.frombuffer(a, dtype=dtype) if len(a) else np.zeros(0, dtype=dtype)
