"""utils/input/augment.py: every batch op on a tiny batch, eagerly and inside tf.data; the name parsing."""
import numpy as np
import pytest
import tensorflow as tf

from tests.input.eager_graph import eager_and_in_tf_data
from utils.errors import UsageError
from utils.input import augment

SIZE = (16, 16)


def batch(b=4, c=3, seed=0):
    rng = np.random.default_rng(seed)
    # smooth-ish images so flips/rotations visibly change pixels
    x = rng.uniform(0, 255, (b, 4, 4, c)).astype(np.float32)
    x = tf.image.resize(x, SIZE).numpy()
    y = tf.one_hot(np.arange(b) % 3, 3).numpy()
    return x, y


@pytest.mark.parametrize("name", ["flip", "rotate", "color", "randaugment", "erasing"])
def test_image_op_eager_and_in_tf_data(name):
    x, y = batch()
    kwargs = {"erasing": {"factor": 1.0}, "flip": {"mode": "horizontal_and_vertical"}}.get(name, {})
    fn = augment.build_augmenter({name: kwargs}, SIZE, seed=1, at_decode=("rrc",))  # a batch flip too
    assert fn.names == [name]
    for xo, yo in eager_and_in_tf_data(fn, x, y):
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
    for xo, yo in eager_and_in_tf_data(fn, x, y):
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
    fn = augment.build_augmenter(["mixup", "cutmix", "flip"], SIZE, seed=4, at_decode=("rrc",))
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


def test_split_names_is_the_one_parser_of_the_comma_list():
    assert augment.split_names("flip,rrc") == ["flip", "rrc"]
    assert augment.split_names(" flip , ,mixup ") == ["flip", "mixup"]
    assert augment.split_names("none") == augment.split_names(" None ") == augment.split_names("") == []
    assert augment.split_names(None) == []
    yaml_dict = {"rrc": {"scale": [0.5, 1.0]}, "flip": None}
    assert augment.split_names(yaml_dict) is yaml_dict  # YAML passes through unchanged
    assert augment.split_names(["flip", "rrc"]) == ["flip", "rrc"]
    assert augment.parse_names("none") == {} and augment.parse_names("none,flip") == {"flip": {}}


def test_random_resized_crop_and_flip_are_left_to_the_decode():
    assert augment.build_augmenter(["rrc", "flip"], SIZE) is None  # the pipeline crops and flips while decoding
    fn = augment.build_augmenter(["rrc", "flip", "rotate"], SIZE, seed=0)
    assert fn.names == ["rotate"] and fn.image_size == SIZE
    fn = augment.build_augmenter(["rrc", "flip"], SIZE, seed=0, at_decode=())
    assert fn.names == ["flip"]  # rrc needs the full-resolution image: never a batch op
    assert augment.decode_flip(augment.parse_names("rrc")) is None
    assert augment.decode_flip(augment.parse_names("flip")) == "horizontal"
    assert augment.decode_flip({"flip": {"mode": "vertical"}}) == "vertical"
    with pytest.raises(UsageError, match="mode must be one of"):
        augment.decode_flip({"flip": {"mode": "sideways"}})
    with pytest.raises(UsageError, match="unexpected option"):
        augment.decode_flip({"flip": {"mod": "vertical"}})
    assert augment.decode_crop(augment.parse_names("flip")) is None
    assert augment.decode_crop(augment.parse_names("rrc")) == {"scale": (0.08, 1.0), "ratio": (3 / 4, 4 / 3)}
    assert augment.decode_crop({"rrc": {"scale": (0.5, 1.0)}}) == {"scale": (0.5, 1.0), "ratio": (3 / 4, 4 / 3)}


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
