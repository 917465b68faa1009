"""An in-process s3balance for end-to-end tests: real store, real backends, real sockets.

:func:`start_daemon` builds the daemon's parts through the daemon's own composition root
(:class:`s3balance.components.Components`: the store on its thread pool, backends, monitors, pool,
gateway, the S3 front with its multipart handler and reserved resources, :class:`S3Site`), opens
the database and listens on ``127.0.0.1:0``.  The periodic services (probes, usage refresh,
counter flush, housekeeping) are built but not started: a test runs what it needs itself.  Boto3
calls are blocking: run them with :func:`in_thread` from trial tests while the reactor serves the
daemon.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from twisted.internet import defer, threads

from s3balance.backends.interface import IBackend
from s3balance.components import Components
from s3balance.config import BucketConfig, Config
from s3balance.db.store import MetadataStore
from s3balance.gateway import Gateway
from s3balance.health import HealthMonitor
from s3balance.pool import BackendPool
from s3balance.usage import UsageMonitor
from s3balance.web.resource import S3Resource
from s3balance.web.site import S3Site
from test.dbfixture import sqlite_url
from test.support import s3client

T = TypeVar("T")


def without_write_ids(real_keys: list[str]) -> list[str]:
    """``<bucket>/<key>`` of real keys (see :func:`s3balance.realkeys.new_real_key`), sorted."""
    from s3balance.realkeys import parse_real_key

    plain = []
    for real in real_keys:
        parsed = parse_real_key(real)
        if parsed is None or parsed.key is None:
            plain.append(real)
        else:
            plain.append(f"{parsed.bucket}/{parsed.key}")
    return sorted(plain)


def in_thread(function: Callable[..., T], *args: Any, **kwargs: Any) -> defer.Deferred[T]:
    """Run a blocking call (boto3, a raw socket) off the reactor thread."""
    return threads.deferToThread(function, *args, **kwargs)


@dataclass
class Daemon:
    """A started in-process daemon: its parts (:attr:`components`) and its listening port."""

    components: Components
    database_url: str
    port: Any = None
    cleanups: list[Callable[[], Any]] = field(default_factory=list)
    channels: list[Any] = field(default_factory=list)

    @property
    def config(self) -> Config:
        return self.components.config

    @property
    def store(self) -> MetadataStore:
        return self.components.store

    @property
    def backends(self) -> dict[str, IBackend]:
        return self.components.backends

    @property
    def health(self) -> HealthMonitor:
        return self.components.health

    @property
    def usage(self) -> UsageMonitor:
        return self.components.usage

    @property
    def pool(self) -> BackendPool:
        return self.components.pool

    @property
    def gateway(self) -> Gateway:
        return self.components.gateway

    @property
    def resource(self) -> S3Resource:
        return self.components.resource

    @property
    def site(self) -> S3Site:
        return self.components.site

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port.getHost().port}"

    @property
    def port_number(self) -> int:
        return int(self.port.getHost().port)

    def client(self, **config_options: Any) -> Any:
        """A boto3 client for the daemon: path style, no retries.

        ``request_checksum_calculation`` defaults to ``when_supported`` (boto3's default, the
        aws-chunked CRC32 trailer); pass ``"when_required"`` for plain bodies.
        """
        return s3client.boto3_client(
            self.endpoint,
            self.config.s3api.access_key or "anonymous-test",
            self.config.s3api.secret_key or "anonymous-secret",
            self.config.s3api.region,
            **config_options,
        )

    async def real_keys(self, backend: str, prefix: str = "") -> list[str]:
        """The real keys a backend holds (to check nothing was left behind)."""
        listed = await self.backends[backend].list_objects(prefix)
        return sorted(entry.key for entry in listed)

    async def stop(self) -> None:
        from twisted.internet import reactor, task

        await self.port.stopListening()
        # Clients keep connections alive: close them so the reactor is clean after the test.
        # A channel leaves ``channels`` when its connection is lost (``Protocol.connected`` is
        # never reset, so it cannot tell).
        for channel in list(self.channels):
            transport = getattr(channel, "transport", None)
            if transport is not None:
                transport.abortConnection()
        for _ in range(100):
            if not self.channels:
                break
            await task.deferLater(reactor, 0.01, lambda: None)
        for cleanup in reversed(self.cleanups):
            await defer.maybeDeferred(cleanup)
        await self.components.close()


def local_buckets(root: str, names: list[str], **options: Any) -> list[BucketConfig]:
    """Real buckets stored in local directories under ``root``."""
    return [BucketConfig(name=n, path=os.path.join(root, n), **options) for n in names]


def server_buckets(
    server: Any, names: list[str], real_names: list[str] | None = None, **options: Any
) -> list[BucketConfig]:
    """Real buckets on a running S3 server of the tests (SeaweedFS, moto), created here.

    :param real_names: the buckets' names on the server (default: ``names``).
    """
    configs = []
    for name, real in zip(names, real_names or names, strict=True):
        server.create_bucket(real)
        configs.append(
            BucketConfig(
                name=name,
                bucket=None if real_names is None else real,
                endpoint=server.endpoint,
                region=server.region,
                access_key_id=server.access_key,
                secret_access_key=server.secret_key,
                path_style=True,
                use_ssl=False,
                **options,
            )
        )
    return configs


def seaweed_buckets(weed: Any, names: list[str], **options: Any) -> list[BucketConfig]:
    """Real buckets on a running SeaweedFS (created here)."""
    return server_buckets(weed, names, **options)


async def start_daemon(
    workdir: str,
    real_buckets: list[BucketConfig],
    virtual_buckets: tuple[str, ...] = ("vb",),
    strategy: str = "round-robin",
    configure: Callable[[Config], None] | None = None,
    reactor: Any = None,
    database_url: str | None = None,
) -> Daemon:
    """Build and start a daemon; call :meth:`Daemon.stop` when done.

    Signatures are checked when ``configure`` sets ``s3api.auth_required`` (keys from ``s3api``).

    :param database_url: share this database (another daemon's :attr:`Daemon.database_url`)
        instead of a new SQLite file.
    """
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    config = Config(data_dir=workdir)
    config.buckets = list(real_buckets) + [
        BucketConfig(name=name, virtual=True) for name in virtual_buckets
    ]
    config.balancer.strategy = strategy
    config.balancer.retry_delay = 0.01
    config.server.read_timeout = 5.0
    if configure is not None:
        configure(config)

    url = database_url or sqlite_url(workdir)  # a copy of a migrated file: no migration here
    components = Components(config, reactor, database_url=url)
    daemon = Daemon(components, url)
    try:
        await components.open()
    except BaseException:
        await components.close()
        raise
    site = components.site
    build = site.buildProtocol

    def tracked(address: Any) -> Any:
        channel = build(address)
        if channel is not None:
            daemon.channels.append(channel)
            lose = channel.connectionLost

            def connectionLost(reason: Any) -> None:
                daemon.channels.remove(channel)
                lose(reason)

            channel.connectionLost = connectionLost
        return channel

    site.buildProtocol = tracked  # type: ignore[method-assign]
    daemon.port = reactor.listenTCP(0, site, interface="127.0.0.1")
    return daemon


class InProcessDaemon:
    """Mixin for ``twisted.trial.unittest.TestCase``: ``self.daemon`` runs over the real buckets of
    :meth:`real_bucket_configs` (local directories named ``backend_names`` by default) in a fresh
    temporary directory, stopped and removed at cleanup; ``self.gateway`` and ``self.store`` are
    its own."""

    backend_names = ["r1", "r2"]
    workdir: str
    daemon: Daemon
    gateway: Gateway
    store: MetadataStore

    def configure(self, config: Config) -> None:
        """Change the configuration before the daemon starts (nothing by default)."""

    def real_bucket_configs(self, workdir: str) -> list[BucketConfig]:
        return local_buckets(workdir, self.backend_names)

    async def start(self) -> None:
        import shutil
        import tempfile

        self.workdir = tempfile.mkdtemp(prefix="s3b-test-")
        self.addCleanup(shutil.rmtree, self.workdir, True)  # type: ignore[attr-defined]
        self.daemon = await start_daemon(
            self.workdir, self.real_bucket_configs(self.workdir), configure=self.configure
        )
        self.addCleanup(  # type: ignore[attr-defined]
            lambda: defer.ensureDeferred(self.daemon.stop())
        )
        self.gateway = self.daemon.gateway
        self.store = self.daemon.store

    def setUp(self) -> defer.Deferred[None]:
        return defer.ensureDeferred(self.start())


class DaemonTestCase(InProcessDaemon):
    """:class:`InProcessDaemon`, and ``self.s3`` a boto3 client with boto3's default settings
    (aws-chunked uploads with a CRC32 trailer)."""

    client_options: dict[str, Any] = {}

    async def start(self) -> None:
        await super().start()
        self.s3 = self.daemon.client(**self.client_options)

    def call(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> defer.Deferred[T]:
        """A blocking (boto3) call, run off the reactor thread.

        A streamed ``Body`` in the answer is read in that thread too (reading it on the reactor
        thread would block the daemon that is sending it) and replaced by an in-memory file.
        """

        def run() -> T:
            import io

            result = function(*args, **kwargs)
            if isinstance(result, dict) and hasattr(result.get("Body"), "read"):
                result["Body"] = io.BytesIO(result["Body"].read())
            return result

        return in_thread(run)

    def error_of(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a boto3 call expected to fail; fires with ``(code, status, response)``."""
        from botocore.exceptions import ClientError

        def run() -> tuple[str, int, dict[str, Any]]:
            try:
                function(*args, **kwargs)
            except ClientError as error:
                response = error.response
                return (
                    response["Error"].get("Code", ""),
                    response["ResponseMetadata"]["HTTPStatusCode"],
                    response,
                )
            raise AssertionError(f"{function} succeeded")

        return in_thread(run)

    async def backend_keys(self) -> dict[str, list[str]]:
        return {name: await self.daemon.real_keys(name) for name in self.backend_names}
