"""Proof that a test (or a fault) left nothing behind: no orphan bytes, no dangling rows.

Use :func:`assert_nothing_left_behind` with an in-process daemon (its ``store`` and
``backends``), and :func:`assert_process_left_nothing` with a :class:`DaemonProcess` (it runs
``python -m s3balance.scrubcli`` on the process's configuration, as an operator would).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from s3balance.backends.interface import IBackend
from s3balance.db.store import MetadataStore
from s3balance.scrub import ScrubReport, scrub
from test.support.process import REPO_ROOT, daemon_environment


async def assert_nothing_left_behind(
    store: MetadataStore, backends: dict[str, IBackend], grace: float = 0.0
) -> ScrubReport:
    """Scrub (without removing anything) and fail with the report when it is not clean.

    :param grace: 0 by default: call it when no upload is in flight, so every unreferenced
        object counts as an orphan.
    """
    report = await scrub(store, backends, remove_orphans=False, grace=grace)
    if not report.clean:
        raise AssertionError("something was left behind:\n" + report.summary())
    return report


def run_scrubcli(config_path: str | Path, *args: str, timeout: float = 60.0) -> Any:
    """Run the scrub command line on a configuration; the completed process (text output)."""
    return run_module("s3balance.scrubcli", config_path, *args, timeout=timeout)


def run_module(module: str, config_path: str | Path, *args: str, timeout: float = 60.0) -> Any:
    """``python -m <module> <args> --config FILE`` to completion, as an operator runs it; the
    completed process (text output)."""
    return subprocess.run(
        [sys.executable, "-m", module, *args, "--config", str(config_path)],
        cwd=REPO_ROOT,
        env=daemon_environment(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_process_left_nothing(config_path: str | Path, timeout: float = 60.0) -> dict[str, Any]:
    """Scrub a daemon process's data (grace 0) and fail unless it is clean; the JSON report."""
    done = run_scrubcli(config_path, "--json", "--grace", "0", timeout=timeout)
    if done.returncode != 0:
        raise AssertionError(
            f"scrub exited with {done.returncode}:\n{done.stdout}\n{done.stderr}"
        )
    report: dict[str, Any] = json.loads(done.stdout)
    return report
