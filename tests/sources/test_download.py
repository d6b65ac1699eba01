"""utils/sources/download.py against a local HTTP server that misbehaves on purpose.

No network: a ThreadingHTTPServer on 127.0.0.1 serves a good JPEG, a 404, a 500
that recovers on retry, a 500 that never does, a response slower than the
timeout, an HTML page and oversized bodies (declared and streamed). The handler
counts requests per path, so retries and cache hits are asserted, not assumed.
"""
from __future__ import annotations

import os
import threading
import time
from collections import Counter

import pytest

from tests.conftest import QuietHandler, encode_image, free_ports, random_image, serve
from utils.sources.download import DownloadError, cache_path, fetch_all

SLOW_S = 1.5          # the slow route sleeps this long; tests use timeouts of ~0.4 s
WAIT_S = 0.3          # the concurrency route holds each request this long
BIG = 200_000         # oversized bodies; tests cap at MAX_BYTES
MAX_BYTES = 100_000
FAST = dict(timeout=0.4, retries=2, backoff=0.01, max_bytes=MAX_BYTES, progress=False)


class Handler(QuietHandler):
    def _send(self, status: int, body: bytes, ctype: str = "image/jpeg", length: int | None = None):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        if length is not None:
            self.send_header("Content-Length", str(length))
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass                        # the client gave up (timeout, size cap): expected

    def do_GET(self):
        srv = self.server
        with srv.lock:
            srv.counts[self.path] += 1
            n = srv.counts[self.path]
            srv.in_flight += 1
            srv.max_in_flight = max(srv.max_in_flight, srv.in_flight)
        try:
            self.route(n)
        finally:
            with srv.lock:
                srv.in_flight -= 1

    def route(self, n: int):
        p, jpeg = self.path, self.server.jpeg
        if p.startswith("/img/"):
            self._send(200, jpeg, length=len(jpeg))
        elif p == "/404":
            self._send(404, b"not found", "text/plain", length=9)
        elif p.startswith("/flaky/"):                    # 500 once, then fine
            if n == 1:
                self._send(500, b"oops", "text/plain", length=4)
            else:
                self._send(200, jpeg, length=len(jpeg))
        elif p == "/always500":
            self._send(500, b"oops", "text/plain", length=4)
        elif p == "/slow":
            time.sleep(SLOW_S)
            self._send(200, jpeg, length=len(jpeg))
        elif p == "/page.html":
            html = b"<!doctype html><html><body>Error: image moved</body></html>"
            self._send(200, html, "text/html", length=len(html))
        elif p == "/big":                                # declared too large
            self._send(200, b"\xff\xd8" + b"\0" * BIG, length=BIG + 2)
        elif p == "/big-stream":                         # no Content-Length: capped while streaming
            self._send(200, b"\xff\xd8" + b"\0" * BIG)
        elif p.startswith("/wait/"):
            time.sleep(WAIT_S)
            self._send(200, jpeg, length=len(jpeg))
        else:
            self._send(404, b"", "text/plain", length=0)


@pytest.fixture
def http_server():
    with serve(Handler, lock=threading.Lock(), counts=Counter(), in_flight=0, max_in_flight=0,
               jpeg=encode_image(random_image(0, 40, 40, blocky=False), "jpeg", quality=90)) as srv:
        yield srv


