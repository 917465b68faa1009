"""A running daemon core for the admin API and reload tests.

It is wired the way :class:`s3balance.app.S3BalanceService` wires its parts (the monitors ask
``service.backends`` at every round, so a reload's new backend set is followed), minus the S3
listener: real SQLite store, real local-directory backends, real monitors, pool and gateway.
``S3BalanceService`` itself could not be imported while these tests were written; now that it
can, :func:`start_service` could build it instead (it needs ``listen=[]`` and no reactor stop).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer, reactor
from twisted.web.client import HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import Site

from s3balance.admin.api import AdminResource
from s3balance.admin.reload import close_retired
from s3balance.backends.factory import make_backend
from s3balance.backends.interface import IBackend
from s3balance.config import BucketConfig, Config
from s3balance.db.store import MetadataStore
from s3balance.gateway import Gateway
from s3balance.health import HealthMonitor
from s3balance.placement import make_strategy
from s3balance.pool import BackendPool
from s3balance.usage import UsageMonitor
from test.dbfixture import make_store

TOKEN = "admin-token-1234"


@dataclass
class CoreService:
    """The attributes the admin API and ``apply_config`` use, as the daemon has them."""

    config: Config
    store: MetadataStore
    reactor: Any
    http_pool: HTTPConnectionPool
    config_path: str | None = None
    backends: dict[str, IBackend] = field(default_factory=dict)
    health: HealthMonitor = field(init=False)
    usage: UsageMonitor = field(init=False)
    pool: BackendPool = field(init=False)
    gateway: Gateway = field(init=False)

    def __post_init__(self) -> None:
        config = self.config
        self.backends = {
            b.name: make_backend(b, self.reactor, config.data_dir, self.http_pool)
            for b in config.real_buckets
        }
        self.health = HealthMonitor(
            lambda: self.backends, clock=self.reactor, period=3600.0, probe_timeout=5.0
        )
        self.usage = UsageMonitor(self.store, lambda: self.backends, self.reactor, 3600.0)
        self.pool = BackendPool(
            self.backends,
            {b.name: b for b in config.real_buckets},
            make_strategy(config.balancer.strategy),
            self.health,
            self.usage,
            store=self.store,
            clock=self.reactor,
            flush_period=3600.0,
        )
        self.gateway = Gateway(
            store=self.store,
            pool=self.pool,
            health=self.health,
            usage=self.usage,
            clock=self.reactor,
            config=config,
        )

    def __hash__(self) -> int:  # reload keeps per-daemon state in weak dictionaries
        return id(self)


def service_config(workdir: str, names: tuple[str, ...] = ("r1", "r2")) -> Config:
    config = Config(data_dir=workdir)
    config.buckets = [BucketConfig(name=n, path=os.path.join(workdir, n)) for n in names]
    config.buckets.append(BucketConfig(name="photos", virtual=True))
    config.api.enabled = True
    config.api.token = TOKEN
    config.balancer.strategy = "round-robin"
    return config


async def start_service(testcase: Any, config: Config) -> CoreService:
    """A started core whose cleanup (monitors, retired and current backends, store) is
    registered on ``testcase``."""
    store, release_store = make_store(testcase)
    testcase.addCleanup(release_store)
    http_pool = HTTPConnectionPool(reactor, persistent=False)
    service = CoreService(config, store, reactor, http_pool)
    for bucket in config.virtual_buckets:
        await store.create_bucket(bucket.name, reactor.seconds(), from_config=True)
    for monitor in (service.health, service.usage, service.pool):
        monitor.startService()

    async def stop() -> None:
        for monitor in (service.health, service.usage, service.pool):
            await defer.maybeDeferred(monitor.stopService)
        await close_retired(service)  # type: ignore[arg-type]
        for backend in service.backends.values():
            await backend.close()
        await http_pool.closeCachedConnections()

    testcase.addCleanup(lambda: defer.ensureDeferred(stop()))
    await service.health.probe_now()
    await service.usage.refresh()
    return service


def listen_admin(testcase: Any, service: CoreService) -> str:
    """Serve the admin resource at ``/api`` on a loopback port; returns the base URL."""
    root = Resource()
    root.putChild(b"api", AdminResource(service))  # type: ignore[arg-type]
    site = Site(root)
    port = reactor.listenTCP(0, site, interface="127.0.0.1")  # type: ignore[attr-defined]
    testcase.addCleanup(port.stopListening)
    return f"http://127.0.0.1:{port.getHost().port}/api"
