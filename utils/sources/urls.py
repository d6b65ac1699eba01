"""Source 5: a list of image URLs with multi-hot labels (JD fashion format).

Each line is `<image_id>,<image_url>,<l0>,...,<l{K-1}>` with a 0/1 per label
and no header; a test list has only `<image_id>,<image_url>`. The number of
label columns fixes K (the most common column count wins, so one malformed
line cannot change it).

An all-zero label row is a labelled sample with no positive class
(labels=(), split None): it belongs in train/val as a negative example for
every label, unlike a test-list line (labels=(), split "test").

`items()` first downloads every URL into the cache folder (utils/download.py:
concurrent, retried, size-capped, cached across reruns), then yields Items
that read the cached files; failed downloads become Skips with the reason.
"""
from __future__ import annotations

import os
from collections import Counter
from typing import Iterator, NamedTuple

from utils.sources.base import Item, Skip, Source, SourceError, file_loader
from utils.sources.table import read_csv_rows


class Row(NamedTuple):
    line: int
    image_id: str
    url: str
    labels: tuple[str, ...]
    split: str | None


def read_label_names(value: str) -> list[str]:
    """`--label-names` value: a file (one name per line, or one comma-separated
    line) when such a file exists, else the names separated by commas."""
    if os.path.isfile(value):
        try:
            with open(value, encoding="utf-8-sig") as f:
                lines = [ln.strip() for ln in f if ln.strip()]
        except UnicodeDecodeError:
            raise SourceError(f"--label-names {value}: not a UTF-8 text file") from None
        if len(lines) == 1:
            lines = lines[0].split(",")
    else:
        lines = value.split(",")
    names = [n.strip() for n in lines]
    if not names or any(not n for n in names):
        raise SourceError(f"--label-names: empty name in {value!r}")
    if len(set(names)) != len(names):
        raise SourceError(f"--label-names: duplicate names in {value!r}")
    return names


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
        elif any(v not in ("0", "1") for v in flags):
            bad = next(v for v in flags if v not in ("0", "1"))
            out.append(Skip(key, f"label value not 0/1: {bad!r}"))
        elif image_id in seen:
            out.append(Skip(key, f"duplicate image id: {image_id}"))
        else:
            seen.add(image_id)
            labels = tuple(names[i] for i, v in enumerate(flags) if v == "1")
            out.append(Row(n, image_id, url, labels, "test" if k == 0 else None))
    return out


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
        names = label_names if label_names is not None else [f"l{i}" for i in range(k)]
        self.classes = names or None
        self.num_labels = k
        self._entries = _parse(lines, k, names)
        self.args = {"list": list_path, "label_names": label_names, "cache_dir": cache_dir,
                     **self.fetch_opts}
        self.fetch_opts["progress"] = progress

    def items(self) -> Iterator[Item | Skip]:
        from utils.sources.download import fetch_all

        rows = [e for e in self._entries if isinstance(e, Row)]
        fetched = fetch_all([(r.image_id, r.url) for r in rows], self.cache_dir, **self.fetch_opts)
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
