"""Streaming prediction: samples -> eval decode -> TTA views -> batches -> ensemble average -> Rows.

  predict_stream(members, specs)  tf.data: a Python generator of encoded bytes -> eval_image at
                                  EACH member's size (the training pipeline's eval function, not
                                  a copy) -> TTA views -> batch -> prefetch; yields one Row per
                                  image, ensemble-averaged; unreadable images become skips
  group_rows(rows)                consecutive rows of one product (BSON) averaged into one
  fill_missing_products(rows)     a row for every product, also one whose photos all failed

Memory does not grow with the number of images: bytes are read in the generator,
at most a few batches are in flight, and rows go on to the CSV one by one. Members
are called through the predictor contract of utils.detect.models, so any runtime
that honours it can be averaged in.

TensorFlow is imported inside the functions: `detect.py --help` and flag errors
answer before it loads.
"""
from __future__ import annotations

import collections
import sys
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from utils.detect.inputs import InputSpec, Sample
from utils.detect.models import Member
from utils.errors import UsageError, first_line

# TTA views in the order they are added: N views = the first N of these.
VIEWS = ("identity", "hflip", "zoom", "zoom_hflip", "crop_tl", "crop_br", "crop_tr", "crop_bl",
         "crop_tl_hflip", "crop_br_hflip", "crop_tr_hflip", "crop_bl_hflip")
CROP = 0.875    # crops/zooms keep this share of each side (the usual 224/256)
REASON_LIMIT = 200  # characters of an error kept as a skip reason


