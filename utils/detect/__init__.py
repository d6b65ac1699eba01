"""Prediction: saved models -> inputs via utils/sources -> eval decode -> TTA -> ensemble -> CSV.

  models      predictors (.h5 / .keras / SavedModel), the Lambda refusal, ensembles
  inputs      INPUT arguments -> InputSpecs (files, folders, globs, URL lists, .bson, data/NAME)
  stream      eval_image decode, TTA views, batches, ensemble average -> Rows
  thresholds  applying, tuning, loading and saving per-class thresholds (pure)
  output      the CSV formats, the skipped list, sidecar paths
  evaluate    metrics, per_class.csv, metrics.json, plots
  run         one detect.py run from its parsed flags
  export      --export: SavedModel (+ serve_bytes) / ONNX / LiteRT, metadata, self-check
  runtimes    predictors over those exports (TensorFlow, onnxruntime, LiteRT)
  report      --evaluate's page, PREFIX.eval/index.html

Importing the package loads no TensorFlow: detect.py builds its parser from the
names below, so `--help` answers at once.
"""
from utils.dataset.manifest import SPLITS  # noqa: F401  (detect.py's --split choices)
from utils.detect.output import FORMATS  # noqa: F401
from utils.detect.export_names import EXPORT_FORMATS, QUANTIZE  # noqa: F401
from utils.detect.run import run  # noqa: F401
from utils.detect.stream import VIEWS  # noqa: F401
from utils.detect.thresholds import TUNE_METRICS  # noqa: F401
