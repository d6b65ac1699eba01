"""Any Source -> sharded, verified TFRecords + manifest.json (the dataset writer).

Four phases, so that a multi-million-sample source never needs its bytes in
memory and a killed run can resume:

  INDEX   iterate source.items() into a list of light Items (+ Skips); fix the
          class list (the source's, or the naturally sorted labels seen).
  PLAN    pure and deterministic for a seed: --fraction subset, train/val split
          (stratified by class, grouped by source_id), --folds, shuffle, and the
          cut into shards by estimated size. Its hash names the run.
  WRITE   shard by shard, in plan order: load bytes, validity check / resize
          (utils.image.prepare.prepare_planes, in threads or processes), serialize,
          frame (utils/tfrecord.py, no TensorFlow), write to `<shard>.tmp`, rename.
          A sidecar in `.work/` is written AFTER
          the rename, so "shard done" == "sidecar exists" (and its sha256 holds).
  FINISH  labels.json, skipped.csv, then manifest.json (its presence marks a
          finished dataset), then `.work/` is removed.

Resume: a rerun with the same arguments finds `.work/state.json` with the same
signature, keeps every shard whose sidecar and sha256 agree, and writes the rest.
Because the plan is deterministic, the final records are exactly a clean run's.

Writing never imports TensorFlow (it costs ~700 MB RSS and seconds of start-up,
and worker processes import this module); only verify_dataset decodes with TF.
"""
from __future__ import annotations

import collections
import concurrent.futures as cf
import csv
import hashlib
import json
import math
import multiprocessing
import os
import random
import re
import shutil
import sys
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

from utils.dataset import manifest as mf
from utils.dataset import schema
from utils.errors import UsageError, first_line
from utils.files import atomic_write_csv, atomic_write_json, atomic_write_text, file_sha256, natural_key
from utils.sources.base import Item, Skip, Source, SourceError

WORK = ".work"                       # hidden work folder inside out_dir (removed when finished)
STATE = "state.json"                 # signature + plan hash of the unfinished run
DEFAULT_ITEM_BYTES = 64 * 1024       # size estimate for items whose source gives none
RESIZED_BYTES_PER_PIXEL = 0.4        # rough JPEG size after --max-side, for shard cutting
SHARD_RE = re.compile(r"^(train|val|test)-\d{5}-of-\d{5}\.tfrecord(\.tmp)?$")


# ----------------------------------------------------------------------------- small helpers

def shard_name(split: str, i: int, n: int) -> str:
    return f"{split}-{i:05d}-of-{n:05d}.tfrecord"


def _bar(progress: bool, **kw):
    from tqdm import tqdm

    return tqdm(disable=not progress, dynamic_ncols=True, **kw)


# ----------------------------------------------------------------------------- INDEX

@dataclass
class Index:
    items: list[Item]                  # the samples, in source order
    labels: list[tuple[int, ...]]      # class indices per item
    skips: list[tuple[str, str]]       # (key, reason): source skips + labels not in the list
    classes: list[str]


def build_index(source: Source, *, strict: bool = False, progress: bool = True) -> Index:
    items: list[Item] = []
    skips: list[tuple[str, str]] = []
    seen_keys: set[str] = set()

    def skip(key: str, reason: str) -> None:
        if strict:
            raise SourceError(f"{key}: {reason} (--strict makes every skipped input fatal)")
        skips.append((key, reason))

    with _bar(progress, desc="indexing", unit=" inputs", leave=False) as bar:
        for x in source.items():
            bar.update(1)
            if isinstance(x, Skip):
                skip(x.key, x.reason)
            elif x.key in seen_keys:
                skip(x.key, "duplicate input key")
            else:
                seen_keys.add(x.key)
                items.append(x)
    del seen_keys

    if source.classes is not None:
        classes = list(source.classes)
    else:
        classes = sorted({lab for it in items for lab in it.labels}, key=natural_key)
    if len(set(classes)) != len(classes):
        raise SourceError("the class list has duplicate names")
    pos = {c: i for i, c in enumerate(classes)}

    kept, labels = [], []
    shared: dict[tuple[int, ...], tuple[int, ...]] = {}  # one tuple per distinct label set, not per item
    for it in items:
        unknown = [lab for lab in it.labels if lab not in pos]
        if unknown:
            skip(it.key, f"label not in label list: {unknown[0]}")
            continue
        kept.append(it)
        ids = tuple(dict.fromkeys(pos[lab] for lab in it.labels))  # dedupe, keep order
        labels.append(shared.setdefault(ids, ids))
    return Index(kept, labels, skips, classes)


