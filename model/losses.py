"""Losses with class weighting built in, and class weights from counts or a file.

Keras's `fit(class_weight=...)` refuses multi-output models, and the per-class head
IS multi-output, so weighting lives inside the loss for every head:

  softmax    weighted categorical cross-entropy: per sample sum_k w_k * y_k times
             the (label-smoothed, optionally focal) cross-entropy; y may be soft
             (MixUp/CutMix), the weight is then the label-mixture of class weights.
  sigmoid    binary cross-entropy with per-class POSITIVE weights:
             -(pw_k * y log p + (1 - y) log(1 - p)), averaged over classes.
  per-class  the same binary loss, one per output, in a dict keyed by output name,
             with a loss_weights dict (a zero weight leaves that head untouched).

Focal variants use Keras core's focal cross-entropies and the same weighting.
All losses are registered so saved models load with their compile config.
"""
from __future__ import annotations

import csv
import json
import os

import keras
import numpy as np
from keras import ops

from model.heads import check_head
from model.layers import PACKAGE
from utils.errors import UsageError

_EPS = 1e-7  # same clip as keras' own cross-entropies


def _as_list(w):
    return None if w is None else [float(v) for v in np.asarray(w, np.float64).reshape(-1)]


class _WeightedLoss(keras.losses.Loss):
    """What both weighted losses share: label smoothing, the focal switch, OHEM, their config."""

    def __init__(self, label_smoothing: float, focal: bool, focal_gamma: float, ohem: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.label_smoothing = float(label_smoothing)
        self.focal = bool(focal)
        self.focal_gamma = float(focal_gamma)
        self.ohem = float(ohem)

    def _hardest(self, per):
        """Online hard example mining (--ohem F): per-sample losses [B] -> only the ceil(F x B)
        largest count, their mean is the batch loss.

        Returned as [B] values (the rest zero, the kept ones scaled by B / k) because Keras
        averages whatever call() returns over the batch; the batch size may be dynamic
        (the last val batch), so k is a tensor and the cut a mask, not top_k.
        """
        if self.ohem >= 1.0:
            return per
        n = ops.cast(ops.shape(per)[0], per.dtype)
        k = ops.maximum(ops.ceil(n * self.ohem), 1.0)
        ranked = -ops.sort(-per)  # descending
        keep = ops.cast(ops.cast(ops.arange(ops.shape(per)[0]), per.dtype) < k, per.dtype)
        return ranked * keep * (n / k)

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing, "focal": self.focal,
                "focal_gamma": self.focal_gamma, "ohem": self.ohem}


@keras.saving.register_keras_serializable(package=PACKAGE)
class WeightedCategoricalCrossentropy(_WeightedLoss):
    """Softmax-probability cross-entropy weighted by the true class's weight."""

    def __init__(self, class_weights=None, label_smoothing: float = 0.0, focal: bool = False,
                 focal_gamma: float = 2.0, name: str = "weighted_categorical_crossentropy", ohem: float = 1.0,
                 **kwargs):
        super().__init__(label_smoothing, focal, focal_gamma, ohem, name=name, **kwargs)
        self.class_weights = _as_list(class_weights)

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, y_pred.dtype)
        if self.focal:
            # alpha=1: the class weights below play alpha's role
            per = keras.losses.categorical_focal_crossentropy(
                y_true, y_pred, alpha=1.0, gamma=self.focal_gamma, label_smoothing=self.label_smoothing)
        else:
            per = keras.losses.categorical_crossentropy(y_true, y_pred, label_smoothing=self.label_smoothing)
        if self.class_weights is not None:
            # weight from the UNSMOOTHED labels: smoothing is a target change, not a re-weighting
            w = ops.convert_to_tensor(self.class_weights, dtype=y_pred.dtype)
            per = per * ops.sum(y_true * w, axis=-1)
        return self._hardest(per)

    def get_config(self):
        return {**super().get_config(), "class_weights": self.class_weights}


