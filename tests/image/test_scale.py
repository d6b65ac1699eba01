"""utils/image/scale.py on its own: the resize plan and TF's 8-bit scaling of gray."""
import numpy as np

from utils.image.scale import gray_to_8bit, target_size


def test_target_size_never_enlarges():
    assert target_size(96, 48, None) == (96, 48)
    assert target_size(96, 48, 96) == (96, 48)
    assert target_size(96, 48, 500, 500) == (96, 48)


def test_target_size_max_side_short_side_and_both():
    assert target_size(96, 48, 32) == (32, 16)                 # longer side
    assert target_size(48, 96, 40) == (20, 40)
    assert target_size(400, 150, None, 60) == (160, 60)        # shorter side
    assert target_size(400, 150, 120, 60) == (120, 45)         # both limits hold
    assert min(target_size(457, 300, None, 224)) == 224        # the exact N at a non-round scale
    assert target_size(1000, 1, 10) == (10, 1)                 # never below 1 pixel


def test_gray_to_8bit_like_tensorflow():
    assert gray_to_8bit(np.full((2, 2), 0x8040, np.uint16))[0, 0] == 0x80       # 16-bit: >> 8
    low = np.array([[0, 17, 255]], np.uint16)
    np.testing.assert_array_equal(gray_to_8bit(low), low.astype(np.uint8))     # already 8-bit values
    np.testing.assert_array_equal(gray_to_8bit(np.array([[0.0, 0.5, 1.0]], np.float32)), [[0, 127, 255]])
    np.testing.assert_array_equal(gray_to_8bit(np.array([[0.0, 510.0]], np.float32)), [[0, 255]])
    np.testing.assert_array_equal(gray_to_8bit(np.array([[0, 131070]], np.int32)), [[0, 255]])
    out = gray_to_8bit(np.zeros((0, 3), np.uint16))
    assert out.dtype == np.uint8 and out.shape == (0, 3)
