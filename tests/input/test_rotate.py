"""The rotation (batch_ops.rotate_apply, a batch op on both --augment-on placements).

Keras RandomRotation's own kernel is ImageProjectiveTransformV3: the plain-TF
warp must give its pixels (float rounding apart) for any angle and shape, and
make_dataset(augment="rotate") must yield exact rotations of the decoded images.
"""
import numpy as np
import pytest
import tensorflow as tf

from tests.input.test_pipeline import collect, simple
from utils.input import augment, batch_ops as ops, pipeline


def _photo(b, h, w, seed=0):
    rng = np.random.default_rng(seed)
    x = tf.image.resize(rng.uniform(0, 255, (b, 5, 5, 3)).astype(np.float32), (h, w)).numpy()
    return tf.constant(np.clip(x + rng.normal(0, 20, x.shape), 0, 255).astype(np.float32))


ANGLES = [0.0, 7.3, -17.9, 45.0, 90.0, 180.0, -123.4, 359.0]


@pytest.mark.parametrize("h,w", [(24, 24), (20, 31), (8, 40)])  # (8, 40): taps beyond one reflection
def test_rotation_is_the_keras_kernel(h, w):
    x = _photo(len(ANGLES), h, w)
    angle = tf.constant(ANGLES)
    got = tf.function(lambda im, a: ops.rotate_apply(im, None, {"angle": a})[0], jit_compile=True)(x, angle).numpy()
    keras_kernel = tf.raw_ops.ImageProjectiveTransformV3(
        images=x, transforms=ops.rotation_matrix(angle, h, w), output_shape=[h, w], fill_value=0.0,
        interpolation="BILINEAR", fill_mode="REFLECT").numpy()
    np.testing.assert_allclose(got, keras_kernel, atol=0.02)  # of 255: float rounding
    assert np.abs(got[1:] - x.numpy()[1:]).max() > 30.0  # the angles did move pixels
    np.testing.assert_allclose(got[0], x.numpy()[0], atol=1e-3)


def test_far_affine_reflects_like_the_keras_kernel():
    """RandAugment's shear and translation use the same warp, with taps far outside the image."""
    x = _photo(2, 16, 20)
    matrix = tf.constant([[1.0, 0.9, -150.0, 0.3, 1.0, 260.0, 0.0, 0.0], [0.5, 0.0, 45.0, 0.0, 2.0, -70.0, 0.0, 0.0]])
    keras_kernel = tf.raw_ops.ImageProjectiveTransformV3(
        images=x, transforms=matrix, output_shape=[16, 20], fill_value=0.0, interpolation="BILINEAR",
        fill_mode="REFLECT").numpy()
    np.testing.assert_allclose(ops.affine_apply(x, matrix).numpy(), keras_kernel, atol=0.02)


def test_rotate_is_a_batch_op_on_both_placements():
    from utils.train import augment_step

    fn = augment.build_augmenter(augment.parse_names("flip,rotate"), 16)  # the cpu pipeline's
    assert fn.names == ["rotate"]
    cfg = {"augment": "flip,rotate", "augment_on": "device", "seed": 3}
    assert augment_step.pipeline_augment(cfg) == {"flip": {}}  # device: the pipeline flips only
    (step,) = augment_step.build_replica_augmenters(cfg, 16, 3, 1)
    assert step.names == ["rotate"]


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


def test_pipeline_rotates_each_image_by_its_own_angle(tmp_path):
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
    # a fresh angle per image (found to ~1e-5 degrees; two draws within 1e-3 of 36: p ~ 0.002)
    assert len({round(a, 3) for a in angles}) >= len(angles) - 1
    assert max(abs(a) for a in angles) > 1.0
    out = np.concatenate(rotated)
    assert out.min() >= 0.0 and out.max() <= 255.0
