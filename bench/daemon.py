"""The real s3balance daemon (``twistd -n s3balance``) as a child process before the backend."""

from __future__ import annotations

import compileall
import os
import sys

import yaml

from bench.nginx import BACKEND_BUCKET
from bench.procs import LOOPBACK, LoopbackServer, ServerProcess, free_port

#: The virtual bucket clients of the bench use.
VIRTUAL_BUCKET = "bench-virtual"

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def daemon_config(
    workdir: str,
    port: int,
    backend_url: str,
    local_root: str | None = None,
    key_pair: tuple[str, str] | None = None,
    workers: int = 1,
    database_url: str | None = None,
) -> dict[str, object]:
    """One real bucket (the nginx backend, path style), one virtual bucket, SQLite, no auth.

    Health probes and usage refreshes keep their normal periods: they are part of what the
    daemon does while it serves.

    :param local_root: when set, the real bucket is this local directory instead of nginx (the
        ``--s3balance-backend local`` diagnostic: s3balance's own file backend, no S3 adapter).
    :param workers: ``server.workers`` (a supervisor and that many worker processes when above 1).
    :param database_url: a SQLAlchemy URL of a PostgreSQL or MariaDB database instead of SQLite.
    """
    real: dict[str, object] = {
        "name": "nginx-backend",
        "bucket": BACKEND_BUCKET,
        "endpoint": backend_url,
        "region": "us-east-1",
        "access_key_id": "bench",
        "secret_access_key": "bench-secret",
        "path_style": True,
        "use_ssl": False,
    }
    if local_root is not None:
        real = {"name": "local-backend", "path": local_root}
    s3api: dict[str, object] = {"auth_required": False}
    if key_pair is not None:
        s3api = {"auth_required": True, "access_key": key_pair[0], "secret_key": key_pair[1]}
    database = {"type": "sqlite", "dsn": os.path.join(workdir, "s3balance.db")}
    if database_url is not None:
        kind = "postgres" if database_url.startswith("postgresql") else "mysql"
        database = {"type": kind, "dsn": database_url}
    return {
        # Replaced bytes are deleted once their last local reader is done, as one worker on
        # SQLite does by default: otherwise (the default 60 s with several workers or a database
        # server) a PUT would leave its deletion to housekeeping sweeps during later runs.
        "server": {"host": LOOPBACK, "port": port, "workers": workers, "delete_grace": 0},
        "database": database,
        "data_dir": os.path.join(workdir, "s3balance-data"),
        "buckets": [real, {"name": VIRTUAL_BUCKET, "virtual": True}],
        "s3api": s3api,
    }


def compile_checkout() -> None:
    """Write the bytecode of this checkout's daemon, as installing a package does.

    With ``PYTHONDONTWRITEBYTECODE`` set (as in some CI and sandbox environments) a daemon
    started from a checkout would compile every module of s3balance from source at each start;
    the compiler's garbage then stays in the daemon's heap, about 1 MiB of the peak the bench
    reports, which an installed daemon (``pip install`` writes the bytecode) never holds.  Only
    modules whose bytecode is missing or stale are compiled.
    """
    for directory in ("s3balance", os.path.join("twisted", "plugins")):
        compileall.compile_dir(os.path.join(REPO_ROOT, directory), quiet=1)


class S3BalanceDaemon(LoopbackServer):
    """``twistd -n --pidfile= s3balance --config FILE`` run with the venv's python.

    The process started is twistd's python itself, so its ``/proc`` entry measures the daemon
    (with ``workers`` above 1, the supervisor: its workers are its child processes).
    """

    ready_path = f"/{VIRTUAL_BUCKET}"
    stop_grace = 10.0

    def __init__(
        self,
        workdir: str,
        backend_url: str,
        local_root: str | None = None,
        key_pair: tuple[str, str] | None = None,
        workers: int = 1,
        database_url: str | None = None,
    ) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.config_path = os.path.join(workdir, "s3balance.yaml")
        config = daemon_config(
            workdir, self.port, backend_url, local_root, key_pair, workers, database_url
        )
        with open(self.config_path, "w") as f:
            yaml.safe_dump(config, f, sort_keys=False)
        compile_checkout()
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        env = dict(os.environ)
        # twistd finds the ``s3balance`` plugin in the repo's twisted/plugins only when the repo is
        # on sys.path (the editable install's import hook does not list plugin directories).
        env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, env.get("PYTHONPATH", "")) if p)
        self.server = ServerProcess(
            "s3balance",
            [twistd, "-n", "--pidfile=", "s3balance", "--config", self.config_path],
            os.path.join(workdir, "s3balance.log"),
            cwd=workdir,
            env=env,
        )

    def log_tail(self, lines: int = 30) -> str:
        return self.server.log_tail(lines)
