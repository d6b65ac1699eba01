"""--hard-examples: the records a first model got most wrong, drawn more often.

    detect.py --model m.h5 data/NAME --split train --evaluate   # -> PREFIX.eval/losses.csv
    train.py --data data/NAME --hard-examples PREFIX.eval/losses.csv --hard-fraction 0.2 --hard-weight 3

The hardest --hard-fraction of the file's rows (by loss) name the hard source
ids; utils/input/sampling.mixer draws their training records --hard-weight
times as often as each other record. Nothing is copied: both kinds are read
from the same shards.
"""
from __future__ import annotations

import csv
import math

from utils.dataset.manifest import load_manifest, select_shards
from utils.errors import DatasetError, UsageError
from utils.input.sampling import LOSSES_COLUMNS, hard_probability, mixer, source_ids


def read_losses(path: str) -> list[tuple[str, float]]:
    """losses.csv -> [(source id, loss)] in file order.

    Raises:
        UsageError: the file is missing, lacks the source_id/loss columns, has a
            loss that is not a number, or has no rows.
    """
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in ("source_id", "loss") if c not in (reader.fieldnames or [])]
            if missing:
                raise UsageError(f"--hard-examples {path} has no {', '.join(missing)} column "
                                 f"(expected {','.join(LOSSES_COLUMNS)}, as detect.py --evaluate writes it)")
            rows = []
            for n, row in enumerate(reader, start=2):
                try:
                    rows.append((row["source_id"], float(row["loss"])))
                except (TypeError, ValueError):
                    raise UsageError(f"--hard-examples {path} line {n}: loss {row['loss']!r} is not a number") from None
    except OSError as e:
        raise UsageError(f"--hard-examples {path}: {e.strerror or e}") from None
    if not rows:
        raise UsageError(f"--hard-examples {path} has no rows")
    return rows


def hardest_ids(rows: list[tuple[str, float]], fraction: float) -> set[str]:
    """The source ids of the ceil(fraction x rows) highest-loss rows (ties: first in the file)."""
    ranked = sorted(range(len(rows)), key=lambda i: -rows[i][1])  # stable: ties keep file order
    return {rows[i][0] for i in ranked[:max(1, math.ceil(fraction * len(rows)))]}


def check_ids(path: str, ids: set[str], data_dir: str, dataset_ids: set[str]) -> None:
    """Every id of the losses file must be a record of the dataset.

    Raises:
        DatasetError: some are not (a losses file of another dataset, or a rebuilt one).
    """
    unknown = sorted(ids - dataset_ids)
    if unknown:
        raise DatasetError(f"--hard-examples {path}: {len(unknown)} of {len(ids)} source ids are not in {data_dir} "
                           f"(first: {unknown[0]!r}); was it written for another dataset?")


def prepare(cfg: dict, chief: bool = True):
    """The train set's records_fn for --hard-examples (None without it), after checking the file.

    Prints one line saying how many training records are hard and how often they are drawn.

    Raises:
        UsageError: a bad losses file (read_losses).
        DatasetError: ids not in the dataset, or no hard (or no other) record in the training split.
    """
    path = cfg.get("hard_examples")
    if not path:
        return None
    rows = read_losses(path)
    hard = hardest_ids(rows, cfg["hard_fraction"])
    manifest = load_manifest(cfg["data"])
    train_ids = source_ids([s["path"] for s in select_shards(manifest, cfg["data"], "train", cfg["fold"])])
    other = [s["path"] for split in manifest.get("splits", {}) for s in select_shards(manifest, cfg["data"], split)
             if split != "train" or cfg["fold"] is not None]
    check_ids(path, {r[0] for r in rows}, cfg["data"], set(train_ids) | set(source_ids(other)))
    n_hard = sum(i in hard for i in train_ids)
    n_rest = len(train_ids) - n_hard
    if n_hard == 0 or n_rest == 0:
        what = "hard" if n_hard == 0 else "other (not hard)"
        raise DatasetError(f"--hard-examples {path}: no {what} record in the training split of {cfg['data']} "
                           f"(change --hard-fraction, or write the losses with --split train)")
    p = hard_probability(n_hard, n_rest, cfg["hard_weight"])
    if chief:
        print(f"hard examples: {n_hard} of {len(train_ids)} training records (the top {cfg['hard_fraction']:.0%} "
              f"of {len(rows)} losses in {path}) drawn {cfg['hard_weight']:g}x as often: {p:.0%} of each batch")
    return mixer(hard, p, seed=cfg["seed"])
