"""--preview: one augmented training batch as a PNG grid, to check --augment by eye."""
from __future__ import annotations

import os

import numpy as np

from utils.input.pipeline import make_dataset
from utils.plots import save_image_grid

PREVIEW_BATCH = 16  # images in the grid


def save_preview(cfg: dict, info: dict, log_dir: str) -> str:
    """log_dir/preview.png: a training batch as the model would see it, labels as titles.

    Args:
        cfg: the resolved config (config.resolve_run).
        info: utils.input.pipeline.dataset_info of --data.

    Returns:
        the PNG's path.
    """
    # the per-class head's {output: [B, 1]} labels are shown from the one multi-hot tensor
    head = "sigmoid" if cfg["head"] == "per-class" else cfg["head"]
    ds = make_dataset(cfg["data"], "train", image_size=cfg["image_size"], batch_size=PREVIEW_BATCH,
                      training=True, head=head, fold=cfg["fold"], augment=cfg["augment"], seed=cfg["seed"],
                      shuffle_buffer=cfg["shuffle_buffer"])
    images, labels = next(iter(ds))
    names, y = info["class_names"], np.asarray(labels)
    if cfg["head"] == "softmax":
        titles = [f"{names[int(i)]} {p:.2f}" for i, p in zip(y.argmax(1), y.max(1))]
    else:
        titles = [",".join(names[j] for j in np.flatnonzero(r > 0.5)) or "-" for r in y]
    path = os.path.join(log_dir, "preview.png")
    save_image_grid(np.asarray(images), titles, path)
    return path
