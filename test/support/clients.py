"""Real S3 clients (rclone, awscli, s3cmd, boto3) against a real daemon process with auth on.

:class:`ClientDaemon` is ``twistd -n s3balance`` over two real buckets on the shared SeaweedFS,
signatures required, the admin API on, SQLite (or any database URL) as the store.  The ``run_*``
helpers run one client command as a subprocess with a hard time limit, an environment holding
only our key pair (no user configuration, no ``AWS_CA_BUNDLE``: rclone refuses plain-HTTP
endpoints with it) and print what ran, so a failing CI log shows the exact command and output.

:func:`check_consistency` is the "nothing left behind" check: the store's rows against what each
real bucket holds, listed directly on SeaweedFS, without going through the daemon.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred

from test.support import require_tool, s3client, unique_bucket_name
from test.support.process import DaemonProcess
from test.support.seaweedfs import SeaweedFS

ACCESS_KEY = "CLIENTSKEY"
SECRET_KEY = "clients-secret-0123456789"
ADMIN_TOKEN = "clients-admin-token"
#: The virtual bucket every client daemon declares.
VIRTUAL = "vbucket"
#: Hard limit of one client command; well under every test's own timeout.
COMMAND_TIMEOUT = 60.0


# -- the daemon ----------------------------------------------------------------------------------


class ClientDaemon(DaemonProcess):
    """A daemon process with auth on over ``backend_count`` new buckets of ``weed``.

    :param database_url: the store; default a SQLite file in ``workdir``.
    :param virtual_buckets: declared in the configuration (clients may create more).
    :param port: to share one configuration between several daemons, give each its own port.
    :param delete_grace: ``server.delete_grace``.
    """

    def __init__(
        self,
        workdir: str | Path,
        weed: SeaweedFS,
        backend_count: int = 2,
        database_url: str | None = None,
        virtual_buckets: Sequence[str] = (VIRTUAL,),
        strategy: str = "round-robin",
        real_buckets: Mapping[str, str] | None = None,
        port: int | None = None,
        delete_grace: str = "0s",
    ) -> None:
        workdir = Path(workdir)
        self.weed = weed
        if real_buckets is None:
            real_buckets = {}
            for index in range(backend_count):
                real = unique_bucket_name(f"cl{index}")
                weed.create_bucket(real)
                real_buckets = {**real_buckets, f"weed{index}": real}
        #: backend name -> bucket name on SeaweedFS
        self.real_buckets: dict[str, str] = dict(real_buckets)
        self.database_url = database_url or f"sqlite:///{workdir / 'meta.db'}"
        config: dict[str, Any] = {
            "database": {"dsn": self.database_url, "type": _database_type(self.database_url)},
            "buckets": [
                {
                    "name": name,
                    "bucket": real,
                    "endpoint": weed.endpoint,
                    "region": weed.region,
                    "access_key_id": weed.access_key,
                    "secret_access_key": weed.secret_key,
                    "path_style": True,
                }
                for name, real in self.real_buckets.items()
            ]
            + [{"name": name, "virtual": True} for name in virtual_buckets],
            "s3api": {"auth_required": True, "access_key": ACCESS_KEY, "secret_key": SECRET_KEY},
            "api": {"enabled": True, "token": ADMIN_TOKEN},
            # Replaced bytes go at once, so the inventory right after a load is exact.
            "server": {"delete_grace": delete_grace},
            "balancer": {
                "strategy": strategy,
                "update_stats_period": "1s",
                "retry_delay": "100ms",
            },
        }
        super().__init__(workdir, config, port=port)

    def admin(self, path: str) -> Any:
        """``GET /api/<path>`` as JSON."""
        request = urllib.request.Request(
            f"{self.endpoint}/api/{path}", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            return json.loads(answer.read())

    def admin_usage(self) -> dict[str, tuple[int, int]]:
        """``{backend: (used_bytes, object_count)}`` as ``GET /api/buckets`` reports them."""
        return {
            bucket["name"]: (bucket["used_bytes"], bucket["object_count"])
            for bucket in self.admin("buckets")["buckets"]
            if not bucket["virtual"]
        }

    def client(self, **config_options: Any) -> Any:
        return boto3_client(self.endpoint, **config_options)


def _database_type(url: str) -> str:
    if url.startswith("postgresql"):
        return "postgres"
    if url.startswith("mysql"):
        return "mysql"
    return "sqlite"


def boto3_client(endpoint: str, **config_options: Any) -> Any:
    """A boto3 client with our key pair; daemons under real clients get longer timeouts."""
    options: dict[str, Any] = {"connect_timeout": 10, "read_timeout": 60}
    options.update(config_options)
    return s3client.boto3_client(endpoint, ACCESS_KEY, SECRET_KEY, **options)


def client_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Our key pair and nothing of the user's: no ``AWS_*``, no rclone/aws config files."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RCLONE_"))}
    env.update(
        AWS_ACCESS_KEY_ID=ACCESS_KEY,
        AWS_SECRET_ACCESS_KEY=SECRET_KEY,
        AWS_DEFAULT_REGION="us-east-1",
        AWS_CONFIG_FILE="/dev/null",
        AWS_SHARED_CREDENTIALS_FILE="/dev/null",
        AWS_EC2_METADATA_DISABLED="true",
        RCLONE_CONFIG="/dev/null",
    )
    env.update(extra or {})
    return env


def run_client(
    args: Sequence[str],
    env: Mapping[str, str] | None = None,
    check: bool = True,
    cwd: str | Path | None = None,
    timeout: float = COMMAND_TIMEOUT,
) -> subprocess.CompletedProcess[bytes]:
    """Run one client command; with ``check`` a failure raises with the command and its output."""
    print("$", " ".join(str(a) for a in args))
    result = subprocess.run(
        [str(a) for a in args],
        env=dict(env) if env is not None else client_environment(),
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=timeout,
        cwd=cwd,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(str(a) for a in args)} exited with {result.returncode}\n"
            f"stdout: {result.stdout.decode(errors='replace')[-3000:]}\n"
            f"stderr: {result.stderr.decode(errors='replace')[-3000:]}"
        )
    return result


def aws_binary() -> str:
    """awscli (v1) from the test extra, next to the interpreter running the tests."""
    return require_tool("aws")


def aws(endpoint: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    """``aws --endpoint-url ENDPOINT ARGS`` with our keys."""
    return run_client([aws_binary(), "--endpoint-url", endpoint, *args], check=check)


def aws_json(endpoint: str, *args: str) -> Any:
    """An ``aws s3api`` call's JSON answer (``{}`` for calls that print nothing)."""
    out = aws(endpoint, *args, "--output", "json").stdout
    return json.loads(out) if out.strip() else {}


