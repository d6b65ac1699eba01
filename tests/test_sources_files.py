"""File sources: folder per class (3 layouts), image folder + CSV, multi-channel
groups, and the demo drawing. Every file offered becomes exactly one Item or Skip."""
import os
import pickle
import time

import cv2
import numpy as np
import pytest

from utils.image.prepare import check_image, prepare_planes
from utils.sources.base import Item, Skip, SourceError
from utils.sources.demo import SHAPES, attribute_names, draw_demo
from utils.sources.folder import FolderSource
from utils.sources.multichannel import MultiChannelSource
from utils.sources.table import TableSource, read_label_names, read_label_table

RNG = np.random.default_rng(0)


def write_image(path, h=24, w=32, gray=False, value=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    shape = (h, w) if gray else (h, w, 3)
    arr = RNG.integers(0, 255, shape, dtype=np.uint8) if value is None else np.full(shape, value, np.uint8)
    assert cv2.imwrite(str(path), arr)
    return path


def write_text(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path


def collect(source):
    out = list(source.items())
    items = {x.key: x for x in out if isinstance(x, Item)}
    skips = {x.key: x.reason for x in out if isinstance(x, Skip)}
    assert len(items) + len(skips) == len(out), "keys must be unique"
    return out, items, skips


def count_files(root):
    return sum(1 for _, _, fs in os.walk(root) for f in fs if not f.startswith("."))


# ---------------------------------------------------------------- folder

def test_folder_class_layout(tmp_path):
    root = tmp_path / "data"
    write_image(root / "cat" / "a.jpg")
    write_image(root / "cat" / "b.png", gray=True)
    write_image(root / "cat" / "deeper" / "c.jpg")
    write_image(root / "dog" / "00123.jpg")
    write_text(root / "dog" / "notes.txt", "x")
    write_text(root / "dog" / ".DS_Store", "x")
    write_image(root / ".hidden" / "x.jpg")
    write_text(root / "README", "x")
    write_image(root / "loose.jpg")
    src = FolderSource(str(root))
    assert src.kind == "folder" and src.classes == ["cat", "dog"] and not src.multi_label
    out, items, skips = collect(src)
    assert len(out) == count_files(root) - 1     # .hidden/x.jpg is not an input
    assert sorted(items) == ["cat/a.jpg", "cat/b.png", "cat/deeper/c.jpg", "dog/00123.jpg"]
    assert skips == {"dog/notes.txt": "unsupported file type: .txt",
                     "README": "unsupported file type: (no extension)",
                     "loose.jpg": "image outside class folders"}
    it = items["dog/00123.jpg"]
    assert it.labels == ("dog",) and it.source_id == "00123" and it.split is None
    assert it.size == os.path.getsize(root / "dog" / "00123.jpg")
    assert it.load() == [(root / "dog" / "00123.jpg").read_bytes()]
    assert pickle.loads(pickle.dumps(it.load))() == it.load()     # worker processes get the loader
    assert items["cat/deeper/c.jpg"].labels == ("cat",)
    assert [x.key for x in out] == [x.key for x in FolderSource(str(root)).items()]   # deterministic
    assert [x.key for x in out] == sorted(x.key for x in out)


def test_folder_split_layout(tmp_path):
    root = tmp_path / "d"
    for p in ("train/cat/1.jpg", "train/cat/2.jpg", "train/dog/3.png", "val/cat/4.jpg", "val/bird/5.jpg",
              "test/6.jpg", "test/sub/7.png"):
        write_image(root / p)
    write_image(root / "train" / "stray.jpg")
    src = FolderSource(str(root))
    assert src.classes == ["bird", "cat", "dog"]
    out, items, skips = collect(src)
    assert len(out) == count_files(root)
    assert skips == {"train/stray.jpg": "image outside class folders"}
    assert {k: (v.split, v.labels) for k, v in items.items()} == {
        "train/cat/1.jpg": ("train", ("cat",)), "train/cat/2.jpg": ("train", ("cat",)),
        "train/dog/3.png": ("train", ("dog",)), "val/cat/4.jpg": ("val", ("cat",)),
        "val/bird/5.jpg": ("val", ("bird",)), "test/6.jpg": ("test", ()), "test/sub/7.png": ("test", ())}


def test_folder_flat_is_unlabeled_test(tmp_path):
    for name in ("00123.jpg", "b.png"):
        write_image(tmp_path / name)
    write_text(tmp_path / "list.csv", "x")
    out, items, skips = collect(FolderSource(str(tmp_path)))
    assert sorted(items) == ["00123.jpg", "b.png"]
    assert all(i.split == "test" and i.labels == () for i in items.values())
    assert items["00123.jpg"].source_id == "00123"
    assert skips == {"list.csv": "unsupported file type: .csv"}


def test_folder_class_named_test_is_a_class(tmp_path):
    write_image(tmp_path / "test" / "a.jpg")
    write_image(tmp_path / "other" / "b.jpg")
    src = FolderSource(str(tmp_path))
    assert src.classes == ["other", "test"]
    assert {i.key: i.labels for i in src.items()} == {"other/b.jpg": ("other",), "test/a.jpg": ("test",)}


def test_folder_missing_input(tmp_path):
    with pytest.raises(SourceError, match=r"^input not found: .*nope$"):
        FolderSource(str(tmp_path / "nope"))
    write_text(tmp_path / "f.jpg", "x")
    with pytest.raises(SourceError, match="not a folder"):
        FolderSource(str(tmp_path / "f.jpg"))


# ---------------------------------------------------------------- table

def test_table_single_label_and_every_skip(tmp_path):
    img = tmp_path / "train"
    for name in ("00123.jpg", "7.png", "abc.jpg", "orphan.jpg", "dup.jpg", "dup.png", "nolabel.jpg"):
        write_image(img / name)
    write_text(img / "notes.txt", "x")
    csv = write_text(tmp_path / "train.csv",
                     "id,label\n00123,cat\n7,dog\nabc,cat\nmissing,dog\ndup,dog\n\nnolabel,\n")
    src = TableSource(str(img), str(csv))
    assert src.kind == "csv" and src.classes is None and src.multi_label is False
    out, items, skips = collect(src)
    rows_without_image = 1
    assert len(out) == count_files(img) + rows_without_image
    assert {k: (v.source_id, v.labels) for k, v in items.items()} == {
        "00123.jpg": ("00123", ("cat",)), "7.png": ("7", ("dog",)), "abc.jpg": ("abc", ("cat",)),
        "dup.jpg": ("dup", ("dog",))}
    assert skips == {"missing": "no image for CSV row", "orphan.jpg": "no CSV row for image",
                     "notes.txt": "unsupported file type: .txt", "dup.png": "another image has the same id",
                     "nolabel.jpg": "empty label"}


def test_table_multilabel_imet_with_label_names(tmp_path):
    img = tmp_path / "train"
    for name in ("1000483014d91860.png", "1001a4ca3c1ee4c5.png", "0123.png"):
        write_image(img / name)
    csv = write_text(tmp_path / "train.csv",
                     "id,attribute_ids\n1000483014d91860,147 616 813\n1001a4ca3c1ee4c5,51\n0123,51 999\n")
    names = write_text(tmp_path / "labels.csv",
                       'attribute_id,attribute_name\n813,tag::x\n51,culture::a\n147,"tag::with, comma"\n616,tag::y\n')
    src = TableSource(str(img), str(csv), str(names))
    assert src.multi_label is True
    assert src.classes == ["culture::a", "tag::with, comma", "tag::y", "tag::x"]   # in id order
    out, items, skips = collect(src)
    assert len(out) == 3
    assert items["1000483014d91860.png"].labels == ("tag::with, comma", "tag::y", "tag::x")
    assert items["1001a4ca3c1ee4c5.png"].labels == ("culture::a",)
    assert skips == {"0123.png": "label not in label list: 999"}


def test_table_label_names_text_and_ids_with_extension(tmp_path):
    img = tmp_path / "imgs"
    for name in ("a.jpg", "a.png", "b.jpg", "c.jpg"):
        write_image(img / name)
    # labels CSV kept inside the image folder: not an input
    csv = write_text(img / "labels.csv", "image,class\na.png,cat\nb.jpg,1\nc.jpg,zebra\n")
    names = write_text(tmp_path / "names.txt", "dog\ncat\n\n")
    assert read_label_names(str(names)) == ["dog", "cat"]
    src = TableSource(str(img), str(csv), str(names))
    assert src.classes == ["dog", "cat"] and not src.multi_label
    out, items, skips = collect(src)
    assert len(out) == 4
    assert {k: v.labels for k, v in items.items()} == {"a.png": ("cat",), "b.jpg": ("cat",)}
    assert skips == {"a.jpg": "no CSV row for image", "c.jpg": "label not in label list: zebra"}


def test_table_matches_images_in_subfolders(tmp_path):
    write_image(tmp_path / "imgs" / "x" / "p1.jpg")
    write_image(tmp_path / "imgs" / "y" / "p2.jpg")
    csv = write_text(tmp_path / "l.csv", "id,label\np1,a b\np2,c\n")   # a space: multi-label
    src = TableSource(str(tmp_path / "imgs"), str(csv))
    assert src.multi_label
    assert {i.key: i.labels for i in src.items()} == {"x/p1.jpg": ("a", "b"), "y/p2.jpg": ("c",)}


def test_read_label_table_ids_stay_strings(tmp_path):
    csv = write_text(tmp_path / "l.csv", "\ufeffid,label\n00123,5\n0,007\n")
    table, multi = read_label_table(str(csv))
    assert table == {"00123": ("5",), "0": ("007",)} and multi is False
    assert all(isinstance(k, str) for k in table)


@pytest.mark.parametrize("text,match", [
    ("", "empty CSV"),
    ("\n\n", "empty CSV"),
    ("id\nabc\n", "expected 2 columns"),
    ("id,label\n", "no rows"),
    ("id,label\na,1\nb\n", "expected id,label"),
    ("id,label\na,1\na,2\n", "appears twice"),
])
def test_table_bad_csv_one_line_error(tmp_path, text, match):
    csv = write_text(tmp_path / "l.csv", text)
    (tmp_path / "imgs").mkdir()
    with pytest.raises(SourceError, match=match) as e:
        TableSource(str(tmp_path / "imgs"), str(csv))
    assert "\n" not in str(e.value)


def test_table_missing_inputs(tmp_path):
    (tmp_path / "imgs").mkdir()
    with pytest.raises(SourceError, match="input not found"):
        TableSource(str(tmp_path / "imgs"), str(tmp_path / "none.csv"))
    with pytest.raises(SourceError, match="input not found"):
        TableSource(str(tmp_path / "nope"), str(write_text(tmp_path / "l.csv", "id,label\na,b\n")))


# ---------------------------------------------------------------- multi-channel

def test_multichannel_recursion_layout(tmp_path):
    root = tmp_path / "train"
    for plate in ("Plate1", "Plate2"):
        for w, value in (("w1", 10), ("w2", 20), ("w3", 30)):
            write_image(root / "HEPG2-01" / plate / f"B02_s1_{w}.png", gray=True, value=value)
    write_image(root / "HEPG2-01" / "Plate1" / "B03_s1_w1.png", gray=True)
    write_image(root / "HEPG2-01" / "Plate1" / "B03_s1_w2.png", gray=True)
    write_image(root / "HEPG2-01" / "Plate1" / "B04_s1_w9.png", gray=True)
    write_image(root / "noid.png", gray=True)
    write_text(root / "README.txt", "x")
    src = MultiChannelSource(str(root), ["w3", "w1", "w2"])
    assert src.kind == "multichannel" and src.classes is None
    out, items, skips = collect(src)
    groups = 3   # Plate1/B02_s1, Plate2/B02_s1, Plate1/B03_s1
    stray = 3    # w9, noid, README
    assert len(out) == groups + stray
    assert sorted(items) == ["HEPG2-01/Plate1/B02_s1", "HEPG2-01/Plate2/B02_s1"]
    assert skips == {"HEPG2-01/Plate1/B03_s1": "missing channel w3",
                     "HEPG2-01/Plate1/B04_s1_w9.png": "unknown channel: w9",
                     "noid.png": "no channel suffix in file name",
                     "README.txt": "unsupported file type: .txt"}
    it = items["HEPG2-01/Plate2/B02_s1"]
    assert it.split == "test" and it.labels == () and it.source_id == "HEPG2-01/Plate2/B02_s1"
    planes = it.load()
    assert len(planes) == 3 and it.size == sum(map(len, planes))
    # planes come in the order of `channels`: w3 (30), w1 (10), w2 (20)
    decoded = [cv2.imdecode(np.frombuffer(p, np.uint8), cv2.IMREAD_UNCHANGED)[0, 0] for p in planes]
    assert decoded == [30, 10, 20]
    stored, info = prepare_planes(planes)
    assert stored == planes and info.channels == 1


def test_multichannel_hpa_with_labels(tmp_path):
    root = tmp_path / "hpa"
    colours = ["red", "green", "blue", "yellow"]
    for sid in ("00070df0-bbc3", "000a6c98-bb9b", "nolabel"):
        for c in colours:
            write_image(root / f"{sid}_{c}.png", gray=True)
    write_image(root / "sub" / "000a6c98-bb9b_red.png", gray=True)   # incomplete group in a sub-folder
    csv = write_text(tmp_path / "train.csv", "Id,Target\n00070df0-bbc3,16 0\n000a6c98-bb9b,7 1 2 0\n"
                     "ghost,5\n")
    src = MultiChannelSource(str(root), colours, str(csv))
    assert src.multi_label
    out, items, skips = collect(src)
    assert len(out) == 4 + 1   # 4 groups + 1 CSV row without images
    assert {k: (v.labels, v.split) for k, v in items.items()} == {
        "00070df0-bbc3": (("16", "0"), None), "000a6c98-bb9b": (("7", "1", "2", "0"), None)}
    assert skips == {"nolabel": "no CSV row for image", "sub/000a6c98-bb9b": "missing channel green",
                     "ghost": "no image for CSV row"}


def test_multichannel_labels_by_group_id_and_names(tmp_path):
    root = tmp_path / "r"
    for plate in ("P1", "P2"):
        for w in ("w1", "w2"):
            write_image(root / plate / f"A01_{w}.png", gray=True)
    csv = write_text(tmp_path / "l.csv", "id,sirna\nP1/A01,s2\nP2/A01,s9\n")
    names = write_text(tmp_path / "n.txt", "s1\ns2\n")
    src = MultiChannelSource(str(root), ["w1", "w2"], str(csv), str(names))
    assert src.classes == ["s1", "s2"]
    out, items, skips = collect(src)
    assert {k: v.labels for k, v in items.items()} == {"P1/A01": ("s2",)}
    assert skips == {"P2/A01": "label not in label list: s9"}


def test_multichannel_bad_arguments(tmp_path):
    with pytest.raises(SourceError, match="input not found"):
        MultiChannelSource(str(tmp_path / "nope"), ["w1"])
    with pytest.raises(SourceError, match="twice"):
        MultiChannelSource(str(tmp_path), ["w1", "w1"])
    with pytest.raises(SourceError, match="channel suffixes"):
        MultiChannelSource(str(tmp_path), [])


# ---------------------------------------------------------------- demo

def read_tree(root):
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = fh.read()
    return out


def test_demo_deterministic_and_complete(tmp_path):
    a = draw_demo(str(tmp_path / "a"), seed=3, per_class=6, size=48)
    b = draw_demo(str(tmp_path / "b"), seed=3, per_class=6, size=48)
    c = draw_demo(str(tmp_path / "c"), seed=4, per_class=6, size=48)
    assert a == str(tmp_path / "a" / "images")
    ta, tb = read_tree(tmp_path / "a"), read_tree(tmp_path / "b")
    assert ta == tb and len(ta) == 5 * 6 + 3   # images + 2 CSVs + marker
    assert read_tree(a) != read_tree(c)

    src = FolderSource(a)
    assert src.classes == sorted(SHAPES)
    out, items, skips = collect(src)
    assert not skips and len(items) == 30
    per_class = {s: sum(1 for i in items.values() if i.labels == (s,)) for s in SHAPES}
    assert per_class == {s: 6 for s in SHAPES}
    infos = [check_image(i.load()[0]) for i in items.values()]
    assert {x.fmt for x in infos} == {"jpeg", "png"}
    assert any(x.channels == 1 for x in infos) and any(x.channels == 3 for x in infos)
    assert {(x.height, x.width) for x in infos} == {(48, 48)}

    # the multi-label view of the same images
    t = TableSource(a, str(tmp_path / "a" / "attributes.csv"), str(tmp_path / "a" / "attribute_names.csv"))
    assert t.multi_label and t.classes == attribute_names()
    out, items, skips = collect(t)
    assert not skips and len(items) == 30
    for key, item in items.items():
        shape, colour, size = item.labels
        assert shape == key.split("/")[0] and colour in attribute_names()[5:12] and size in ("large", "small")
    assert {i.labels[1] for i in items.values()} >= {"gray"}


def test_demo_idempotent_and_redraws_on_new_parameters(tmp_path):
    out = str(tmp_path / "demo")
    t = time.perf_counter()
    images = draw_demo(out)                      # the default size: 5 x 60 images of 64 px
    took = time.perf_counter() - t
    assert took < 6, took                       # < 3 s on an idle machine; this one is shared
    assert count_files(images) == 300
    marker_mtime = os.path.getmtime(os.path.join(out, ".demo.json"))
    some = os.path.join(images, "circle", "circle_0000.png")
    mtime = os.path.getmtime(some)
    t = time.perf_counter()
    assert draw_demo(out) == images
    assert time.perf_counter() - t < 0.1
    assert os.path.getmtime(some) == mtime and os.path.getmtime(os.path.join(out, ".demo.json")) == marker_mtime
    draw_demo(out, per_class=4)                  # other parameters: redrawn, nothing stale left
    assert count_files(images) == 20
    assert not [n for n in os.listdir(out) if n.endswith(".tmp")]


def test_demo_refuses_foreign_folder(tmp_path):
    write_image(tmp_path / "images" / "holiday" / "me.jpg")
    with pytest.raises(SourceError, match="not overwriting"):
        draw_demo(str(tmp_path), per_class=2)
    assert (tmp_path / "images" / "holiday" / "me.jpg").exists()


def test_label_mode_single_keeps_class_names_with_spaces(tmp_path):
    """Auto-detection reads "golden retriever" as two labels; --label-mode single does not."""
    imgs = tmp_path / "imgs"
    for i in range(3):
        write_image(imgs / f"{i}.png")
    csv = tmp_path / "train.csv"
    write_text(csv, "id,breed\n0,golden retriever\n1,pug\n2,golden retriever\n")

    auto = TableSource(str(imgs), str(csv))
    assert auto.multi_label and auto.table["0"] == ("golden", "retriever")

    single = TableSource(str(imgs), str(csv), multi_label=False)
    assert not single.multi_label and single.args["multi_label"] is False
    _, items, skips = collect(single)
    assert sorted(it.labels for it in items.values()) == [("golden retriever",), ("golden retriever",), ("pug",)]
    assert skips == {}

    forced = read_label_table(str(csv), multi_label=True)[0]
    assert forced["1"] == ("pug",) and forced["0"] == ("golden", "retriever")


def test_label_mode_flag_end_to_end(tmp_path):
    import json
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    imgs = tmp_path / "imgs"
    for i in range(4):
        write_image(imgs / f"{i}.png")
    csv = tmp_path / "train.csv"
    write_text(csv, "id,breed\n0,golden retriever\n1,pug\n2,golden retriever\n3,pug\n")
    out = tmp_path / "ds"
    r = subprocess.run([sys.executable, os.path.join(root, "generate_dataset.py"), str(imgs), "--labels", str(csv),
                        "--label-mode", "single", "--out", str(out), "--no-progress"],
                       capture_output=True, text=True, cwd=root)
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "labels.json").read_text()) == ["golden retriever", "pug"]
    assert json.loads((out / "manifest.json").read_text())["multi_label"] is False