# ----------------------------------------------------------------------------- PLAN

@dataclass
class ShardPlan:
    file: str
    split: str
    fold: int | None
    members: list[int]                 # indices into Index.items, in write order


def _groups_by_stratum(indices: Iterable[int], stratum: Callable[[int], object],
                       group: Callable[[int], str]) -> dict[object, list[list[int]]]:
    """{stratum: [group, ...]}: members grouped by source_id WITHIN their stratum.

    A product's photos share a class, so they still form one group; but equal ids
    in different classes (Caltech-style `<class>/image_0001.jpg` in every class
    folder: folder items' source_id is the file stem) are different images, and
    grouping them across classes would put every class but one in no stratum.
    """
    out: dict[object, dict[str, list[int]]] = {}
    for i in indices:
        out.setdefault(stratum(i), {}).setdefault(group(i), []).append(i)
    return {s: list(groups.values()) for s, groups in out.items()}


def pick_stratified(indices: Iterable[int], frac: float, stratum, group, rng: random.Random,
                    at_least_one: bool = False) -> set[int]:
    """About `frac` of each stratum, whole groups only (a product never straddles)."""
    chosen: set[int] = set()
    by = _groups_by_stratum(indices, stratum, group)
    strata = sorted(by, key=repr)
    # largest-remainder apportionment: per-stratum targets that add up to
    # round(frac * N), so many small classes still yield a val split
    exact = {s: frac * sum(len(m) for m in by[s]) for s in strata}
    targets = {s: math.floor(exact[s]) for s in strata}
    spare = round(frac * sum(sum(len(m) for m in by[s]) for s in strata)) - sum(targets.values())
    order = list(strata)
    rng.shuffle(order)                      # ties broken at random, deterministically
    order.sort(key=lambda s: exact[s] - targets[s], reverse=True)
    for s in order[:max(0, spare)]:
        targets[s] += 1
    for s in strata:
        gs = by[s]
        rng.shuffle(gs)
        target = max(1, targets[s]) if at_least_one else targets[s]
        taken = 0
        for m in gs:
            if taken >= target:
                break
            # take a group unless it overshoots the target more than leaving it out would
            if taken and taken + len(m) - target > target - taken:
                continue
            chosen.update(m)
            taken += len(m)
    return chosen


def assign_folds(indices: Iterable[int], k: int, stratum, group, rng: random.Random) -> dict[int, int]:
    """Stratified, grouped K-fold: each group goes to the fold with fewest of its stratum."""
    fold_of: dict[int, int] = {}
    total = [0] * k
    by = _groups_by_stratum(indices, stratum, group)
    for s in sorted(by, key=repr):
        gs = by[s]
        rng.shuffle(gs)
        per = [0] * k
        for m in gs:
            f = min(range(k), key=lambda j: (per[j], total[j], j))
            per[f] += len(m)
            total[f] += len(m)
            for i in m:
                fold_of[i] = f
    return fold_of


def estimate_bytes(item: Item, max_side: int | None, short_side: int | None = None) -> int:
    b = item.size or DEFAULT_ITEM_BYTES
    if max_side or short_side:
        # the resized area: at most max_side^2; a short-side limit alone leaves
        # the long side open, so assume a 3:2 photo
        area = min(max_side ** 2 if max_side else float("inf"),
                   1.5 * short_side ** 2 if short_side else float("inf"))
        b = min(b, int(area * RESIZED_BYTES_PER_PIXEL) + 1)
    return b + 64  # Example framing


def cut_by_size(order: list[int], sizes: Callable[[int], int], shard_bytes: int) -> list[list[int]]:
    chunks, cur, cur_b = [], [], 0
    for i in order:
        b = sizes(i)
        if cur and cur_b + b > shard_bytes:
            chunks.append(cur)
            cur, cur_b = [], 0
        cur.append(i)
        cur_b += b
    if cur:
        chunks.append(cur)
    return chunks


