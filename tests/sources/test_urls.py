"""UrlListSource on JD-fashion-style lists served by the local test HTTP server."""
from __future__ import annotations

import pytest

from tests.sources.test_download import http_server  # noqa: F401  (the local HTTP server fixture)
from utils.sources.base import Item, Skip, SourceError
from utils.sources.table import read_label_names
from utils.sources.urls import UrlListSource, read_url_list

FAST = dict(timeout=0.4, retries=1, concurrency=4, progress=False)


def write_list(tmp_path, lines, name="list.txt"):
    p = tmp_path / name
    p.write_text("\n".join(lines) + "\n")
    return str(p)


def run(src):
    out = list(src.items())
    return ({o.key: o for o in out if isinstance(o, Item)},
            {o.key: o.reason for o in out if isinstance(o, Skip)}, out)


def test_labelled_list(http_server, tmp_path):  # noqa: F811
    b = http_server.base
    lines = [
        f"a1,{b}/img/a1.jpg,1,0,1",
        f"a2,{b}/img/a2.jpg,0,1,0",
        f"zero,{b}/img/z.jpg,0,0,0",          # labelled, no positive class
        f"short,{b}/img/s.jpg,1,0",           # wrong column count
        f"bad,{b}/img/b.jpg,1,2,0",           # not 0/1
        f",{b}/img/e.jpg,1,0,0",              # empty id
        f"a1,{b}/img/dup.jpg,0,0,1",          # duplicate id
        f"gone,{b}/404,1,1,1",                # download fails
        "",                                    # blank lines are not inputs
        f"ftp1,ftp://127.0.0.1/x.jpg,0,0,1",
    ]
    path = write_list(tmp_path, lines)
    cache = str(tmp_path / "cache")
    src = UrlListSource(path, cache, label_names=["red", "long", "cotton"], **FAST)
    assert src.kind == "urls" and src.multi_label is True
    assert src.classes == ["red", "long", "cotton"]
    items, skips, out = run(src)
    assert len(out) == len([ln for ln in lines if ln])          # items + skips == lines offered
    assert set(items) == {"a1", "a2", "zero"}
    assert items["a1"].labels == ("red", "cotton") and items["a2"].labels == ("long",)
    assert items["zero"].labels == () and items["zero"].split is None
    assert all(i.split is None and i.source_id == i.key for i in items.values())
    assert skips == {
        "line 4": "expected 5 columns, got 4",
        "line 5": "label value not 0/1: '2'",
        "line 6": "empty image id",
        "line 7": "duplicate image id: a1",
        "gone": "http 404",
        "ftp1": "unsupported URL scheme: ftp",
    }
    assert items["a1"].load() == [http_server.jpeg]
    assert items["a1"].size == len(http_server.jpeg)

    # a rerun (e.g. after Ctrl-C) requests nothing it already has
    ok_paths = {p for p in http_server.counts if p.startswith("/img/")}
    before = {p: http_server.counts[p] for p in ok_paths}
    items2, _, _ = run(UrlListSource(path, cache, label_names=["red", "long", "cotton"], **FAST))
    assert {p: http_server.counts[p] for p in ok_paths} == before
    assert items2["a1"].load() == [http_server.jpeg]


def test_default_label_names_and_k(http_server, tmp_path):  # noqa: F811
    b = http_server.base
    path = write_list(tmp_path, [f"x{i},{b}/img/{i}.jpg,{i % 2},1" for i in range(3)])
    src = UrlListSource(path, str(tmp_path / "c"), **FAST)
    assert src.classes == ["l0", "l1"]
    items, skips, _ = run(src)
    assert not skips and items["x1"].labels == ("l0", "l1") and items["x0"].labels == ("l1",)


def test_test_list_is_unlabeled(http_server, tmp_path):  # noqa: F811
    b = http_server.base
    path = write_list(tmp_path, [f"t1,{b}/img/t1.jpg", f"t2,{b}/flaky/t2", f"t3,{b}/img/t3.jpg,1"])
    src = UrlListSource(path, str(tmp_path / "c"), **FAST)
    assert src.classes is None
    items, skips, _ = run(src)
    assert set(items) == {"t1", "t2"}                            # t2 recovered on retry
    assert all(i.labels == () and i.split == "test" for i in items.values())
    assert skips == {"line 3": "expected 2 columns, got 3"}


