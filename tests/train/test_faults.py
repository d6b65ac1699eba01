"""Long runs survive faults: the resumable input stream, mid-epoch checkpoints, SIGTERM /
SIGINT, kill -9 between checkpoints, one writer per output.

The runs that train go through subprocesses (a signal, a kill or a second process is
involved) with the tiny test backbone of test_cli.py, and are marked slow.
"""
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.conftest import ROOT, kill_9_when, wait_for
from tests.train.test_cli import data, quick, run_main, runner, shapes_dataset, tiny  # noqa: F401 - fixtures

# ----------------------------------------------------------------- the resumable input stream


def test_pass_length_mirrors_file_and_data_sharding():
    from utils.input.records import pass_length

    assert pass_length([7, 6], 1, 0) == (13, False)
    assert [pass_length([7, 6, 5], 2, i) for i in range(2)] == [(12, True), (6, True)]
    by_data = [pass_length([7, 6], 3, i) for i in range(3)]
    assert by_data == [(5, False), (4, False), (4, False)] and sum(n for n, _ in by_data) == 13


def stream_ids(d, skip, n, **kw):
    from utils.input.pipeline import make_dataset

    ds = make_dataset(d, "train", image_size=8, batch_size=1, training=True, repeat=True, seed=3, skip=skip,
                      with_ids=True, shuffle_buffer=4, **kw)
    return [x[2].numpy()[0].decode() for _, x in zip(range(n), ds)]


@pytest.mark.parametrize("cache", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_resumed_stream_neither_repeats_nor_skips(tmp_path, cache):
    import keras

    keras.utils.set_random_seed(0)  # as train.py does; a global seed 0 once broke per-pass seeds
    d = shapes_dataset(str(tmp_path / "s"), n_train=15)  # 2 train shards: 8 + 7 records
    full = stream_ids(d, 0, 33, cache=cache)
    first, second = full[:15], full[15:30]
    assert sorted(first) == sorted(second) == sorted(set(first)) and first != second  # passes: new orders
    for k in (4, 19):  # inside pass 0, inside pass 1 (skipping pass 0 unread)
        assert stream_ids(d, k, 33 - k, cache=cache) == full[k:], k


def test_skip_records_counts_the_replicas_a_pipeline_feeds():
    import tensorflow as tf

    from utils.train.data import skip_records

    assert skip_records(5, 8, None) == 40
    ctx = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=1, num_replicas_in_sync=4)
    assert skip_records(5, 8, ctx) == 80  # 2 replicas per pipeline, 8 records each per step


def test_skip_needs_a_seeded_repeating_training_stream(tmp_path):
    from utils.errors import UsageError
    from utils.input.pipeline import make_dataset

    d = shapes_dataset(str(tmp_path / "s"), n_train=6)
    with pytest.raises(UsageError, match="needs training=True, repeat=True and an int seed"):
        make_dataset(d, "train", image_size=8, batch_size=2, training=True, repeat=True, seed=None, skip=0)


# ----------------------------------------------------------------- state, signals, lock (in process)


def test_state_keeps_the_dropout_rng_and_the_step(tmp_path):
    import keras

    from utils.train.checkpoint import Checkpoint, load_state, restore_model, rng_variables

    def net():
        inp = keras.Input((4,))
        return keras.Model(inp, keras.layers.Dense(2)(keras.layers.Dropout(0.5, seed=1)(inp)))

    model = net()
    model.compile(optimizer="sgd", loss="mse")
    model.fit(np.ones((4, 4)), np.ones((4, 2)), epochs=1, verbose=0)
    state = rng_variables(model)
    assert state and not any(v is w for v in state for w in model.weights)
    ckpt = Checkpoint(str(tmp_path / "r.resume"), str(tmp_path / "e.csv"), {"resume": True})
    ckpt.save_step(3, model, model.optimizer)
    saved = load_state(str(tmp_path / "r.resume"))
    assert saved["run"]["step"] == 3 and saved["run"]["iterations"] == 1
    other = net()
    restore_model(other, saved)
    assert [np.asarray(v.numpy()).tolist() for v in rng_variables(other)] == \
        [np.asarray(v.numpy()).tolist() for v in state]


def test_first_signal_is_a_request_and_handlers_come_back():
    from utils.train.interrupt import catch_signals

    before = signal.getsignal(signal.SIGINT)
    with catch_signals() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGINT)  # no KeyboardInterrupt: only a request
        deadline = time.time() + 5
        while not stop.requested and time.time() < deadline:
            time.sleep(0.01)
        assert stop.requested and stop.code == 130
    assert signal.getsignal(signal.SIGINT) is before


