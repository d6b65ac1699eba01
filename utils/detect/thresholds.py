"""Per-class thresholds: applying them, tuning them, and where they come from.

Pure numpy, no TensorFlow: the tuning works on (y_true, probs) arrays
  y_true  multi-hot [N, K] (single-label data is one-hot)
  probs   float [N, K] (independent sigmoids)
and a class is predicted where `probs >= threshold` (`passes`), compared in float64.

Where a run's thresholds come from (`resolve_thresholds`): --threshold, else
--thresholds FILE, else the single model's tuned ones (NAME.json), else 0.5.
--tune-thresholds saves them as NAME.thresholds.json and into NAME.json.
"""
from __future__ import annotations

import csv
import json
import os
from typing import TYPE_CHECKING

import numpy as np

from utils.errors import UsageError
from utils.files import atomic_write_json

if TYPE_CHECKING:
    from utils.detect.models import Member

TUNE_METRICS = {"f1": 1.0, "f2": 2.0}   # --tune-metric -> the beta of the F-beta it maximises
DEFAULT = 0.5


def passes(probs, thresholds) -> np.ndarray:
    """probs [..., K] >= per-class thresholds [K] (or one number) -> bool [..., K].

    Compared in float64: tuned thresholds sit between float32 values and must stay there.
    """
    return np.asarray(probs) >= np.asarray(thresholds, dtype=np.float64)


def fbeta_from_counts(tp, fp, fn, beta: float = 1.0):
    """F-beta from counts (scalars or arrays); 0 where nothing is true or predicted."""
    b2 = beta * beta
    tp, fp, fn = (np.asarray(v, dtype=np.float64) for v in (tp, fp, fn))
    num = (1 + b2) * tp
    den = num + b2 * fn + fp
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def tune_thresholds(y_true, probs, *, beta: float = 1.0, default: float = DEFAULT, max_candidates: int = 1000):
    """Per-class thresholds maximising that class's F-beta on (y_true, probs).

    Candidates come from the data: the midpoints between consecutive distinct
    probabilities of the class (a midpoint keeps the tuning set's decision and
    leaves a margin on both sides), plus `default`. A class's score at `default`
    is always a candidate, so each class scores at least as well as with
    `default`, hence so does the macro average. A class with no positive sample
    keeps `default` (every threshold gives F = 0 there; no evidence to move it).

    Returns:
        (thresholds [K] float list, per-class best scores [K]).
    """
    y_true = np.asarray(y_true) > 0.5
    probs = np.asarray(probs, dtype=np.float64)
    n, k = probs.shape
    thresholds, scores = np.full(k, default, dtype=np.float64), np.zeros(k)
    for c in range(k):
        pos = int(y_true[:, c].sum())
        p = probs[:, c]
        base_tp = int((y_true[:, c] & (p >= default)).sum())
        base_pred = int((p >= default).sum())
        scores[c] = float(fbeta_from_counts(base_tp, base_pred - base_tp, pos - base_tp, beta))
        if pos == 0 or n == 0:
            continue
        # Sort descending: predicting the first i samples positive <=> threshold just below p_sorted[i-1]
        order = np.argsort(-p, kind="stable")
        ps, ys = p[order], y_true[order, c]
        tp = np.cumsum(ys)
        # only cut where the value changes, so ties stay on the same side
        cut = np.nonzero(np.append(ps[1:] < ps[:-1], True))[0]
        if len(cut) > max_candidates:   # a large set: evenly spaced cut points are enough
            cut = cut[np.linspace(0, len(cut) - 1, max_candidates).astype(int)]
        tpc = tp[cut]
        f = fbeta_from_counts(tpc, cut + 1 - tpc, pos - tpc, beta)
        best = int(np.argmax(f))
        if f[best] > scores[c]:
            i = cut[best]
            lower = ps[i + 1] if i + 1 < n else max(0.0, ps[i] - 1e-3)
            thresholds[c] = float((ps[i] + lower) / 2.0)
            scores[c] = float(f[best])
    return [float(t) for t in thresholds], scores


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def _read_file(path: str):
    """A thresholds file as written: a list, or a {class name: threshold} mapping."""
    if path.lower().endswith(".csv"):
        with open(path, newline="") as f:
            rows = [r for r in csv.reader(f) if r]
        if rows and not _is_number(rows[0][-1]):
            rows = rows[1:]
        return {r[0]: float(r[-1]) for r in rows}
    with open(path) as f:
        data = json.load(f)
    if isinstance(data, dict) and "thresholds" in data:
        # our own NAME.thresholds.json names its classes: match by name, not position,
        # so a file tuned for another model with as many classes is not applied blindly
        saved_names = data.get("class_names")
        data = data["thresholds"]
        if isinstance(saved_names, list) and isinstance(data, list):
            if len(saved_names) != len(data):
                raise ValueError(f"{len(saved_names)} class_names but {len(data)} thresholds")
            data = dict(zip((str(n) for n in saved_names), data))
    return data


