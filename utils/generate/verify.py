"""verify: re-read a finished dataset and list everything that disagrees with its manifest.

Checks byte sizes and sha256 of every shard, record and per-class counts,
labels in range, planes per record, each shard's "images" summary (formats and
the largest shorter side, recounted from the records with the writer's own
manifest.add_image: the input pipeline trusts it to skip decode branches), and
decodes every image with TensorFlow (the one place generation needs it; the
caller imports it).
"""
from __future__ import annotations

import csv
import os

from utils.dataset import schema
from utils.dataset.manifest import (IMAGES, SKIPPED, add_image, class_counts, images_summary, load_labels,
                                    load_manifest)
from utils.errors import first_line
from utils.files import file_sha256
from utils.generate.neardup import dhash
from utils.generate.progress import progress_bar


def _check_records(path: str, shard: dict, num_classes: int, planes: int, bar,
                   hashes: list | None = None, split: str = "") -> list[str]:
    """Parse and decode every record of one shard; returns problems.

    hashes: when a list, gets (split, shard file, record number, source_id,
    labels, dHash of the first plane) for every record that decodes.
    """
    import tensorflow as tf  # ~700 MB and seconds: only verify needs it, and only when it runs

    problems = []
    counts = [0] * num_classes
    images = images_summary()
    n = 0
    try:
        for raw in tf.data.TFRecordDataset(path).as_numpy_iterator():
            ex = schema.parse_numpy(raw)
            sid = ex[schema.SOURCE_ID]
            n += 1
            bar.update(1)
            add_image(images, ex[schema.FORMAT], ex[schema.HEIGHT], ex[schema.WIDTH])
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
    if shard.get(IMAGES) is not None and images != shard[IMAGES]:  # manifests written before it have none
        problems.append(f"{shard['file']}: image summary differs from the manifest: records hold "
                        f"{summary_text(images)}, manifest says {summary_text(shard[IMAGES])}")
    return problems


def summary_text(summary: dict) -> str:
    """A shard's image summary in one short phrase: `jpeg 3, png 2, shorter side <= 44 px`."""
    formats = ", ".join(f"{fmt} {n}" for fmt, n in sorted(summary["formats"].items()))
    return f"{formats or 'no images'}, shorter side <= {summary['max_short_side']} px"


def verify_dataset(out_dir: str, *, progress: bool = True, hashes: list | None = None) -> list[str]:
    """Re-read everything of a dataset folder.

    Args:
        out_dir: the dataset folder.
        progress: show a progress bar.
        hashes: a list to receive every record's dHash row (split, shard file,
            record number, source_id, labels, dHash) for
            utils.generate.neardup.report; costs a grayscale 9x8 resize per image.

    Returns:
        the problems found, one line each; [] when the dataset is intact.

    Raises:
        DatasetError: no folder or no readable manifest.json.
    """
    man = load_manifest(out_dir)
    problems: list[str] = []
    k = int(man["num_classes"])
    try:
        labels = load_labels(out_dir)
        if len(labels) != k:
            problems.append(f"labels.json has {len(labels)} names, manifest says {k} classes")
    except (OSError, ValueError) as e:
        problems.append(f"labels.json unreadable: {first_line(e, 200)}")
    try:
        with open(os.path.join(out_dir, SKIPPED), newline="", encoding="utf-8") as f:
            n_skipped = sum(1 for _ in csv.reader(f)) - 1
        if n_skipped != man["skipped"]["count"]:
            problems.append(f"skipped.csv has {n_skipped} rows, manifest says {man['skipped']['count']}")
    except OSError as e:
        problems.append(f"skipped.csv unreadable: {first_line(e, 200)}")
    records = sum(int(v["count"]) for v in man["splits"].values())
    if records + int(man["skipped"]["count"]) != int(man["inputs"]):
        problems.append(f"records ({records}) + skipped ({man['skipped']['count']}) != inputs ({man['inputs']})")

    with progress_bar(progress, total=records, desc="verifying", unit=" rec") as bar:
        for split, v in man["splits"].items():
            if sum(int(s["count"]) for s in v["shards"]) != int(v["count"]):
                problems.append(f"{split}: shard counts do not add up to {v['count']}")
            if class_counts(v["shards"], k) != list(v["class_counts"]):
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
