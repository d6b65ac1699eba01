"""build_training_state: the train step is traced once, and the variables are the lazy path's."""
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

import model  # noqa: F401
from model.build import build_training_state
from model.heads import build_head, output_names
from model.losses import make_loss
from model.metrics import make_metrics

NAMES = ["a", "b", "c"]


def _compiled(head: str):
    keras.utils.set_random_seed(0)
    inp = keras.Input((8,), name="image")
    x = keras.layers.Dense(4, name="feat")(inp)
    m = keras.Model(inp, build_head(x, head, 3, class_names=NAMES))
    outs = output_names(head, 3, NAMES)
    loss, lw = make_loss(head, 3, outs, class_weights=[1.0, 2.0, 3.0])
    m.compile(optimizer=keras.optimizers.AdamW(1e-3), loss=loss, loss_weights=lw, metrics=make_metrics(head, 3, outs))
    return m, outs


def _data(head: str, outs):
    x = np.random.default_rng(0).normal(size=(8, 8)).astype("float32")
    y = np.eye(3, dtype="float32")[np.arange(8) % 3]
    if head == "per-class":
        y = {n: y[:, i:i + 1] for i, n in enumerate(outs)}
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(4).repeat()


def _fit_counting_traces(m, ds) -> int:
    traces = []
    step = m.train_step
    m.train_step = lambda data: (traces.append(1), step(data))[1]  # runs once per trace of the step
    m.fit(ds, steps_per_epoch=2, epochs=1, verbose=0)
    return len(traces)


@pytest.mark.parametrize("head", ["softmax", pytest.param("per-class", marks=pytest.mark.slow)])  # 3 AUCs: 15 s
def test_prebuilt_training_state_traces_the_step_once_with_the_same_variables(head):
    lazy, outs = _compiled(head)
    ds = _data(head, outs)
    lazy_traces = _fit_counting_traces(lazy, ds)

    built, _ = _compiled(head)
    build_training_state(built, ds.element_spec)
    assert built.optimizer.built and len(built.optimizer.variables) == len(lazy.optimizer.variables)
    assert _fit_counting_traces(built, ds) == 1
    # Keras 3.15 traces the lazy path twice (it creates variables in its first trace); when
    # this fails Keras builds them up front and build_training_state can go
    assert lazy_traces == 2
    for what in ("variables", "metrics_variables"):
        assert _paths(getattr(lazy, what)) == _paths(getattr(built, what)), what
    assert _paths(lazy.optimizer.variables) == _paths(built.optimizer.variables)


def _paths(variables):
    """Paths and shapes, without Keras's global name counters (adam_w_1, seed_generator_2)."""
    return [(re.sub(r"_\d+(?=/|$)", "", v.path), tuple(v.shape)) for v in variables]
