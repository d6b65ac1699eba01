"""utils/generate/shards.py: ShardSink's batches, whatever their size and writev's vector limit."""
from __future__ import annotations

import hashlib
import os

import pytest

from utils.dataset import tfrecord
from utils.generate import shards


@pytest.mark.parametrize("batch_bytes, iov_max", [(1, 16), (10_000, 2), (1 << 20, 1024)])
def test_records_in_batches_are_framed_in_order(tmp_path, monkeypatch, batch_bytes, iov_max):
    monkeypatch.setattr(shards.ShardSink, "BATCH_BYTES", batch_bytes)
    monkeypatch.setattr(shards, "_IOV_MAX", iov_max)
    recs = [[os.urandom(n), b"%d" % i, os.urandom(5000)] for i, n in enumerate(range(0, 9000, 300))]
    path = str(tmp_path / "s.tfrecord")
    sink = shards.ShardSink(path)
    sizes = [sink.write_chunks(r) for r in recs]
    sink.write(b"last")
    size, sha = sink.close()
    want = b""
    for r in [b"".join(r) for r in recs] + [b"last"]:
        header, footer = tfrecord.frame_parts(r)
        want += header + r + footer
    data = open(path, "rb").read()
    assert data == want and size == len(want) and sha == hashlib.sha256(want).hexdigest()
    assert sizes == [sum(map(len, r)) for r in recs]


def test_a_failed_write_is_raised_by_close(tmp_path, monkeypatch):
    def full(fd, parts):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "writev", full)
    sink = shards.ShardSink(str(tmp_path / "s.tfrecord"))
    for _ in range(50):   # more batches than the queue holds: write_chunks must never block
        sink.write_chunks([os.urandom(100_000)])
    with pytest.raises(OSError, match="No space"):
        sink.close()
