"""WRITE on Apache Beam: the local run's plan, executed by a Beam runner (`--runner beam`).

TFDS builds its big datasets this way: one plan, two executors. The driver
indexes and plans exactly as the local run does (utils.generate.writer); Beam
then does the per-item work in its workers and writes each shard as one unit:

  plan  -> .work/<shard>.items (keys, labels, loaders), one element per shard
        -> its items, reshuffled over the workers
        -> prepare_item (read bytes, check, resize / re-encode)
        -> grouped again by shard (GroupByKey), in plan order
        -> write_shard, the local run's own code: the same framing, the same
           bytes, the same sha256 -> the shard's sidecar in .work/

and the driver finishes (labels.json, skipped.csv, manifest.json) from the
sidecars, as the local run does. A shard is renamed into place only once
complete, and its sidecar follows, so a killed run leaves only finished shards
that count, and a rerun writes the others (utils.generate.outdir).

--dedupe needs the first occurrence in plan order of every repeated input: a
side branch groups the workers' sha1s and hands each shard the earlier winners.

A URL list is downloaded by the workers too, in a pipeline of its own before
the index (utils.generate.beam_fetch: the plan needs the downloads' outcome);
`attach` hands the source that fetcher.

Beam is imported on use: `--runner local` must not pay for it.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import pickle
import sys
from typing import Callable, Sequence

from utils.errors import SourceError, UsageError, first_line
from utils.generate import outdir, remote
from utils.generate.index import Index
from utils.generate.plan import ShardPlan
from utils.generate.shards import prepare_item, write_shard


class _Row:
    """What write_shard reads of an Item: its key and source_id (no loader to ship back)."""

    __slots__ = ("key", "source_id")

    def __init__(self, key: str, source_id: str) -> None:
        self.key, self.source_id = key, source_id


def beam_flags(options: Sequence[str], workers: int) -> list[str]:
    """--beam-option KEY=VALUE pairs -> Beam's flags, after the local defaults.

    The DirectRunner defaults come first so that a user's own KEY=VALUE wins
    (argparse keeps the last value); other runners ignore them.

    Args:
        options: "KEY=VALUE" (or a bare "KEY" for a switch), with or without leading dashes.
        workers: --workers, for direct_num_workers.

    Raises:
        UsageError: an entry without a key.
    """
    # The workers' INFO chatter (dozens of lines per worker) would bury our summary.
    flags = ["--direct_running_mode=multi_processing", f"--direct_num_workers={workers}",
             "--default_sdk_harness_log_level=ERROR"]
    for opt in options:
        key, eq, value = opt.lstrip("-").partition("=")
        if not key:
            raise UsageError(f"--beam-option {opt!r}: expected KEY=VALUE, e.g. runner=DataflowRunner")
        flags.append(f"--{key}={value}" if eq else f"--{key}")
    return flags


def pipeline_options(flags: Sequence[str]):
    """Beam's PipelineOptions from flags, refusing what Beam would silently drop or exit on.

    Raises:
        UsageError: a flag no Beam options class knows, or a value Beam rejects.
    """
    from apache_beam.options import pipeline_options as po

    class Parser(po._BeamArgumentParser):   # Beam's own parser, but a bad value raises, not exits
        def error(self, message):
            if not message.startswith("ambiguous option: "):
                raise UsageError(f"--beam-option: {message}")

    parser = Parser(allow_abbrev=False)
    for cls in {str(c): c for c in po.PipelineOptions.__subclasses__()}.values():
        cls._add_argparse_args(parser)
    _, unknown = parser.parse_known_args(list(flags))
    if unknown:
        raise UsageError(f"--beam-option {unknown[0].lstrip('-')}: not a Beam pipeline option "
                         "(see the Beam docs' pipeline options)")
    return po.PipelineOptions(list(flags))


# Runners whose class imports without their extras and fails only once a job is
# submitted, after the index: the module each needs, and what installs it.
_RUNNER_NEEDS = {"DataflowRunner": ("apache_beam.runners.dataflow.internal.apiclient", "apache-beam[gcp]==2.77.0")}


SPEC_SUFFIX = ".items"   # .work/<shard>.items: the shard's plan, for the workers


class BeamShardWriter:
    """writer.write_dataset's shard executor for Beam: `write_dataset(..., shard_writer=BeamShardWriter(...))`.

    Built (and its options and runner checked) before indexing, so a bad option
    costs no index of a big source.
    """

    def __init__(self, options: Sequence[str] = (), workers: int | None = None,
                 log: Callable[[str], None] | None = None, remote_out: str | None = None) -> None:
        """
        Args:
            options: the --beam-option KEY=VALUE entries.
            workers: DirectRunner worker processes (default: the CPU count).
            log: gets one status line (default: stderr).
            remote_out: where the workers write when write_dataset's out_dir is
                the local mirror of a remote --out (utils.generate.remote).

        Raises:
            UsageError: a rejected option, an unknown runner, or one not installed.
        """
        remote.import_beam_quietly()
        from apache_beam.options.pipeline_options import StandardOptions
        from apache_beam.runners.runner import create_runner

        self.options = pipeline_options(beam_flags(options, int(workers or os.cpu_count() or 1)))
        name = self.options.view_as(StandardOptions).runner or "DirectRunner"
        needs = None
        try:
            self.runner = create_runner(name)
            needs = _RUNNER_NEEDS.get(type(self.runner).__name__)
            if needs:
                importlib.import_module(needs[0])
        except ImportError as e:
            extra = f"; pip install '{needs[1]}'" if needs else ""
            raise UsageError(f"--beam-option runner={name}: not installed ({first_line(e, 200)}){extra}") from None
        except (ValueError, RuntimeError) as e:
            raise UsageError(f"--beam-option runner={name}: {first_line(e, 300)}") from None
        self.runner_name, self.remote_out = name, remote_out
        self.workers = int(workers or os.cpu_count() or 1)
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))

    def __call__(self, index: Index, plan: list[ShardPlan], out_dir: str, *, resize: dict, max_pixels: int,
                 dedupe: bool, workers: int, progress: bool) -> dict[str, dict]:
        """Write every planned shard not done yet; -> {file: metadata} of all of them (writer._write_shards' contract).

        Raises:
            SourceError: the Beam run failed (the shards it finished stay done for a rerun).
        """
        if self.remote_out:
            remote.push_state(out_dir, self.remote_out)
            done = remote.remote_done(out_dir, self.remote_out, plan, dedupe)
            out_dir = self.remote_out      # the workers write there; the mirror only keeps the state
        else:
            done = outdir.load_done(out_dir, plan, dedupe)
        todo = [(si, s) for si, s in enumerate(plan) if s.file not in done]
        if todo:
            prior = {}
            for s in plan:
                if s.file in done and dedupe:
                    prior.update(done[s.file].get("hashes") or {})
            self.log(f"beam: {len(todo)} of {len(plan)} shard(s) to write on {self.runner_name}")
            self._run(index, todo, out_dir, resize=resize, max_pixels=max_pixels, dedupe=dedupe, prior=prior,
                      num_classes=len(index.classes))
        for s in plan:
            if s.file not in done:
                done[s.file] = remote.read_sidecar(out_dir, s.file)
        return done

    def _run(self, index: Index, todo: list[tuple[int, ShardPlan]], out_dir: str, *, resize: dict,
             max_pixels: int, dedupe: bool, prior: dict, num_classes: int) -> None:
        import apache_beam as beam

        items, labels = index.items, index.labels

        def build(p) -> None:
            # The plan goes to the workers as one file per shard in .work/ (its keys,
            # labels and loaders), not inside the pipeline: Create's elements are
            # part of the job graph a runner submits (Dataflow caps it near 20 MB;
            # a 12M-photo plan is GBs).
            for si, s in todo:
                spec = (s.file, s.split, s.fold, [(items[i].key, items[i].source_id) for i in s.members],
                        [labels[i] for i in s.members], [items[i].load for i in s.members])
                remote.write_work(out_dir, s.file + SPEC_SUFFIX, pickle.dumps(spec, protocol=pickle.HIGHEST_PROTOCOL))
            prepared = (p | "shards" >> beam.Create([(si, s.file) for si, s in todo])
                        | "items" >> beam.FlatMap(_items_of, out_dir)
                        | "spread" >> beam.Reshuffle()
                        | "prepare" >> beam.Map(_prepare, resize, max_pixels, dedupe))
            winners = None
            if dedupe:
                winners = beam.pvalue.AsDict(
                    prepared | "digests" >> beam.FlatMap(_digest)
                    | "by digest" >> beam.GroupByKey() | "repeats" >> beam.FlatMap(_first_of_repeats))
            (prepared | "by shard" >> beam.Map(_by_shard) | "group" >> beam.GroupByKey()
             | "write" >> beam.Map(write_grouped, out_dir, num_classes, dedupe, prior, winners))

        self.run_pipeline(build, "keeps the shards it finished")

    def run_pipeline(self, build: Callable, keeps: str) -> None:
        """Build a pipeline with `build(p)` and run it to the end on this writer's runner.

        Args:
            build: adds the transforms to the Pipeline it is given.
            keeps: what a rerun keeps of a failed run, for the error line.

        Raises:
            SourceError: the run failed; the line names the worker's error.
        """
        import apache_beam as beam

        # Worker processes import this project by module name: the driver's
        # sys.path (generate_dataset.py puts the checkout first) is not theirs.
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        path = os.environ.get("PYTHONPATH", "")
        if root not in path.split(os.pathsep):
            os.environ["PYTHONPATH"] = root + (os.pathsep + path if path else "")
        try:
            with _beam_logs_quiet(), beam.Pipeline(runner=self.runner, options=self.options) as p:
                build(p)
        except (UsageError, SourceError):
            raise
        except Exception as e:  # a worker's error arrives wrapped in the runner's; its last line names it
            raise SourceError(f"the Beam run failed: {_root_cause(e)} (a rerun with the same arguments "
                              f"{keeps})") from None

    def attach(self, source, out_dir: str) -> None:
        """Have the workers, not this process, download a URL list's images (other sources: nothing to do).

        Args:
            source: the run's Source; a UrlListSource gets this runner as its fetcher.
            out_dir: the folder write_dataset writes (the workers' part lists go in its .work/).
        """
        from utils.generate.beam_fetch import worker_fetcher   # it imports this module
        from utils.sources.urls import UrlListSource

        if isinstance(source, UrlListSource):
            source.fetcher = worker_fetcher(self, self.remote_out or out_dir)


def _read_spec(out_dir: str, file: str) -> tuple:
    """A shard's plan file: (file, split, fold, [(key, source_id)], labels, loaders)."""
    return pickle.loads(remote.read_work(out_dir, file + SPEC_SUFFIX))


def _items_of(e: tuple, out_dir: str):
    si, file = e
    *_, rows, _, loads = _read_spec(out_dir, file)
    for pos, ((key, _), load) in enumerate(zip(rows, loads)):
        yield si, file, pos, key, load


@contextlib.contextmanager
def _beam_logs_quiet():
    """Beam's driver-side records off during a run (IMGCLS_VERBOSE=1 keeps them).

    A failed worker's traceback would come before our one `error:` line, which
    already names its root cause.
    """
    import logging

    log = logging.getLogger("apache_beam")
    level = log.level
    if not os.environ.get("IMGCLS_VERBOSE"):
        log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(level)


def _prepare(e: tuple, resize: dict, max_pixels: int, dedupe: bool) -> tuple:
    si, file, pos, key, load = e
    return si, file, pos, key, prepare_item(load, resize, max_pixels, dedupe)


def _by_shard(e: tuple) -> tuple:
    si, file, pos, _, res = e
    return (si, file), (pos, res)


def _digest(e: tuple):
    si, _, pos, key, res = e
    if res[0] == "ok":
        yield res[3], (si, pos, key)


def _first_of_repeats(kv: tuple):
    """(sha1, [(shard, pos, key), ...]) -> (sha1, the first in plan order) when it repeats."""
    digest, where = kv
    where = list(where)
    if len(where) > 1:
        yield digest, min(where)


def write_grouped(kv: tuple, out_dir: str, num_classes: int, dedupe: bool, prior: dict,
                  winners: dict | None) -> str:
    """Write one shard from its grouped spec and prepared results; runs in a worker.

    Args:
        kv: ((shard index, file), [(position, prepare_item result), ...]); the
            rest of the shard's plan is in its plan file in .work/.
        out_dir: the dataset folder (a local path or any Beam FileSystems URL).
        num_classes: for the class counts.
        dedupe: --dedupe.
        prior: {sha1: key} of the shards written by an earlier (resumed) run.
        winners: {sha1: (shard index, position, key)} of every repeated input's
            first occurrence in plan order (--dedupe), else None.

    Returns:
        the shard's file name.
    """
    (si, file), grouped = kv
    _, split, fold, rows, labels, _ = _read_spec(out_dir, file)
    res = sorted(grouped, key=lambda r: r[0])
    assert [r[0] for r in res] == list(range(len(rows))), (file, len(res), len(rows))
    seen = None
    if dedupe:   # write_shard's `seen`: the repeats whose first occurrence is in an EARLIER shard
        seen = {}
        for _, r in res:
            if r[0] == "ok":
                d = r[3]
                if d in prior:
                    seen[d] = prior[d]
                elif winners and d in winners and winners[d][0] < si:
                    seen[d] = winners[d][2]
    entry = ShardPlan(file, split, fold, list(range(len(rows))))
    meta = remote.write_to(out_dir, file, lambda path: write_shard(
        entry, [_Row(k, s) for k, s in rows], labels, (r for _, r in res), path,
        num_classes=num_classes, seen=seen))
    remote.write_sidecar(out_dir, meta)
    return file


def _root_cause(e: BaseException) -> str:
    """The innermost error of a runner's wrapped exception, as one line."""
    while e.__cause__ is not None or (e.__context__ is not None and not e.__suppress_context__):
        e = e.__cause__ or e.__context__
    text = str(e).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    # Beam's RuntimeError carries the worker's traceback as text: its last line is the error
    return first_line(lines[-1] if lines else e.__class__.__name__, 300)
