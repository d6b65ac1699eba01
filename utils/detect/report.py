"""detect.py --evaluate as one page: PREFIX.eval/index.html, self-contained (images embedded).

Sections, in order:
  metrics          the headline scores (accuracy, top-5, macro F1/F2; multi-label: micro F1,
                   samples F2, exact match), from utils/detect/evaluate.py's `evaluate`, so
                   they are the numbers of metrics.json and per_class.csv (same rounding)
  per class        precision / recall / F1 / F2 / support / predicted, sortable
  thresholds       multi-label with tuned thresholds: the threshold and F1 per class
  confusion        single-label: the matrix as a table up to MAX_MATRIX classes, above that
                   the most-confused (true, predicted, count) pairs as fastai's
                   `most_confused`; the PNG of utils/plots.py either way
  precision-recall utils/plots.py's PR curves
  top losses       the TOP_LOSSES samples with the highest loss: a table, and with
                   thumbnails a grid (true / predicted / probability), also top_losses.png
                   as fastai's plot_top_losses
  products         with `products` (Cdiscount: a product's photos): product-level scores
                   (photo probabilities averaged, as detect.py's group_rows does) and the
                   worst products with their photos side by side

The PNGs are written beside the page too (confusion_matrix.png, pr_curves.png,
top_losses.png), under the names detect.py has always used.
"""
from __future__ import annotations

import io
import os
from typing import Callable, Sequence

import numpy as np

from utils import plots
from utils.detect.evaluate import confusion_matrix, evaluate, predict_labels
from utils.report import Page

TOP_LOSSES = 16
MAX_MATRIX = 30       # classes up to which the confusion matrix is a table
MOST_CONFUSED = 30    # pairs listed above that
PRODUCTS_SHOWN = 12
FIGURE_WIDTH = 640    # px on the page (the PNGs keep their own size)
EPS = 1e-7            # probabilities clipped to [EPS, 1 - EPS] in the loss, as Keras's crossentropy
HEADLINE = {False: ["accuracy", "top5", "macro_f1", "macro_f2"],
            True: ["micro_f1", "macro_f1", "macro_f2", "samples_f2", "exact_match"]}
PER_CLASS = ["class", "precision", "recall", "f1", "f2", "support", "predicted"]


def sample_losses(y_true, y_prob, multi_label: bool) -> np.ndarray:
    """Per-sample loss [N]: categorical crossentropy, or mean binary crossentropy over classes."""
    t = np.asarray(y_true, dtype=np.float64)
    p = np.clip(np.asarray(y_prob, dtype=np.float64), EPS, 1 - EPS)
    if multi_label:
        return -(t * np.log(p) + (1 - t) * np.log(1 - p)).mean(axis=1)
    return -(t * np.log(p)).sum(axis=1)


def most_confused_pairs(cm: np.ndarray, class_names: Sequence[str], k: int = MOST_CONFUSED,
                        min_count: int = 1) -> list[tuple[str, str, int]]:
    """(true, predicted, count) of the largest off-diagonal cells, most first (fastai's most_confused)."""
    off = np.asarray(cm).copy()
    np.fill_diagonal(off, 0)
    flat = np.argsort(-off, axis=None, kind="stable")[:k]
    rows, cols = np.unravel_index(flat, off.shape)
    return [(class_names[i], class_names[j], int(off[i, j])) for i, j in zip(rows, cols) if off[i, j] >= min_count]


