"""twistd's log file has a bounded number of rotated files (issue 13, 2): junk traffic used to
leave a new 1 MB file behind every few seconds, without end."""

from __future__ import annotations

import http.client
import subprocess
import time
from pathlib import Path

import pytest

from s3balance.logs import capped_log_file
from s3balance.tap import Options
from test.support import free_port
from test.support.process import daemon_environment, twistd_command

pytestmark = pytest.mark.timeout(120)


def test_capped_log_file_keeps_max_files(tmp_path: Path) -> None:
    log_file = capped_log_file(str(tmp_path / "s.log"), max_size=1024, max_files=3)
    try:
        for index in range(200):
            log_file.write(f"line {index:04d} " + "x" * 90 + "\n")
    finally:
        log_file.close()
    names = sorted(path.name for path in tmp_path.iterdir())
    assert names == ["s.log", "s.log.1", "s.log.2", "s.log.3"]


def test_bad_rotation_options_are_usage_errors() -> None:
    from twisted.python import usage

    for args, expected in (
        (["--log-max-files", "0"], "--log-max-files: '0' is not a number of files"),
        (["--log-max-size", "huge"], "--log-max-size: 'huge' is not a size"),
        (["--log-max-size", "10B"], "--log-max-size: '10B' is too small"),
    ):
        with pytest.raises(usage.UsageError) as caught:
            Options().parseOptions(args)
        assert str(caught.value).startswith(expected)


def test_twistd_log_file_keeps_at_most_max_files(tmp_path: Path) -> None:
    port = free_port()
    log_path = tmp_path / "s3b.log"
    command = twistd_command() + [
        "-n", "--pidfile=", f"--logfile={log_path}", "s3balance",
        "--log-max-size", "4KB", "--log-max-files", "3",
        "--listen", f"tcp:{port}:interface=127.0.0.1",
    ]  # fmt: skip
    process = subprocess.Popen(
        command, cwd=tmp_path, env=daemon_environment(), stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        connection = None
        deadline = time.monotonic() + 60
        while connection is None and time.monotonic() < deadline:
            assert process.poll() is None, process.stdout.read() if process.stdout else ""
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                connection.request("GET", "/junk-0/key")
                connection.getresponse().read()
            except OSError:
                connection = None
                time.sleep(0.2)
        assert connection is not None, "the daemon did not answer"
        # One access log line per request, about 100 bytes: 400 of them rotate ten times.
        for index in range(400):
            connection.request("GET", f"/junk-{index}/key")
            connection.getresponse().read()
        connection.close()
    finally:
        process.terminate()
        process.wait(30)
        if process.stdout is not None:
            process.stdout.close()
    names = sorted(path.name for path in tmp_path.iterdir() if path.name.startswith("s3b.log"))
    assert names == ["s3b.log", "s3b.log.1", "s3b.log.2", "s3b.log.3"]
    assert all((tmp_path / name).stat().st_size <= 4096 + 1024 for name in names)
