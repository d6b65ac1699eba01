"""Pass-through shards written side by side by forked workers (utils.generate.apart.write_shards).

The workers are forked, which is safe only in a process without TensorFlow
and without other threads, so each run is a fresh interpreter (the test
process may have TensorFlow imported).
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import threading

from tests.conftest import ROOT, random_image, write_image
from utils.dataset import tfrecord
from utils.generate import shards

PRELUDE = """
import json, os, sys
from utils.errors import run_cli
from utils.generate import apart, shards, writer
from utils.sources.folder import FolderSource
calls = []
real = apart.write_shards
def counted(todo, *a, **k):
    calls.append(len(todo))
    return real(todo, *a, **k)
apart.write_shards = counted
def build(src, out, workers):
    return writer.write_dataset(FolderSource(src), out, name="t", workers=workers, shard_mb=0.004,
                                val_fraction=0.25, progress=False, log=lambda m: None)
"""


def script(body: str, *args) -> subprocess.CompletedProcess:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    code = PRELUDE + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          timeout=300, env=env, cwd=ROOT)


def folder(root, n=24, bad=True) -> str:
    """root/<class>/NNNN.jpg noise photos (+ one truncated file): about a dozen shards at 4 KB."""
    for j in range(n):
        write_image(os.path.join(root, f"c{j % 3}", f"{j:04d}.jpg"), random_image(j, 32, 40, blocky=False))
    if bad:
        with open(os.path.join(root, "c0", "9999.jpg"), "wb") as f:
            f.write(open(os.path.join(root, "c0", "0000.jpg"), "rb").read()[:200])
    return str(root)


def shard_bytes(out) -> dict[str, str]:
    return {n: hashlib.sha256(open(os.path.join(out, n), "rb").read()).hexdigest()
            for n in sorted(os.listdir(out)) if n.endswith(".tfrecord")}


def test_two_workers_write_the_same_shards_and_manifest_as_one_process(tmp_path):
    src = folder(tmp_path / "src")
    r = script("""
        build(sys.argv[1], sys.argv[2], 2)
        build(sys.argv[1], sys.argv[3], 1)
        print(json.dumps(calls))
    """, src, tmp_path / "two", tmp_path / "one")
    assert r.returncode == 0, r.stderr
    calls = json.loads(r.stdout)
    assert len(calls) == 1 and calls[0] >= 4          # the 2-worker run, and only it, wrote shards apart
    two, one = shard_bytes(tmp_path / "two"), shard_bytes(tmp_path / "one")
    assert len(two) == calls[0] and two == one
    m2, m1 = (json.load(open(tmp_path / d / "manifest.json")) for d in ("two", "one"))
    assert m2 == m1 and m2["skipped"]["count"] == 1
    assert open(tmp_path / "two" / "skipped.csv").read() == open(tmp_path / "one" / "skipped.csv").read()
    assert not os.path.exists(tmp_path / "two" / ".work")


def test_a_worker_that_dies_is_one_error_line_and_the_rerun_gives_the_clean_result(tmp_path):
    src = folder(tmp_path / "src", bad=False)
    die = """
        prepare = apart.prepare_item
        def dying(load, *a):
            if "0007" in load.args[0]:   # in a worker (forked: it has this patch), mid-run
                os._exit(9)
            return prepare(load, *a)
        apart.prepare_item = dying
        sys.exit(run_cli(lambda argv: build(sys.argv[1], sys.argv[2], 2) and 0))
    """
    r = script(die, src, tmp_path / "out")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: a writer worker (pid ") and "exit code 9" in lines[0], \
        r.stderr
    assert "resumed with the same command" in lines[0]
    assert not os.path.exists(tmp_path / "out" / "manifest.json")
    r = script("build(sys.argv[1], sys.argv[2], 2); build(sys.argv[1], sys.argv[3], 1); print(json.dumps(calls))",
               src, tmp_path / "out", tmp_path / "clean")
    assert r.returncode == 0, r.stderr
    assert shard_bytes(tmp_path / "out") == shard_bytes(tmp_path / "clean")
    assert [n for n in os.listdir(tmp_path / "out") if n.endswith(".tmp")] == []


def test_a_full_disk_in_a_worker_is_one_error_line(tmp_path):
    src = folder(tmp_path / "src", bad=False)
    r = script("""
        put = shards.ShardSink._put
        def full(self, f, batch):
            if "train-00003" in self.path:
                raise OSError(28, "No space left on device")
            return put(self, f, batch)
        shards.ShardSink._put = full
        code = run_cli(lambda argv: build(sys.argv[1], sys.argv[2], 2) and 0)
        print(json.dumps(calls))
        sys.exit(code)
    """, src, tmp_path / "out")
    assert r.returncode == 2 and len(json.loads(r.stdout)) == 1   # in a shard worker
    assert r.stderr.strip().splitlines() == ["error: [Errno 28] No space left on device"], r.stderr
    assert not os.path.exists(tmp_path / "out" / "manifest.json")


def _records(n=40):
    return [[os.urandom(300 + 37 * i), b"%d" % i] for i in range(n)]


def test_a_sink_asked_later_writes_inline_until_told_then_on_its_thread(tmp_path, monkeypatch):
    monkeypatch.setattr(shards.ShardSink, "BATCH_BYTES", 2000)
    recs = _records()
    answers = iter([False] * 3 + [True] * 100)
    threads_inline = []

    def later():
        threads_inline.append(threading.active_count())
        return next(answers)

    base = threading.active_count()
    sink = shards.ShardSink(str(tmp_path / "a"), background=later)
    assert threading.active_count() == base           # no thread until asked
    for r in recs:
        sink.write_chunks(r)
    assert sink._q is not None and threading.active_count() == base + 1   # moved to its thread
    size, sha = sink.close()
    assert threads_inline[:4] == [base] * 4 and len(threads_inline) == 4  # asked until the first yes, then not
    want = b"".join(h + b"".join(r) + f for r in recs for h, f in [tfrecord.frame_parts(b"".join(r))])
    assert open(tmp_path / "a", "rb").read() == want
    assert (size, sha) == (len(want), hashlib.sha256(want).hexdigest())


def test_a_sink_never_told_writes_everything_inline(tmp_path, monkeypatch):
    monkeypatch.setattr(shards.ShardSink, "BATCH_BYTES", 2000)
    recs = _records(10)
    base = threading.active_count()
    sink = shards.ShardSink(str(tmp_path / "a"), background=False)
    for r in recs:
        sink.write_chunks(r)
    assert sink._q is None and threading.active_count() == base
    size, sha = sink.close()
    data = open(tmp_path / "a", "rb").read()
    assert size == len(data) and sha == hashlib.sha256(data).hexdigest() and len(data) > 10 * 300