def thumbnail_png(image) -> bytes:
    """[h, w, C] float in [0, 255] (or uint8) -> PNG bytes, shown as utils/plots.py shows images."""
    from PIL import Image

    # plots' own rule (gray, RGB, the first 3 of 6 stain channels stretched), not a copy of it
    shown = plots._displayable(image)
    buf = io.BytesIO()
    Image.fromarray(np.round(np.clip(shown, 0, 1) * 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _labels(row, names) -> str:
    return " ".join(names[i] for i in np.nonzero(np.asarray(row) > 0.5)[0]) or "(none)"


def _thumbnail(thumbnails, i: int):
    return thumbnails(i) if callable(thumbnails) else thumbnails[i]


class _Eval:
    """One evaluation's arrays and the strings every section shows."""

    def __init__(self, class_names, y_true, y_prob, ids, multi_label, thresholds):
        self.names = [str(c) for c in class_names]
        self.y_true = np.asarray(y_true, dtype=np.float32)
        self.y_prob = np.asarray(y_prob, dtype=np.float32)
        self.ids = [str(i) for i in ids]
        self.multi = bool(multi_label)
        self.thresholds = thresholds if thresholds is not None else 0.5
        self.y_pred = predict_labels(self.y_prob, self.multi, self.thresholds)
        self.losses = sample_losses(self.y_true, self.y_prob, self.multi)

    def truth(self, i: int) -> str:
        return _labels(self.y_true[i], self.names)

    def predicted(self, i: int) -> str:
        return _labels(self.y_pred[i], self.names)

    def top_prob(self, i: int) -> float:
        return float(self.y_prob[i].max())

    def correct(self, i: int) -> bool:
        return bool(((self.y_true[i] > 0.5) == (self.y_pred[i] > 0)).all())


def write_eval_report(out_dir: str, *, class_names, y_true, y_prob, ids, multi_label: bool,
                      thumbnails: Sequence | Callable | None = None, thresholds=None,
                      products: dict | None = None, title: str | None = None) -> str:
    """Write out_dir/index.html (and its PNGs); returns the page's path.

    Args:
        class_names: K names in index order.
        y_true: multi-hot [N, K] (single-label: one-hot), as evaluate.evaluate takes it.
        y_prob: probabilities [N, K].
        ids: N row ids (file names, photo ids).
        multi_label: sigmoid / per-class model (thresholds decide), else argmax.
        thumbnails: row index -> image [h, w, C] in [0, 255] from the prediction's decode,
            as a callable or an indexable of N images; only the rows shown are asked for.
        thresholds: per-class thresholds (multi-label); None: 0.5.
        products: product id -> row indices of its photos (Cdiscount).
        title: the page title; default "Evaluation: N images, K classes".
    """
    ev = _Eval(class_names, y_true, y_prob, ids, multi_label, thresholds)
    os.makedirs(out_dir, exist_ok=True)
    metrics = evaluate(ev.y_true, ev.y_prob, ev.names, multi_label=ev.multi, thresholds=ev.thresholds)
    page = Page(title or f"Evaluation: {metrics['n']} images, {len(ev.names)} classes",
                subtitle="multi-label (per-class thresholds)" if ev.multi else "single-label (argmax)")
    page.heading("Metrics", id="metrics-section")
    page.table(["metric", "value"], [[k, metrics[k]] for k in HEADLINE[ev.multi]], id="metrics")
    page.heading("Per class", id="per-class-section")
    page.table(PER_CLASS, [[r[c] for c in PER_CLASS] for r in metrics["per_class"]], id="per-class",
               sortable=True, caption="click a column header to sort")
    if ev.multi and thresholds is not None:
        page.heading("Tuned thresholds", id="thresholds-section")
        page.table(["class", "threshold", "f1", "support"],
                   [[r["class"], float(t), r["f1"], r["support"]] for r, t in zip(metrics["per_class"], thresholds)],
                   id="thresholds", sortable=True)
    if not ev.multi:
        _confusion(page, out_dir, ev)
    page.heading("Precision-recall", id="pr-section")
    page.image(plots.save_pr_curves(ev.y_true, ev.y_prob, ev.names, os.path.join(out_dir, "pr_curves.png")),
               alt="precision-recall curves", width=FIGURE_WIDTH)
    _top_losses(page, out_dir, ev, thumbnails)
    if products:
        _products(page, ev, products, thumbnails)
    return page.write(os.path.join(out_dir, "index.html"))


def _confusion(page: Page, out_dir: str, ev: _Eval) -> None:
    cm = confusion_matrix(ev.y_true, ev.y_prob)
    page.heading("Confusion", id="confusion-section")
    if len(ev.names) <= MAX_MATRIX:
        page.table(["true \\ predicted"] + ev.names, [[n] + [int(v) for v in row] for n, row in zip(ev.names, cm)],
                   id="confusion", caption="rows: true class, columns: predicted class")
    else:
        page.table(["true", "predicted", "count"], most_confused_pairs(cm, ev.names), id="most-confused",
                   caption=f"the {MOST_CONFUSED} most frequent confusions of {len(ev.names)} classes")
    path = plots.save_confusion_matrix(cm, ev.names, os.path.join(out_dir, "confusion_matrix.png"),
                                       max_classes=MAX_MATRIX)
    page.image(path, alt="confusion matrix")


def _top_losses(page: Page, out_dir: str, ev: _Eval, thumbnails) -> None:
    order = np.argsort(-ev.losses, kind="stable")[:TOP_LOSSES]
    page.heading("Top losses", id="top-losses-section")
    page.table(["rank", "id", "true", "predicted", "probability", "loss"],
               [[r + 1, ev.ids[i], ev.truth(i), ev.predicted(i), ev.top_prob(i), float(ev.losses[i])]
                for r, i in enumerate(order)], id="top-losses", sortable=True,
               caption="probability: the highest class probability")
    if thumbnails is None or not len(order):
        return
    images = [np.asarray(_thumbnail(thumbnails, int(i)), dtype=np.float32) for i in order]
    page.grid([(thumbnail_png(img), [ev.ids[i], f"true: {ev.truth(i)}", f"pred: {ev.predicted(i)}",
                                     f"prob {ev.top_prob(i):.3f}  loss {ev.losses[i]:.3f}"],
                "bad" if not ev.correct(i) else None) for img, i in zip(images, order)], id="top-losses-grid")
    # fastai's plot_top_losses titles: prediction / actual / loss / probability
    titles = [f"{ev.predicted(i)}/{ev.truth(i)}/{ev.losses[i]:.2f}/{ev.top_prob(i):.2f}" for i in order]
    plots.save_image_grid(np.stack(images), titles, os.path.join(out_dir, "top_losses.png"))
    page.text("top_losses.png: the same grid, titled predicted / true / loss / probability")


def _products(page: Page, ev: _Eval, products: dict, thumbnails) -> None:
    pids = list(products)
    rows = [np.asarray(products[p], dtype=np.int64) for p in pids]
    prob = np.stack([ev.y_prob[r].mean(axis=0) for r in rows])
    true = np.stack([ev.y_true[r].max(axis=0) for r in rows])
    product = _Eval(ev.names, true, prob, pids, ev.multi, ev.thresholds if ev.multi else None)
    metrics = evaluate(true, prob, ev.names, multi_label=ev.multi, thresholds=ev.thresholds)
    page.heading("Products", id="products-section")
    page.text(f"{len(pids)} products of {sum(len(r) for r in rows)} photos; a product's prediction is "
              "the mean of its photos' probabilities")
    page.table(["metric", "value"], [[k, metrics[k]] for k in HEADLINE[ev.multi]], id="product-metrics")
    worst = np.argsort(-product.losses, kind="stable")[:PRODUCTS_SHOWN]
    page.table(["product", "photos", "true", "predicted", "probability", "loss"],
               [[pids[j], len(rows[j]), product.truth(j), product.predicted(j), product.top_prob(j),
                 float(product.losses[j])] for j in worst], id="worst-products", sortable=True)
    if thumbnails is None:
        return
    for j in worst:
        caption = (f"product {pids[j]}: true {product.truth(j)}, predicted {product.predicted(j)} "
                   f"({product.top_prob(j):.3f}), {len(rows[j])} photo(s)")
        page.grid([(thumbnail_png(_thumbnail(thumbnails, int(i))), [ev.ids[i], f"pred: {ev.predicted(i)}",
                    f"prob {ev.top_prob(i):.3f}"], "bad" if not ev.correct(i) else None) for i in rows[j]],
                  caption=caption, boxed=True)
