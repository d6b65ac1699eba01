"""TableSource (image folder + labels CSV) and the label file readers."""
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT, write_image
from tests.sources.helpers import collect, count_files, write_text
from utils.sources.base import SourceError
from utils.sources.table import TableSource, read_label_map, read_label_names, read_label_table


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
    assert read_label_map(str(names))[0] == ["dog", "cat"]
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


def breed_table(tmp_path, breeds):
    """imgs/<i>.png and train.csv (`id,breed`) giving image i breeds[i] -> (imgs, csv)."""
    imgs = tmp_path / "imgs"
    for i in range(len(breeds)):
        write_image(imgs / f"{i}.png")
    csv = write_text(tmp_path / "train.csv", "id,breed\n" + "".join(f"{i},{b}\n" for i, b in enumerate(breeds)))
    return imgs, csv


def test_label_mode_single_keeps_class_names_with_spaces(tmp_path):
    """Auto-detection reads "golden retriever" as two labels; --label-mode single does not."""
    imgs, csv = breed_table(tmp_path, ["golden retriever", "pug", "golden retriever"])

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
    imgs, csv = breed_table(tmp_path, ["golden retriever", "pug", "golden retriever", "pug"])
    out = tmp_path / "ds"
    r = subprocess.run([sys.executable, os.path.join(ROOT, "generate_dataset.py"), str(imgs), "--labels", str(csv),
                        "--label-mode", "single", "--out", str(out), "--no-progress"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "labels.json").read_text()) == ["golden retriever", "pug"]
    assert json.loads((out / "manifest.json").read_text())["multi_label"] is False


def test_label_name_readers_one_line_errors(tmp_path):
    latin1 = tmp_path / "names.txt"
    latin1.write_bytes("caf\xe9\nthé\n".encode("latin-1"))
    with pytest.raises(SourceError, match=r"names\.txt: not a UTF-8 text file$") as e:
        read_label_map(str(latin1))
    assert str(e.value) == f"{latin1}: not a UTF-8 text file"
    with pytest.raises(SourceError) as e:
        read_label_names(str(latin1))
    assert str(e.value) == f"--label-names {latin1}: not a UTF-8 text file"
    twice = write_text(tmp_path / "twice.txt", "cat\ndog\ncat\n")
    with pytest.raises(SourceError) as e:
        read_label_map(str(twice))
    assert str(e.value) == f"{twice}: label name 'cat' appears twice"
    with pytest.raises(SourceError) as e:
        read_label_names(str(twice))
    assert str(e.value) == f"--label-names: duplicate names in {str(twice)!r}"
    with pytest.raises(SourceError, match="empty name"):
        read_label_names("a,,b")
    with pytest.raises(SourceError, match="input not found"):
        read_label_map(str(tmp_path / "none.txt"))


def test_label_names_file_vs_list(tmp_path):
    one_line = write_text(tmp_path / "one.txt", "x, y,z\n")
    assert read_label_names(str(one_line)) == ["x", "y", "z"]           # a URL list's names: commas split
    assert read_label_map(str(one_line))[0] == ["x, y,z"]               # a csv source's: one name per line
    ids = write_text(tmp_path / "ids.csv", "id,name\n10,ten\n2,two\n")
    names, mapping = read_label_map(str(ids))
    assert names == ["two", "ten"] and mapping == {"two": "two", "ten": "ten", "10": "ten", "2": "two"}
