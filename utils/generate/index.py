"""INDEX: a Source's Items and Skips -> a columnar index a plan is made from.

The index holds no image bytes and no Python object per item: keys and source
ids in string blobs, class ids, group ids, splits and sizes in arrays, loaders
as numbers (utils.generate.columns). A Cdiscount-shaped BSON dump indexes in
about 32 bytes per photo held, ~50 at the peak of indexing and planning
(tests/generate/test_index_memory.py): ~0.6 GB for the 12.37M photos of the
full dump. `index.items[i]` is an Item-like view read from the columns on
access (pickled as the Item), so the shard writer reads items as it always did. The class list is fixed
here (the source's, else the naturally sorted labels seen) and every label
becomes its index into it.
"""
from __future__ import annotations

import functools
from array import array
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from utils.errors import SourceError
from utils.files import natural_key
from utils.generate.columns import LoaderColumn, StringColumn, as_array, lengthen, shorten
from utils.generate.progress import progress_bar
from utils.sources.base import Item, Skip, Source

_SIZE_LIMIT = 2 ** 32 - 1


class KeyColumn(Sequence):
    """Item keys, stored as their tail when they start with the item's source_id.

    A BSON photo's key "<_id>/<n>" then costs 3 bytes, not 11
    (utils.generate.columns.shorten).
    """

    def __init__(self, stored: StringColumn, source_id) -> None:
        self.stored, self._sid = stored, source_id      # source_id: item i -> its source_id

    def __len__(self) -> int:
        return len(self.stored)

    def __getitem__(self, i) -> str:
        return lengthen(self.stored[i], self._sid(i))


class LabelColumn(Sequence):
    """Class indices per item: `sets[ids[i]]` (one tuple per distinct label set)."""

    def __init__(self, ids: np.ndarray, sets: list[tuple[int, ...]]) -> None:
        self.ids, self.sets = ids, sets

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i) -> tuple[int, ...]:
        return self.sets[self.ids[i]]


class SourceIdColumn(Sequence):
    """source_id per item: `names[group[i]]`; equal ids have equal `group` numbers."""

    def __init__(self, group: np.ndarray, names: StringColumn) -> None:
        self.group, self.names = group, names

    def __len__(self) -> int:
        return len(self.group)

    def __getitem__(self, i) -> str:
        return self.names[self.group[i]]


class SplitColumn(Sequence):
    """The split a source dictates per item: `names[codes[i]]`, None where codes[i] < 0."""

    def __init__(self, codes: np.ndarray, names: list[str]) -> None:
        self.codes, self.names = codes, names

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, i) -> str | None:
        c = self.codes[i]
        return self.names[c] if c >= 0 else None


class ItemRef:
    """Item i of an index, read from its columns field by field on access (an Item-like view).

    The shard writer and the plan hash read a key and a source_id per record;
    building a whole Item (label names, a loader) for that took most of their
    time. Equal to the Item it stands for; `item()` makes that Item.
    """

    __slots__ = ("_x", "_i")

    def __init__(self, index: "Index", i: int) -> None:
        self._x, self._i = index, i

    @property
    def source_id(self) -> str:
        x = self._x
        return x.source_ids.names[x.source_ids.group.item(self._i)]

    @property
    def key(self) -> str:
        x, i = self._x, self._i
        return lengthen(x.keys.stored[i], x.source_ids.names[x.source_ids.group.item(i)])

    @property
    def labels(self) -> tuple[str, ...]:
        x = self._x
        return tuple(x.classes[j] for j in x.labels.sets[x.labels.ids.item(self._i)])

    @property
    def size(self) -> int:
        return self._x.sizes.item(self._i)

    @property
    def split(self) -> str | None:
        return self._x.splits[self._i]

    @property
    def load(self):
        return self._x.loads.get(self._i, self.size, self.source_id)

    def item(self) -> Item:
        return Item(key=self.key, source_id=self.source_id, labels=self.labels, load=self.load,
                    size=self.size, split=self.split)

    def __eq__(self, other) -> bool:
        if isinstance(other, ItemRef):
            other = other.item()
        return self.item() == other if isinstance(other, Item) else NotImplemented

    __hash__ = None

    def __reduce__(self):
        """Pickled as the Item itself, not with the whole index behind it."""
        it = self.item()
        return Item, (it.key, it.source_id, it.labels, it.load, it.size, it.split)

    def __repr__(self) -> str:
        return f"ItemRef({self.item()!r})"


