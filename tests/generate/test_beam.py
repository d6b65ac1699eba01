"""--runner beam (utils/generate/beam.py) against --runner local: the same shard bytes and manifest.

The per-kind comparisons run Beam's DirectRunner in its in-process mode
(direct_running_mode=in_memory): multi_processing starts worker processes
for ~4 s per run; one test runs the default 2-process mode.
"""
from __future__ import annotations

import csv
import json
import os
import tempfile

import bson
import pytest
from apache_beam.io.filesystem import FileMetadata, MatchResult
from apache_beam.io.localfilesystem import LocalFileSystem

import generate_dataset as gd
from tests.conftest import encode_image, random_image, write_image
from tests.sources.test_download import http_server  # noqa: F401  (the local HTTP server fixture)
from utils.dataset.manifest import MANIFEST
from utils.errors import SourceError, UsageError
from utils.generate import outdir, shards

IN_PROCESS = ["--beam-option", "direct_running_mode=in_memory"]
TIMING = ()   # the manifest has no timing fields today; listed here if one is added


def build(source, out, *extra):
    return gd.main([str(source), "--out", str(out), "--no-progress", *map(str, extra)])


def files(out) -> dict[str, bytes]:
    """Every file of a finished dataset, by name (the manifest without its own name, path and timing)."""
    got = {}
    for n in sorted(os.listdir(out)):
        if os.path.isdir(os.path.join(out, n)) or n == ".lock":   # a URL list's cache; the local run's lock
            continue
        data = open(os.path.join(out, n), "rb").read()
        if n == MANIFEST:
            man = json.loads(data)
            for k in ("name", *TIMING):
                man.pop(k, None)
            # a URL list's cache lives in its own --out
            data = json.dumps(man, sort_keys=True).replace(str(out), "OUT").encode()
        got[n] = data
    return got


def same_as_local(tmp_path, source, *args) -> dict[str, bytes]:
    """Build `source` with both runners; assert identical outputs; -> the files."""
    assert build(source, tmp_path / "local", *args) == 0
    assert build(source, tmp_path / "beam", *args, "--runner", "beam", *IN_PROCESS) == 0
    local, beam = files(tmp_path / "local"), files(tmp_path / "beam")
    assert sorted(local) == sorted(beam)
    for n in local:
        assert local[n] == beam[n], n
    assert not os.path.exists(tmp_path / "beam" / outdir.WORK)
    return beam


def folder(root, per_class=(5, 4, 3), bad=True):
    for c, count in zip(("cat", "dog", "emu"), per_class):
        for j in range(count):
            write_image(os.path.join(root, c, f"{j:03d}.png"), random_image(100 * ord(c[0]) + j, 32, 40, blocky=False))
    if bad:
        with open(os.path.join(root, "cat", "junk.png"), "wb") as f:
            f.write(b"not an image")
    return root


def shard_names(got):
    return [n for n in got if n.endswith(".tfrecord")]


def test_folder_same_bytes_as_local_with_split_folds_and_resize(tmp_path):
    src = folder(str(tmp_path / "src"), (8, 7, 6))
    got = same_as_local(tmp_path, src, "--val-fraction", "0.25", "--folds", "2", "--shard-mb", "0.001",
                        "--max-side", "24")
    assert len(shard_names(got)) >= 6
    man = json.loads(got[MANIFEST])
    assert man["skipped"]["count"] == 1 and man["inputs"] == 22


def test_dedupe_same_as_local_across_shards(tmp_path):
    src = folder(str(tmp_path / "src"), (6, 6, 0), bad=False)
    for j in range(3):   # copies of an image land in other shards than their first occurrence
        data = open(os.path.join(src, "cat", f"{j:03d}.png"), "rb").read()
        with open(os.path.join(src, "dog", f"copy{j}.png"), "wb") as f:
            f.write(data)
    got = same_as_local(tmp_path, src, "--dedupe", "--shard-mb", "0.003")
    assert len(shard_names(got)) >= 4
    rows = list(csv.reader(got["skipped.csv"].decode().splitlines()))[1:]
    assert len(rows) == 3 and all(r[1].startswith("duplicate of ") for r in rows)


