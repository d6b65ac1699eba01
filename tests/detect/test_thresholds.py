"""utils/detect/thresholds.py on its own: applying, tuning, reading and choosing thresholds (no TensorFlow)."""
import json

import numpy as np
import pytest

from utils.detect.thresholds import (fbeta_from_counts, load_thresholds, passes, resolve_thresholds,
                                     save_thresholds, tune_thresholds)
from utils.errors import UsageError

CLASSES = ["red", "green", "blue"]


def test_fbeta_counts_and_zero_division():
    f = fbeta_from_counts(np.array([2, 0]), np.array([1, 0]), np.array([1, 0]), 1.0)
    assert f[0] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert f[1] == 0.0          # nothing true, nothing predicted: 0, not NaN
    # F2 weighs recall: missing positives costs more than false alarms
    assert fbeta_from_counts(1, 0, 1, 2.0) < fbeta_from_counts(1, 1, 0, 2.0)


def test_passes_compares_in_float64():
    p = np.float32(0.3)
    t = (float(p) + float(np.nextafter(p, np.float32(1)))) / 2     # between two float32 values
    assert not passes(np.array([p]), [t])[0]                        # in float32, t may round to p
    assert passes(np.array([[0.5, 0.2]]), 0.2).tolist() == [[True, True]]


def test_tuned_thresholds_beat_default_on_tuning_data():
    from utils.detect.evaluate import macro_fbeta, predict_labels

    rng = np.random.default_rng(0)
    y = (rng.random((200, 6)) < 0.3).astype(np.float32)
    y[:, 5] = 0                                    # a class with no positives keeps the default
    # informative but shifted scores: 0.5 is a poor cut for most classes
    p = np.clip(0.15 + 0.3 * y + 0.25 * rng.random(y.shape), 0, 1).astype(np.float32)
    for beta in (1.0, 2.0):
        t, scores = tune_thresholds(y, p, beta=beta)
        assert len(t) == 6 and t[5] == 0.5
        tuned = macro_fbeta(y, predict_labels(p, True, t), beta)
        base = macro_fbeta(y, predict_labels(p, True, 0.5), beta)
        assert tuned >= base
        assert tuned > base + 0.1                  # the shift is large: tuning must find it
        assert tuned == pytest.approx(scores.mean())  # reported score = score of the returned thresholds


def test_tuning_handles_ties_and_perfect_separation():
    y = np.array([[1], [1], [0], [0]], dtype=np.float32)
    p = np.array([[.3], [.3], [.2], [.2]], dtype=np.float32)
    t, s = tune_thresholds(y, p)
    assert 0.2 < t[0] <= 0.3 and s[0] == 1.0


def test_thresholds_file_matched_by_class_name(tmp_path):
    """A saved NAME.thresholds.json is applied by class name; unknown classes are an error."""
    path = save_thresholds(str(tmp_path / "m.thresholds.json"), ["blue", "red", "green"], [0.1, 0.2, 0.3], "f1", 0.9)
    assert load_thresholds(path, CLASSES) == [0.2, 0.3, 0.1]
    other = save_thresholds(str(tmp_path / "o.thresholds.json"), ["a", "b", "c"], [0.1, 0.2, 0.3], "f1", 0.9)
    with pytest.raises(UsageError, match="'a' that the model does not know"):
        load_thresholds(other, CLASSES)
    extra = tmp_path / "extra.csv"
    extra.write_text('class,threshold\nred,0.1\ngreen,0.2\nblue,0.3\n"pink, light",0.4\n')
    with pytest.raises(UsageError, match="'pink, light'"):
        load_thresholds(str(extra), CLASSES)
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps([0.1, 0.2, 0.3]))
    assert load_thresholds(str(plain), CLASSES) == [0.1, 0.2, 0.3]
    for bad in ({"red": 0.1, "green": "high", "blue": 0.3}, [0.1, None, 0.3]):
        plain.write_text(json.dumps(bad))
        with pytest.raises(UsageError, match="is not a number"):
            load_thresholds(str(plain), CLASSES)


class _Member:
    class_names = CLASSES

    def __init__(self, tuned=None):
        self.meta = {"thresholds": tuned}


def test_resolve_order_flag_file_tuned_default(tmp_path):
    plain = tmp_path / "t.json"
    plain.write_text(json.dumps([0.1, 0.2, 0.3]))
    tuned = _Member([0.4, 0.5, 0.6])
    assert resolve_thresholds([tuned], threshold=0.7, thresholds_file=str(plain)) == [0.7] * 3
    assert resolve_thresholds([tuned], thresholds_file=str(plain)) == [0.1, 0.2, 0.3]
    assert resolve_thresholds([tuned]) == [0.4, 0.5, 0.6]
    assert resolve_thresholds([tuned, _Member()]) == [0.5] * 3     # tuned for one model, not the ensemble
    with pytest.raises(UsageError, match="thresholds file not found"):
        resolve_thresholds([tuned], thresholds_file=str(tmp_path / "none.json"))


def test_tune_and_save_one_model_and_an_ensemble(tmp_path):
    """One model: NAME.thresholds.json + NAME.json get them; an ensemble: only the given path."""
    from model.meta import load_meta, save_meta
    from utils.detect.thresholds import tune_and_save

    class Saved(_Member):
        def __init__(self, path):
            super().__init__()
            self.path = path
            self.meta = {"class_names": CLASSES, "thresholds": None}
            save_meta(path, self.meta)

    y = np.array([[1, 0, 1], [0, 1, 1], [1, 1, 0], [0, 0, 1]], np.float32)
    p = np.array([[.4, .1, .9], [.2, .3, .8], [.45, .35, .1], [.1, .05, .6]], np.float32)
    one = Saved(str(tmp_path / "m.h5"))
    thresholds, score, path = tune_and_save([one], y, p, "f2", str(tmp_path / "ens.thresholds.json"))
    assert path == str(tmp_path / "m.thresholds.json") and score == 1.0
    assert load_meta(one.path)["thresholds"] == thresholds == json.loads(open(path).read())["thresholds"]
    assert not passes(p, thresholds)[y == 0].any() and passes(p, thresholds)[y == 1].all()
    other = Saved(str(tmp_path / "o.h5"))
    _, _, path = tune_and_save([one, other], y, p, "f1", str(tmp_path / "ens.thresholds.json"))
    assert path == str(tmp_path / "ens.thresholds.json") and load_meta(other.path)["thresholds"] is None
