"""Predict with one or several saved models: TTA, ensembles, tuned thresholds, submission CSVs, evaluation.

    python detect.py --model model_save/demo.h5 data/demo --split val --evaluate
    python detect.py --model a.h5 --model b.keras test_images/ --tta 4 --format probs --out sub.csv
    python detect.py --model cd.h5 test.bson --format cdiscount --out submission.csv

The work lives in utils/predict.py (models, inputs, streaming) and utils/evaluate.py (scores).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")   # before TensorFlow loads: keep stderr for our messages

from utils.dataset.manifest import SPLITS
from utils.errors import OneLineParser, UsageError, import_tensorflow_quietly, run_cli

MAX_LISTED_SKIPS = 20    # skipped inputs echoed on stderr; the full list is in the CSV


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show a flag's default only when it says something ("default: None" does not)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default in (None, False) or "default" in text:
            return text
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    from utils.detect.predict import FORMATS, VIEWS

    p = OneLineParser(
        prog="detect.py", description=__doc__.split("\n\n")[0],
        formatter_class=_HelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image files, folders (recursive; a parent folder named after a class is the label), "
                        "globs, a URL list (.txt/.csv of `id,url` lines), a .bson file (one prediction per "
                        "product), or a dataset folder data/NAME (see --split)")
    p.add_argument("--model", action="append", required=True, metavar="PATH",
                   help="a saved model (.h5, .keras or SavedModel folder) with its NAME.json beside it; "
                        "repeat to average several models")
    p.add_argument("--model-weights", metavar="W1,W2,...",
                   help="weight of each --model in the average (normalised to sum 1); default equal")
    p.add_argument("--split", choices=SPLITS,
                   help="split of a dataset-folder input (default: val, else test)")
    p.add_argument("--cache-dir", default=".cache/detect", help="where images of a URL list are downloaded")
    p.add_argument("--tta", type=int, default=1,
                   help=f"test-time augmentation views averaged per image, 1..{len(VIEWS)}: "
                        "identity, h-flip, centre zoom, corner crops (1 = none)")
    p.add_argument("--batch-size", type=int, default=32, help="images per batch")
    p.add_argument("--out", default="predictions.csv",
                   help="output CSV; PREFIX.skipped.csv and PREFIX.eval/ are written beside it")
    p.add_argument("--format", choices=FORMATS,
                   help="probs: id + one column per class; label: id,class; topk: id + k names and scores; "
                        "multilabel: id + space-separated classes above threshold; binary: id + 0/1 per class; "
                        "cdiscount: _id,category_id (default: label, or multilabel for multi-label models)")
    p.add_argument("--k", type=int, default=5, help="names per row for --format topk")
    p.add_argument("--ids", action="store_true",
                   help="multilabel: write class indices under `id,attribute_ids` (iMet) instead of names")
    p.add_argument("--at-least-one", action="store_true",
                   help="multilabel: when no class passes its threshold, give the most likely one")
    p.add_argument("--threshold", type=float,
                   help="one threshold for every class (multilabel/binary/evaluation of multi-label models)")
    p.add_argument("--thresholds", metavar="FILE",
                   help="per-class thresholds: JSON list, JSON {class: t}, or CSV class,threshold "
                        "(default: the model's tuned thresholds if any, else 0.5)")
    p.add_argument("--tune-thresholds", action="store_true",
                   help="on labelled input, find per-class thresholds maximising --tune-metric and save "
                        "them beside the model (NAME.thresholds.json) and into NAME.json")
    p.add_argument("--tune-metric", choices=("f1", "f2"), default="f1",
                   help="what --tune-thresholds maximises per class (iMet uses f2)")
    p.add_argument("--evaluate", action="store_true",
                   help="labelled input: accuracy, top-5, macro F1/F2, per-class CSV, confusion matrix / "
                        "PR curves in PREFIX.eval/; the last stdout line is the headline score")
    p.add_argument("--unsafe", action="store_true",
                   help="allow models with Lambda layers (they run Python code stored in the file)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def check_args(a) -> None:
    from utils.detect.predict import VIEWS

    if not 1 <= a.tta <= len(VIEWS):
        raise UsageError(f"--tta must be between 1 and {len(VIEWS)}, got {a.tta}")
    if a.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {a.batch_size}")
    if a.k < 1:
        raise UsageError(f"--k must be >= 1, got {a.k}")
    if a.threshold is not None and not 0.0 <= a.threshold <= 1.0:
        raise UsageError(f"--threshold must be in [0, 1], got {a.threshold}")
    if a.threshold is not None and a.thresholds:
        raise UsageError("give --threshold or --thresholds, not both")


def write_rows(path: str, header: list[str], fmt_row, rows) -> int:
    """Stream rows into the CSV (atomically: a half-written submission never replaces a good one)."""
    from utils.files import atomic_write_csv

    return atomic_write_csv(path, header, ([r.id] + fmt_row(r.probs) for r in rows))


def report_skipped(out: str, skipped: list) -> None:
    from utils.detect.predict import sidecar, write_skipped

    path = sidecar(out, ".skipped.csv")
    if not skipped:
        if os.path.isfile(path):
            os.remove(path)          # a stale list from an earlier run would mislead
        return
    write_skipped(path, skipped)
    for sid, reason in skipped[:MAX_LISTED_SKIPS]:
        print(f"skipped {sid}: {reason}", file=sys.stderr)
    more = len(skipped) - MAX_LISTED_SKIPS
    print(f"skipped {len(skipped)} input(s){f' ({more} not shown)' if more > 0 else ''}: see {path}", file=sys.stderr)


def tune(a, members, y_true, probs) -> list[float]:
    """Per-class thresholds on this labelled input; saved beside the model (or beside --out for an ensemble)."""
    from model.meta import save_meta
    from utils.detect.evaluate import tune_thresholds
    from utils.detect.predict import save_thresholds, sidecar, thresholds_path

    beta = 2.0 if a.tune_metric == "f2" else 1.0
    thresholds, scores = tune_thresholds(y_true, probs, beta=beta)
    score = float(scores.mean())
    names = members[0].class_names
    if len(members) == 1:
        m = members[0]
        path = save_thresholds(thresholds_path(m.path), names, thresholds, a.tune_metric, score)
        m.meta["thresholds"] = thresholds
        save_meta(m.path, m.meta)
    else:   # tuned for this ensemble, not for any one member: do not write them into a model's JSON
        path = save_thresholds(sidecar(a.out, ".thresholds.json"), names, thresholds, a.tune_metric, score)
    print(f"tuned thresholds (macro {a.tune_metric} {score:.4f} on the tuning data) saved to {path}")
    return thresholds


def evaluate(a, members, y_true, probs, thresholds, unit: str) -> None:
    import numpy as np

    from utils.detect import evaluate as ev
    from utils.detect.predict import sidecar

    names = members[0].class_names
    multi = members[0].multi_label
    metrics = ev.evaluate(y_true, probs, names, multi_label=multi, thresholds=thresholds)
    out_dir = sidecar(a.out, ".eval")
    os.makedirs(out_dir, exist_ok=True)
    ev.write_report_csv(metrics["per_class"], os.path.join(out_dir, "per_class.csv"))
    with open(os.path.join(out_dir, "metrics.json"), "w") as f:
        json.dump({k: v for k, v in metrics.items() if k != "per_class"}, f, indent=1)
    try:
        from utils import plots
    except ImportError:     # plots belong to the pipeline package; scores above do not need them
        plots = None
        print("warning: utils/plots.py is not available: no PNGs written", file=sys.stderr)
    if plots is None:
        pass
    elif multi:
        plots.save_pr_curves(np.asarray(y_true), np.asarray(probs), names, os.path.join(out_dir, "pr_curves.png"))
    else:
        plots.save_confusion_matrix(ev.confusion_matrix(y_true, probs), names,
                                    os.path.join(out_dir, "confusion_matrix.png"), max_classes=30)
    print(ev.summary_table(metrics))
    print(f"evaluation files in {out_dir}/")
    print(ev.headline(metrics, unit))


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    check_args(a)
    import_tensorflow_quietly()
    from utils.detect import predict as pr

    pr.check_paths(a.model, a.inputs)
    members = pr.load_ensemble(a.model, weights=a.model_weights, unsafe=a.unsafe)
    names, multi = members[0].class_names, members[0].multi_label
    specs = pr.plan_inputs(a.inputs, names, split=a.split, cache_dir=a.cache_dir, planes=members[0].planes)
    if (a.evaluate or a.tune_thresholds) and not all(s.labelled for s in specs):
        bad = next(s.name for s in specs if not s.labelled)
        raise UsageError(f"--evaluate/--tune-thresholds need labelled input; {bad} has no labels the model knows")
    if a.tune_thresholds and not multi:
        raise UsageError("--tune-thresholds is for multi-label models (sigmoid or per-class head)")
    thresholds = pr.resolve_thresholds(members, threshold=a.threshold, thresholds_file=a.thresholds)
    fmt = a.format or ("multilabel" if multi else "label")
    unit = "products" if any(s.unit == "products" for s in specs) else "images"
    out_dir = os.path.dirname(os.path.abspath(a.out))
    os.makedirs(out_dir, exist_ok=True)

    skipped: list = []
    rows = pr.group_rows(pr.predict_stream(members, specs, tta=a.tta, batch_size=a.batch_size,
                                           skipped=skipped, progress=not a.no_progress))
    if fmt == "cdiscount":  # every product must have a row, even one whose photos all failed
        rows = pr.fill_missing_products(rows, skipped)
    fmt_kw = dict(k=a.k, ids=a.ids, at_least_one=a.at_least_one)
    if not (a.evaluate or a.tune_thresholds):
        header, fmt_row = pr.header_and_formatter(fmt, names, thresholds=thresholds, **fmt_kw)
        n = write_rows(a.out, header, fmt_row, rows)
        report_skipped(a.out, skipped)
        print(f"wrote {n} predictions ({fmt}) to {a.out}")
        return 0

    import numpy as np

    # Scores need every row at once (N x K floats); plain prediction above streams instead.
    rows = list(rows)
    report_skipped(a.out, skipped)
    if not rows:
        raise UsageError("no input could be read: nothing to evaluate")
    unlabelled = [r.id for r in rows if not r.label]
    if unlabelled:
        raise UsageError(f"{len(unlabelled)} input(s) have no label the model knows (first: {unlabelled[0]}): "
                         "cannot evaluate or tune on them")
    probs = np.stack([r.probs for r in rows])
    y_true = np.zeros_like(probs)
    for i, r in enumerate(rows):
        y_true[i, list(r.label)] = 1.0
    if a.tune_thresholds:
        thresholds = tune(a, members, y_true, probs)
    header, fmt_row = pr.header_and_formatter(fmt, names, thresholds=thresholds, **fmt_kw)
    n = write_rows(a.out, header, fmt_row, rows)
    print(f"wrote {n} predictions ({fmt}) to {a.out}")
    if a.evaluate:
        evaluate(a, members, y_true, probs, thresholds, unit)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
