"""Any Source -> sharded, verified TFRecords + manifest.json: the local run.

Four phases, so that a multi-million-sample source never needs its bytes in
memory and a killed run can resume:

  INDEX   iterate source.items() into a columnar index (arrays and string
          blobs, no object per item; + Skips) and fix the class list
          (utils.generate.index).
  PLAN    pure and deterministic for a seed: --fraction subset, train/val
          split (stratified by class, grouped by source_id), --folds, shuffle,
          and the cut into shards by estimated size, on arrays
          (utils.generate.plan). Its hash names the run (utils.generate.outdir).
  WRITE   shard by shard, in plan order: load, check / resize in workers,
          serialize, frame, hash and write (utils.generate.shards); a sidecar
          in `.work/` marks each finished shard. A pass-through of 2+ shards
          writes whole shards side by side in forked workers instead.
  FINISH  labels.json, skipped.csv, then manifest.json (its presence marks a
          finished dataset), then `.work/` is removed.

Writing never imports TensorFlow (it costs ~700 MB RSS and seconds of start-up,
and worker processes import the shard writer); only verify decodes with TF.
"""
from __future__ import annotations

import collections
import functools
import os
import sys
import time
from typing import Callable

from utils.dataset import schema
from utils.dataset.manifest import IMAGES, LABELS, MANIFEST, SKIPPED, SPLITS, load_manifest
from utils.errors import SourceError, UsageError
from utils.files import atomic_write_csv, atomic_write_json
from utils.generate import apart, outdir
from utils.generate.index import Index, build_index
from utils.generate.plan import ShardPlan, make_plan
from utils.generate.progress import writing_bar
from utils.generate.pool import make_executor, ordered_results
from utils.generate.shards import item_tasks, prepare_item, write_shard_deferred
from utils.sources.base import Source


def _check_options(*, val_fraction, fraction, folds, shard_mb, max_side, short_side, max_pixels) -> None:
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


def write_dataset(source: Source, out_dir: str, *, name: str, val_fraction: float | None = None,
                  folds: int = 0, fraction: float | None = None, shard_mb: float = 150,
                  max_side: int | None = None, short_side: int | None = None,
                  max_pixels: int = 100_000_000, dedupe: bool = False,
                  strict: bool = False, seed: int = 0, workers: int | None = None, progress: bool = True,
                  overwrite: bool = False, log: Callable[[str], None] | None = None,
                  shard_writer: Callable[..., dict[str, dict]] | None = None) -> dict:
    """Convert `source` into a finished dataset folder (or resume / skip it).

    Args:
        source: any utils.sources Source.
        out_dir: the dataset folder; made if missing.
        name: the dataset's name in the manifest.
        val_fraction, folds, fraction, shard_mb, max_side, short_side, seed:
            the plan's arguments (utils.generate.plan.make_plan).
        max_pixels: refuse images whose header claims more pixels.
        dedupe: skip exact duplicates of an earlier input's bytes.
        strict: stop at the first input the source cannot use.
        workers: resize processes (default: the CPU count).
        progress: show progress bars.
        overwrite: replace a different dataset in `out_dir`.
        log: gets the summary and status lines (default: stderr).
        shard_writer: what writes the shards, called as `_write_shards` is
            (default: this process; utils.generate.beam.BeamShardWriter: Beam).

    Returns:
        the manifest.

    Raises:
        UsageError: an argument out of range.
        SourceError: no usable sample, a different dataset in `out_dir`, or
            (with `strict`) a skipped input.
    """
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    _check_options(val_fraction=val_fraction, fraction=fraction, folds=folds, shard_mb=shard_mb,
                   max_side=max_side, short_side=short_side, max_pixels=max_pixels)
    workers = int(workers or os.cpu_count() or 1)
    t0 = time.time()

    opts = {"val_fraction": val_fraction, "folds": folds, "fraction": fraction, "shard_mb": shard_mb,
            "max_side": max_side, "max_pixels": max_pixels, "dedupe": dedupe, "strict": strict, "seed": seed}
    if short_side is not None:  # absent when unset: datasets built before the flag keep their signature
        opts["short_side"] = short_side
    resize = {"max_side": max_side, "short_side": short_side}   # one spelling for the plan and the workers
    sig = outdir.signature(source, name, opts)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise SourceError(f"--out {out_dir} is a file, not a folder")
    os.makedirs(out_dir, exist_ok=True)
    state = outdir.check_out_dir(out_dir, sig, overwrite)
    if state == "done":
        outdir.clean_temps(out_dir)
        outdir.finish(out_dir)
        log(f"already built: {out_dir} (same source and arguments; --overwrite rebuilds it)")
        return load_manifest(out_dir)

    # The resize workers start now, before the index: their start-up overlaps it (utils.generate.pool).
    executor = make_executor(any(resize.values()), workers) if shard_writer is None else None
    try:
        index = build_index(source, strict=strict, progress=progress)
        if not index.items:
            raise SourceError(f"no usable samples in {sig['source']['path']}" + (
                f" ({len(index.skips)} inputs skipped, e.g. {index.skips[0][1]})" if index.skips else ""))
        plan = make_plan(index.labels, index.source_ids, index.splits, index.sizes, val_fraction=val_fraction,
                         folds=folds, fraction=fraction, shard_mb=shard_mb, **resize, seed=seed)
        outdir.start_run(out_dir, sig, outdir.plan_hash(sig, index, plan), state == "resume", log)
        write = shard_writer or functools.partial(_write_shards, executor=executor)
        done = write(index, plan, out_dir, resize=resize, max_pixels=max_pixels, dedupe=dedupe,
                     workers=workers, progress=progress)
    finally:
        if executor is not None:
            executor.shutdown()
    manifest, skipped = build_manifest(name, sig, index, plan, done, source=source, folds=folds, seed=seed)

    # labels and skipped first; manifest.json LAST: its presence means "finished"
    atomic_write_json(os.path.join(out_dir, LABELS), index.classes)
    atomic_write_csv(os.path.join(out_dir, SKIPPED), ["key", "reason"], skipped)
    atomic_write_json(os.path.join(out_dir, MANIFEST), manifest)
    outdir.finish(out_dir)
    mb = sum(s["bytes"] for v in manifest["splits"].values() for s in v["shards"]) / 1e6
    log(summary(manifest, time.time() - t0, mb))
    return manifest