def test_csv_same_bytes_as_local(tmp_path):
    flat = tmp_path / "flat"
    rows = []
    for j in range(9):
        write_image(str(flat / f"im{j}.jpg"), random_image(j, 32, 32, blocky=False))
        rows.append(f"im{j},{' '.join(str(x) for x in sorted({j % 3, (j * 2) % 4}))}")
    (tmp_path / "labels.csv").write_text("id,attribute_ids\n" + "\n".join(rows) + "\nghost,1\n")
    got = same_as_local(tmp_path, flat, "--labels", tmp_path / "labels.csv", "--shard-mb", "0.003")
    assert json.loads(got[MANIFEST])["multi_label"] is True


def test_multichannel_same_bytes_as_local(tmp_path):
    root = tmp_path / "mc"
    for j in range(5):
        for w in ("w1", "w2", "w3"):
            img = random_image(10 * j + int(w[1]), 32, 32, blocky=False)[..., 0]
            write_image(str(root / f"s{j}_{w}.png"), img)
    (tmp_path / "labels.csv").write_text("id,label\n" + "".join(f"s{j},{'ab'[j % 2]}\n" for j in range(5)))
    got = same_as_local(tmp_path, root, "--channels", "w1,w2,w3", "--labels", tmp_path / "labels.csv")
    assert json.loads(got[MANIFEST])["planes"] == 3


def test_bson_same_bytes_as_local(tmp_path):
    jpeg = [encode_image(random_image(j, 32, 32, blocky=False), "jpeg") for j in range(7)]
    docs = [{"_id": 1, "category_id": 10, "imgs": [{"picture": jpeg[0]}, {"picture": jpeg[1]}]},
            {"_id": 2, "category_id": 20, "imgs": [{"picture": jpeg[2]}]},
            {"_id": 3, "category_id": 10, "imgs": [{"picture": jpeg[3]}, {"picture": b"not a jpeg"}]},
            {"_id": 4, "category_id": 30, "imgs": [{"picture": jpeg[4]}, {"picture": jpeg[5]}, {"picture": jpeg[6]}]}]
    with open(tmp_path / "train.bson", "wb") as f:
        for d in docs:
            f.write(bson.encode(d))
    got = same_as_local(tmp_path, tmp_path / "train.bson", "--val-fraction", "0.3", "--shard-mb", "0.002")
    man = json.loads(got[MANIFEST])
    assert man["inputs"] == 8 and man["skipped"]["count"] == 1


def test_url_list_same_bytes_as_local(tmp_path, http_server):  # noqa: F811
    b = http_server.base
    lines = [f"u{j},{b}/img/{j}.jpg,{j % 2},{(j + 1) % 2},1" for j in range(6)] + [f"gone,{b}/404,1,0,0"]
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    got = same_as_local(tmp_path, tmp_path / "list.txt", "--timeout", "2")
    man = json.loads(got[MANIFEST])
    assert man["inputs"] == 7 and man["skipped"]["count"] == 1
    assert http_server.counts["/img/0.jpg"] == 2   # each run has its own cache in its --out


@pytest.mark.slow   # two Beam worker processes start for ~4 s
def test_two_worker_processes_same_bytes(tmp_path):
    src = folder(str(tmp_path / "src"))
    assert build(src, tmp_path / "local", "--shard-mb", "0.003") == 0
    assert build(src, tmp_path / "beam", "--shard-mb", "0.003", "--runner", "beam", "--workers", "2") == 0
    local, beam = files(tmp_path / "local"), files(tmp_path / "beam")
    assert len(shard_names(beam)) >= 3 and local == beam


def die_on_third_shard(monkeypatch):
    """Make the Beam runner's third write_shard call fail as a full disk does (a worker dies while
    writing its third shard) -> a function that puts the real write_shard back."""
    from utils.generate import beam

    real, calls = shards.write_shard, []

    def dies_on_third(entry, *a, **kw):
        calls.append(entry.file)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real(entry, *a, **kw)

    monkeypatch.setattr(beam, "write_shard", dies_on_third)
    return lambda: monkeypatch.setattr(beam, "write_shard", real)


