"""FolderSource (3 layouts) and the one file walk: every file offered becomes exactly one Item or Skip."""
import os
import pickle

import pytest

from tests.conftest import write_image
from tests.sources.helpers import collect, count_files, write_text
from utils.sources.base import SourceError
from utils.sources.folder import (
    FolderSource,
    extension_problem,
    has_image_extension,
    rel_key,
    require_file,
    stem,
    walk_files,
    walk_inputs,
)


def test_folder_class_layout(tmp_path):
    root = tmp_path / "data"
    write_image(root / "cat" / "a.jpg")
    write_image(root / "cat" / "b.png", c=1)
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


# ---------------------------------------------------------------- the file walk

def test_walk_skips_hidden_sorts_and_excludes(tmp_path):
    for rel in ("b/2.jpg", "b/10.jpg", "a.png", ".git/x.jpg", "b/.DS_Store", "labels.csv", "sub/labels.csv"):
        write_text(tmp_path / rel, "x")
    files = walk_files(str(tmp_path), frozenset({os.path.realpath(tmp_path / "labels.csv")}))
    assert [rel_key(p, str(tmp_path)) for p in files] == ["a.png", "b/10.jpg", "b/2.jpg", "sub/labels.csv"]
    assert all(os.path.isabs(p) or p.startswith(str(tmp_path)) for p in files)
    assert list(walk_inputs(str(tmp_path))) == [
        (str(tmp_path / "a.png"), "a.png", None),
        (str(tmp_path / "b" / "10.jpg"), "b/10.jpg", None),
        (str(tmp_path / "b" / "2.jpg"), "b/2.jpg", None),
        (str(tmp_path / "labels.csv"), "labels.csv", "unsupported file type: .csv"),
        (str(tmp_path / "sub" / "labels.csv"), "sub/labels.csv", "unsupported file type: .csv"),
    ]


def test_extension_check_and_names():
    assert all(has_image_extension(n) for n in ("a.JPG", "b.jpeg", "c.png", "d.gif", "e.bmp", "f.webp", "g.TIF", "h.tiff"))
    assert not has_image_extension("a.csv") and not has_image_extension("jpg")
    assert extension_problem("x/a.Jpeg") is None
    assert extension_problem("notes.TXT") == "unsupported file type: .txt"
    assert extension_problem("README") == "unsupported file type: (no extension)"
    assert stem("a/b/00123.jpg") == "00123"
    assert rel_key("/r/a/b.jpg", "/r") == "a/b.jpg" and rel_key("/r/a/b.jpg", "/r/") == "a/b.jpg"


def test_require_file(tmp_path):
    require_file(write_text(tmp_path / "f.txt", "x"))
    for missing in (tmp_path / "nope", tmp_path):
        with pytest.raises(SourceError, match=r"^input not found: "):
            require_file(str(missing))
