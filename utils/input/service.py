"""tf.data service: start TensorFlow's own dispatcher / worker servers, and send a dataset through them.

    python -m utils.input.service dispatcher --port 5050 [--work-dir DIR]
    python -m utils.input.service worker --dispatcher HOST:5050 [--port 5051] [--address HOST]
    python train.py ... --data-service grpc://HOST:5050

The servers are tf.data.experimental.service.DispatchServer / WorkerServer; this
module only parses flags, prints where they listen and stops them on SIGTERM /
SIGINT. `through_service` is what the training side calls: the dataset built so
far (read, decode, augment, batch) runs on the workers, `processing_mode=
"distributed_epoch"` (the dispatcher hands out the source's splits, here the
shard files, so each record is read once per pass across all workers), and the
trainer receives finished batches.

Why the bounded check: against an address where no dispatcher answers,
registering a dataset retries in TensorFlow's C++ for a long time, and with no
reachable worker reading waits forever (a hang from the user's view).
`check_dispatcher` opens a TCP connection, registers a one-element dataset and
reads it back (the last two in a helper thread), all within `timeout` seconds,
and says in one line what failed.
"""
from __future__ import annotations

import os
import re
import signal
import socket
import sys
import threading
import time

from utils.errors import OneLineParser, UsageError, first_line, import_tensorflow_quietly, run_cli

PROCESSING_MODE = "distributed_epoch"
STOP_TIMEOUT = 10.0  # seconds a stopping server may take before the process exits anyway
_URL = re.compile(r"^(?:(?P<protocol>[a-z][a-z0-9+.-]*)://)?(?P<host>\[[0-9a-fA-F:]+\]|[A-Za-z0-9_.-]+):(?P<port>\d+)$")


def parse_address(text: str, what: str = "--data-service") -> tuple[str, str, int]:
    """"grpc://HOST:PORT" (or "HOST:PORT") -> ("grpc", HOST, PORT).

    Raises:
        UsageError: not HOST:PORT with an optional grpc:// in front, or a port outside 1-65535.
    """
    m = _URL.match(str(text).strip())
    if not m or (m["protocol"] or "grpc") != "grpc" or not 0 < int(m["port"]) < 65536:
        raise UsageError(f"{what} must be grpc://HOST:PORT (a tf.data service dispatcher), got {text!r}")
    return "grpc", m["host"], int(m["port"])


def _in_thread(fn, timeout: float):
    """fn() in a daemon thread: ("ok", value), ("error", exception) or ("timeout", None) after `timeout` s.

    A TF op that keeps retrying cannot be cancelled from Python; the daemon
    thread is left behind and dies with the process.
    """
    out = []

    def target():
        try:
            out.append(("ok", fn()))
        except Exception as e:  # reported by the caller as one line
            out.append(("error", e))

    t = threading.Thread(target=target, daemon=True, name="tf-data-service-check")
    t.start()
    t.join(timeout)
    return out[0] if out else ("timeout", None)


def check_dispatcher(service: str, timeout: float = 15.0) -> None:
    """Make sure a tf.data service answers at `service`, dispatcher and workers, within `timeout` seconds.

    Three steps, each with what is left of `timeout`: a TCP connection; a one-element
    dataset registered (a dispatcher answers); that element read back (a worker
    this process can reach produces it: none registered, or one started with an
    --address this machine cannot reach, would otherwise stall training silently).

    Raises:
        UsageError: a malformed address, or the first step that failed, as one line.
    """
    _, host, port = parse_address(service)
    end = time.monotonic() + timeout
    try:
        socket.create_connection((host.strip("[]"), port), timeout=timeout).close()
    except OSError as e:
        raise UsageError(f"no tf.data service dispatcher at {host}:{port} ({first_line(e)}); start one with: "
                         f"python -m utils.input.service dispatcher --port {port}") from None
    tf = import_tensorflow_quietly()
    target = f"grpc://{host}:{port}"
    probe = tf.data.Dataset.range(1)
    status, value = _in_thread(lambda: tf.data.experimental.service.register_dataset(target, probe),
                               max(1.0, end - time.monotonic()))
    if status == "timeout":
        raise UsageError(f"{host}:{port} accepts connections but no tf.data service dispatcher answered within "
                         f"{timeout:g} s")
    if status == "error":
        raise UsageError(f"the tf.data service dispatcher at {host}:{port} refused a dataset: {first_line(value)}")
    served = probe.apply(tf.data.experimental.service.distribute(processing_mode=PROCESSING_MODE, service=target))
    status, value = _in_thread(lambda: [int(x) for x in served.as_numpy_iterator()],
                               max(1.0, end - time.monotonic()))
    if status != "ok" or value != [0]:
        why = f"failed: {first_line(value)}" if status == "error" else f"none answered within {timeout:g} s"
        raise UsageError(f"the tf.data service at {host}:{port} has no worker this machine can read from ({why}); "
                         f"start one with: python -m utils.input.service worker --dispatcher {host}:{port} "
                         f"--address HOST")