def _write_shards(index: Index, plan: list[ShardPlan], out_dir: str, *, resize: dict, max_pixels: int,
                  dedupe: bool, workers: int, progress: bool, executor=None) -> dict[str, dict]:
    """Write every planned shard not done yet; -> {file: metadata} of all of them.

    `executor` (utils.generate.pool.make_executor) runs prepare_item; None: inline.
    """
    done = outdir.load_done(out_dir, plan, dedupe)
    seen: dict[str, str] | None = None
    if dedupe:
        seen = {}
        for s in plan:
            if s.file in done:
                seen.update(done[s.file].get("hashes") or {})
    todo = [s for s in plan if s.file not in done]
    if apart.wanted(todo, resize, seen, workers):
        apart.write_shards(todo, index, out_dir, done, resize=resize, max_pixels=max_pixels, workers=workers,
                           progress=progress)
        return done
    items = index.items
    tasks = (t for s in todo for t in item_tasks(index, s.members, resize, max_pixels, dedupe))
    results = ordered_results(prepare_item, tasks, executor)
    with writing_bar(progress, todo) as bar:
        written_mb = 0.0

        def tick(nbytes: int) -> None:
            nonlocal written_mb
            bar.update(1)
            if nbytes:
                written_mb += nbytes / 1e6
                if bar.n % 64 == 0:
                    bar.set_postfix_str(f"{written_mb:.0f} MB", refresh=False)

        # a shard is finished (its sink joined, the file renamed, the sidecar saved) once the next
        # one is written: its sink thread drains meanwhile, and a complete shard counts even if
        # the next one fails
        previous = None
        try:
            for s in todo:
                finish = write_shard_deferred(s, items, index.labels, results, os.path.join(out_dir, s.file),
                                              num_classes=len(index.classes), seen=seen, tick=tick)
                last, previous = previous, (s, finish)
                if last is not None:
                    _finish_shard(out_dir, done, *last)
        finally:
            if previous is not None:
                _finish_shard(out_dir, done, *previous)
    return done


def _finish_shard(out_dir: str, done: dict[str, dict], entry: ShardPlan, finish: Callable[[], dict]) -> None:
    """Wait for a written shard's sink, rename the file (write_shard_deferred), mark it done."""
    meta = finish()
    outdir.save_done(out_dir, meta)   # AFTER the shard's rename: "done"
    done[entry.file] = meta


def build_manifest(name: str, signature: dict, index: Index, plan: list[ShardPlan], done: dict[str, dict],
                   *, source: Source, folds: int, seed: int) -> tuple[dict, list[tuple[str, str]]]:
    """The manifest of a finished run, from the shards' metadata.

    Returns:
        (manifest, every skipped (key, reason): the index's, then each shard's).

    Raises:
        SourceError: samples with different numbers of planes.
    """
    k = len(index.classes)
    splits: dict[str, dict] = {}
    skipped = list(index.skips)
    planes, channels = set(), set()
    for s in plan:
        meta = done[s.file]
        sp = splits.setdefault(s.split, {"count": 0, "class_counts": [0] * k, "shards": []})
        sp["count"] += meta["count"]
        sp["class_counts"] = [a + b for a, b in zip(sp["class_counts"], meta["class_counts"])]
        entry = {"file": s.file, "count": meta["count"], "bytes": meta["bytes"],
                 "sha256": meta["sha256"], "fold": s.fold, "class_counts": meta["class_counts"]}
        if IMAGES in meta:   # absent from a sidecar written before the summary: the entry then has none
            entry[IMAGES] = meta[IMAGES]
        sp["shards"].append(entry)
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
        "splits": {sp: splits[sp] for sp in SPLITS if sp in splits},
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


def summary(manifest: dict, seconds: float, mb: float) -> str:
    """The lines a finished run prints: classes, records per split, skips by reason, speed."""
    lines = [f"dataset {manifest['name']}: {manifest['num_classes']} classes"
             f"{' (multi-label)' if manifest['multi_label'] else ''}, {manifest['planes']} plane(s), "
             f"{manifest['channels']} channel(s)"]
    for sp, v in manifest["splits"].items():
        lines.append(f"  {sp:5s} {v['count']:>9,d} records in {len(v['shards'])} shard(s)")
    skipped = manifest["skipped"]
    lines.append(f"  skipped {skipped['count']:,d} of {manifest['inputs']:,d} inputs (see {SKIPPED})")
    for reason, n in list(skipped["by_reason"].items())[:10]:
        lines.append(f"    {n:>7,d}  {reason}")
    n = sum(v["count"] for v in manifest["splits"].values())
    lines.append(f"  {mb:,.1f} MB in {seconds:,.1f} s ({n / max(seconds, 1e-9):,.0f} images/s)")
    return "\n".join(lines)