def test_second_signal_exits_at_once(tmp_path):
    code = (f"import os, signal, sys, time; sys.path.insert(0, {ROOT!r}); "
            "from utils.train.interrupt import catch_signals\n"
            "with catch_signals():\n"
            "    os.kill(os.getpid(), signal.SIGTERM); time.sleep(0.3); os.kill(os.getpid(), signal.SIGTERM)\n"
            "    time.sleep(60)\n")
    t = time.time()
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=50)
    assert p.returncode == 143 and time.time() - t < 30
    assert "SIGTERM again: exiting now without saving" in p.stderr


def test_bad_checkpoint_every_is_one_line(tiny, data, capsys):
    code, _, err = run_main(quick(data, "--checkpoint-every", "-1"), capsys)
    assert code == 2 and err.strip() == "error: --checkpoint-every must be >= 0, got -1"


def test_locked_output_is_refused_having_touched_nothing(tiny, data, capsys, tmp_path):
    from utils.train.checkpoint import run_lock

    os.makedirs("log/busy")
    os.makedirs("model_save")
    (tmp_path / "model_save" / "busy.h5").write_bytes(b"theirs")
    with run_lock("log/busy", "model_save/busy"):
        before = {p: os.stat(os.path.join(dp, p)).st_mtime_ns for dp in ("log/busy", "model_save")
                  for p in os.listdir(dp)}
        code, out, err = run_main(quick(data, "--out", "model_save/busy.h5"), capsys)
        # (read while still held: the holder's own clean exit empties its lock file)
        after = {p: os.stat(os.path.join(dp, p)).st_mtime_ns for dp in ("log/busy", "model_save")
                 for p in os.listdir(dp)}
    assert code == 2
    assert err.strip() == (f"error: model_save/busy is being written by another run (pid {os.getpid()}); "
                           "wait for it or choose another --out")
    assert after == before  # the lock file (written by the holder) and their model untouched, nothing new


# ----------------------------------------------------------------- subprocess runs

STEPS, EPOCHS = 12, 2


def argv_for(data, out, *extra):
    return quick(data, "--epochs", str(EPOCHS), "--steps-per-epoch", str(STEPS), "--augment", "none",
                 "--lr", "0.05", "--out", f"model_save/{out}.h5", *extra)


def final_weights(path):
    import keras

    import model  # noqa: F401 - our layers, for load_model

    return keras.models.load_model(path).get_weights()


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """The uninterrupted run (own process, like the interrupted ones): weights, iterations, CSV epochs."""
    cwd = tmp_path_factory.mktemp("ref")
    p = runner(argv_for(data, "ref"), cwd=cwd)
    out, err = p.communicate(timeout=400)
    assert p.returncode == 0, err[-2000:]
    meta = json.load(open(cwd / "model_save" / "ref.json"))
    return final_weights(str(cwd / "model_save" / "ref.h5")), meta["history"]["iterations"]


def saved_run(state_dir):
    from utils.train.checkpoint import load_state

    s = load_state(str(state_dir))
    return s and s["run"]


def resume_and_compare(data, cwd, name, reference, extra=()):
    p = runner(argv_for(data, name, *extra) + ["--resume"], cwd=cwd)
    out, err = p.communicate(timeout=400)
    assert p.returncode == 0, err[-2000:]
    want, iterations = reference
    got = final_weights(str(cwd / "model_save" / f"{name}.h5"))
    assert json.load(open(cwd / "model_save" / f"{name}.json"))["history"]["iterations"] == iterations == EPOCHS * STEPS
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    with open(cwd / "log" / name / "epochs.csv") as f:
        assert [r.split(",")[0] for r in f.read().splitlines()[1:]] == [str(e) for e in range(EPOCHS)]
    assert not (cwd / "model_save" / f"{name}.resume").exists()
    return err


@pytest.mark.slow
def test_sigterm_mid_epoch_saves_then_resume_equals_uninterrupted(data, tmp_path, reference):
    state = tmp_path / "model_save" / "t.resume"
    # --checkpoint-every 1 only to see that training is under way before the signal
    p = runner(argv_for(data, "t", "--checkpoint-every", "1"), cwd=tmp_path)
    wait_for(lambda: (state / "state.npz").exists(), p, timeout=200)
    sent = time.time()
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 143 and time.time() - sent < 30, err[-2000:]
    m = re.search(r"^interrupted: saved epoch (\d+) step (\d+) to model_save/t\.resume/ \(continue with --resume\)$",
                  err, re.M)
    assert m, err[-2000:]
    epoch, step = int(m[1]), int(m[2])
    run = saved_run(state)
    assert (run["epoch"] + 1, run["step"]) == (epoch, step) and run["iterations"] == (epoch - 1) * STEPS + step
    assert not (tmp_path / "model_save" / "t.h5").exists()
    err = resume_and_compare(data, tmp_path, "t", reference, ["--checkpoint-every", "1"])
    assert f"resuming at epoch {epoch}, step {step}" in err


