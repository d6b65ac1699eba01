"""utils/input/service.py: the address check, the bounded dispatcher check, a split through two workers, the CLI.

The servers are TensorFlow's own (DispatchServer, WorkerServer), on free ports;
workers advertise 127.0.0.1. TF binds its servers on every interface and has no
option to bind one, so the ports are picked free and the servers stopped at once.
"""
import collections
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from tests.conftest import ROOT, free_ports
from tests.train.test_cli import shapes_dataset
from utils.errors import UsageError, run_cli
from utils.input import service


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return shapes_dataset(str(tmp_path_factory.mktemp("ds") / "shapes"), n_train=30, n_val=12)


TEARDOWN_GRACE_S = 2.0


@pytest.fixture(scope="module")
def dispatcher():
    """grpc://127.0.0.1:PORT of an in-process dispatcher with two in-process workers."""
    d = service.start_dispatcher(0)
    port = int(d.target.rsplit(":", 1)[1])
    workers = [service.start_worker(f"127.0.0.1:{port}", 0, "127.0.0.1") for _ in range(2)]
    yield f"grpc://127.0.0.1:{port}"
    # stop() may wait on tasks of jobs still open in this process (11-115 s seen under load).
    # The tests are done and stopping is not what they check (the CLI's bounded stop,
    # service.STOP_TIMEOUT, is test_cli_servers_print_where_they_listen_and_stop_on_sigterm's):
    # a short grace, the rest finishes in the background (daemon thread; CI saw 10-52 s here)
    service._in_thread(lambda: [s.stop() for s in (*workers, d)], TEARDOWN_GRACE_S)


def split_ids(data, split):
    from utils.dataset.manifest import load_manifest, select_shards
    from utils.input.sampling import source_ids

    return source_ids([s["path"] for s in select_shards(load_manifest(data), data, split, None)])


def ids_through(ds, dispatcher):
    out = service.through_service(ds, dispatcher, timeout=10)
    return [i.decode() for _, _, ids in out.as_numpy_iterator() for i in ids]


def test_parse_address():
    assert service.parse_address("grpc://10.0.0.5:5050") == ("grpc", "10.0.0.5", 5050)
    assert service.parse_address("cpu-box.local:80") == ("grpc", "cpu-box.local", 80)
    assert service.parse_address("grpc://[::1]:5050") == ("grpc", "[::1]", 5050)
    for bad in ("grpc://host", "http://host:5050", "host:0", "host:70000", "grpc://:5050", "a b:1", ""):
        with pytest.raises(UsageError, match="must be grpc://HOST:PORT"):
            service.parse_address(bad)


def test_one_epoch_through_two_workers_gives_each_record_once(data, dispatcher):
    from utils.input.pipeline import make_dataset

    ds = make_dataset(data, "train", image_size=32, batch_size=4, training=True, augment="flip,rrc",
                      seed=0, with_ids=True)
    ids = ids_through(ds, dispatcher)
    expected = split_ids(data, "train")
    assert len(expected) == 30
    assert collections.Counter(ids) == collections.Counter(expected)  # each of the 30 once
    assert sorted(ids) == sorted(expected)


@pytest.mark.slow
def test_each_input_pipeline_reads_its_own_shard_through_the_service(data, dispatcher):
    """Under a strategy (an InputContext), each pipeline's job covers its share; together all, once."""
    import tensorflow as tf

    from utils.input.pipeline import make_dataset

    got = []
    for i in range(2):
        ctx = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=i, num_replicas_in_sync=2)
        ds = make_dataset(data, "train", image_size=32, batch_size=ctx.get_per_replica_batch_size(8),
                          training=True, seed=0, with_ids=True, input_context=ctx)
        got.append(ids_through(ds, dispatcher))
    assert [len(g) for g in got] == [15, 15]
    assert not set(got[0]) & set(got[1])
    assert sorted(got[0] + got[1]) == sorted(split_ids(data, "train"))


@pytest.fixture(scope="module")
def with_bad_images(tmp_path_factory):
    """2 train shards of 6 shape records, 3 of them (2 + 1) with image bytes that do not decode."""
    import numpy as np

    from tests.conftest import write_dataset
    from tests.train.test_cli import shape_record
    from utils.dataset import schema

    rng = np.random.default_rng(0)
    bad = [schema.serialize([b"\xff\xd8\xffnot a jpeg " + bytes([i])], "jpeg", 32, 32, 3, [0], f"bad{i}")
           for i in range(3)]
    shards = [[shape_record(i % 3, rng, f"s{s}-{i}") for i in range(6)] for s in range(2)]
    shards[0][1:1], shards[1][4:4] = bad[:2], bad[2:]
    return write_dataset(str(tmp_path_factory.mktemp("bad") / "bad"), {"train": shards},
                         class_names=["red", "green", "blue"])


def test_decode_failures_are_skipped_on_the_workers_and_not_counted_here(with_bad_images, dispatcher):
    """The workers skip the undecodable records (each good one arrives once); their count stays on the
    workers (README, tf.data service: why). Should it one day reach decode_failures(), the README line,
    the --data-service help and this test change together."""
    from utils.input import records
    from utils.input.pipeline import make_dataset

    for training in (False, True):
        ds = make_dataset(with_bad_images, "train", image_size=32, batch_size=4, training=training, seed=0,
                          with_ids=True)
        before = records.decode_failures()  # process-wide: other tests' datasets count too
        ids = ids_through(ds, dispatcher)
        assert sorted(ids) == sorted(f"s{s}-{i}" for s in range(2) for i in range(6)), training  # each good one once
        assert records.decode_failures() - before == 0, training  # the workers' 3 skips stay there


