"""Class weights, weighted losses (checked against hand computation) and metrics per head."""
import json

import keras
import numpy as np
import pytest

import model  # noqa: F401
from model.losses import (WeightedBinaryCrossentropy, WeightedCategoricalCrossentropy,
                          class_weights, make_loss)
from model.metrics import make_metrics
from utils.errors import UsageError

EPS = 1e-7


def _np(t):
    return float(np.asarray(t))


# ------------------------------------------------------------------ class_weights

def test_class_weights_none_and_balanced():
    assert class_weights([5, 5], "none") is None
    w = class_weights([6, 3, 0, 1], "balanced")
    # n / (K * count): n = 10, K = 4; an empty class gets 1
    np.testing.assert_allclose(w, [10 / 24, 10 / 12, 1.0, 10 / 4])
    w = class_weights([2, 8], "balanced", num_samples=10, multi_label=True)
    np.testing.assert_allclose(w, [8 / 2, 2 / 8])  # negatives / positives
    # multi-label counts sum to the positive labels, not the samples: no silent guess
    with pytest.raises(ValueError, match="num_samples"):
        class_weights([2, 8], "balanced", multi_label=True)


def test_class_weights_from_files(tmp_path):
    names = ["cat", "dog", "1234"]
    p = tmp_path / "w.json"
    p.write_text(json.dumps([1, 2.5, 4]))
    np.testing.assert_allclose(class_weights([1, 1, 1], str(p)), [1, 2.5, 4])
    p.write_text(json.dumps({"dog": 3, "1234": 0.5}))
    np.testing.assert_allclose(class_weights([1, 1, 1], str(p), class_names=names), [1, 3, 0.5])
    c = tmp_path / "w.csv"
    c.write_text("name,weight\ncat,2\n1234,7\n")
    np.testing.assert_allclose(class_weights([1, 1, 1], str(c), class_names=names), [2, 1, 7])
    c.write_text("cat,2\ndog,3\n")  # no header
    np.testing.assert_allclose(class_weights([1, 1, 1], str(c), class_names=names), [2, 3, 1])


@pytest.mark.parametrize("content,match", [
    ("[1, 2]", "2 weights for 3 classes"),
    ('{"cow": 2}', "unknown class names"),
    ('[1, "x", 2]', "must be numbers"),
    ("[1, -1, 2]", ">= 0"),
    ("{not json", "cannot read"),
])
def test_class_weight_file_errors(tmp_path, content, match):
    p = tmp_path / "w.json"
    p.write_text(content)
    with pytest.raises(UsageError, match=match):
        class_weights([1, 1, 1], str(p), class_names=["cat", "dog", "fox"])


def test_class_weights_bad_mode():
    with pytest.raises(UsageError, match="none, balanced or an existing file"):
        class_weights([1, 2], "balancd")


# ------------------------------------------------------------------ losses by hand

Y = np.array([[1, 0, 0], [0, 0, 1], [0, 0.3, 0.7]], np.float32)  # last row: MixUp-style soft label
P = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.2, 0.5, 0.3]], np.float32)
W = np.array([1.0, 2.0, 4.0], np.float32)


def _hand_softmax(y, p, w, ls=0.0):
    ys = y * (1 - ls) + ls / y.shape[1]
    ce = -(ys * np.log(np.clip(p, EPS, 1 - EPS))).sum(axis=1)
    return float(np.mean(ce * (y * w).sum(axis=1)))


@pytest.mark.parametrize("ls", [0.0, 0.1])
def test_softmax_class_weights_match_hand_computation(ls):
    loss, lw = make_loss("softmax", 3, ["probs"], class_weights=W, label_smoothing=ls)
    assert lw is None
    assert _np(loss(Y, P)) == pytest.approx(_hand_softmax(Y, P, W, ls), rel=1e-5)
    plain, _ = make_loss("softmax", 3, ["probs"], label_smoothing=ls)
    assert _np(plain(Y, P)) == pytest.approx(_hand_softmax(Y, P, np.ones(3, np.float32), ls), rel=1e-5)
    # and it matches Keras' own CE when unweighted
    ref = keras.losses.CategoricalCrossentropy(label_smoothing=ls)(Y, P)
    assert _np(plain(Y, P)) == pytest.approx(_np(ref), rel=1e-5)


def test_softmax_weighting_through_model_evaluate():
    """The loss wired into compile/evaluate gives the hand value on the model's own outputs."""
    inp = keras.Input((4,))
    out = keras.layers.Dense(3, activation="softmax")(inp)
    m = keras.Model(inp, out)
    x = np.random.default_rng(0).normal(size=(3, 4)).astype("float32")
    loss, _ = make_loss("softmax", 3, ["probs"], class_weights=W)
    m.compile(loss=loss)
    got = m.evaluate(x, Y, batch_size=3, verbose=0)
    assert got == pytest.approx(_hand_softmax(Y, m.predict(x, verbose=0), W), rel=1e-5)


