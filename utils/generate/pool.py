"""The local run's worker processes: resize workers started early and fed in chunks,
and the whole-shard workers of a pass-through (utils.generate.apart).

`--max-side` / `--short-side` decode, resize and re-encode every image: CPU
work that a process pool spreads over the cores. What used to eat the gain
(measured with bench/generate.py, 1,000 photos, 2 workers on 2 cores):

* start-up: a forkserver pool had to start a fresh interpreter and import
  numpy + Pillow + this package before its first image (1.4-1.7 s, as long
  as resizing 400 photos). Where it is safe, the workers are now forked
  (no interpreter start, nothing to import), and in any case the pool is
  started BEFORE the index is built, so whatever start-up is left overlaps
  the index and the plan.
* one future per image: ~0.27 ms of parent time per task (submit, pickle,
  wake-ups), taken from the same two cores the workers resize on. Images
  now go CHUNK at a time. With concurrent.futures' ProcessPoolExecutor,
  its own threads in the parent (a manager, which wakes for every submit
  and receives and unpickles results, and the call queue's feeder, which
  pickles tasks) cost about a fixed amount per task, so the chunk size set
  the parent's share. Measured with per-thread CPU time (600 photos,
  --max-side 256, 2 workers; wall times on the loaded machine were noise):
  parent CPU per image (all its threads) 243-244 us with 2 per task
  (manager 90, feeder 31, main thread 95-101), 193-195 with 4, 151-175
  with 8 (manager 47, feeder 12, main 70-90), 127-132 with 16; the
  workers' ~3,100 us per image did not move. 8, not 16: the first results
  and the last task's tail wait for a whole chunk (~8 x 1.5 ms).
* those two threads: at 8 per task still ~60 us of parent CPU per image,
  taken from the cores the workers resize on (and each wake-up preempts a
  worker). So the pool is now `WorkerPool`: processes sharing a task pipe
  and a result pipe, and no thread, driven by the thread that consumes the
  results. (Chunk j to worker j % N, read back in turn, was tried first:
  the same parent CPU, but on the loaded machine 3 of 3 A/B runs slower in
  wall time than concurrent.futures, 3.5-6.5 vs 2.8-5.1 ms per photo: a
  worker the scheduler held back held the other one up.)

A fork is safe here when nothing the child could trip over is running: on
Linux, with TensorFlow not imported (its threads and locks do not survive a
fork) and no other Python thread alive (the sink thread, a progress bar's
monitor). Otherwise the pool uses forkserver (this module preloaded) or
spawn. A forked worker asks the kernel to kill it when the writer dies: it
holds copies of the writer's open files, the output folder's lock among
them, and a kill -9 of the writer must still release that lock.
"""
from __future__ import annotations

import collections
import itertools
import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import sys
import threading
from concurrent.futures.process import BrokenProcessPool
from typing import Callable, Iterable, Iterator

from utils.errors import SourceError

CHUNK = 8              # images per task (see the module doc)
CHUNKS_PER_WORKER = 4  # tasks in flight per worker: one running, the next ones queued (64 images for 2)
RESULT_PIPE_BYTES = 1 << 20   # a worker rarely blocks on results the consumer has not read yet
TASK_PIPE_BYTES = 1 << 20     # room for every chunk in flight (see WorkerPool.send)


class WorkerDied(SourceError, BrokenProcessPool):
    """A worker process died (killed, out of memory, a crash in C): the CLI's one line, a resumable run."""


def start_method() -> str:
    """'fork' where it is safe and cheap (see the module doc), else 'forkserver', else 'spawn'."""
    methods = multiprocessing.get_all_start_methods()
    if (sys.platform.startswith("linux") and "fork" in methods and "tensorflow" not in sys.modules
            and threading.active_count() == 1):
        return "fork"
    return "forkserver" if "forkserver" in methods else "spawn"


def _die_with(parent: int) -> None:
    """In a forked worker: killed with the writer (PR_SET_PDEATHSIG), gone if it already died."""
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))   # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:   # the writer died between the fork and the prctl
        os._exit(1)


