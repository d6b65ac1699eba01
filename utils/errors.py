"""User-facing errors and the CLI plumbing: one-line errors, the argparse class, --config files."""
from __future__ import annotations

import argparse
import os
import sys


class UsageError(ValueError):
    """A bad flag value or argument; printed as one line, exit code 2."""


class SourceError(Exception):
    """Bad input that stops the whole run (missing input, truncated BSON, ...).

    The CLI prints `str(err)` as one line on stderr and exits non-zero.
    """


class DatasetError(Exception):
    """A dataset folder that cannot be used; the CLI prints it as one line."""


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad flag as ONE line (a UsageError), not usage + error."""

    def error(self, message):
        raise UsageError(f"{message} (see {self.prog} --help)")


def first_line(e: BaseException | str, limit: int | None = None) -> str:
    """The first non-blank line of an error's text, else its class name.

    Args:
        e: an exception (or a message).
        limit: cut the line to this many characters.
    """
    text = str(e)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    line = lines[0] if lines else (e.__class__.__name__ if isinstance(e, BaseException) else "")
    return line[:limit] if limit else line


def read_yaml_mapping(path: str) -> dict:
    """A --config file -> {option_name: value}, keys with '-' read as '_' (every CLI)."""
    import yaml

    if not os.path.isfile(path):
        raise UsageError(f"config file not found: {path}")
    try:
        with open(path) as f:
            raw = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        raise UsageError(f"{path} is not valid YAML: {first_line(e)}") from None
    if not isinstance(raw, dict):
        raise UsageError(f"{path} must be a mapping of option: value")
    return {str(key).replace("-", "_"): value for key, value in raw.items()}


def user_errors() -> tuple[type[BaseException], ...]:
    # OSError: a missing file, a full disk, a permission problem is the user's to fix, not a bug
    return (UsageError, SourceError, DatasetError, OSError)


def run_cli(main, argv=None) -> int:
    """Run `main(argv)`; user errors become `error: ...` on stderr and exit code 2.

    Anything else is a bug in this project and keeps its traceback.
    """
    try:
        return int(main(argv) or 0)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except user_errors() as e:
        msg = str(e) or e.__class__.__name__
        if isinstance(e, OSError) and e.filename and str(e.filename) not in msg:
            msg = f"{msg}: {e.filename}"
        print(f"error: {first_line(msg)}", file=sys.stderr)
        return 2


def import_tensorflow_quietly():
    """Import TensorFlow with its start-up chatter kept off the terminal.

    TF 2.21's C++ side prints "All log messages before absl::InitializeLog() ...",
    oneDNN and CUDA-stub lines on fd 2 while loading, whatever TF_CPP_MIN_LOG_LEVEL
    says; they would stand in front of our one-line `error:` messages. fd 2 is
    pointed at /dev/null for the import only, and TF_CPP_MIN_LOG_LEVEL defaults to 3
    (its C++ ERROR lines, e.g. "failed call to cuInit" on a CPU-only machine, are
    noise to a user; real failures still surface as Python exceptions).
    IMGCLS_VERBOSE=1 keeps them all.
    """
    import os

    if "tensorflow" in sys.modules or os.environ.get("IMGCLS_VERBOSE"):
        import tensorflow

        return tensorflow
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    return tensorflow
