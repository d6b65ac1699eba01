"""The flags bench/pipeline.py and bench/augment.py share: the synthetic JPEGs, the output size, the batch.

One copy of their names, types and help (each bench passes its own defaults), and of what --workdir means.
"""
from __future__ import annotations

import argparse
import contextlib
import shutil
import tempfile


def add_image_flags(p: argparse.ArgumentParser, *, images: int, max_side: int) -> None:
    """Add --images, --min-side, --max-side, --size, --batch and --workdir to `p`.

    Args:
        p: the bench's parser.
        images: --images' default (how many JPEGs are written).
        max_side: --max-side's default in px.
    """
    p.add_argument("--images", type=int, default=images, help=f"synthetic JPEGs to write (default {images})")
    p.add_argument("--min-side", type=int, default=300, help="smallest side of a written JPEG in px (default 300)")
    p.add_argument("--max-side", type=int, default=max_side,
                   help=f"largest side of a written JPEG in px (default {max_side})")
    p.add_argument("--size", type=int, default=224,
                   help="output size in px, every pipeline, and the shards' --short-side (default 224)")
    p.add_argument("--batch", type=int, default=32, help="batch size (default 32)")
    p.add_argument("--workdir", default=None, help="where to write images and shards (default: a temp dir, removed)")


@contextlib.contextmanager
def work_dir(workdir: str | None, prefix: str):
    """--workdir as given (kept), or a new temporary folder removed on leaving.

    Args:
        workdir: the --workdir value.
        prefix: the temporary folder's name prefix.
    Returns:
        (yields) the folder's path.
    """
    work = workdir or tempfile.mkdtemp(prefix=prefix)
    try:
        yield work
    finally:
        if not workdir:
            shutil.rmtree(work, ignore_errors=True)
