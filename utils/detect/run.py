"""One detect.py run, from its parsed flags: models -> inputs -> stream -> CSV (+ tuning, evaluation).

Plain prediction streams rows straight into the CSV (checkpointed: --resume goes
on after a kill); --evaluate and --tune-thresholds need every row at once
(N x K floats), so they collect them. One run writes an --out at a time (OUT.lock).
"""
from __future__ import annotations

import argparse
import os

import numpy as np

from utils.detect import evaluate, output, stream
from utils.detect.inputs import check_paths, plan_inputs
from utils.detect.models import load_ensemble
from utils.detect.report import PRODUCTS_SHOWN, TOP_LOSSES, sample_losses, write_eval_report
from utils.detect.thresholds import resolve_thresholds, tune_and_save
from utils.errors import UsageError, import_tensorflow_quietly
from utils.files import exclusive_lock


def check_args(args: argparse.Namespace) -> None:
    """Flag values argparse cannot check on its own; a bad one raises UsageError."""
    if not 1 <= args.tta <= len(stream.VIEWS):
        raise UsageError(f"--tta must be between 1 and {len(stream.VIEWS)}, got {args.tta}")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.k < 1:
        raise UsageError(f"--k must be >= 1, got {args.k}")
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise UsageError(f"--threshold must be in [0, 1], got {args.threshold}")
    if args.threshold is not None and args.thresholds:
        raise UsageError("give --threshold or --thresholds, not both")
    if args.export is None and not args.inputs:
        raise UsageError("the following arguments are required: INPUT (see detect.py --help)")
    if args.export is not None and len(args.model) != 1:
        raise UsageError("--export takes exactly one --model")
    if args.quantize and args.export_format != "litert":
        raise UsageError("--quantize is for --export-format litert")
    if getattr(args, "resume", False) and (args.evaluate or args.tune_thresholds):
        raise UsageError("--resume continues plain prediction; --evaluate/--tune-thresholds read every row again")


def lock_path(out: str) -> str:
    """OUT.lock beside the CSV: one run per --out (utils.files.exclusive_lock; left in place)."""
    return out + ".lock"


def run(args: argparse.Namespace) -> int:
    """Predict (and maybe tune and evaluate) as the flags say; returns the exit code.

    Raises:
        UsageError, SourceError, DatasetError: bad flags, models or inputs (one line each).
    """
    check_args(args)
    if args.export is not None:
        return _export(args)
    check_paths(args.model, args.inputs)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with exclusive_lock(lock_path(args.out), args.out):   # before anything is written or read
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    import_tensorflow_quietly()
    members = load_ensemble(args.model, weights=args.model_weights, unsafe=args.unsafe)
    names, multi = members[0].class_names, members[0].multi_label
    specs = plan_inputs(args.inputs, names, split=args.split, cache_dir=args.cache_dir, planes=members[0].planes,
                        skip_corrupt=getattr(args, "skip_corrupt_shards", False))
    if (args.evaluate or args.tune_thresholds) and not all(s.labelled for s in specs):
        bad = next(s.name for s in specs if not s.labelled)
        raise UsageError(f"--evaluate/--tune-thresholds need labelled input; {bad} has no labels the model knows")
    if args.tune_thresholds and not multi:
        raise UsageError("--tune-thresholds is for multi-label models (sigmoid or per-class head)")
    thresholds = resolve_thresholds(members, threshold=args.threshold, thresholds_file=args.thresholds)
    fmt = args.format or ("multilabel" if multi else "label")
    unit = "products" if any(s.unit == "products" for s in specs) else "images"
    fmt_kw = dict(k=args.k, ids=args.ids, at_least_one=args.at_least_one)
    if not (args.evaluate or args.tune_thresholds):
        header, fmt_row = output.header_and_formatter(fmt, names, thresholds=thresholds, **fmt_kw)
        n, skipped = _predict_to_csv(args, members, specs, fmt, header, fmt_row)
        output.report_skipped(args.out, skipped)
        print(f"wrote {n} predictions ({fmt}) to {args.out}")
        return 0

    skipped: list = []
    photos = stream.predict_stream(members, specs, tta=args.tta, batch_size=args.batch_size,
                                   skipped=skipped, progress=not args.no_progress)
    if args.evaluate:   # the page shows a product's photos together: keep the photo rows
        photos = list(photos)
    rows = stream.group_rows(iter(photos))
    if fmt == "cdiscount":  # every product must have a row, even one whose photos all failed
        rows = stream.fill_missing_products(rows, skipped)
    rows = list(rows)
    output.report_skipped(args.out, skipped)
    y_true, probs = _labelled_matrices(rows)
    if args.tune_thresholds:
        thresholds, score, path = tune_and_save(members, y_true, probs, args.tune_metric,
                                                output.sidecar(args.out, ".thresholds.json"))
        print(f"tuned thresholds (macro {args.tune_metric} {score:.4f} on the tuning data) saved to {path}")
    header, fmt_row = output.header_and_formatter(fmt, names, thresholds=thresholds, **fmt_kw)
    n = output.write_rows(args.out, header, fmt_row, rows)
    print(f"wrote {n} predictions ({fmt}) to {args.out}")
    if args.evaluate:
        _evaluate(args, members, photos, rows, y_true, probs, thresholds, unit)
    return 0


