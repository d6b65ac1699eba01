"""model_save/NAME.json: everything detect.py needs to use a saved model.

Written by train.py beside NAME.h5 / NAME.keras; read by detect.py. Keys:
{
  "format_version": 1,
  "name": "demo_densenet121",         # file stem
  "architecture": "densenet121",      # model/registry.py name
  "class_names": [...],               # index order, as labels.json of the dataset
  "readable_names": {...} or null,
  "input_size": [224, 224],           # (height, width) the model expects
  "channels": 3,                      # channels of the model input
  "planes": 1,                        # encoded planes per sample (6 for multi-plane microscopy)
  "preprocess": "torch",              # normalisation done INSIDE the model (informational)
  "head": "softmax" | "sigmoid" | "per-class",
  "multi_label": false,
  "outputs": ["probs"],               # model output names, in order (per-class: one per class)
  "thresholds": null or [..per class..],   # tuned by detect.py --tune-thresholds
  "dataset": "data/demo",
  "config": {...},                    # resolved train.py config
  "history": {"best_epoch": 3, "val_metric": "...", "val_score": 0.91}
}
"""
from __future__ import annotations

import json

from utils.files import atomic_write_json

FORMAT_VERSION = 1


def meta_path(model_path: str) -> str:
    """model_save/x.h5, x.keras, x.best.h5 or a SavedModel folder x/ -> model_save/x.json."""
    p = model_path.rstrip("/\\")
    for ext in (".weights.h5", ".h5", ".keras"):
        if p.endswith(ext):
            p = p[: -len(ext)]
            break
    if p.endswith(".best"):
        p = p[: -len(".best")]
    return p + ".json"


def save_meta(model_path: str, meta: dict) -> str:
    """Write `meta` (plus format_version) to meta_path(model_path), atomically; returns that path."""
    path = meta_path(model_path)
    meta = dict(meta, format_version=FORMAT_VERSION)
    atomic_write_json(path, meta, indent=2)
    return path


def load_meta(model_path: str) -> dict:
    """The metadata beside a model file (meta_path), as written by save_meta."""
    path = meta_path(model_path)
    with open(path) as f:
        return json.load(f)
