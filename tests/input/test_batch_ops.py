"""utils/input/batch_ops.py: the faster op forms give the outputs of the forms they replaced.

Each REFERENCE below is the op as it was before the speed-up (plain TF, the
HSV round trip, the whole-batch mask), applied to the same draws; the new op
must give the same pixels (float rounding apart) on fixed seeds.
"""
import numpy as np
import tensorflow as tf

from utils.input import batch_ops as ops


def _photo(b=6, size=24, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 255, (b, 6, 6, 3)).astype(np.float32)
    x = tf.image.resize(x, (size, size)).numpy()
    x[0] = 128.0  # a grey image: no hue, zero spread
    x[1, :, :, 0] = x[1, :, :, 1]  # ties between red and green, the max channel's sector rule
    return tf.constant(np.clip(x, 0, 255))


def reference_color(images, p):
    """color_apply before the closed form: reduce_mean and tf.image's HSV round trip."""
    x = tf.clip_by_value(images + tf.reshape(p["delta"], [-1, 1, 1, 1]), 0.0, 255.0)
    mean = tf.reduce_mean(x, axis=[1, 2], keepdims=True)
    x = tf.clip_by_value((x - mean) * tf.reshape(p["contrast"], [-1, 1, 1, 1]) + mean, 0.0, 255.0)
    hsv = tf.image.rgb_to_hsv(x / 255.0)
    h = hsv[..., 0] + tf.reshape(p["hue"], [-1, 1, 1])
    h = tf.where(h > 1.0, h - 1.0, tf.where(h < 0.0, h + 1.0, h))
    s = hsv[..., 1] * tf.reshape(p["saturation"], [-1, 1, 1])
    return tf.clip_by_value(tf.image.hsv_to_rgb(tf.stack([h, s, hsv[..., 2]], -1)), 0.0, 1.0) * 255.0


def test_color_closed_form_equals_the_hsv_round_trip():
    x = _photo()
    # wide ranges so every clip and the hue wrap-around are exercised
    p = ops.color_draw(x, (-0.4, 0.4), (0.5, 0.5), (0.1, 0.9), (0.0, 0.5), seed=5)
    want = reference_color(x, p).numpy()
    for fn in (ops.color_apply, tf.function(ops.color_apply, jit_compile=True)):
        got = fn(x, None, p)[0].numpy()
        np.testing.assert_allclose(got, want, atol=0.05)  # of 255: float rounding only
    assert np.abs(want - x.numpy()).max() > 10.0  # the draws did change the pixels


def test_channel_mean_equals_reduce_mean():
    for size in (16, 17, 18):  # 16 pixels side by side, none (289 is odd), 4
        x = _photo(size=size)
        np.testing.assert_allclose(ops._channel_mean(x).numpy(),
                                   tf.reduce_mean(x, axis=[1, 2], keepdims=True).numpy(), rtol=1e-5)


def box_mask(images, x0, x1, y0, y1):
    """The reference box test over [B, H, W, 1]: x0 <= x < x1 and y0 <= y < y1 per image."""
    h, w = images.shape[1], images.shape[2]
    gy = tf.reshape(tf.range(h, dtype=tf.float32), [1, -1, 1, 1])
    gx = tf.reshape(tf.range(w, dtype=tf.float32), [1, 1, -1, 1])
    per_image = lambda v: tf.reshape(v, [-1, 1, 1, 1])  # noqa: E731
    return (gx >= per_image(x0)) & (gx < per_image(x1)) & (gy >= per_image(y0)) & (gy < per_image(y1))


def _erasing_mask(x, p):
    """Where RandomErasing's whole-batch mask (the op before the scatter) erases."""
    return (box_mask(x, *p["box"]) & tf.reshape(p["apply"], [-1, 1, 1, 1])).numpy()[..., 0]


