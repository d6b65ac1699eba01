"""The rotation: one warp (batch_ops.rotate_apply) for both placements, per image at decode on cpu.

REFERENCE is the warp as it was before the integer-tap rewrite (float
reflection of every tap); Keras RandomRotation's own kernel is
ImageProjectiveTransformV3. The per-image rotation at decode must give the
batch op's pixels for the same angle, and Keras' angle statistics.
"""
import numpy as np
import pytest
import tensorflow as tf

from tests.input.eager_graph import eager_and_in_tf_data
from tests.input.test_augment_stats import BATCH, KERAS, ROUNDS, TOL, rotate_stats
from tests.input.test_pipeline import collect, simple
from utils.errors import UsageError
from utils.input import augment, batch_ops as ops, pipeline
from utils.input.image_ops import random_rotate


def reference_affine(images, matrix):
    """affine_apply before integer taps: each tap's coordinates reflected as floats."""
    b, h, w, c = images.shape
    m = [tf.reshape(matrix[:, i], [-1, 1, 1]) for i in range(6)]
    yy, xx = tf.meshgrid(tf.range(h, dtype=tf.float32), tf.range(w, dtype=tf.float32), indexing="ij")
    sx, sy = m[0] * xx + m[1] * yy + m[2], m[3] * xx + m[4] * yy + m[5]
    x0, y0 = tf.floor(sx), tf.floor(sy)
    fx, fy = (sx - x0)[..., None], (sy - y0)[..., None]

    def reflect(v, n):
        v = v - 2.0 * n * tf.floor(v / (2.0 * n))
        return tf.where(v >= n, 2.0 * n - 1.0 - v, v)

    flat = tf.reshape(images, [-1, c])
    base = tf.reshape(tf.range(b) * (h * w), [-1, 1, 1])
    tap = lambda yi, xi: tf.gather(flat, base + tf.cast(reflect(yi, h), tf.int32) * w  # noqa: E731
                                   + tf.cast(reflect(xi, w), tf.int32))
    tl, tr, bl, br = tap(y0, x0), tap(y0, x0 + 1), tap(y0 + 1, x0), tap(y0 + 1, x0 + 1)
    top, bottom = tl + (tr - tl) * fx, bl + (br - bl) * fx
    return top + (bottom - top) * fy


def _photo(b, h, w, seed=0):
    rng = np.random.default_rng(seed)
    x = tf.image.resize(rng.uniform(0, 255, (b, 5, 5, 3)).astype(np.float32), (h, w)).numpy()
    return tf.constant(np.clip(x + rng.normal(0, 20, x.shape), 0, 255).astype(np.float32))


ANGLES = [0.0, 7.3, -17.9, 45.0, 90.0, 180.0, -123.4, 359.0]


@pytest.mark.parametrize("h,w", [(24, 24), (20, 31), (8, 40)])  # (8, 40): too wide for one reflection
def test_rotation_is_the_previous_warp_and_keras_kernel(h, w):
    x = _photo(len(ANGLES), h, w)
    angle = tf.constant(ANGLES)
    got = tf.function(lambda im, a: ops.rotate_apply(im, None, {"angle": a})[0], jit_compile=True)(x, angle).numpy()
    matrix = ops.rotation_matrix(angle, h, w)
    np.testing.assert_allclose(got, reference_affine(x, matrix).numpy(), atol=1e-3)  # XLA's rounding vs eager
    keras_kernel = tf.raw_ops.ImageProjectiveTransformV3(
        images=x, transforms=matrix, output_shape=[h, w], fill_value=0.0, interpolation="BILINEAR",
        fill_mode="REFLECT").numpy()
    np.testing.assert_allclose(got, keras_kernel, atol=0.02)  # of 255: float rounding
    assert np.abs(got[1:] - x.numpy()[1:]).max() > 30.0  # the angles did move pixels
    np.testing.assert_allclose(got[0], x.numpy()[0], atol=1e-3)


def test_affine_far_outside_the_image_still_reflects_like_before():
    x = _photo(2, 16, 20)
    matrix = tf.constant([[1.0, 0.9, -150.0, 0.3, 1.0, 260.0, 0.0, 0.0], [0.5, 0.0, 45.0, 0.0, 2.0, -70.0, 0.0, 0.0]])
    np.testing.assert_array_equal(ops.affine_apply(x, matrix).numpy(), reference_affine(x, matrix).numpy())


def test_per_image_rotation_equals_the_batch_op():
    x = _photo(len(ANGLES), 24, 28, seed=1)
    # the batch op as the augmenter runs it: XLA-compiled (eager TF rounds differently, by ~1e-4)
    batch_op = tf.function(lambda im, a: ops.rotate_apply(im, None, {"angle": a})[0], jit_compile=True)
    batch = np.clip(batch_op(x, tf.constant(ANGLES)).numpy(), 0.0, 255.0)
    for i, a in enumerate(ANGLES):
        np.testing.assert_array_equal(ops.rotate_image(x[i], tf.constant(a)).numpy(), batch[i])
    # a one-point range draws exactly its angle: 0.05 * 360 = 18 degrees, eagerly and inside tf.data
    want = ops.rotate_image(x[2], tf.constant(18.0)).numpy()
    for out in eager_and_in_tf_data(lambda im: random_rotate(im, (0.05, 0.05)), x[2]):
        np.testing.assert_allclose(out, want, atol=1e-4)


