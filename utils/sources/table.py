"""Image folder + labels CSV: `id,label` (single-label) or `id,attribute_ids` (multi-label).

The CSV has a header; column 1 is the id (a file stem, or a file name when it
has an image extension), column 2 the label, or space-separated labels for
multi-label data (iMet 2019: `id,attribute_ids` with `attribute_ids = "13 448"`).
Ids are kept as strings: "00123" is not 123.

`label_names` gives the class list:
  * a CSV `attribute_id,attribute_name` (iMet labels.csv): classes are the names
    in id order, and the label ids in the labels CSV map to those names;
  * a text file, one name per line: the index is the line number, and labels in
    the CSV may be names or indices.
Without it the classes are the sorted set of labels seen (the writer's job).
MultiChannelSource reads its labels the same way (LabelledSource).

Inputs are the image files under `images_dir` (recursively) plus the CSV rows
that have no image; each becomes exactly one Item or Skip.
"""
from __future__ import annotations

import csv
import os
from typing import Iterator

from utils.errors import SourceError
from utils.sources.base import Item, Skip, Source, file_item
from utils.sources.folder import has_image_extension, require_dir, require_file, stem, walk_inputs

MULTI_LABEL_COLUMNS = ("attribute_ids", "labels", "tags")


# ----------------------------------------------------------------------------- reading files

