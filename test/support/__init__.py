"""Real servers for tests (SeaweedFS, moto) and small helpers shared by every test module.

Servers are started once per test process (:func:`shared_seaweedfs`, :func:`shared_moto`) because
SeaweedFS needs seconds to start; tests isolate themselves with :func:`unique_bucket_name`.
"""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import sys
import time
import unittest
import uuid
from collections.abc import Callable
from typing import NoReturn

_bucket_counter = itertools.count()


def unique_bucket_name(prefix: str = "t") -> str:
    """A bucket name valid for S3 (3-63 chars, lower-case) and unique across processes and runs."""
    base = "".join(c for c in prefix.lower() if c.isalnum() or c == "-").strip("-") or "t"
    name = f"{base[:30]}-{os.getpid()}-{next(_bucket_counter)}-{uuid.uuid4().hex[:8]}"
    return name[:63]


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback TCP ports that were free a moment ago.

    All sockets are held open until every port is chosen, so the ports are distinct; another
    process may still grab one before the caller binds it (callers retry a failed start).
    """
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def free_port() -> int:
    """One loopback TCP port that was free a moment ago."""
    return free_ports(1)[0]


def find_tool(name: str) -> str | None:
    """An executable next to the interpreter running the tests (the venv's awscli, weed), else
    on ``$PATH``; ``None`` when neither has it."""
    beside = os.path.join(os.path.dirname(sys.executable), name)
    if os.access(beside, os.X_OK):
        return beside
    return shutil.which(name)


def require_tool(name: str) -> str:
    """The path of client tool ``name``.

    A developer without it gets a skip; under CI (``CI`` set, as ``.ci/run`` runs), whose job is
    to install every client the suite relies on, a missing tool fails the test instead of hiding
    what it checks behind a skip.
    """
    found = find_tool(name)
    if found is not None:
        return found
    unavailable(f"{name} is not installed (neither beside {sys.executable} nor on PATH)")


def unavailable(reason: str) -> NoReturn:
    """Skip a test whose real part (a client, a database server, a browser) is missing here.

    Under CI (``CI`` set; ``.ci/run`` sets it), whose job is to install and start every part the
    suite relies on, the test fails instead, so that nothing it checks hides behind a skip.
    """
    if os.environ.get("CI"):
        raise AssertionError(f"{reason}; .ci/run must provide it")
    raise unittest.SkipTest(reason)


def wait_until(predicate: Callable[[], object], timeout: float, interval: float = 0.2) -> bool:
    """Poll ``predicate`` (from a thread that may block) until it is true or ``timeout`` seconds
    pass; the answer of one last call after the deadline, so a slow machine gets a fair verdict."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())
