"""An HTTP server on 127.0.0.1 that holds every response until the test opens its gate.

Two-process tests (one writer per output) start a run whose input is a URL list
served here: the run that took the lock is still busy when the other one starts,
so neither outcome depends on timing. /img/<i>.png is a distinct 32x32 PNG.
"""
from __future__ import annotations

import subprocess
import threading
import time

import pytest

from tests.conftest import QuietHandler, encode_image, random_image, serve


class _Gated(QuietHandler):
    def do_GET(self):
        with self.server.count_lock:
            self.server.requests += 1
        self.server.asked.set()
        self.server.gate.wait(60)
        i = int(self.path.rsplit("/", 1)[-1].split(".")[0])
        body = encode_image(random_image(i, 32, 32, blocky=False), "png")
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def gated_server():
    """The server; `.gate` (Event) releases the responses, `.asked` is set at the first request,
    `.requests` counts them."""
    with serve(_Gated, gate=threading.Event(), asked=threading.Event(),
               requests=0, count_lock=threading.Lock()) as srv:
        yield srv
        srv.gate.set()   # a held response would keep its handler thread waiting


def url_list(path, n: int, base: str, labels: int = 2) -> str:
    """`id,url,0/1...` lines for /img/0.png .. /img/<n-1>.png."""
    path.write_text("".join(f"im{i},{base}/img/{i}.png," + ",".join("1" if j == i % labels else "0"
                                                                     for j in range(labels)) + "\n"
                            for i in range(n)))
    return str(path)


def snapshot(folder) -> dict:
    """{path: (mtime, bytes)} of every file under `folder`: 'touched nothing' is an equality."""
    import os

    out = {}
    for dirpath, _, files in os.walk(folder):
        for n in files:
            p = os.path.join(dirpath, n)
            out[p] = (os.path.getmtime(p), open(p, "rb").read())
    return out


def race(cmd: list[str], env: dict, cwd: str, timeout: float) -> tuple[subprocess.Popen, subprocess.Popen]:
    """Start `cmd` twice at once -> (winner, loser): the loser is the first to exit (refused by
    the lock) while the winner still waits on the gate. Both pipe stdout/stderr as text."""
    runs = [subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    deadline = time.time() + timeout
    while time.time() < deadline and all(p.poll() is None for p in runs):
        time.sleep(0.02)
    loser = next(p for p in runs if p.poll() is not None)
    return next(p for p in runs if p is not loser), loser


def wait_for_requests(server, n: int, timeout: float) -> bool:
    """Whether `server` has seen `n` requests within `timeout` s (all of a run's fetches started:
    its per-file download locks exist, so a snapshot taken now stays still until the gate opens)."""
    deadline = time.time() + timeout
    while time.time() < deadline and server.requests < n:
        time.sleep(0.02)
    return server.requests >= n


def third_run_is_refused(cmd: list[str], env: dict, cwd: str, folder, line: str, winner: subprocess.Popen,
                         timeout: float) -> None:
    """While `winner` holds the lock, a third run of `cmd` exits 2 with `line` as its only stderr
    line, and `folder` stays as it was (every file's mtime and bytes)."""
    before = snapshot(folder)
    third = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert (third.returncode, third.stderr.strip().splitlines()) == (2, [line]), third.stderr[-2000:]
    assert snapshot(folder) == before, "the refused run changed the output"
    assert winner.poll() is None, "the winner ended before the gate opened"


def open_gate(server, winner: subprocess.Popen, timeout: float = 120) -> None:
    """Release the held responses; the winner then finishes with exit 0."""
    server.gate.set()
    _, err = winner.communicate(timeout=timeout)
    assert winner.returncode == 0, err[-2000:]
