"""Graceful preemption: SIGTERM / SIGINT ask the run to stop after the current step.

Cloud machines are preempted with a SIGTERM and ~30 s of grace. The first
SIGTERM or SIGINT only sets a flag; callbacks.StepCheckpoint sees it at the end
of the step in progress, writes the resume state and exits with 128 + the
signal (143 / 130). A second signal exits at once, without saving.

Why a watcher thread: Python runs signal handlers in the main thread between
bytecodes, i.e. only after the TensorFlow step it is blocked in returns, so a
handler alone could not make a second signal immediate. The C-level handler
still writes the signal number to the wakeup fd at once; a daemon thread reads
it there and acts whatever the main thread is doing.

Under MultiWorkerMirroredStrategy the signal may reach one worker only, yet all
must stop at the same step (a worker that goes on waits forever in the next
all-reduce): `agree` sums every worker's flag each step (any set: all stop).
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading

SIGNALS = (signal.SIGTERM, signal.SIGINT)


def exit_code(signum: int) -> int:
    """The shell's exit status for a process ended by `signum`: 143 for SIGTERM, 130 for SIGINT."""
    return 128 + int(signum)


class StopRequest:
    """What the signals asked: `signum` is None until the first SIGTERM / SIGINT."""

    def __init__(self):
        self.signum: int | None = None

    def request(self, signum: int) -> None:
        """Record a signal; the second one ends the process at once (no checkpoint)."""
        if self.signum is None:
            self.signum = int(signum)
            print(f"{signal.Signals(signum).name}: finishing the current step, then saving "
                  "(send it again to exit at once)", file=sys.stderr, flush=True)
            return
        print(f"{signal.Signals(signum).name} again: exiting now without saving", file=sys.stderr, flush=True)
        os._exit(exit_code(signum))

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def code(self) -> int:
        """The exit status to end with (valid once requested)."""
        return exit_code(self.signum or signal.SIGTERM)


@contextlib.contextmanager
def catch_signals():
    """Within the block SIGTERM / SIGINT become a StopRequest (yielded); restored after.

    Outside the main thread (signals cannot be caught there) the request simply never comes.
    """
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    r, w = os.pipe()
    os.set_blocking(w, False)
    old_fd = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    # the Python-level handler has nothing to do (the watcher acts), but installing one
    # replaces SIGINT's KeyboardInterrupt and SIGTERM's default kill
    old = {s: signal.signal(s, lambda *_: None) for s in SIGNALS}
    done = threading.Event()

    def watch():
        while not done.is_set():
            try:
                data = os.read(r, 64)
            except OSError:
                return
            if not data:
                return
            for signum in data:
                if signum in SIGNALS and not done.is_set():
                    stop.request(signum)

    thread = threading.Thread(target=watch, name="signal-watcher", daemon=True)
    thread.start()
    try:
        yield stop
    finally:
        done.set()
        for s, h in old.items():
            signal.signal(s, h)
        signal.set_wakeup_fd(old_fd)
        os.close(w)  # the watcher's read returns b"": it ends
        thread.join(timeout=1)
        os.close(r)


def agree(strategy, local: bool) -> bool:
    """Whether any worker has `local` set (a cross-worker sum > 0); just `local` on one worker.

    Every worker must call it at the same points (it is a collective).
    """
    import tensorflow as tf

    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return local
    flags = strategy.run(lambda: tf.constant(1 if local else 0, tf.int32))
    return int(strategy.reduce(tf.distribute.ReduceOp.SUM, flags, axis=None).numpy()) > 0  # (no MAX op)
