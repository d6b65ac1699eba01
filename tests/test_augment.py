"""utils/augment.py: every op on a tiny batch, eagerly and inside tf.data."""
import numpy as np
import pytest
import tensorflow as tf

from utils.input import augment
from utils.errors import UsageError

SIZE = (16, 16)


def batch(b=4, c=3, seed=0):
    rng = np.random.default_rng(seed)
    # smooth-ish images so flips/rotations visibly change pixels
    x = rng.uniform(0, 255, (b, 4, 4, c)).astype(np.float32)
    x = tf.image.resize(x, SIZE).numpy()
    y = tf.one_hot(np.arange(b) % 3, 3).numpy()
    return x, y


def run_both(fn, x, y):
    """fn applied eagerly and in tf.data -> two (images, labels) numpy pairs."""
    eager = fn(tf.constant(x), tf.constant(y))
    ds = tf.data.Dataset.from_tensors((x, y)).map(fn)
    graph = next(iter(ds))
    return [(np.asarray(a), np.asarray(b)) for a, b in (eager, graph)]


@pytest.mark.parametrize("name", ["flip", "rrc", "rotate", "color", "randaugment", "erasing"])
def test_image_op_eager_and_in_tf_data(name):
    x, y = batch()
    kwargs = {"erasing": {"factor": 1.0}, "flip": {"mode": "horizontal_and_vertical"}}.get(name, {})
    fn = augment.build_augmenter({name: kwargs}, SIZE, seed=1)
    assert fn.names == [name]
    for xo, yo in run_both(fn, x, y):
        assert xo.shape == x.shape and xo.dtype == np.float32
        assert 0.0 <= xo.min() and xo.max() <= 255.0
        np.testing.assert_array_equal(yo, y)  # image ops never touch labels
        assert np.abs(xo - x).max() > 1.0, f"{name} changed nothing"


@pytest.mark.parametrize("name", ["mixup", "cutmix"])
def test_mixers_mix_labels_eager_and_in_tf_data(name):
    x, y = batch(b=8)
    kwargs = {"mixup": {"alpha": 1.0}, "cutmix": {"factor": 1.0}}[name]
    fn = augment.build_augmenter({name: kwargs}, SIZE, seed=2)
    mixed_any = False
    for xo, yo in run_both(fn, x, y):
        assert xo.shape == x.shape
        np.testing.assert_allclose(yo.sum(1), 1.0, atol=1e-5)
        mixed_any |= bool(((yo > 0.01) & (yo < 0.99)).any())
    assert mixed_any


def test_dict_labels_are_mixed_as_one_vector():
    x, y = batch(b=8)
    names = ["p", "q", "r"]
    labels = {n: tf.constant(y[:, i : i + 1]) for i, n in enumerate(names)}
    fn = augment.build_augmenter({"mixup": {"alpha": 1.0}}, SIZE, seed=3)
    _, out = fn(tf.constant(x), labels)
    assert list(out) == names and out["q"].shape == (8, 1)
    dense = np.concatenate([out[n].numpy() for n in names], 1)
    np.testing.assert_allclose(dense.sum(1), 1.0, atol=1e-5)


def test_both_mixers_pick_one_per_batch():
    x, y = batch(b=8)
    fn = augment.build_augmenter(["mixup", "cutmix", "flip"], SIZE, seed=4)
    assert fn.names == ["flip", "mixup", "cutmix"]  # fixed order: geometry first, mixing last
    xo, yo = fn(tf.constant(x), tf.constant(y))
    assert xo.shape == x.shape
    np.testing.assert_allclose(yo.numpy().sum(1), 1.0, atol=1e-5)


def test_names_parsing_and_errors():
    assert augment.build_augmenter([], SIZE) is None
    assert augment.build_augmenter(None, SIZE) is None
    assert list(augment.parse_names("flip, mixup")) == ["flip", "mixup"]
    assert augment.parse_names({"rotate": {"factor": 0.1}, "flip": None}) == {"rotate": {"factor": 0.1}, "flip": {}}
    with pytest.raises(UsageError, match=r"unknown augmentation 'blur'; valid: rrc, flip"):
        augment.build_augmenter(["flip", "blur"], SIZE)
    with pytest.raises(UsageError, match="augmentation 'rotate'"):
        augment.build_augmenter({"rotate": {"factr": 0.1}}, SIZE)
    with pytest.raises(UsageError, match="3-channel"):
        augment.build_augmenter(["randaugment"], SIZE, channels=6)
    assert augment.build_augmenter(["rrc"], SIZE, skip=("rrc",)) is None


def test_random_resized_crop_one_image_eager_and_in_tf_data():
    img = tf.constant(np.arange(40 * 60 * 3, dtype=np.float32).reshape(40, 60, 3) % 255)
    eager = augment.random_resized_crop(img, (12, 10), seed=7)
    graph = next(iter(tf.data.Dataset.from_tensors(img).map(lambda t: augment.random_resized_crop(t, (12, 10), seed=7))))
    for out in (eager, graph):
        assert out.shape == (12, 10, 3) and out.dtype == tf.float32
    # the sampled window respects the area/ratio ranges (TF falls back to the whole
    # image when 10 attempts fail; with feasible ranges that is rare)
    areas = []
    for _ in range(20):
        y, x, h, w = augment.rrc_window(tf.constant([40, 60, 3]), scale=(0.2, 0.3), ratio=(0.8, 1.25)).numpy()
        assert 0 <= y and y + h <= 40 and 0 <= x and x + w <= 60
        areas.append(h * w / (40 * 60))
    assert sum(0.15 <= a <= 0.35 for a in areas) >= 16, areas


def test_outputs_stay_float32_under_mixed_precision():
    import keras

    old = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        x, y = batch()
        fn = augment.build_augmenter(["flip", "rotate", "color", "mixup"], SIZE, seed=5)
        xo, yo = fn(tf.constant(x), tf.constant(y))
        assert xo.dtype == tf.float32 and yo.dtype == tf.float32
    finally:
        keras.config.set_dtype_policy(old)
