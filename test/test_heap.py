"""The daemon fixes glibc's heap thresholds (s3balance/heap.py) before it serves."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import pytest
from twisted.internet.testing import MemoryReactorClock

from s3balance import heap, tap


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_thresholds_are_accepted_by_glibc() -> None:
    # In a child: the setting is for the whole process, and this one runs the other tests.
    result = subprocess.run(
        [sys.executable, "-c", "from s3balance.heap import steady_heap; print(steady_heap())"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.strip() == "True", result.stderr


def test_make_service_applies_them_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before the database or any backend exists (the service is not built here: its local
    backends would start disk threads that outlive the test)."""
    calls: list[str] = []

    class Stop(Exception):
        pass

    def prepare_database(config: object) -> None:
        calls.append("database")
        raise Stop()

    monkeypatch.setattr(tap, "steady_heap", lambda: calls.append("steady") or True)
    monkeypatch.setattr(tap, "prepare_database", prepare_database)
    config = tmp_path / "c.yaml"
    config.write_text(f"data_dir: {tmp_path / 'data'}\nbuckets: [{{name: r, path: d}}]\n")
    options = tap.Options()
    options.parseOptions(["--config", str(config), "--listen", "tcp:0:interface=127.0.0.1"])
    with pytest.raises(Stop):
        tap.makeService(options, reactor=MemoryReactorClock())
    assert calls == ["steady", "database"]
    assert heap.MMAP_THRESHOLD >= 1 << 20  # above every buffer of the data path (256 KiB reads)