def test_erasing_fills_exactly_the_masked_pixels():
    x = _photo(b=16, size=20)
    p = ops.erasing_draw(x, factor=(0.7, 0.7), scale=(0.02, 0.33), seed=3)
    mask = _erasing_mask(x, p)
    assert 0 < mask.any(axis=(1, 2)).sum() < 16  # some images erased, some not
    out = ops.erasing_apply(x, None, p)[0].numpy()
    changed = (out != x.numpy()).any(axis=-1)
    np.testing.assert_array_equal(changed, mask)
    noise = out[mask] / 255.0  # N(0, 1) per pixel and channel
    assert abs(noise.mean()) < 0.15 and abs(noise.std() - 1.0) < 0.1
    clipped = ops.erasing_apply(x, None, p, clip=True)[0].numpy()
    np.testing.assert_array_equal(clipped, np.clip(out, 0.0, 255.0))


def test_erasing_constant_fill_and_full_scale():
    x = _photo(b=8, size=12)
    p = ops.erasing_draw(x, factor=(1.0, 1.0), scale=(0.9, 1.0), seed=4, fill_value=7.0)
    mask = _erasing_mask(x, p)
    out = ops.erasing_apply(x, None, p)[0].numpy()
    np.testing.assert_array_equal(out, np.where(mask[..., None], 7.0, x.numpy()))
    assert mask.mean() > 0.8


def test_equalize_is_keras_equalization_bit_for_bit():
    import keras

    x = _photo(b=4, size=16).numpy()
    x[2, ..., 1] = 40.0  # one channel of one image flat: the batch's histogram still has many bins
    x = np.concatenate([x, np.full((1, 16, 16, 3), 255.0, np.float32)])  # the top bin is used
    layer = keras.layers.RandAugment(value_range=(0, 255), seed=1)
    layer.build(None)
    for batch in (x, np.full_like(x, 9.0)):  # the second: one used bin per channel, left unchanged
        want = layer.equalization.transform_images(tf.constant(batch), None).numpy()
        for fn in (ops.equalize, tf.function(ops.equalize, jit_compile=True)):
            np.testing.assert_array_equal(fn(tf.constant(batch)).numpy(), want)
    assert np.abs(want - 9.0).max() == 0.0 and np.abs(layer.equalization.transform_images(
        tf.constant(x), None).numpy() - x).max() > 10.0


def reference_cutmix(images, p):
    """cutmix_apply before the row form: box_mask over [B, H, W, C] and a select."""
    return tf.where(box_mask(images, *p["box"]), tf.gather(images, p["order"]), images)


def test_cutmix_rows_take_exactly_the_box_mask_pixels():
    for h, w, c in ((20, 20, 3), (13, 17, 3), (9, 11, 1)):
        x = tf.constant(np.random.default_rng(h).uniform(0, 255, (8, h, w, c)).astype(np.float32))
        p = ops.cutmix_draw(x, (0.0, 1.0), seed=h)
        # box edges on whole pixels too (x0 = 3 is inside, x1 = 7 is not), and a box to the far edges
        x0, x1, y0, y1 = (v.numpy() for v in p["box"])
        x0[0], x1[0], y0[0], y1[0] = 3.0, 7.0, 2.0, 5.0
        x0[1], x1[1], y0[1], y1[1] = 0.0, float(w), 0.0, float(h)
        p["box"] = tuple(tf.constant(v) for v in (x0, x1, y0, y1))
        want = reference_cutmix(x, p).numpy()
        for fn in (ops.cutmix_apply, tf.function(ops.cutmix_apply, jit_compile=True)):
            got, labels = fn(x, tf.one_hot(tf.range(8) % 4, 4), p)
            np.testing.assert_array_equal(got.numpy(), want)
        assert (want != x.numpy()).any(axis=-1).sum() > 0  # the boxes did take partner pixels
        moved = (want[0] != x.numpy()[0]).any(axis=-1)
        partner = int(p["order"][0])
        if partner != 0:  # image 0's box is rows 2-4, columns 3-6 exactly
            assert moved[2:5, 3:7].all() and not moved[:2].any() and not moved[5:].any()
            assert not moved[:, :3].any() and not moved[:, 7:].any()
