"""utils/input/image_ops.py: the pixel contract on one example, eagerly and inside tf.data."""
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tests.conftest import encode_image, random_image
from tests.input.eager_graph import eager_and_in_tf_data
from utils.input import image_ops


def jpeg_planes(seed=7, h=64, w=80):
    return tf.constant([encode_image(random_image(seed, h, w), "jpeg")])


def test_as_hw_turns_an_int_into_a_square_and_keeps_a_pair():
    assert image_ops.as_hw(224) == (224, 224)
    assert image_ops.as_hw((32, 24)) == (32, 24)
    assert image_ops.as_hw([np.int64(5), 6.0]) == (5, 6)
    assert all(type(s) is int for s in image_ops.as_hw((np.int64(5), 6.0)))


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_eval_image_is_the_same_eagerly_and_in_tf_data(fmt):
    planes = tf.constant([encode_image(random_image(3), fmt)])
    eager, graph = eager_and_in_tf_data(lambda p: image_ops.eval_image(p, (20, 16)), planes)
    assert eager.shape == (20, 16, 3) and eager.dtype == np.float32
    np.testing.assert_array_equal(eager, graph)


def test_decode_planes_converts_channels_and_stacks_planes_in_tf_data():
    gray = tf.constant([encode_image(random_image(2, c=1), "png")])
    for rgb in eager_and_in_tf_data(lambda p: image_ops.decode_planes(p, 3), gray):
        assert rgb.shape == (40, 48, 3) and rgb.dtype == np.uint8
        np.testing.assert_array_equal(rgb[..., 0], rgb[..., 2])  # gray replicated to 3
    for one in eager_and_in_tf_data(lambda p: image_ops.decode_planes(p, 1), gray):
        np.testing.assert_array_equal(one[..., 0], random_image(2, c=1))
    six = tf.constant([encode_image(np.full((16, 16), 10 * p, np.uint8), "png") for p in range(6)])
    for out in eager_and_in_tf_data(lambda p: image_ops.decode_planes(p, 6, num_planes=6), six):
        np.testing.assert_array_equal(out[0, 0], [10 * p for p in range(6)])
    with pytest.raises(ValueError, match="1 or 3 channels, not 4"):
        image_ops.decode_planes(gray, 4)
    with pytest.raises(ValueError, match="6 planes give 6 channels, not 3"):
        image_ops.decode_planes(six, 3, num_planes=6)


def test_rrc_jpeg_fast_path_matches_generic_crop_shape():
    planes = jpeg_planes()
    out = image_ops.train_crop_image(planes, (24, 24), 3, 1, seed=5)
    assert out.shape == (24, 24, 3) and out.dtype == tf.float32
    full = image_ops.train_crop_image(planes, (64, 80), 3, 1, scale=(1.0, 1.0), ratio=(1.25, 1.25))
    np.testing.assert_allclose(full.numpy(), image_ops.eval_image(planes, (64, 80)).numpy(), atol=1e-3)


def test_train_crop_image_in_tf_data_for_jpeg_and_png():
    for planes in (jpeg_planes(), tf.constant([encode_image(random_image(7, 64, 80), "png")])):
        for out in eager_and_in_tf_data(lambda p: image_ops.train_crop_image(p, 24, seed=5), planes):
            assert out.shape == (24, 24, 3) and out.dtype == np.float32
            assert 0.0 <= out.min() and out.max() <= 255.0 + 1e-3  # area's float sums: 255.00014 seen


@pytest.mark.parametrize("mode,axes", [("horizontal", (1,)), ("vertical", (0,)), ("horizontal_and_vertical", (0, 1))])
@pytest.mark.parametrize("hw", [(96, 120), (30, 36)])  # a 4x shrink (area) and a shrink below 2x (bilinear)
def test_flipped_resize_is_the_resized_image_or_its_mirror_about_half_the_time(mode, axes, hw):
    img = tf.constant(random_image(4, *hw))
    plain = image_ops.resize_image(img, (24, 18)).numpy()
    resize = image_ops.flipped_resize(image_ops.resize_image, mode, seed=3)
    outs = [resize(img, (24, 18)).numpy() for _ in range(40)]
    mirrored = [bool(np.allclose(o, np.flip(plain, axes), atol=0.02)) for o in outs]
    same = [bool(np.array_equal(o, plain)) for o in outs]
    assert all(m != s for m, s in zip(mirrored, same))  # one or the other, never neither
    assert 8 <= sum(mirrored) <= 32  # p = 0.5 of 40
    assert image_ops.flipped_resize(image_ops.resize_image, None) is image_ops.resize_image


