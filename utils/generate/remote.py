"""--runner beam with a gs:// / s3:// (any Beam FileSystems) --out: shards and sidecars there, state mirrored here.

The workers write each shard and its sidecar straight into the remote folder
through apache_beam.io.filesystems.FileSystems. The driver's bookkeeping
(utils.generate.outdir: same or different dataset, resume, plan hash; the
writer's labels.json, skipped.csv, manifest.json) is local-path code, so it
runs on a local mirror of the remote folder's small files:

  pull     the remote manifest.json, labels.json, skipped.csv, .work/state.json
           and .work/<shard>.json -> a local staging folder (one per --out)
  run      write_dataset on the staging folder; a shard counts as done when
           its sidecar survived outdir's checks there AND the remote shard has
           the sidecar's byte size (remote_done)
  publish  labels.json, skipped.csv, then manifest.json (last: "finished") ->
           the remote folder; its .work/ is removed.

Beam is imported on use, as in utils.generate.beam.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from typing import Callable

from utils.dataset.manifest import LABELS, MANIFEST, SKIPPED
from utils.errors import SourceError, UsageError, first_line
from utils.files import TMP_SUFFIX, atomic_write_bytes
from utils.generate import outdir
from utils.generate.plan import ShardPlan

_FILES = (MANIFEST, LABELS, SKIPPED)


def import_beam_quietly() -> None:
    """Import Beam without its import-time root-logger warning ("apitools not found ...").

    That logging.warning() on a root logger without handlers would also call
    basicConfig, after which every Beam INFO/ERROR record lands on stderr.
    """
    import logging

    if "apache_beam" in sys.modules:
        return
    root = logging.getLogger()
    guard = None if root.handlers else logging.NullHandler()
    if guard:
        root.addHandler(guard)
    try:
        import apache_beam  # noqa: F401
        try:   # the module that warns, imported later by the DirectRunner, io and FileSystems
            import apache_beam.io.gcp.internal.clients.bigquery  # noqa: F401
        except ImportError:
            pass
    finally:
        if guard:
            root.removeHandler(guard)


def _fs():
    import_beam_quietly()
    from apache_beam.io.filesystems import FileSystems

    return FileSystems


def is_local(out_dir: str) -> bool:
    """A plain path (or file://): the local-path code handles it directly."""
    return _fs().get_scheme(out_dir) in (None, "file")


def check_out(out_dir: str) -> None:
    """Refuse an --out no installed Beam filesystem can write, before any work.

    Raises:
        UsageError: a scheme without a filesystem (gs:// needs apache-beam[gcp], s3:// [aws]).
    """
    if is_local(out_dir):
        return
    try:
        _fs().get_filesystem(out_dir)
    except ValueError as e:
        raise UsageError(f"--out {out_dir}: {first_line(e, 200)}") from None


def staging_dir(out_dir: str) -> str:
    """The local mirror of a remote --out: the same folder for every run of that --out (resume)."""
    tag = hashlib.sha1(out_dir.rstrip("/").encode()).hexdigest()[:16]
    return os.path.join(tempfile.gettempdir(), "imgcls-beam", tag)


def _join(out_dir: str, *parts: str) -> str:
    return _fs().join(out_dir, *parts)


def _copy(src: str, dst: str) -> None:
    """src -> dst through FileSystems, via dst.tmp and a rename (no half file under its final name)."""
    fs = _fs()
    with fs.open(src) as f, fs.create(dst + TMP_SUFFIX) as g:
        while chunk := f.read(8 << 20):
            g.write(chunk)
    fs.rename([dst + TMP_SUFFIX], [dst])


def _list(folder: str) -> list[str]:
    """Full paths of the files directly in `folder` (nothing when it does not exist)."""
    fs = _fs()
    try:
        found = fs.match([_join(folder, "*")])[0].metadata_list
    except Exception:   # BeamIOError: a missing folder matches nothing
        return []
    return [m.path for m in found]


def remove_remote(out_dir: str) -> None:
    """--overwrite: remove every file a run writes in the remote folder (shards, the three files, .work/)."""
    ours = [p for p in _list(out_dir) if outdir.SHARD_RE.match(os.path.basename(p))
            or os.path.basename(p) in _FILES]
    ours += _list(_join(out_dir, outdir.WORK))
    if ours:
        _fs().delete(ours)


def pull(out_dir: str, local: str, overwrite: bool) -> None:
    """Mirror the remote folder's small files into a fresh `local` (its URL cache is kept).

    Raises:
        SourceError: the remote folder has shards but no manifest or run state (and not `overwrite`).
    """
    if overwrite:
        remove_remote(out_dir)
    elif not (_fs().exists(_join(out_dir, MANIFEST)) or _fs().exists(_join(out_dir, outdir.WORK, outdir.STATE))) \
            and any(outdir.SHARD_RE.match(os.path.basename(p)) for p in _list(out_dir)):
        # outdir.check_out_dir's rule, which sees only the mirror
        raise SourceError(f"{out_dir} already holds shards of an unknown build: choose another --out, "
                          "or add --overwrite")
    os.makedirs(local, exist_ok=True)
    outdir.remove_ours(local)
    os.makedirs(os.path.join(local, outdir.WORK))
    names = [(n, n) for n in _FILES]
    names += [(f"{outdir.WORK}/{os.path.basename(p)}", os.path.join(outdir.WORK, os.path.basename(p)))
              for p in _list(_join(out_dir, outdir.WORK)) if p.endswith(".json")]
    for remote_rel, local_rel in names:
        src = _join(out_dir, *remote_rel.split("/"))
        if _fs().exists(src):
            with _fs().open(src) as f, open(os.path.join(local, local_rel), "wb") as g:
                shutil.copyfileobj(f, g)


def remote_done(local: str, out_dir: str, plan: list[ShardPlan], dedupe: bool) -> dict[str, dict]:
    """{file: metadata} of the planned shards finished in the remote folder.

    outdir.load_done's rule, remote: the sidecar (mirrored, and kept by
    outdir.start_run only for an unchanged plan) and the shard's byte size
    agree; with --dedupe only a prefix counts. The sha256 is not re-read from
    the remote store (`verify` does that).
    """
    done = {}
    for s in plan:
        side = os.path.join(local, outdir.WORK, s.file + ".json")
        ok = False
        if os.path.isfile(side):
            with open(side) as f:
                meta = json.load(f)
            try:
                ok = _fs().match([_join(out_dir, s.file)])[0].metadata_list[0].size_in_bytes == meta["bytes"]
            except Exception:   # missing shard, unreadable sidecar
                ok = False
        if ok:
            done[s.file] = meta
        elif dedupe:
            break
    return done


def push_state(local: str, out_dir: str) -> None:
    """The run's .work/state.json (outdir.start_run's, in the mirror) -> remote, so a rerun from anywhere resumes."""
    name = os.path.join(outdir.WORK, outdir.STATE)
    with open(os.path.join(local, name), "rb") as f, _fs().create(_join(out_dir, outdir.WORK, outdir.STATE)) as g:
        g.write(f.read())


def publish(local: str, out_dir: str) -> None:
    """The finished staging folder's labels.json, skipped.csv, then manifest.json -> remote; remote .work/ goes.

    Remote shards the manifest does not list (a plan that changed since a
    killed run: outdir.start_run cleared only the mirror) are removed first.
    """
    with open(os.path.join(local, MANIFEST)) as f:
        listed = {s["file"] for v in json.load(f)["splits"].values() for s in v["shards"]}
    stale = [p for p in _list(out_dir)
             if outdir.SHARD_RE.match(os.path.basename(p)) and os.path.basename(p) not in listed]
    if stale:
        _fs().delete(stale)
    for name in _FILES:   # in this order: manifest.json last
        _copy(os.path.join(local, name), _join(out_dir, name))
    work = _list(_join(out_dir, outdir.WORK))
    if work:
        _fs().delete(work)


def write_remote(out_dir: str, overwrite: bool, run: Callable[[str], dict]) -> dict:
    """Build a dataset into a remote --out: pull, run(staging folder) -> manifest, publish.

    Raises:
        SourceError: the remote folder holds another dataset (from run's checks).
    """
    local = staging_dir(out_dir)
    pull(out_dir, local, overwrite)
    manifest = run(local)
    publish(local, out_dir)
    return manifest


def write_to(out_dir: str, file: str, write: Callable[[str], dict]) -> dict:
    """write(path) -> meta, into out_dir/file: in place locally, else staged and copied through FileSystems."""
    if is_local(out_dir):
        return write(os.path.join(out_dir, file))
    with tempfile.TemporaryDirectory() as tmp:
        meta = write(os.path.join(tmp, file))
        _copy(os.path.join(tmp, file), _join(out_dir, file))
    return meta


def write_work(out_dir: str, name: str, data: bytes) -> None:
    """out_dir/.work/name through name.tmp and a rename, local or remote."""
    if is_local(out_dir):
        os.makedirs(os.path.join(out_dir, outdir.WORK), exist_ok=True)   # a URL list's parts come before the run state
        atomic_write_bytes(os.path.join(out_dir, outdir.WORK, name), data, fsync=False)
        return
    path = _join(out_dir, outdir.WORK, name)
    with _fs().create(path + TMP_SUFFIX) as f:
        f.write(data)
    _fs().rename([path + TMP_SUFFIX], [path])


def read_work(out_dir: str, name: str) -> bytes:
    """out_dir/.work/name, local or remote."""
    with _fs().open(_join(out_dir, outdir.WORK, name)) as f:
        return f.read()


def remove_work(out_dir: str, names: list[str]) -> None:
    """Remove out_dir/.work/<name> for each name that exists, local or remote."""
    paths = [_join(out_dir, outdir.WORK, n) for n in names]
    paths = [p for p in paths if _fs().exists(p)]
    if paths:
        _fs().delete(paths)


def write_sidecar(out_dir: str, meta: dict) -> None:
    """outdir.save_done's sidecar, through FileSystems for a remote folder: after the shard is in place."""
    if is_local(out_dir):
        outdir.save_done(out_dir, meta)
    else:
        write_work(out_dir, meta["file"] + ".json", json.dumps(meta, indent=1).encode())


def read_sidecar(out_dir: str, file: str) -> dict:
    """A shard's metadata from its sidecar (the workers' only channel back to the driver).

    Raises:
        SourceError: the runner finished without writing it.
    """
    try:
        return json.loads(read_work(out_dir, file + ".json"))
    except (OSError, ValueError) as e:
        raise SourceError(f"the Beam run ended without shard {file} ({first_line(e, 200)}); rerun to resume") from None
