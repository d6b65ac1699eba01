"""Benchmark: generate_dataset.py's peak memory per photo on Cdiscount-shaped BSON dumps.

Builds dumps of several sizes (default 250k, 1M and 2M photos; --quick: 50k,
100k, 200k) in a temp dir: products of 1-4 tiny JPEGs (a few hundred bytes
each) over 5,270 categories, the BSON bytes written directly so that building
takes seconds. Runs `generate_dataset.py DUMP --out TMP` as a child on each and
prints its peak RSS (os.wait4: that child's own rusage; the dumps are built by
another child, since a forked child's peak starts from its parent's RSS) and
photos/s, then the
least-squares slope of peak RSS over photos (bytes per photo), its
extrapolation to the real dump's 12.37 M photos, and PASS/FAIL against the
target of at most 64 bytes per photo.

    .venv/bin/python bench/bson_stream.py [--quick] [--sizes 250000,1000000,2000000]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CDISCOUNT_PHOTOS = 12_371_293
CATEGORIES = 5270
TARGET_BYTES_PER_PHOTO = 64
FULL, QUICK = (250_000, 1_000_000, 2_000_000), (50_000, 100_000, 200_000)


def tiny_jpegs(n: int = 8) -> list[bytes]:
    """Distinct valid JPEGs of a few hundred bytes (noise, 8-15 px)."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        side = 8 + i
        img = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
        out.append(cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 50])[1].tobytes())
    return out


def _bson_imgs(pics: list[bytes]) -> bytes:
    """The BSON element `imgs: [{picture: <binary>}, ...]`."""
    elems = b""
    for j, p in enumerate(pics):
        pic = b"\x05picture\x00" + struct.pack("<i", len(p)) + b"\x00" + p
        sub = struct.pack("<i", len(pic) + 5) + pic + b"\x00"
        elems += b"\x03" + str(j).encode() + b"\x00" + sub
    return b"\x04imgs\x00" + struct.pack("<i", len(elems) + 5) + elems + b"\x00"


def write_dump(path: str, photos: int) -> int:
    """A dump of exactly `photos` photos, products of 1-4; -> the number of products."""
    pics = tiny_jpegs()
    variants = {(n, v): _bson_imgs([pics[(v + j) % len(pics)] for j in range(n)])
                for n in range(1, 5) for v in range(len(pics))}
    products = done = 0
    chunk = []
    with open(path, "wb") as f:
        while done < photos:
            n = min(1 + products % 4, photos - done)
            body = (b"\x10_id\x00" + struct.pack("<i", products) + variants[n, products % len(pics)]
                    + b"\x12category_id\x00" + struct.pack("<q", 1_000_000_000 + products % CATEGORIES))
            chunk.append(struct.pack("<i", len(body) + 5) + body + b"\x00")
            products += 1
            done += n
            if len(chunk) >= 4096:
                f.write(b"".join(chunk))
                chunk = []
        f.write(b"".join(chunk))
    return products


def run_measured(cmd: list[str], tmp: str) -> tuple[int, str, float, float]:
    """Run cmd; -> (returncode, stderr, peak RSS in bytes, seconds), rusage of this child alone."""
    errp = os.path.join(tmp, "child.err")
    t0 = time.perf_counter()
    with open(errp, "w") as fe:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=fe)
        _, status, usage = os.wait4(proc.pid, 0)
    secs = time.perf_counter() - t0
    with open(errp) as fe:
        return os.waitstatus_to_exitcode(status), fe.read(), usage.ru_maxrss * 1024.0, secs   # KB on Linux


def least_squares(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """-> (slope, intercept) of the least-squares line through (xs, ys)."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return slope, my - slope * mx


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small dumps: 50k, 100k and 200k photos")
    ap.add_argument("--sizes", help="comma-separated photo counts (default 250000,1000000,2000000)")
    ap.add_argument("--tmp-dir", default=None, help="where to build the dumps (default: the system temp dir)")
    ap.add_argument("--write-dump", nargs=2, metavar=("PATH", "PHOTOS"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.write_dump:
        print(write_dump(args.write_dump[0], int(args.write_dump[1])))
        return 0
    try:
        sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else list(QUICK if args.quick else FULL)
    except ValueError:
        print(f"error: --sizes must be comma-separated integers, got {args.sizes!r}", file=sys.stderr)
        return 2
    if len(sizes) < 2 or min(sizes) < 1:
        print("error: --sizes needs at least two positive photo counts", file=sys.stderr)
        return 2
    gen = os.path.join(ROOT, "generate_dataset.py")
    xs, ys = [], []
    for photos in sizes:
        tmp = tempfile.mkdtemp(prefix="bson_stream_", dir=args.tmp_dir)
        try:
            path = os.path.join(tmp, "train.bson")
            t0 = time.perf_counter()
            # in a child: a forked child's peak RSS starts from its parent's, so
            # the parent stays small (no numpy, no dump bytes) for the measure to be the writer's
            products = int(subprocess.run([sys.executable, os.path.abspath(__file__), "--write-dump", path,
                                           str(photos)], check=True, capture_output=True, text=True).stdout)
            built = time.perf_counter() - t0
            out = os.path.join(tmp, "out")
            cmd = [sys.executable, gen, path, "--out", out, "--no-progress", "--workers", "1"]
            rc, err, peak, secs = run_measured(cmd, tmp)
            if rc != 0:
                print(f"error: generate_dataset.py failed ({rc}) on {photos} photos: {err.strip()[-500:]}",
                      file=sys.stderr)
                return 1
            with open(os.path.join(out, "manifest.json")) as f:
                man = json.load(f)
            records = sum(int(v["count"]) for v in man["splits"].values())
            print(f"photos {photos:>9,d} ({products:,d} products, {os.path.getsize(path) / 2**20:.0f} MB, "
                  f"built in {built:.1f} s): peak RSS {peak / 2**20:7.1f} MiB, {secs:6.1f} s, "
                  f"{photos / secs:,.0f} photos/s, {records:,d} records", flush=True)
            xs.append(photos)
            ys.append(peak)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    slope, icpt = least_squares(xs, ys)
    at = icpt + slope * CDISCOUNT_PHOTOS
    ok = slope <= TARGET_BYTES_PER_PHOTO
    print(f"slope {slope:.1f} bytes/photo (least squares over {len(xs)} sizes), fixed {icpt / 2**20:.0f} MiB; "
          f"extrapolated peak for {CDISCOUNT_PHOTOS / 1e6:.2f} M photos: {at / 2**30:.2f} GiB  "
          f"(target <= {TARGET_BYTES_PER_PHOTO} bytes/photo: {'PASS' if ok else 'FAIL'})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