def _evaluate(args, members, photos: list, rows: list, y_true, probs, thresholds, unit: str) -> None:
    """--evaluate: the page (photo rows, with products side by side when grouped), then the CSVs.

    metrics.json and per_class.csv score the output rows (products for a BSON input),
    as the page's product section does; the page's top sections score the photos.
    """
    names, multi = members[0].class_names, members[0].multi_label
    out_dir = output.sidecar(args.out, ".eval")
    grouped = any(r.group is not None for r in photos)
    y_page, p_page = _labelled_matrices(photos) if grouped else (y_true, probs)
    products, extra = None, []
    if grouped:
        products = {}
        for i, r in enumerate(photos):
            products.setdefault(r.group, []).append(i)
        worst = np.argsort(-sample_losses(y_true, probs, multi), kind="stable")[:PRODUCTS_SHOWN]
        extra = [i for j in worst for i in products[rows[j].id]]
    thumbs = Thumbnails(lambda: plan_inputs(args.inputs, names, split=args.split, cache_dir=args.cache_dir,
                                            planes=members[0].planes), members[0], [r.id for r in photos])
    page = write_eval_report(out_dir, class_names=names, y_true=y_page, y_prob=p_page, ids=[r.id for r in photos],
                             multi_label=multi, thumbnails=thumbs.wanted(sample_losses(y_page, p_page, multi), extra),
                             thresholds=thresholds if multi else None, products=products)
    print(f"evaluation page: {page}")
    evaluate.write_losses(os.path.join(out_dir, "losses.csv"), [r.id for r in rows], y_true, probs,
                          sample_losses(y_true, probs, multi), names, multi_label=multi,
                          thresholds=thresholds)  # for train.py --hard-examples
    evaluate.write_evaluation(out_dir, y_true, probs, names, multi_label=multi, thresholds=thresholds, unit=unit)


def _export(args: argparse.Namespace) -> int:
    """--export: one model -> OUT in --export-format, checked against Keras (prints the difference)."""
    import_tensorflow_quietly()
    from utils.detect.export import export_model  # lazy: the converters load only when exporting

    check = [[p] for p in args.inputs] or None
    result = export_model(args.model[0], args.export, args.export_format, quantize=args.quantize,
                          overwrite=args.overwrite, unsafe=args.unsafe, check_images=check)
    print(f"exported {args.model[0]} to {result['path']} (metadata {result['meta_path']})")
    return 0


