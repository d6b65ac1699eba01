"""Small helpers the file-source tests share (images come from tests.conftest.write_image)."""
import os

from utils.sources.base import Item, Skip


def write_text(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path


def collect(source):
    """(everything items() yields, {key: Item}, {key: skip reason}); keys must be unique."""
    out = list(source.items())
    items = {x.key: x for x in out if isinstance(x, Item)}
    skips = {x.key: x.reason for x in out if isinstance(x, Skip)}
    assert len(items) + len(skips) == len(out), "keys must be unique"
    return out, items, skips


def count_files(root):
    return sum(1 for _, _, fs in os.walk(root) for f in fs if not f.startswith("."))
