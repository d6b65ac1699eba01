"""Which arrays a train step changes: --layers heads / all / REGEX, and per-class loss weights."""
import keras
import numpy as np
import pytest

import model  # noqa: F401
from model.build import _leaf_layers, build_model, get_backbone, set_trainable
from model.heads import output_names
from model.losses import make_loss
from utils.errors import UsageError

SIZE = 32
BATCH = 4


def _data(k=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 255, (BATCH, SIZE, SIZE, 3)).astype("float32")
    y = np.eye(k, dtype="float32")[rng.integers(0, k, BATCH)]
    return x, y


def _snapshot(layers):
    """{(layer name, weight index): copy} for every weight array, trainable or not."""
    return {(l.name, i): np.array(w.numpy()) for l in layers for i, w in enumerate(l.weights)}


def _changed(before, layers):
    after = _snapshot(layers)
    return {key for key in before if not np.array_equal(before[key], after[key])}


def _step(m, x, y, loss=None, loss_weights=None):
    if loss is None:
        loss, loss_weights = make_loss("softmax", 3, ["probs"])
    # eager: one step does not repay tracing + optimising the whole training graph
    m.compile(optimizer=keras.optimizers.Adam(1e-2), loss=loss, loss_weights=loss_weights, run_eagerly=True)
    m.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)


@pytest.fixture(scope="module")
def data():
    return _data()


def test_heads_freezes_backbone_including_bn_statistics(data):
    m = build_model("densenet121", 3, input_size=SIZE)
    n = set_trainable(m, "heads")
    assert n == len(m.trainable_weights) == 2  # head_logits kernel + bias
    bb = get_backbone(m)
    bn_stats = [w for l in _leaf_layers(bb) if isinstance(l, keras.layers.BatchNormalization)
                for w in l.non_trainable_weights]
    assert bn_stats  # the moving means/variances the check below covers
    before_bb, before_all = _snapshot(_leaf_layers(bb)), _snapshot(_leaf_layers(m))
    _step(m, *data)
    assert _changed(before_bb, _leaf_layers(bb)) == set()
    assert {k[0] for k in _changed(before_all, _leaf_layers(m))} == {"head_logits"}


def test_all_trains_backbone_and_head(data):
    m = build_model("densenet121", 3, input_size=SIZE)
    assert set_trainable(m, "all") == len(m.trainable_weights) > 100
    bb = get_backbone(m)
    before = _snapshot(_leaf_layers(m))
    _step(m, *data)
    changed = _changed(before, _leaf_layers(m))
    assert ("head_logits", 0) in changed
    bb_keys = [k for k in before if k[0] in {l.name for l in _leaf_layers(bb)}]
    bb_changed = [k for k in bb_keys if k in changed]
    # every backbone array moves: conv kernels, BN gamma/beta AND moving statistics
    assert len(bb_changed) == len(bb_keys)
    assert ("conv1_bn", 2) in changed  # moving_mean of the stem BN


def test_regex_trains_only_matching_layers(data):
    m = build_model("densenet121", 3, input_size=SIZE)
    pattern = r"^conv5_block16_|^head_"
    n = set_trainable(m, pattern)
    matching = [l for l in _leaf_layers(m) if l.weights and __import__("re").search(pattern, l.name)]
    assert n == sum(len(l.trainable_weights) for l in matching) > 2
    before = _snapshot(_leaf_layers(m))
    _step(m, *data)
    changed_layers = {k[0] for k in _changed(before, _leaf_layers(m))}
    assert changed_layers == {l.name for l in matching}


def test_regex_errors_are_usage_errors():
    m = build_model("resnet50", 3, input_size=SIZE)
    with pytest.raises(UsageError, match="matches no layer"):
        set_trainable(m, "^no_such_layer$")
    with pytest.raises(UsageError, match="regex"):
        set_trainable(m, "conv[")


def test_per_class_head_outputs_and_zero_loss_weight():
    names_ = ["red dress", "red/dress", "shoe"]
    m = build_model("densenet121", 3, input_size=SIZE, head="per-class", class_names=names_)
    outs = output_names("per-class", 3, names_)
    assert outs == ["c000_red_dress", "c001_red_dress", "c002_shoe"]
    assert list(m.output_names) == outs and len(m.outputs) == 3
    assert all(tuple(o.shape) == (None, 1) for o in m.outputs)
    set_trainable(m, "heads")
    loss, lw = make_loss("per-class", 3, outs, class_weights=[1.0, 2.0, 3.0], loss_weights={outs[0]: 0.0})
    assert lw == {outs[0]: 0.0, outs[1]: 1.0, outs[2]: 1.0}
    x, _ = _data()
    rng = np.random.default_rng(1)
    y = {o: rng.integers(0, 2, (BATCH, 1)).astype("float32") for o in outs}
    before = _snapshot(_leaf_layers(m))
    _step(m, x, y, loss, lw)
    changed = {k[0] for k in _changed(before, _leaf_layers(m))}
    assert not any(name.startswith(f"head_{outs[0]}_") for name in changed)
    for o in outs[1:]:
        assert {f"head_{o}_fc", f"head_{o}_logit"} <= changed


def test_all_after_heads_unfreezes_the_backbone():
    from model import build

    m = build.build_model("densenet121", 3, input_size=32, weights="none")
    n_all = build.set_trainable(m, "all")
    assert build.set_trainable(m, "heads") < n_all
    assert build.set_trainable(m, "all") == n_all  # freeze-then-fine-tune really fine-tunes the backbone
