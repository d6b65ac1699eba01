"""Concurrent, cached, defensive image downloads (URL-list source and detect.py).

Remote image lists are long and the hosts behind them are unreliable: some
URLs are gone (404), some servers hiccup (500, resets), some hang, some answer
with an HTML error page or a 2 GB file. So every request has a timeout, only
transient failures are retried (with exponential backoff), bodies are capped
while they stream in, and a body must at least have an image header before it
is kept. Kept bodies go into a cache folder under a name derived from the key
and the URL, written atomically, so a rerun after Ctrl-C or a crash requests
only what it does not have yet.

Several processes may fill one cache folder at once (the Beam runner's workers,
two runs sharing a cache): each file is fetched under an flock on NAME.lock, so
a second fetcher of the same file waits and then re-uses it instead of
requesting it again; the body goes to a temp name unique to the process and
thread (NAME.part-PID-TID) and is renamed into place. Half-written parts and
lock files a killed process left are removed only when their lock can be taken,
i.e. when no live process is fetching that file (see sweep_stale).
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import os
import random
import re
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Callable
from urllib.parse import urlsplit

from utils.files import atomic_write_bytes

CHUNK = 64 * 1024
# Statuses worth another try: server-side trouble, plus "slow down" / "timed out"
# which are 4xx codes in name only. Every other 4xx is final (404 stays 404).
RETRY_STATUS = frozenset({408, 429}) | frozenset(range(500, 600))
TMP_MARK = ".part-"
# A half-written file: cache name (ends in the URL digest) + TMP_MARK + pid-thread.
# Matching all of it keeps a cached file whose KEY holds ".part-" from being deleted.
_TMP_RE = re.compile(r"-[0-9a-f]{16}" + re.escape(TMP_MARK) + r"\d+-\d+$")
LOCK_SUFFIX = ".lock"   # NAME.lock: held (flock) while NAME is being fetched; removed after
_LOCK_RE = re.compile(r"-[0-9a-f]{16}" + re.escape(LOCK_SUFFIX) + "$")


class DownloadError(Exception):
    """A download that did not produce an image; str() is the short reason."""


class _Retryable(DownloadError):
    """A failure that may go away on another attempt (5xx, timeout, reset)."""


def cache_path(cache_dir: str, key: str, url: str) -> str:
    """Where the body of `url` for `key` is kept.

    The readable part comes from the key; the hash of the URL makes a changed
    URL a new download. Two keys whose safe names collide with the same URL
    share a file, which is harmless: the bytes are the same.
    """
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", key)[:80] or "_"
    digest = hashlib.sha1(url.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return os.path.join(cache_dir, f"{safe}-{digest}")


def check_url(url: str) -> None:
    try:
        scheme = urlsplit(url).scheme.lower()
    except ValueError:          # "http://[bad": an unclosed IPv6 bracket
        raise DownloadError("invalid URL") from None
    if scheme not in ("http", "https"):
        raise DownloadError(f"unsupported URL scheme: {scheme or '(none)'}")


def check_image_header(body: bytes) -> None:
    """Refuse bodies that are not images (HTML error pages, JSON, truncated junk).

    PIL's open() only parses the header, so this is cheap; the full decode
    check is the writer's (or detect.py's) job. Huge declared sizes pass here:
    the writer refuses them with a precise reason.
    """
    from PIL import Image

    if not body:
        raise DownloadError("empty body")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(body)):
                pass
    except Image.DecompressionBombError:
        return
    except Exception:
        raise DownloadError("not an image") from None


def _get_once(session, url: str, timeout: float, max_bytes: int) -> bytes:
    """One GET; the body or an exception (_Retryable when worth retrying)."""
    import requests

    try:
        with session.get(url, timeout=timeout, stream=True) as r:
            if r.status_code != 200:
                err = _Retryable if r.status_code in RETRY_STATUS else DownloadError
                raise err(f"http {r.status_code}")
            declared = r.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > max_bytes:
                raise DownloadError(f"body larger than {max_bytes} bytes")
            # `timeout` bounds each connect/read wait; this bounds a server that
            # drips a byte just often enough to never trip it.
            deadline = time.monotonic() + 6 * timeout
            buf = bytearray()
            for chunk in r.iter_content(CHUNK):
                buf += chunk
                if len(buf) > max_bytes:
                    raise DownloadError(f"body larger than {max_bytes} bytes")
                if time.monotonic() > deadline:
                    raise _Retryable("timeout")
            return bytes(buf)
    except requests.exceptions.Timeout:
        raise _Retryable("timeout") from None
    except (requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError) as e:
        raise _Retryable(f"connection error: {type(e).__name__}") from None
    except (requests.exceptions.InvalidURL, requests.exceptions.InvalidSchema,
            requests.exceptions.MissingSchema) as e:
        raise DownloadError(f"invalid URL: {type(e).__name__}") from None
    except requests.exceptions.RequestException as e:
        raise DownloadError(f"request failed: {type(e).__name__}") from None
    except ValueError as e:     # urllib3's LocationParseError ("http://a..b/") is not wrapped by requests
        raise DownloadError(f"invalid URL: {type(e).__name__}") from None


def _write_atomic(path: str, data: bytes) -> None:
    # a temp name per process and thread: two fetchers of one URL never share a part file
    atomic_write_bytes(path, data, tmp_suffix=f"{TMP_MARK}{os.getpid()}-{threading.get_ident()}", fsync=False)


def _fetch_one(session, url: str, path: str, *, timeout: float, retries: int,
               max_bytes: int, backoff: float) -> str:
    check_url(url)
    attempt = 0
    while True:
        try:
            body = _get_once(session, url, timeout, max_bytes)
            break
        except _Retryable as e:
            if attempt >= retries:
                tries = f" after {attempt + 1} attempts" if attempt else ""
                raise DownloadError(f"{e}{tries}") from None
            # Exponential backoff with jitter so 16 threads that failed together
            # do not hammer the server again in lockstep.
            time.sleep(backoff * (2 ** attempt) * (0.5 + random.random()))
            attempt += 1
    check_image_header(body)
    _write_atomic(path, body)
    return path


@contextlib.contextmanager
def _claim(path: str, wait: bool = True):
    """Hold the flock of `path`.lock while the block runs; yields False when busy and not `wait`.

    The lock file is removed on release, so another process may have opened the
    old inode meanwhile: whoever gets the lock checks that the name still points
    at the inode it locked, else it retries on the new file.
    """
    import fcntl

    lock = path + LOCK_SUFFIX
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            yield False
            return
        except BaseException:
            os.close(fd)
            raise
        try:
            now = os.stat(lock)
        except FileNotFoundError:
            now = None
        mine = os.fstat(fd)
        if now is not None and (now.st_ino, now.st_dev) == (mine.st_ino, mine.st_dev):
            break
        os.close(fd)            # its holder removed it after we opened it: lock the new one
    try:
        yield True
    finally:
        with contextlib.suppress(OSError):
            os.remove(lock)     # while still holding it: see above
        os.close(fd)


def fetch_cached(session, url: str, path: str, *, timeout: float, retries: int, max_bytes: int,
                 backoff: float) -> str:
    """`url` -> `path` unless it is there; safe when other processes fill the same cache folder.

    Args:
        session: a requests.Session (one per thread).
        url, path: what to fetch, and where (cache_path's name).
        timeout, retries, max_bytes, backoff: as fetch_all's.

    Returns:
        path, complete: fetched now, or already there (also when another
        process fetched it while this one waited for its lock).

    Raises:
        DownloadError: the reason the URL gave no image (not cached: a rerun retries it).
    """
    if os.path.isfile(path):
        return path
    with _claim(path):
        if os.path.isfile(path):        # the holder we waited for fetched it
            return path
        return _fetch_one(session, url, path, timeout=timeout, retries=retries, max_bytes=max_bytes,
                          backoff=backoff)


def sweep_stale(cache_dir: str) -> int:
    """Remove the part and lock files killed fetchers left; -> how many part files went.

    A NAME's parts and lock go only when NAME's lock can be taken at once: no
    live process (here or on another machine sharing the folder, where flock
    reaches it) is fetching NAME, so nothing still writes them. Parts of a NAME
    that is being fetched stay until a later sweep.
    """
    stale: dict[str, list[str]] = {}
    for name in os.listdir(cache_dir):
        if _TMP_RE.search(name):
            stale.setdefault(name[:name.rindex(TMP_MARK)], []).append(name)
        elif _LOCK_RE.search(name):
            stale.setdefault(name[:-len(LOCK_SUFFIX)], [])
    removed = 0
    for base, parts in stale.items():
        with _claim(os.path.join(cache_dir, base), wait=False) as free:
            if not free:
                continue
            for name in parts:
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(cache_dir, name))
                    removed += 1
    return removed


def fetch_into(items: list[tuple[str, str]], cache_dir: str, *, concurrency: int = 16,
               timeout: float = 10.0, retries: int = 3, max_bytes: int = 20_000_000, backoff: float = 0.5,
               on_result: Callable[[str, str | DownloadError], None] | None = None,
               ) -> dict[str, str | DownloadError]:
    """fetch_all's downloads without its sweep and progress bar: one worker's share of a list.

    Args:
        items, cache_dir, concurrency, timeout, retries, max_bytes, backoff: as fetch_all's.
        on_result: called (in this thread) with each (key, result) as it arrives.

    Returns:
        {key: file path | DownloadError}, in the order of `items`.
    """
    import requests

    os.makedirs(cache_dir, exist_ok=True)
    results: dict[str, str | DownloadError] = {}
    todo: list[tuple[str, str, str]] = []
    for key, url in items:
        path = cache_path(cache_dir, key, url)
        if os.path.isfile(path):
            results[key] = path
        else:
            todo.append((key, url, path))

    local = threading.local()
    sessions: list = []
    lock = threading.Lock()

    def session():
        # requests.Session is not thread-safe; one per worker thread keeps
        # connection reuse (keep-alive) without sharing.
        s = getattr(local, "session", None)
        if s is None:
            s = local.session = requests.Session()
            s.headers["User-Agent"] = "imgcls-fetch/1.0"
            with lock:
                sessions.append(s)
        return s

    def work(key: str, url: str, path: str):
        try:
            return key, fetch_cached(session(), url, path, timeout=timeout, retries=retries,
                                     max_bytes=max_bytes, backoff=backoff)
        except DownloadError as e:
            return key, DownloadError(str(e))

    pool = ThreadPoolExecutor(max_workers=max(1, concurrency))
    try:
        futures = [pool.submit(work, *t) for t in todo]
        for fut in as_completed(futures):
            key, res = fut.result()
            results[key] = res
            if on_result is not None:
                on_result(key, res)
    except BaseException:
        # Ctrl-C: drop the queue instead of downloading the rest first; requests
        # in flight end within their timeout, and their files are complete or absent.
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    else:
        pool.shutdown()
    finally:
        for s in sessions:
            s.close()
    return {key: results[key] for key, _ in items}


def fetch_all(items: list[tuple[str, str]], cache_dir: str, *, concurrency: int = 16,
              timeout: float = 10.0, retries: int = 3, max_bytes: int = 20_000_000,
              progress: bool = True, backoff: float = 0.5) -> dict[str, str | DownloadError]:
    """Download (key, url) pairs into cache_dir -> {key: file path | DownloadError}.

    timeout:  seconds per connect / per read wait (a body must also finish
              within 6x that); retries: extra attempts after the first, only on
              5xx/408/429, timeouts and connection errors; backoff: first retry
              delay in seconds, doubled each time. A key whose file is already
              cached is not requested. Failures are not cached: a rerun tries
              them again.
    """
    from tqdm import tqdm

    os.makedirs(cache_dir, exist_ok=True)
    sweep_stale(cache_dir)
    cached = sum(os.path.isfile(cache_path(cache_dir, k, u)) for k, u in items)
    failed = 0
    bar = tqdm(total=len(items), initial=cached, unit="img", desc="download",
               disable=not progress, smoothing=0.1)

    def tick(_key: str, res: str | DownloadError) -> None:
        nonlocal failed
        if isinstance(res, DownloadError):
            failed += 1
            bar.set_postfix(failed=failed, refresh=False)
        bar.update(1)

    try:
        return fetch_into(items, cache_dir, concurrency=concurrency, timeout=timeout, retries=retries,
                          max_bytes=max_bytes, backoff=backoff, on_result=tick)
    finally:
        bar.close()
