"""What the running daemon has imported: heavy modules it does not need must stay out.

Every module imported stays resident for the daemon's life.  The daemon is started the way users
start it (twistd's ``run()``, the ``s3balance`` plugin, a configuration file: SQLite, an S3 backend
and a virtual bucket) in a child process, which writes ``sys.modules`` once the daemon says it is
listening.  A failure names the module and the chain of imports to look at.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import yaml

from test.support import free_port
from test.support.process import daemon_environment

#: Package prefixes the daemon must not import at start, and why.
FORBIDDEN = {
    # Backend requests are signed by s3balance.backends.s3signing (tested against botocore).
    "botocore": "S3 signing (botocore, urllib3, dateutil: ~4 MiB)",
    "boto3": "S3 signing",
    "urllib3": "botocore",
    "dateutil": "botocore",
    "jmespath": "botocore",
    # CRC32C and CRC64NVME: loaded when a request first needs one (~7 MiB resident).
    "awscrt": "s3balance.auth.checksums, on first use",
    # A schema at head is recognised without Alembic; upgrades run in a child process.
    "alembic": "migrations (~10 MiB with Mako)",
    "mako": "migrations",
    # model.py gives MySQL its table options at CREATE time only (its dialect is ~1 MiB).
    "sqlalchemy.dialects.mysql": "a MySQL dialect in a SQLite daemon",
    "sqlalchemy.dialects.postgresql": "a PostgreSQL dialect in a SQLite daemon",
    "sqlalchemy.orm": "the ORM (the store is SQLAlchemy Core)",
    "treq": "an HTTP client the backends do not use",
    # Test tooling.
    "hypothesis": "tests only",
    "pytest": "tests only",
    "moto": "tests only",
}

SCRIPT = textwrap.dedent(
    """
    import json, os, sys, threading
    from twisted.logger import globalLogPublisher
    from twisted.scripts.twistd import run

    out = sys.argv[1]
    sys.argv = ["twistd", "-n", "--pidfile=", "s3balance", "--config", sys.argv[2]]

    def listening(event):
        if event.get("log_format", "").startswith("s3balance listening on"):
            from twisted.internet import reactor

            with open(out, "w") as f:
                json.dump(sorted(sys.modules), f)
            reactor.callLater(0, reactor.stop)

    globalLogPublisher.addObserver(listening)
    watchdog = threading.Timer(90, os._exit, (3,))  # a daemon that never listens
    watchdog.daemon = True
    watchdog.start()
    run()
    """
)


def imported_by_daemon(tmp_path: Path) -> list[str]:
    config = {
        "server": {"host": "127.0.0.1", "port": free_port()},
        "database": {"type": "sqlite", "dsn": str(tmp_path / "meta.db")},
        "data_dir": str(tmp_path / "data"),
        "buckets": [
            {
                # Nothing listens there: the health probe fails, which is fine here.
                "name": "s3-backend",
                "bucket": "real",
                "endpoint": f"http://127.0.0.1:{free_port()}",
                "region": "us-east-1",
                "access_key_id": "AKID",
                "secret_access_key": "secret",
                "path_style": True,
            },
            {"name": "virtual", "virtual": True},
        ],
        "s3api": {"auth_required": False},
    }
    config_path = tmp_path / "s3balance.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    out = tmp_path / "modules.json"
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(out), str(config_path)],
        cwd=tmp_path,
        env=daemon_environment(),
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 0 and out.exists(), (done.stdout + done.stderr).decode()[-4000:]
    modules: list[str] = json.loads(out.read_text())
    return modules


def test_the_daemon_does_not_import_what_it_does_not_need(tmp_path: Path) -> None:
    modules = imported_by_daemon(tmp_path)
    assert "s3balance.backends.s3" in modules  # the S3 adapter was set up
    found = {
        name: why
        for name in modules
        for prefix, why in FORBIDDEN.items()
        if name == prefix or name.startswith(prefix + ".")
    }
    assert not found, (
        "the daemon imported modules it must not load at start (find the importer with "
        "python -X importtime): "
        + ", ".join(f"{name} ({why})" for name, why in sorted(found.items()))
    )
