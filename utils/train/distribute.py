"""Where a run computes: the tf.distribute strategy, the chief, per-worker folders, precision.

Multi-worker: every worker runs the same save calls (reading distributed
variables may need collectives on all workers), but only the chief writes
to model_save/ and log/; the others write into a throw-away temp dir. So only
the chief has a resume state: `from_chief` sends it to the others through the
strategy's collectives (no shared storage needed), and every worker starts
from exactly those bytes; a chief that cannot read them sends its error, so
every worker fails together. The chief is `is_chief` (TF_CONFIG) everywhere.
"""
from __future__ import annotations

import json
import os
import tempfile

import keras
import numpy as np
import tensorflow as tf

from utils.errors import UsageError


def tf_config() -> dict:
    """The TF_CONFIG environment variable as a dict ({} when unset).

    Raises:
        UsageError: TF_CONFIG is set but is not JSON.
    """
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except ValueError:
        raise UsageError("TF_CONFIG is not valid JSON") from None


def is_chief(cluster_config: dict | None = None) -> bool:
    """The chief is task 'chief', or worker 0 when the cluster has no chief.

    Args:
        cluster_config: a parsed TF_CONFIG; None reads the environment.
    """
    cluster_config = tf_config() if cluster_config is None else cluster_config
    task = cluster_config.get("task") or {}
    if not task:
        return True
    cluster = cluster_config.get("cluster") or {}
    if task.get("type") == "chief":
        return True
    return task.get("type") == "worker" and int(task.get("index", 0)) == 0 and "chief" not in cluster


def make_strategy(name: str) -> tf.distribute.Strategy:
    """The strategy for --strategy; create it before any other TF work (MultiWorker needs that).

    Args:
        name: auto (MultiWorker when TF_CONFIG lists >1 worker, Mirrored with >1 GPU,
            else the default strategy), mirrored, multiworker or none.

    Raises:
        UsageError: multiworker without a TF_CONFIG cluster, or an unknown name.
    """
    cluster = tf_config().get("cluster") or {}
    workers = sum(len(v) for k, v in cluster.items() if k in ("chief", "worker"))
    if name == "auto":
        if workers > 1:
            name = "multiworker"
        else:
            name = "mirrored" if len(tf.config.list_physical_devices("GPU")) > 1 else "none"
    if name == "none":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":
        if not cluster:
            raise UsageError("--strategy multiworker needs TF_CONFIG with a cluster and this task")
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise UsageError(f"unknown strategy {name!r}")


def is_distributed(strategy) -> bool:
    """More than one replica, or several workers (datasets then come per replica)."""
    return strategy.num_replicas_in_sync > 1 or isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def distributed_dataset(strategy, make, global_batch: int):
    """A dataset distributed over the strategy's replicas.

    The pipeline shards by file (or by record when files are too few) using the
    InputContext, so tf.data's autosharding never runs (and never warns).

    Args:
        make: `make(batch_size, input_context)` -> tf.data.Dataset; called once
            (input_context None) without a distributed strategy.
        global_batch: images per step over all replicas.
    """
    if not is_distributed(strategy):
        return make(global_batch, None)

    def fn(ctx: tf.distribute.InputContext):
        return make(ctx.get_per_replica_batch_size(global_batch), ctx)

    return strategy.distribute_datasets_from_function(fn)


def fix_multiworker_build(model, strategy) -> None:
    """Work around two Keras 3.15 + MultiWorkerMirroredStrategy failures in fit().

    1. Before training, Keras's TF trainer takes one batch to build metrics and
       losses and, when its values are PerReplica, calls
       `strategy.reduce("MEAN", batch)` on the whole (images, labels) tuple,
       which the multi-worker cross-device reduce cannot convert ("unsupported
       type PerReplica"; cf. keras-team/keras#20329). Only shapes and dtypes
       matter for that build, so an instance-level override uses the first
       local replica's values instead.
    2. Per-step logs are reduced with a hard-coded
       `strategy.reduce("MEAN", v, axis=0)`, which fails on scalar metrics
       ("Invalid reduction dimension 0"; tensorflow/tensorflow#72388). The step
       logs are given shape [1] so that reduce works (a mean over workers).
       The EPOCH logs (what our callbacks, CSV and best-model choice use) do
       not depend on this: Keras re-reads them from the metric variables in
       cross-replica context, where sync-on-read variables sum over all
       workers, so they are exact global values.

    Remove each part when its upstream issue is fixed in the pinned Keras / TF
    (requirements.txt): tests/train/test_cli.py's two-worker run fails without it.
    """
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return

    def local(x):
        if isinstance(x, tf.distribute.DistributedValues):
            return strategy.experimental_local_results(x)[0]
        return x

    def maybe_symbolic_build(iterator=None, data_batch=None):
        if iterator is not None:
            for _, _, it in iterator:
                data_batch = tf.nest.map_structure(local, next(it))
                break
        with strategy.scope():
            model._symbolic_build(data_batch=data_batch)

    def rank1(step):
        def wrapped(data):
            return {k: tf.reshape(v, [1]) if tf.is_tensor(v) and v.shape.rank == 0 else v
                    for k, v in step(data).items()}
        return wrapped

    model._maybe_symbolic_build = maybe_symbolic_build
    model.train_step = rank1(model.train_step)
    model.test_step = rank1(model.test_step)


