"""Pure arithmetic of the re-encode path: the resize plan and TF's 8-bit scaling.

No Pillow here: `utils.image.prepare` applies these to the images it decodes.
"""
from __future__ import annotations

import numpy as np


def target_size(width: int, height: int, max_side: int | None,
                short_side: int | None = None) -> tuple[int, int]:
    """The size to shrink to, aspect kept; never larger than (width, height).

    Args:
        width, height: the image's size.
        max_side: the longer side ends up <= this (None: no limit).
        short_side: the shorter side ends up <= this (None: no limit).
    Returns:
        (width, height), each at least 1.
    """
    scale = 1.0
    if max_side:
        scale = min(scale, max_side / max(width, height))
    if short_side:
        scale = min(scale, short_side / min(width, height))
    if scale >= 1.0:
        return width, height
    return max(1, round(width * scale)), max(1, round(height * scale))


def gray_to_8bit(pixels: np.ndarray) -> np.ndarray:
    """High-bit-depth gray (16-bit or float) -> uint8, the way TF's decoders scale it.

    16-bit values are shifted right by 8 (what `tf.io.decode_png` does); floats in
    [0, 1] are stretched to 255; anything else above 255 is scaled by its maximum.
    """
    if pixels.dtype.kind == "f":
        hi = float(pixels.max()) if pixels.size else 1.0
        pixels = pixels * (255.0 / hi) if hi > 255 else (pixels * 255.0 if hi <= 1.0 else pixels)
    else:
        hi = int(pixels.max()) if pixels.size else 0
        pixels = pixels >> 8 if hi > 255 and hi <= 65535 else (pixels * (255.0 / hi) if hi > 255 else pixels)
    return np.clip(pixels, 0, 255).astype(np.uint8)
