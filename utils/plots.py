"""PNG figures for train.py and detect.py: augmented-image grid, training curves,
confusion matrix, precision-recall curves.

Uses matplotlib's object API (`matplotlib.figure.Figure` drawn by the Agg
canvas) rather than pyplot: no display is needed, no global figure state leaks
between calls, and it works in worker threads and on headless machines without
setting MPLBACKEND. Every function writes atomically (temp file + rename) and
returns the path it wrote.
"""
from __future__ import annotations

import csv
import math
import os

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from utils.files import atomic_path

DPI = 100


def _save(fig: Figure, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    FigureCanvasAgg(fig)
    with atomic_path(path, tmp_suffix=".tmp.png") as tmp:
        fig.savefig(tmp, dpi=DPI)
    return path


def _displayable(img) -> np.ndarray:
    """[H, W, C] float in [0, 255] (or uint8) -> something imshow draws right.

    1 channel -> gray; 3 -> RGB; other counts (6-channel microscopy) -> the first
    three channels as RGB, each stretched to its own range so faint stains show.
    """
    arr = np.asarray(img, dtype=np.float32)
    if arr.ndim == 2:
        arr = arr[..., None]
    channels = arr.shape[-1]
    if channels == 1:
        return np.clip(arr[..., 0] / 255.0, 0, 1)
    if channels == 3:
        return np.clip(arr / 255.0, 0, 1)
    if channels > 3:
        arr = arr[..., :3]
    else:
        arr = np.concatenate([arr, np.zeros(arr.shape[:2] + (3 - channels,), arr.dtype)], -1)
    lo = arr.min(axis=(0, 1), keepdims=True)
    hi = arr.max(axis=(0, 1), keepdims=True)
    return (arr - lo) / np.maximum(hi - lo, 1e-6)


def save_image_grid(images, titles, path: str, ncols: int | None = None) -> str:
    """A grid of images with titles, as a PNG.

    Args:
        images: float32 [N, H, W, C] in [0, 255], as the pipeline yields (or uint8).
        titles: one per image (cut to 28 characters), or None.
        path: the PNG to write.
        ncols: columns; default about sqrt(N).
    Returns:
        path.
    Raises:
        ValueError: no images.
    """
    images = np.asarray(images)
    n = len(images)
    if n == 0:
        raise ValueError("save_image_grid: no images")
    titles = list(titles) if titles is not None else [""] * n
    ncols = ncols or min(n, max(1, math.ceil(math.sqrt(n))))
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(2.2 * ncols, 2.4 * nrows))
    for i in range(nrows * ncols):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        ax.axis("off")
        if i < n:
            shown = _displayable(images[i])
            ax.imshow(shown, cmap="gray" if shown.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
            if i < len(titles) and titles[i]:
                ax.set_title(str(titles[i])[:28], fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def _read_history(csv_path: str) -> dict[str, list[float]]:
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    cols: dict[str, list[float]] = {}
    for row in rows:
        for k, v in row.items():
            if k is None:
                continue
            try:
                cols.setdefault(k, []).append(float(v))
            except (TypeError, ValueError):
                cols.setdefault(k, []).append(float("nan"))
    return cols


def history_panels(columns, max_panels: int = 8) -> list[str]:
    """Metric names to plot, train names only (val_X goes on X's panel); loss first.

    Per-class models log one loss/metric per output; a panel each would be
    unreadable, so only the first `max_panels` names are kept.
    """
    skip = {"epoch", "lr", "learning_rate"}
    names = [c for c in columns if c not in skip and not c.startswith("val_")]
    names.sort(key=lambda c: (c != "loss", c.endswith("_loss")))  # stable: CSV order otherwise
    return names[:max_panels]


def save_history_plot(csv_path: str, path: str) -> str:
    """Loss and metric curves, train vs validation, from the per-epoch CSV (Keras CSVLogger).

    A panel whose values span more than 50x gets a log axis; the learning rate,
    when logged, gets a panel of its own. Returns path.
    """
    cols = _read_history(csv_path)
    epochs = cols.get("epoch") or list(range(len(next(iter(cols.values()), []))))
    epochs = [e + 1 for e in epochs]  # CSVLogger counts from 0; people count from 1
    panels = history_panels(cols)
    lr = cols.get("learning_rate") or cols.get("lr")
    total = len(panels) + (1 if lr else 0)
    if total == 0:
        fig = Figure(figsize=(4, 3))
        fig.add_subplot(1, 1, 1).text(0.5, 0.5, "no epochs logged", ha="center", va="center")
        return _save(fig, path)
    ncols = min(total, 3)
    nrows = math.ceil(total / ncols)
    fig = Figure(figsize=(4.2 * ncols, 3.2 * nrows))
    for i, name in enumerate(panels):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        ax.plot(epochs, cols[name], "o-", ms=3, label="train")
        if "val_" + name in cols:
            ax.plot(epochs, cols["val_" + name], "o-", ms=3, label="val")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        if _wide_positive_range(cols[name] + cols.get("val_" + name, [])):
            # an early spike (val loss 110 then 0.6, common from scratch) flattens a linear axis
            ax.set_yscale("log")
    if lr:
        ax = fig.add_subplot(nrows, ncols, total)
        ax.plot(epochs, lr, "o-", ms=3, color="gray")
        ax.set_title("learning rate", fontsize=9)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def save_lr_find_plot(lrs, smoothed, suggestion: float, path: str) -> str:
    """train.py --find-lr: smoothed loss vs learning rate (log x), the suggested LR marked. Returns path."""
    fig = Figure(figsize=(5.5, 3.6))
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(lrs, smoothed, "-", color="tab:blue")
    ax.axvline(suggestion, color="tab:red", ls="--", lw=1)
    i = int(np.argmin(np.abs(np.log(np.asarray(lrs)) - math.log(suggestion))))
    ax.plot([suggestion], [smoothed[i]], "o", color="tab:red", label=f"suggested --lr {suggestion:.2g}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss (smoothed)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def _wide_positive_range(values, ratio: float = 50.0) -> bool:
    finite = [v for v in values if v == v and v not in (float("inf"), float("-inf"))]
    return bool(finite) and min(finite) > 0 and max(finite) / min(finite) > ratio


def most_confused(cm: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k classes with the most off-diagonal mass (as truth or as prediction)."""
    off = cm.astype(np.float64).copy()
    np.fill_diagonal(off, 0)
    score = off.sum(0) + off.sum(1)
    return np.sort(np.argsort(-score, kind="stable")[:k])


def save_confusion_matrix(cm, class_names, path: str, max_classes: int = 30) -> str:
    """Confusion matrix (rows = truth, columns = prediction), colour = row-normalised.

    With more than max_classes classes only the most confused ones are drawn
    (a 5,270-class matrix is not a picture), and the title says so. Returns path.
    """
    cm = np.asarray(cm)
    k = cm.shape[0]
    names = [str(n) for n in class_names] if class_names is not None else [str(i) for i in range(k)]
    title = "confusion matrix"
    if k > max_classes:
        keep = most_confused(cm, max_classes)
        cm = cm[np.ix_(keep, keep)]
        names = [names[i] for i in keep]
        title = f"{max_classes} most confused of {k} classes"
    n = cm.shape[0]
    rows = cm.sum(1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=np.float64), where=rows > 0)
    side = min(max(4.0, 0.45 * n + 2.0), 18.0)
    fig = Figure(figsize=(side + 1.0, side))
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    ticks = np.arange(n)
    font_size = 8 if n <= 20 else 6
    ax.set_xticks(ticks)
    ax.set_yticks(ticks)
    ax.set_xticklabels([s[:20] for s in names], rotation=90, fontsize=font_size)
    ax.set_yticklabels([s[:20] for s in names], fontsize=font_size)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if n <= 30:
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=font_size,
                            color="white" if norm[i, j] > 0.5 else "black")
    fig.tight_layout()
    return _save(fig, path)


def pr_curve(y_true, scores) -> tuple[np.ndarray, np.ndarray, float]:
    """Binary labels + scores -> (precision, recall, average precision)."""
    y = np.asarray(y_true).astype(bool).ravel()
    score = np.asarray(scores, dtype=np.float64).ravel()
    order = np.argsort(-score, kind="stable")
    y, score = y[order], score[order]
    tp = np.cumsum(y)
    fp = np.cumsum(~y)
    last = np.r_[np.nonzero(np.diff(score))[0], len(score) - 1]  # one point per distinct threshold
    tp, fp = tp[last], fp[last]
    pos = max(int(y.sum()), 1)
    precision = np.r_[1.0, tp / np.maximum(tp + fp, 1)]
    recall = np.r_[0.0, tp / pos]
    ap = float(np.sum(np.diff(recall) * precision[1:]))
    return precision, recall, ap


def save_pr_curves(y_true, y_prob, class_names, path: str, max_classes: int = 10) -> str:
    """Precision-recall curves: micro-average plus the max_classes most frequent classes.

    Args:
        y_true: 0/1 labels [N, K].
        y_prob: scores [N, K].
        class_names: K names, or None for their indices.
        path: the PNG to write.
    Returns:
        path.
    """
    y_true = np.asarray(y_true)
    y_prob = np.asarray(y_prob)
    k = y_prob.shape[1]
    names = [str(n) for n in class_names] if class_names is not None else [str(i) for i in range(k)]
    fig = Figure(figsize=(7, 6))
    ax = fig.add_subplot(1, 1, 1)
    precision, recall, ap = pr_curve(y_true, y_prob)
    ax.plot(recall, precision, color="black", lw=2, label=f"micro-average (AP {ap:.3f})")
    order = np.argsort(-y_true.sum(0), kind="stable")
    shown = [c for c in order if y_true[:, c].sum() > 0][:max_classes]
    for c in shown:
        precision, recall, ap = pr_curve(y_true[:, c], y_prob[:, c])
        ax.plot(recall, precision, lw=1, label=f"{names[c][:20]} (AP {ap:.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    more = f" ({len(shown)} most frequent of {k} classes)" if k > len(shown) else ""
    ax.set_title("precision-recall" + more, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return _save(fig, path)