def make_plan(index: Index, *, val_fraction: float | None = None, folds: int = 0,
              fraction: float | None = None, shard_mb: float = 150, max_side: int | None = None,
              short_side: int | None = None,
              seed: int = 0) -> list[ShardPlan]:
    """Deterministic for (index, arguments, seed). Each phase has its own RNG so that,
    e.g., adding --folds does not change the val split."""
    items, labels = index.items, index.labels
    dictated = any(it.split for it in items)

    def base_split(i: int) -> str:
        return items[i].split or "train"

    def primary(i: int) -> int:
        return labels[i][0] if labels[i] else -1   # unlabeled / all-zero multi-hot: own stratum

    def group(i: int) -> str:
        return items[i].source_id

    indices = list(range(len(items)))
    if fraction is not None and fraction < 1:
        chosen = pick_stratified(indices, fraction, lambda i: (base_split(i), primary(i)), group,
                                 random.Random(f"{seed}/fraction"), at_least_one=True)
        indices = [i for i in indices if i in chosen]

    split_of = {i: base_split(i) for i in indices}
    if val_fraction is not None and (val_fraction > 0 or not dictated):
        # an explicit --val-fraction re-splits everything that is not test
        pool = [i for i in indices if split_of[i] != "test"]
        val = pick_stratified(pool, val_fraction, lambda i: (primary(i),), group,
                              random.Random(f"{seed}/val"))
        for i in pool:
            split_of[i] = "val" if i in val else "train"

    fold_of: dict[int, int] = {}
    if folds >= 2:
        train = [i for i in indices if split_of[i] == "train"]
        fold_of = assign_folds(train, folds, lambda i: (primary(i),), group, random.Random(f"{seed}/folds"))

    shard_bytes = max(1, int(shard_mb * 1024 * 1024))
    plan: list[ShardPlan] = []
    for split in mf.SPLITS:
        members = [i for i in indices if split_of[i] == split]
        if not members:
            continue
        bins: list[tuple[int | None, list[int]]]
        if split == "train" and folds >= 2:
            bins = [(f, [i for i in members if fold_of[i] == f]) for f in range(folds)]
        else:
            bins = [(None, members)]
        chunks: list[tuple[int | None, list[int]]] = []
        for f, ms in bins:
            random.Random(f"{seed}/shuffle/{split}/{f}").shuffle(ms)  # mix classes within shards
            size_of = lambda i: estimate_bytes(items[i], max_side, short_side)  # noqa: E731
            chunks += [(f, c) for c in cut_by_size(ms, size_of, shard_bytes)]
        n = len(chunks)
        plan += [ShardPlan(shard_name(split, j, n), split, f, c) for j, (f, c) in enumerate(chunks)]
    return plan


def plan_hash(signature: dict, index: Index, plan: list[ShardPlan]) -> str:
    h = hashlib.sha256(json.dumps(_comparable(signature), sort_keys=True).encode())
    h.update(json.dumps(index.classes).encode())
    h.update(json.dumps(index.skips).encode())
    for s in plan:
        h.update(json.dumps([s.file, s.fold]).encode())
        for i in s.members:
            h.update(json.dumps([index.items[i].key, index.items[i].source_id, index.labels[i]]).encode())
    return h.hexdigest()


# ----------------------------------------------------------------------------- WRITE (workers)

def default_prepare(planes, *, max_side, short_side, max_pixels):
    from utils.image.prepare import prepare_planes

    return prepare_planes(planes, max_side=max_side, short_side=short_side, max_pixels=max_pixels)


def prepare_item(load, resize: dict, max_pixels, want_hash, prepare=None):
    """Runs in a worker: load + check/resize one sample. Never raises for bad input.

    resize: {"max_side": N|None, "short_side": N|None}, passed on to prepare.
    -> ("ok", planes, (fmt, h, w, c), sha1-of-input-or-None) | ("skip", reason)
    """
    try:
        planes = load()
    except Exception as e:  # a vanished file, a failed download, ...
        return ("skip", f"cannot read input: {first_line(e, 200)}")
    if not planes or any(not p for p in planes):
        return ("skip", "empty file")
    digest = None
    if want_hash:
        h = hashlib.sha1()
        for p in planes:
            h.update(hashlib.sha1(p).digest())
        digest = h.hexdigest()
    try:
        out, info = (prepare or default_prepare)(planes, **resize, max_pixels=max_pixels)
    except MemoryError:
        return ("skip", "image too large to decode")
    except Exception as e:  # BadImage's text is the reason; any decoder error is a bad image too
        return ("skip", first_line(e, 200))
    return ("ok", out, (info.fmt, int(info.height), int(info.width), int(info.channels)), digest)


