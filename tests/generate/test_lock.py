"""One writer per dataset: two generate_dataset.py runs on one --out, as a user would start them.

The source is a URL list served by tests/gated_server.py, so the run that took
the lock is still writing when the other one starts: no luck of timing either way.
"""
from __future__ import annotations

import os
import sys

import pytest

from tests.conftest import ROOT
from tests.gated_server import (gated_server, open_gate, race, third_run_is_refused,  # noqa: F401  (a fixture)
                                url_list, wait_for_requests)
from utils.files import LockedError
from utils.generate.outdir import LOCK, lock_out_dir

SCRIPT = os.path.join(ROOT, "generate_dataset.py")


@pytest.mark.slow   # two subprocess builds and a verify (TensorFlow)
def test_two_runs_at_once_one_builds_the_other_is_refused_untouched(gated_server, tmp_path):
    from utils.generate.verify import verify_dataset

    lst = url_list(tmp_path / "list.csv", 6, gated_server.base)
    out = tmp_path / "data" / "pets"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    cmd = [sys.executable, SCRIPT, lst, "--out", str(out), "--no-progress"]
    winner, loser = race(cmd, env, ROOT, timeout=60)   # the loser exits at once; the winner waits for the gate
    # all 6 fetches in flight (the downloader runs 16 at once): the winner's cache is still from here on
    assert wait_for_requests(gated_server, 6, 60), "the winner never started all its downloads"
    line = f"error: {out} is being written by another run (pid {winner.pid}); wait for it or choose another --out"
    err = loser.stderr.read()
    assert loser.returncode == 2, err
    assert err.strip().splitlines() == [line]
    third_run_is_refused(cmd, env, ROOT, out, line, winner, timeout=60)   # while the winner still writes
    open_gate(gated_server, winner)
    assert verify_dataset(str(out), progress=False) == []
    assert (out / LOCK).exists()           # left in place; listed nowhere
    assert LOCK not in (out / "manifest.json").read_text()


def test_the_lock_file_does_not_count_as_a_dataset_file(tmp_path):
    """A held-then-released lock leaves .lock behind: the folder is still 'fresh' for a build."""
    from utils.generate import outdir

    out = tmp_path / "o"
    with lock_out_dir(str(out)):
        with pytest.raises(LockedError, match=rf"^{out} is being written by another run \(pid {os.getpid()}\)"):
            with lock_out_dir(str(out)):
                pass
    assert os.listdir(out) == [LOCK]
    assert outdir.check_out_dir(str(out), {"name": "o", "source": {}}, overwrite=False) == "fresh"
    assert os.listdir(out) == [LOCK]       # remove_ours left it alone