@pytest.mark.slow
def test_kill_9_between_checkpoints_loses_only_the_steps_since_the_last(data, tmp_path, reference):
    state = tmp_path / "model_save" / "k.resume"
    every = 5
    p = runner(argv_for(data, "k", "--checkpoint-every", str(every)), cwd=tmp_path)
    kill_9_when(state / "state.npz", p, timeout=200)
    run = saved_run(state)
    done = run["epoch"] * STEPS + run["step"]
    assert run["iterations"] == done and (run["step"] == 0 or done % every == 0)
    err = resume_and_compare(data, tmp_path, "k", reference, ["--checkpoint-every", str(every)])
    assert f"resuming at epoch {run['epoch'] + 1}, step {run['step']}" in err


@pytest.mark.slow
def test_two_runs_on_one_out_exactly_one_trains(tiny, data, tmp_path, capsys):
    # The first run must still be training when the second reaches the lock (a 6-step first run
    # finished first on a fast CI machine and the second trained too): give it many epochs,
    # then stop it with SIGTERM once the second has been refused.
    argv = quick(data, "--epochs", "500", "--steps-per-epoch", "6", "--out", "model_save/c.h5")
    first = runner(argv, cwd=tmp_path)
    lock = tmp_path / "log" / "c" / "train.lock"
    wait_for(lambda: lock.exists() and lock.read_text().strip() == str(first.pid), first, timeout=200)
    # the second run is this test's process (cwd tmp_path: the `tiny` fixture): no second TensorFlow import
    code2, out2, err2 = run_main(argv, capsys)
    assert first.poll() is None, "the first run ended before the second was refused"
    first.send_signal(signal.SIGTERM)
    out1, err1 = first.communicate(timeout=200)
    assert first.returncode == 143, err1[-2000:]
    assert re.search(r"^interrupted: saved epoch \d+ step \d+ to model_save/c\.resume/", err1, re.M), err1[-2000:]
    assert code2 == 2 and err2.strip().splitlines() == [
        f"error: model_save/c is being written by another run (pid {first.pid}); wait for it or choose another --out"]
    assert out2 == "" and not (tmp_path / "model_save" / "c.h5").exists()


@pytest.mark.slow
def test_multiworker_sigterm_to_one_worker_stops_both_and_the_chief_saves(data, tmp_path):
    from tests.train.test_cli import start_two_workers

    procs = start_two_workers(argv_for(data, "mw", "--strategy", "multiworker", "--checkpoint-every", "1"), tmp_path)
    state = tmp_path / "w0" / "model_save" / "mw.resume"
    wait_for(lambda: (state / "state.npz").exists(), procs[0], timeout=400)
    procs[1].send_signal(signal.SIGTERM)  # the non-chief only: the chief must stop at the same step
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [143, 143], outs[0][1][-1500:] + outs[1][1][-1500:]
    m = re.search(r"^interrupted: saved epoch (\d+) step (\d+) to model_save/mw\.resume/", outs[0][1], re.M)
    assert m and "interrupted:" not in outs[1][1]
    run = saved_run(state)
    assert (run["epoch"] + 1, run["step"]) == (int(m[1]), int(m[2]))
    assert run["iterations"] == run["epoch"] * STEPS + run["step"]
    assert not (tmp_path / "w1" / "model_save").exists()  # only the chief writes


# ----------------------------------------------------------------- a chief that cannot read its state

UNREADABLE = "/proc/self/mem"  # a regular file whose read at offset 0 fails with EIO, even for root


def unreadable_state(resume_dir) -> str:
    """resume_dir/state.npz as a link to a file whose read is an I/O error; returns the state path."""
    os.makedirs(resume_dir, exist_ok=True)
    path = os.path.join(resume_dir, "state.npz")
    os.symlink(UNREADABLE, path)
    return path


