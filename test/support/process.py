"""The real daemon as a separate process: ``twistd -n s3balance --config FILE``.

For the tests a user would recognise: start-up and refusal, SIGTERM with transfers in flight,
SIGHUP reloads, several daemons sharing one database, faults.  Blocking helpers, meant for plain
pytest functions or threads.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from test.support import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]


def twistd_command() -> list[str]:
    """The twistd of the interpreter running the tests."""
    script = Path(sys.executable).with_name("twistd")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def daemon_environment() -> dict[str, str]:
    """The environment for a daemon: the checkout first on sys.path, so its plugin and package
    are found whether s3balance is installed as a wheel or editable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


class DaemonProcess:
    """One ``twistd -n s3balance`` process with a configuration written from ``config``.

    :param workdir: where the config, the log and (by default) the data directory go.
    :param config: the configuration as YAML-able data; ``data_dir`` defaults to the workdir.
    """

    def __init__(self, workdir: str | Path, config: dict[str, Any], port: int | None = None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.config = dict(config)
        self.config.setdefault("data_dir", str(self.workdir / "data"))
        self.config_path = self.workdir / "s3balance.yaml"
        self.log_path = self.workdir / "twistd.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def write_config(self, config: dict[str, Any] | None = None) -> None:
        if config is not None:
            self.config = config
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))

    def start(self, wait: bool = True, timeout: float = 30.0) -> None:
        self.write_config()
        command = twistd_command() + [
            "-n",
            "--pidfile=",
            f"--logfile={self.log_path}",
            "s3balance",
            "--config",
            str(self.config_path),
            "--listen",
            f"tcp:{self.port}:interface=127.0.0.1",
        ]
        self.process = subprocess.Popen(
            command,
            cwd=self.workdir,
            env=daemon_environment(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        if wait:
            self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until ``/health`` answers (any status), or fail with the log's tail."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(
                    f"s3balance exited with {self.process.returncode}:\n{self.output()}"
                )
            try:
                self.health()
                return
            except (OSError, urllib.error.URLError):
                time.sleep(0.1)
        raise RuntimeError(f"s3balance did not answer within {timeout}s:\n{self.log_tail()}")

    def health(self) -> dict[str, Any]:
        try:
            with urllib.request.urlopen(f"{self.endpoint}/health", timeout=5) as answer:
                return json.loads(answer.read())
        except urllib.error.HTTPError as error:  # 503 carries the same document
            return json.loads(error.read())

    def metrics(self, path: str = "/metrics") -> str:
        with urllib.request.urlopen(f"{self.endpoint}{path}", timeout=5) as answer:
            return answer.read().decode("utf-8")

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def wait(self, timeout: float = 30.0) -> int:
        """Wait for the process to exit; its status."""
        assert self.process is not None
        return self.process.wait(timeout)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; the exit status (None if never started)."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        if self.process.stdout is not None:
            self.process.stdout.close()
        return self.process.returncode

    def output(self) -> str:
        """What the process printed before logging started (usage errors, refusals)."""
        assert self.process is not None
        if self.process.stdout is None or self.process.poll() is None:
            return ""
        return self.process.stdout.read().decode("utf-8", "replace") + self.log_tail()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def __enter__(self) -> DaemonProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_twistd(
    workdir: str | Path, *args: str, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """Run ``twistd -n s3balance ARGS`` to completion (for refusals and ``--check-config``)."""
    return subprocess.run(
        twistd_command() + ["-n", "--pidfile=", "s3balance", *args],
        cwd=workdir,
        env=daemon_environment(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