def test_killed_run_resumes_without_rewriting_finished_shards(tmp_path, monkeypatch):
    src = folder(str(tmp_path / "src"), (6, 6, 6), bad=False)
    args = ("--shard-mb", "0.003", "--val-fraction", "0.2")
    assert build(src, tmp_path / "clean", *args) == 0
    heal = die_on_third_shard(monkeypatch)
    with pytest.raises(SourceError, match="the Beam run failed: .*No space left on device"):
        build(src, tmp_path / "out", *args, "--runner", "beam", *IN_PROCESS)
    out = tmp_path / "out"
    assert not (out / MANIFEST).exists()
    finished = sorted(n for n in os.listdir(out / outdir.WORK) if n.endswith(".tfrecord.json"))
    total = len([n for n in os.listdir(tmp_path / "clean") if n.endswith(".tfrecord")])
    assert 1 <= len(finished) < total
    assert all(os.path.exists(out / n[:-5]) for n in finished)   # a shard may also be there without one
    stamps = {n[:-5]: os.stat(out / n[:-5]).st_mtime_ns for n in finished}

    heal()
    assert build(src, out, *args, "--runner", "beam", *IN_PROCESS) == 0
    assert {n: os.stat(out / n).st_mtime_ns for n in stamps} == stamps   # not rewritten
    assert files(out) == files(tmp_path / "clean")


@pytest.mark.parametrize("opt, message", [
    ("direct_running_mode=sideways", "--beam-option: argument --direct_running_mode: invalid choice"),
    ("no_such_option=1", "--beam-option no_such_option=1: not a Beam pipeline option"),
    ("=1", "expected KEY=VALUE"),
    ("runner=NoSuchRunner", "--beam-option runner=NoSuchRunner: Unexpected pipeline runner"),
])
def test_refused_option_is_one_line_before_any_work(tmp_path, capsys, opt, message):
    src = folder(str(tmp_path / "src"), (2, 2, 0), bad=False)
    from utils.errors import run_cli
    assert run_cli(gd.main, [src, "--out", str(tmp_path / "out"), "--runner", "beam", "--beam-option", opt]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not (tmp_path / "out").exists()


def test_runner_not_installed_is_a_usage_error():
    from utils.generate.beam import BeamShardWriter
    try:
        import google.auth  # noqa: F401
    except ImportError:   # as here: apache-beam without its [gcp] extra
        with pytest.raises(UsageError, match=r"runner=DataflowRunner: not installed .*pip install 'apache-beam\[gcp\]"):
            BeamShardWriter(["runner=DataflowRunner"])
    with pytest.raises(UsageError, match="runner=nosuch_beam_pkg.Runner: not installed .No module named 'nosuch_beam_pkg'"):
        BeamShardWriter(["runner=nosuch_beam_pkg.Runner"])


def test_output_without_a_filesystem_and_options_without_beam(tmp_path):
    src = folder(str(tmp_path / "src"), (2, 2, 0), bad=False)
    with pytest.raises(UsageError, match="--out nosuch://bucket/x: Unable to get filesystem"):
        build(src, "nosuch://bucket/x", "--runner", "beam")
    with pytest.raises(UsageError, match="--beam-option needs --runner beam"):
        build(src, tmp_path / "out", "--beam-option", "runner=DirectRunner")
    assert not (tmp_path / "out").exists()


class FakeRemoteFS(LocalFileSystem):
    """fakefs://PATH -> ROOT/PATH: a remote --out's code path (FileSystems, no os calls) on local disk."""

    root = ""

    @classmethod
    def scheme(cls):
        return "fakefs"

    def _local(self, path):
        if not path.startswith("fakefs://"):   # FileSystem.match calls back with the translated path
            return path
        return os.path.join(FakeRemoteFS.root, path[len("fakefs://"):])

    def create(self, path, *a, **kw):
        os.makedirs(os.path.dirname(self._local(path)), exist_ok=True)
        return super().create(self._local(path), *a, **kw)

    def open(self, path, *a, **kw):
        return super().open(self._local(path), *a, **kw)

    def rename(self, src, dst):
        return super().rename([self._local(p) for p in src], [self._local(p) for p in dst])

    def exists(self, path):
        return super().exists(self._local(path))

    def delete(self, paths):   # not super's: it matches through our match(), which maps paths back
        for p in paths:
            os.remove(self._local(p))

    def match(self, patterns, limits=None):
        out = []
        for pat, res in zip(patterns, super().match([self._local(p) for p in patterns], limits)):
            back = [FileMetadata("fakefs://" + os.path.relpath(m.path, FakeRemoteFS.root), m.size_in_bytes)
                    for m in res.metadata_list]
            out.append(MatchResult(pat, back))
        return out


@pytest.mark.slow   # three Beam runs and two local ones: ~5-8 s
def test_remote_out_through_filesystems_same_bytes_and_resume(tmp_path, monkeypatch):
    FakeRemoteFS.root = str(tmp_path / "bucket")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))   # the local mirror
    os.makedirs(tmp_path / "tmp")
    src = folder(str(tmp_path / "src"), (6, 6, 6), bad=True)
    args = ("--shard-mb", "0.003", "--val-fraction", "0.2")
    assert build(src, tmp_path / "clean", *args) == 0
    remote_dir = tmp_path / "bucket" / "ds"
    heal = die_on_third_shard(monkeypatch)
    with pytest.raises(SourceError, match="No space left on device"):
        build(src, "fakefs://ds", *args, "--runner", "beam", *IN_PROCESS)
    assert not (remote_dir / MANIFEST).exists()
    side = [n[:-5] for n in os.listdir(remote_dir / outdir.WORK) if n.endswith(".tfrecord.json")]
    kept = {n: os.stat(remote_dir / n).st_mtime_ns for n in side}   # a worker may die between shard and sidecar
    assert kept and outdir.STATE in os.listdir(remote_dir / outdir.WORK)

    heal()
    assert build(src, "fakefs://ds", *args, "--runner", "beam", *IN_PROCESS) == 0
    assert {n: os.stat(remote_dir / n).st_mtime_ns for n in kept} == kept   # not rewritten
    assert files(remote_dir) == files(tmp_path / "clean")
    assert not os.listdir(remote_dir / outdir.WORK)   # an object store has no empty folders to remove

    assert build(src, "fakefs://ds", *args, "--runner", "beam", *IN_PROCESS) == 0   # already built
    assert {n: os.stat(remote_dir / n).st_mtime_ns for n in kept} == kept
    with pytest.raises(SourceError, match="already holds a different finished dataset"):
        build(src, "fakefs://ds", "--seed", "3", "--val-fraction", "0", "--runner", "beam", *IN_PROCESS)
    assert build(src, "fakefs://ds", "--seed", "3", "--val-fraction", "0", "--overwrite", "--runner", "beam",
                 *IN_PROCESS) == 0
    assert json.loads((remote_dir / MANIFEST).read_text())["seed"] == 3
    assert sum(n.endswith(".tfrecord") for n in os.listdir(remote_dir)) == 1