def test_sigmoid_positive_weights_match_hand_computation():
    y = np.array([[1, 0, 1], [0, 1, 0]], np.float32)
    p = np.array([[0.9, 0.4, 0.2], [0.3, 0.6, 0.1]], np.float32)
    loss, lw = make_loss("sigmoid", 3, ["probs"], class_weights=W)
    assert lw is None
    per = -(W * y * np.log(p) + (1 - y) * np.log(1 - p))
    assert _np(loss(y, p)) == pytest.approx(float(per.mean()), rel=1e-5)
    plain, _ = make_loss("sigmoid", 3, ["probs"])
    assert _np(plain(y, p)) == pytest.approx(_np(keras.losses.BinaryCrossentropy()(y, p)), rel=1e-5)


def test_focal_losses():
    loss, _ = make_loss("softmax", 3, ["probs"], focal=True, focal_gamma=2.0)
    ref = keras.losses.CategoricalFocalCrossentropy(alpha=1.0, gamma=2.0)(Y, P)
    assert _np(loss(Y, P)) == pytest.approx(_np(ref), rel=1e-5)
    y = np.array([[1, 0, 1], [0, 1, 0]], np.float32)
    p = np.array([[0.9, 0.4, 0.2], [0.3, 0.6, 0.1]], np.float32)
    bloss, _ = make_loss("sigmoid", 3, ["probs"], focal=True, focal_gamma=2.0, class_weights=W)
    focal = -(y * (1 - p) ** 2 * np.log(p) + (1 - y) * p ** 2 * np.log(1 - p))
    hand = (focal * (W * y + (1 - y))).mean()
    assert _np(bloss(y, p)) == pytest.approx(float(hand), rel=1e-4)


def test_per_class_losses_and_weights():
    names = ["c000_a", "c001_b"]
    losses, lw = make_loss("per-class", 2, names, class_weights=[3.0, 0.5], loss_weights=[0.0, 2.0])
    assert set(losses) == set(names) and lw == {"c000_a": 0.0, "c001_b": 2.0}
    y, p = np.array([[1.0], [0.0]], np.float32), np.array([[0.8], [0.4]], np.float32)
    hand = np.mean([-3.0 * np.log(0.8), -np.log(0.6)])
    assert _np(losses["c000_a"](y, p)) == pytest.approx(hand, rel=1e-5)
    with pytest.raises(UsageError):
        make_loss("per-class", 2, names, loss_weights=[1.0])
    with pytest.raises(UsageError):
        make_loss("per-class", 2, names, loss_weights={"nope": 1.0})
    with pytest.raises(UsageError):
        make_loss("softmax", 3, ["probs"], class_weights=[1, 2])


def test_losses_round_trip_config():
    for cls, kw in ((WeightedCategoricalCrossentropy, {"class_weights": [1, 2]}),
                    (WeightedBinaryCrossentropy, {"pos_weights": [2, 3], "focal": True})):
        obj = cls(label_smoothing=0.1, **kw)
        again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(obj))
        assert type(again) is cls and again.get_config() == obj.get_config()


# ------------------------------------------------------------------ metrics

def test_metrics_per_head():
    assert [m.name for m in make_metrics("softmax", 3, ["probs"])] == ["accuracy"]
    assert [m.name for m in make_metrics("softmax", 10, ["probs"])] == ["accuracy", "top5"]
    assert [m.name for m in make_metrics("sigmoid", 4, ["probs"])] == ["f1", "f2", "auc"]
    per = make_metrics("per-class", 2, ["c000_a", "c001_b"])
    assert set(per) == {"c000_a", "c001_b"}
    assert [m.name for m in per["c000_a"]] == ["acc", "auc"]
    assert per["c000_a"][0] is not per["c001_b"][0]


def test_macro_f1_f2_values():
    f1, f2, _ = make_metrics("sigmoid", 2, ["probs"])
    y = np.array([[1, 0], [1, 1], [0, 1]], np.float32)
    p = np.array([[0.9, 0.2], [0.2, 0.8], [0.1, 0.7]], np.float32)
    f1.update_state(y, p)
    f2.update_state(y, p)
    # class 0: tp1 fn1 fp0 -> P=1 R=.5 ; class 1: tp2 -> 1
    assert _np(f1.result()) == pytest.approx((2 * 0.5 / 1.5 + 1) / 2, rel=1e-5)
    assert _np(f2.result()) == pytest.approx((5 * 0.5 / (4 + 0.5) + 1) / 2, rel=1e-5)