def test_each_outcome_has_its_reason(http_server, tmp_path):
    b = http_server.base
    items = [
        ("good", f"{b}/img/a.jpg"),
        ("missing", f"{b}/404"),
        ("flaky", f"{b}/flaky/1"),
        ("down", f"{b}/always500"),
        ("slow", f"{b}/slow"),
        ("html", f"{b}/page.html"),
        ("big", f"{b}/big"),
        ("bigstream", f"{b}/big-stream"),
        ("ftp", "ftp://127.0.0.1/x.jpg"),
        ("noscheme", "example.com/x.jpg"),
        ("refused", f"http://127.0.0.1:{free_ports()[0]}/x.jpg"),
    ]
    res = fetch_all(items, str(tmp_path), **FAST)
    assert list(res) == [k for k, _ in items]
    reasons = {k: str(v) for k, v in res.items() if isinstance(v, DownloadError)}
    assert set(reasons) == {"missing", "down", "slow", "html", "big", "bigstream", "ftp",
                            "noscheme", "refused"}
    assert reasons["missing"] == "http 404"
    assert reasons["down"] == "http 500 after 3 attempts"
    assert reasons["slow"] == "timeout after 3 attempts"
    assert reasons["html"] == "not an image"
    assert reasons["big"] == f"body larger than {MAX_BYTES} bytes"
    assert reasons["bigstream"] == f"body larger than {MAX_BYTES} bytes"
    assert reasons["ftp"] == "unsupported URL scheme: ftp"
    assert reasons["noscheme"] == "unsupported URL scheme: (none)"
    assert reasons["refused"].startswith("connection error")
    for key in ("good", "flaky"):
        with open(res[key], "rb") as f:
            assert f.read() == http_server.jpeg
    c = http_server.counts
    assert c["/404"] == 1                 # 4xx: no retry
    assert c["/flaky/1"] == 2             # 500 then success
    assert c["/always500"] == 3           # 1 + retries
    assert c["/big"] == 1 and c["/page.html"] == 1
    # nothing half-written is left behind, failures leave no file
    assert sorted(os.listdir(tmp_path)) == sorted(
        os.path.basename(res[k]) for k in ("good", "flaky"))


def test_malformed_urls_are_failures_not_crashes(tmp_path):
    # one bad line of a URL list must not abort the other downloads
    items = [("ipv6", "http://[bad/x.jpg"), ("labels", "http://a..b/x.jpg"),
             ("long", "http://" + "a" * 300 + ".invalid/x.jpg")]
    res = fetch_all(items, str(tmp_path), **FAST)
    assert all(isinstance(v, DownloadError) and str(v).startswith("invalid URL") for v in res.values()), res


def test_rerun_requests_nothing_already_cached(http_server, tmp_path):
    b = http_server.base
    items = [(f"k{i}", f"{b}/img/{i}.jpg") for i in range(5)] + [("f", f"{b}/flaky/x"),
                                                                  ("gone", f"{b}/404")]
    first = fetch_all(items, str(tmp_path), **FAST)
    before = sum(http_server.counts.values())
    assert before == 5 + 2 + 1
    again = fetch_all(items, str(tmp_path), **FAST)
    c = http_server.counts
    assert sum(c.values()) - before == 1 and c["/404"] == 2   # only the failure is retried
    assert {k: v for k, v in again.items() if k != "gone"} == \
           {k: v for k, v in first.items() if k != "gone"}
    # a changed URL for the same key is a new download
    fetch_all([("k0", f"{b}/img/other.jpg")], str(tmp_path), **FAST)
    assert c["/img/other.jpg"] == 1


def test_stale_partial_files_are_removed(http_server, tmp_path):
    url = f"{http_server.base}/img/p.jpg"
    final = cache_path(str(tmp_path), "p", url)
    stale = final + ".part-999-1"
    with open(stale, "wb") as f:
        f.write(b"\xff\xd8half")
    res = fetch_all([("p", url)], str(tmp_path), **FAST)
    assert res["p"] == final and not os.path.exists(stale)
    # a key that merely contains ".part-" is a cached file, not a stale part
    items = [("shoe.part-2", f"{http_server.base}/img/shoe.jpg")]
    first = fetch_all(items, str(tmp_path), **FAST)["shoe.part-2"]
    assert fetch_all(items, str(tmp_path), **FAST)["shoe.part-2"] == first and os.path.isfile(first)
    assert http_server.counts["/img/shoe.jpg"] == 1


def test_requests_run_concurrently(http_server, tmp_path):
    b = http_server.base
    items = [(f"w{i}", f"{b}/wait/{i}") for i in range(8)]
    t0 = time.monotonic()
    res = fetch_all(items, str(tmp_path / "a"), concurrency=8, **FAST)
    elapsed = time.monotonic() - t0
    assert all(isinstance(v, str) for v in res.values())
    assert http_server.max_in_flight >= 4
    assert elapsed < 8 * WAIT_S * 0.6, elapsed             # far from serial

    http_server.max_in_flight = 0
    fetch_all([(f"s{i}", f"{b}/wait/s{i}") for i in range(3)], str(tmp_path / "b"),
              concurrency=1, **FAST)
    assert http_server.max_in_flight == 1


def test_download_error_str_is_the_reason():
    e = DownloadError("http 404")
    assert str(e) == "http 404" and isinstance(e, Exception)


