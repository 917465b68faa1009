"""``python -m bench.backend`` keeps working (a few requests; its figures are not judged here)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parent.parent


def test_the_backend_bench_runs_and_prints_both_methods() -> None:
    # In a process of its own: it runs (and stops) a reactor.
    environment = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, "-m", "bench.backend", "--requests", "64", "--rounds", "1"],
        cwd=ROOT, env=environment, capture_output=True, text=True, timeout=100,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert any(line.strip().startswith("GET  S3Backend") for line in lines), done.stdout
    assert any(line.strip().startswith("PUT  S3Backend") for line in lines), done.stdout
