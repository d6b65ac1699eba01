"""Shards -> serialized records: the counters, the shard readers, the resumable training stream.

utils/input/pipeline.py builds datasets on these (its docstring says why the
order is what it is); here are the parts below the decode: which records
enter, in which order, and what is counted on the way.
"""
from __future__ import annotations

import functools
import os

import tensorflow as tf

from utils.dataset.manifest import split_count
from utils.errors import DatasetError, UsageError
from utils.input.corruption import read_shard_past_corruption

AUTOTUNE = tf.data.AUTOTUNE


# --------------------------------------------------------------- decode-failure counter

_COUNTERS: dict | None = None


def local_variable(name: str) -> tf.Variable:
    """An int64 variable on this host's CPU that no tf.distribute strategy mirrors.

    make_dataset may first run inside strategy.scope() or a
    distribute_datasets_from_function call; tf.Variable there would become a
    MirroredVariable (under MultiWorkerMirroredStrategy even a cross-worker
    broadcast). ResourceVariable's own constructor bypasses the strategy's
    variable creator.
    """
    with tf.init_scope(), tf.device("/cpu:0"):
        try:
            # private TF API (tensorflow.python.ops, TF 2.21): should a release move it,
            # the fallback below is mirrored under a strategy and
            # test_failure_counters_are_never_mirrored_by_a_strategy says so
            from tensorflow.python.ops.resource_variable_ops import ResourceVariable

            return ResourceVariable(0, dtype=tf.int64, trainable=False, name=name)
        except ImportError:  # pragma: no cover
            return tf.Variable(0, dtype=tf.int64, trainable=False, name=name)


def counters() -> dict:
    """Two process-wide counters, created on first use (never at import:
    MultiWorkerMirroredStrategy must be created before the TF runtime starts)."""
    global _COUNTERS
    if _COUNTERS is None:
        _COUNTERS = {"seen": local_variable("pipeline_records_seen"),
                     "ok": local_variable("pipeline_records_decoded"),
                     "lost": local_variable("pipeline_records_lost_to_corruption")}
    return _COUNTERS


def decode_failures() -> int:
    """Records skipped because they failed to parse or decode (all datasets, all epochs)."""
    if _COUNTERS is None:
        return 0
    return int(_COUNTERS["seen"].numpy() - _COUNTERS["ok"].numpy())


def corrupt_records_lost() -> int:
    """Records that skip_corrupt_shards left unread (all datasets, all epochs; see decode_failures)."""
    return 0 if _COUNTERS is None else int(_COUNTERS["lost"].numpy())


# Bytes per read() of a shard, per open shard. Local disk: the kernel's readahead (128 KiB to
# 8 MiB windows) already streams a sequential file; 1 and 4 MiB read the bench's 26 MB cold in
# the same ~70 ms here. Network storage (NFS, a bucket through tf.io.gfile) pays a round trip
# per request, but with READ_AHEAD every open shard has its own reader thread, so the round
# trips of the interleave's 16 shards overlap: 16 x 1 MiB per ~50 ms is ~320 MB/s, about 10,000
# images/s of 30 KB records. Bigger buffers would help only a pipeline with very few shards on
# high-latency storage, and cost 16 x the size (plus the shards being opened next) per pipeline,
# times the pipelines on a host. So 1 MiB, as before.
READ_BUFFER_BYTES = 1 << 20

# Records each shard's reader keeps ready ahead of the decoders, on its own thread. Without it
# the interleave buffers only 3 records per shard (TF's default: 2 x block_length + 1), so a
# buffer refill that misses the page cache stalls the round robin (deterministic order waits for
# THAT shard), and the decoders with it: cold, read time added to decode time instead of
# overlapping it. AUTOTUNE, not a fixed count: tf.data grows a prefetch buffer only when its
# consumer found it empty (within its RAM budget), so a shard on a fast disk keeps a few records
# and one on slow storage as many as its latency needs, whatever the record size (26 KB JPEGs,
# 6-plane 1 MB microscopy records: a count right for one is wrong for the other). Its cost, one
# hand-over per record: ~9 us of CPU per record here (34 -> 43 us for the read stage alone,
# ~1% of a 224 px decode), paid for by never waiting on a read. Autotuning needs a few refills
# to grow, so a short shard gets the fixed read-ahead of decode_skipping_failures as well.
READ_AHEAD = AUTOTUNE


