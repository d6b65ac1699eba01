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
