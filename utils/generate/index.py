"""INDEX: a Source's Items and Skips -> the light, in-memory index a plan is made from.

The index holds no image bytes: an Item carries a `load` callable, so a
12.4M-photo BSON dump indexes in a few GB. The class list is fixed here (the
source's, else the naturally sorted labels seen) and every label becomes its
index into it.
"""
from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass

from utils.errors import SourceError
from utils.files import natural_key
from utils.generate.progress import progress_bar
from utils.sources.base import Item, Skip, Source


class ItemColumn(Sequence):
    """One field of every Item, read through on access (no copy of a 12M-entry list)."""

    __slots__ = ("_items", "_get")

    def __init__(self, items: list[Item], field: str) -> None:
        self._items, self._get = items, operator.attrgetter(field)

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, i: int):
        return self._get(self._items[i])


@dataclass
class Index:
    """The usable samples, their label indices, the skipped inputs and the class list."""

    items: list[Item]                  # the samples, in source order
    labels: list[tuple[int, ...]]      # class indices per item
    skips: list[tuple[str, str]]       # (key, reason): source skips + labels not in the list
    classes: list[str]

    # The columns a plan reads (utils.generate.plan.make_plan): a columnar index
    # would hand over arrays here instead.
    @property
    def source_ids(self) -> Sequence[str]:
        return ItemColumn(self.items, "source_id")

    @property
    def splits(self) -> Sequence[str | None]:
        return ItemColumn(self.items, "split")

    @property
    def sizes(self) -> Sequence[int]:
        return ItemColumn(self.items, "size")


def build_index(source: Source, *, strict: bool = False, progress: bool = True) -> Index:
    """Iterate `source` once into an Index.

    Duplicate keys and labels outside the source's class list become skips.

    Args:
        source: any utils.sources Source.
        strict: raise on the first skip instead of listing it.
        progress: show a progress bar.

    Raises:
        SourceError: with `strict`, for the first skipped input; and when the
            class list holds a name twice.
    """
    items: list[Item] = []
    skips: list[tuple[str, str]] = []
    seen_keys: set[str] = set()

    def skip(key: str, reason: str) -> None:
        if strict:
            raise SourceError(f"{key}: {reason} (--strict makes every skipped input fatal)")
        skips.append((key, reason))

    with progress_bar(progress, desc="indexing", unit=" inputs", leave=False) as bar:
        for x in source.items():
            bar.update(1)
            if isinstance(x, Skip):
                skip(x.key, x.reason)
            elif x.key in seen_keys:
                skip(x.key, "duplicate input key")
            else:
                seen_keys.add(x.key)
                items.append(x)
    del seen_keys

    if source.classes is not None:
        classes = list(source.classes)
    else:
        classes = sorted({lab for it in items for lab in it.labels}, key=natural_key)
    if len(set(classes)) != len(classes):
        raise SourceError("the class list has duplicate names")
    pos = {c: i for i, c in enumerate(classes)}

    kept, labels = [], []
    shared: dict[tuple[int, ...], tuple[int, ...]] = {}  # one tuple per distinct label set, not per item
    for it in items:
        unknown = [lab for lab in it.labels if lab not in pos]
        if unknown:
            skip(it.key, f"label not in label list: {unknown[0]}")
            continue
        kept.append(it)
        ids = tuple(dict.fromkeys(pos[lab] for lab in it.labels))  # dedupe, keep order
        labels.append(shared.setdefault(ids, ids))
    return Index(kept, labels, skips, classes)
