"""Scores from (y_true, probs): accuracy, top-k, F-beta, per-class report, threshold tuning.

Pure numpy, no TensorFlow: detect.py collects the probabilities of a labelled
input and hands them here. Conventions:
  y_true  multi-hot float/int array [N, K] (single-label data is one-hot)
  probs   float array [N, K] (softmax rows or independent sigmoids)
Single-label predictions are the argmax; multi-label predictions are
`probs >= thresholds` per class.

A class with no true and no predicted samples has precision/recall/F = 0 (the
sklearn "zero_division=0" convention), so macro averages never become NaN.
"""
from __future__ import annotations

import csv
import numpy as np


def fbeta_from_counts(tp, fp, fn, beta: float = 1.0):
    """F-beta from counts (scalars or arrays); 0 where nothing is true or predicted."""
    b2 = beta * beta
    tp, fp, fn = (np.asarray(v, dtype=np.float64) for v in (tp, fp, fn))
    num = (1 + b2) * tp
    den = num + b2 * fn + fp
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def _safe_div(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return np.divide(a, b, out=np.zeros_like(a), where=b > 0)


def predict_labels(probs: np.ndarray, multi_label: bool, thresholds=0.5) -> np.ndarray:
    """probs [N, K] -> 0/1 predictions [N, K]: argmax one-hot, or per-class thresholds."""
    probs = np.asarray(probs)
    if multi_label:
        # compare in float64: tuned thresholds sit between float32 values and must stay there
        return (probs >= np.asarray(thresholds, dtype=np.float64)).astype(np.int8)
    out = np.zeros(probs.shape, dtype=np.int8)
    if len(probs):
        out[np.arange(len(probs)), probs.argmax(axis=1)] = 1
    return out


def confusion_counts(y_true: np.ndarray, y_pred: np.ndarray):
    """Per-class tp, fp, fn, support from 0/1 arrays [N, K]."""
    t, p = np.asarray(y_true) > 0.5, np.asarray(y_pred) > 0
    tp = (t & p).sum(axis=0)
    fp = (~t & p).sum(axis=0)
    fn = (t & ~p).sum(axis=0)
    return tp, fp, fn, t.sum(axis=0)


def per_class_report(y_true, y_pred, class_names, counts=None) -> list[dict]:
    """One row per class: precision, recall, f1, f2, support, predicted count.

    `counts`: confusion_counts(y_true, y_pred) when the caller has them already.
    """
    tp, fp, fn, support = counts if counts is not None else confusion_counts(y_true, y_pred)
    precision, recall = _safe_div(tp, tp + fp), _safe_div(tp, tp + fn)
    f1, f2 = fbeta_from_counts(tp, fp, fn, 1.0), fbeta_from_counts(tp, fp, fn, 2.0)
    return [
        {"class": name, "precision": float(precision[i]), "recall": float(recall[i]),
         "f1": float(f1[i]), "f2": float(f2[i]), "support": int(support[i]),
         "predicted": int(tp[i] + fp[i])}
        for i, name in enumerate(class_names)
    ]


def write_report_csv(rows: list[dict], path: str) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["class", "precision", "recall", "f1", "f2", "support", "predicted"])
        for r in rows:
            w.writerow([r["class"], f"{r['precision']:.4f}", f"{r['recall']:.4f}", f"{r['f1']:.4f}",
                        f"{r['f2']:.4f}", r["support"], r["predicted"]])


def macro_fbeta(y_true, y_pred, beta: float = 1.0) -> float:
    tp, fp, fn, _ = confusion_counts(y_true, y_pred)
    return float(fbeta_from_counts(tp, fp, fn, beta).mean()) if len(tp) else 0.0


def samples_fbeta(y_true, y_pred, beta: float = 2.0) -> float:
    """Mean over samples of each sample's F-beta (the iMet leaderboard metric)."""
    t, p = np.asarray(y_true) > 0.5, np.asarray(y_pred) > 0
    tp = (t & p).sum(axis=1)
    return float(fbeta_from_counts(tp, (~t & p).sum(axis=1), (t & ~p).sum(axis=1), beta).mean()) if len(t) else 0.0


