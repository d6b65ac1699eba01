"""The test session's own network: a namespace whose only interface is the loopback.

TensorFlow's tf.data service servers and the MultiWorkerMirroredStrategy workers bind
every interface (gRPC on 0.0.0.0, whatever address the test gives them), and so may
Beam's worker processes. A test's server must be reachable from this machine only,
so conftest.py moves the whole pytest process, and every process it starts, into a
new network namespace before anything binds, and brings its loopback up. 127.0.0.1
and ::1 work as before; there is no other interface to listen on.

As root (CI) that needs nothing else; another user gets it through a user namespace
of their own (uid and gid mapped to themselves) where the kernel allows one. Where
neither works the session runs unisolated, the pytest header says why, and
tests/test_netns.py skips, except as root or under CI, where it fails.
"""
from __future__ import annotations

import ctypes
import fcntl
import os
import socket
import struct
import sys

CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
IFREQ = "16sH14x"  # struct ifreq: the name, then ifr_flags
ISOLATED_ENV = "TESTS_NETWORK_NAMESPACE_OF"  # set to the pid that made the namespace


def _unshare(flags: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare: {os.strerror(err)}")


def _map_self(uid: int, gid: int) -> None:
    """In a new user namespace: this process's uid and gid map to themselves (files keep their owners)."""
    for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
        with open(f"/proc/self/{name}", "w") as f:
            f.write(text)


def _loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        flags = struct.unpack(IFREQ, fcntl.ioctl(s, SIOCGIFFLAGS, struct.pack(IFREQ, b"lo", 0)))[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack(IFREQ, b"lo", flags | IFF_UP))


def isolate() -> str | None:
    """Move this process into a new network namespace with the loopback up.

    Call it before any thread starts (a user namespace needs a single-threaded process).

    Returns:
        None when done; else why not, in one line (the session then runs on the host's network).
    """
    if os.environ.get(ISOLATED_ENV):  # a process the session started (it may import conftest again)
        return None
    if not sys.platform.startswith("linux"):
        return f"network namespaces are Linux only (this is {sys.platform})"
    uid, gid = os.getuid(), os.getgid()
    try:
        if uid == 0:
            _unshare(CLONE_NEWNET)
        else:
            _unshare(CLONE_NEWUSER | CLONE_NEWNET)
            _map_self(uid, gid)
        _loopback_up()
    except OSError as e:
        return f"no network namespace for the tests ({e})"
    os.environ[ISOLATED_ENV] = str(os.getpid())  # inherited: children stay in THIS namespace
    return None


def interfaces() -> list[str]:
    """The names of this process's network interfaces."""
    return sorted(name for _, name in socket.if_nameindex())
