"""bench/pipeline.py and bench/minimal.py time a pass from its first batch to its last: a pass of
one batch has nothing to time, and must be refused in one line, not end in a ZeroDivisionError."""
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

BENCH = os.path.join(ROOT, "bench")


@pytest.fixture
def minimal(monkeypatch):
    monkeypatch.syspath_prepend(BENCH)  # the benches import each other as top-level modules
    import minimal

    return minimal


def test_too_few_images_for_two_batches(minimal):
    assert minimal.too_few_images(64, 32) is None and minimal.too_few_images(200, 32) is None
    assert minimal.too_few_images(24, 32) == ("--images must be at least --batch x 2 (64), got 24: "
                                              "a pass is timed from its first batch to its last")
    assert minimal.too_few_images(63, 32).startswith("--images must be at least --batch x 2 (64), got 63")


def test_pipeline_bench_refuses_fewer_images_than_two_batches_in_one_line(tmp_path):
    p = subprocess.run([sys.executable, os.path.join(BENCH, "pipeline.py"), "--images", "24",
                        "--workdir", str(tmp_path / "w")], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [
        "error: --images must be at least --batch x 2 (64), got 24: a pass is timed from its first batch to its last"]
    assert not (tmp_path / "w").exists()  # refused before writing anything


def test_a_one_batch_pass_is_an_error_not_a_division_by_zero(minimal):
    import tensorflow as tf

    one_batch = tf.data.Dataset.from_tensor_slices(tf.zeros([24, 2])).map(lambda x: (x,)).batch(32)
    with pytest.raises(SystemExit, match="a pass of 24 images is a single batch"):
        minimal.steady_state(one_batch)
    two = tf.data.Dataset.from_tensor_slices(tf.zeros([40, 2])).map(lambda x: (x,)).batch(32)
    n, timed, wall, cpu, first = minimal.steady_state(two)
    assert (n, timed) == (40, 8) and wall > 0
