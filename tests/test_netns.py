"""tests/netns.py: the session runs in a network namespace whose only interface is the loopback."""
import os
import socket

import pytest

from tests import conftest
from tests.netns import ISOLATED_ENV, interfaces


def _isolated_or_skip():
    why = conftest.NETWORK_NOT_ISOLATED
    if why and os.getuid() != 0 and not os.environ.get("CI"):
        pytest.skip(f"{why}: test servers listen on the host's interfaces")
    assert why is None, why  # as root and under CI the namespace must exist


def test_the_only_interface_is_the_loopback():
    _isolated_or_skip()
    assert interfaces() == ["lo"]


def test_a_server_bound_to_every_interface_is_reachable_on_the_loopback_only():
    _isolated_or_skip()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("0.0.0.0", 0))  # what TF's gRPC servers do
        server.listen(1)
        port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
        assert interfaces() == ["lo"]  # no other address it could be reached on


def test_child_processes_share_the_namespace():
    _isolated_or_skip()
    import subprocess
    import sys

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("0.0.0.0", 0))
        server.listen(1)
        # the child imports conftest too (as train.py's test runners do): it must stay in OUR namespace
        code = (f"import sys, socket; sys.path.insert(0, {conftest.ROOT!r}); import tests.conftest; "
                f"socket.create_connection(('127.0.0.1', {server.getsockname()[1]}), timeout=5); "
                "print(sorted(n for _, n in socket.if_nameindex()))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             timeout=60).stdout.strip()
    assert out == "['lo']"


def test_pytest_xdist_workers_run_in_the_sessions_namespace():
    """`make test` runs two pytest-xdist workers: the controller made the namespace (conftest imports
    first there) and each worker, its child, is in it; a plain pytest process made its own."""
    _isolated_or_skip()
    maker = int(os.environ[ISOLATED_ENV])
    assert maker == (os.getppid() if os.environ.get("PYTEST_XDIST_WORKER") else os.getpid())
    assert os.readlink("/proc/self/ns/net") == os.readlink(f"/proc/{maker}/ns/net")
    assert interfaces() == ["lo"]