def load_thresholds(path: str, class_names: list[str]) -> list[float]:
    """Per-class thresholds from JSON (list, {name: t}, or {"thresholds": [...]}) or CSV (name,threshold).

    Raises:
        UsageError: a missing or unreadable file, or one that does not fit `class_names`.
    """
    if not os.path.isfile(path):
        raise UsageError(f"thresholds file not found: {path}")
    try:
        data = _read_file(path)
    except (ValueError, IndexError) as e:
        raise UsageError(f"cannot read thresholds from {path}: {e}") from None
    if isinstance(data, dict):
        known = set(class_names)
        unknown = [c for c in data if c not in known]
        if unknown:
            raise UsageError(f"{path} has a threshold for class {unknown[0]!r} that the model does not know "
                             f"({len(unknown)} unknown): is it for another model?")
        missing = [c for c in class_names if c not in data]
        if missing:
            raise UsageError(f"{path} has no threshold for class {missing[0]!r} ({len(missing)} missing)")
        values = [data[c] for c in class_names]
    elif isinstance(data, list):
        if len(data) != len(class_names):
            raise UsageError(f"{path} has {len(data)} thresholds for {len(class_names)} classes")
        values = data
    else:
        raise UsageError(f"{path}: expected a list or a class -> threshold mapping")
    try:
        return [float(t) for t in values]
    except (TypeError, ValueError):
        bad = next(t for t in values if not isinstance(t, (int, float)) and not _is_number(str(t)))
        raise UsageError(f"{path}: threshold {bad!r} is not a number") from None


def resolve_thresholds(members: list[Member], *, threshold: float | None = None,
                       thresholds_file: str | None = None) -> list[float]:
    """--threshold, else --thresholds FILE, else the (single) model's tuned ones, else 0.5."""
    names = members[0].class_names
    if threshold is not None:
        return [float(threshold)] * len(names)
    if thresholds_file:
        return load_thresholds(thresholds_file, names)
    tuned = members[0].meta.get("thresholds")
    if len(members) == 1 and isinstance(tuned, list) and len(tuned) == len(names):
        return [float(t) for t in tuned]
    return [DEFAULT] * len(names)


def thresholds_path(model_path: str) -> str:
    """model_save/x.h5 -> model_save/x.thresholds.json (beside NAME.json)."""
    from model.meta import meta_path  # lazy: the model package imports Keras

    return meta_path(model_path)[: -len(".json")] + ".thresholds.json"


def save_thresholds(path: str, class_names: list[str], thresholds: list[float], metric: str, score: float) -> str:
    """Write a NAME.thresholds.json (metric, score, class names, thresholds); returns `path`."""
    data = {"metric": metric, "score": score, "class_names": class_names, "thresholds": thresholds}
    atomic_write_json(path, data)
    return path


def tune_and_save(members: list[Member], y_true, probs, metric: str, ensemble_path: str):
    """--tune-thresholds: tune on this labelled input and save the result.

    One model: beside it (NAME.thresholds.json) and into its NAME.json, so they
    become its default. An ensemble: at `ensemble_path` only, since they were
    tuned for the average, not for any one member.

    Returns:
        (thresholds, macro score on the tuning data, the path written).
    """
    from model.meta import save_meta  # lazy: the model package imports Keras

    thresholds, scores = tune_thresholds(y_true, probs, beta=TUNE_METRICS[metric])
    score = float(scores.mean())
    names = members[0].class_names
    if len(members) == 1:
        m = members[0]
        path = save_thresholds(thresholds_path(m.path), names, thresholds, metric, score)
        m.meta["thresholds"] = thresholds
        save_meta(m.path, m.meta)
    else:
        path = save_thresholds(ensemble_path, names, thresholds, metric, score)
    return thresholds, score, path