class ItemView(Sequence):
    """index.items: an ItemRef per item, made on access."""

    def __init__(self, index: "Index") -> None:
        self._x, self._n = index, len(index.keys)

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i) -> ItemRef:
        if not -self._n <= i < self._n:
            raise IndexError(f"item {i} of {self._n}")
        return ItemRef(self._x, int(i) + self._n if i < 0 else int(i))


@dataclass(eq=False)
class Index:
    """The usable samples (columns, in source order), the skipped inputs and the class list."""

    keys: KeyColumn
    labels: LabelColumn               # class indices per item
    source_ids: SourceIdColumn
    splits: SplitColumn
    sizes: np.ndarray                 # uint32 estimated encoded bytes (0: unknown)
    loads: LoaderColumn
    skips: list[tuple[str, str]]      # (key, reason): source skips + labels not in the list
    classes: list[str]

    @functools.cached_property
    def items(self) -> ItemView:
        return ItemView(self)


def _repeats(keys: Sequence[str], hashes: array) -> list[int]:
    """Items whose key equals an earlier item's key, in order. Sorts `hashes` in place (it is spent)."""
    h = as_array(hashes, np.int64)
    h.sort()                                  # in place: no second 8 bytes per item
    same = h[1:] == h[:-1]
    if not same.any():
        return []
    suspects = set(h[1:][same].tolist())      # equal hashes: equal keys, or (rarely) a collision
    del h, same
    first: set[str] = set()
    out = []
    for i in range(len(keys)):
        k = keys[i]
        if hash(k) in suspects:
            if k in first:
                out.append(i)
            else:
                first.add(k)
    return out


