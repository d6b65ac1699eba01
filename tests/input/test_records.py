"""utils/input/records.py: the decode fan-out follows the CPUs this process may use, not the host's."""
import os

from utils.input import records


class _Recorder:
    """Stands in for a tf.data.Dataset: records what decode_skipping_failures asks of it."""

    def __init__(self):
        self.calls = []

    def batch(self, n):
        self.calls.append(("batch", n))
        return self

    def interleave(self, fn, **kwargs):
        self.calls.append(("interleave", kwargs))
        return self


def test_usable_cpus_is_the_affinity_mask_not_the_host_count(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3, 5})
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert records.usable_cpus() == 2


def test_decode_chunks_in_flight_follow_the_usable_cpus(monkeypatch):
    for mask, cycle in (({0}, 2), ({0, 1, 2, 3, 4, 5}, 6)):  # at least two: a slow chunk must not stall
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid, m=mask: set(m))
        monkeypatch.setattr(os, "cpu_count", lambda: 64)
        rec = _Recorder()
        records.decode_skipping_failures(rec, lambda r: r, deterministic=True)
        (_, chunk), (_, kw) = rec.calls
        assert chunk == records.DECODE_CHUNK
        assert kw["cycle_length"] == cycle and kw["block_length"] == records.DECODE_CHUNK
        assert kw["deterministic"] is True