def through_service(dataset, service: str, *, job_name: str | None = None, timeout: float = 15.0):
    """`dataset` processed on the tf.data service workers (distributed_epoch), read back here.

    Args:
        dataset: everything before this call (reading, decoding, augmentation,
            batching) runs on the workers; the elements arrive as they are.
        service: grpc://HOST:PORT of the dispatcher.
        job_name: None: a job of this dataset alone. Consumers giving the same
            name share one job (the records split between them, first come first
            served); names must not be reused while the service lives.
        timeout: seconds `check_dispatcher` waits before giving up.

    Raises:
        UsageError: see check_dispatcher.
    """
    import tensorflow as tf

    check_dispatcher(service, timeout)
    protocol, host, port = parse_address(service)
    return dataset.apply(tf.data.experimental.service.distribute(
        processing_mode=PROCESSING_MODE, service=f"{protocol}://{host}:{port}", job_name=job_name))


# --------------------------------------------------------------- the servers

def wait_for_signal() -> int:
    """Block until SIGTERM or SIGINT; returns the signal number."""
    got = threading.Event()
    seen = []

    def handler(signum, _frame):
        seen.append(signum)
        got.set()

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        while not got.wait(0.5):  # a timed wait so the handler runs promptly
            pass
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    return seen[0]


def start_dispatcher(port: int, work_dir: str | None = None):
    """A started DispatchServer on `port` (0: a free one); `work_dir` makes it fault tolerant (journal)."""
    tf = import_tensorflow_quietly()
    s = tf.data.experimental.service
    config = s.DispatcherConfig(port=port, work_dir=work_dir, fault_tolerant_mode=bool(work_dir))
    try:
        return s.DispatchServer(config)
    except tf.errors.OpError as e:
        raise UsageError(f"cannot start a dispatcher on port {port}: {first_line(e.message)}") from None


def start_worker(dispatcher: str, port: int = 0, address: str | None = None):
    """A started WorkerServer registered with `dispatcher` (HOST:PORT).

    Args:
        address: the host name trainers use to reach this worker (the dispatcher
            hands it out); default this machine's name.
    """
    _, host, dport = parse_address(dispatcher, "--dispatcher")
    tf = import_tensorflow_quietly()
    s = tf.data.experimental.service
    address = address or socket.gethostname()
    config = s.WorkerConfig(dispatcher_address=f"{host}:{dport}", worker_address=f"{address}:%port%", port=port)
    try:
        return s.WorkerServer(config)
    except tf.errors.OpError as e:
        raise UsageError(f"cannot start a worker on port {port}: {first_line(e.message)}") from None


def build_parser() -> OneLineParser:
    p = OneLineParser(prog="python -m utils.input.service",
                      description="Start a tf.data service dispatcher or worker (TensorFlow's own servers) for "
                                  "train.py --data-service grpc://HOST:PORT; runs until SIGTERM or Ctrl-C.")
    sub = p.add_subparsers(dest="role", required=True, metavar="dispatcher|worker", parser_class=OneLineParser)
    d = sub.add_parser("dispatcher", help="the coordinator: trainers and workers connect to it")
    d.add_argument("--port", type=int, required=True, help="port to listen on (0: any free port, printed)")
    d.add_argument("--work-dir", metavar="DIR", help="keep the dispatcher's state (a journal) in DIR so a "
                                                     "restarted dispatcher recovers its datasets and jobs")
    w = sub.add_parser("worker", help="reads, decodes and augments records for the trainers")
    w.add_argument("--dispatcher", required=True, metavar="HOST:PORT", help="the dispatcher's address")
    w.add_argument("--port", type=int, default=0, help="port to listen on (0: any free port, printed) [default: 0]")
    w.add_argument("--address", metavar="HOST", help="host name or IP at which trainers reach this worker "
                                                     "[default: this machine's name; 127.0.0.1 on one machine]")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if not 0 <= args.port < 65536:
        raise UsageError(f"--port must be in 0-65535, got {args.port}")
    if args.role == "dispatcher":
        server = start_dispatcher(args.port, args.work_dir)
        port = server.target.rsplit(":", 1)[1]
        print(f"tf.data service dispatcher listening on port {port} (grpc://{socket.gethostname()}:{port}); "
              f"workers: --dispatcher HOST:{port}", flush=True)
    else:
        server = start_worker(args.dispatcher, args.port, args.address)
        port = server._address.rsplit(":", 1)[1]  # the bound port; WorkerServer has no public getter
        print(f"tf.data service worker listening on port {port} (as {args.address or socket.gethostname()}:{port}), "
              f"dispatcher {args.dispatcher}", flush=True)
    signum = wait_for_signal()
    # stop() can wait on tasks of jobs whose trainers still hold them open; bounded, so a
    # SIGTERM always ends the process soon (the exit below drops whatever is left)
    status, _ = _in_thread(server.stop, STOP_TIMEOUT)
    late = f"; tasks still running after {STOP_TIMEOUT:g} s were dropped" if status == "timeout" else ""
    print(f"stopped ({signal.Signals(signum).name}{late})", flush=True)
    return 0


if __name__ == "__main__":
    code = run_cli(main)
    sys.stdout.flush()
    sys.stderr.flush()
    # The servers are stopped, but their task threads (jobs of trainers that went away) hold
    # TensorFlow's interpreter teardown for 6-40 s; there is nothing left to write or release.
    os._exit(code)
