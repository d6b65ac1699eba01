"""--runner beam on a URL list: the workers download (utils/generate/beam_fetch.py), the outputs are the local run's.

The list is served by the local test HTTP server (127.0.0.1, started and
stopped by the fixture) with good images, a 404, an HTML page, a 500 that
recovers and a malformed line.
"""
from __future__ import annotations

import csv
import json
import os

import pytest

from tests.generate.test_beam import IN_PROCESS, build, files, shard_names
from tests.sources.test_download import http_server  # noqa: F401  (the local HTTP server fixture)
from utils.dataset.manifest import MANIFEST
from utils.errors import SourceError
from utils.generate import beam_fetch, outdir
from utils.sources import download

GOOD = 8


def url_list(tmp_path, base):
    lines = [f"u{j},{base}/img/{j}.jpg,{j % 2},{(j + 1) % 2},1" for j in range(GOOD)]
    lines += [f"gone,{base}/404,1,0,0", f"page,{base}/page.html,0,1,0", f"flaky,{base}/flaky/f,1,1,0",
              f"short,{base}/img/s.jpg,1"]
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    return tmp_path / "list.txt"


def no_driver_downloads(monkeypatch):
    """Any download by this (the driver's) process fails the run: every request goes through _get_once."""
    def refuse(*a, **kw):
        raise AssertionError("the driver downloaded")

    monkeypatch.setattr(download, "fetch_all", refuse)
    monkeypatch.setattr(download, "_get_once", refuse)


def assert_same(tmp_path, **expect):
    local, beam = files(tmp_path / "local"), files(tmp_path / "beam")
    assert sorted(local) == sorted(beam) and len(shard_names(beam)) >= 2
    for n in local:
        assert local[n] == beam[n], n
    rows = list(csv.reader(beam["skipped.csv"].decode().splitlines()))[1:]
    assert sorted(rows) == sorted(expect["skipped"])
    man = json.loads(beam[MANIFEST])
    assert man["inputs"] == GOOD + 4 and man["skipped"]["count"] == 3
    assert not os.path.exists(tmp_path / "beam" / outdir.WORK)
    cache = tmp_path / "beam" / "cache"
    assert len(os.listdir(cache)) == GOOD + 1      # the images and the recovered one; no part, no lock


SKIPPED = [["line 12", "expected 5 columns, got 3"], ["gone", "http 404"], ["page", "not an image"]]


def test_url_list_downloaded_by_the_pipeline_same_outputs(tmp_path, http_server, monkeypatch):  # noqa: F811
    lst = url_list(tmp_path, http_server.base)
    args = ("--timeout", "2", "--shard-mb", "0.003")
    assert build(lst, tmp_path / "local", *args) == 0
    before = dict(http_server.counts)
    with monkeypatch.context() as m:
        calls = []
        real = download.fetch_into
        m.setattr(download, "fetch_all", lambda *a, **kw: pytest.fail("the driver's fetch_all was called"))
        m.setattr(download, "fetch_into", lambda part, *a, **kw: calls.append(len(part)) or real(part, *a, **kw))
        assert build(lst, tmp_path / "beam", *args, "--runner", "beam", *IN_PROCESS) == 0
    assert sum(calls) == GOOD + 3 and len(calls) >= 2           # in parts: one worker's unit each
    assert_same(tmp_path, skipped=SKIPPED)
    got = {p: n - before.get(p, 0) for p, n in http_server.counts.items()}
    assert all(got[f"/img/{j}.jpg"] == 1 for j in range(GOOD)) and got["/404"] == 1


@pytest.mark.slow   # two Beam pipelines on two worker processes, then a rebuild: ~15-25 s
def test_two_worker_processes_download_not_the_driver(tmp_path, http_server, monkeypatch):  # noqa: F811
    lst = url_list(tmp_path, http_server.base)
    args = ("--timeout", "2", "--shard-mb", "0.003")
    assert build(lst, tmp_path / "local", *args) == 0
    before = dict(http_server.counts)
    no_driver_downloads(monkeypatch)
    assert build(lst, tmp_path / "beam", *args, "--runner", "beam", "--workers", "2") == 0
    assert_same(tmp_path, skipped=SKIPPED)
    got = {p: n - before.get(p, 0) for p, n in http_server.counts.items()}
    assert all(got[f"/img/{j}.jpg"] == 1 for j in range(GOOD)) and got["/404"] == 1 and got["/page.html"] == 1

    # a rebuild with another seed re-uses the cache: only the failures are requested again
    monkeypatch.undo()    # (in-process: the downloads run in this process)
    counts = dict(http_server.counts)
    assert build(lst, tmp_path / "beam", *args, "--seed", "1", "--overwrite", "--runner", "beam", *IN_PROCESS) == 0
    assert {p: n - counts.get(p, 0) for p, n in http_server.counts.items() if n != counts.get(p, 0)} == \
        {"/404": 1, "/page.html": 1}