def ahead(read):
    """A shard reader -> the same records, read ahead on their own thread (READ_AHEAD)."""
    return lambda *shard: read(*shard).prefetch(READ_AHEAD)


@ahead
def read_shard(path):
    """One shard's serialized records, in file order (a DataLossError where it is corrupted)."""
    return tf.data.TFRecordDataset(path, buffer_size=READ_BUFFER_BYTES)


def read_records(files: list[str], *, training: bool, seed, deterministic: bool, input_context,
                  counts: list[int] | None = None):
    """File names -> serialized records, sharded across input pipelines.

    By FILE when every pipeline gets at least one file (each reads only its
    share); else by DATA (each reads everything and keeps every n-th record,
    which needs the same record order in every pipeline: deterministic
    interleave, file order shuffled with a shared seed or not at all).
    counts: each file's record count (the manifest's): read past a corrupted
    shard, losing its tail with a warning (utils.input.corruption).
    """
    n, index = 1, 0
    if input_context is not None:
        n, index = input_context.num_input_pipelines, input_context.input_pipeline_id
    by_file = n > 1 and len(files) >= n
    by_data = n > 1 and not by_file
    n_all = len(files)
    n_files = n_all // n if by_file else n_all   # the interleave's width, as before the slice below
    if by_file:
        # Pipeline i reads files i, i+n, ... Sliced here, not by ds.shard(n, i): the same files in the
        # same order, but the file list is then the dataset's source, so tf.data service's
        # distributed_epoch (which splits the source among its workers) splits only this share;
        # a shard() after the split would apply to each worker's part and lose or repeat files.
        files = files[index::n]
        counts = None if counts is None else counts[index::n]
    if counts is None:
        ds = tf.data.Dataset.from_tensor_slices(files)
        read = read_shard
    else:
        ds = tf.data.Dataset.from_tensor_slices((files, tf.constant(counts, tf.int64)))
        read = functools.partial(read_shard_past_corruption, lost=counters()["lost"],
                                 buffer_size=READ_BUFFER_BYTES)
        read = ahead(read)
    if training and (seed is not None or not by_data):
        # new file order every epoch: records of one shard are not always neighbours
        ds = ds.shuffle(n_all, seed=seed, reshuffle_each_iteration=True)
    readers = max(1, min(n_files, 16))  # one per open shard, all reading at once (mostly waiting on I/O)
    ds = ds.interleave(
        read,
        cycle_length=readers,
        block_length=1,
        num_parallel_calls=readers,
        deterministic=deterministic or by_data,
    )
    if by_data:
        ds = ds.shard(n, index)
    return ds, n, by_file


def shuffle_size(shards: list[dict], shuffle_buffer: int, n_pipelines: int, by_file: bool) -> int:
    count = split_count(shards) // (1 if by_file or n_pipelines == 1 else n_pipelines)
    return max(1, min(int(shuffle_buffer), count))


def pass_length(counts: list[int], n_pipelines: int, index: int) -> tuple[int, bool]:
    """(records one pass over the data gives pipeline `index` of `n_pipelines`, by file?).

    Mirrors `read_records`: by file, pipeline i reads files i, i+n, ...; by data
    it keeps every n-th record of the whole stream, starting at record i.
    """
    if n_pipelines > 1 and len(counts) >= n_pipelines:
        return sum(counts[index::n_pipelines]), True
    total = sum(counts)
    return (total - index + n_pipelines - 1) // n_pipelines, False


