"""train.py --data-service: the flag's check, an unreachable dispatcher, runs through a dispatcher + two workers.

The servers are `python -m utils.input.service` subprocesses on free ports
(workers advertise 127.0.0.1), started together and stopped by the fixture.
The runs use test_cli's tiny backbone; --weights none, 2 steps an epoch.
"""
import json
import os
import socket
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT, free_ports, kill_9_when
from tests.input.test_service import start
from tests.train.test_cli import csv_rows, quick, run_main, run_two_workers, runner, shapes_dataset, tiny  # noqa: F401 - fixture
from tests.train.test_hard import write_losses


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return shapes_dataset(str(tmp_path_factory.mktemp("ds") / "shapes"), n_train=30, n_val=12)


@pytest.fixture(scope="module")
def service():
    """grpc://127.0.0.1:PORT of a dispatcher with two workers (all three started at once)."""
    port = free_ports()[0]
    procs = [start(["dispatcher", "--port", str(port)])]
    procs += [start(["worker", "--dispatcher", f"127.0.0.1:{port}", "--address", "127.0.0.1"]) for _ in range(2)]
    try:
        lines = [p.stdout.readline() for p in procs]  # each prints one line once it listens
        assert "dispatcher listening" in lines[0] and all("worker listening" in ln for ln in lines[1:]), lines
        yield f"grpc://127.0.0.1:{port}"
    finally:  # stopping on SIGTERM is tests/input/test_service.py's to check; here a graceful
        for p in procs:  # stop only waited (10-35 s seen) on the tasks of the runs' finished jobs
            p.kill()
        for p in procs:
            p.communicate(timeout=60)


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def test_malformed_data_service_is_one_line(tiny, data, capsys):
    for bad in ("localhost", "http://h:5050", "grpc://h:99999"):
        code, _, err = run_main(quick(data, "--data-service", bad), capsys)
        assert code == 2
        assert f"--data-service must be grpc://HOST:PORT (a tf.data service dispatcher), got {bad!r}" in \
            one_error_line(err)


def test_nothing_at_the_dispatcher_address_is_one_line_and_exit_2(tiny, data, capsys):
    port = free_ports()[0]
    t = time.monotonic()
    code, out, err = run_main(quick(data, "--epochs", "1", "--data-service", f"grpc://127.0.0.1:{port}"), capsys)
    assert code == 2 and time.monotonic() - t < 15
    assert one_error_line(err).startswith(f"error: no tf.data service dispatcher at 127.0.0.1:{port}")
    assert not os.path.exists("model_save") or not any(f.endswith(".h5") for f in os.listdir("model_save"))


@pytest.mark.slow
def test_a_silent_dispatcher_address_is_one_line_within_the_timeout(tiny, data, tmp_path):
    """A subprocess: its whole stderr is the one line (no TF chatter, no traceback), well before a hang."""
    with socket.socket() as s:  # accepts TCP, never answers gRPC
        s.bind(("127.0.0.1", 0))
        s.listen()
        t = time.monotonic()
        argv = quick(data, "--epochs", "1", "--data-service", f"grpc://127.0.0.1:{s.getsockname()[1]}")
        argv[argv.index("tinynet")] = "densenet121"  # never built: the check comes before the model
        env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
        env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # what a user's shell gives
        p = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), *argv], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=120)
        err = p.stderr
    assert p.returncode == 2
    assert "accepts connections but no tf.data service dispatcher answered within 15 s" in one_error_line(err)
    assert time.monotonic() - t < 90  # 15 s of check + the TensorFlow import of a loaded 2-core machine


@pytest.mark.slow
def test_train_through_the_service_saves_a_model(tiny, data, service, capsys):
    code, out, err = run_main(quick(data, "--epochs", "1", "--out", "model_save/s.h5", "--data-service", service),
                              capsys)
    assert code == 0, err
    assert sorted(os.listdir("model_save")) == ["s.best.h5", "s.best.keras", "s.config.yaml", "s.h5", "s.json",
                                                "s.keras"]
    assert out.strip().splitlines()[-1].startswith("val_accuracy ")  # validation ran, locally
    meta = json.load(open("model_save/s.json"))
    assert meta["history"]["iterations"] == 2 and meta["config"]["data_service"] == service


@pytest.mark.slow
def test_train_on_val_and_hard_examples_through_the_service(tiny, data, service, capsys):
    code, out, err = run_main(quick(data, "--epochs", "1", "--train-on-val", "--out", "model_save/v.h5",
                                    "--data-service", service), capsys)
    assert code == 0, err
    assert "no validation" in out and os.path.exists("model_save/v.h5")
    losses = write_losses("losses.csv", [(f"train0-{i}", 5.0 - i / 10) for i in range(15)] +
                          [(f"train1-{i}", 1.0 - i / 100) for i in range(15)])
    code, out, err = run_main(quick(data, "--epochs", "1", "--hard-examples", losses, "--out", "model_save/h.h5",
                                    "--data-service", service), capsys)
    assert code == 0, err
    assert "hard examples: 6 of 30 training records" in out and os.path.exists("model_save/h.h5")


@pytest.mark.slow
def test_resume_through_the_service_trains_the_remaining_steps(tiny, data, service, tmp_path, capsys):
    """Killed after epoch 1's state; --resume through the service: every epoch logged once, 3 x 6 steps in all."""
    from utils.train.checkpoint import load_state

    argv = quick(data, "--epochs", "3", "--steps-per-epoch", "6", "--out", "model_save/r.h5",
                 "--data-service", service)
    state = tmp_path / "model_save" / "r.resume"
    p = runner(argv, cwd=tmp_path)
    kill_9_when(state / "state.npz", p, timeout=200, poll=0.05)
    done = load_state(str(state))["run"]["epoch"]
    assert 1 <= done < 3
    code, out, err = run_main(argv + ["--resume"], capsys)
    assert code == 0, err
    assert f"resuming after epoch {done}" in err
    assert [r["epoch"] for r in csv_rows(tmp_path / "log" / "r" / "epochs.csv")] == ["0", "1", "2"]
    assert json.load(open(tmp_path / "model_save" / "r.json"))["history"]["iterations"] == 3 * 6
    assert not state.exists()


@pytest.mark.slow
def test_two_worker_multiworker_through_the_service(tiny, data, service, tmp_path):
    """MultiWorkerMirrored: each worker's input pipeline (its shard, its per-replica batch) is its own job."""
    run_two_workers(quick(data, "--epochs", "1", "--strategy", "multiworker", "--out", "model_save/mw.h5",
                          "--data-service", service), tmp_path)
    assert json.load(open(tmp_path / "w0" / "model_save" / "mw.json"))["history"]["iterations"] == 2
