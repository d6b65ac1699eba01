"""utils/detect/inputs.py: INPUT arguments -> InputSpecs (no TensorFlow, no network)."""
import os

import pytest

from tests.conftest import write_image
from tests.detect.common import CLASSES, image_bytes, write_split
from utils.detect.inputs import check_paths, plan_inputs
from utils.errors import DatasetError, SourceError, UsageError
from utils.sources.download import cache_path


def samples_of(spec):
    return {s.id: s for s in spec.samples()}


def test_folder_labels_from_class_folders_and_order(tmp_path):
    root = tmp_path / "imgs"
    for rel in ("red/r0.png", "blue/b0.jpg", "val/green/g0.png", "loose.png", "other/o0.png", "notes.txt"):
        write_image(root / rel) if rel.endswith((".png", ".jpg")) else (root / rel).write_text("hi")
    (root / ".hidden.png").write_bytes(b"")
    [spec] = plan_inputs([str(root)], CLASSES)
    got = samples_of(spec)
    assert list(got) == ["blue/b0", "loose", "notes", "other/o0", "red/r0", "val/green/g0"]
    assert {k: s.label for k, s in got.items()} == {"blue/b0": (2,), "loose": None, "notes": None,
                                                   "other/o0": None, "red/r0": (0,), "val/green/g0": (1,)}
    assert spec.count == 6 and not spec.labelled and spec.kind == "files"
    with pytest.raises(ValueError, match="unsupported file type: .txt"):
        got["notes"].load()
    assert got["red/r0"].load()[0] == (root / "red/r0.png").read_bytes() and got["red/r0"].rereadable
    [flat] = plan_inputs([str(root / "red")], CLASSES)
    assert not flat.labelled                            # directly under the given folder: no label


def test_globs_files_and_bad_inputs(tmp_path):
    for rel in ("a/x.png", "a/y.jpg", "a/sub/z.png", "a/n.txt"):
        write_image(tmp_path / rel) if not rel.endswith(".txt") else (tmp_path / rel).write_text("")
    [spec] = plan_inputs([str(tmp_path / "a" / "*")], CLASSES)
    assert list(samples_of(spec)) == ["z", "x", "y"]    # the folder match walked (ids relative to it)
    [one] = plan_inputs([str(tmp_path / "a" / "x.png")], CLASSES)
    assert list(samples_of(one)) == ["x"] and one.count == 1
    cases = [([str(tmp_path / "*.zzz")], "no files match"), ([str(tmp_path / "a" / "*.txt")], "no images match"),
             ([str(tmp_path / "a" / "n.txt")], "no `id,url` lines")]
    (tmp_path / "empty").mkdir()
    (tmp_path / "w.xyz").write_text("")
    cases += [([str(tmp_path / "empty")], "no files in folder"), ([str(tmp_path / "w.xyz")], "unsupported input")]
    for inputs, msg in cases:
        with pytest.raises((UsageError, SourceError), match=msg):
            plan_inputs(inputs, CLASSES)
    with pytest.raises(UsageError, match="6 planes per sample: give a dataset folder"):
        plan_inputs([str(tmp_path / "a")], CLASSES, planes=6)
    with pytest.raises(UsageError, match="input not found"):
        check_paths([], [str(tmp_path / "missing")])
    with pytest.raises(UsageError, match="model not found"):
        check_paths([str(tmp_path / "m.h5")], [])


def test_url_list_carries_its_label_columns(tmp_path):
    """Downloads come from the cache (no network here); label column i is class i."""
    cache = str(tmp_path / "cache")
    os.makedirs(cache)
    lines = ["id,url", "a,http://x/a.png,1,0,1", "b,http://x/b.png,0,0,0", "c,http://x/c.png", "d,http://x/d.png,1"]
    for key in "abcd":
        with open(cache_path(cache, key, f"http://x/{key}.png"), "wb") as f:
            f.write(image_bytes(ord(key)))
    lst = tmp_path / "urls.csv"
    lst.write_text("\n".join(lines + ["gone,ftp://x/g.png"]) + "\n")
    [spec] = plan_inputs([str(lst)], CLASSES, cache_dir=cache)
    got = samples_of(spec)
    assert {k: s.label for k, s in got.items()} == {"a": (0, 2), "b": (), "c": None, "d": (0,)}
    assert spec.kind == "urls" and spec.count == 4 and not spec.labelled
    assert spec.skipped == [("gone", "download failed: unsupported URL scheme: ftp")]


def test_dataset_folder_split_and_planes(tmp_path):
    data = write_split(tmp_path / "ds", ["red", "blue"], [("s0", image_bytes(0), [0]), ("s1", image_bytes(1), [1])])
    [spec] = plan_inputs([str(data)], CLASSES)
    assert spec.name.endswith("(val)") and spec.count == 2 and spec.labelled and spec.kind == "dataset"
    with pytest.raises(DatasetError, match="no 'test' split"):
        plan_inputs([str(data)], CLASSES, split="test")
    with pytest.raises(DatasetError, match="1 planes per record, the model reads 6"):
        plan_inputs([str(data)], CLASSES, planes=6)
    [other] = plan_inputs([str(data)], ["green"])
    assert not other.labelled                            # its classes are not the model's


def test_bson_products_grouped_and_labelled(tmp_path):
    import bson

    path = tmp_path / "train.bson"
    with open(path, "wb") as f:
        f.write(bson.encode({"_id": 7, "category_id": 2, "imgs": [{"picture": b"a"}, {"picture": b"b"}]}))
        f.write(bson.encode({"_id": 8, "category_id": 9, "imgs": []}))
    [spec] = plan_inputs([str(path)], ["1", "2"])
    assert spec.labelled and spec.unit == "products" and spec.count is None
    got = list(spec.samples())
    assert [(s.id, s.group, s.label) for s in got] == [("7#0", "7", (1,)), ("7#1", "7", (1,)), ("8", "8", None)]
    assert got[1].load() == [b"b"]
    with pytest.raises(ValueError, match="product has no readable photo"):
        got[2].load()
