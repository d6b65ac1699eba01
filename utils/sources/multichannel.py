"""Multi-channel samples: one sample spread over several grayscale files.

Files are named `{id}_{channel}.{ext}` anywhere under root, e.g. Recursion
`HEPG2-01/Plate1/B02_s1_w1.png` ... `_w6.png` or Human Protein Atlas
`{id}_red.png`, `_green`, `_blue`, `_yellow`. Files in one folder with the same
id form a group; the group's planes are stacked in the order of `channels`.

Group id: `relative/dir/{id}` (just `{id}` at the top level). Labels, when a
labels CSV is given (same format as table.py), are looked up by group id and
then by the bare id. Without a labels CSV the samples are unlabeled (test).

Inputs are the groups plus the files that belong to no group (wrong
extension, unknown channel suffix); each becomes one Item or Skip.
"""
from __future__ import annotations

import os
from typing import Iterator

from utils.errors import SourceError
from utils.sources.base import Item, Skip, file_item
from utils.sources.folder import require_dir, stem, walk_inputs
from utils.sources.table import LabelledSource


def split_name(path: str) -> tuple[str, str] | None:
    """`B02_s1_w1.png` -> ("B02_s1", "w1"); None when there is no `_suffix`."""
    sid, sep, suffix = stem(path).rpartition("_")
    return (sid, suffix) if sep and sid and suffix else None


class MultiChannelSource(LabelledSource):
    """One Item per complete group of channel files under `root` (see the module doc).

    Args:
        channels: the file-name suffixes of the planes, in plane order.
    Raises:
        SourceError: a missing root, no or repeated channel suffixes, bad label files.
    """

    kind = "multichannel"

    def __init__(self, root: str, channels: list[str], labels_csv: str | None = None,
                 label_names: str | None = None, multi_label: bool | None = None) -> None:
        require_dir(root)
        channels = [c.strip() for c in channels]
        if not channels or not all(channels):
            raise SourceError("--channels needs the channel suffixes in order, e.g. w1,w2,w3")
        if len(set(channels)) != len(channels):
            raise SourceError(f"--channels lists a suffix twice: {','.join(channels)}")
        super().__init__(labels_csv, label_names, multi_label)
        self.root = root
        self.channels = channels
        self.args = {"root": root, "channels": channels, "labels": labels_csv, "label_names": label_names,
                     "multi_label": self.multi_label}

    def items(self) -> Iterator[Item | Skip]:
        known = set(self.channels)
        groups: dict[str, dict[str, str]] = {}      # group id -> {channel: path}; insertion = sorted order
        bare: dict[str, str] = {}                   # group id -> id without its folder
        for path, key, problem in walk_inputs(self.root, self._exclude):
            parts = split_name(path)
            if problem:
                yield Skip(key, problem)
            elif parts is None:
                yield Skip(key, "no channel suffix in file name")
            elif parts[1] not in known:
                yield Skip(key, f"unknown channel: {parts[1]}")
            else:
                folder = os.path.dirname(key)
                gid = f"{folder}/{parts[0]}" if folder else parts[0]
                planes = groups.setdefault(gid, {})
                if parts[1] in planes:   # a_w1.png next to a_w1.tif
                    yield Skip(key, f"duplicate channel {parts[1]}")
                else:
                    planes[parts[1]] = path
                    bare[gid] = parts[0]

        used_rows: set[str] = set()
        for gid, planes in groups.items():
            row = None
            if self.table is not None:
                row = gid if gid in self.table else bare[gid] if bare[gid] in self.table else None
                if row is not None:
                    used_rows.add(row)      # even if the group is skipped: the row had its image
            missing = [c for c in self.channels if c not in planes]
            if missing:
                yield Skip(gid, f"missing channel {missing[0]}")
                continue
            labels: tuple[str, ...] = ()
            if self.table is not None:
                if row is None:
                    yield Skip(gid, "no CSV row for image")
                    continue
                named = self.class_names(row)
                if isinstance(named, str):
                    yield Skip(gid, named)
                    continue
                labels = named
            yield file_item(gid, gid, labels, *(planes[c] for c in self.channels),
                            split=None if self.table is not None else "test")

        if self.table is not None:
            for row in self.table:
                if row not in used_rows:
                    yield Skip(row, "no image for CSV row")
