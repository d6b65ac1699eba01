"""utils/files.py and utils/errors.first_line: the leaf helpers every stage uses."""
import hashlib
import json
import os

import pytest

from utils.errors import first_line
from utils.files import atomic_open, atomic_path, atomic_write_csv, atomic_write_json, file_sha256, natural_key


def test_natural_sort_numeric_ids():
    names = ["1000012", "10", "2", "c10", "c2", "b"]
    assert sorted(names, key=natural_key) == ["2", "10", "1000012", "b", "c2", "c10"]


def test_first_line_is_the_first_nonblank_line():
    assert first_line(ValueError("\n  broken header\ndetails")) == "broken header"
    assert first_line(OSError()) == "OSError"
    assert first_line(ValueError(" \n ")) == "ValueError"
    assert first_line(ValueError("x" * 50), 10) == "x" * 10


def test_atomic_write_replaces_whole_and_leaves_no_temp(tmp_path):
    path = str(tmp_path / "a.json")
    atomic_write_json(path, {"k": [1, 2]})
    atomic_write_json(path, {"k": 3})
    assert json.load(open(path)) == {"k": 3}
    assert os.listdir(tmp_path) == ["a.json"]


def test_atomic_write_failure_keeps_old_file_and_removes_temp(tmp_path):
    path = str(tmp_path / "rows.csv")
    assert atomic_write_csv(path, ["a"], [[1], [2]]) == 2

    def rows():
        yield [3]
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        atomic_write_csv(path, ["a"], rows())
    assert open(path).read().splitlines() == ["a", "1", "2"]
    assert os.listdir(tmp_path) == ["rows.csv"]

    with pytest.raises(KeyboardInterrupt):
        with atomic_open(path, "wb") as f:
            f.write(b"half")
            raise KeyboardInterrupt
    assert os.listdir(tmp_path) == ["rows.csv"]


def test_atomic_path_keeps_the_extension_for_format_sniffing_writers(tmp_path):
    path = str(tmp_path / "p.png")
    with atomic_path(path, tmp_suffix=".tmp.png") as tmp:
        assert tmp.endswith(".png") and tmp != path
        open(tmp, "wb").write(b"x")
    assert open(path, "rb").read() == b"x"
    with pytest.raises(ValueError):
        with atomic_path(path) as tmp:
            open(tmp, "wb").write(b"y")
            raise ValueError
    assert os.listdir(tmp_path) == ["p.png"]


def test_file_sha256_reads_in_chunks(tmp_path):
    data = os.urandom(10_000)
    (tmp_path / "b").write_bytes(data)
    assert file_sha256(str(tmp_path / "b"), chunk=999) == hashlib.sha256(data).hexdigest()


def test_exclusive_lock_refuses_a_second_holder_and_names_its_pid(tmp_path):
    import subprocess
    import sys
    import textwrap

    from utils.files import LockedError, exclusive_lock

    lock = str(tmp_path / ".lock")
    code = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {os.getcwd()!r})
        from utils.files import exclusive_lock
        with exclusive_lock({lock!r}, "data/x"):
            print("held", flush=True)
            time.sleep(60)
    """)
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LockedError) as err:
            with exclusive_lock(lock, "data/x"):
                pass
        assert str(err.value) == (f"data/x is being written by another run (pid {holder.pid}); "
                                  "wait for it or choose another --out")
    finally:
        holder.kill()      # kill -9: the kernel drops the lock, no stale lock stays
        holder.wait()
    with exclusive_lock(lock, "data/x"):
        assert open(lock).read().strip() == str(os.getpid())
    assert open(lock).read() == ""          # a clean exit leaves no pid behind


def test_a_refusal_inside_the_holders_write_gap_waits_for_its_pid(tmp_path):
    """The holder writes its pid just after taking the lock; a second run refused in that gap
    reads an empty file and must wait for the pid, not print "pid unknown" (a CI failure)."""
    import fcntl
    import threading

    from utils.files import LockedError, exclusive_lock

    lock = str(tmp_path / ".lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)        # held, pid not written yet
    writer = threading.Timer(0.3, lambda: os.pwrite(fd, b"4242\n", 0))
    writer.start()
    try:
        with pytest.raises(LockedError, match=r"\(pid 4242\);"):
            with exclusive_lock(lock, "data/x"):
                pass
    finally:
        writer.join()
        os.close(fd)
