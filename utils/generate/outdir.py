"""The output folder's state: finished, resumable, or fresh; a different dataset is never overwritten.

Inside `--out`, an unfinished run keeps `.work/`:
  state.json        the run's signature (source + arguments) and plan hash
  <shard>.json      a shard's metadata, written AFTER the shard's rename, so
                    "shard done" == "sidecar exists" (and its sha256 holds)
A finished dataset has manifest.json (written last) and no `.work/`.
`.lock` (utils.files.exclusive_lock) stays in the folder: one writer at a time;
it is no dataset file, so nothing here lists, removes or checks it.

A rerun with the same signature resumes: it keeps every shard whose sidecar
and sha256 agree and writes the rest; the plan is deterministic, so the result
is exactly a clean run's. Knobs that change how, not what, is written
(RUN_ONLY) do not count in the signature.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from typing import Callable, ContextManager

from utils.dataset.manifest import LABELS, MANIFEST, SHARD_PATTERN, SKIPPED
from utils.errors import SourceError
from utils.files import TMP_SUFFIX, atomic_write_json, exclusive_lock, file_sha256
from utils.generate.index import Index
from utils.generate.plan import ShardPlan
from utils.sources.base import Source

WORK = ".work"                       # hidden work folder inside out_dir (removed when finished)
LOCK = ".lock"                       # one writer per folder; never removed (see exclusive_lock)
STATE = "state.json"                 # signature + plan hash of the unfinished run
SHARD_RE = re.compile(rf"^{SHARD_PATTERN}({re.escape(TMP_SUFFIX)})?$")
RUN_ONLY = ("concurrency", "timeout", "retries")   # change how, not what, is written
_FILES = (MANIFEST, LABELS, SKIPPED)


def lock_out_dir(out_dir: str) -> ContextManager[None]:
    """Make `out_dir` if missing and hold its lock while the block runs: one writer per dataset.

    Taken before anything else in the folder is read or written, so a second run
    changes nothing (not even .work/state.json) before it is refused.

    Raises:
        SourceError: `out_dir` is a file.
        utils.files.LockedError: another live run holds the lock; its text is the line to print.
    """
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise SourceError(f"--out {out_dir} is a file, not a folder")
    os.makedirs(out_dir, exist_ok=True)
    return exclusive_lock(os.path.join(out_dir, LOCK), os.path.normpath(out_dir))


def signature(source: Source, name: str, opts: dict) -> dict:
    """What the run writes: its name, the source (kind, path, args) and the record-shaping options."""
    a = source.args or {}
    path = getattr(source, "path", None) or a.get("path") or a.get("root") or a.get("images") or a.get("list")
    args = dict(source.args or {})
    args.update(opts)
    sig = {"name": name, "source": {"kind": source.kind, "path": path, "args": args}}
    return json.loads(json.dumps(sig, default=str))   # as it reads back from JSON


def comparable(sig: dict) -> dict:
    """The signature (or a manifest) without knobs that do not change the records."""
    src = dict(sig.get("source") or {})
    src["args"] = {k: v for k, v in (src.get("args") or {}).items() if k not in RUN_ONLY}
    return {"name": sig.get("name"), "source": src}


def plan_hash(sig: dict, index: Index, plan: list[ShardPlan]) -> str:
    """sha256 of the signature, the classes, the skips and every shard's members: the run's identity.

    Each member adds json.dumps([key, source_id, labels]); those texts are
    built here with json's own string encoder and hashed a shard at a time
    (the same bytes in the same order as one json.dumps and update per
    member, which cost ~5.5 us per item: a pass over all items before the
    first one is written).
    """
    h = hashlib.sha256(json.dumps(comparable(sig), sort_keys=True).encode())
    h.update(json.dumps(index.classes).encode())
    h.update(json.dumps(index.skips).encode())
    keys, sids, labels = index.keys, index.source_ids, index.labels
    for s in plan:
        h.update(json.dumps([s.file, s.fold]).encode())
        members = s.members.tolist() if hasattr(s.members, "tolist") else [int(i) for i in s.members]
        for start in range(0, len(members), 65536):   # bounded text per update
            h.update("".join([_member_json(keys[i], sids[i], labels[i])
                              for i in members[start:start + 65536]]).encode())
    return h.hexdigest()


_json_str = json.encoder.encode_basestring_ascii   # what json.dumps uses for a str (ensure_ascii)


def _member_json(key: str, source_id: str, labels: tuple[int, ...]) -> str:
    """json.dumps([key, source_id, labels]) for str, str and a tuple of ints."""
    return f"[{_json_str(key)}, {_json_str(source_id)}, [{', '.join(map(str, labels))}]]"


def _our_files(out_dir: str) -> list[str]:
    ours = (*_FILES, *(f + TMP_SUFFIX for f in _FILES), WORK)
    return [n for n in os.listdir(out_dir) if SHARD_RE.match(n) or n in ours]


def remove_ours(out_dir: str) -> None:
    """Remove every file a run writes (shards, manifest, labels, skipped, .work/); nothing else."""
    for n in _our_files(out_dir):
        p = os.path.join(out_dir, n)
        shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)


def clean_temps(out_dir: str) -> None:
    """Remove the temporary files a killed run left."""
    for n in os.listdir(out_dir):
        if n.endswith(TMP_SUFFIX) and (SHARD_RE.match(n) or n[:-len(TMP_SUFFIX)] in _FILES):
            os.remove(os.path.join(out_dir, n))


def check_out_dir(out_dir: str, sig: dict, overwrite: bool) -> str:
    """What to do with `out_dir`, which exists.

    Returns:
        "done" (the same dataset is finished), "resume" (the same run is
        unfinished) or "fresh" (our files were removed, or there were none).

    Raises:
        SourceError: `out_dir` holds a different dataset and not `overwrite`.
    """
    man_path = os.path.join(out_dir, MANIFEST)
    state_path = os.path.join(out_dir, WORK, STATE)
    what = None
    if os.path.isfile(man_path):
        try:
            with open(man_path) as f:
                man = json.load(f)
            same = comparable(man) == comparable(sig)
        except ValueError:
            same, man = False, {}
        if same and not overwrite:
            return "done"
        src = man.get("source") or {}
        what = f"a different finished dataset ({src.get('kind')} {src.get('path')})" if not same else None
    elif os.path.isfile(state_path):
        try:
            with open(state_path) as f:
                same = comparable(json.load(f).get("signature") or {}) == comparable(sig)
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
    remove_ours(out_dir)
    return "fresh"


def start_run(out_dir: str, sig: dict, phash: str, resume: bool, log: Callable[[str], None]) -> None:
    """Record the run in .work/state.json; a resumed run whose plan changed starts over.

    Args:
        resume: check_out_dir said "resume".
        log: gets one line when resuming or starting over.
    """
    state_path = os.path.join(out_dir, WORK, STATE)
    if resume:
        with open(state_path) as f:
            if json.load(f).get("plan_hash") != phash:
                log(f"the inputs changed since the unfinished run in {out_dir}: starting over")
                remove_ours(out_dir)
            else:
                log(f"resuming the unfinished run in {out_dir}")
    clean_temps(out_dir)
    os.makedirs(os.path.join(out_dir, WORK), exist_ok=True)
    atomic_write_json(state_path, {"signature": sig, "plan_hash": phash})


def finish(out_dir: str) -> None:
    """Remove .work/: the dataset is finished (its manifest.json is written)."""
    shutil.rmtree(os.path.join(out_dir, WORK), ignore_errors=True)


def _sidecar_path(out_dir: str, shard: str) -> str:
    return os.path.join(out_dir, WORK, shard + ".json")


def save_done(out_dir: str, meta: dict) -> None:
    """Mark a shard done: its sidecar, written after the shard's rename."""
    atomic_write_json(_sidecar_path(out_dir, meta["file"]), meta)


def load_done(out_dir: str, plan: list[ShardPlan], dedupe: bool) -> dict[str, dict]:
    """{file: metadata} of the planned shards that are intact; the others are deleted.

    With --dedupe only a prefix of the plan counts, because a shard's duplicate
    decisions depend on every earlier shard.
    """
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
    for s in plan:  # a shard without an intact sidecar is rewritten from scratch
        if s.file not in done:
            for p in (os.path.join(out_dir, s.file), _sidecar_path(out_dir, s.file)):
                if os.path.exists(p):
                    os.remove(p)
    return done
