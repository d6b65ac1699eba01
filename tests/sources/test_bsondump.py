"""BsonSource / iter_products on tiny Cdiscount-style dumps written with bson.encode."""
from __future__ import annotations

import os
import pickle

import bson
import pytest

from utils.sources.base import Item, Skip, SourceError
from utils.sources.bsondump import BsonSource, iter_products, read_categories


def pic(tag: str) -> bytes:
    # Sources never decode images, so distinct JPEG-looking bytes are enough here.
    return b"\xff\xd8\xff\xe0" + tag.encode() * 50 + b"\xff\xd9"


# product id -> (category or None, photos)
TRAIN = [
    (101, 1000010653, [pic("a0")]),
    (102, 1000010667, [pic("b0"), pic("b1")]),
    (103, 1000010653, [pic("c0"), pic("c1"), pic("c2")]),
    (104, 999, [pic("d0"), pic("d1")]),                 # category not in the CSV
]
CATEGORIES = (
    "category_id,category_level1,category_level2,category_level3\n"
    '1000010653,"ABONNEMENT / SERVICES","CARTE PREPAYEE","CARTE PREPAYEE MULTIMEDIA"\n'
    '1000021794,"AMENAGEMENT URBAIN - VOIRIE","AMENAGEMENT URBAIN","ABRI FUMEUR"\n'
    '1000010667,"CHAUSSURES - ACCESSOIRES","ENTRETIEN, SOIN","BOUCHONS, PIPETTES"\n'
    "1000004079,ART DE LA TABLE,VERRE,VERRE A VIN\n"
)


def write_bson(path, docs) -> list[int]:
    """Write documents back to back; return each document's byte offset."""
    offsets, pos = [], 0
    with open(path, "wb") as f:
        for d in docs:
            data = bson.encode(d)
            offsets.append(pos)
            pos += len(data)
            f.write(data)
    return offsets


def product(pid, cat, photos):
    d = {"_id": pid, "imgs": [{"picture": p} for p in photos]}
    if cat is not None:
        d["category_id"] = cat
    return d


@pytest.fixture
def train_file(tmp_path):
    docs = [product(*p) for p in TRAIN]
    docs.append({"_id": 105, "category_id": 1000010653})                        # no imgs
    docs.append({"_id": 106, "imgs": [{"picture": "text, not bytes"}, {"picture": pic("f1")}],
                 "category_id": 1000010653})                                     # one bad photo
    path = tmp_path / "train.bson"
    write_bson(path, docs)
    cats = tmp_path / "category_names.csv"
    cats.write_text(CATEGORIES, encoding="utf-8")
    return str(path), str(cats)


def test_train_items_with_categories(train_file):
    path, cats = train_file
    src = BsonSource(path, categories=cats)
    assert src.kind == "bson" and src.multi_label is False
    # the CSV fixes the class list (file order), present in the data or not
    assert src.classes == ["1000010653", "1000021794", "1000010667", "1000004079"]
    assert src.readable["1000010667"] == "CHAUSSURES - ACCESSOIRES / ENTRETIEN, SOIN / BOUCHONS, PIPETTES"
    assert src.readable["1000004079"] == "ART DE LA TABLE / VERRE / VERRE A VIN"

    out = list(src.items())
    items = [o for o in out if isinstance(o, Item)]
    skips = {o.key: o.reason for o in out if isinstance(o, Skip)}
    photos_offered = sum(len(p[2]) for p in TRAIN) + 1 + 2      # + product 105 (no photos) + 106's two
    assert len(items) + len(skips) == photos_offered == len(out)
    assert [i.key for i in items] == ["101/0", "102/0", "102/1", "103/0", "103/1", "103/2", "106/1"]
    assert skips == {
        "104/0": "label not in label list: 999",
        "104/1": "label not in label list: 999",
        "105": "product without imgs",
        "106/0": "bad picture field (not binary)",
    }
    by_key = {i.key: i for i in items}
    assert {i.source_id for i in items if i.key.startswith("103/")} == {"103"}
    assert by_key["102/1"].labels == ("1000010667",)
    assert all(i.split is None for i in items)

    expected = {f"{pid}/{j}": ph for pid, _, phs in TRAIN for j, ph in enumerate(phs)}
    expected["106/1"] = pic("f1")
    for it in items:
        assert it.size == len(expected[it.key])
        assert it.load() == [expected[it.key]]
        # workers get the loader pickled: it must survive the trip and still work
        assert pickle.loads(pickle.dumps(it.load))() == [expected[it.key]]


def test_without_categories_classes_are_open(train_file):
    path, _ = train_file
    src = BsonSource(path)
    assert src.classes is None and src.readable is None
    items = [o for o in src.items() if isinstance(o, Item)]
    # without a list, the unknown-to-the-CSV category 999 is just another class
    assert {i.labels for i in items} == {("1000010653",), ("1000010667",), ("999",)}


def test_test_file_is_unlabeled_test_split(tmp_path):
    path = tmp_path / "test.bson"
    write_bson(path, [product(7, None, [pic("x"), pic("y")]), product(8, None, [pic("z")])])
    out = list(BsonSource(str(path)).items())
    assert all(isinstance(o, Item) for o in out) and len(out) == 3
    assert all(o.labels == () and o.split == "test" for o in out)
    assert [o.source_id for o in out] == ["7", "7", "8"]
    assert out[1].load() == [pic("y")]