def _ordered_results(fn, args: Iterator[tuple], executor, window: int):
    """map() with bounded look-ahead, results in submission order."""
    if executor is None:
        for a in args:
            yield fn(*a)
        return
    pending: collections.deque = collections.deque()
    for a in args:
        pending.append(executor.submit(fn, *a))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _make_executor(resizing: bool, workers: int):
    """Resizing is CPU-bound: a process pool (forkserver/spawn, never a fork of a
    process that may hold TensorFlow). Pass-through runs inline: a read plus a
    header check is cheap and GIL-bound, and the sink thread already overlaps
    hashing and writing with it. Measured on 2,000 JPEGs (bench/generate.py,
    medians of 3 rounds): inline 0.61x of a plain copy, a 2-thread pool 0.35x."""
    if workers <= 1 or not resizing:
        return None, 1
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    return cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx), workers * 8


# ----------------------------------------------------------------------------- WRITE (main)

def _write_all(f, parts: tuple[bytes, ...]) -> None:
    """Write parts to the unbuffered file f in order, one writev where there is one."""
    done = os.writev(f.fileno(), parts) if hasattr(os, "writev") else 0
    rest = memoryview(b"".join(parts))[done:] if done < sum(map(len, parts)) else b""
    while rest:  # a short writev (signals, odd filesystems) or no writev at all
        rest = rest[f.write(rest):]


class _ShardSink:
    """Frames, hashes and writes records on a background thread.

    crc32c, sha256 and file writes release the GIL, so they overlap with the
    (GIL-bound) serialization in the main thread; a bounded queue caps memory.
    """

    def __init__(self, path: str, depth: int = 64) -> None:
        import queue
        import threading

        self.path, self.size, self.error = path, 0, None
        self._sha = hashlib.sha256()
        self._q: queue.Queue = queue.Queue(maxsize=depth)
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        from utils.dataset import tfrecord

        try:
            # Header, record and footer go to the file in one writev, straight
            # from their own buffers: no concatenated copy of the record and no
            # userland file buffer. Measured on bench/generate.py pass-through:
            # 0.64-0.72x of a plain copy, from 0.46-0.53x with frame() + a
            # buffered file.
            with open(self.path, "wb", buffering=0) as f:
                while (rec := self._q.get()) is not None:
                    header, footer = tfrecord.frame_parts(rec)
                    parts = (header, rec, footer)
                    _write_all(f, parts)
                    for b in parts:
                        self._sha.update(b)
                    self.size += len(header) + len(rec) + len(footer)
        except BaseException as e:  # surfaced by close()
            self.error = e
            while self._q.get() is not None:   # keep draining so write() never blocks forever
                pass

    def write(self, rec: bytes) -> None:
        self._q.put(rec)

    def close(self) -> tuple[int, str]:
        """-> (bytes, sha256) once everything is on disk (in the page cache)."""
        self._q.put(None)
        self._t.join()
        if self.error is not None:
            raise self.error
        return self.size, self._sha.hexdigest()


def _sidecar_path(out_dir: str, shard: str) -> str:
    return os.path.join(out_dir, WORK, shard + ".json")


def _load_done(out_dir: str, plan: list[ShardPlan], dedupe: bool) -> dict[str, dict]:
    """Sidecars whose shard is intact. With --dedupe only a prefix of the plan counts,
    because a shard's duplicate decisions depend on every earlier shard."""
    done = {}
    for s in plan:
        side = _sidecar_path(out_dir, s.file)
        path = os.path.join(out_dir, s.file)
        ok = False
        if os.path.isfile(side) and os.path.isfile(path):
            try:
                with open(side) as f:
                    meta = json.load(f)
                ok = (os.path.getsize(path) == meta["bytes"] and file_sha256(path) == meta["sha256"])
            except (ValueError, KeyError, OSError):
                ok = False
        if ok:
            done[s.file] = meta
        elif dedupe:
            break
    return done


