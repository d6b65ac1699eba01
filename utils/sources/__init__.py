"""Input sources: which kind a SOURCE path is, and building the right Source for it.

Source modules are imported lazily so that `--help` and kind detection stay
fast and a missing optional dependency only matters for the kind that needs it.
"""
from __future__ import annotations

import csv
import os
import re

from utils.errors import SourceError, UsageError

KINDS = ("folder", "csv", "multichannel", "bson", "urls")
_URL = re.compile(r"^https?://", re.IGNORECASE)


def _first_data_line(path: str) -> list[str] | None:
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
        for fields in csv.reader(f):
            if fields and any(x.strip() for x in fields):
                return [x.strip() for x in fields]
    return None


def _require_exists(path: str) -> None:
    if not os.path.exists(path):
        raise SourceError(f"input not found: {path}")


def detect_kind(path: str) -> str:
    """The kind of SOURCE `path` is, from its type and first line.

    Returns:
        'folder' for a directory, 'bson' for a .bson file, 'urls' for a CSV/text
        list whose first data line has an http(s) URL in column 2.
    Raises:
        SourceError: `path` does not exist.
        UsageError: none of these (a labels CSV given as SOURCE, another file type).
    """
    _require_exists(path)
    if os.path.isdir(path):
        return "folder"
    ext = os.path.splitext(path)[1].lower()
    if ext == ".bson":
        return "bson"
    if ext in (".csv", ".txt", ".tsv", ".lst", ""):
        fields = _first_data_line(path)
        if fields and len(fields) >= 2 and _URL.match(fields[1]):
            return "urls"
        raise UsageError(f"{path} is not a URL list (no http(s) URL in column 2 of its first line); "
                         "for images + a labels CSV pass the image folder as SOURCE and --labels CSV")
    raise UsageError(f"cannot tell what kind of source {path} is; pass --kind {'|'.join(KINDS)}")


def _opt(args, name, default=None):
    return getattr(args, name, default) if args is not None else default


def open_source(kind: str | None, path: str, args=None):
    """Build the Source for SOURCE `path`.

    Args:
        kind: one of KINDS, or None to detect it. A folder with --channels is
            multichannel, with --labels csv.
        args: the CLI namespace (labels, label_names, label_mode, channels,
            categories, out, concurrency, timeout, no_progress); None for the defaults.
    Raises:
        SourceError: a missing input (and what the source itself refuses).
        UsageError: a kind that does not fit the path or lacks its flags.
    """
    if kind is None:
        kind = detect_kind(path)
    _require_exists(path)
    labels, channels = _opt(args, "labels"), _opt(args, "channels")
    label_names = _opt(args, "label_names")
    if kind == "folder" and channels:
        kind = "multichannel"
    elif kind == "folder" and labels:
        kind = "csv"
    if kind not in KINDS:
        raise UsageError(f"unknown --kind {kind!r}; choose one of {', '.join(KINDS)}")
    if kind in ("folder", "csv", "multichannel") and not os.path.isdir(path):
        raise UsageError(f"--kind {kind} needs an image folder as SOURCE, got the file {path}")

    if kind == "folder":
        from utils.sources.folder import FolderSource

        return FolderSource(path)
    if kind == "csv":
        if not labels:
            raise UsageError("--kind csv needs --labels CSV (id,label or id,attribute_ids)")
        from utils.sources.table import TableSource

        return TableSource(path, labels, label_names, multi_label=_multi_label(args))
    if kind == "multichannel":
        if isinstance(channels, str):
            channels = [c.strip() for c in channels.split(",") if c.strip()]
        if not channels:
            raise UsageError("--kind multichannel needs --channels w1,w2,... (file-name suffixes, in order)")
        from utils.sources.multichannel import MultiChannelSource

        return MultiChannelSource(path, list(channels), labels, label_names, multi_label=_multi_label(args))
    if kind == "bson":
        from utils.sources.bsondump import BsonSource

        return BsonSource(path, _opt(args, "categories"))
    # urls
    from utils.sources.table import read_label_names
    from utils.sources.urls import UrlListSource

    out = _opt(args, "out") or "."
    names = read_label_names(label_names) if label_names else None
    kw = {}
    if _opt(args, "concurrency") is not None:
        kw["concurrency"] = int(args.concurrency)
    if _opt(args, "timeout") is not None:
        kw["timeout"] = float(args.timeout)
    if _opt(args, "no_progress"):
        kw["progress"] = False      # --no-progress hushes the download bar too
    return UrlListSource(path, os.path.join(out, "cache"), names, **kw)


def _multi_label(args) -> bool | None:
    """--label-mode auto|single|multi -> None (detect) / False / True."""
    mode = _opt(args, "label_mode") or "auto"
    if mode not in ("auto", "single", "multi"):
        raise UsageError(f"--label-mode must be auto, single or multi, got {mode!r}")
    return None if mode == "auto" else mode == "multi"
