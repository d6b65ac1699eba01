"""utils/generate/pool.py: the resize workers' pool, its start method and its chunked, ordered feed."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures.process import BrokenProcessPool

import pytest

from tests.conftest import ROOT
from utils.generate import pool


def _square(x):
    return x * x


def _slow_square(x):
    time.sleep(0.02 if x % 7 == 0 else 0)   # uneven work: the two workers finish out of turn
    return x * x


def _exit_at(x):
    if x == 5:
        os._exit(3)   # a worker dying as if killed (out of memory, a crash in C)
    return x


def _fail_at(x):
    if x == 5:
        raise ZeroDivisionError("bug")
    return x


def _sigint_self(x):
    os.kill(os.getpid(), signal.SIGINT)   # Ctrl-C reaches the whole process group: the writer handles it
    return x


def test_results_come_in_order_in_chunks_with_bounded_look_ahead(monkeypatch):
    monkeypatch.setattr(pool, "CHUNK", 3)
    monkeypatch.setattr(pool, "CHUNKS_PER_WORKER", 2)
    taken = []

    def args():
        for i in range(40):
            taken.append(i)
            yield (i,)

    ex = pool.WorkerPool(2, pool.start_method())
    try:
        out = []
        for r in pool.ordered_results(_slow_square, args(), ex):
            out.append(r)
            # at most window (2 workers x 2) chunks of 3 are ever taken ahead of the consumer
            assert len(taken) - len(out) <= 2 * 2 * 3
        assert ex._outstanding == 0
    finally:
        ex.shutdown()
    assert out == [i * i for i in range(40)]
    assert list(pool.ordered_results(_square, args(), None)) == out   # inline
    assert all(_gone(pid) for pid in ex.pids)


_BIG = """
import sys
sys.path.insert(0, {root!r})
from utils.generate import pool
from tests.generate.test_pool import _twice
ex = pool.WorkerPool(2, "fork")
args = [(bytes([i]) * size,) for i, size in enumerate([200_000, 50_000, 100] * 30)]
out = list(pool.ordered_results(_twice, args, ex))
ex.shutdown()
print(out == [a * 2 for (a,) in args], len(out))
"""


def _twice(b):
    return b * 2


def test_big_tasks_and_big_results_never_wait_on_each_other():
    # Before: a task bigger than the task pipe's room blocked the sender while both workers were
    # blocked on a full result pipe that only the sender reads (a hang); now it runs in the parent.
    done = subprocess.run([sys.executable, "-c", _BIG.format(root=ROOT)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["True", "90"]


@pytest.mark.parametrize("method", ["default", "forkserver"])
def test_a_dead_worker_or_a_failing_task_is_raised_not_waited_for(method):
    method = pool.start_method() if method == "default" else method
    ex = pool.WorkerPool(2, method)
    try:
        with pytest.raises(BrokenProcessPool, match="exit code 3"):
            list(pool.ordered_results(_exit_at, ((i,) for i in range(40)), ex))
    finally:
        ex.shutdown()                # terminates the live one: results were left unread
    ex = pool.WorkerPool(2, method)
    try:
        with pytest.raises(ZeroDivisionError, match="bug"):
            list(pool.ordered_results(_fail_at, ((i,) for i in range(40)), ex))
    finally:
        ex.shutdown()
    assert all(_gone(pid) for pid in ex.pids)


def test_workers_leave_ctrl_c_to_the_writer():
    ex = pool.WorkerPool(2, pool.start_method())
    pids = ex.pids
    try:   # each worker gets SIGINT for every task, ignores it and goes on
        assert list(pool.ordered_results(_sigint_self, ((i,) for i in range(20)), ex)) == list(range(20))
        assert not any(_gone(pid) for pid in pids)
    finally:
        ex.shutdown()
    assert all(_gone(pid) for pid in pids)


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
print(ex.method, *ex.pids, flush=True)
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
        assert context == "fork" and len(pids) == 2          # no TensorFlow, one thread: forked
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
