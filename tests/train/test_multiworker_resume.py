"""--resume under MultiWorkerMirroredStrategy, two workers on 127.0.0.1: only the chief has the
resume state (the other's folders are throw-away temp dirs, as on a cluster without shared
storage); on --resume it reaches the other worker through the strategy's collectives, so both
start from exactly the chief's weights, optimizer and position and end where an uninterrupted
two-worker run ends.

Each worker runs train.py's main through RESULT_RUNNER, which also dumps, in the worker's own
folder, what it resumed from (resumed.npz: the model weights once the optimizer state is back,
its iterations, epoch and step) and where it ended (result.npz): a non-chief writes nothing else.
"""
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import ROOT
from tests.train.test_cli import data, worker_tf_configs  # noqa: F401 - fixture
from tests.train.test_faults import EPOCHS, STEPS, argv_for, wait_for

pytestmark = pytest.mark.slow  # each two-worker run takes ~20-40 s here

RESULT_RUNNER = """
import json, sys
sys.path.insert(0, {root!r})
from tests.train.test_cli import register_tiny
register_tiny()
import numpy as np
from utils.train import checkpoint, loop

def dump(path, model, run, optimizer):
    trainable = set(id(v) for v in model.trainable_weights)
    np.savez(path, *[np.asarray(w) for w in model.get_weights()], epoch=run["epoch"], step=run["step"],
             iterations=int(optimizer.iterations.numpy()), trainable=[id(v) in trainable for v in model.weights])

restore_phase_optimizer = checkpoint.Checkpoint.restore_phase_optimizer
def restored(self, name, model, optimizer):
    restore_phase_optimizer(self, name, model, optimizer)
    if self.saved:
        dump("resumed.npz", model, self.run, optimizer)
checkpoint.Checkpoint.restore_phase_optimizer = restored

run = loop.run
def finished(cfg):
    out = run(cfg)
    dump("result.npz", out["model"], out["run"], out["model"].optimizer)
    return out
loop.run = finished

import train
from utils.errors import run_cli
sys.exit(run_cli(train.main))
"""


def start_workers(argv, dirs) -> list:
    """train.py `argv` (through RESULT_RUNNER) as a two-worker cluster on 127.0.0.1, worker i in dirs[i]
    (dirs[0] is the chief; kept between runs, so a --resume finds the chief's state there)."""
    procs = []
    for cwd, tf_config in zip(dirs, worker_tf_configs(len(dirs))):
        os.makedirs(cwd / "tmp", exist_ok=True)  # the non-chief's throw-away dirs land here, not in /tmp
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="", PYTHONUNBUFFERED="1",
                   TF_CONFIG=tf_config, TMPDIR=str(cwd / "tmp"))
        procs.append(subprocess.Popen([sys.executable, "-c", RESULT_RUNNER.format(root=ROOT), *argv], cwd=cwd,
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


def finish(procs, codes=(0, 0)) -> list[str]:
    outs = [p.communicate(timeout=400) for p in procs]
    assert [p.returncode for p in procs] == list(codes), outs[0][1][-1500:] + outs[1][1][-1500:]
    return [err for _, err in outs]


def dumped(path):
    """(weights, {epoch, step, iterations}, which weights are trainable) of a RESULT_RUNNER dump."""
    with np.load(path) as z:
        n = sum(k.startswith("arr_") for k in z.files)
        return ([z[f"arr_{i}"] for i in range(n)], {k: int(z[k]) for k in ("epoch", "step", "iterations")},
                z["trainable"])


def argv(data, *extra):
    # --checkpoint-every 1 only to see that training is under way before the signal (and a
    # resume takes the interrupted run's flags)
    return argv_for(data, "mw", "--strategy", "multiworker", "--checkpoint-every", "1", *extra)


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory):
    """The final weights and position of an uninterrupted two-worker run (the chief's)."""
    root = tmp_path_factory.mktemp("mwref")
    dirs = [root / "w0", root / "w1"]
    finish(start_workers(argv(data), dirs))
    return dumped(dirs[0] / "result.npz")


def interrupt(data, dirs):
    """Train with a checkpoint every step, SIGTERM both workers once the chief has one; the chief's saved state."""
    from utils.train.checkpoint import load_state

    state = dirs[0] / "model_save" / "mw.resume"
    procs = start_workers(argv(data), dirs)
    wait_for(lambda: (state / "state.npz").exists(), procs[0], timeout=400)
    for p in procs:
        p.send_signal(signal.SIGTERM)
    errs = finish(procs, (143, 143))
    m = re.search(r"^interrupted: saved epoch (\d+) step (\d+) to model_save/mw\.resume/", errs[0], re.M)
    assert m and "interrupted:" not in errs[1], errs[0][-1500:]
    saved = load_state(str(state))
    assert (saved["run"]["epoch"] + 1, saved["run"]["step"]) == (int(m[1]), int(m[2]))
    assert not (dirs[1] / "model_save").exists()  # only the chief has a state
    return saved


def test_sigterm_then_resume_both_workers_from_the_chiefs_state(data, tmp_path, uninterrupted):
    dirs = [tmp_path / "w0", tmp_path / "w1"]
    saved = interrupt(data, dirs)
    run = saved["run"]
    assert run["iterations"] == run["epoch"] * STEPS + run["step"]

    errs = finish(start_workers(argv(data, "--resume"), dirs))
    assert f"resuming at epoch {run['epoch'] + 1}, step {run['step']}" in errs[0]
    assert "resuming" not in errs[1] and "no resume state" not in errs[1]
    # both workers started from exactly the chief's saved state
    for d in dirs:
        weights, pos, _ = dumped(d / "resumed.npz")
        assert pos == {"epoch": run["epoch"], "step": run["step"], "iterations": run["iterations"]}, d
        assert len(weights) == len(saved["model"])
        for w, s in zip(weights, saved["model"]):
            np.testing.assert_array_equal(w, s)
    # and ended together, the chief's model where the uninterrupted run's ends
    (w0, end0, trainable), (w1, end1, _) = dumped(dirs[0] / "result.npz"), dumped(dirs[1] / "result.npz")
    want, want_end, _ = uninterrupted
    assert end0 == end1 == want_end == {"epoch": EPOCHS, "step": 0, "iterations": EPOCHS * STEPS}
    assert len(w0) == len(w1) == len(want) and trainable.any() and not trainable.all()
    for a, b, w, t in zip(w0, w1, want, trainable):
        np.testing.assert_allclose(a, w, rtol=1e-5, atol=1e-6)
        if t:  # BatchNorm's moving statistics are each worker's own (Keras does not all-reduce them)
            np.testing.assert_array_equal(a, b)
    assert (dirs[0] / "model_save" / "mw.h5").exists() and not (dirs[0] / "model_save" / "mw.resume").exists()
    assert not (dirs[1] / "model_save").exists() and not (dirs[1] / "log").exists()
    assert os.listdir(dirs[1] / "tmp") == []  # its throw-away dirs went
