"""The label layouts the pipeline yields, one per model head kind.

softmax: one-hot [B, K]; sigmoid: multi-hot [B, K]; per-class: {output name: [B, 1]}.
Dense everywhere, so MixUp/CutMix and label smoothing work the same for every head.
"""
from __future__ import annotations

HEADS = ("softmax", "sigmoid", "per-class")
