"""utils/detect/stream.py: streaming prediction, TTA views, product rows."""
import itertools

import numpy as np
import pytest

from tests.detect.common import image_bytes
from utils.detect.inputs import InputSpec, Sample
from utils.detect.models import Member, open_predictor
from utils.detect.stream import VIEWS, Row, fill_missing_products, group_rows, predict_stream, tta_views
from utils.errors import UsageError


def test_prediction_streams_without_reading_all_input(h5_model):
    """Rows come out while the input is still being read: an endless input yields its first rows."""
    data = image_bytes(1)
    read = []

    def samples():
        for i in itertools.count():
            read.append(i)
            yield Sample(f"s{i}", (lambda: [data]))

    member = Member(open_predictor(h5_model))
    spec = InputSpec("endless", None, samples)
    rows = predict_stream([member], [spec], batch_size=4, progress=False)
    first = list(itertools.islice(rows, 10))
    rows.close()
    assert [r.id for r in first] == [f"s{i}" for i in range(10)]
    assert len(read) < 200          # only a few batches ahead (prefetch), not the whole input


class _Fixed:
    """A predictor of the models.py contract that answers the mean pixel value per channel."""

    def __init__(self, meta):
        self.path, self.meta, self.calls = "fixed", meta, []

    def __call__(self, x):
        x = np.asarray(x)
        self.calls.append(x.shape)
        return x.mean(axis=(1, 2)) / 255.0


def _vanished():
    raise OSError("vanished")


def test_any_predictor_of_the_contract_streams_and_skips_bad_input():
    """A non-Keras predictor is fed [B*V, h, w, C] floats; unreadable and undecodable samples are skipped."""
    good = image_bytes(2)
    samples = [Sample("a", lambda: [good]), Sample("bad", lambda: [b"not an image"], rereadable=True),
               Sample("gone", _vanished), Sample("b", lambda: [good])]
    predictor = _Fixed({"class_names": ["r", "g", "b"], "input_size": [24, 24], "channels": 3})
    skipped = []
    rows = list(predict_stream([Member(predictor)], [InputSpec("x", 4, lambda: iter(samples))], tta=2,
                               batch_size=8, skipped=skipped, progress=False))
    assert [r.id for r in rows] == ["a", "b"]
    np.testing.assert_allclose(rows[0].probs, rows[1].probs)
    assert predictor.calls == [(4, 24, 24, 3)]          # 2 images x 2 views
    assert dict(skipped)["gone"] == "vanished"
    assert dict(skipped)["bad"].startswith("cannot decode image")


def test_tta_views_identity_first_and_bounds():
    import tensorflow as tf

    img = tf.constant(np.arange(8 * 8 * 3, dtype=np.float32).reshape(8, 8, 3))
    views = tta_views(img, len(VIEWS)).numpy()
    assert views.shape == (len(VIEWS), 8, 8, 3)
    np.testing.assert_array_equal(views[0], img.numpy())
    np.testing.assert_array_equal(views[1], img.numpy()[:, ::-1])
    with pytest.raises(UsageError, match="--tta must be"):
        tta_views(img, len(VIEWS) + 1)


def test_group_rows_averages_consecutive_rows_of_a_product():
    rows = [Row("p#0", np.array([1.0, 0.0], np.float32), None, "p"), Row("p#1", np.array([0.0, 1.0], np.float32), None, "p"),
            Row("x", np.array([0.2, 0.8], np.float32), None, None), Row("y", np.array([0.4, 0.6], np.float32), None, None)]
    out = list(group_rows(iter(rows)))
    assert [(r.id, r.views) for r in out] == [("p", 2), ("x", 1), ("y", 1)]   # named after its product
    np.testing.assert_allclose(out[0].probs, [0.5, 0.5])
    assert out[0].probs.dtype == np.float32


def test_missing_product_gets_the_mean_of_the_others(capsys):
    """The cdiscount fallback: a product whose photos all failed gets the other products' mean."""
    rows_in = [Row("1", np.array([0.8, 0.2, 0.0], np.float32), None, "1"),
               Row("3", np.array([0.2, 0.6, 0.2], np.float32), None, "3")]
    filled = list(fill_missing_products(iter(rows_in), [("2#0", "not an image"), ("2#1", "truncated image")]))
    assert [r.id for r in filled] == ["1", "3", "2"]
    np.testing.assert_allclose(filled[2].probs, [0.5, 0.4, 0.1], atol=1e-6)
    assert "1 product(s) have no readable photo" in capsys.readouterr().err


def test_weighted_ensemble_of_two_input_sizes():
    """Members of different input sizes each get their own views; the rows are the weighted sum."""
    encoded = [image_bytes(5), image_bytes(6)]
    spec = InputSpec("x", 2, lambda: iter([Sample("a", lambda: [encoded[0]]), Sample("b", lambda: [encoded[1]])]))
    small = _Fixed({"class_names": ["r", "g", "b"], "input_size": [16, 16]})
    large = _Fixed({"class_names": ["r", "g", "b"], "input_size": [40, 24]})
    alone = {}
    for p in (small, large):
        alone[p.meta["input_size"][0]] = [r.probs for r in predict_stream([Member(p)], [spec], tta=3, progress=False)]
    rows = list(predict_stream([Member(small, 0.75), Member(large, 0.25)], [spec], tta=3, progress=False))
    assert small.calls[-1] == (6, 16, 16, 3) and large.calls[-1] == (6, 40, 24, 3)
    for i, r in enumerate(rows):
        np.testing.assert_allclose(r.probs, 0.75 * alone[16][i] + 0.25 * alone[40][i], rtol=1e-6)
