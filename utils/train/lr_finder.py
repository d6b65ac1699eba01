"""--find-lr: a short exponential LR sweep (fastai's lr_find), its plot and a suggested --lr.

One optimizer step per batch, the LR growing from MIN to MAX by the same
factor each step. Each step's loss is that batch's own (train_on_batch resets
the metrics, unlike fit's running epoch mean); the curve is an exponential
moving average with bias correction (beta 0.98, as fastai). The sweep stops
when the smoothed loss exceeds DIVERGE x its best so far, or is not finite.

The suggestion is the steepest descent of the smoothed loss against log(LR),
looked for before the loss minimum: where the loss falls fastest, training is
fast and still stable. (fastai's "minimum / 10" is printed beside it.) The
weights the sweep moved are thrown away: nothing is saved.
"""
from __future__ import annotations

import math
import os

import numpy as np

from utils.files import atomic_write_csv
from utils.plots import save_lr_find_plot
from utils.train.config import parse_lr_range

BETA = 0.98    # loss smoothing (EMA with bias correction)
DIVERGE = 4.0  # stop when the smoothed loss exceeds this x its best


def lr_at(i: int, n: int, lo: float, hi: float) -> float:
    """The LR of step i of n: lo x (hi/lo)^(i/(n-1)), so step 0 is lo and step n-1 is hi."""
    return lo * (hi / lo) ** (i / max(1, n - 1))


def smooth(losses, beta: float = BETA) -> np.ndarray:
    """Bias-corrected exponential moving average of the losses."""
    out, avg = [], 0.0
    for i, loss in enumerate(losses, 1):
        avg = beta * avg + (1 - beta) * float(loss)
        out.append(avg / (1 - beta ** i))
    return np.asarray(out, dtype=np.float64)


def diverged(smoothed: float, best: float, factor: float = DIVERGE) -> bool:
    """The sweep's stop rule: not finite, or above `factor` x the best smoothed loss."""
    return not math.isfinite(smoothed) or smoothed > factor * best


def suggest(lrs, smoothed) -> float:
    """The LR of steepest descent of `smoothed` vs log(lr), before its minimum (always a swept LR)."""
    lrs, smoothed = np.asarray(lrs, np.float64), np.asarray(smoothed, np.float64)
    end = int(np.argmin(smoothed)) + 1
    if end < 3:  # too few points before the minimum for a slope
        return float(lrs[max(0, end - 1)])
    skip = min(10, end // 5)  # the first smoothed points mostly reflect the initial loss
    grad = np.gradient(smoothed[:end], np.log(lrs[:end]))
    return float(lrs[skip + int(np.argmin(grad[skip:]))])


def sweep(model, batches, lo: float, hi: float, steps: int) -> dict:
    """Train one batch per LR step; stop on divergence.

    Args:
        model: compiled with a float learning rate (it is assigned per step).
        batches: an iterator of (x, y) that yields at least `steps` batches.

    Returns:
        {"lr", "loss", "smoothed": lists per step taken, "diverged": bool}.
    """
    lrs, losses, best, stop = [], [], math.inf, False
    for i in range(steps):
        x, y = next(batches)
        lr = lr_at(i, steps, lo, hi)
        model.optimizer.learning_rate = lr
        loss = float(model.train_on_batch(x, y, return_dict=True)["loss"])
        lrs.append(lr)
        losses.append(loss)
        s = smooth(losses)[-1]
        if diverged(s, best):
            stop = True
            break
        best = min(best, s)
    return {"lr": lrs, "loss": losses, "smoothed": list(smooth(losses)), "diverged": stop}


def find_lr(model, dataset, cfg: dict, log_dir: str) -> dict:
    """The whole --find-lr: sweep, log_dir/lr_find.png and lr_find.csv, the suggestion.

    Args:
        model: compiled with a float learning rate.
        dataset: the (repeating) training batches.
        cfg: the resolved config (find_lr_range, find_lr_steps).

    Returns:
        {"suggestion", "min_div10", "steps", "diverged", "png", "csv"}.
    """
    lo, hi = parse_lr_range(cfg["find_lr_range"])
    result = sweep(model, iter(dataset), lo, hi, cfg["find_lr_steps"])
    # the divergent last point is plotted but does not count for the suggestion
    kept = len(result["lr"]) - (1 if result["diverged"] and len(result["lr"]) > 1 else 0)
    lrs, sm = result["lr"][:kept], result["smoothed"][:kept]
    lr = suggest(lrs, sm)
    png = save_lr_find_plot(result["lr"], result["smoothed"], lr, os.path.join(log_dir, "lr_find.png"))
    csv_path = os.path.join(log_dir, "lr_find.csv")
    atomic_write_csv(csv_path, ["lr", "loss", "smoothed"], zip(result["lr"], result["loss"], result["smoothed"]))
    return {"suggestion": lr, "min_div10": float(lrs[int(np.argmin(sm))]) / 10, "steps": len(result["lr"]),
            "diverged": result["diverged"], "png": png, "csv": csv_path}