def test_bad_arguments(tmp_path):
    with pytest.raises(SourceError, match="^input not found: "):
        UrlListSource(str(tmp_path / "none.txt"), str(tmp_path / "c"))
    path = write_list(tmp_path, ["a,http://127.0.0.1/a.jpg,1,0,1"])
    with pytest.raises(SourceError, match="--label-names has 2 names but .* has 3 label columns"):
        UrlListSource(path, str(tmp_path / "c"), label_names=["a", "b"])
    empty = write_list(tmp_path, [""], name="empty.txt")
    with pytest.raises(SourceError, match="empty URL list"):
        UrlListSource(empty, str(tmp_path / "c"))


def test_windows_list_and_unreadable_lists(http_server, tmp_path):  # noqa: F811
    b = http_server.base
    p = tmp_path / "win.csv"   # saved by Excel on Windows: BOM + CRLF
    p.write_bytes(f"\ufeffw1,{b}/img/w1.jpg,1,0\r\nw2,{b}/img/w2.jpg,0,1\r\n".encode("utf-8"))
    items, skips, _ = run(UrlListSource(str(p), str(tmp_path / "c"), **FAST))
    assert not skips and items["w1"].labels == ("l0",) and items["w2"].labels == ("l1",)
    # unreadable lists are one SourceError line, not a traceback
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes("caf\xe9,http://x/a.jpg,1\n".encode("latin-1"))
    with pytest.raises(SourceError, match="not a UTF-8"):
        UrlListSource(str(latin1), str(tmp_path / "c"))
    with pytest.raises(SourceError, match="not a UTF-8"):
        read_label_names(str(latin1))


def test_construction_downloads_nothing(http_server, tmp_path):  # noqa: F811
    path = write_list(tmp_path, [f"a,{http_server.base}/img/a.jpg,1"])
    UrlListSource(path, str(tmp_path / "c"))
    assert sum(http_server.counts.values()) == 0


def test_read_label_names(tmp_path):
    assert read_label_names("a, b,c") == ["a", "b", "c"]
    f = tmp_path / "names.txt"
    f.write_text("red\nlong sleeve\n\ncotton\n")
    assert read_label_names(str(f)) == ["red", "long sleeve", "cotton"]
    f.write_text("x,y\n")
    assert read_label_names(str(f)) == ["x", "y"]
    with pytest.raises(SourceError, match="duplicate"):
        read_label_names("a,a")


def test_url_list_read_as_the_writer_reads_it(tmp_path):
    """detect.py's reading: a byte-order mark (Excel's CSV export) does not become part of the
    first id; a header line is allowed; a line without a URL stops the run."""
    lst = tmp_path / "l.csv"
    lst.write_bytes("1,http://x/a.jpg,0,1\n\n2, http://x/b.jpg ,1,0\n".encode("utf-8-sig"))
    assert [(r.image_id, r.url) for r in read_url_list(str(lst))] == [("1", "http://x/a.jpg"), ("2", "http://x/b.jpg")]
    lst.write_text("id,url\n1,http://x/a.jpg\nbroken line\n")
    with pytest.raises(SourceError, match=":3: expected `id,url`"):
        read_url_list(str(lst))
    lst.write_text("id,url\n")
    with pytest.raises(SourceError, match="no `id,url` lines"):
        read_url_list(str(lst))


def test_url_list_for_prediction_keeps_the_labels(tmp_path):
    """The label columns survive detect.py's reading, named by position as UrlListSource names them."""
    lst = tmp_path / "l.csv"
    lst.write_text("id,url\n1,http://x/a.jpg,0,1,1\n2,http://x/b.jpg,0,0,0\n3,http://x/c.jpg\n4,http://x/d.jpg,yes\n")
    rows = read_url_list(str(lst))
    assert [(r.line, r.labels, r.split) for r in rows] == [
        (2, ("l1", "l2"), None), (3, (), None), (4, (), "test"), (5, None, None)]
