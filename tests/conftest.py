"""Shared test set-up: quiet TensorFlow, CPU only, project root importable."""
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# First, before any import starts a thread or any test binds a port: the session's own network
# namespace, loopback only (tests/netns.py says why). None when done, else why not.
from tests.netns import isolate  # noqa: E402

NETWORK_NOT_ISOLATED = isolate()


def pytest_report_header(config):
    return ["network: " + (NETWORK_NOT_ISOLATED or "a namespace of its own, loopback only (tests/netns.py)")]


# ----------------------------------------------------------------------------- shared makers
# Tests build their own tiny images and datasets; these are the one copy of how.
import hashlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402

import numpy as np  # noqa: E402


def random_image(seed: int = 0, h: int = 40, w: int = 48, c: int = 3, *, blocky: bool = True) -> np.ndarray:
    """uint8 [h, w, c] (or [h, w] for c == 1); `blocky` 8x8 blocks survive JPEG almost unchanged."""
    rng = np.random.default_rng(seed)
    if blocky:
        base = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, c), dtype=np.uint8)
        arr = np.kron(base, np.ones((8, 8, 1), dtype=np.uint8))[:h, :w]
    else:
        arr = rng.integers(0, 256, (h, w, c), dtype=np.uint8)
    return arr if c > 1 else arr[..., 0]


def encode_image(arr: np.ndarray, fmt: str = "png", **save_kw) -> bytes:
    """Encode an RGB / gray uint8 array with Pillow: fmt png, jpeg, webp, bmp, gif, tiff, ..."""
    from PIL import Image

    buf = io.BytesIO()
    fmt = {"jpg": "JPEG"}.get(fmt.lower(), fmt.upper())
    Image.fromarray(arr).save(buf, format=fmt, **save_kw)
    return buf.getvalue()


def write_image(path, arr: np.ndarray | None = None, fmt: str | None = None, **kw) -> str:
    """Write an image file (format from the extension unless `fmt`); parent folders made."""
    path = str(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    if arr is None:
        arr = random_image(**kw)
    with open(path, "wb") as f:
        f.write(encode_image(arr, fmt or os.path.splitext(path)[1][1:]))
    return path


def write_dataset(root, splits: dict, *, class_names: list[str], multi_label: bool = False,
                  planes: int = 1, channels: int = 3, folds: int = 0, name: str | None = None) -> str:
    """A data/NAME folder laid out as generate_dataset.py writes it, from serialized records.

    Args:
        splits: {split: [shard, ...]}; a shard is a list of serialized tf.train.Examples,
            or (records, fold) for a K-fold train shard.
    Returns:
        the folder, as a str. Shard sizes, sha256 and class counts are real.
    """
    import tensorflow as tf

    from utils.dataset import schema

    root = str(root)
    os.makedirs(root, exist_ok=True)
    k = len(class_names)
    man = {"schema_version": 1, "name": name or os.path.basename(root), "num_classes": k,
           "multi_label": multi_label, "planes": planes, "channels": channels, "folds": folds, "seed": 0,
           "inputs": 0, "splits": {}, "skipped": {"count": 0, "by_reason": {}}, "readable_names": None}
    for split, shards in splits.items():
        entries = []
        for i, shard in enumerate(shards):
            records, fold = shard if isinstance(shard, tuple) else (shard, None)
            fname = f"{split}-{i:05d}-of-{len(shards):05d}.tfrecord"
            path = os.path.join(root, fname)
            counts = [0] * k
            with tf.io.TFRecordWriter(path) as w:
                for r in records:
                    w.write(r)
                    ex = tf.train.Example.FromString(r)
                    for lab in ex.features.feature[schema.LABEL].int64_list.value:
                        counts[lab] += 1
            data = open(path, "rb").read()
            entries.append({"file": fname, "count": len(records), "bytes": len(data),
                            "sha256": hashlib.sha256(data).hexdigest(), "fold": fold, "class_counts": counts})
        man["splits"][split] = {"count": sum(e["count"] for e in entries), "shards": entries,
                                "class_counts": [sum(e["class_counts"][c] for e in entries) for c in range(k)]}
        man["inputs"] += man["splits"][split]["count"]
    with open(os.path.join(root, "manifest.json"), "w") as f:
        json.dump(man, f)
    with open(os.path.join(root, "labels.json"), "w") as f:
        json.dump(list(class_names), f)
    return root


# ----------------------------------------------------------------------------- servers and runs
import contextlib  # noqa: E402
import signal  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer  # noqa: E402


class QuietHandler(BaseHTTPRequestHandler):
    """A request handler that logs nothing (keeps pytest output clean); handlers here subclass it."""

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serve(handler, **attrs):
    """A ThreadingHTTPServer on 127.0.0.1 (a free port) running `handler`, stopped on leaving.

    Args:
        handler: the request handler class (or a functools.partial of one).
        **attrs: set on the server before it starts; handlers read them as self.server.NAME.
    Returns:
        (yields) the server; `.base` is its URL, http://127.0.0.1:PORT.
    """
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    srv.daemon_threads = True
    for name, value in attrs.items():
        setattr(srv, name, value)
    srv.base = f"http://127.0.0.1:{srv.server_address[1]}"
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


def wait_for(pred, proc, timeout: float, poll: float = 0.02) -> None:
    """Poll `pred()` until it holds, while the subprocess `proc` still runs.

    Raises:
        AssertionError: `proc` ended first (with the tail of its stderr, if piped), or `timeout` s passed.
    """
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not pred():
        time.sleep(poll)
    tail = proc.stderr.read()[-800:] if proc.poll() is not None and proc.stderr else ""
    assert proc.poll() is None, "the run ended first: " + tail
    assert pred(), f"timed out after {timeout} s"


def kill_9_when(path, proc, timeout: float, poll: float = 0.02) -> None:
    """kill -9 the subprocess `proc` as soon as `path` exists (the state a resume starts from), and reap it."""
    wait_for(lambda: os.path.exists(path), proc, timeout, poll)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def free_ports(n: int = 1) -> list[int]:
    """`n` distinct ports on 127.0.0.1 that nothing listens on now (held together while picked)."""
    import socket

    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()
