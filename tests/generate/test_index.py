"""utils/generate/index.py: Items and Skips -> the index, without reading any bytes."""
from __future__ import annotations

import pytest

from utils.errors import SourceError
from utils.generate.index import build_index
from utils.sources.base import FileRange, Item, Skip, Source, file_loader


class ListSource(Source):
    kind = "list"

    def __init__(self, entries, classes=None):
        super().__init__()
        self.entries, self.classes = entries, classes

    def items(self):
        return iter(self.entries)


def item(key, *labels, split=None, size=0):
    return Item(key, key.split("/")[0], labels, None, size, split)


def test_classes_sorted_naturally_labels_as_indices_and_keys_unique():
    src = ListSource([item("a/1", "c10"), Skip("row7", "CSV row without an image"), item("b/1", "c2", "c10", "c2"),
                      item("a/1", "c1"), item("c/1")])
    index = build_index(src, progress=False)
    assert index.classes == ["c2", "c10"]
    assert [it.key for it in index.items] == ["a/1", "b/1", "c/1"]
    assert list(index.labels) == [(1,), (0, 1), ()]
    assert index.skips == [("row7", "CSV row without an image"), ("a/1", "duplicate input key")]
    assert list(index.source_ids) == ["a", "b", "c"] and list(index.sizes) == [0, 0, 0]


def test_a_fixed_class_list_skips_other_labels_and_strict_stops_there():
    entries = [item("a/1", "cat", split="val"), item("a/2", "zebra")]
    index = build_index(ListSource(entries, classes=["dog", "cat"]), progress=False)
    assert list(index.labels) == [(1,)] and list(index.splits) == ["val"]
    assert index.skips == [("a/2", "label not in label list: zebra")]
    with pytest.raises(SourceError, match="a/2: label not in label list: zebra"):
        build_index(ListSource(entries, classes=["dog", "cat"]), strict=True, progress=False)
    with pytest.raises(SourceError, match="duplicate names"):
        build_index(ListSource(entries, classes=["cat", "cat"]), progress=False)


def test_strict_stops_at_the_first_skip_in_stream_order():
    dup_first = [item("a/1", "c"), item("a/1", "c"), Skip("row9", "CSV row without an image")]
    with pytest.raises(SourceError, match="a/1: duplicate input key"):
        build_index(ListSource(dup_first), strict=True, progress=False)
    skip_first = [item("a/1", "c"), Skip("row9", "CSV row without an image"), item("a/1", "c")]
    with pytest.raises(SourceError, match="row9: CSV row without an image"):
        build_index(ListSource(skip_first), strict=True, progress=False)
    # not strict: the duplicate's skip keeps its place among the source's skips
    index = build_index(ListSource([Skip("r0", "x"), *dup_first, Skip("r1", "y")]), progress=False)
    assert index.skips == [("r0", "x"), ("a/1", "duplicate input key"), ("row9", "CSV row without an image"),
                           ("r1", "y")]


def test_items_come_back_from_the_columns_with_their_loaders(tmp_path):
    (tmp_path / "a").mkdir()
    for name in ("x.jpg", "\x01odd.jpg"):
        (tmp_path / "a" / name).write_bytes(name.encode())
    odd = object()
    entries = [Item("\x01k", "s1", ("c",), file_loader(str(tmp_path / "a" / "\x01odd.jpg")), 8),
               Item("s1-x", "s1", ("c",), file_loader(str(tmp_path / "a" / "x.jpg")), 5),
               Item("p/0", "p", ("d",), FileRange(str(tmp_path / "a" / "x.jpg"), 1, 3), 3),
               Item("p/1", "p", ("d",), FileRange(str(tmp_path / "a" / "x.jpg"), 0, 2), 9),   # size differs
               Item("m", "s1", (), file_loader("/one", "/two"), 0, "test"),
               Item("o", "o", (), odd, 0)]
    index = build_index(ListSource(entries), progress=False)
    got = list(index.items)
    assert [(g.key, g.source_id, g.labels, g.size, g.split) for g in got] == [
        (e.key, e.source_id, e.labels, e.size, e.split) for e in entries]
    assert [g.load() for g in got[:4]] == [[b"\x01odd.jpg"], [b"x.jpg"], [b".jp"], [b"x."]]
    assert got[4].load.args == (("/one", "/two"),) and got[5].load is odd
    assert index.source_ids.group.tolist() == [0, 0, 1, 1, 0, 3]   # "s1" again after "p": the same group


def test_removed_items_leave_every_column_aligned():
    entries = [item(f"g{i % 7}/{i}", f"c{i % 3}", size=i) for i in range(40)] + [item("g1/1", "c1")]
    entries[5] = item("g5/5", "zebra")
    index = build_index(ListSource(entries, classes=["c0", "c1", "c2"]), progress=False)
    kept = [e for e in entries[:40] if e.labels != ("zebra",)]
    assert [it.key for it in index.items] == [e.key for e in kept]
    assert list(index.sizes) == [e.size for e in kept] and list(index.source_ids) == [e.source_id for e in kept]
    assert [index.classes[index.labels[i][0]] for i in range(len(kept))] == [e.labels[0] for e in kept]
