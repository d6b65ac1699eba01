"""The one progress bar of index, write and verify (tqdm on stderr)."""
from __future__ import annotations

from tqdm import tqdm


class _Bar(tqdm):
    """tqdm without its monitor thread.

    tqdm starts a monitor thread with the first bar of a process, even a
    disabled one, and keeps it while any bar object lives. The resize pool
    forks its workers only while no other thread runs (utils.generate.pool),
    so a second build in the same process (tests, benches, a notebook) would
    fall back to the slower forkserver start. The monitor only refreshes a
    bar that has not been updated for a long while, which cannot happen here.
    """

    monitor_interval = 0


def progress_bar(progress: bool, **kw) -> tqdm:
    """A tqdm bar that resizes with the terminal; `progress=False` turns it off.

    Args:
        progress: show the bar.
        **kw: passed to tqdm (desc, total, unit, ...).
    """
    return _Bar(disable=not progress, dynamic_ncols=True, **kw)


def writing_bar(progress: bool, shards) -> tqdm:
    """The bar of the WRITE phase, over the members of these planned shards."""
    return progress_bar(progress, total=sum(len(s.members) for s in shards), desc="writing", unit=" img",
                        smoothing=0.1)
