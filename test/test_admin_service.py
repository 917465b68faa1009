"""A running daemon core for the admin API and reload tests.

Built by the daemon's own composition root (:class:`s3balance.components.Components`) over a real
SQLite store and real local-directory backends, with the monitors and the pool running, minus
the listener: each test serves the parts it needs (:func:`listen_admin`, or the whole front).
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import defer, reactor
from twisted.web.resource import Resource
from twisted.web.server import Site

from s3balance.admin.api import AdminResource
from s3balance.components import Components
from s3balance.config import BucketConfig, Config
from test.dbfixture import sqlite_url

TOKEN = "admin-token-1234"


def service_config(workdir: str, names: tuple[str, ...] = ("r1", "r2")) -> Config:
    config = Config(data_dir=workdir)
    config.buckets = [BucketConfig(name=n, path=os.path.join(workdir, n)) for n in names]
    config.buckets.append(BucketConfig(name="photos", virtual=True))
    config.api.enabled = True
    config.api.token = TOKEN
    config.balancer.strategy = "round-robin"
    # Probes and usage refreshes run when a test asks (start_service runs one of each).
    config.balancer.health_check_period = 3600.0
    config.balancer.update_stats_period = 3600.0
    return config


async def start_service(
    testcase: Any, config: Config, config_path: str | None = None
) -> Components:
    """A started core whose cleanup (monitors, retired and current backends, store) is
    registered on ``testcase``."""
    service = Components(
        config, reactor, config_path=config_path, database_url=sqlite_url(testcase)
    )
    await service.open()
    monitors = (service.health, service.usage, service.pool)
    for monitor in monitors:
        monitor.startService()

    async def stop() -> None:
        for monitor in monitors:
            await defer.maybeDeferred(monitor.stopService)
        await service.close()

    testcase.addCleanup(lambda: defer.ensureDeferred(stop()))
    await service.health.probe_now()
    await service.usage.refresh()
    return service


def listen_admin(testcase: Any, service: Components) -> str:
    """Serve the admin resource at ``/api`` on a loopback port; returns the base URL."""
    root = Resource()
    root.putChild(b"api", AdminResource(service, service.changes))
    site = Site(root)
    port = reactor.listenTCP(0, site, interface="127.0.0.1")  # type: ignore[attr-defined]
    testcase.addCleanup(port.stopListening)
    return f"http://127.0.0.1:{port.getHost().port}/api"