def test_a_killed_download_is_one_error_and_its_rerun_fetches_only_the_rest(tmp_path, http_server, monkeypatch):  # noqa: F811
    lst = url_list(tmp_path, http_server.base)
    real, done = beam_fetch.fetch_part, []

    def dies_on_fourth(name, *a):   # a worker dies after three parts
        if len(done) == 3:
            raise OSError(28, "No space left on device")
        done.append(name)
        return real(name, *a)

    monkeypatch.setattr(beam_fetch, "fetch_part", dies_on_fourth)
    with pytest.raises(SourceError, match="the Beam run failed: .*No space left on device .*re-uses the files"):
        build(lst, tmp_path / "beam", "--timeout", "2", "--runner", "beam", *IN_PROCESS)
    work = tmp_path / "beam" / outdir.WORK
    # the parts' inputs are gone; a part another in-process worker thread was still downloading when
    # the run failed may write its .fetched after that (seen once under load): a name of this run's
    # token that no later run reads, removed with .work when a run finishes
    assert not os.path.exists(work) or not [n for n in os.listdir(work) if n.startswith("fetch-")
                                            and n.endswith(".urls")]
    assert not (tmp_path / "beam" / MANIFEST).exists()
    first = sum(n for p, n in http_server.counts.items() if p.startswith("/img/"))
    assert 1 <= first < GOOD

    monkeypatch.setattr(beam_fetch, "fetch_part", real)
    assert build(lst, tmp_path / "beam", "--timeout", "2", "--runner", "beam", *IN_PROCESS) == 0
    assert all(http_server.counts[f"/img/{j}.jpg"] == 1 for j in range(GOOD))   # none fetched twice
    assert json.loads((tmp_path / "beam" / MANIFEST).read_text())["skipped"]["count"] == 3


def test_remote_out_keeps_the_parts_in_its_work_folder(tmp_path, http_server, monkeypatch):  # noqa: F811
    import tempfile

    from tests.generate.test_beam import FakeRemoteFS
    FakeRemoteFS.root = str(tmp_path / "bucket")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))   # the local mirror (and its cache)
    os.makedirs(tmp_path / "tmp")
    lst = url_list(tmp_path, http_server.base)
    args = ("--timeout", "2", "--shard-mb", "0.003")
    assert build(lst, tmp_path / "local", *args) == 0
    written = []
    real = beam_fetch.remote.write_work
    monkeypatch.setattr(beam_fetch.remote, "write_work", lambda out, name, data: written.append((out, name))
                        or real(out, name, data))
    assert build(lst, "fakefs://ds", *args, "--runner", "beam", *IN_PROCESS) == 0
    assert {out for out, name in written if name.startswith("fetch-")} == {"fakefs://ds"}
    remote_dir = tmp_path / "bucket" / "ds"
    local, beam = files(tmp_path / "local"), files(remote_dir)
    assert sorted(local) == sorted(beam) and len(shard_names(beam)) >= 2
    assert all(local[n] == beam[n] for n in local if n != MANIFEST)
    man_local, man_beam = json.loads(local[MANIFEST]), json.loads(beam[MANIFEST])
    for man in (man_local, man_beam):   # the cache is in the local mirror, not in OUT
        man["source"]["args"].pop("cache_dir")
    assert man_local == man_beam
    assert not os.listdir(remote_dir / outdir.WORK)


def test_parts_cover_the_list_in_order():
    todo = [(f"k{i}", f"u{i}") for i in range(10)]
    parts = beam_fetch.split_parts(todo, 2)
    assert [x for p in parts for x in p] == todo and len(parts) == 8
    assert beam_fetch.split_parts(todo[:3], 2) == [[t] for t in todo[:3]]
    assert beam_fetch.split_parts([], 4) == []
    big = beam_fetch.split_parts([("k", "u")] * 5000, 1)
    assert len(big) == 5 and max(map(len, big)) == beam_fetch.PART_URLS


def test_workers_without_the_shared_cache_is_one_error(tmp_path, http_server, monkeypatch):  # noqa: F811
    lst = url_list(tmp_path, http_server.base)
    real = beam_fetch.fetch_part

    def elsewhere(name, work_out, cache_dir, opts):   # a worker whose disk is not this one
        return real(name, work_out, str(tmp_path / "their_disk"), opts)

    monkeypatch.setattr(beam_fetch, "fetch_part", elsewhere)
    with pytest.raises(SourceError, match=r"the workers downloaded u\d but .* is not here: the cache .* must be a "
                                          "folder the workers and this process share"):
        build(lst, tmp_path / "beam", "--timeout", "2", "--runner", "beam", *IN_PROCESS)
    assert len(os.listdir(tmp_path / "their_disk")) == GOOD + 1
