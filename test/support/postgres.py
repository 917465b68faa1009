"""A private PostgreSQL server (its own cluster, port and directory) for tests that stop it.

The suite's PostgreSQL on 127.0.0.1:5432 is shared by every test, and by parallel test workers
at once: a test that stops or restarts the server itself starts this one instead, so that no
other test meets the outage.  It is the same PostgreSQL build (Debian's ``initdb``/``pg_ctl``),
run as the ``postgres`` user when the tests run as root (PostgreSQL refuses to run as root).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from test.support import free_port

START_TIMEOUT = 60


def postgres_bin_dir() -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` holding ``initdb`` and ``pg_ctl``."""
    root = Path("/usr/lib/postgresql")
    if not root.is_dir():
        return None
    found = [
        path / "bin"
        for path in root.iterdir()
        if (path / "bin" / "initdb").exists() and (path / "bin" / "pg_ctl").exists()
    ]
    if not found:
        return None
    return max(found, key=lambda path: [int(p) for p in path.parent.name.split(".") if p.isdigit()])


class PrivatePostgres:
    """One PostgreSQL cluster in a temporary directory, trust auth for ``postgres`` on loopback.

    :param bin_dir: where ``initdb`` and ``pg_ctl`` are (see :func:`postgres_bin_dir`).
    """

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.port = free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="s3balance-pg-"))
        self.data_dir = self.directory / "data"
        self.log_path = self.directory / "postgres.log"

    @property
    def server_url(self) -> str:
        """Like :data:`test.dbfixture.POSTGRES_SERVER`: no database name."""
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}"

    def _run(self, *command: str, timeout: float = START_TIMEOUT) -> None:
        prefix: list[str] = []
        if os.geteuid() == 0:
            prefix = ["runuser", "-u", "postgres", "--"]
        done = subprocess.run(
            [*prefix, *command], capture_output=True, timeout=timeout, cwd=self.directory
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"{' '.join(command)} failed ({done.returncode}):\n"
                f"{done.stdout.decode(errors='replace')}{done.stderr.decode(errors='replace')}\n"
                f"{self.log_tail()}"
            )

    def log_tail(self) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-20:])
        except OSError:
            return "(no log)"

    def start(self) -> None:
        """Create the cluster on first use, then start it and wait until it takes connections."""
        if os.geteuid() == 0:
            entry = pwd.getpwnam("postgres")
            os.chown(self.directory, entry.pw_uid, entry.pw_gid)
        if not self.data_dir.exists():
            self._run(
                str(self.bin_dir / "initdb"),
                "-D", str(self.data_dir),
                "-U", "postgres",
                "-A", "trust",
                "-E", "UTF8",
                "--no-sync",
            )  # fmt: skip
        self.ctl("start")

    def ctl(self, action: str) -> None:
        """``pg_ctl start|stop|restart`` (stops in fast mode: clients are cut off at once)."""
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.directory} -c fsync=off"
        command = [str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-w"]
        command += ["-t", str(START_TIMEOUT), "-l", str(self.log_path)]
        if action in ("start", "restart"):
            command += ["-o", options]
        if action in ("stop", "restart"):
            command += ["-m", "fast"]
        self._run(*command, action, timeout=START_TIMEOUT + 10)

    def destroy(self) -> None:
        """Stop the server (if running) and remove its directory."""
        try:
            self.ctl("stop")
        except RuntimeError:
            pass  # not running
        shutil.rmtree(self.directory, ignore_errors=True)