def _write_shards(index: Index, plan: list[ShardPlan], out_dir: str, *, resize: dict, max_pixels,
                  dedupe: bool, workers: int, progress: bool, prepare=None) -> dict[str, dict]:
    done = _load_done(out_dir, plan, dedupe)
    for s in plan:  # a shard without an intact sidecar is rewritten from scratch
        if s.file not in done:
            for p in (os.path.join(out_dir, s.file), _sidecar_path(out_dir, s.file)):
                if os.path.exists(p):
                    os.remove(p)
    seen: dict[str, str] = {}
    for s in plan:
        if s.file in done:
            seen.update(done[s.file].get("hashes") or {})
    todo = [s for s in plan if s.file not in done]
    total = sum(len(s.members) for s in todo)
    num_classes = len(index.classes)
    items, labels = index.items, index.labels

    executor, window = _make_executor(any(resize.values()), workers)
    tasks = ((items[i].load, resize, max_pixels, dedupe, prepare) for s in todo for i in s.members)
    results = _ordered_results(prepare_item, tasks, executor, window)
    mb = 0.0
    try:
        with _bar(progress, total=total, desc="writing", unit=" img", smoothing=0.1) as bar:
            for s in todo:
                tmp = os.path.join(out_dir, s.file + ".tmp")
                meta = {"file": s.file, "count": 0, "fold": s.fold, "class_counts": [0] * num_classes,
                        "planes": [], "channels": [], "skipped": [], "hashes": {} if dedupe else None}
                sink = _ShardSink(tmp)   # hashed as written: no second read of the shard
                try:
                    for i in s.members:
                        res = next(results)
                        bar.update(1)
                        key = items[i].key
                        if res[0] == "skip":
                            meta["skipped"].append([key, res[1]])
                            continue
                        _, planes, (fmt, h, wd, c), digest = res
                        if dedupe:
                            if digest in seen:
                                meta["skipped"].append([key, f"duplicate of {seen[digest]}"])
                                continue
                            seen[digest] = key
                            meta["hashes"][digest] = key
                        rec = schema.serialize(planes, fmt, h, wd, c, labels[i], items[i].source_id)
                        sink.write(rec)
                        mb += len(rec) / 1e6
                        meta["count"] += 1
                        for lab in labels[i]:
                            meta["class_counts"][lab] += 1
                        if len(planes) not in meta["planes"]:
                            meta["planes"].append(len(planes))
                        if c not in meta["channels"]:
                            meta["channels"].append(c)
                        if bar.n % 64 == 0:
                            bar.set_postfix_str(f"{mb:.0f} MB", refresh=False)
                finally:
                    meta["bytes"], meta["sha256"] = sink.close()
                os.replace(tmp, os.path.join(out_dir, s.file))
                atomic_write_json(_sidecar_path(out_dir, s.file), meta)   # AFTER the shard: "done"
                done[s.file] = meta
    finally:
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
    return done


# ----------------------------------------------------------------------------- FINISH

def build_manifest(name: str, signature: dict, index: Index, plan: list[ShardPlan], done: dict[str, dict],
                   *, source: Source, folds: int, seed: int) -> tuple[dict, list[tuple[str, str]]]:
    k = len(index.classes)
    splits: dict[str, dict] = {}
    skipped = list(index.skips)
    planes, channels = set(), set()
    for s in plan:
        meta = done[s.file]
        sp = splits.setdefault(s.split, {"count": 0, "class_counts": [0] * k, "shards": []})
        sp["count"] += meta["count"]
        sp["class_counts"] = [a + b for a, b in zip(sp["class_counts"], meta["class_counts"])]
        sp["shards"].append({"file": s.file, "count": meta["count"], "bytes": meta["bytes"],
                             "sha256": meta["sha256"], "fold": s.fold, "class_counts": meta["class_counts"]})
        skipped += [tuple(x) for x in meta["skipped"]]
        planes.update(meta["planes"])
        channels.update(meta["channels"])
    if len(planes) > 1:
        raise SourceError(f"samples have different numbers of planes: {sorted(planes)}")
    n_planes = planes.pop() if planes else 1
    if n_planes > 1:
        n_channels = n_planes
    else:
        n_channels = 1 if channels == {1} else 3   # grayscale/alpha become 3 in the pipeline
    by_reason = collections.Counter(_reason_kind(r) for _, r in skipped)
    inputs = len(index.skips) + sum(len(s.members) for s in plan)
    manifest = {
        "schema_version": schema.SCHEMA_VERSION,
        "name": name,
        "source": signature["source"],
        "num_classes": k,
        "multi_label": bool(source.multi_label),
        "planes": n_planes,
        "channels": n_channels,
        "folds": folds if folds >= 2 else 0,
        "seed": seed,
        "inputs": inputs,
        "splits": {sp: splits[sp] for sp in mf.SPLITS if sp in splits},
        "skipped": {"count": len(skipped), "by_reason": dict(by_reason.most_common())},
        "readable_names": source.readable,
    }
    records = sum(v["count"] for v in manifest["splits"].values())
    assert records + len(skipped) == inputs, (records, len(skipped), inputs)
    return manifest, skipped


def _reason_kind(reason: str) -> str:
    """Group 'duplicate of KEY' / 'label not in label list: X' under one heading."""
    for prefix in ("duplicate of ", "label not in label list: ", "cannot read input: "):
        if reason.startswith(prefix):
            return prefix.rstrip(": ").rstrip()
    return reason


