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

The one file walk and image-extension list of the project live here too:
table.py, multichannel.py and detect's input discovery use them.
"""
from __future__ import annotations

import os
from typing import Iterator

from utils.dataset.manifest import SPLITS
from utils.errors import SourceError
from utils.sources.base import Item, Skip, Source, file_item

IMAGE_EXTENSIONS = frozenset((".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"))


def is_hidden(name: str) -> bool:
    """Dot files and folders (".DS_Store", ".ipynb_checkpoints") are not inputs."""
    return name.startswith(".")


def has_image_extension(name: str) -> bool:
    """True when `name` ends in one of IMAGE_EXTENSIONS (any case)."""
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def extension_problem(name: str) -> str | None:
    """The skip reason for a file that is not an image by its extension, else None."""
    if has_image_extension(name):
        return None
    return f"unsupported file type: {os.path.splitext(name)[1].lower() or '(no extension)'}"


def walk_files(top: str, exclude: frozenset[str] = frozenset()) -> list[str]:
    """Non-hidden files under `top`, as sorted absolute paths (deterministic order).

    Args:
        top: the folder to walk.
        exclude: real paths to leave out (a labels CSV kept inside the image folder).
    Returns:
        The paths, in the order of their `rel_key` (sorted).
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


def walk_inputs(top: str, exclude: frozenset[str] = frozenset()) -> Iterator[tuple[str, str, str | None]]:
    """Every input file under `top` (see walk_files), with its key and extension check.

    Yields:
        (path, key relative to `top` with "/" separators, skip reason or None).
    """
    for path in walk_files(top, exclude):
        yield path, rel_key(path, top), extension_problem(path)


def rel_key(path: str, root: str) -> str:
    """`path` relative to `root`, with "/" separators on every OS (an Item key)."""
    prefix = os.path.join(root, "")
    rel = path[len(prefix):] if path.startswith(prefix) else os.path.relpath(path, root)
    return rel.replace(os.sep, "/") if os.sep != "/" else rel


def stem(path: str) -> str:
    """The file name without folder and extension: "a/00123.jpg" -> "00123"."""
    return os.path.splitext(os.path.basename(path))[0]


def require_dir(path: str) -> None:
    """Stop the run unless `path` is a folder.

    Raises:
        SourceError: "input not found: PATH" or "not a folder: PATH".
    """
    if not os.path.exists(path):
        raise SourceError(f"input not found: {path}")
    if not os.path.isdir(path):
        raise SourceError(f"not a folder: {path}")


def require_file(path: str) -> None:
    """Stop the run unless `path` is a file.

    Raises:
        SourceError: "input not found: PATH".
    """
    if not os.path.isfile(path):
        raise SourceError(f"input not found: {path}")


def _subdirs(path: str) -> list[str]:
    return sorted(e.name for e in os.scandir(path) if e.is_dir() and not is_hidden(e.name))


class FolderSource(Source):
    """One Item per image file under `root`, labelled by its layout (see the module doc).

    Attributes (besides Source's):
        layout: "classes", "splits" or "flat".
    """

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
        for path, key, problem in walk_inputs(self.root):
            yield Skip(key, problem) if problem else self._one(path, key)

    def _one(self, path: str, key: str) -> Item | Skip:
        parts = key.split("/")
        if self.layout == "flat":
            return file_item(key, stem(path), (), path, split="test")
        if self.layout == "classes":
            if len(parts) < 2:
                return Skip(key, "image outside class folders")
            return file_item(key, stem(path), (parts[0],), path)
        # splits
        if len(parts) < 2:
            return Skip(key, "image outside split folders")
        split = parts[0]
        if split == "test":
            return file_item(key, stem(path), (), path, split="test")
        if len(parts) < 3:
            return Skip(key, "image outside class folders")
        return file_item(key, stem(path), (parts[1],), path, split=split)