def tta_views(img, n: int):
    """[h, w, C] float image -> [n, h, w, C]: identity, flip, then zooms and corner crops.

    Crops are cut from the eval-preprocessed image and resized back, so every
    view has the member's input size and the identity view equals eval_image.
    """
    import tensorflow as tf  # lazy: see the module docstring

    if not 1 <= n <= len(VIEWS):
        raise UsageError(f"--tta must be 1..{len(VIEWS)}, got {n}")
    h, w = int(img.shape[0]), int(img.shape[1])
    ch, cw = max(1, round(h * CROP)), max(1, round(w * CROP))
    corners = {"tl": (0, 0), "tr": (0, w - cw), "bl": (h - ch, 0), "br": (h - ch, w - cw),
               "zoom": ((h - ch) // 2, (w - cw) // 2)}
    out = []
    for name in VIEWS[:n]:
        v = img
        base = name.replace("_hflip", "").replace("crop_", "")
        if base in corners:
            y, x = corners[base]
            v = tf.image.resize(img[y:y + ch, x:x + cw, :], (h, w), method="bilinear")
        if name.endswith("hflip"):
            v = v[:, ::-1, :]
        out.append(v)
    return tf.stack(out)


@dataclass
class Row:
    """One output row: an image's (or, after group_rows, a product's) probabilities."""
    id: str
    probs: np.ndarray                 # [K]
    label: tuple[int, ...] | None
    group: str | None
    views: int = 1                    # images averaged into this row
    end: int = 0                      # samples of the input stream consumed up to this row (--resume's position)


class _Failure:
    """Carries an exception out of the generator thread (tf.data would otherwise
    either stop silently or wrap it in an unreadable error)."""
    error: BaseException | None = None


def _view_batches(gen, keys: list[tuple], *, planes: int, tta: int, batch_size: int):
    """(index, planes) elements -> batches of (index [B], one [B, V, h, w, C] tensor per key)."""
    import tensorflow as tf  # lazy: see the module docstring

    from utils.input.image_ops import eval_image

    def preprocess(index, encoded):
        views = tuple(tta_views(eval_image(encoded, size, channels, planes), tta) for size, channels in keys)
        return index, views

    ds = tf.data.Dataset.from_generator(
        gen, output_signature=(tf.TensorSpec([], tf.int64), tf.TensorSpec([None], tf.string)))
    return (ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
              .ignore_errors()
              .batch(batch_size)
              .prefetch(tf.data.AUTOTUNE))


def _ensemble_probs(members: list[Member], views, key_pos: dict, tta: int) -> np.ndarray:
    """Each member on its own views, TTA-averaged, weighted and summed -> [B, K]."""
    import tensorflow as tf  # lazy: see the module docstring

    probs = None
    for m in members:
        x = views[key_pos[m.key]]                              # [B, V, h, w, C]
        b = tf.shape(x)[0]
        p = m.predictor(tf.reshape(x, tf.concat([[-1], tf.shape(x)[2:]], 0)))
        p = tf.reduce_mean(tf.reshape(p, [b, tta, -1]), axis=1) * m.weight
        probs = p if probs is None else probs + p
    probs = probs.numpy()
    k = len(members[0].class_names)
    if probs.shape[1] != k:
        raise UsageError(f"the model outputs {probs.shape[1]} values per image but its NAME.json lists {k} classes")
    return probs


def predict_stream(members: list[Member], specs: list[InputSpec], *, tta: int = 1, batch_size: int = 32,
                   skipped: list | None = None, progress: bool = True, start: int = 0,
                   skip_positions: list | None = None) -> Iterator[Row]:
    """Yield one ensemble-averaged Row per readable image, in input order.

    Unreadable inputs are appended to `skipped` as (id, reason) and the run goes on:
    a file that cannot be read is caught in the generator; a file that does not
    decode fails inside tf.data's map, `ignore_errors` drops that element, and the
    gap in the running sample index tells us which one it was.

    Args:
        start: pass over the first `start` samples of the inputs without loading
            them (a resumed run: Row.end of the last row written).
        skip_positions: gets the stream position of each skip appended after the
            specs' own, parallel to `skipped`, so a checkpoint keeps exactly those before a row.
    """
    from tqdm import tqdm  # lazy: with TensorFlow, only when predicting

    skipped = skipped if skipped is not None else []
    for s in specs:
        skipped.extend(s.skipped)
    planes = members[0].planes
    keys = list(dict.fromkeys(m.key for m in members))     # distinct (size, channels), in order
    pending: collections.deque = collections.deque()
    failure = _Failure()

    def skip(pos: int, sid: str, reason: str) -> None:
        if skip_positions is not None:   # first: a reader sizing by len(skipped) finds every position
            skip_positions.append(pos)
        skipped.append((sid, reason))

    def gen():
        index = 0
        pos = -1
        try:
            for spec in specs:
                for s in spec.samples():
                    pos += 1
                    if pos < start:
                        continue              # written by the run being resumed
                    try:
                        encoded = s.load()
                    except Exception as e:   # unreadable input: report it, keep going
                        skip(pos, s.id, first_line(e, REASON_LIMIT))
                        continue
                    if len(encoded) != planes:
                        skip(pos, s.id, f"{len(encoded)} planes, the model reads {planes}")
                        continue
                    pending.append((index, s, pos))
                    yield index, np.array(encoded, dtype=object)
                    index += 1
        except BaseException as e:  # noqa: BLE001  re-raised in the consumer
            failure.error = e

    ds = _view_batches(gen, keys, planes=planes, tta=tta, batch_size=batch_size)
    total = None if any(s.count is None for s in specs) else sum(s.count for s in specs)
    bar = tqdm(total=total, unit="img", desc="predict", disable=not progress, smoothing=0.1)
    key_pos = {k: i for i, k in enumerate(keys)}
    try:
        for idx, views in ds:
            probs = _ensemble_probs(members, views, key_pos, tta)
            for i, row_index in enumerate(idx.numpy()):
                while pending and pending[0][0] < row_index:
                    _, s, pos = pending.popleft()
                    skip(pos, s.id, _decode_reason(s))
                _, s, pos = pending.popleft()
                # a photo's own id; group_rows names the product
                yield Row(s.id, probs[i], s.label, s.group, end=pos + 1)
            bar.update(len(probs))
        while pending:
            _, s, pos = pending.popleft()
            skip(pos, s.id, _decode_reason(s))
    finally:
        bar.close()
    if failure.error is not None:
        raise failure.error


def _decode_reason(s: Sample) -> str:
    """Why an image failed in the pipeline: decode it again eagerly to get TensorFlow's message."""
    if not s.rereadable:
        return "cannot decode image"
    import tensorflow as tf  # lazy: see the module docstring

    try:
        for p in s.load():
            tf.io.decode_image(p, channels=0, expand_animations=False)
    except Exception as e:  # noqa: BLE001  any decode error is the reason we want
        return f"cannot decode image: {first_line(e, REASON_LIMIT)}"
    return "cannot decode image"


def group_rows(rows: Iterator[Row]) -> Iterator[Row]:
    """Average consecutive rows of the same group (a product's photos) into one row named
    after the group; others pass through."""
    acc: Row | None = None
    for r in rows:
        if acc is not None and r.group is not None and r.group == acc.group:
            acc.probs = acc.probs + r.probs
            acc.views += 1
            acc.end = r.end
            continue
        if acc is not None:
            # the samples between (failed photos, products with none readable) are settled
            # once the next row exists: a resume goes on from r's own sample
            acc.end = max(acc.end, r.end - 1)
            yield _finish(acc)
        acc = Row(r.id if r.group is None else r.group, r.probs.astype(np.float64), r.label, r.group, end=r.end)
    if acc is not None:
        yield _finish(acc)


def _finish(r: Row) -> Row:
    r.probs = (r.probs / r.views).astype(np.float32)
    return r


def fill_missing_products(rows: Iterator[Row], skipped: list, prior: dict | None = None) -> Iterator[Row]:
    """A row for EVERY product: Kaggle rejects a submission that lacks any.

    A product none of whose photos could be read gets the mean of all other
    products' predictions, i.e. the empirical prior, which beats an arbitrary
    class; its photos stay listed in the skipped CSV. `skipped` is complete once
    `rows` is exhausted (predict_stream fills it as it goes). Photo ids are
    "PRODUCT#i"; a product without photos is skipped as "PRODUCT".

    Memory stays flat over millions of products: only products that have a skip
    are remembered (a product's skips are listed before its row arrives).

    Args:
        prior: the running state {"sum": [K] list or None, "n": rows, "seen": products
            with a skip that got a row}, updated in place, so a resumed run goes on
            from a checkpoint's copy of it.
    """
    prior = prior if prior is not None else {}
    prior.setdefault("sum", None)
    prior.setdefault("n", 0)
    prior.setdefault("seen", [])
    total = None if prior["sum"] is None else np.asarray(prior["sum"], np.float64)
    seen: set[str] = set(prior["seen"])
    skipped_pids: set[str] = set()
    listed = 0                                        # skipped[:listed] are in skipped_pids
    for r in rows:
        for sid, _ in skipped[listed:]:
            skipped_pids.add(sid.split("#")[0])
        listed = len(skipped)
        pid = r.group or r.id
        if pid in skipped_pids and pid not in seen:
            seen.add(pid)
            prior["seen"].append(pid)
        total = r.probs.astype(np.float64) if total is None else total + r.probs
        prior["sum"], prior["n"], prior["last"] = total, prior["n"] + 1, pid
        yield r
    n = prior["n"]
    seen.add(prior.get("last"))     # its trailing failed photos may come after a resume's start
    missing = [pid for pid in dict.fromkeys(sid.split("#")[0] for sid, _ in skipped) if pid not in seen]
    if missing and n:
        mean = (total / n).astype(np.float32)
        print(f"note: {len(missing)} product(s) have no readable photo; their rows get the mean "
              f"prediction of the other {n} (first: {missing[0]})", file=sys.stderr)
        for pid in missing:
            yield Row(pid, mean.copy(), None, pid)
