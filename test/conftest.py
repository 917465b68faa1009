"""Suite-wide safety net: a leaked non-daemon thread must not hang the test run after its summary.

Python joins every non-daemon thread before exiting, and ``atexit`` handlers (which stop the
shared SeaweedFS and moto servers) run only after that, so one forgotten thread pool would keep
the process, and CI, waiting forever.  The leak is reported loudly, then the run exits with the
status pytest decided.
"""

from __future__ import annotations

import os
import sys
import threading

import pytest

_exit_status = 0


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    global _exit_status
    _exit_status = int(exitstatus)


def pytest_unconfigure(config: pytest.Config) -> None:
    from concurrent.futures import thread as executor_threads

    # Executor threads are told to stop and joined by Python itself at exit: not leaks.
    joined_at_exit = set(getattr(executor_threads, "_threads_queues", {}))
    leaked = [
        thread.name
        for thread in threading.enumerate()
        if thread is not threading.main_thread()
        and thread.is_alive()
        and not thread.daemon
        and thread not in joined_at_exit
    ]
    if not leaked:
        return
    print(f"\nnon-daemon threads left running by the tests: {', '.join(leaked)}", file=sys.stderr)
    import atexit

    atexit._run_exitfuncs()  # stop the shared servers, as a normal exit would
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(_exit_status)
