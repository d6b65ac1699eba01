"""The demo dataset: coloured shapes on textured backgrounds, drawn deterministically.

`draw_demo(out_dir)` writes

    out_dir/images/<shape>/<shape>_0000.jpg ...   folder per class (feed FolderSource)
    out_dir/attributes.csv                        id,attribute_ids   (multi-label: shape colour size)
    out_dir/attribute_names.csv                   attribute_id,attribute_name
    out_dir/.demo.json                            marker: the parameters of a finished drawing

and returns `out_dir/images`. The CSVs sit outside the class folders so that
FolderSource sees only images; for multi-label use,
`TableSource(out_dir/images, out_dir/attributes.csv, out_dir/attribute_names.csv)`.

Five shapes (circle, square, triangle, cross, ring) vary in colour, position,
size and rotation on a noisy low-frequency background, so the task is easy but
not trivial: a small CNN trained from scratch on CPU gets well above chance in
a couple of minutes. JPEG and PNG are mixed and every tenth image is grayscale,
so the formats and channel handling get exercised.

Everything comes from one numpy RNG seeded by `seed`, and OpenCV's encoders
are deterministic: the same parameters give byte-identical files.
"""
from __future__ import annotations

import json
import os
import shutil

import cv2
import numpy as np

from utils.errors import SourceError
from utils.files import atomic_write_csv, atomic_write_json

SHAPES = ("circle", "square", "triangle", "cross", "ring")
COLOURS = {   # RGB
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (60, 100, 245),
    "yellow": (240, 220, 40),
    "magenta": (225, 55, 225),
    "cyan": (40, 220, 230),
}
GRAY = "gray"      # colour attribute of the grayscale images
SIZES = ("large", "small")
LARGE_FROM = 0.27  # radius / image size at which a shape counts as "large"
VERSION = 1        # bump when the drawing changes: old folders are redrawn
MARKER = ".demo.json"