def test_truncated_file_is_one_clear_error(tmp_path):
    path = tmp_path / "cut.bson"
    offsets = write_bson(path, [product(1, 5, [pic("a")]), product(2, 5, [pic("b")])])
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size - 10)
    src = BsonSource(str(path))
    with pytest.raises(SourceError) as e:
        list(src.items())
    msg = str(e.value)
    assert msg.endswith(f"truncated mid-document at byte {offsets[1]}") and "\n" not in msg
    with pytest.raises(SourceError, match=f"truncated mid-document at byte {offsets[1]}"):
        list(iter_products(str(path)))
    # cut inside the 4-byte length prefix itself
    with open(path, "r+b") as f:
        f.truncate(offsets[1] + 2)
    with pytest.raises(SourceError, match=f"at byte {offsets[1]}"):
        list(BsonSource(str(path)).items())


def test_corrupt_length_stops_cleanly(tmp_path):
    path = tmp_path / "bad.bson"
    write_bson(path, [product(1, 5, [pic("a")])])
    with open(path, "ab") as f:
        f.write((2**31 - 1).to_bytes(4, "little") + b"junk")
    with pytest.raises(SourceError, match="corrupt BSON, document length"):
        list(BsonSource(str(path)).items())


def test_missing_inputs(tmp_path):
    with pytest.raises(SourceError, match="^input not found: .*nope.bson$"):
        BsonSource(str(tmp_path / "nope.bson"))
    path = tmp_path / "t.bson"
    write_bson(path, [product(1, 5, [pic("a")])])
    with pytest.raises(SourceError, match="^input not found: .*cats.csv$"):
        BsonSource(str(path), categories=str(tmp_path / "cats.csv"))
    bad = tmp_path / "bad.csv"
    bad.write_text("id,name\n1,x\n")
    with pytest.raises(SourceError, match="no category_id column"):
        read_categories(str(bad))


def test_iter_products(train_file):
    path, _ = train_file
    prods = list(iter_products(path))
    assert [p[0] for p in prods] == ["101", "102", "103", "104", "105", "106"]
    assert prods[1] == ("102", "1000010667", [pic("b0"), pic("b1")])
    assert prods[4] == ("105", "1000010653", [])                 # no photos: caller reports it
    assert prods[5][2] == [pic("f1")]                             # the malformed entry is left out


def test_iter_products_test_file_has_no_category(tmp_path):
    path = tmp_path / "test.bson"
    write_bson(path, [product(9, None, [pic("q")])])
    assert list(iter_products(str(path))) == [("9", None, [pic("q")])]


def test_a_repeated_product_id_is_skipped_not_written_twice(tmp_path):
    from utils.generate.index import build_index

    path = tmp_path / "dup.bson"
    write_bson(path, [product(7, 11, [pic("a"), pic("b")]), product(7, 12, [pic("c")]), product(8, 11, [pic("d")])])
    index = build_index(BsonSource(str(path)), progress=False)
    assert [(i.key, i.labels) for i in index.items] == [("7/0", ("11",)), ("7/1", ("11",)), ("8/0", ("11",))]
    assert index.skips == [("7/0", "duplicate input key")]


def test_the_writer_index_holds_about_300_bytes_per_photo(tmp_path):
    """The full Cdiscount train dump has 12.4M photos, all in the writer's index:
    at ~500 bytes each (a functools.partial per photo) that was 6 GB; now ~4 GB."""
    import tracemalloc

    from utils.generate.index import build_index

    path = tmp_path / "many.bson"
    write_bson(path, [product(10**6 + p, 1000010000 + p % 50, [pic("a")] * 2) for p in range(3000)])
    build_index(BsonSource(str(path)), progress=False)  # imports and caches first: count only the index
    tracemalloc.start()
    try:
        index = build_index(BsonSource(str(path)), progress=False)
        per_photo = tracemalloc.get_traced_memory()[0] / len(index.items)
    finally:
        tracemalloc.stop()
    assert len(index.items) == 6000
    assert per_photo < 380, f"{per_photo:.0f} bytes per photo"  # 279 now, 425 with functools.partial


def test_read_categories_errors_name_the_line(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("category_id,category_level1\n1,a\n\n2,b\n1,c\n", encoding="utf-8")
    with pytest.raises(SourceError) as e:
        read_categories(str(path))
    assert str(e.value) == f"{path}: line 5: duplicate category_id 1"
    path.write_text("category_id,category_level1\n1,a\n,b\n", encoding="utf-8")
    with pytest.raises(SourceError, match=r"line 3: empty category_id$"):
        read_categories(str(path))
    path.write_text("category_id,category_level1\n", encoding="utf-8")
    with pytest.raises(SourceError, match="no categories$"):
        read_categories(str(path))
    path.write_text("", encoding="utf-8")
    with pytest.raises(SourceError, match=r"no category_id column \(header: empty\)$"):
        read_categories(str(path))
    path.write_bytes("category_id,category_level1\n1,caf\xe9\n".encode("latin-1"))
    with pytest.raises(SourceError, match="not a UTF-8 text CSV$"):     # one line, not a traceback
        read_categories(str(path))
