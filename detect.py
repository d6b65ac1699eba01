"""Predict with one or several saved models: TTA, ensembles, tuned thresholds, submission CSVs, evaluation.

    python detect.py --model model_save/demo.h5 data/demo --split val --evaluate
    python detect.py --model a.h5 --model b.keras test_images/ --tta 4 --format probs --out sub.csv
    python detect.py --model cd.h5 test.bson --format cdiscount --out submission.csv
    python detect.py --model model_save/demo.h5 --export exports/demo --export-format saved_model

The work lives in utils/detect/ (models, inputs, stream, thresholds, output, evaluate, run).
"""
from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")   # before TensorFlow loads: keep stderr for our messages

from utils.detect import EXPORT_FORMATS, FORMATS, QUANTIZE, SPLITS, TUNE_METRICS, VIEWS, run
from utils.errors import OneLineParser, run_cli


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show a flag's default only when it says something ("default: None" does not)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default in (None, False) or "default" in text:
            return text
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """detect.py's flags (the command-line contract: names, help texts, defaults)."""
    p = OneLineParser(
        prog="detect.py", description=__doc__.split("\n\n")[0],
        formatter_class=_HelpFormatter)
    p.add_argument("inputs", nargs="*", metavar="INPUT",
                   help="image files, folders (recursive; a parent folder named after a class is the label), "
                        "globs, a URL list (.txt/.csv of `id,url` lines), a .bson file (one prediction per "
                        "product), or a dataset folder data/NAME (see --split)")
    p.add_argument("--model", action="append", required=True, metavar="PATH",
                   help="a saved model (.h5, .keras or SavedModel folder) with its NAME.json beside it, "
                        "or an export of detect.py --export (SavedModel folder, .onnx, .tflite); "
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
    p.add_argument("--tune-metric", choices=tuple(TUNE_METRICS), default="f1",
                   help="what --tune-thresholds maximises per class (iMet uses f2)")
    p.add_argument("--evaluate", action="store_true",
                   help="labelled input: accuracy, top-5, macro F1/F2, per-class CSV, confusion matrix / "
                        "PR curves and losses.csv (per record: id, labels, loss, prediction; for train.py --hard-examples) "
                        "in PREFIX.eval/; the last stdout line is the headline score")
    p.add_argument("--export", metavar="OUT",
                   help="instead of predicting, export --model to OUT (a SavedModel folder, x.onnx or x.tflite) "
                        "with its metadata beside it, then check it against Keras on a few images "
                        "(the INPUTs if given)")
    p.add_argument("--export-format", choices=EXPORT_FORMATS, default="saved_model",
                   help="saved_model (TF Serving; also a serve_bytes signature taking encoded images), "
                        "onnx (onnxruntime) or litert (.tflite)")
    p.add_argument("--quantize", choices=QUANTIZE,
                   help="litert only: dynamic (int8 weights) or float16 weights; checked with a looser bound")
    p.add_argument("--overwrite", action="store_true", help="--export: replace an existing OUT")
    p.add_argument("--unsafe", action="store_true",
                   help="allow models with Lambda layers (they run Python code stored in the file)")
    p.add_argument("--resume", action="store_true",
                   help="continue the unfinished run that --out's OUT.partial holds (killed or stopped by an "
                        "error), from its last checkpoint; the inputs and options must be the same")
    p.add_argument("--skip-corrupt-shards", action="store_true",
                   help="dataset-folder input: a corrupted shard loses its remaining records (the count is "
                        "printed) instead of stopping the run")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv=None) -> int:
    """Parse `argv` and run; errors propagate to run_cli, which prints them as one line."""
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(run_cli(main))