def test_per_image_rotation_has_the_keras_angles():
    """rotate_stats (the batch op's test) fed by the per-image rotation in tf.data, one draw per image."""
    def build(spec):
        assert spec == {"rotate": {}}
        factor = augment.decode_rotate(spec)
        draws = {}

        def fn(x, y):
            if "it" not in draws:  # one stream of per-image draws over all rounds, not the same batch again
                one = x[0]
                draws["it"] = iter(tf.data.Dataset.from_tensors(one).repeat(BATCH * ROUNDS)
                                   .map(lambda im: random_rotate(im, factor, seed=11)).batch(BATCH))
            return next(draws["it"]), y

        return fn

    got = rotate_stats(build)
    for key, value in got.items():
        assert abs(value - KERAS[key]) <= TOL[key], f"{key}: {value:.4f} here, {KERAS[key]:.4f} with Keras"


def test_cpu_rotates_at_decode_device_rotates_the_batch():
    from utils.train import augment_step

    spec = augment.parse_names("flip,rotate")
    assert augment.decode_rotate(spec) == pytest.approx((-0.05, 0.05))
    assert augment.decode_names(spec) == ("rrc", "flip", "rotate")
    assert augment.build_augmenter(spec, 16, at_decode=augment.decode_names(spec)) is None  # no batch map
    with_color = augment.build_augmenter(augment.parse_names("rotate,color"), 16,
                                         at_decode=augment.decode_names(augment.parse_names("rotate,color")))
    assert with_color.names == ["color"]
    # device: the pipeline gets flip only, the step's augmenter rotates
    cfg = {"augment": "flip,rotate", "augment_on": "device", "seed": 3}
    assert augment_step.pipeline_augment(cfg) == {"flip": {}}
    (step,) = augment_step.build_replica_augmenters(cfg, 16, 3, 1)
    assert step.names == ["rotate"]
    # a fill mode the warp does not compute stays Keras' layer, on the batch
    constant = augment.parse_names({"rotate": {"fill_mode": "constant"}})
    assert augment.decode_rotate(constant) is None and augment.decode_names(constant) == augment.AT_DECODE
    assert augment.build_augmenter(constant, 16, at_decode=augment.decode_names(constant)).names == ["rotate"]
    with pytest.raises(UsageError, match="augmentation 'rotate'"):
        augment.decode_rotate(augment.parse_names({"rotate": {"factr": 0.1}}))


_PROBES = 37
_warp = tf.function(lambda im, a: ops.rotate_apply(im, None, {"angle": a})[0], jit_compile=True)


def _best_rotation(rotated, plain, factor=0.05):
    """The smallest max |rotated - rotate(plain, a)| over a in [-factor, factor] * 360 degrees, and that a."""
    x = tf.constant(np.repeat(plain[None], _PROBES, 0))

    def errors(angles):
        out = _warp(x, tf.constant(angles, tf.float32)).numpy()
        return np.abs(np.clip(out, 0, 255) - rotated[None]).max(axis=(1, 2, 3))

    lo, hi = -factor * 360.0, factor * 360.0
    for _ in range(6):  # each pass narrows the bracket 18x around the best probe (unimodal near the angle)
        probe = np.linspace(lo, hi, _PROBES)
        k = int(np.argmin(errors(probe)))
        lo, hi = probe[max(0, k - 1)], probe[min(_PROBES - 1, k + 1)]
    probe = np.linspace(lo, hi, _PROBES)
    err = errors(probe)
    return float(err.min()), float(probe[int(np.argmin(err))])


def test_pipeline_rotates_each_image_at_decode(tmp_path):
    d = simple(tmp_path, n=8, shards=1)
    kw = dict(image_size=(28, 24), batch_size=4, training=True, seed=5, with_ids=True)
    plain, _, ids = collect(pipeline.make_dataset(d, "train", **kw))
    rotated, _, rids = collect(pipeline.make_dataset(d, "train", augment="rotate", **kw))
    assert rids == ids  # same seeded order: only the pixels differ
    angles = []
    for r, p in zip(np.concatenate(rotated), np.concatenate(plain)):
        err, angle = _best_rotation(r, p)
        assert err < 0.01, f"not a rotation of the decoded image (max diff {err:.3f} at {angle:.2f} degrees)"
        angles.append(angle)
    assert len({round(a, 1) for a in angles}) == len(angles)  # a fresh angle per image
    assert max(abs(a) for a in angles) > 1.0
    out = np.concatenate(rotated)
    assert out.min() >= 0.0 and out.max() <= 255.0