def _canonical_groups(names: StringColumn, hashes: array, run_of: array) -> np.ndarray:
    """Per item, the first run (of consecutive equal source ids) whose id equals its own."""
    rh = as_array(hashes, np.int64)
    hs = np.sort(rh)
    run = as_array(run_of, np.int32)
    if not (hs[1:] == hs[:-1]).any():
        return run                            # every id in one run: runs are the groups
    suspects = np.unique(hs[1:][hs[1:] == hs[:-1]])
    del hs
    canon = np.arange(len(names), dtype=np.int32)
    first: dict[bytes, int] = {}
    for r in np.flatnonzero(np.isin(rh, suspects)).tolist():
        canon[r] = first.setdefault(names.raw(r), r)
    return canon[run]


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
    stored, key_hash = StringColumn(), array("q")
    runs, run_hash, run_of = StringColumn(), array("q"), array("i")
    name_sets: dict[tuple[str, ...], int] = {}
    name_id = array("i")
    split_ids: dict[str | None, int] = {None: -1}
    split_code, sizes, loads = array("b"), array("I"), LoaderColumn()
    stream_skips: list[tuple[float, str, str]] = []     # (position among the items, key, reason)
    last_sid, run = object(), -1          # no source id equals the sentinel: the first item opens run 0
    add_key, add_hash, add_run, add_name = stored.append, key_hash.append, run_of.append, name_id.append
    add_split, add_size, add_load = split_code.append, sizes.append, loads.append

    def fail(key: str, reason: str) -> SourceError:
        return SourceError(f"{key}: {reason} (--strict makes every skipped input fatal)")

    keys = KeyColumn(stored, lambda i: runs[run_of[i]])   # while indexing: by run
    with progress_bar(progress, desc="indexing", unit=" inputs", leave=False) as bar:
        for x in source.items():
            bar.update(1)
            if isinstance(x, Skip):
                if strict:
                    rep = _repeats(keys, key_hash)
                    raise fail(keys[rep[0]], "duplicate input key") if rep else fail(x.key, x.reason)
                stream_skips.append((len(name_id), x.key, x.reason))
                continue
            sid = x.source_id
            if sid != last_sid:
                runs.append(sid)
                run_hash.append(hash(sid))
                last_sid, run = sid, run + 1
            add_key(shorten(x.key, sid))
            add_hash(hash(x.key))
            add_run(run)
            add_name(name_sets.setdefault(x.labels, len(name_sets)))
            add_split(split_ids.setdefault(x.split, len(split_ids) - 1))
            size = x.size
            add_size(size if 0 <= size <= _SIZE_LIMIT else min(max(int(size), 0), _SIZE_LIMIT))
            add_load(x.load, size if size <= _SIZE_LIMIT else -1, sid)

    rep = _repeats(keys, key_hash)
    del key_hash
    if strict and rep:
        raise fail(keys[rep[0]], "duplicate input key")
    skips = [(k, r) for _, k, r in sorted(stream_skips + [(i + 0.5, keys[i], "duplicate input key") for i in rep],
                                          key=lambda t: t[0])]
    keep = np.ones(len(name_id), dtype=bool)
    keep[rep] = False
    ids = as_array(name_id, np.int32)
    sets_by_id = list(name_sets)               # name set id -> the names
    if source.classes is not None:
        classes = list(source.classes)
    else:
        used = np.unique(ids[keep]).tolist()
        classes = sorted({lab for s in used for lab in sets_by_id[s]}, key=natural_key)
    if len(set(classes)) != len(classes):
        raise SourceError("the class list has duplicate names")
    pos = {c: i for i, c in enumerate(classes)}

    label_sets: list[tuple[int, ...]] = []
    shared: dict[tuple[int, ...], int] = {}    # one tuple per distinct label set, not per item
    set_map = np.full(len(sets_by_id) + 1, -1, dtype=np.int32)
    reasons: dict[int, str] = {}
    for s, names in enumerate(sets_by_id):
        unknown = [lab for lab in names if lab not in pos]
        if unknown:
            reasons[s] = f"label not in label list: {unknown[0]}"
            continue
        t = tuple(dict.fromkeys(pos[lab] for lab in names))   # dedupe, keep order
        set_map[s] = shared.setdefault(t, len(label_sets))
        if set_map[s] == len(label_sets):
            label_sets.append(t)
    label_id = set_map[ids] if len(ids) else np.zeros(0, dtype=np.int32)
    bad = np.flatnonzero(keep & (label_id < 0))
    if strict and len(bad):
        raise fail(keys[int(bad[0])], reasons[int(ids[bad[0]])])
    skips += [(keys[i], reasons[int(ids[i])]) for i in bad.tolist()]
    keep[bad] = False
    del ids

    group = _canonical_groups(runs, run_hash, run_of)
    del run_hash, run_of, keys
    codes, size_arr = as_array(split_code, np.int8), as_array(sizes, np.uint32)
    if len(label_sets) < 2 ** 16:
        label_id = label_id.astype(np.uint16)     # 2 bytes per item, not 4
    if not keep.all():
        stored = stored.take(keep)
        group, label_id, codes, size_arr = group[keep], label_id[keep], codes[keep], size_arr[keep]
        loads.take(keep)
    loads.finish()
    split_names = [s for s in split_ids if s is not None]
    source_ids = SourceIdColumn(group, runs)
    return Index(KeyColumn(stored, source_ids.__getitem__), LabelColumn(label_id, label_sets), source_ids,
                 SplitColumn(codes, split_names), size_arr, loads, skips, classes)
