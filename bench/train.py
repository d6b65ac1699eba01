"""Benchmark: training images/s through our tf.data pipeline vs the same model fed from memory.

Same process, same compiled model, same train step: only the input differs.
  pipeline   utils.input.pipeline.make_dataset(training=True, repeat=True, augment) as train.py uses it
  in-memory  one batch of the same images held as a tensor, repeated (input costs ~nothing)
The two are timed alternately (--rounds times, median round each) so machine
load hits both alike. Target: the pipeline at most 10% slower (ratio >= 0.90).

Then the two --augment-on placements (--placement-augment, default rotate,color,mixup;
--no-placement-bench skips them): two copies of the model, the same shards, seed and steps,
alternating rounds, medians, and the ratio device/cpu.
  cpu     the batch ops in the tf.data pipeline (make_dataset(augment=...)), as train.py did
  device  the pipeline decodes only; the same ops run in the train step (utils.train.augment_step)
On a machine without a GPU (this one) "device" is the CPU too: both placements do the same
work on the same cores, so expect a ratio near 1; the point of device placement (freeing the
input pipeline's cores while a GPU augments) only shows on a GPU machine. Measured here on 2
shared, busy cores: 1.68 with --steps 8, 1.17 with --steps 32 (not profiled; likely each
round is a new fit, so a new iterator whose parallel augment map starts cold, and longer
rounds shrink that share).

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
    p.add_argument("--placement-augment", default="rotate,color,mixup",
                   help="augmentations for the cpu vs device placement rounds (as train.py --augment)")
    p.add_argument("--no-placement-bench", action="store_true", help="skip the --augment-on cpu vs device rounds")
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
    loss, _ = losses.make_loss(head, info["num_classes"], names)

    def compiled_model():
        keras.utils.set_random_seed(0)  # the same initial weights for every copy
        m = build.build_model(args.model, info["num_classes"], input_size=size, channels=info["channels"], head=head)
        m.compile(optimizer=keras.optimizers.Adam(1e-4), loss=loss, jit_compile=False,
                  metrics=metrics.make_metrics(head, info["num_classes"], names))
        return m

    model = compiled_model()

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
    if not args.no_placement_bench:
        placements(args, compiled_model, info, head, names)
    if not args.no_read_bench:
        print("\nread pipeline alone vs keras.utils.image_dataset_from_directory (bench/pipeline.py):", flush=True)
        subprocess.run([sys.executable, os.path.join(ROOT, "bench", "pipeline.py")], check=True, cwd=ROOT)
    return 0


def placements(args, compiled_model, info: dict, head: str, names: list[str]) -> dict:
    """--augment-on cpu vs device: images/s of each (alternating rounds, medians) and the ratio device/cpu."""
    import tensorflow as tf

    from utils.input.pipeline import make_dataset
    from utils.train import augment_step

    size = (args.image_size, args.image_size)
    runs = {}
    for where in augment_step.PLACEMENTS:
        cfg = {"augment": args.placement_augment, "augment_on": where, "seed": 0}
        model = compiled_model()
        augment_step.attach(model, cfg, tf.distribute.get_strategy(), args.image_size, info["channels"])
        ds = make_dataset(args.data, "train", image_size=size, batch_size=args.batch_size, training=True, head=head,
                          output_names=names, augment=augment_step.pipeline_augment(cfg), seed=0, repeat=True,
                          drop_remainder=True)
        model.fit(ds, epochs=1, steps_per_epoch=2, verbose=0, shuffle=False)  # trace, warm the threads
        runs[where] = (model, ds, [])
    print(f"\n--augment-on cpu vs device, --augment {args.placement_augment}, {args.steps} steps x {args.rounds} "
          f"rounds (no GPU here: both run on the CPU):", flush=True)
    for r in range(args.rounds):
        for where, (model, ds, seen) in runs.items():
            seen.append(images_per_second(model, ds, args.steps, args.batch_size))
            print(f"  round {r + 1} {where:6s} {seen[-1]:8.1f} images/s", flush=True)
    med = {where: statistics.median(seen) for where, (_, _, seen) in runs.items()}
    print(f"augment-on cpu {med['cpu']:.1f} images/s, device {med['device']:.1f} images/s (medians); "
          f"ratio device/cpu {med['device'] / med['cpu']:.3f}")
    return med


if __name__ == "__main__":
    sys.exit(main())