def rclone_environment(endpoint: str, remote: str = "S3B") -> dict[str, str]:
    """A remote named ``remote`` configured only through environment variables."""
    prefix = f"RCLONE_CONFIG_{remote}_"
    return client_environment(
        {
            prefix + "TYPE": "s3",
            prefix + "PROVIDER": "Other",
            prefix + "ENDPOINT": endpoint,
            prefix + "ACCESS_KEY_ID": ACCESS_KEY,
            prefix + "SECRET_ACCESS_KEY": SECRET_KEY,
            prefix + "REGION": "us-east-1",
            prefix + "FORCE_PATH_STYLE": "true",
        }
    )


def rclone(endpoint: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    """``rclone ARGS`` against the remote ``S3B:`` pointing at ``endpoint``."""
    return run_client(
        ["rclone", "--retries", "1", "--low-level-retries", "1", *args],
        env=rclone_environment(endpoint),
        check=check,
    )


def write_s3cmd_config(path: str | Path, port: int) -> Path:
    """An s3cmd configuration for a path-style, plain-HTTP endpoint on loopback."""
    path = Path(path)
    path.write_text(
        "[default]\n"
        f"access_key = {ACCESS_KEY}\n"
        f"secret_key = {SECRET_KEY}\n"
        f"host_base = 127.0.0.1:{port}\n"
        f"host_bucket = 127.0.0.1:{port}\n"
        "bucket_location = us-east-1\n"
        "use_https = False\n"
        "signature_v2 = False\n"
        "check_ssl_certificate = False\n"
        "guess_mime_type = True\n"
        "progress_meter = False\n"
    )
    return path


def s3cmd(config: str | Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    return run_client(["s3cmd", "--config", str(config), *args], check=check)


def client_versions() -> dict[str, str]:
    """The version of every client these tests run, for the README's Compatibility section."""
    import boto3
    import botocore

    def first_line(args: list[str]) -> str:
        try:
            result = subprocess.run(args, capture_output=True, timeout=30, text=True)
        except OSError as error:
            return f"not available ({error})"
        return (result.stdout or result.stderr).strip().splitlines()[0]

    return {
        "rclone": first_line(["rclone", "version"]),
        "awscli": first_line([aws_binary(), "--version"]),
        "s3cmd": first_line(["s3cmd", "--version"]),
        "boto3": boto3.__version__,
        "botocore": botocore.__version__,
    }


# -- consistency ---------------------------------------------------------------------------------


def result_of(deferred: Deferred[Any]) -> Any:
    """The result of an already fired Deferred (the store on an inline pool)."""
    results: list[Any] = []
    deferred.addBoth(results.append)
    assert results, "the Deferred has not fired"
    outcome = results[0]
    if hasattr(outcome, "raiseException"):
        outcome.raiseException()
    return outcome


@dataclass
class Inventory:
    """What the store says and what the real buckets hold, side by side."""

    #: (backend, real key) -> (size, quoted etag), from the real buckets.
    held: dict[tuple[str, str], tuple[int, str]] = field(default_factory=dict)
    #: (backend, real key) -> (size, quoted etag), from the store's object rows.
    recorded: dict[tuple[str, str], tuple[int, str]] = field(default_factory=dict)
    #: (backend, real key) referenced by rows or uploads (``store.locations_on``).
    referenced: set[tuple[str, str]] = field(default_factory=set)
    #: backend -> (used bytes, object count) from ``store.usage()``.
    usage: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: backend -> uploads in progress on the real bucket.
    backend_uploads: dict[str, list[str]] = field(default_factory=dict)
    #: (virtual bucket, key) of uploads in progress in the store.
    store_uploads: list[tuple[str, str]] = field(default_factory=list)

    def held_usage(self) -> dict[str, tuple[int, int]]:
        totals: dict[str, tuple[int, int]] = {}
        for (backend, _key), (size, _etag) in self.held.items():
            used, count = totals.get(backend, (0, 0))
            totals[backend] = (used + size, count + 1)
        return totals

    def problems(self, backends: Sequence[str]) -> list[str]:
        """Every way the store and the real buckets disagree; empty when they agree exactly."""
        found: list[str] = []
        for location in sorted(set(self.held) - self.referenced):
            found.append(f"orphan: {location} is on the backend but no row references it")
        for location in sorted(self.referenced - set(self.held)):
            found.append(f"dangling: {location} is referenced but not on the backend")
        for location, (size, etag) in sorted(self.recorded.items()):
            if location in self.held and self.held[location] != (size, etag):
                found.append(
                    f"mismatch: {location} recorded as {(size, etag)}, "
                    f"backend holds {self.held[location]}"
                )
        held_usage = self.held_usage()
        for backend in backends:
            recorded = self.usage.get(backend, (0, 0))
            held = held_usage.get(backend, (0, 0))
            if recorded != held:
                found.append(f"usage: store says {backend} holds {recorded}, it holds {held}")
        for backend, uploads in sorted(self.backend_uploads.items()):
            if uploads:
                found.append(f"uploads left on {backend}: {uploads}")
        if self.store_uploads:
            found.append(f"uploads left in the store: {self.store_uploads}")
        return found


def take_inventory(
    database_url: str, weed: SeaweedFS, real_buckets: Mapping[str, str], workdir: str | Path
) -> Inventory:
    """Read every row of the store and list every real bucket directly on SeaweedFS."""
    from test.dbfixture import make_store

    inventory = Inventory()
    s3 = weed.boto3_client()
    for backend, real in real_buckets.items():
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=real):
            for entry in page.get("Contents", []):
                inventory.held[(backend, entry["Key"])] = (entry["Size"], entry["ETag"])
        uploads = s3.list_multipart_uploads(Bucket=real).get("Uploads", [])
        inventory.backend_uploads[backend] = [u["Key"] for u in uploads]

    store, cleanup = make_store(workdir, url=database_url, inline=True)
    try:
        for bucket in result_of(store.list_buckets()):
            after = ""
            for _ in range(100_000):
                page = result_of(store.list_objects(bucket.name, start_after=after, max_keys=1000))
                for record in page.objects:
                    for location in record.locations:
                        place = (location.backend, location.real_key)
                        inventory.recorded[place] = (record.size, record.etag)
                if not page.is_truncated:
                    break
                after = page.next_marker
            uploads = result_of(store.list_uploads(bucket.name, max_uploads=1000)).uploads
            inventory.store_uploads.extend((u.bucket, u.key) for u in uploads)
        for backend in real_buckets:
            for key in result_of(store.locations_on(backend)):
                inventory.referenced.add((backend, key))
        inventory.usage = {
            name: (usage.used_bytes, usage.object_count)
            for name, usage in result_of(store.usage()).items()
        }
    finally:
        cleanup()
    return inventory


def assert_nothing_left_behind(daemon: ClientDaemon) -> Inventory:
    """The store and the real buckets agree exactly: no orphan, no dangling row, same sizes and
    ETags, usage equal to what is held, no multipart upload left anywhere."""
    inventory = take_inventory(
        daemon.database_url, daemon.weed, daemon.real_buckets, daemon.workdir / "inventory"
    )
    problems = inventory.problems(list(daemon.real_buckets))
    assert not problems, "\n".join(problems)
    return inventory