def _write_skipped_csv(path: str, skipped: list[tuple[str, str]]) -> None:
    atomic_write_csv(path, ["key", "reason"], skipped)


def summary(manifest: dict, seconds: float, mb: float) -> str:
    lines = [f"dataset {manifest['name']}: {manifest['num_classes']} classes"
             f"{' (multi-label)' if manifest['multi_label'] else ''}, {manifest['planes']} plane(s), "
             f"{manifest['channels']} channel(s)"]
    for sp, v in manifest["splits"].items():
        lines.append(f"  {sp:5s} {v['count']:>9,d} records in {len(v['shards'])} shard(s)")
    sk = manifest["skipped"]
    lines.append(f"  skipped {sk['count']:,d} of {manifest['inputs']:,d} inputs (see skipped.csv)")
    for reason, n in list(sk["by_reason"].items())[:10]:
        lines.append(f"    {n:>7,d}  {reason}")
    n = sum(v["count"] for v in manifest["splits"].values())
    lines.append(f"  {mb:,.1f} MB in {seconds:,.1f} s ({n / max(seconds, 1e-9):,.0f} images/s)")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the entry point

RUN_ONLY = ("concurrency", "timeout", "retries")   # change how, not what, is written


def _comparable(sig: dict) -> dict:
    """The signature without knobs that do not change the records."""
    src = dict(sig.get("source") or {})
    src["args"] = {k: v for k, v in (src.get("args") or {}).items() if k not in RUN_ONLY}
    return {"name": sig.get("name"), "source": src}


def _signature(source: Source, name: str, opts: dict) -> dict:
    a = source.args or {}
    path = getattr(source, "path", None) or a.get("path") or a.get("root") or a.get("images") or a.get("list")
    args = dict(source.args or {})
    args.update(opts)
    sig = {"name": name, "source": {"kind": source.kind, "path": path, "args": args}}
    return json.loads(json.dumps(sig, default=str))   # as it reads back from JSON


def _our_files(out_dir: str) -> list[str]:
    names = []
    for n in os.listdir(out_dir):
        if SHARD_RE.match(n) or n in (mf.MANIFEST, mf.LABELS, mf.SKIPPED, WORK) or n in (
                mf.MANIFEST + ".tmp", mf.LABELS + ".tmp", mf.SKIPPED + ".tmp"):
            names.append(n)
    return names


def _remove_ours(out_dir: str) -> None:
    for n in _our_files(out_dir):
        p = os.path.join(out_dir, n)
        shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)


def _clean_temps(out_dir: str) -> None:
    for n in os.listdir(out_dir):
        if n.endswith(".tmp") and (SHARD_RE.match(n) or n[:-4] in (mf.MANIFEST, mf.LABELS, mf.SKIPPED)):
            os.remove(os.path.join(out_dir, n))


def _check_out_dir(out_dir: str, sig: dict, overwrite: bool) -> str:
    """-> 'done' | 'resume' | 'fresh'. Refuses to touch a different dataset."""
    man_path = os.path.join(out_dir, mf.MANIFEST)
    state_path = os.path.join(out_dir, WORK, STATE)
    what = None
    if os.path.isfile(man_path):
        try:
            with open(man_path) as f:
                man = json.load(f)
            same = _comparable(man) == _comparable(sig)
        except ValueError:
            same, man = False, {}
        if same and not overwrite:
            return "done"
        src = man.get("source") or {}
        what = f"a different finished dataset ({src.get('kind')} {src.get('path')})" if not same else None
    elif os.path.isfile(state_path):
        try:
            with open(state_path) as f:
                same = _comparable(json.load(f).get("signature") or {}) == _comparable(sig)
        except ValueError:
            same = False
        if same and not overwrite:
            return "resume"
        what = None if same else "an unfinished build with other arguments"
    elif any(SHARD_RE.match(n) for n in os.listdir(out_dir)):
        what = "shards of an unknown build"
    if what and not overwrite:
        raise SourceError(f"{out_dir} already holds {what}: choose another --out, rerun with the "
                          "same arguments, or add --overwrite")
    _remove_ours(out_dir)
    return "fresh"


