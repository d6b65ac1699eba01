"""The names of detect.py's export flags, apart so that `--help` loads no converter."""

EXPORT_FORMATS = ("saved_model", "onnx", "litert")
QUANTIZE = ("dynamic", "float16")   # litert only: int8 weights, or float16 weights
