"""Source 5: a list of image URLs with multi-hot labels (JD fashion format).

Each line is `<image_id>,<image_url>,<l0>,...,<l{K-1}>` with a 0/1 per label
and no header; a test list has only `<image_id>,<image_url>`. The number of
label columns fixes K (the most common column count wins, so one malformed
line cannot change it).

An all-zero label row is a labelled sample with no positive class
(labels=(), split None): it belongs in train/val as a negative example for
every label, unlike a test-list line (labels=(), split "test").

`items()` first downloads every URL into the cache folder (utils/sources/download.py:
concurrent, retried, size-capped, cached across reruns), then yields Items
that read the cached files; failed downloads become Skips with the reason.
Who downloads is the source's `fetcher` (default: download.fetch_all, in this
process; `--runner beam` puts its workers there, utils.generate.beam).

`read_url_list` is detect.py's reading of the same lines (see there why it is stricter).
"""
from __future__ import annotations

import os
from collections import Counter
from typing import Callable, Iterator, NamedTuple

from utils.sources.base import Item, Skip, Source, SourceError, file_loader
from utils.sources.table import read_csv_rows

LIST_EXTENSIONS = (".txt", ".csv", ".tsv", ".lst")   # what a URL list's file name ends in


class Row(NamedTuple):
    """One well-formed line of a URL list."""
    line: int
    image_id: str
    url: str
    labels: tuple[str, ...] | None    # names of the label columns holding 1; None: not 0/1 columns
    split: str | None                 # "test" for a line without label columns


def default_label_names(k: int) -> list[str]:
    """Names of K label columns when --label-names does not give them: l0..l{K-1}."""
    return [f"l{i}" for i in range(k)]


def _flag_problem(flags: list[str]) -> str | None:
    bad = next((v for v in flags if v not in ("0", "1")), None)
    return None if bad is None else f"label value not 0/1: {bad!r}"


def _flag_labels(flags: list[str], names: list[str]) -> tuple[str, ...]:
    return tuple(names[i] for i, v in enumerate(flags) if v == "1")


def _parse(lines, k: int, names: list[str]) -> list[Row | Skip]:
    """Rows and Skips in file order (every non-blank line becomes one of them)."""
    out: list[Row | Skip] = []
    seen: set[str] = set()
    for n, fields in lines:
        key = f"line {n}"
        if len(fields) != k + 2:
            out.append(Skip(key, f"expected {k + 2} columns, got {len(fields)}"))
            continue
        image_id, url, flags = fields[0], fields[1], fields[2:]
        if not image_id:
            out.append(Skip(key, "empty image id"))
        elif not url:
            out.append(Skip(key, "empty url"))
        elif problem := _flag_problem(flags):
            out.append(Skip(key, problem))
        elif image_id in seen:
            out.append(Skip(key, f"duplicate image id: {image_id}"))
        else:
            seen.add(image_id)
            out.append(Row(n, image_id, url, _flag_labels(flags, names), "test" if k == 0 else None))
    return out


def read_url_list(path: str) -> list[Row]:
    """A URL list as detect.py reads it: `id,url[,0/1 label columns]` lines, a header line allowed.

    Stricter than UrlListSource, which turns a malformed line into a Skip so that a
    dataset build accounts for every line: a prediction list with a line that has no
    URL is not what the user thinks it is, so it stops the run before any download.
    Label columns are kept, named by position as without --label-names (l0, l1, ...);
    a line may have any number of them.

    Raises:
        SourceError: a line (other than a first-line header) without a URL, no lines,
            a missing file or one that is not UTF-8 text.
    """
    rows: list[Row] = []
    for n, fields in read_csv_rows(path):
        if len(fields) < 2 or "://" not in fields[1]:
            if not rows and n == 1:
                continue        # header
            raise SourceError(f"{path}:{n}: expected `id,url`, got {','.join(fields)[:80]!r}")
        flags = fields[2:]
        labels = None if _flag_problem(flags) else _flag_labels(flags, default_label_names(len(flags)))
        rows.append(Row(n, fields[0], fields[1], labels, None if flags else "test"))
    if not rows:
        raise SourceError(f"{path}: no `id,url` lines")
    return rows


class UrlListSource(Source):
    """Multi-label samples from a URL list, downloaded into `cache_dir`.

    label_names: K names for the K label columns (default l0..l{K-1}); they fix
    the class list. A test list (id,url only) yields unlabeled "test" Items.
    """

    kind = "urls"

    def __init__(self, list_path: str, cache_dir: str, label_names: list[str] | None = None,
                 concurrency: int = 16, timeout: float = 10.0, retries: int = 3,
                 max_bytes: int = 20_000_000, progress: bool = True) -> None:
        super().__init__()
        if not os.path.isfile(list_path):
            raise SourceError(f"input not found: {list_path}")
        self.list_path, self.cache_dir = list_path, cache_dir
        self.fetch_opts = dict(concurrency=concurrency, timeout=timeout, retries=retries,
                               max_bytes=max_bytes)
        self.multi_label = True
        lines = read_csv_rows(list_path)
        if not lines:
            raise SourceError(f"{list_path}: empty URL list")
        # K from the most common column count (ties: the larger), so a stray
        # short or long line is reported as malformed instead of redefining K.
        counts = Counter(len(f) for _, f in lines)
        k = max(counts, key=lambda c: (counts[c], c)) - 2
        if k < 0:
            raise SourceError(f"{list_path}: lines need at least id,url")
        if label_names is not None:
            label_names = list(label_names)
            if k and len(label_names) != k:
                raise SourceError(f"--label-names has {len(label_names)} names but "
                                  f"{list_path} has {k} label columns")
        names = label_names if label_names is not None else default_label_names(k)
        self.classes = names or None
        self.num_labels = k
        self._entries = _parse(lines, k, names)
        self.args = {"list": list_path, "label_names": label_names, "cache_dir": cache_dir,
                     **self.fetch_opts}
        self.fetch_opts["progress"] = progress
        # (key, url) pairs, cache_dir, **fetch_opts -> {key: cached file | DownloadError};
        # None: download.fetch_all. Not part of the signature: the files are the same.
        self.fetcher: Callable[..., dict] | None = None

    def items(self) -> Iterator[Item | Skip]:
        from utils.sources.download import fetch_all

        rows = [e for e in self._entries if isinstance(e, Row)]
        fetched = (self.fetcher or fetch_all)([(r.image_id, r.url) for r in rows], self.cache_dir,
                                              **self.fetch_opts)
        for e in self._entries:
            if isinstance(e, Skip):
                yield e
                continue
            res = fetched[e.image_id]
            if isinstance(res, Exception):
                yield Skip(e.image_id, str(res))
            else:
                yield Item(key=e.image_id, source_id=e.image_id, labels=e.labels,
                           load=file_loader(res), size=os.path.getsize(res), split=e.split)
