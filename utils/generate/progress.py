"""The one progress bar of index, write and verify (tqdm on stderr)."""
from __future__ import annotations

from tqdm import tqdm


def progress_bar(progress: bool, **kw) -> tqdm:
    """A tqdm bar that resizes with the terminal; `progress=False` turns it off.

    Args:
        progress: show the bar.
        **kw: passed to tqdm (desc, total, unit, ...).
    """
    return tqdm(disable=not progress, dynamic_ncols=True, **kw)
