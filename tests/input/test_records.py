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

    def prefetch(self, n):
        self.calls.append(("prefetch", n))
        return self

    def interleave(self, fn, **kwargs):
        self.calls.append(("interleave", kwargs))
        return self


def test_usable_cpus_is_the_affinity_mask_not_the_host_count(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3, 5})
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert records.usable_cpus() == 2


def test_decode_chunks_in_flight_follow_the_usable_cpus(monkeypatch):
    # two per CPU, at least two (a slow chunk must not stall), at most MAX_DECODE_CHUNKS
    for mask, cycle in (({0}, 2), ({0, 1, 2, 3, 4, 5}, 12), (set(range(40)), records.MAX_DECODE_CHUNKS)):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid, m=mask: set(m))
        monkeypatch.setattr(os, "cpu_count", lambda: 64)
        rec = _Recorder()
        records.decode_skipping_failures(rec, lambda r: r, deterministic=True)
        (_, chunk), (_, ready), (_, kw) = rec.calls
        assert chunk == records.DECODE_CHUNK
        assert ready == records.READY_CHUNKS_PER_DECODER * cycle  # read ahead of every decoder
        assert kw["cycle_length"] == cycle and kw["block_length"] == records.DECODE_CHUNK
        assert kw["num_parallel_calls"] == cycle  # explicit: tf.data's autotuning is off (pipeline_options)
        assert kw["deterministic"] is True


def _shards(tmp_path, lengths):
    import tensorflow as tf

    files = []
    for i, n in enumerate(lengths):
        path = str(tmp_path / f"train-{i:05d}-of-{len(lengths):05d}.tfrecord")
        with tf.io.TFRecordWriter(path) as w:
            for j in range(n):
                w.write(f"{i}:{j}".encode())
        files.append(path)
    return files


def test_read_ahead_keeps_the_round_robin_order_on_both_readers(tmp_path):
    # one record from each shard in turn, a finished shard dropping out: what eval and a seeded run rely on
    files = _shards(tmp_path, [3, 1, 2])
    want = [b"0:0", b"1:0", b"2:0", b"0:1", b"2:1", b"0:2"]
    lost = records.corrupt_records_lost()  # process-wide: other tests' corrupted shards count too
    for counts in (None, [3, 1, 2]):  # the plain reader and the --skip-corrupt-shards one
        ds, n, by_file = records.read_records(files, training=False, seed=None, deterministic=True,
                                              input_context=None, counts=counts)
        assert [r.numpy() for r in ds] == want and (n, by_file) == (1, False)
    assert records.corrupt_records_lost() == lost  # whole shards: nothing reported lost


def test_pipeline_options_switch_the_autotuning_model_off_and_keep_the_rest():
    import tensorflow as tf

    options = tf.data.Options()
    options.deterministic = False
    out = records.pipeline_options(options)
    assert out.autotune.enabled is False
    assert out.deterministic is False  # other settings untouched