def read_csv_rows(path: str) -> list[tuple[int, list[str]]]:
    """The non-blank rows of a CSV; a BOM and CRLF line ends are fine.

    Returns:
        [(line number, stripped fields)].
    Raises:
        SourceError: a missing file, not UTF-8, or bad CSV (one line).
    """
    require_file(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            return [(reader.line_num, [x.strip() for x in r]) for r in reader if any(x.strip() for x in r)]
    except UnicodeDecodeError:
        raise SourceError(f"{path}: not a UTF-8 text CSV") from None
    except csv.Error as e:
        raise SourceError(f"{path}: bad CSV: {e}") from None


def _read_rows(path: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """(header, [(line number, fields)]) of a CSV, blank lines dropped."""
    rows = read_csv_rows(path)
    if not rows:
        raise SourceError(f"{path}: empty CSV (expected a header and rows)")
    return rows[0][1], rows[1:]


def _read_lines(path: str, what: str) -> list[str]:
    """The non-blank lines of a UTF-8 text file, stripped; `what` names it in the error."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            return [line.strip() for line in f if line.strip()]
    except UnicodeDecodeError:
        raise SourceError(f"{what}: not a UTF-8 text file") from None


def _first_repeat(names: list[str]) -> str | None:
    seen = set()
    for n in names:
        if n in seen:
            return n
        seen.add(n)
    return None


def read_label_table(path: str, multi_label: bool | None = None) -> tuple[dict[str, tuple[str, ...]], bool]:
    """Read a labels CSV: `id,label`, or `id,attribute_ids` with space-separated labels.

    Args:
        path: the CSV (with a header).
        multi_label: None (--label-mode auto): True when column 2 is named
            attribute_ids / labels / tags or any value holds several space-separated
            labels. A single-label CSV whose class names contain spaces ("golden
            retriever") needs multi_label=False (--label-mode single) to be read right.
    Returns:
        ({id: labels}, multi_label).
    Raises:
        SourceError: a missing, empty or malformed CSV, or an id given twice.
    """
    header, rows = _read_rows(path)
    if len(header) < 2:
        raise SourceError(f"{path}: expected 2 columns (id,label or id,attribute_ids), header is {','.join(header)!r}")
    if not rows:
        raise SourceError(f"{path}: no rows after the header")
    raw: dict[str, str] = {}
    for line, fields in rows:
        if len(fields) < 2 or not fields[0]:
            raise SourceError(f"{path}:{line}: expected id,label, got {','.join(fields)!r}")
        if fields[0] in raw:
            raise SourceError(f"{path}:{line}: id {fields[0]!r} appears twice")
        raw[fields[0]] = fields[1]
    multi = multi_label
    if multi is None:
        multi = header[1].lower() in MULTI_LABEL_COLUMNS or any(len(v.split()) > 1 for v in raw.values())
    if multi:
        return {k: tuple(v.split()) for k, v in raw.items()}, True
    return {k: ((v.strip(),) if v.strip() else ()) for k, v in raw.items()}, False


def read_label_map(path: str) -> tuple[list[str], dict[str, str]]:
    """Read a label names file (--label-names of the csv and multichannel kinds).

    CSV `id,name` (with header): names ordered by id (numerically when all ids
    are integers); ids and names both map to the name. Anything else: one name
    per line; names and line indices ("0", "1", ...) map to the name.

    Returns:
        (class names in index order, {label as written in a labels CSV: class name}).
    Raises:
        SourceError: a missing or malformed file, no names, a name given twice.
    """
    require_file(path)
    if path.lower().endswith(".csv"):
        header, rows = _read_rows(path)
        if len(header) >= 2:
            pairs = []
            for line, fields in rows:
                if len(fields) < 2 or not fields[0] or not fields[1]:
                    raise SourceError(f"{path}:{line}: expected id,name, got {','.join(fields)!r}")
                pairs.append((fields[0], fields[1]))
            if all(i.lstrip("-").isdigit() for i, _ in pairs):
                pairs.sort(key=lambda p: int(p[0]))
            names = [n for _, n in pairs]
            mapping = {n: n for n in names}
            mapping.update(dict(pairs))      # ids win over names that look like ids
            return _unique(names, path), mapping
        names = [fields[0] for _, fields in rows if fields and fields[0]]
    else:
        names = _read_lines(path, path)
    if not names:
        raise SourceError(f"{path}: no label names")
    mapping = {str(i): n for i, n in enumerate(names)}
    mapping.update({n: n for n in names})    # names win over indices
    return _unique(names, path), mapping


def _unique(names: list[str], path: str) -> list[str]:
    repeat = _first_repeat(names)
    if repeat is not None:
        raise SourceError(f"{path}: label name {repeat!r} appears twice")
    return names


def read_label_names(value: str) -> list[str]:
    """Read the `--label-names` value of a URL list: the names of its K label columns.

    Args:
        value: a file (one name per line, or one comma-separated line) when such
            a file exists, else the names separated by commas.
    Returns:
        The names, in column order.
    Raises:
        SourceError: not UTF-8, an empty name, a name given twice.
    """
    if os.path.isfile(value):
        lines = _read_lines(value, f"--label-names {value}")
        if len(lines) == 1:
            lines = lines[0].split(",")
    else:
        lines = value.split(",")
    names = [n.strip() for n in lines]
    if not names or any(not n for n in names):
        raise SourceError(f"--label-names: empty name in {value!r}")
    if _first_repeat(names) is not None:
        raise SourceError(f"--label-names: duplicate names in {value!r}")
    return names


def map_labels(labels: tuple[str, ...], mapping: dict[str, str] | None) -> tuple[str, ...] | str:
    """Labels -> class names, or the skip reason for the first unknown one."""
    if mapping is None:
        return labels
    out = []
    for label in labels:
        name = mapping.get(label)
        if name is None:
            return f"label not in label list: {label}"
        out.append(name)
    return tuple(out)


# ----------------------------------------------------------------------------- sources

class LabelledSource(Source):
    """A source labelled by a labels CSV (read_label_table), named by an optional label names file.

    Attributes (besides Source's):
        table: {id: labels as written} from the labels CSV; None without one.
        mapping: {label as written: class name} from the label names file; None without one.
    """

    def __init__(self, labels_csv: str | None, label_names: str | None, multi_label: bool | None) -> None:
        super().__init__()
        self.table: dict[str, tuple[str, ...]] | None = None
        self.mapping: dict[str, str] | None = None
        if labels_csv:
            self.table, self.multi_label = read_label_table(labels_csv, multi_label)
        if label_names:
            self.classes, self.mapping = read_label_map(label_names)
        # both files may sit inside the image folder; they are not inputs
        self._exclude = frozenset(os.path.realpath(p) for p in (labels_csv, label_names) if p)

    def class_names(self, row: str) -> tuple[str, ...] | str:
        """The class names of labels CSV row `row`, or the skip reason."""
        labels = self.table[row]
        if not labels and not self.multi_label:
            return "empty label"
        return map_labels(labels, self.mapping)


class TableSource(LabelledSource):
    """One Item per image under `images_dir` that has a row in `labels_csv` (see the module doc)."""

    kind = "csv"

    def __init__(self, images_dir: str, labels_csv: str, label_names: str | None = None,
                 multi_label: bool | None = None) -> None:
        require_dir(images_dir)
        super().__init__(labels_csv, label_names, multi_label)
        self.images_dir = images_dir
        self.labels_csv = labels_csv
        self.args = {"images": images_dir, "labels": labels_csv, "label_names": label_names,
                     "multi_label": self.multi_label}

    def items(self) -> Iterator[Item | Skip]:
        files = list(walk_inputs(self.images_dir, self._exclude))
        by_stem: dict[str, list[str]] = {}
        by_name: dict[str, list[str]] = {}
        for path, _, problem in files:
            if problem is None:
                by_stem.setdefault(stem(path), []).append(path)
                by_name.setdefault(os.path.basename(path), []).append(path)

        matched: dict[str, str] = {}     # path -> CSV id
        for sid in self.table:
            paths = (by_name if has_image_extension(sid) else by_stem).get(sid)
            if not paths:
                yield Skip(sid, "no image for CSV row")
                continue
            matched[paths[0]] = sid      # sorted order: the first one; the others are reported below

        for path, key, problem in files:
            if problem:
                yield Skip(key, problem)
                continue
            sid = matched.get(path)
            if sid is None:
                dup = stem(path) in self.table or os.path.basename(path) in self.table
                yield Skip(key, "another image has the same id" if dup else "no CSV row for image")
                continue
            named = self.class_names(sid)
            yield Skip(key, named) if isinstance(named, str) else file_item(key, sid, named, path)
