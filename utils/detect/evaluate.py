"""Scores from (y_true, probs): accuracy, top-k, F-beta, per-class report; the PREFIX.eval/ files.

Pure numpy, no TensorFlow: detect.py collects the probabilities of a labelled
input and hands them here (threshold tuning is in thresholds.py). Conventions:
  y_true  multi-hot float/int array [N, K] (single-label data is one-hot)
  probs   float array [N, K] (softmax rows or independent sigmoids)
Single-label predictions are the argmax; multi-label predictions are
`probs >= thresholds` per class.

A class with no true and no predicted samples has precision/recall/F = 0 (the
sklearn "zero_division=0" convention), so macro averages never become NaN.
"""
from __future__ import annotations

import json
import os

import numpy as np

from utils.detect.thresholds import fbeta_from_counts, passes
from utils.files import atomic_write_csv, atomic_write_text
from utils.input.sampling import LOSSES_COLUMNS

REPORT_COLUMNS = ["class", "precision", "recall", "f1", "f2", "support", "predicted"]


def _safe_div(num, den):
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def predict_labels(probs: np.ndarray, multi_label: bool, thresholds=0.5) -> np.ndarray:
    """probs [N, K] -> 0/1 predictions [N, K]: argmax one-hot, or per-class thresholds."""
    probs = np.asarray(probs)
    if multi_label:
        return passes(probs, thresholds).astype(np.int8)
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
    """per_class.csv: per_class_report's rows, scores with 4 decimals."""
    atomic_write_csv(path, REPORT_COLUMNS, (
        [r["class"], f"{r['precision']:.4f}", f"{r['recall']:.4f}", f"{r['f1']:.4f}", f"{r['f2']:.4f}",
         r["support"], r["predicted"]] for r in rows))


def write_losses(path: str, ids, y_true, probs, losses, class_names, *, multi_label: bool, thresholds=0.5) -> int:
    """losses.csv: per row its source id, true labels, loss and predicted labels (train.py --hard-examples).

    Args:
        ids: the rows' ids (a dataset's image/source_id).
        losses: per-row loss [N] (utils/detect/report.sample_losses).
        thresholds: multi-label: the per-class thresholds of the prediction.

    Returns:
        rows written.
    """
    y_pred = predict_labels(probs, multi_label, thresholds)

    def names(row):
        return " ".join(class_names[k] for k in np.flatnonzero(np.asarray(row) > 0.5))

    return atomic_write_csv(path, LOSSES_COLUMNS, (
        [i, names(t), f"{float(loss):.6g}", names(p)] for i, t, loss, p in zip(ids, y_true, losses, y_pred)))


def macro_fbeta(y_true, y_pred, beta: float = 1.0) -> float:
    """Mean over classes of each class's F-beta, from 0/1 arrays [N, K]."""
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


def write_evaluation(out_dir: str, y_true, probs, class_names: list[str], *, multi_label: bool,
                     thresholds, unit: str = "images") -> dict:
    """--evaluate: per_class.csv and metrics.json in `out_dir`; the summary on stdout.

    The plots are the page's (utils/detect/report.py writes them beside index.html).
    The last stdout line is the headline score.

    Returns:
        the metrics (as `evaluate` returns them).
    """
    metrics = evaluate(y_true, probs, class_names, multi_label=multi_label, thresholds=thresholds)
    os.makedirs(out_dir, exist_ok=True)
    write_report_csv(metrics["per_class"], os.path.join(out_dir, "per_class.csv"))
    atomic_write_text(os.path.join(out_dir, "metrics.json"),
                      json.dumps({k: v for k, v in metrics.items() if k != "per_class"}, indent=1))
    print(summary_table(metrics))
    print(f"evaluation files in {out_dir}/")
    print(headline(metrics, unit))
    return metrics