def _serve(tasks, task_lock, results, result_lock, parent: int | None, inherited: list) -> None:
    """A worker's loop: (id, fn, [args, ...]) in; (id, True, [fn(*args), ...]) or (id, False, exception) out.

    An empty message stops it. Ctrl-C is the writer's to handle (it stops
    the workers): a worker ignores SIGINT instead of dying with a traceback.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if parent is not None:
        _die_with(parent)
    for conn in inherited:   # forked: the parent's ends of the pipes
        conn.close()
    loads, dumps = pickle.loads, pickle.dumps
    try:
        while True:
            with task_lock:   # one pipe for all workers: whoever is free takes the next chunk
                msg = tasks.recv_bytes()
            if not msg:
                return
            cid, fn, chunk = loads(msg)
            try:
                out = (cid, True, [fn(*a) for a in chunk])
            except Exception as e:   # fn's bug, not bad input (prepare_item never raises for that)
                out = (cid, False, e)
            data = dumps(out, pickle.HIGHEST_PROTOCOL)
            with result_lock:
                results.send_bytes(data)
    except (EOFError, BrokenPipeError):   # the writer went away
        pass


class WorkerPool:
    """`workers` processes sharing one task pipe and one result pipe; no thread in the parent.

    `ordered_results` sends chunks (numbered) down the task pipe, a free
    worker takes the next one (so a worker slowed by other load does not
    hold the rest up), and the thread that consumes the results reads them
    back, keeping those that arrive early until their turn. The result pipe
    is enlarged to RESULT_PIPE_BYTES where Linux allows, so a worker rarely
    waits for the consumer.

    Args:
        workers: process count.
        method: a multiprocessing start method (start_method()).
    """

    def __init__(self, workers: int, method: str) -> None:
        ctx = multiprocessing.get_context(method)
        if method == "forkserver":
            ctx.set_forkserver_preload(["utils.generate.shards"])   # imported once, in the server
        self.method = method
        self._procs: list = []
        self._sent = 0                 # chunks numbered so far
        self._early: dict = {}         # chunk id -> its answer, read before its turn
        self._outstanding = 0          # chunks sent and not yet handed back
        task_r, self._tasks = ctx.Pipe(duplex=False)
        self._results, res_w = ctx.Pipe(duplex=False)
        _grow_pipe(self._results, RESULT_PIPE_BYTES)
        # the largest task message that the task pipe is sure to take without waiting, with every
        # other chunk of the look-ahead window in it too (a 16-byte frame header each)
        self._task_room = _grow_pipe(self._tasks, TASK_PIPE_BYTES) // (workers * CHUNKS_PER_WORKER) - 16
        forked = method == "fork"
        self._locks = (ctx.Lock(), ctx.Lock())   # kept: a spawned worker opens them after start() returns
        args = (task_r, self._locks[0], res_w, self._locks[1], os.getpid() if forked else None,
                [self._tasks, self._results] if forked else [])
        try:
            for _ in range(workers):
                proc = ctx.Process(target=_serve, daemon=True, args=args)
                proc.start()
                self._procs.append(proc)
        except BaseException:
            self.shutdown()
            raise
        finally:
            task_r.close()   # the workers' ends: EOF reaches the workers when the parent dies
            res_w.close()

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs]

    def __len__(self) -> int:
        return len(self._procs)

    @property
    def outstanding(self) -> int:
        """Chunks sent and not handed back yet."""
        return self._outstanding

    def send(self, fn: Callable, chunk: list[tuple]) -> int:
        """Queue `chunk` for the first free worker; -> its chunk id (for receive).

        A task too big for the task pipe's share of one chunk runs here instead:
        a send that had to wait for room could wait forever, with every worker
        blocked on a full result pipe that only this thread reads. The loaders
        sent today are a path or an offset (a few hundred bytes a chunk).
        """
        cid = self._sent
        msg = pickle.dumps((cid, fn, chunk), pickle.HIGHEST_PROTOCOL)
        if len(msg) > self._task_room:
            try:
                self._early[cid] = (True, [fn(*a) for a in chunk])
            except Exception as e:   # as a worker would hand it back
                self._early[cid] = (False, e)
        else:
            try:
                self._tasks.send_bytes(msg)
            except OSError as e:   # EPIPE: every worker is gone
                raise self._broken() from e
        self._sent += 1
        self._outstanding += 1
        return cid

    def receive(self, cid: int) -> list:
        """The results of chunk `cid`, in order, once they are back."""
        while cid not in self._early:
            self._read_one()
        return self._hand_back(cid)

    def receive_next(self) -> tuple[int, list]:
        """Whichever chunk comes back first (one read early included) -> (its id, its results)."""
        if not self._early:
            self._read_one()
        return (cid := next(iter(self._early))), self._hand_back(cid)

    def _read_one(self) -> None:
        """Wait for the next answer on the result pipe and keep it with the early ones."""
        ready = multiprocessing.connection.wait([self._results, *(p.sentinel for p in self._procs)])
        if self._results not in ready:   # a worker died (killed, out of memory, a crash in C)
            raise self._broken()
        try:
            got, ok, out = pickle.loads(self._results.recv_bytes())
        except (EOFError, OSError) as e:
            raise self._broken() from e
        self._early[got] = (ok, out)

    def _hand_back(self, cid: int) -> list:
        ok, out = self._early.pop(cid)
        self._outstanding -= 1
        if not ok:
            raise out
        return out

    def _broken(self) -> WorkerDied:
        dead = [p for p in self._procs if p.exitcode is not None] or self._procs
        dead[0].join(1)
        return WorkerDied(f"a writer worker (pid {dead[0].pid}) died unexpectedly"
                          f" (exit code {dead[0].exitcode}); the run can be resumed with the same command")

    def shutdown(self) -> None:
        """Stop the workers: asked to finish when every result was read, else terminated; then joined."""
        clean = self._outstanding == 0 and all(p.is_alive() for p in self._procs)
        if clean:
            try:
                for _ in self._procs:
                    self._tasks.send_bytes(b"")
            except OSError:
                clean = False
        for proc in self._procs:
            proc.join(5 if clean else 0)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join()
        self._tasks.close()
        self._results.close()
        self._outstanding, self._early = 0, {}


def _grow_pipe(conn, size: int) -> int:
    """Give a pipe `size` bytes of buffer where Linux allows (F_SETPIPE_SZ) -> the buffer it has.

    Elsewhere, or above /proc/sys/fs/pipe-max-size, it keeps its own; unknown counts as 16 KiB
    (the smallest default among Linux, macOS and the BSDs).
    """
    try:
        import fcntl

        try:
            fcntl.fcntl(conn.fileno(), fcntl.F_SETPIPE_SZ, size)
        except OSError:
            pass
        return fcntl.fcntl(conn.fileno(), fcntl.F_GETPIPE_SZ)
    except (ImportError, AttributeError, OSError):
        return 16 << 10


def make_executor(resizing: bool, workers: int) -> WorkerPool | None:
    """A started worker pool for prepare_item when resizing with 2+ workers, else None (run inline).

    Pass-through gets none: a read plus a header check is cheap, and
    sending the bytes back costs more than that (measured on 2,000 JPEGs,
    bench/generate.py, medians of 3 rounds: inline 0.61x of a plain copy, a
    2-thread pool 0.35x). Its workers write whole shards instead, forked
    after the plan (utils.generate.apart).

    Args:
        resizing: --max-side or --short-side was given.
        workers: --workers.
    Returns:
        the pool, its workers started; shut it down when done.
    """
    if workers <= 1 or not resizing:
        return None
    return WorkerPool(workers, start_method())


def ordered_results(fn: Callable, args: Iterable[tuple], executor: WorkerPool | None) -> Iterator:
    """map() in chunks of CHUNK with bounded look-ahead, results in order; inline without an executor.

    Args:
        fn: a module-level function (it is pickled by reference).
        args: argument tuples, consumed lazily.
        executor: from make_executor, or None; its size sets the look-ahead.
    """
    if executor is None:
        for a in args:
            yield fn(*a)
        return
    window = len(executor) * CHUNKS_PER_WORKER
    pending: collections.deque = collections.deque()   # the id of each chunk in flight, oldest first
    it = iter(args)
    more = True
    while True:
        while more and len(pending) < window:
            chunk = list(itertools.islice(it, CHUNK))
            if not chunk:
                more = False
                break
            pending.append(executor.send(fn, chunk))
        if not pending:
            return
        yield from executor.receive(pending.popleft())
