"""Run a bench script in a child process pinned to given CPUs, and read the JSON line it prints.

The pinning (sched_setaffinity, as taskset) happens in the child before its
interpreter starts, so TensorFlow sizes its thread pools from the pinned set;
and each child is a fresh process, so nothing one measurement leaves behind
(thread pools, allocator state, autotune models) reaches the next one.
bench/pipeline.py runs bench/minimal.py this way, bench/augment.py its own
per-augmentation children.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def pinned_run(cpus: list[int], script: str, argv: list[str]) -> dict:
    """bench/SCRIPT argv in a child pinned to `cpus` before its interpreter starts -> its last stdout line as JSON.

    Args:
        cpus: the CPU ids the child may use.
        script: a file name in bench/ (e.g. "minimal.py").
        argv: the child's arguments.
    Returns:
        the parsed JSON of the child's last line on stdout.
    Raises:
        SystemExit: the child failed (its stderr's tail is in the message).
    """
    child = [sys.executable, os.path.join(HERE, script), *argv]
    done = subprocess.run(child, preexec_fn=lambda: os.sched_setaffinity(0, cpus), capture_output=True,
                          text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"bench/{script} on CPUs {cpus} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])
