"""utils/generate/index.py: Items and Skips -> the index, without reading any bytes."""
from __future__ import annotations

import pytest

from utils.errors import SourceError
from utils.generate.index import build_index
from utils.sources.base import Item, Skip, Source


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