@pytest.mark.slow
def test_hard_examples_draw_at_their_rate_through_the_service(data, dispatcher):
    from utils.input.pipeline import make_dataset
    from utils.input.sampling import mixer

    hard = {"train0-0", "train0-1", "train1-0"}
    ds = make_dataset(data, "train", image_size=32, batch_size=10, training=True, seed=0, with_ids=True,
                      repeat=True, records_fn=mixer(hard, 0.5, seed=0))
    # take() before the service runs on each worker: 2 workers x 15 batches of 10, and the job ends
    ids = ids_through(ds.take(15), dispatcher)
    assert len(ids) == 300
    share = sum(i in hard for i in ids) / len(ids)
    assert 0.4 < share < 0.6, share  # p_hard 0.5; without the mixer 3/30 = 0.1


def test_nothing_listening_is_one_line_at_once():
    port = free_ports()[0]
    t = time.monotonic()
    with pytest.raises(UsageError, match=f"no tf.data service dispatcher at 127.0.0.1:{port}"):
        service.check_dispatcher(f"grpc://127.0.0.1:{port}", timeout=10)
    assert time.monotonic() - t < 5


def test_a_silent_listener_is_one_line_within_the_timeout():
    with socket.socket() as s:  # accepts TCP connections, never answers gRPC
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        t = time.monotonic()
        with pytest.raises(UsageError, match="no tf.data service dispatcher answered within 2 s"):
            service.check_dispatcher(f"grpc://127.0.0.1:{port}", timeout=2)
        assert 1.5 < time.monotonic() - t < 6


def test_cli_help_and_bad_flags(capsys):
    for argv, flags in ((["--help"], ["dispatcher", "worker"]), (["dispatcher", "--help"], ["--port", "--work-dir"]),
                        (["worker", "--help"], ["--dispatcher", "--port", "--address"])):
        with pytest.raises(SystemExit) as e:
            service.main(argv)
        assert e.value.code == 0
        out = capsys.readouterr().out
        assert all(f in out for f in flags), out
    for argv in (["dispatcher"], ["worker", "--dispatcher", "nohostport"], ["dispatcher", "--port", "70000"],
                 ["router"]):
        assert run_cli(service.main, argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: "), err


def start(argv):
    """`python -m utils.input.service ARGV`; stderr to a file (a pipe nobody reads could fill and block it)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="", PYTHONUNBUFFERED="1")
    log = tempfile.TemporaryFile(mode="w+")
    p = subprocess.Popen([sys.executable, "-m", "utils.input.service", *argv], cwd=ROOT, env=env,
                         stdout=subprocess.PIPE, stderr=log, text=True)
    p.log = log
    return p


def stop(procs, strict: bool = True) -> list[str]:
    """SIGTERM to all, then their stdout; asserts each exited 0 (else shows its stderr's tail).

    strict=False (a fixture whose servers are not what its tests check): a server still
    running 60 s after SIGTERM is killed instead of failing the teardown.
    """
    for p in procs[::-1]:
        p.send_signal(signal.SIGTERM)
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=60)[0])
        except subprocess.TimeoutExpired:
            if strict:
                raise
            p.kill()
            outs.append(p.communicate()[0])
    if not strict:
        return outs
    for p in procs:
        p.log.seek(0)
        assert p.returncode == 0, (p.args, p.returncode, p.log.read()[-1500:])
    return outs


@pytest.mark.slow
def test_cli_servers_print_where_they_listen_and_stop_on_sigterm(data):
    from utils.input.pipeline import make_dataset

    port = free_ports()[0]
    d = start(["dispatcher", "--port", str(port)])
    procs = [d]
    try:  # all three started at once (the workers wait for the dispatcher): their TensorFlow imports overlap
        procs += [start(["worker", "--dispatcher", f"127.0.0.1:{port}", "--address", "127.0.0.1"]) for _ in range(2)]
        assert f"dispatcher listening on port {port}" in d.stdout.readline()
        lines = [p.stdout.readline() for p in procs[1:]]
        assert all("worker listening on port" in ln and f"127.0.0.1:{port}" in ln for ln in lines), lines
        ds = make_dataset(data, "val", image_size=32, batch_size=5, training=False, with_ids=True)
        assert sorted(ids_through(ds, f"grpc://127.0.0.1:{port}")) == sorted(split_ids(data, "val"))
    finally:
        outs = stop(procs)
    assert all(o.strip().splitlines()[-1].startswith("stopped (SIGTERM") for o in outs), outs


def test_a_dispatcher_without_workers_is_one_line_within_the_timeout():
    d = service.start_dispatcher(0)
    try:
        t = time.monotonic()
        with pytest.raises(UsageError, match="has no worker this machine can read from .none answered within 3 s"):
            service.check_dispatcher(d.target.replace("localhost", "127.0.0.1"), timeout=3)
        assert 2.5 < time.monotonic() - t < 7
    finally:
        d.stop()