@keras.saving.register_keras_serializable(package=PACKAGE)
class WeightedBinaryCrossentropy(_WeightedLoss):
    """Per-class binary cross-entropy with positive weights, mean over classes."""

    def __init__(self, pos_weights=None, label_smoothing: float = 0.0, focal: bool = False,
                 focal_gamma: float = 2.0, name: str = "weighted_binary_crossentropy", ohem: float = 1.0,
                 **kwargs):
        super().__init__(label_smoothing, focal, focal_gamma, ohem, name=name, **kwargs)
        self.pos_weights = _as_list(pos_weights)

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, y_pred.dtype)
        pw = 1.0 if self.pos_weights is None else ops.convert_to_tensor(self.pos_weights, dtype=y_pred.dtype)
        if self.focal:
            # a trailing axis of 1 makes keras' mean-over-last-axis an element-wise loss
            per = keras.losses.binary_focal_crossentropy(
                y_true[..., None], y_pred[..., None], gamma=self.focal_gamma,
                label_smoothing=self.label_smoothing)
            per = per * (pw * y_true + (1.0 - y_true))
        else:
            y = y_true
            if self.label_smoothing:
                y = y * (1.0 - self.label_smoothing) + 0.5 * self.label_smoothing
            p = ops.clip(y_pred, _EPS, 1.0 - _EPS)
            per = -(pw * y * ops.log(p) + (1.0 - y) * ops.log(1.0 - p))
        return self._hardest(ops.mean(per, axis=-1))

    def get_config(self):
        return {**super().get_config(), "pos_weights": self.pos_weights}


# ---------------------------------------------------------------- class weights

def _read_weights_file(path: str, num_classes: int, class_names: list[str] | None) -> np.ndarray:
    """JSON list (index order), JSON dict name->weight, or CSV name,weight (header optional).

    Classes a dict/CSV does not mention keep weight 1, so a file can list just the
    rare classes to up-weight; a name that is not a class is an error (typo guard).
    """
    try:
        if path.lower().endswith(".json"):
            with open(path) as f:
                data = json.load(f)
        else:
            with open(path, newline="") as f:
                rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
            if rows and len(rows[0]) >= 2:
                try:
                    float(rows[0][1])
                except ValueError:
                    rows = rows[1:]  # header line
            if any(len(r) < 2 for r in rows):
                raise UsageError(f"class weights CSV {path}: every line must be name,weight")
            data = {r[0].strip(): r[1].strip() for r in rows}
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read class weights file {path}: {e}") from None

    if isinstance(data, list):
        if len(data) != num_classes:
            raise UsageError(f"class weights file {path} has {len(data)} weights for {num_classes} classes")
        values = data
    elif isinstance(data, dict):
        if class_names is None:
            raise UsageError(f"class weights file {path} names classes, but no class names are known")
        index = {str(n): i for i, n in enumerate(class_names)}
        unknown = [k for k in data if str(k) not in index]
        if unknown:
            raise UsageError(f"class weights file {path}: unknown class names {unknown[:5]}")
        values = [1.0] * num_classes
        for k, v in data.items():
            values[index[str(k)]] = v
    else:
        raise UsageError(f"class weights file {path} must hold a list or a name->weight mapping")
    try:
        w = np.array([float(v) for v in values], np.float64)
    except (TypeError, ValueError):
        raise UsageError(f"class weights file {path}: weights must be numbers") from None
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise UsageError(f"class weights file {path}: weights must be finite and >= 0")
    return w