PASS_SEED_STRIDE = 1_000_003  # pass d of seed s shuffles with s * stride + d: distinct for any d < stride


def resumable_stream(shards: list[dict], *, seed, cache: bool, shuffle_buffer: int, input_context,
                      skip: int, training: bool, repeat: bool):
    """Serialized training records, endlessly, whose position is one integer.

    Why not tf.data iterator checkpointing: Keras fit owns its iterator (there is
    no public way to save or restore it), a distributed iterator cannot be
    checkpointed, and the saved state would hold the shuffle buffer and every
    prefetched batch (tens of MB of decoded images per checkpoint). Instead, pass
    d over the data (one "data epoch") is shuffled, files and records, with its
    own seed derived from (seed, d), so pass d starts without replaying passes
    0..d-1, and its record order is a pure function of (seed, d). Resuming at
    record `skip` = pass skip // L, then `skip % L` records of it read and dropped
    before the decode (I/O only, at most one pass). A checkpoint then costs two
    integers; a resume costs reading at most one pass of encoded records.
    Records that fail to decode are dropped after the skip, so a resume after k
    such failures in the current pass repeats k records (their count is reported).
    """
    if not (training and repeat and seed is not None):
        raise UsageError("a resumable stream (skip=) needs training=True, repeat=True and an int seed")
    n, index = 1, 0
    if input_context is not None:
        n, index = input_context.num_input_pipelines, input_context.input_pipeline_id
    files = [s["path"] for s in shards]
    length, by_file = pass_length([int(s["count"]) for s in shards], n, index)
    if length < 1:
        raise DatasetError(f"input pipeline {index} of {n} gets no training records")
    buf = shuffle_size(shards, shuffle_buffer, n, by_file)
    first, offset = divmod(int(skip), length)
    seed = int(seed)
    cached = None
    if cache:  # one read, in a fixed order; each pass reshuffles the cached records
        cached = read_records(files, training=True, seed=seed, deterministic=True,
                               input_context=input_context)[0].cache()

    def one_pass(d):
        # Traced as a graph, so this sets the seed of this function's graph only. Without it, a
        # global seed of 0 (keras.utils.set_random_seed(0)) makes tf's get_seed compare the
        # tensor pass_seed with 0 in Python and fail; any fixed value keeps the order a pure
        # function of (seed, d).
        tf.random.set_seed(PASS_SEED_STRIDE)
        pass_seed = seed * PASS_SEED_STRIDE + d
        records = cached if cached is not None else read_records(
            files, training=True, seed=pass_seed, deterministic=True, input_context=input_context)[0]
        return records.shuffle(buf, seed=pass_seed, reshuffle_each_iteration=False)

    ds = tf.data.Dataset.range(first, 2 ** 62).flat_map(one_pass)
    return ds.skip(offset) if offset else ds


