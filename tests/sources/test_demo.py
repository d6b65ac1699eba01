"""The demo drawing: deterministic, complete, idempotent, and readable by the folder and CSV sources."""
import os
import time

import pytest

from tests.conftest import write_image
from tests.sources.helpers import collect, count_files
from utils.image.prepare import check_image
from utils.sources.base import SourceError
from utils.sources.demo import SHAPES, attribute_names, draw_demo
from utils.sources.folder import FolderSource
from utils.sources.table import TableSource


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
