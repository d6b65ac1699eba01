"""The augmentations keep the semantics of the Keras layers they replaced, as statistics.

KERAS holds each statistic as the Keras 3.15 layers (augment.py before the
plain-TF rewrite) gave it on these inputs: computed once with
`python -m tests.input.test_augment_stats` on that code and pasted here,
beside its tolerance.
Each test computes the same statistic from today's ops and compares within a
tolerance of a few standard errors of the sample (the draws differ, the
distributions must not).
"""
import math

import numpy as np
import pytest
import tensorflow as tf

from utils.input import augment

# statistic: (what the Keras layers gave (see the module docstring), the tolerance: ~4 standard
# errors of 1024 draws (sample sizes below) or of the quantity's own spread)
KERAS = {
    "flip_rate": (0.5176, 0.065),
    "brightness_mean": (0.8817, 4.0), "brightness_std": (29.8247, 2.5), "brightness_max": (50.9306, 1.5),
    # Keras' RandomContrast(0.2) draws its factor from [1.0, 1.2], never below 1: kept as it was
    "contrast_mean": (1.1017, 0.02), "contrast_std": (0.0585, 0.01),
    "saturation_mean": (1.1371, 0.06), "saturation_std": (0.5355, 0.06),
    "hue_abs_mean": (0.0052, 0.001), "hue_abs_max": (0.0100, 0.001),
    "jitter_mean": (128.4535, 2.0), "jitter_std": (82.6252, 2.0),
    "angle_mean": (-0.1942, 1.5), "angle_std": (10.2263, 1.0), "angle_abs_max": (17.9928, 0.6),
    "mixup_mean": (0.5158, 0.06), "mixup_std": (0.4235, 0.03), "mixup_mid": (0.3301, 0.06),
    "cutmix_mean": (0.4858, 0.04), "cutmix_std": (0.3555, 0.03), "cutmix_pixel_gap": (0.0307, 0.02),
    "erasing_rate": (0.2305, 0.06), "erasing_area": (0.1587, 0.03),
}
BATCH, ROUNDS = 64, 16  # 1024 draws per statistic


def _run(fn, x, y, rounds=ROUNDS):
    outs = [fn(tf.constant(x), tf.constant(y)) for _ in range(rounds)]
    return np.concatenate([o[0].numpy() for o in outs]), np.concatenate([o[1].numpy() for o in outs])


def _labels(b=BATCH):
    return np.eye(b, dtype=np.float32)  # one class per image: its own weight is its mix weight


def flip_stats(build):
    x = np.tile(np.arange(8, dtype=np.float32)[None, None, :, None] * 30, (BATCH, 8, 1, 3))
    out, _ = _run(build({"flip": {}}), x, _labels())
    flipped = np.all(np.isclose(out, np.tile(x[:, :, ::-1], (ROUNDS, 1, 1, 1))), axis=(1, 2, 3))
    return {"flip_rate": float(flipped.mean())}


def test_per_image_flip_at_decode_has_the_keras_rate():
    from utils.input.image_ops import random_flip

    x = tf.constant(np.arange(8, dtype=np.float32)[None, :, None] * np.ones((4, 1, 3), np.float32))
    ds = tf.data.Dataset.from_tensors(x).repeat(BATCH * ROUNDS).map(lambda im: random_flip(im, seed=3))
    flipped = np.array([bool(im[0, 0, 0] == 7.0) for im in ds.as_numpy_iterator()])
    want, tol = KERAS["flip_rate"]
    assert abs(flipped.mean() - want) <= tol
    both = random_flip(x, "horizontal_and_vertical", seed=1).numpy()
    assert np.array_equal(both, x.numpy()) or np.array_equal(both, x.numpy()[::-1, ::-1])


def _hsv(rgb):
    return tf.image.rgb_to_hsv(np.clip(rgb, 0, 255) / 255.0).numpy()