DECODE_CHUNK = 16  # records per decode task (see decode_skipping_failures)
# Chunks of serialized records kept ready for the decoders, per chunk in flight (see decode_skipping_failures).
READY_CHUNKS_PER_DECODER = 2


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity mask (taskset, a container's cpuset), not the host's count.

    os.cpu_count() counts the host: pinned to 2 of 64 CPUs, a pipeline sized by it
    would keep 64 decode chunks in flight on 2 CPUs (memory, and a long wait for
    the first batch). TensorFlow sizes its own pools from the mask.
    """
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover  (no affinity API: macOS, Windows)
        return max(1, os.cpu_count() or 1)


# Chunks decoded at once, per CPU. Each chunk is decoded by one thread, record after record, and
# (deterministic order) the interleave hands them out in turn, so with one chunk per CPU a CPU
# idles whenever its chunk waits for its turn or for input. Measured on 2 CPUs (bench/minimal.py,
# --short-side 224 shards, flip,rrc, 5 rounds, two runs each): 1 per CPU busy 72% / 98%,
# 1,990 / 2,076 images/s; 2 per CPU busy 99% / 99%, 2,841 / 2,924 images/s, CPU per image
# 4-10% lower. More chunks buffer more decoded images (block_length each, ~0.6 MB per 224 px
# float image), hence the cap: 64 chunks hold ~600 MB on a host with 32 or more CPUs.
DECODE_CHUNKS_PER_CPU = 2
MAX_DECODE_CHUNKS = 64


def pipeline_options(options: tf.data.Options) -> tf.data.Options:
    """`options` with tf.data's autotuning model switched off (every parallel step here sizes itself).

    Measured on this project's 2-CPU machine, 10 passes over 1,000 --short-side 224 records per
    setting, each process pinned to one CPU: with autotuning on, ours AND the textbook pipeline
    (bench/minimal.py) left the CPU idle for 25-35% of the time in 3-6 passes out of 10. In those
    passes the process's CPU seconds over wall seconds were 0.62-0.77 and /proc/stat showed the CPU
    idle, not stolen. This happened even with every parallelism fixed, so it comes from the
    autotuning runtime, not from the values it picks. With autotuning off it was 1.00 in every pass,
    and 0.98-0.99 on 2 CPUs.

    What AUTOTUNE still means with the model off: a parallel step given AUTOTUNE runs min(16, CPUs)
    calls, counted where the pipeline runs (on a tf.data service worker, that worker's CPUs); a
    prefetch buffer given AUTOTUNE still grows when its consumer finds it empty (the prefetch op's
    own tuner does not need the model), so the shard read-ahead still adapts to slow storage. The
    decode interleave and the shard readers give their parallelism explicitly.
    """
    options.autotune.enabled = False
    return options


def decode_chunks_in_flight(cpus: int) -> int:
    """Chunks decoded in parallel on `cpus` CPUs: two per CPU, at least two (one slow chunk must
    not stall the batch), at most MAX_DECODE_CHUNKS."""
    return min(MAX_DECODE_CHUNKS, max(2, DECODE_CHUNKS_PER_CPU * cpus))


def decode_skipping_failures(records, decode, deterministic: bool):
    """records -> decode(record) for every record that decodes; failures dropped.

    ignore_errors() drops an element for ANY error from upstream, including a
    DataLossError of a corrupted shard, after which the TFRecord reader stops:
    the rest of that shard would vanish silently every epoch. So the records are
    cut into chunks and each chunk is decoded by its own small dataset whose
    ignore_errors() sees nothing but decode errors; read errors still reach the
    caller. Chunks are decoded in parallel by interleave (block_length = chunk,
    so with deterministic=True the record order is unchanged); one dataset per
    chunk rather than per record keeps the overhead negligible (per record:
    measured -40% throughput; per 16: within noise of a plain parallel map).

    The chunks are read ahead of the decoders (a fixed count, READY_CHUNKS_PER_DECODER
    per chunk in flight: 128 records on 2 CPUs, ~45 ms of decoding at ~2,800 images/s, and
    the same time on more CPUs, which drain it faster): a read that waits on the
    disk (a shard's buffer refill, the next shard's first read) then costs the
    decoders nothing, in eval too, where no shuffle buffer stands between. Each
    shard's own read-ahead (READ_AHEAD) adapts to slower storage; this one is there
    from the first record, before any autotuning.
    """
    def decode_chunk(chunk):
        return tf.data.Dataset.from_tensor_slices(chunk).map(decode).ignore_errors()

    decoders = decode_chunks_in_flight(usable_cpus())
    return records.batch(DECODE_CHUNK).prefetch(READY_CHUNKS_PER_DECODER * decoders).interleave(
        decode_chunk,
        cycle_length=decoders,
        block_length=DECODE_CHUNK,
        num_parallel_calls=decoders,
        deterministic=deterministic,
    )