def class_weights(counts, mode: str, num_samples: int | None = None, *,
                  class_names: list[str] | None = None, multi_label: bool = False) -> np.ndarray | None:
    """Per-class weights for make_loss, or None for no weighting.

    Args:
        counts: training examples (single-label) or positive labels (multi-label) per class.
        mode: "none" -> None. "balanced" -> n / (K * count_k) (sklearn's "balanced";
            n = num_samples or sum(counts)), so the weighted class frequencies are
            equal; with multi_label=True, positive weights for the binary losses:
            (n - count_k) / count_k, the negatives-to-positives ratio of each class.
            A class with no examples gets 1 (it never appears as a true label
            anyway). Otherwise a file path (see _read_weights_file).
        num_samples: required for multi-label "balanced" (multi-label counts sum
            to the number of positive labels, not of samples).
        class_names: for files that name classes.

    Raises:
        ValueError: multi-label "balanced" without num_samples (a caller's bug).
        UsageError: a mode that is neither none, balanced nor an existing file,
            or a bad file.
    """
    counts = np.asarray(counts, np.float64).reshape(-1)
    k = len(counts)
    if mode in (None, "none", ""):
        return None
    if mode == "balanced":
        if multi_label and num_samples is None:
            raise ValueError("class_weights: multi-label 'balanced' needs num_samples")
        n = float(num_samples) if num_samples is not None else float(counts.sum())
        w = np.ones(k, np.float64)
        seen = counts > 0
        if multi_label:
            w[seen] = np.maximum(n - counts[seen], 0.0) / counts[seen]
        else:
            w[seen] = n / (k * counts[seen])
        return w
    if not os.path.isfile(mode):
        raise UsageError(f"--class-weights must be none, balanced or an existing file, not {mode!r}")
    return _read_weights_file(mode, k, class_names)


# ---------------------------------------------------------------- make_loss

def _per_output_weights(loss_weights, names: list[str]) -> dict[str, float]:
    if loss_weights is None:
        return {n: 1.0 for n in names}
    if isinstance(loss_weights, dict):
        unknown = [k for k in loss_weights if k not in names]
        if unknown:
            raise UsageError(f"loss weights for unknown outputs {unknown[:5]}")
        return {n: float(loss_weights.get(n, 1.0)) for n in names}
    values = list(np.asarray(loss_weights, np.float64).reshape(-1))
    if len(values) != len(names):
        raise UsageError(f"{len(values)} loss weights for {len(names)} outputs")
    return {n: float(v) for n, v in zip(names, values)}


def make_loss(head: str, num_classes: int, output_names, *, class_weights=None, label_smoothing: float = 0.0,
              focal: bool = False, focal_gamma: float = 2.0, loss_weights=None, ohem: float | None = None):
    """The loss (and per-output loss weights) for model.compile.

    Args:
        output_names: model.heads.output_names of the model.
        class_weights: K values (softmax: per true class; sigmoid/per-class:
            positive weights), or None.
        loss_weights: per-class head only: K values or {output_name: weight};
            None -> all 1.
        ohem: keep only this fraction of each batch's highest per-sample losses
            (online hard example mining; per output for the per-class head);
            None or 1 keeps all.

    Returns:
        (loss, loss_weights): a loss and None, or per-class a dict of losses and a
        dict of weights, both keyed by output name.

    Raises:
        UsageError: an unknown head, label smoothing outside [0, 1), or weights
            that do not fit the classes / outputs.
    """
    check_head(head)
    if not 0.0 <= label_smoothing < 1.0:
        raise UsageError(f"label smoothing must be in [0, 1), not {label_smoothing}")
    cw = None if class_weights is None else np.asarray(class_weights, np.float64).reshape(-1)
    if cw is not None and len(cw) != num_classes:
        raise UsageError(f"{len(cw)} class weights for {num_classes} classes")
    names = list(output_names)
    ohem = 1.0 if ohem is None else float(ohem)
    if not 0.0 < ohem <= 1.0:
        raise UsageError(f"ohem must be in (0, 1], not {ohem}")

    if head == "softmax":
        return WeightedCategoricalCrossentropy(cw, label_smoothing, focal, focal_gamma, ohem=ohem), None
    if head == "sigmoid":
        return WeightedBinaryCrossentropy(cw, label_smoothing, focal, focal_gamma, ohem=ohem), None
    if len(names) != num_classes:
        raise UsageError(f"per-class head: {len(names)} outputs for {num_classes} classes")
    losses = {
        name: WeightedBinaryCrossentropy(None if cw is None else [cw[i]], label_smoothing, focal, focal_gamma,
                                         name=f"{name}_bce", ohem=ohem)
        for i, name in enumerate(names)
    }
    return losses, _per_output_weights(loss_weights, names)