def test_a_state_that_cannot_be_read_is_one_line_and_reaches_share(tmp_path):
    import tensorflow as tf

    from utils.errors import UsageError
    from utils.train import distribute
    from utils.train.checkpoint import Checkpoint

    folder = str(tmp_path / "r.resume")
    path = unreadable_state(folder)
    want = (f"cannot read the resume state {path}: Input/output error: restore it, delete the .resume folder "
            "or drop --resume")
    with pytest.raises(UsageError) as alone:
        Checkpoint(folder, str(tmp_path / "e.csv"), {"resume": True}).load()
    assert str(alone.value) == want
    # with share (multi-worker), the chief hands the error on instead of raising before the collective
    seen = []
    with pytest.raises(UsageError) as shared:
        Checkpoint(folder, str(tmp_path / "e.csv"), {"resume": True}).load(
            share=lambda raw: seen.append(raw) or distribute.from_chief(tf.distribute.get_strategy(), raw))
    assert len(seen) == 1 and seen[0] is shared.value and str(shared.value) == want


@pytest.mark.parametrize("damage", ["truncated", "not a zip", "no run entry"])
def test_a_corrupt_state_is_one_line_not_a_traceback(tmp_path, damage):
    import io

    import numpy as np

    from utils.errors import UsageError
    from utils.train.checkpoint import Checkpoint, STATE_FILE

    folder = tmp_path / "r.resume"
    folder.mkdir()
    buf = io.BytesIO()
    arrays = {"m00000": np.zeros(3)} if damage == "no run entry" else {"run": np.array("{}"), "m00000": np.zeros(3)}
    np.savez(buf, **arrays)
    raw = {"truncated": buf.getvalue()[:-40], "not a zip": b"garbage" * 10, "no run entry": buf.getvalue()}[damage]
    (folder / STATE_FILE).write_bytes(raw)
    with pytest.raises(UsageError) as e:
        Checkpoint(str(folder), str(tmp_path / "e.csv"), {"resume": True}).load()
    msg = str(e.value)
    assert msg.startswith(f"the resume state {folder / STATE_FILE} is corrupt (")
    assert msg.endswith("): delete the .resume folder or drop --resume") and "\n" not in msg


def kill_survivors(procs) -> None:
    """Kill whichever of `procs` still runs, and reap them all: whatever happened, no worker outlives the test."""
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


@pytest.mark.slow  # two workers forming a cluster: ~20-40 s here
def test_multiworker_resume_from_an_unreadable_chief_state_stops_every_worker(data, tmp_path):
    """Before the fix the chief died with its error and the other worker waited in the collective forever."""
    from tests.train.test_cli import start_two_workers

    unreadable_state(tmp_path / "w0" / "model_save" / "mw.resume")  # the chief's folder; the other has none
    procs = start_two_workers(argv_for(data, "mw", "--strategy", "multiworker", "--resume"), tmp_path)
    try:
        outs = [p.communicate(timeout=240) for p in procs]
    except subprocess.TimeoutExpired:
        outs = None
    finally:
        kill_survivors(procs)
    assert outs is not None, "a worker was still running after 240 s (waiting in the collective)"
    line = ("cannot read the resume state model_save/mw.resume/state.npz: Input/output error: restore it, "
            "delete the .resume folder or drop --resume")
    assert [p.returncode for p in procs] == [2, 2], outs[0][1][-1500:] + outs[1][1][-1500:]
    assert outs[0][1].strip().splitlines()[-1] == f"error: {line}"
    assert outs[1][1].strip().splitlines()[-1] == f"error: on the chief: {line}"
    assert not (tmp_path / "w1" / "model_save").exists()


TWO_CHIEFS = """
import sys
sys.path.insert(0, {root!r})
from utils.errors import UsageError
from utils.train import distribute
strategy = distribute.make_strategy("multiworker")
distribute.is_chief = lambda cluster_config=None: True  # a TF_CONFIG that makes every worker the chief
try:
    distribute.from_chief(strategy, b"mine")
except UsageError as e:
    print(e)
"""


@pytest.mark.slow  # two processes forming a cluster: ~10-30 s here
def test_from_chief_refuses_two_chiefs_on_every_worker():
    """Two senders would sum their bytes into garbage: both workers get the same line instead."""
    from tests.train.test_cli import worker_tf_configs

    procs = [subprocess.Popen([sys.executable, "-c", TWO_CHIEFS.format(root=ROOT)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True,
                              env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="", TF_CONFIG=c))
             for c in worker_tf_configs(2)]
    try:
        outs = [p.communicate(timeout=200) for p in procs]
    finally:
        kill_survivors(procs)
    assert [p.returncode for p in procs] == [0, 0], outs[0][1][-1500:] + outs[1][1][-1500:]
    want = ("TF_CONFIG makes 2 workers the chief: exactly one must be (task 'chief', or worker 0 when the "
            "cluster has none)")
    assert [out.strip().splitlines()[-1] for out, _ in outs] == [want, want]