def write_dataset(source: Source, out_dir: str, *, name: str, val_fraction: float | None = None,
                  folds: int = 0, fraction: float | None = None, shard_mb: float = 150,
                  max_side: int | None = None, short_side: int | None = None,
                  max_pixels: int = 100_000_000, dedupe: bool = False,
                  strict: bool = False, seed: int = 0, workers: int | None = None, progress: bool = True,
                  overwrite: bool = False, prepare: Callable | None = None, log=None) -> dict:
    """Convert `source` into a finished dataset folder; returns the manifest.

    `prepare(planes, max_side=, short_side=, max_pixels=) -> (planes, info)`
    replaces utils.image.prepare.prepare_planes (tests); it must be picklable when
    resizing (a process pool).
    """
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    if val_fraction is not None and not 0 <= val_fraction < 1:
        raise UsageError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    if fraction is not None and not 0 < fraction <= 1:
        raise UsageError(f"--fraction must be in (0, 1], got {fraction}")
    if folds < 0 or folds == 1:
        raise UsageError(f"--folds must be 0 (none) or at least 2, got {folds}")
    if shard_mb <= 0:
        raise UsageError(f"--shard-mb must be positive, got {shard_mb}")
    for flag, limit in (("--max-side", max_side), ("--short-side", short_side)):
        if limit is not None and limit < 1:
            raise UsageError(f"{flag} must be a positive number of pixels, got {limit}")
    if max_pixels < 1:
        raise UsageError(f"--max-pixels must be positive, got {max_pixels}")
    workers = int(workers or os.cpu_count() or 1)
    if prepare is None:
        import utils.image.prepare  # noqa: F401  (fail loudly here, not as one skip per image)
    t0 = time.time()

    opts = {"val_fraction": val_fraction, "folds": folds, "fraction": fraction, "shard_mb": shard_mb,
            "max_side": max_side, "max_pixels": max_pixels, "dedupe": dedupe, "strict": strict, "seed": seed}
    if short_side is not None:  # absent when unset: datasets built before the flag keep their signature
        opts["short_side"] = short_side
    resize = {"max_side": max_side, "short_side": short_side}   # one spelling for the plan and the workers
    sig = _signature(source, name, opts)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise SourceError(f"--out {out_dir} is a file, not a folder")
    os.makedirs(out_dir, exist_ok=True)
    state = _check_out_dir(out_dir, sig, overwrite)
    if state == "done":
        _clean_temps(out_dir)
        shutil.rmtree(os.path.join(out_dir, WORK), ignore_errors=True)
        log(f"already built: {out_dir} (same source and arguments; --overwrite rebuilds it)")
        return mf.load_manifest(out_dir)

    index = build_index(source, strict=strict, progress=progress)
    if not index.items:
        raise SourceError(f"no usable samples in {sig['source']['path']}"
                          + (f" ({len(index.skips)} inputs skipped, e.g. {index.skips[0][1]})" if index.skips else ""))
    plan = make_plan(index, val_fraction=val_fraction, folds=folds, fraction=fraction,
                     shard_mb=shard_mb, **resize, seed=seed)
    phash = plan_hash(sig, index, plan)

    work = os.path.join(out_dir, WORK)
    state_path = os.path.join(work, STATE)
    if state == "resume":
        with open(state_path) as f:
            if json.load(f).get("plan_hash") != phash:
                log(f"the inputs changed since the unfinished run in {out_dir}: starting over")
                _remove_ours(out_dir)
            else:
                log(f"resuming the unfinished run in {out_dir}")
    _clean_temps(out_dir)
    os.makedirs(work, exist_ok=True)
    atomic_write_json(state_path, {"signature": sig, "plan_hash": phash})

    done = _write_shards(index, plan, out_dir, resize=resize, max_pixels=max_pixels, dedupe=dedupe,
                         workers=workers, progress=progress, prepare=prepare)
    manifest, skipped = build_manifest(name, sig, index, plan, done, source=source, folds=folds, seed=seed)

    # labels and skipped first; manifest.json LAST: its presence means "finished"
    atomic_write_json(os.path.join(out_dir, mf.LABELS), index.classes)
    _write_skipped_csv(os.path.join(out_dir, mf.SKIPPED), skipped)
    atomic_write_json(os.path.join(out_dir, mf.MANIFEST), manifest)
    shutil.rmtree(work, ignore_errors=True)
    mb = sum(s["bytes"] for v in manifest["splits"].values() for s in v["shards"]) / 1e6
    log(summary(manifest, time.time() - t0, mb))
    return manifest


# ----------------------------------------------------------------------------- verify