BROADCAST_WORDS = 1 << 22  # int32 words (16 MB) per collective: a large state goes in pieces
NONE, BYTES, FAILED = 0, 1, 2  # what the chief sends (the header's status word)


def _sum_over_replicas(strategy, array: np.ndarray, send: bool) -> np.ndarray:
    """An all-reduce SUM where only this process's first replica gives `array` when `send`, every other zeros.

    With exactly one process sending, that is a broadcast (exact for ints).
    """
    ids = strategy.experimental_distribute_values_from_function(lambda ctx: ctx.replica_id_in_sync_group)
    first = min(strategy.experimental_local_results(ids))

    def value(ctx):
        return tf.constant(array if send and ctx.replica_id_in_sync_group == first else np.zeros_like(array))

    per_replica = strategy.experimental_distribute_values_from_function(value)
    return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None).numpy()


def _broadcast_bytes(strategy, data: bytes, size: int, send: bool) -> bytes:
    """`data` (`size` bytes) from the sending process to every worker, in pieces of BROADCAST_WORDS."""
    words = -(-size // 4)
    buf = np.frombuffer(data.ljust(words * 4, b"\0"), np.int32) if send else np.zeros(words, np.int32)
    pieces = [_sum_over_replicas(strategy, buf[i:i + BROADCAST_WORDS], send) for i in range(0, words, BROADCAST_WORDS)]
    return b"".join(p.astype(np.int32).tobytes() for p in pieces)[:size]


def from_chief(strategy, data: bytes | None | Exception) -> bytes | None:
    """The chief's `data` on every worker; just `data` without MultiWorkerMirroredStrategy.

    The chief is `is_chief()` (TF_CONFIG), the same test that decides which
    worker reads and writes the resume state. What a non-chief passes is
    ignored (a state on its own disk must not win). Every worker must call it
    at the same point (it is a collective): first a header (how many workers
    send, a status, a length), then the bytes. So a chief that could not read
    its data still takes part, and every worker fails together instead of
    waiting in the collective for bytes that never come.

    Args:
        data: on the chief, bytes; None (then every worker gets None); or the
            error that stopped it reading them (then every worker raises).

    Returns:
        the chief's bytes, or None.

    Raises:
        UsageError: on every worker, when the chief passed an error (its
            message; on the others prefixed `on the chief:`), or when TF_CONFIG
            names not exactly one chief. Without MultiWorker, `data` itself
            when it is an error.
    """
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        if isinstance(data, Exception):
            raise data
        return data
    chief = is_chief()
    payload, status = b"", NONE
    if chief and isinstance(data, Exception):
        payload, status = (str(data) or type(data).__name__).encode(), FAILED
    elif chief and data is not None:
        payload, status = data, BYTES
    senders, status, size = (int(v) for v in _sum_over_replicas(
        strategy, np.array([1, status, len(payload)], np.int64), chief))
    if senders != 1:
        raise UsageError(f"TF_CONFIG makes {senders} workers the chief: exactly one must be (task 'chief', "
                         "or worker 0 when the cluster has none)")
    got = _broadcast_bytes(strategy, payload, size, chief)
    if status == FAILED:
        if chief:
            raise data
        raise UsageError(f"on the chief: {got.decode(errors='replace')}")
    return got if status == BYTES else None


def worker_dir(base: str, chief: bool) -> str:
    """Where this worker writes: `base` on the chief, a temp dir elsewhere."""
    if chief:
        return base
    return tempfile.mkdtemp(prefix="imgcls-worker-")


def use_mixed_precision() -> None:
    """--mixed-precision: float16 compute on GPU, bfloat16 on CPU; variables stay float32."""
    keras.mixed_precision.set_global_policy(
        "mixed_float16" if tf.config.list_physical_devices("GPU") else "mixed_bfloat16")
