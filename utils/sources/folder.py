"""Folder per class: `root/<class>/**`, or `root/{train,val}/<class>/**` + `root/test/**`.

Layouts (decided once, from the names of root's sub-folders):
  class folders   root/<class>/**                      labels from the folder, split left to the writer
  split folders   root/train/<class>/**, root/val/<class>/**, root/test/**
                  (only train/val/test below root)     kept as our splits; test is unlabeled
  flat folder     root/*.jpg (no sub-folders)          unlabeled test split

Every non-hidden file found becomes an Item or a Skip, so the writer's
`records + skipped == inputs` holds over the files on disk. Hidden files and
folders (".DS_Store", ".ipynb_checkpoints") are not inputs. Order is sorted,
so two runs see the same sequence.

The file walk and the extension list are shared with table.py and
multichannel.py.
"""
from __future__ import annotations

import os
from typing import Iterator

from utils.sources.base import SPLITS, Item, Skip, Source, SourceError, file_loader

IMAGE_EXTENSIONS = frozenset((".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"))


def is_hidden(name: str) -> bool:
    return name.startswith(".")


def extension_problem(name: str) -> str | None:
    """The skip reason for a file that is not an image by its extension, else None."""
    ext = os.path.splitext(name)[1].lower()
    if ext in IMAGE_EXTENSIONS:
        return None
    return f"unsupported file type: {ext or '(no extension)'}"


def walk_files(top: str, exclude: frozenset[str] = frozenset()) -> list[str]:
    """Non-hidden files under `top`, as sorted absolute paths (deterministic order).

    `exclude`: real paths to leave out (a labels CSV kept inside the image folder).
    """
    # realpath/relpath per file cost ~35 us each: 70% of pass-through writing time
    # on small JPEGs. Only names that could be an excluded file are resolved, and
    # os.walk's paths all start with `top` + sep, so the relative key is a slice.
    exclude_names = {os.path.basename(p) for p in exclude}
    found = []
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = sorted(d for d in dirnames if not is_hidden(d))
        for name in filenames:
            if is_hidden(name):
                continue
            path = os.path.join(dirpath, name)
            if name in exclude_names and os.path.realpath(path) in exclude:
                continue
            found.append(path)
    return sorted(found, key=lambda p: rel_key(p, top))


def rel_key(path: str, root: str) -> str:
    prefix = os.path.join(root, "")
    rel = path[len(prefix):] if path.startswith(prefix) else os.path.relpath(path, root)
    return rel.replace(os.sep, "/") if os.sep != "/" else rel


def stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def require_dir(path: str) -> None:
    if not os.path.exists(path):
        raise SourceError(f"input not found: {path}")
    if not os.path.isdir(path):
        raise SourceError(f"not a folder: {path}")


def _subdirs(path: str) -> list[str]:
    return sorted(e.name for e in os.scandir(path) if e.is_dir() and not is_hidden(e.name))


class FolderSource(Source):
    kind = "folder"

    def __init__(self, root: str) -> None:
        super().__init__()
        require_dir(root)
        self.root = root
        subdirs = _subdirs(root)
        if not subdirs:
            self.layout = "flat"
            self.classes = None
        elif set(subdirs) <= set(SPLITS):
            # A class literally named "test" next to real classes keeps the
            # class layout: only train/val/test together mean splits.
            self.layout = "splits"
            names = set()
            for split in ("train", "val"):
                if split in subdirs:
                    names.update(_subdirs(os.path.join(root, split)))
            self.classes = sorted(names)
        else:
            self.layout = "classes"
            self.classes = subdirs
        self.args = {"root": root, "layout": self.layout}

    def items(self) -> Iterator[Item | Skip]:
        for path in walk_files(self.root):
            yield self._one(path)

    def _one(self, path: str) -> Item | Skip:
        key = rel_key(path, self.root)
        problem = extension_problem(path)
        if problem:
            return Skip(key, problem)
        parts = key.split("/")
        if self.layout == "flat":
            return self._item(path, key, (), "test")
        if self.layout == "classes":
            if len(parts) < 2:
                return Skip(key, "image outside class folders")
            return self._item(path, key, (parts[0],), None)
        # splits
        if len(parts) < 2:
            return Skip(key, "image outside split folders")
        split = parts[0]
        if split == "test":
            return self._item(path, key, (), "test")
        if len(parts) < 3:
            return Skip(key, "image outside class folders")
        return self._item(path, key, (parts[1],), split)

    @staticmethod
    def _item(path: str, key: str, labels: tuple[str, ...], split: str | None) -> Item:
        return Item(key=key, source_id=stem(path), labels=labels, load=file_loader(path),
                    size=os.path.getsize(path), split=split)
