"""MultiWorkerMirroredStrategy, in process: each worker's input pipeline has its own seed
stream (utils.train.data.pipeline_seed), and a non-chief's resume state is the chief's
(Checkpoint.load(share=...), distribute.from_chief). The two-worker runs are in
test_multiworker_resume.py."""
import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import encode_image, write_dataset
from utils.train import augment_step, config, distribute
from utils.train.data import make_datasets, pipeline_seed
from utils.train.phases import Phase

# ----------------------------------------------------------------- the seed of each worker's pipeline


def test_pipeline_seed_is_its_first_replicas():
    def ctx(pipelines, pid, replicas):
        return tf.distribute.InputContext(num_input_pipelines=pipelines, input_pipeline_id=pid,
                                          num_replicas_in_sync=replicas)

    assert pipeline_seed(5, None) == 5 and pipeline_seed(None, ctx(2, 1, 2)) is None
    assert pipeline_seed(5, ctx(1, 0, 4)) == 5             # MirroredStrategy: one pipeline, --seed
    assert [pipeline_seed(5, ctx(2, i, 2)) for i in range(2)] == [5, 5 + 7919]
    # two workers of 2 replicas each: worker 1 feeds replicas 2 and 3, its seed is replica 2's
    assert pipeline_seed(5, ctx(2, 1, 4)) == augment_step.replica_seed(5, 2) == 5 + 2 * 7919


class TwoPipelines:
    """A stand-in for a two-worker strategy (one replica each): the datasets of pipelines 0 and 1."""

    num_replicas_in_sync = 2

    def distribute_datasets_from_function(self, fn):
        return [fn(tf.distribute.InputContext(2, i, 2)) for i in range(2)]


@pytest.fixture(scope="module")
def same_images(tmp_path_factory):
    """2 train shards of 8 records that all hold ONE image: batches differ only by their random draws."""
    from utils.dataset import schema

    img = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    png = encode_image(img, "png")
    shards = [[schema.serialize([png], "png", 32, 32, 3, [0], f"s{s}-{i}") for i in range(8)] for s in range(2)]
    return write_dataset(str(tmp_path_factory.mktemp("same") / "same"), {"train": shards}, class_names=["a", "b"])


def first_images(ds, n=2):
    """The images of the first `n` batches, computed on one thread (the batch op's stateful draws
    then go to the batches in order)."""
    options = tf.data.Options()
    options.threading.private_threadpool_size = 1
    options.threading.max_intra_op_parallelism = 1
    return np.concatenate([x.numpy() for x, _ in ds.with_options(options).take(n)])


def train_pipelines(cfg, strategy):
    return make_datasets(cfg, {"channels": 3}, strategy, Phase("main", 0, 1, "all", 1.0, 32), None,
                         val_repeat=False, validate=False)[0]


@pytest.mark.slow  # ~20 s here: four pipelines, each compiling the color op with XLA
def test_each_worker_draws_its_own_augmentation_worker_0_as_before(same_images):
    from utils.input.pipeline import make_dataset

    # color: a batch op (the pipeline's under --augment-on cpu) whose draws are reproducible in one
    # process; the per-image decode-time ops' are not (a parallel map hands its draws out in
    # scheduling order), so their seeds are checked in the next test
    cfg = dict(config.defaults(), data=same_images, augment="color", augment_on="cpu", seed=3, head="softmax",
               batch_size=4, shuffle_buffer=8)
    w0, w1 = train_pipelines(cfg, TwoPipelines())
    a, b = first_images(w0), first_images(w1)
    assert a.shape == b.shape == (4, 32, 32, 3)
    assert np.abs(a - b).mean() > 1.0  # one image everywhere: only the draws can differ

    # worker 0, and a run without a strategy, draw exactly what they drew before (seed = --seed)
    def today(ctx):
        return make_dataset(same_images, "train", image_size=(32, 32), batch_size=2, training=True, augment="color",
                            shuffle_buffer=8, repeat=True, drop_remainder=True, input_context=ctx, skip=0, seed=3,
                            channels=3, fold=None)

    np.testing.assert_array_equal(a, first_images(today(tf.distribute.InputContext(2, 0, 2))))
    single = train_pipelines(dict(cfg, batch_size=2), tf.distribute.get_strategy())
    np.testing.assert_array_equal(first_images(single), first_images(today(None)))