def _check_records(path: str, shard: dict, num_classes: int, planes: int, progress_bar,
                   hashes: list | None = None, split: str = "") -> list[str]:
    """Parse and decode every record of one shard; returns problems.

    hashes: when a list, gets (split, shard file, record number, source_id,
    labels, dHash of the first plane) for every record that decodes."""
    import tensorflow as tf

    if hashes is not None:
        from utils.generate.neardup import dhash

    problems = []
    counts = [0] * num_classes
    n = 0
    try:
        for raw in tf.data.TFRecordDataset(path).as_numpy_iterator():
            ex = schema.parse_numpy(raw)
            sid = ex[schema.SOURCE_ID]
            n += 1
            progress_bar.update(1)
            for lab in ex[schema.LABEL]:
                if 0 <= lab < num_classes:
                    counts[lab] += 1
                else:
                    problems.append(f"{shard['file']}: record {sid} has label {lab} outside 0..{num_classes - 1}")
            if len(ex[schema.ENCODED]) != planes:
                problems.append(f"{shard['file']}: record {sid} has {len(ex[schema.ENCODED])} planes, "
                                f"manifest says {planes}")
                continue
            for plane, p in enumerate(ex[schema.ENCODED]):
                try:
                    img = tf.io.decode_image(p, channels=0, expand_animations=False)
                    shape = tuple(img.shape)
                except (tf.errors.InvalidArgumentError, ValueError) as e:
                    problems.append(f"{shard['file']}: record {sid} does not decode: {first_line(e, 120)}")
                    continue
                if hashes is not None and plane == 0:
                    hashes.append((split, shard["file"], n - 1, sid, tuple(ex[schema.LABEL]), dhash(img.numpy())))
                want = (ex[schema.HEIGHT], ex[schema.WIDTH], ex[schema.CHANNELS])
                if shape != want:
                    problems.append(f"{shard['file']}: record {sid} decodes to {shape}, record says {want}")
    except tf.errors.DataLossError as e:
        problems.append(f"{shard['file']}: corrupt TFRecord after {n} records: {first_line(e, 120)}")
    if n != shard["count"]:
        problems.append(f"{shard['file']}: {n} records, manifest says {shard['count']}")
    if shard.get("class_counts") is not None and counts != list(shard["class_counts"]):
        problems.append(f"{shard['file']}: per-class counts differ from the manifest")
    return problems


def verify_dataset(out_dir: str, *, progress: bool = True, hashes: list | None = None) -> list[str]:
    """Re-read everything; [] when the dataset is intact.

    hashes: a list to receive every record's dHash (see _check_records), for
    utils.generate.neardup.report; costs a grayscale 9x8 resize per decoded image."""
    man = mf.load_manifest(out_dir)
    problems: list[str] = []
    k = int(man["num_classes"])
    try:
        labels = mf.load_labels(out_dir)
        if len(labels) != k:
            problems.append(f"labels.json has {len(labels)} names, manifest says {k} classes")
    except (OSError, ValueError) as e:
        problems.append(f"labels.json unreadable: {first_line(e, 200)}")
    try:
        with open(os.path.join(out_dir, mf.SKIPPED), newline="", encoding="utf-8") as f:
            n_skipped = sum(1 for _ in csv.reader(f)) - 1
        if n_skipped != man["skipped"]["count"]:
            problems.append(f"skipped.csv has {n_skipped} rows, manifest says {man['skipped']['count']}")
    except OSError as e:
        problems.append(f"skipped.csv unreadable: {first_line(e, 200)}")
    records = sum(int(v["count"]) for v in man["splits"].values())
    if records + int(man["skipped"]["count"]) != int(man["inputs"]):
        problems.append(f"records ({records}) + skipped ({man['skipped']['count']}) != inputs ({man['inputs']})")

    with _bar(progress, total=records, desc="verifying", unit=" rec") as bar:
        for split, v in man["splits"].items():
            if sum(int(s["count"]) for s in v["shards"]) != int(v["count"]):
                problems.append(f"{split}: shard counts do not add up to {v['count']}")
            cc = [0] * k
            for s in v["shards"]:
                for i, c in enumerate(s.get("class_counts") or []):
                    cc[i] += int(c)
            if cc != list(v["class_counts"]):
                problems.append(f"{split}: shard class counts do not add up to the split's")
            for s in v["shards"]:
                path = os.path.join(out_dir, s["file"])
                if not os.path.isfile(path):
                    problems.append(f"{s['file']}: missing")
                    continue
                if os.path.getsize(path) != int(s["bytes"]):
                    problems.append(f"{s['file']}: {os.path.getsize(path)} bytes, manifest says {s['bytes']}")
                if file_sha256(path) != s["sha256"]:
                    problems.append(f"{s['file']}: sha256 differs from the manifest")
                problems += _check_records(path, s, k, int(man.get("planes", 1)), bar, hashes, split)
    return problems