def test_publish_drops_remote_shards_the_manifest_does_not_list(tmp_path):
    from utils.generate import remote
    FakeRemoteFS.root = str(tmp_path / "bucket")
    local, bucket = tmp_path / "local", tmp_path / "bucket" / "ds"
    os.makedirs(local)
    os.makedirs(bucket / outdir.WORK)
    man = {"splits": {"train": {"shards": [{"file": "train-00000-of-00001.tfrecord"}]}}}
    (local / MANIFEST).write_text(json.dumps(man))
    (local / "labels.json").write_text("[]")
    (local / "skipped.csv").write_text("key,reason\n")
    for n in ("train-00000-of-00001.tfrecord", "train-00000-of-00002.tfrecord", "train-00001-of-00002.tfrecord",
              "notes.txt", f"{outdir.WORK}/state.json"):
        (bucket / n).write_text(n)
    remote.publish(str(local), "fakefs://ds")
    assert sorted(os.listdir(bucket)) == sorted([".work", MANIFEST, "labels.json", "notes.txt", "skipped.csv",
                                                 "train-00000-of-00001.tfrecord"])
    assert json.loads((bucket / MANIFEST).read_text()) == man and not os.listdir(bucket / outdir.WORK)


def test_remote_shards_of_an_unknown_build_are_not_overwritten(tmp_path):
    from utils.generate import remote
    FakeRemoteFS.root = str(tmp_path / "bucket")
    os.makedirs(tmp_path / "bucket" / "ds")
    (tmp_path / "bucket" / "ds" / "train-00000-of-00001.tfrecord").write_bytes(b"theirs")
    with pytest.raises(SourceError, match="shards of an unknown build"):
        remote.pull("fakefs://ds", str(tmp_path / "local"), overwrite=False)
    remote.pull("fakefs://ds", str(tmp_path / "local"), overwrite=True)
    assert os.listdir(tmp_path / "bucket" / "ds") == []