def color_stats(build):
    off = {"brightness_factor": None, "contrast_factor": None, "saturation_factor": None, "hue_factor": None}
    d = augment.DEFAULTS["color"]
    gray = np.full((BATCH, 4, 4, 3), 128.0, np.float32)
    out, _ = _run(build({"color": dict(off, brightness_factor=d["brightness_factor"])}), gray, _labels())
    shift = out.mean(axis=(1, 2, 3)) - 128.0
    st = {"brightness_mean": shift.mean(), "brightness_std": shift.std(), "brightness_max": np.abs(shift).max()}
    two = np.tile(np.array([100.0, 150.0], np.float32)[None, None, :, None], (BATCH, 4, 2, 3))
    out, _ = _run(build({"color": dict(off, contrast_factor=d["contrast_factor"])}), two, _labels())
    k = out.std(axis=(1, 2, 3)) / 25.0
    st.update(contrast_mean=k.mean(), contrast_std=k.std())
    rgb = np.tile(np.array([200.0, 150.0, 120.0], np.float32), (BATCH, 4, 4, 1))  # S = 0.4, H = 0.104
    out, _ = _run(build({"color": dict(off, saturation_factor=d["saturation_factor"])}), rgb, _labels())
    s = _hsv(out)[:, 0, 0, 1] / 0.4
    st.update(saturation_mean=s.mean(), saturation_std=s.std())
    out, _ = _run(build({"color": dict(off, hue_factor=d["hue_factor"])}), rgb, _labels())
    h = _hsv(out)[:, 0, 0, 0] - _hsv(rgb)[0, 0, 0, 0]
    st.update(hue_abs_mean=np.abs(h).mean(), hue_abs_max=np.abs(h).max())
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (BATCH, 4, 4, 3)).astype(np.float32)
    out, _ = _run(build({"color": {}}), x, _labels())
    st.update(jitter_mean=out.mean(), jitter_std=out.std())
    return {k: float(v) for k, v in st.items()}


def rotate_stats(build):
    n = 33
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    ramp = np.stack([xx * 4 + 60, yy * 4 + 60, np.full_like(xx, 100)], -1)
    x = np.tile(ramp[None], (BATCH, 1, 1, 1))
    out, _ = _run(build({"rotate": {}}), x, _labels())
    c = slice(8, n - 8)  # the middle: never filled by reflection at 18 degrees
    gx = np.gradient(out[:, c, c, 0], axis=2).mean(axis=(1, 2))  # d(red)/dx = 4 cos
    gy = np.gradient(out[:, c, c, 0], axis=1).mean(axis=(1, 2))  # d(red)/dy = 4 sin (sign: the convention)
    angle = np.degrees(np.arctan2(gy, gx))
    return {"angle_mean": float(angle.mean()), "angle_std": float(angle.std()),
            "angle_abs_max": float(np.abs(angle).max())}


def mixer_stats(build):
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (BATCH, 8, 8, 3)).astype(np.float32)
    _, yo = _run(build({"mixup": {}}), x, _labels())
    w = np.tile(np.eye(BATCH, dtype=bool), (ROUNDS, 1))
    own = yo[w]
    st = {"mixup_mean": own.mean(), "mixup_std": own.std(), "mixup_mid": ((own > 0.1) & (own < 0.9)).mean()}
    x = np.tile(np.arange(BATCH, dtype=np.float32)[:, None, None, None], (1, 16, 16, 3))  # image i is all i
    xo, yo = _run(build({"cutmix": {}}), x, _labels())
    own = yo[w]
    kept = (xo[..., 0] == np.tile(np.arange(BATCH), ROUNDS)[:, None, None]).mean(axis=(1, 2))
    # kept pixels vs the label weight: equal up to rounding of the box to pixels
    st.update(cutmix_mean=own.mean(), cutmix_std=own.std(), cutmix_pixel_gap=np.abs(kept - own).mean())
    return {k: float(v) for k, v in st.items()}


def erasing_stats(build):
    x = np.full((BATCH, 16, 16, 3), 128.0, np.float32)
    out, _ = _run(build({"erasing": {}}), x, _labels())
    changed = (np.abs(out - 128.0) > 1e-3).any(axis=3).mean(axis=(1, 2))
    erased = changed > 0
    return {"erasing_rate": float(erased.mean()), "erasing_area": float(changed[erased].mean())}


def _build(spec):
    return augment.build_augmenter(spec, (16, 16), seed=7, at_decode=("rrc",))  # flip as a batch op too


STATS = {"flip": flip_stats, "color": color_stats, "rotate": rotate_stats, "mixers": mixer_stats,
         "erasing": erasing_stats}


@pytest.mark.parametrize("group", list(STATS))
def test_statistics_match_the_keras_layers(group):
    got = STATS[group](_build)
    for key, value in got.items():
        want, tol = KERAS[key]
        assert want is not None, f"{key} has no stored Keras value"
        assert math.isfinite(value)
        assert abs(value - want) <= tol, f"{key}: {value:.4f} here, {want:.4f} with Keras (tol {tol})"


if __name__ == "__main__":  # print today's statistics, to paste into KERAS
    for fn in STATS.values():
        for k, v in fn(_build).items():
            print(f'    "{k}": ({v:.4f}, {KERAS.get(k, (None, None))[1]}),')