class Thumbnails:
    """The images of the rows the page shows, decoded as prediction decoded them.

    Rows do not keep their pixels (N images would not fit in memory), so the inputs
    are read once more, for the few rows asked for: the TOP_LOSSES worst.
    """

    def __init__(self, plan, member, row_ids: list[str]):
        self.plan, self.member, self.row_ids = plan, member, row_ids

    def wanted(self, losses, extra=()) -> dict[int, np.ndarray]:
        """Row index -> image [h, w, C] in [0, 255] for the highest-loss rows and `extra` rows."""
        from utils.input.image_ops import eval_image

        rows = [int(i) for i in np.argsort(-np.asarray(losses), kind="stable")[:TOP_LOSSES]] + list(extra)
        by_id = {self.row_ids[i]: i for i in rows}
        out: dict[int, np.ndarray] = {}
        size, m = tuple(self.member.meta["input_size"]), self.member
        for spec in self.plan():
            for s in spec.samples():
                i = by_id.get(s.id)
                if i is None or i in out:
                    continue
                try:
                    img = eval_image(np.array(s.load(), dtype=object), size, m.channels, m.planes)
                except Exception:  # noqa: BLE001  an unreadable one has no thumbnail; the page says so
                    continue
                out[i] = img.numpy()[..., :3] if img.shape[-1] >= 3 else img.numpy()
                if len(out) == len(by_id):
                    return out
        return out


def run_signature(args: argparse.Namespace, fmt: str) -> dict:
    """What decides the rows of a run (not how fast they come): a resumed run must match it."""
    def file_id(path):
        st = os.stat(path)
        return [os.path.abspath(path), st.st_size, st.st_mtime_ns]

    return {"models": [file_id(m) for m in args.model], "weights": args.model_weights,
            "inputs": [os.path.abspath(i) for i in args.inputs], "split": args.split, "format": fmt,
            "tta": args.tta, "k": args.k, "ids": args.ids, "at_least_one": args.at_least_one,
            "threshold": args.threshold, "thresholds": args.thresholds,
            "skip_corrupt_shards": getattr(args, "skip_corrupt_shards", False)}


def _predict_to_csv(args, members, specs, fmt: str, header, fmt_row) -> tuple[int, list]:
    """Stream rows into OUT.partial with checkpoints (or go on from one), then rename it to OUT.

    Returns:
        (rows written in all, every skipped (id, reason)).
    """
    csv_out = output.PartialCsv(args.out, header, run_signature(args, fmt), resume=getattr(args, "resume", False))
    try:
        skipped = csv_out.skipped
        if csv_out.start:
            for s in specs:
                s.skipped = []       # the checkpoint's list already holds the planning skips
        n_pre = len(skipped) + sum(len(s.skipped) for s in specs)
        positions: list[int] = []
        prior = csv_out.carry
        rows = stream.group_rows(stream.predict_stream(
            members, specs, tta=args.tta, batch_size=args.batch_size, skipped=skipped,
            progress=not args.no_progress, start=csv_out.start, skip_positions=positions))
        if fmt == "cdiscount":  # every product must have a row, even one whose photos all failed
            rows = stream.fill_missing_products(rows, skipped, prior)

        def checkpoint(end: int):
            k = len(skipped) - n_pre            # positions are appended before their skips
            keep = skipped[:n_pre] + [x for x, p in zip(skipped[n_pre:n_pre + k], positions) if p < end]
            carry = dict(prior)
            if carry.get("sum") is not None:
                carry["sum"] = [float(v) for v in carry["sum"]]
            return keep, carry

        for r in rows:
            csv_out.write([r.id] + fmt_row(r.probs), r.end, checkpoint)
        return csv_out.finish(), skipped
    finally:
        csv_out.close()


def _labelled_matrices(rows: list[stream.Row]) -> tuple[np.ndarray, np.ndarray]:
    """Collected rows -> (y_true multi-hot [N, K], probs [N, K]); every row must carry a label."""
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
    return y_true, probs