def topk_accuracy(y_true, probs, k: int) -> float:
    """Share of samples whose (first) true class is among the k highest probabilities."""
    probs = np.asarray(probs)
    if not len(probs):
        return 0.0
    k = min(k, probs.shape[1])
    true = np.asarray(y_true).argmax(axis=1)
    # argpartition: O(K) per row instead of a full sort, matters for 5,270 classes
    top = np.argpartition(-probs, k - 1, axis=1)[:, :k]
    return float((top == true[:, None]).any(axis=1).mean())


def confusion_matrix(y_true, probs) -> np.ndarray:
    """[K, K] counts, rows = true class, columns = predicted (argmax) class."""
    probs = np.asarray(probs)
    k = probs.shape[1]
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true).argmax(axis=1), probs.argmax(axis=1)), 1)
    return cm


def evaluate(y_true, probs, class_names, *, multi_label: bool, thresholds=0.5) -> dict:
    """All headline metrics plus the per-class rows; see module docstring for shapes."""
    y_true, probs = np.asarray(y_true, dtype=np.float32), np.asarray(probs, dtype=np.float32)
    y_pred = predict_labels(probs, multi_label, thresholds)
    # one pass over the [N, K] arrays serves every per-class score (K is 5,270 for Cdiscount)
    counts = confusion_counts(y_true, y_pred)
    tp, fp, fn, _ = counts
    per_class = per_class_report(y_true, y_pred, class_names, counts)
    out = {
        "n": int(len(probs)),
        "multi_label": bool(multi_label),
        "macro_f1": float(np.mean([r["f1"] for r in per_class])) if per_class else 0.0,
        "macro_f2": float(np.mean([r["f2"] for r in per_class])) if per_class else 0.0,
        "per_class": per_class,
    }
    if multi_label:
        out["micro_f1"] = float(fbeta_from_counts(tp.sum(), fp.sum(), fn.sum(), 1.0))
        out["samples_f2"] = samples_fbeta(y_true, y_pred, 2.0)
        out["exact_match"] = float(((y_true > 0.5) == (y_pred > 0)).all(axis=1).mean()) if len(probs) else 0.0
    else:
        out["accuracy"] = topk_accuracy(y_true, probs, 1)
        out["top5"] = topk_accuracy(y_true, probs, 5)
    return out


def headline(metrics: dict, unit: str = "images") -> str:
    """The last stdout line of an evaluation: one number a person or script can read."""
    if metrics["multi_label"]:
        return f"macro_f1 {metrics['macro_f1']:.3f} on {metrics['n']} {unit}"
    return f"accuracy {metrics['accuracy']:.3f} on {metrics['n']} {unit}"


def summary_table(metrics: dict, max_rows: int = 10) -> str:
    """A short plain-text table: the overall scores, then the weakest classes by F1."""
    keys = (["micro_f1", "macro_f1", "macro_f2", "samples_f2", "exact_match"] if metrics["multi_label"]
            else ["accuracy", "top5", "macro_f1", "macro_f2"])
    lines = [f"{k:<12} {metrics[k]:.4f}" for k in keys]
    rows = [r for r in metrics["per_class"] if r["support"] > 0]
    rows.sort(key=lambda r: (r["f1"], -r["support"]))
    if rows:
        width = max(8, min(30, max(len(r["class"]) for r in rows[:max_rows])))
        lines.append("")
        lines.append(f"{'class':<{width}} {'prec':>6} {'recall':>6} {'f1':>6} {'support':>7}"
                     + ("   (weakest first)" if len(rows) > max_rows else ""))
        for r in rows[:max_rows]:
            lines.append(f"{r['class'][:width]:<{width}} {r['precision']:>6.3f} {r['recall']:>6.3f} "
                         f"{r['f1']:>6.3f} {r['support']:>7d}")
    return "\n".join(lines)


def tune_thresholds(y_true, probs, *, beta: float = 1.0, default: float = 0.5, max_candidates: int = 1000):
    """Per-class thresholds maximising that class's F-beta on (y_true, probs).

    Candidates come from the data: the midpoints between consecutive distinct
    probabilities of the class (a midpoint keeps the tuning set's decision and
    leaves a margin on both sides), plus `default`. A class's score at `default`
    is always a candidate, so each class scores at least as well as with
    `default`, hence so does the macro average. A class with no positive sample
    keeps `default` (every threshold gives F = 0 there; no evidence to move it).
    Returns (thresholds [K] float list, per-class best scores [K]).
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
