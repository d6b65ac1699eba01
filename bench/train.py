"""Benchmark: training images/s through our tf.data pipeline vs the same model fed from memory.

Same process, same compiled model, same train step: only the input differs.
  pipeline   utils.input.pipeline.make_dataset(training=True, repeat=True, augment) as train.py uses it
  in-memory  one batch of the same images held as a tensor, repeated (input costs ~nothing)
The two are timed alternately (--rounds times, median round each) so machine
load hits both alike. Target: the pipeline at most 10% slower (ratio >= 0.90).

Then, in a fresh process, the issue's second ratio: the read pipeline alone vs
keras.utils.image_dataset_from_directory on the same images at the same size
(bench/pipeline.py, its own options there; --no-read-bench skips it).

    .venv/bin/python bench/train.py [--data data/demo] [--model densenet121] [--image-size 64]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
TARGET = 0.90


def images_per_second(model, ds, steps: int, batch: int) -> float:
    t = time.perf_counter()
    model.fit(ds, epochs=1, steps_per_epoch=steps, verbose=0, shuffle=False)
    return steps * batch / (time.perf_counter() - t)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=os.path.join(ROOT, "data", "demo"), help="dataset folder (built if data/demo is missing)")
    p.add_argument("--model", default="densenet121", help="registry model name")
    p.add_argument("--image-size", type=int, default=64, help="input side in pixels")
    p.add_argument("--batch-size", type=int, default=32, help="images per step")
    p.add_argument("--steps", type=int, default=16, help="train steps per timed round")
    p.add_argument("--rounds", type=int, default=5, help="alternating timed rounds per input")
    p.add_argument("--augment", default="flip", help="train augmentations for the pipeline (as train.py --augment)")
    p.add_argument("--no-read-bench", action="store_true",
                   help="skip the read-pipeline vs image_dataset_from_directory benchmark (bench/pipeline.py)")
    args = p.parse_args(argv)

    if not os.path.isdir(args.data) and args.data == os.path.join(ROOT, "data", "demo"):
        subprocess.run([sys.executable, os.path.join(ROOT, "generate_dataset.py")], check=True, cwd=ROOT)

    # imported here, not at the top: --help and the demo-data build need no TensorFlow
    import keras
    import tensorflow as tf

    from model import build, heads, losses, metrics
    from utils.input.pipeline import dataset_info, make_dataset

    info = dataset_info(args.data)
    head = "sigmoid" if info["multi_label"] else "softmax"
    size = (args.image_size, args.image_size)
    names = heads.output_names(head, info["num_classes"], info["class_names"])
    model = build.build_model(args.model, info["num_classes"], input_size=size, channels=info["channels"], head=head)
    loss, _ = losses.make_loss(head, info["num_classes"], names)
    model.compile(optimizer=keras.optimizers.Adam(1e-4), loss=loss, jit_compile=False,
                  metrics=metrics.make_metrics(head, info["num_classes"], names))

    pipeline = make_dataset(args.data, "train", image_size=size, batch_size=args.batch_size, training=True,
                            head=head, output_names=names, augment=args.augment, seed=0,
                            repeat=True, drop_remainder=True)
    images, labels = next(iter(pipeline))
    memory = tf.data.Dataset.from_tensors((images, labels)).repeat()

    print(f"{args.model} {size[0]}px batch {args.batch_size}, {args.steps} steps x {args.rounds} rounds; tracing...",
          flush=True)
    for ds in (pipeline, memory):  # trace the train step once, warm the pipeline's threads
        model.fit(ds, epochs=1, steps_per_epoch=2, verbose=0, shuffle=False)
    seen = {"pipeline": [], "in-memory": []}
    for r in range(args.rounds):
        for name, ds in (("pipeline", pipeline), ("in-memory", memory)):
            ips = images_per_second(model, ds, args.steps, args.batch_size)
            seen[name].append(ips)
            print(f"  round {r + 1} {name:9s} {ips:8.1f} images/s", flush=True)
    med = {k: statistics.median(v) for k, v in seen.items()}
    ratio = med["pipeline"] / med["in-memory"]
    print(f"pipeline {med['pipeline']:.1f} images/s, in-memory {med['in-memory']:.1f} images/s (medians)")
    print(f"ratio pipeline/in-memory {ratio:.3f} (target >= {TARGET:.2f}, i.e. at most 10% slower: "
          f"{'met' if ratio >= TARGET else 'NOT met'})")
    if not args.no_read_bench:
        print("\nread pipeline alone vs keras.utils.image_dataset_from_directory (bench/pipeline.py):", flush=True)
        subprocess.run([sys.executable, os.path.join(ROOT, "bench", "pipeline.py")], check=True, cwd=ROOT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