def attribute_names() -> list[str]:
    """The multi-label attribute names in index order: shapes, colours, gray, sizes."""
    return [*SHAPES, *COLOURS, GRAY, *SIZES]


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Dark low-frequency colour blobs + pixel noise: float32 [size, size, 3]."""
    coarse = rng.uniform(0, 90, (4, 4, 3)).astype(np.float32)
    bg = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    return bg + rng.normal(0, 6, (size, size, 3)).astype(np.float32)


def _rotated(points: np.ndarray, angle: float, cx: float, cy: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    rot = points @ np.array([[c, s], [-s, c]], np.float64)
    return (rot + (cx, cy)) * 16   # 4 fractional bits for cv2's sub-pixel drawing


def _draw_shape(canvas: np.ndarray, shape: str, cx: float, cy: float, r: float, angle: float, colour) -> None:
    aa, shift = cv2.LINE_AA, 4
    centre = (int(round(cx * 16)), int(round(cy * 16)))
    if shape == "circle":
        cv2.circle(canvas, centre, int(round(r * 16)), colour, -1, aa, shift)
    elif shape == "ring":
        thickness = max(2, int(round(r * 0.38)))
        cv2.circle(canvas, centre, int(round((r - thickness / 2) * 16)), colour, thickness, aa, shift)
    else:
        if shape == "square":
            h = r * 0.8
            polys = [np.array([[-h, -h], [h, -h], [h, h], [-h, h]])]
        elif shape == "triangle":
            t = np.array([np.pi / 2, np.pi / 2 + 2 * np.pi / 3, np.pi / 2 + 4 * np.pi / 3])
            polys = [np.stack([np.cos(t), -np.sin(t)], axis=1) * r * 1.1]
        else:   # cross: two bars
            w = r * 0.3
            polys = [np.array([[-r, -w], [r, -w], [r, w], [-r, w]]), np.array([[-w, -r], [w, -r], [w, r], [-w, r]])]
        for p in polys:   # one call per polygon: fillPoly would leave the bars' overlap empty
            cv2.fillConvexPoly(canvas, np.round(_rotated(p, angle, cx, cy)).astype(np.int32), colour, aa, shift)


def _draw_one(rng: np.random.Generator, shape: str, size: int, gray: bool) -> tuple[np.ndarray, str, str]:
    """-> (uint8 RGB or gray image, colour name, size name)."""
    canvas = _background(rng, size)
    r = rng.uniform(0.16, 0.36) * size
    margin = r * 1.1 + 1
    cx, cy = rng.uniform(margin, size - margin, 2)
    angle = rng.uniform(0, np.pi / 2)
    colour_name = rng.choice(list(COLOURS))
    if gray:
        colour_name = GRAY
        colour = (float(rng.uniform(180, 255)),) * 3
    else:
        colour = tuple(float(np.clip(c + rng.uniform(-20, 20), 0, 255)) for c in COLOURS[colour_name])
    _draw_shape(canvas, shape, cx, cy, r, angle, colour)
    img = np.clip(canvas, 0, 255).astype(np.uint8)
    if gray:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    return img, str(colour_name), "large" if r >= LARGE_FROM * size else "small"


def _write_image(path: str, img: np.ndarray) -> None:
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)   # OpenCV writes BGR
    params = [cv2.IMWRITE_JPEG_QUALITY, 90] if path.endswith(".jpg") else [cv2.IMWRITE_PNG_COMPRESSION, 6]
    ok, buf = cv2.imencode(os.path.splitext(path)[1], img, params)
    if not ok:
        raise RuntimeError(f"OpenCV could not encode {path}")
    with open(path, "wb") as f:
        f.write(buf.tobytes())


def _is_ours(images: str) -> bool:
    return all(name in SHAPES for name in os.listdir(images))


def draw_demo(out_dir: str, seed: int = 0, per_class: int = 60, size: int = 64) -> str:
    """Draw the demo set into `out_dir` (see the module doc).

    Idempotent: a finished drawing with the same parameters is left as it is.

    Args:
        seed: the one RNG seed; the same parameters give byte-identical files.
        per_class: images per shape.
        size: image side in pixels.
    Returns:
        The image folder, `out_dir/images`.
    Raises:
        SourceError: `out_dir/images` holds something other than a demo drawing.
        ValueError: per_class < 1 or size < 16.
    """
    if per_class < 1 or size < 16:
        raise ValueError(f"per_class must be >= 1 and size >= 16, got {per_class}, {size}")
    params = {"version": VERSION, "seed": seed, "per_class": per_class, "size": size}
    images = os.path.join(out_dir, "images")
    marker = os.path.join(out_dir, MARKER)
    try:
        with open(marker) as f:
            if json.load(f) == params and os.path.isdir(images):
                return images
    except (OSError, ValueError):
        pass
    if os.path.isdir(images) and not _is_ours(images):
        raise SourceError(f"{images} holds files that are not a demo drawing; not overwriting")

    os.makedirs(out_dir, exist_ok=True)
    if os.path.exists(marker):
        os.remove(marker)      # from here on the folder is unfinished
    tmp = os.path.join(out_dir, ".images.tmp")
    shutil.rmtree(tmp, ignore_errors=True)   # left by a killed run

    rng = np.random.default_rng(seed)
    names = attribute_names()
    index = {n: i for i, n in enumerate(names)}
    rows = []
    for shape in SHAPES:
        os.makedirs(os.path.join(tmp, shape))
        for i in range(per_class):
            gray = i % 10 == 1
            img, colour, scale = _draw_one(rng, shape, size, gray)
            ext = "png" if i % 3 == 0 else "jpg"
            name = f"{shape}_{i:04d}"
            _write_image(os.path.join(tmp, shape, f"{name}.{ext}"), img)
            rows.append([name, " ".join(str(index[a]) for a in (shape, colour, scale))])

    if os.path.isdir(images):
        shutil.rmtree(images)
    os.replace(tmp, images)
    atomic_write_csv(os.path.join(out_dir, "attributes.csv"), ["id", "attribute_ids"], rows)
    atomic_write_csv(os.path.join(out_dir, "attribute_names.csv"), ["attribute_id", "attribute_name"],
                     [[str(i), n] for i, n in enumerate(names)])
    atomic_write_json(marker, params)     # written last: its presence means "finished"
    return images