def test_random_resized_crop_one_image_eager_and_in_tf_data():
    img = tf.constant(np.arange(40 * 60 * 3, dtype=np.float32).reshape(40, 60, 3) % 255)
    for out in eager_and_in_tf_data(lambda t: image_ops.random_resized_crop(t, (12, 10), seed=7), img):
        assert out.shape == (12, 10, 3) and out.dtype == np.float32
    # the sampled window respects the area/ratio ranges (TF falls back to the whole
    # image when 10 attempts fail; with feasible ranges that is rare)
    areas = []
    for _ in range(20):
        y, x, h, w = image_ops.rrc_window(tf.constant([40, 60, 3]), scale=(0.2, 0.3), ratio=(0.8, 1.25)).numpy()
        assert 0 <= y and y + h <= 40 and 0 <= x and x + w <= 60
        areas.append(h * w / (40 * 60))
    assert sum(0.15 <= a <= 0.35 for a in areas) >= 16, areas


def test_large_jpeg_decodes_at_reduced_scale_close_to_full_decode():
    small = np.random.default_rng(11).integers(0, 256, (10, 8, 3), dtype=np.uint8)
    big = np.asarray(Image.fromarray(small).resize((256, 320), Image.BICUBIC))  # photo-like: smooth
    planes = tf.constant([encode_image(big, "jpeg")])
    # 320x256 -> 40x32 is 8x on both sides: libjpeg decodes at 1/8 scale
    dec = image_ops.decode_one(planes[0], (40, 32))
    assert tuple(dec.shape) == (40, 32, 3)
    assert tuple(image_ops.decode_one(planes[0], (100, 32)).shape) == (160, 128, 3)  # 3.2x: ratio 2
    assert tuple(image_ops.decode_one(planes[0]).shape) == (320, 256, 3)  # no size: full
    fast = image_ops.eval_image(planes, (40, 32)).numpy()
    full = image_ops.resize_image(image_ops.decode_one(planes[0]), (40, 32)).numpy()
    assert np.abs(fast - full).mean() < 4.0  # both are proper area-like downsamples
    # PNG has no reduced-scale decode: full size, then area resize
    png = tf.constant([encode_image(big, "png")])
    np.testing.assert_allclose(image_ops.eval_image(png, (40, 32)).numpy(),
                               tf.image.resize(big, (40, 32), method="area").numpy(), atol=1e-3)


def test_resize_shrinks_2x_by_area_else_bilinear():
    img = tf.constant(np.tile(np.array([0, 255], np.uint8), 8).reshape(1, 16, 1).repeat(4, 0))  # stripes
    small = image_ops.resize_image(img, (2, 8)).numpy()
    np.testing.assert_allclose(small, 127.5, atol=1e-3)  # 2x: area averages the stripes, no aliasing
    mild = image_ops.resize_image(img, (4, 12)).numpy()  # 1.33x: bilinear
    np.testing.assert_allclose(mild, tf.image.resize(img, (4, 12)).numpy(), atol=1e-4)
    up = image_ops.resize_image(tf.constant([[[0], [255]]], tf.uint8), (1, 4)).numpy()[0, :, 0]
    assert up[0] < up[1] < up[2] < up[3]


@pytest.mark.parametrize("size", [(10, 7), (40, 30), (70, 90)])  # area (>= 2x), bilinear, upscale
def test_resize_of_float_input_equals_uint8_input_and_stays_in_range(size):
    img = tf.constant(np.random.default_rng(0).integers(0, 256, (48, 40, 3), dtype=np.uint8))
    outs = eager_and_in_tf_data(lambda t: image_ops.resize_image(t, size), img)
    method = "area" if min(48 / size[0], 40 / size[1]) >= 2 else "bilinear"
    for out in outs:
        np.testing.assert_allclose(out, tf.image.resize(img, size, method=method).numpy(), atol=1e-3)
        assert out.dtype == np.float32 and out.min() >= 0.0 and out.max() <= 255.0
