"""utils/generate/pool.py: the resize workers' pool, its start method and its chunked, ordered feed."""
from __future__ import annotations

import concurrent.futures as cf
import os
import signal
import subprocess
import sys
import threading
import time

from tests.conftest import ROOT
from utils.generate import pool


def _square(x):
    return x * x


def test_results_come_in_order_in_chunks_with_bounded_look_ahead(monkeypatch):
    monkeypatch.setattr(pool, "CHUNK", 3)
    monkeypatch.setattr(pool, "CHUNKS_PER_WORKER", 2)
    taken = []

    def args():
        for i in range(20):
            taken.append(i)
            yield (i,)

    with cf.ThreadPoolExecutor(2) as ex:
        out = []
        for r in pool.ordered_results(_square, args(), ex, workers=2):
            out.append(r)
            # at most window (2 workers x 2) chunks of 3 are ever taken ahead of the consumer
            assert len(taken) - len(out) <= 2 * 2 * 3
    assert out == [i * i for i in range(20)]
    assert list(pool.ordered_results(_square, args(), None)) == out   # inline


def test_pass_through_and_one_worker_run_inline():
    assert pool.make_executor(False, 4) is None
    assert pool.make_executor(True, 1) is None


def test_fork_only_where_it_is_safe(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow", sys)          # TensorFlow loaded: never fork
    assert pool.start_method() != "fork"
    monkeypatch.delitem(sys.modules, "tensorflow")
    stop = threading.Event()
    t = threading.Thread(target=stop.wait)
    t.start()
    try:
        assert pool.start_method() != "fork"                     # another thread alive: never fork
    finally:
        stop.set()
        t.join()


_HOLDER = """
import sys, time
sys.path.insert(0, {root!r})
from utils.generate import pool
ex = pool.make_executor(True, 2)
for f in [ex.submit(pool._ready) for _ in range(4)]:
    f.result()
print(type(ex._mp_context).__name__, *ex._processes, flush=True)
time.sleep(60)
"""


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_forked_workers_die_with_a_killed_writer():
    # A kill -9 of the writer must not leave workers behind holding its open files (the --out lock).
    p = subprocess.Popen([sys.executable, "-c", _HOLDER.format(root=ROOT)], stdout=subprocess.PIPE, text=True)
    try:
        context, *pids = p.stdout.readline().split()
        assert context == "ForkContext" and len(pids) == 2          # no TensorFlow, one thread: forked
        assert not any(_gone(int(x)) for x in pids)
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    deadline = time.monotonic() + 10
    while not all(_gone(int(x)) for x in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(_gone(int(x)) for x in pids)
    assert not os.path.exists(f"/proc/{p.pid}")   # (reaped by us)


def test_a_build_leaves_no_thread_behind(tmp_path):
    # a second build in the same process can then fork its workers again (tqdm's monitor thread was one)
    from tests.generate.common import FakeSource, build, make_images

    before = set(threading.enumerate())
    src = FakeSource(make_images(tmp_path / "img", {"a": 3, "b": 3}))
    build(src, tmp_path / "out", progress=True, max_side=16)
    build(src, tmp_path / "out2", progress=False)
    assert set(threading.enumerate()) == before
