"""--runner beam on a URL list: the downloads run in Beam's workers, before the plan.

The plan depends on what the downloads gave (a failed URL is a skipped input
and not in the split; the shards are cut by the files' sizes), so the local
run downloads everything while indexing, and so does this, only elsewhere:
UrlListSource.items() calls this module's fetcher, which

  writes the URLs still missing from the cache as parts, .work/fetch-T-NNNNN.urls
  runs a pipeline: the parts, reshuffled over the workers -> each worker
      downloads its part into the cache (utils.sources.download.fetch_into:
      the local downloader's threads, timeouts, retries and checks; safe with
      other workers in the same folder) -> .work/fetch-T-NNNNN.fetched,
      {key: None | the failure's reason}
  reads the results back: {key: cached file | DownloadError}, exactly what
      download.fetch_all gives the local run, so the index, the plan, the
      shards and skipped.csv come out the same.

Then the second pipeline (utils.generate.beam) prepares the cached files.
The workers and this process must see the same cache folder (OUT/cache): one
machine, or a shared mount on a cluster.
"""
from __future__ import annotations

import math
import os
import pickle
import uuid
from typing import Callable

from utils.errors import SourceError, first_line
from utils.generate import remote

PART_URLS = 1000          # most URLs per part: a part is one worker's unit, retried whole on failure
PARTS_PER_WORKER = 4      # at least this many parts per worker, so a slow part does not idle the others


def split_parts(todo: list, workers: int) -> list[list]:
    """(key, url) pairs -> consecutive parts, at least PARTS_PER_WORKER per worker, at most PART_URLS each."""
    if not todo:
        return []
    n = min(len(todo), max(PARTS_PER_WORKER * max(1, workers), math.ceil(len(todo) / PART_URLS)))
    return [todo[i * len(todo) // n:(i + 1) * len(todo) // n] for i in range(n)]   # sizes differ by one at most


def worker_fetcher(writer, work_out: str) -> Callable[..., dict]:
    """A UrlListSource.fetcher that downloads in `writer`'s Beam workers.

    Args:
        writer: the run's BeamShardWriter (its runner, options and log).
        work_out: the folder whose .work/ holds the parts (a local path or a FileSystems URL).

    Returns:
        fetch(items, cache_dir, **download options) -> {key: cached file | DownloadError}.
    """
    def fetch(items: list[tuple[str, str]], cache_dir: str, *, progress: bool = True, **opts) -> dict:
        return fetch_in_workers(writer, work_out, items, cache_dir, **opts)

    return fetch


def fetch_in_workers(writer, work_out: str, items: list[tuple[str, str]], cache_dir: str, **opts) -> dict:
    """download.fetch_all's result, with the downloads done by a Beam pipeline's workers.

    Args:
        writer: the run's BeamShardWriter.
        work_out: the folder whose .work/ holds the parts.
        items: (key, url) pairs.
        cache_dir: the cache folder (shared with the workers).
        **opts: fetch_into's concurrency, timeout, retries, max_bytes, backoff.

    Returns:
        {key: cached file | DownloadError}, in the order of `items`.

    Raises:
        SourceError: the Beam run failed (what it downloaded stays cached).
    """
    import apache_beam as beam

    from utils.sources.download import DownloadError, cache_path, sweep_stale

    os.makedirs(cache_dir, exist_ok=True)
    sweep_stale(cache_dir)       # before any worker starts: nothing of this run is in flight yet
    paths = {key: cache_path(cache_dir, key, url) for key, url in items}
    todo = [(key, url) for key, url in items if not os.path.isfile(paths[key])]
    failed: dict[str, str] = {}
    if todo:
        token = uuid.uuid4().hex[:8]
        parts = split_parts(todo, writer.workers)
        names = [f"fetch-{token}-{i:05d}" for i in range(len(parts))]

        def build(p) -> None:
            # the URLs go to the workers in files, as the shards' plans do (utils.generate.beam)
            for name, part in zip(names, parts):
                remote.write_work(work_out, name + ".urls", pickle.dumps(part, protocol=pickle.HIGHEST_PROTOCOL))
            (p | "parts" >> beam.Create(names) | "spread" >> beam.Reshuffle()
             | "download" >> beam.Map(fetch_part, work_out, cache_dir, opts))

        writer.log(f"beam: {len(todo)} of {len(items)} URL(s) to download in {len(names)} part(s) "
                   f"on {writer.runner_name}")
        try:
            writer.run_pipeline(build, "re-uses the files it downloaded")
            for name in names:
                failed.update({k: why for k, why in _read_result(work_out, name).items() if why is not None})
        finally:
            remote.remove_work(work_out, [n + ext for n in names for ext in (".urls", ".fetched")])
        writer.log(f"beam: downloaded {len(todo) - len(failed)}, {len(failed)} failed")
        missing = next((key for key, _ in todo if key not in failed and not os.path.isfile(paths[key])), None)
        if missing is not None:   # workers with a disk of their own (a cluster without a shared mount)
            raise SourceError(f"the workers downloaded {missing} but {paths[missing]} is not here: the cache "
                              f"({cache_dir}) must be a folder the workers and this process share")
    return {key: DownloadError(failed[key]) if key in failed else paths[key] for key, _ in items}


def _read_result(work_out: str, name: str) -> dict:
    """A part's {key: None | reason}, written by fetch_part.

    Raises:
        SourceError: the runner finished without writing it.
    """
    try:
        return pickle.loads(remote.read_work(work_out, name + ".fetched"))
    except (OSError, ValueError, pickle.UnpicklingError) as e:
        raise SourceError(f"the Beam run ended without the downloads of {name} ({first_line(e, 200)}); "
                          "rerun to resume") from None


def fetch_part(name: str, work_out: str, cache_dir: str, opts: dict) -> str:
    """Download one part's URLs into the cache; runs in a worker. -> the part's name.

    Its results go to .work/NAME.fetched: {key: None (cached) | the reason it failed}.
    """
    from utils.sources.download import fetch_into

    part = pickle.loads(remote.read_work(work_out, name + ".urls"))
    got = fetch_into(part, cache_dir, **opts)
    out = {key: None if isinstance(res, str) else str(res) for key, res in got.items()}
    remote.write_work(work_out, name + ".fetched", pickle.dumps(out, protocol=pickle.HIGHEST_PROTOCOL))
    return name
