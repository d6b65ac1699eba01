"""Benchmark: images/s of detect.py's prediction path vs model.predict on preloaded tensors.

Both sides use the same saved model and the same images in the same run:
  baseline  every image decoded + resized up front (eval_image), stacked in memory,
            then timed: model.predict(x, batch_size=B) -- the model's own ceiling.
  detect    timed: utils.detect.stream.predict_stream over the JPEG files on disk (read,
            decode, resize, batch, prefetch, model call, ensemble average) -- what
            detect.py does per image, minus writing the CSV.
  cli       the whole `detect.py --model M folder --out x.csv`, model loading excluded
            only in the sense that it is timed separately (reported for information).
  exports   the same prediction path with the model exported (`detect.py --export`) to a
            SavedModel, ONNX and LiteRT, each in its own runtime: images/s next to Keras's.
Target: detect >= 0.8x baseline. Both get one untimed warm-up pass (graph tracing).

    .venv/bin/python bench/detect.py [--arch efficientnetb0 --size 96 --images 192]
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def make_images(folder: str, n: int, side: int) -> list[str]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        a = rng.integers(0, 255, (side, side, 3), dtype=np.uint8)
        p = os.path.join(folder, f"img{i:05d}.jpg")
        Image.fromarray(a).save(p, quality=90)
        paths.append(p)
    return paths


def make_model(path: str, arch: str, size: int, classes: list[str]) -> None:
    from model.build import build_model
    from model.meta import save_meta

    model = build_model(arch, len(classes), input_size=(size, size), weights="none", class_names=classes)
    model.save(path)
    save_meta(path, {"name": "bench", "architecture": arch, "class_names": classes, "input_size": [size, size],
                     "channels": 3, "planes": 1, "head": "softmax", "multi_label": False, "outputs": ["probs"]})


def bench_exports(model_path, specs, tmp, batch_size, keras_probs, ips_keras, n) -> None:
    """Export to each format, then time the same files -> probabilities path through it."""
    import numpy as np

    from utils.detect.export import export_model
    from utils.detect.models import Member, open_predictor
    from utils.detect.stream import predict_stream

    targets = {"saved_model": os.path.join(tmp, "exp_sm"), "onnx": os.path.join(tmp, "exp.onnx"),
               "litert": os.path.join(tmp, "exp.tflite")}
    for fmt, out in targets.items():
        export_model(model_path, out, fmt)
        member = Member(open_predictor(out))

        def stream():
            return np.stack([r.probs for r in predict_stream([member], specs, batch_size=batch_size, progress=False)])

        stream()   # warm-up
        t0 = time.perf_counter()
        probs = stream()
        ips = n / (time.perf_counter() - t0)
        print(f"detect path on the {fmt:<11} export:     {ips:8.1f} images/s  ratio {ips / ips_keras:.2f}x of Keras; "
              f"max |diff| vs Keras {float(np.abs(probs - keras_probs).max()):.2e}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", default="efficientnetb0", help="model/registry.py name of the benchmarked model")
    ap.add_argument("--size", type=int, default=96, help="model input side in pixels")
    ap.add_argument("--images", type=int, default=192, help="number of JPEG files predicted")
    ap.add_argument("--image-side", type=int, default=256, help="side of the JPEG files on disk (pixels)")
    ap.add_argument("--batch-size", type=int, default=32, help="batch size of both paths")
    ap.add_argument("--no-exports", action="store_true", help="skip timing the SavedModel / ONNX / LiteRT exports")
    args = ap.parse_args()

    import numpy as np
    import tensorflow as tf

    import detect
    from utils.errors import run_cli
    from utils.input.image_ops import eval_image
    from utils.detect.inputs import plan_inputs
    from utils.detect.models import Member, open_predictor
    from utils.detect.stream import predict_stream

    tmp = tempfile.mkdtemp(prefix="bench_detect_")
    imgs = os.path.join(tmp, "imgs")
    os.makedirs(imgs)
    paths = make_images(imgs, args.images, args.image_side)
    classes = [f"c{i}" for i in range(10)]
    model_path = os.path.join(tmp, "bench.keras")
    make_model(model_path, args.arch, args.size, classes)

    member = Member(open_predictor(model_path))
    specs = plan_inputs([imgs], classes)

    # baseline: tensors preloaded (decode and resize NOT timed)
    x = np.stack([eval_image(tf.constant([open(p, "rb").read()]), (args.size, args.size)).numpy() for p in paths])
    import keras

    model = keras.models.load_model(model_path, compile=False)
    model.predict(x[: args.batch_size], batch_size=args.batch_size, verbose=0)
    t0 = time.perf_counter()
    base = model.predict(x, batch_size=args.batch_size, verbose=0)
    t_base = time.perf_counter() - t0

    def stream():
        return np.stack([r.probs for r in predict_stream([member], specs, batch_size=args.batch_size, progress=False)])

    stream()   # warm-up: traces the member's graph and the tf.data functions
    t0 = time.perf_counter()
    probs = stream()
    t_detect = time.perf_counter() - t0
    assert probs.shape == base.shape
    max_diff = float(np.abs(probs - base).max())

    out = os.path.join(tmp, "p.csv")
    t0 = time.perf_counter()
    code = run_cli(detect.main, ["--model", model_path, imgs, "--out", out, "--no-progress",
                                 "--batch-size", str(args.batch_size)])
    t_cli = time.perf_counter() - t0
    assert code == 0

    n = len(paths)
    ips_base, ips_detect, ips_cli = n / t_base, n / t_detect, n / t_cli
    print(f"model {args.arch} {args.size}x{args.size}, {n} JPEGs of {args.image_side}px, batch {args.batch_size}, "
          f"{os.cpu_count()} CPUs")
    print(f"baseline model.predict on preloaded tensors: {ips_base:8.1f} images/s")
    print(f"detect prediction path (files -> probs):     {ips_detect:8.1f} images/s  "
          f"ratio {ips_detect / ips_base:.2f}x (target >= 0.8x); max |diff| vs baseline {max_diff:.2e}")
    print(f"detect.py CLI incl. model load + CSV:        {ips_cli:8.1f} images/s")
    if not args.no_exports:
        bench_exports(model_path, specs, tmp, args.batch_size, probs, ips_detect, n)
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