def test_cache_names_are_safe_and_url_specific(tmp_path):
    a = cache_path(str(tmp_path), "../../etc/passwd", "http://x/1")
    assert os.path.dirname(a) == str(tmp_path) and "/" not in os.path.basename(a)
    assert cache_path(str(tmp_path), "k", "http://x/1") != cache_path(str(tmp_path), "k", "http://x/2")


FETCHER = """
import os, sys, time
sys.path.insert(0, {root!r})
from utils.sources.download import fetch_all
cache, base, ready, go, keys = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5].split(",")
open(ready, "w").close()
while not os.path.exists(go):      # both processes start their requests together
    time.sleep(0.01)
res = fetch_all([(k, f"{{base}}/wait/{{k}}") for k in keys], cache, concurrency=3, timeout=5, retries=0,
                progress=False)
bad = [k for k, v in res.items() if not isinstance(v, str)]
sys.exit(1 if bad else 0)
"""


def test_two_processes_share_one_cache(http_server, tmp_path):
    """Overlapping lists fetched at once by two processes: every file whole, none fetched twice, nothing left over."""
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    cache, go = tmp_path / "cache", tmp_path / "go"
    sets = [[f"k{i}" for i in range(0, 6)], [f"k{i}" for i in range(2, 9)]]     # k2..k5 in both
    script = FETCHER.format(root=root)
    procs = [subprocess.Popen([sys.executable, "-c", script, str(cache), http_server.base, str(tmp_path / f"ready{n}"),
                               str(go), ",".join(keys)]) for n, keys in enumerate(sets)]
    try:
        deadline = time.monotonic() + 60
        while not all((tmp_path / f"ready{n}").exists() for n in range(2)):
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "fetchers did not start"
            time.sleep(0.02)
        go.touch()
        assert [p.wait(timeout=60) for p in procs] == [0, 0]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    keys = sorted(set(sets[0]) | set(sets[1]))
    want = sorted(os.path.basename(cache_path(str(cache), k, f"{http_server.base}/wait/{k}")) for k in keys)
    assert sorted(os.listdir(cache)) == want                    # no .part-*, no .lock left
    for k in keys:
        with open(cache_path(str(cache), k, f"{http_server.base}/wait/{k}"), "rb") as f:
            assert f.read() == http_server.jpeg
    assert {k: http_server.counts[f"/wait/{k}"] for k in keys} == {k: 1 for k in keys}   # the overlap once
    assert http_server.max_in_flight >= 4                       # they did run at the same time


def test_sweep_leaves_parts_of_a_file_being_fetched(tmp_path):
    from utils.sources.download import LOCK_SUFFIX, TMP_MARK, _claim, sweep_stale
    busy, dead = cache_path(str(tmp_path), "busy", "http://x/1"), cache_path(str(tmp_path), "dead", "http://x/2")
    for path in (busy, dead):
        (tmp_path / (os.path.basename(path) + f"{TMP_MARK}999-1")).write_bytes(b"\xff\xd8half")
    (tmp_path / (os.path.basename(dead) + LOCK_SUFFIX)).touch()     # a killed fetcher's lock file
    with _claim(busy):            # another fetcher (a separate open: flock refuses it too) is writing `busy`
        assert sweep_stale(str(tmp_path)) == 1
        assert sorted(os.listdir(tmp_path)) == sorted([os.path.basename(busy) + LOCK_SUFFIX,
                                                       os.path.basename(busy) + f"{TMP_MARK}999-1"])
    assert sweep_stale(str(tmp_path)) == 1 and os.listdir(tmp_path) == []


def test_a_waiting_fetcher_reuses_the_file_its_holder_fetched(http_server, tmp_path):
    """Two threads, one URL: the second waits on the lock, then finds the file (one request)."""
    import requests
    from utils.sources.download import fetch_cached
    url = f"{http_server.base}/wait/same"
    path = cache_path(str(tmp_path), "same", url)
    out = []

    def fetch():
        with requests.Session() as s:
            out.append(fetch_cached(s, url, path, timeout=5, retries=0, max_bytes=MAX_BYTES, backoff=0))

    threads = [threading.Thread(target=fetch) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out == [path, path] and http_server.counts["/wait/same"] == 1
    assert os.listdir(tmp_path) == [os.path.basename(path)]