@pytest.mark.parametrize("placement", ["cpu", "device"])
def test_the_seed_each_pipeline_gets(same_images, monkeypatch, placement):
    from utils.train import data

    seeds = []

    def recording(*args, seed=None, input_context=None, training=None, **kw):
        seeds.append((training, None if input_context is None else input_context.input_pipeline_id, seed))
        return "ds"

    monkeypatch.setattr(data, "make_dataset", recording)
    cfg = dict(config.defaults(), data=same_images, augment="flip,rrc,color", augment_on=placement, seed=3)
    phase = Phase("main", 0, 1, "all", 1.0, 32)
    make_datasets(cfg, {"channels": 3}, TwoPipelines(), phase, None, val_repeat=True, validate=True)
    assert seeds == [(True, 0, 3), (True, 1, 3 + 7919), (False, 0, 3), (False, 1, 3)]  # val: no draws, as before
    seeds.clear()
    make_datasets(cfg, {"channels": 3}, tf.distribute.get_strategy(), phase, None, val_repeat=False, validate=True)
    assert seeds == [(True, None, 3), (False, None, 3)]


# ----------------------------------------------------------------- the chief's resume state on every worker


def saved_state(tmp_path, name, value):
    """A resume folder holding a tiny model whose weights are all `value`; returns (folder, its bytes)."""
    import keras

    from utils.train.checkpoint import Checkpoint, read_state_bytes

    inp = keras.Input((3,))
    model = keras.Model(inp, keras.layers.Dense(2)(inp))
    model.compile(optimizer="sgd", loss="mse")
    model.fit(np.ones((2, 3)), np.ones((2, 2)), epochs=1, verbose=0)
    for v in model.weights:
        v.assign(np.full(v.shape, value, "float32"))
    folder = str(tmp_path / f"{name}.resume")
    Checkpoint(folder, str(tmp_path / f"{name}.csv"), {"resume": True}).save_step(value, model, model.optimizer)
    return folder, read_state_bytes(folder)


def test_a_non_chief_takes_the_chiefs_state_never_its_own(tmp_path, capsys):
    from utils.train.checkpoint import Checkpoint

    _, chief_raw = saved_state(tmp_path, "chief", 2)
    own, _ = saved_state(tmp_path, "own", 7)  # a state on the non-chief's own disk
    cfg = {"resume": True}
    seen = []

    def share(raw):
        seen.append(raw)
        return chief_raw

    other = Checkpoint(own, str(tmp_path / "o.csv"), cfg, chief=False)
    other.load(share=share)
    assert seen == [None]  # it did not even read its own file
    assert other.saved["run"]["step"] == 2 and all((w == 2).all() for w in other.saved["model"])
    alone = Checkpoint(own, str(tmp_path / "o.csv"), cfg, chief=False)
    alone.load(share=lambda raw: raw)  # the chief had none: nobody has one
    assert alone.saved is None and capsys.readouterr().err == ""  # and a non-chief prints nothing

    chief = Checkpoint(own, str(tmp_path / "o.csv"), cfg)
    chief.load(share=lambda raw: raw)  # the chief reads its disk (one process: share passes it on)
    assert chief.saved["run"]["step"] == 7


def test_from_chief_is_the_identity_without_multiworker():
    strategy = tf.distribute.get_strategy()
    assert distribute.from_chief(strategy, b"abc") == b"abc" and distribute.from_chief(strategy, None) is None


BROADCAST = """
import json, os, sys
sys.path.insert(0, {root!r})
from utils.train import distribute
strategy = distribute.make_strategy("multiworker")
chief = json.loads(os.environ["TF_CONFIG"])["task"]["index"] == 0
distribute.BROADCAST_WORDS = 100  # 1001 bytes = 251 words: three collectives
data = bytes(range(256)) * 3 + bytes(233) if chief else b"a state of its own"
got = distribute.from_chief(strategy, data)
none = distribute.from_chief(strategy, None if chief else b"x")
empty = distribute.from_chief(strategy, b"" if chief else None)
print(json.dumps([distribute.is_chief(), got == bytes(range(256)) * 3 + bytes(233), len(got),
                  none, empty.decode()]))
"""


@pytest.mark.slow  # two processes forming a cluster: ~10-40 s here
def test_from_chief_sends_the_chiefs_bytes_to_every_worker():
    import json
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT
    from tests.train.test_cli import worker_tf_configs

    procs = [subprocess.Popen([sys.executable, "-c", BROADCAST.format(root=ROOT)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True,
                              env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="",
                                       TF_CONFIG=tf_config))
             for tf_config in worker_tf_configs(2)]
    outs = [p.communicate(timeout=200) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][1][-1500:] + outs[1][1][-1500:]
    got = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    assert got == [[True, True, 1001, None, ""], [False, True, 1001, None, ""]]
