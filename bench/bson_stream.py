"""Benchmark: streaming a big Cdiscount-style BSON dump keeps memory flat.

Builds a BSON file of --size-mb (default 1024) in a temp dir from a handful of
distinct noisy JPEGs (50-100 KB each, 1-4 per product), then, in a child
process, iterates BsonSource.items() and calls every load(), as the writer
does. The child's peak RSS (its rusage from os.wait4, i.e. RUSAGE_CHILDREN for
that child alone) is printed next to the file size; target: peak RSS < 500 MB
whatever the file size.

--generate-dataset runs the real `generate_dataset.py FILE --out TMP` as the
child instead (its peak is the largest single process, workers included), and
also measures a process that only imports TensorFlow, the writer's fixed cost.

    .venv/bin/python bench/bson_stream.py [--size-mb 1024] [--generate-dataset]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

TARGET_MB = 500


def noisy_jpegs(n: int = 6) -> list[bytes]:
    """Distinct photo-like JPEGs (gradient + noise) of roughly 50-100 KB."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        side = 320 + 25 * i
        yy, xx = np.mgrid[0:side, 0:side]
        base = np.stack([xx * 255 / side, yy * 255 / side, (xx + yy) * 127 / side], -1)
        img = np.clip(base + rng.normal(0, 35, base.shape), 0, 255).astype(np.uint8)
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 85])
        out.append(buf.tobytes())
    return out


def write_bson(path: str, size_bytes: int) -> tuple[int, int]:
    """Stream products into `path` until it holds size_bytes; -> (products, photos)."""
    import bson

    pics = noisy_jpegs()
    products = photos = written = 0
    with open(path, "wb") as f:
        while written < size_bytes:
            n = 1 + products % 4
            imgs = [{"picture": pics[(products + j) % len(pics)]} for j in range(n)]
            data = bson.encode({"_id": products, "imgs": imgs, "category_id": 1000000000 + products % 50})
            f.write(data)
            written += len(data)
            products += 1
            photos += n
    return products, photos


def child_read(path: str) -> None:
    """What the writer does with a BSON source: index every item, read every photo."""
    from utils.sources.base import Item
    from utils.sources.bsondump import BsonSource

    rss_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    items = skips = nbytes = 0
    for it in BsonSource(path).items():
        if isinstance(it, Item):
            items += 1
            nbytes += sum(len(b) for b in it.load())
        else:
            skips += 1
    print(json.dumps({"items": items, "skips": skips, "bytes": nbytes,
                      "seconds": time.perf_counter() - t0, "rss_after_imports_mb": rss_start}))


def run_measured(cmd: list[str], tmp: str) -> tuple[int, str, str, float, float]:
    """Run cmd; -> (returncode, stdout, stderr, peak RSS MB, seconds).

    os.wait4 gives this child's own rusage (the RUSAGE_CHILDREN figure for just
    this child and the workers it waited for), so several children can be
    measured in one run without their peaks mixing.
    """
    outp, errp = os.path.join(tmp, "child.out"), os.path.join(tmp, "child.err")
    t0 = time.perf_counter()
    with open(outp, "w") as fo, open(errp, "w") as fe:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=fo, stderr=fe)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    secs = time.perf_counter() - t0
    with open(outp) as fo, open(errp) as fe:
        return proc.returncode, fo.read(), fe.read(), usage.ru_maxrss / 1024, secs   # KB on Linux


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=int, default=1024, help="size of the BSON file to build, in MB (default 1024)")
    ap.add_argument("--generate-dataset", action="store_true",
                    help="measure `generate_dataset.py FILE --out TMP` instead of iterating BsonSource")
    ap.add_argument("--tmp-dir", default=None, help="where to build the file (default: the system temp dir)")
    ap.add_argument("--child-read", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child_read:
        child_read(args.child_read)
        return 0
    gen = os.path.join(ROOT, "generate_dataset.py")
    if args.generate_dataset and not os.path.isfile(gen):
        print(f"error: {gen} does not exist yet", file=sys.stderr)
        return 2

    tmp = tempfile.mkdtemp(prefix="bson_stream_", dir=args.tmp_dir)
    try:
        path = os.path.join(tmp, "train.bson")
        t0 = time.perf_counter()
        products, photos = write_bson(path, args.size_mb * 1024 * 1024)
        size_mb = os.path.getsize(path) / 2**20
        print(f"built {path}: {size_mb:.0f} MB, {products} products, {photos} photos "
              f"in {time.perf_counter() - t0:.1f} s")

        if args.generate_dataset:
            cmd = [sys.executable, gen, path, "--out", os.path.join(tmp, "out")]
        else:
            cmd = [sys.executable, os.path.abspath(__file__), "--child-read", path]
        rc, out, err, peak_mb, secs = run_measured(cmd, tmp)
        if rc != 0:
            print(f"error: child failed ({rc}): {err.strip()[-500:]}", file=sys.stderr)
            return 1
        what = "generate_dataset.py" if args.generate_dataset else "BsonSource.items() + load()"
        print(f"{what}: {secs:.1f} s, {size_mb / secs:.0f} MB/s of BSON")
        if args.generate_dataset:
            # The writer imports TensorFlow (tf.train.Example); its import alone is
            # a fixed cost that says nothing about streaming, so show it beside.
            _, _, _, tf_mb, _ = run_measured([sys.executable, "-c", "import tensorflow"], tmp)
            print(f"  baseline: a process that only imports tensorflow peaks at {tf_mb:.0f} MB; "
                  f"growth over it {peak_mb - tf_mb:+.0f} MB")
            with open(os.path.join(tmp, "out", "manifest.json")) as f:
                man = json.load(f)
            records = sum(int(v["count"]) for v in man["splits"].values())
            skipped = int(man.get("skipped", {}).get("count", 0))
            print(f"  records {records} + skipped {skipped} (photos offered {photos})")
        else:
            stats = json.loads(out.strip().splitlines()[-1])
            assert stats["items"] == photos and stats["skips"] == 0, stats
            print(f"  items {stats['items']}, photo bytes read {stats['bytes'] / 2**20:.0f} MB, "
                  f"child RSS after imports {stats['rss_after_imports_mb']:.0f} MB")
        ok = peak_mb < TARGET_MB
        print(f"file {size_mb:.0f} MB, child peak RSS {peak_mb:.0f} MB, "
              f"peak/file = {peak_mb / size_mb:.3f}  (target peak < {TARGET_MB} MB: {'PASS' if ok else 'FAIL'})")
        return 0 if ok else 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
