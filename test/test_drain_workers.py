"""Drain with ``server.workers: 2``: the drain requested through any worker is run by the first
worker, and no worker places new objects on the drained bucket any more."""

from __future__ import annotations

import http.client
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from test.support.process import DaemonProcess

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

TOKEN = "drain-workers-token"


def ask(daemon: DaemonProcess, method: str, path: str, body: bytes | None = None) -> Any:
    """One request on a connection of its own (so the kernel may pick either worker)."""
    connection = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=10)
    try:
        headers = {"Authorization": f"Bearer {TOKEN}"} if path.startswith("/api") else {}
        connection.request(method, path, body=body, headers=headers)
        answer = connection.getresponse()
        return answer.status, answer.headers.get("x-s3balance-worker"), answer.read()
    finally:
        connection.close()


def files_under(root: Path) -> list[str]:
    return sorted(
        os.path.relpath(os.path.join(folder, name), root)
        for folder, _, names in os.walk(root)
        for name in names
        if not name.startswith(".")
    )


def test_a_drain_through_any_worker_empties_the_bucket_and_no_worker_writes_there(
    tmp_path: Path,
) -> None:
    config = {
        # Old copies are deleted 1 s after their move (the job ends when they are gone).
        "server": {"host": "127.0.0.1", "workers": 2, "shutdown_grace": "10s", "delete_grace": 1},
        "buckets": [
            {"name": "disk-a", "path": str(tmp_path / "disk-a")},
            {"name": "disk-b", "path": str(tmp_path / "disk-b")},
            {"name": "disk-c", "path": str(tmp_path / "disk-c")},
            {"name": "files", "virtual": True},
        ],
        "api": {"enabled": True, "token": TOKEN},
        "balancer": {"strategy": "round-robin"},
        "jobs": {"poll_interval": 0.5},
    }
    with DaemonProcess(tmp_path / "run", config) as daemon:
        workers = set()
        for index in range(60):
            status, worker, _ = ask(daemon, "PUT", f"/files/k{index}", f"body {index}".encode())
            assert status == 200
            workers.add(worker)
        # (Which worker each connection reaches is the kernel's choice: usually both.)
        assert files_under(tmp_path / "disk-a")
        status, _, body = ask(daemon, "POST", "/api/buckets/disk-a/drain")
        assert status == 200, body
        job_id = json.loads(body)["job"]["id"]
        deadline = time.monotonic() + 60
        while True:
            status, _, body = ask(daemon, "GET", f"/api/jobs/{job_id}")
            job = json.loads(body)
            if job["state"] not in ("queued", "running") or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert job["state"] == "done", job
        assert files_under(tmp_path / "disk-a") == []
        # Every worker has re-read the drained list by now: nothing new lands on disk-a.
        for index in range(30):
            status, worker, _ = ask(daemon, "PUT", f"/files/new{index}", b"new")
            assert status == 200
            workers.add(worker)
        assert files_under(tmp_path / "disk-a") == []
        for index in range(60):
            status, _, body = ask(daemon, "GET", f"/files/k{index}")
            assert (status, body) == (200, f"body {index}".encode())
        status, _, body = ask(daemon, "GET", "/api/buckets/disk-a")
        assert json.loads(body)["removable"] is True
        log = Path(daemon.log_path).read_text()
        assert log.count(f"job {job_id}: drain disk-a starts here") == 1
        assert "[worker 0]" in log and len(workers) >= 1
