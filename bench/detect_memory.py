"""Benchmark: detect.py's peak memory does not grow with the input (a Cdiscount-style BSON dump).

One dump of `--photos` tiny JPEG photos (1-4 per product, every 1000th photo not
an image, so skips and the Cdiscount "product without a readable photo" path
run too) is cut into a small and a large prefix, and
`detect.py --model tiny.h5 dump.bson --format cdiscount` runs over each in its
own subprocess; its peak RSS is that child's rusage (os.wait4), so TensorFlow,
the model and the pipeline count, and nothing of this script does.
The line to read is the ratio large/small: flat memory is ~1.0x (target <= 1.1x),
while the photos grow `--photos / --small` times.

    .venv/bin/python bench/detect_memory.py [--photos 200000 --small 50000]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

CATS = ["1000010653", "1000010654", "1000010655", "1000010656"]


def write_dump(path: str, photos: int, side: int) -> int:
    """A test.bson of products with 1-4 photos each (64 distinct JPEGs, reused); returns products."""
    import io

    import bson
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    jpegs = []
    for _ in range(64):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
        jpegs.append(buf.getvalue())
    n = pid = 0
    with open(path, "wb") as f:
        while n < photos:
            k = min(1 + pid % 4, photos - n)
            pics = [b"not a jpeg" if (n + i) % 1000 == 999 else jpegs[(n + i) % 64] for i in range(k)]
            f.write(bson.encode({"_id": pid, "imgs": [{"picture": p} for p in pics]}))
            n, pid = n + k, pid + 1
    return pid


def prefix(path: str, out: str, photos: int) -> None:
    """The first documents of `path` holding `photos` photos (1-4 per product, as written)."""
    import bson

    from utils.sources.bsondump import iter_raw_documents

    n = 0
    with open(out, "wb") as f:
        for doc in iter_raw_documents(path):
            if n >= photos:
                return
            n += len(bson.decode(doc.data)["imgs"])
            f.write(doc.data)


def make_model(path: str, size: int) -> None:
    from utils.errors import import_tensorflow_quietly

    import_tensorflow_quietly()
    import keras

    from model.meta import save_meta

    inp = keras.Input((size, size, 3), name="image")
    x = keras.layers.Rescaling(1.0 / 255)(inp)
    x = keras.layers.Conv2D(4, 3, strides=2, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, keras.layers.Dense(len(CATS), activation="softmax", name="probs")(x))
    import logging

    logging.getLogger("absl").setLevel(logging.ERROR)   # the HDF5 "legacy format" note: .h5 is what we test
    model.save(path)
    save_meta(path, {"name": "tiny", "architecture": "tiny_conv", "class_names": CATS, "input_size": [size, size],
                     "channels": 3, "planes": 1, "preprocess": "none", "head": "softmax", "multi_label": False,
                     "outputs": ["probs"], "thresholds": None})


def peak_rss_mb(cmd: list[str]) -> tuple[float, float, str]:
    """Run `cmd`; -> (its peak RSS in MB from its own rusage, seconds, its stderr's last line)."""
    t0 = time.time()
    with tempfile.TemporaryFile() as err:
        p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        text = err.read().decode(errors="replace").strip().splitlines()
    if p.returncode != 0:
        raise SystemExit(f"detect.py failed ({p.returncode}): {text[-1] if text else ''}")
    return usage.ru_maxrss / 1024, time.time() - t0, text[-1] if text else ""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--photos", type=int, default=200_000, help="photos in the large dump (>= 200k for the issue)")
    ap.add_argument("--small", type=int, default=50_000, help="photos in the small dump (the baseline)")
    ap.add_argument("--side", type=int, default=24, help="side of the JPEG photos (pixels)")
    ap.add_argument("--size", type=int, default=16, help="model input side (pixels)")
    ap.add_argument("--batch-size", type=int, default=64, help="detect.py --batch-size")
    args = ap.parse_args()
    if not 0 < args.small < args.photos:
        raise SystemExit("--small must be between 0 and --photos")

    with tempfile.TemporaryDirectory() as tmp:
        big = os.path.join(tmp, "big.bson")
        products = write_dump(big, args.photos, args.side)
        small = os.path.join(tmp, "small.bson")
        prefix(big, small, args.small)
        model = os.path.join(tmp, "tiny.h5")
        make_model(model, args.size)
        print(f"dump: {args.photos:,d} photos in {products:,d} products, {os.path.getsize(big) / 1e6:.1f} MB; "
              f"small prefix {os.path.getsize(small) / 1e6:.1f} MB")
        results = {}
        for name, dump in (("small", small), ("large", big)):
            out = os.path.join(tmp, f"{name}.csv")
            cmd = [sys.executable, os.path.join(ROOT, "detect.py"), "--model", model, dump, "--out", out,
                   "--format", "cdiscount", "--batch-size", str(args.batch_size), "--no-progress"]
            rss, secs, _ = peak_rss_mb(cmd)
            with open(out) as f:
                rows = sum(1 for _ in f) - 1
            photos = args.small if name == "small" else args.photos
            results[name] = rss
            print(f"{name:5s} {photos:>9,d} photos -> {rows:>8,d} rows: peak RSS {rss:7.1f} MB "
                  f"({secs:.0f} s, {photos / secs:,.0f} photos/s)")
        ratio = results["large"] / results["small"]
        print(f"peak RSS large/small: {ratio:.2f}x for {args.photos / args.small:.1f}x the photos "
              f"(flat: <= 1.10x) -> {'OK' if ratio <= 1.10 else 'GROWS'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
