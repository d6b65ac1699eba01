"""The index and the plan hold at most 64 bytes per photo (issue 9: 12.37 M photos in ~1 GB).

tracemalloc counts every Python and numpy allocation; its PEAK over indexing
and planning Cdiscount-shaped photos, at 200k photos minus at 20k, divided by
the 180k photos between (fixed costs such as the 5,270 label tuples cancel),
is the figure. Before the columnar index (an Item, its key, size and label tuple per
photo, dict/list plans) the same measure was ~450-1000 bytes per photo.
"""
from __future__ import annotations

import tracemalloc

import pytest

from utils.generate.index import build_index
from utils.generate.plan import make_plan
from utils.sources.base import FileRange, Item, Source, file_loader

TARGET = 64


class CdiscountShaped(Source):
    """Products of 1-4 photos, 5,270 categories; loaders as BsonSource (FileRange) or as a folder's."""

    kind = "synthetic"

    def __init__(self, photos: int, files: bool = False) -> None:
        super().__init__()
        self.photos, self.files = photos, files
        self._labels = [(str(1_000_000_000 + c),) for c in range(5270)]

    def items(self):
        n = p = 0
        while n < self.photos:
            pid = str(10_000_000 + p)
            for j in range(min(1 + p % 4, self.photos - n)):
                size = 300 + (p * 7 + j) % 500
                if self.files:
                    load = file_loader(f"/data/images/{self._labels[p % 5270][0]}/{pid}_{j}.jpg")
                else:
                    load = FileRange("/data/train.bson", 1000 * n, size)
                yield Item(f"{pid}/{j}", pid, self._labels[p % 5270], load, size)
                n += 1
            p += 1


def peak_bytes(source: Source, **plan_args) -> float:
    build_index(CdiscountShaped(2000, source.files), progress=False)   # imports and caches first
    tracemalloc.start()
    try:
        index = build_index(source, progress=False)
        plan = make_plan(index.labels, index.source_ids, index.splits, index.sizes, **plan_args)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(index.items) == source.photos == sum(len(s.members) for s in plan)
    return peak


@pytest.mark.slow
@pytest.mark.parametrize("files", [False, True], ids=["bson", "files"])
def test_index_and_plan_peak_grows_under_64_bytes_per_photo(files):
    small, big = (peak_bytes(CdiscountShaped(n, files), val_fraction=0.1, seed=0) for n in (20_000, 200_000))
    per_photo = (big - small) / 180_000
    assert 10 < per_photo < TARGET, f"{per_photo:.1f} bytes per photo"


def test_index_of_a_few_photos_rebuilds_their_items():
    src = CdiscountShaped(7)
    index = build_index(src, progress=False)
    assert list(index.items) == list(src.items())
    loads = [it.load for it in index.items]
    assert [(x.path, x.offset, x.length) for x in loads] == [(y.load.path, y.load.offset, y.load.length)
                                                            for y in src.items()]
    files = build_index(CdiscountShaped(3, files=True), progress=False)
    assert files.items[2].load.args == (("/data/images/1000000001/10000001_1.jpg",),)
