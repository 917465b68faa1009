"""The composition root: what :class:`s3balance.components.Components` wires, and that a reload
through its reconfigurator reaches every part that reads the configuration."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer, reactor
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import TestCase

from s3balance.admin.api import AdminResource
from s3balance.admin.reload import Reconfigurator
from s3balance.components import METRICS_MAX_CONNECTIONS, Components, Storage
from s3balance.config import Config
from s3balance.health import HealthMonitor
from s3balance.metrics import MetricsResource
from s3balance.web.health import HealthResource
from s3balance.web.multipart import MultipartHandler
from s3balance.worker import EveryWorker
from test.dbfixture import sqlite_url
from test.test_admin_service import service_config


def daemon_config(workdir: str | Path, names: tuple[str, ...] = ("r1", "r2")) -> Config:
    """Local-directory backends ``names`` and the virtual bucket ``photos``; no admin API."""
    config = service_config(str(workdir), names)
    config.api.enabled = False
    return config


class _MemoryReactor(MemoryReactorClock):
    """A memory reactor that local backends' disk threads can report back to: they call
    ``callFromThread`` when their start-up work ends, which :class:`MemoryReactorClock` lacks
    (the thread's AttributeError then failed whichever test ran at that moment).  Nothing here
    needs those results, so they are dropped."""

    def callFromThread(self, callable: Any, *args: Any, **kwargs: Any) -> None:
        pass


def _close_backends(components: Components) -> None:
    for backend in components.backends.values():  # their disk threads would outlive the test
        backend.close()


@pytest.fixture
def built(tmp_path: Path) -> Iterator[Any]:
    """``built(config, **options)``: Components on a memory reactor, backends closed after."""
    made: list[Components] = []

    def build(config: Config, **options: Any) -> Components:
        components = Components(config, _MemoryReactor(), **options)
        made.append(components)
        return components

    yield build
    for components in made:
        _close_backends(components)


def test_every_part_shares_one_store_pool_and_gateway(built: Any, tmp_path: Path) -> None:
    components = built(daemon_config(tmp_path))
    gateway = components.gateway
    assert gateway.store is components.store is components.database.store
    assert gateway.pool is components.pool
    assert gateway.health is components.health and gateway.usage is components.usage
    assert components.pool.health is components.health
    assert components.resource.gateway is gateway
    assert components.site.resource is components.resource
    assert sorted(components.backends) == ["r1", "r2"]
    assert components.backends == components.storage.backends


def test_the_front_has_the_multipart_handler_on_the_same_gateway(
    built: Any, tmp_path: Path
) -> None:
    """The test daemon used to lack one until a test patched it in: now every daemon has it."""
    components = built(daemon_config(tmp_path))
    handler = components.resource.multipart
    assert isinstance(handler, MultipartHandler)
    assert handler.uploads.gateway is components.gateway


def test_an_authenticator_is_always_there_and_requires_what_the_config_says(
    built: Any, tmp_path: Path
) -> None:
    relaxed = built(daemon_config(tmp_path))
    assert relaxed.resource.auth_enabled
    assert not relaxed.resource.authenticator.required
    config = daemon_config(tmp_path)
    config.s3api.auth_required = True
    config.s3api.access_key, config.s3api.secret_key = "KEY", "secret"
    assert built(config).resource.authenticator.required


def test_the_site_takes_the_server_section(built: Any, tmp_path: Path) -> None:
    config = daemon_config(tmp_path)
    config.server = dataclasses.replace(
        config.server, read_timeout=7.0, header_timeout=3.0, body_timeout=4.0, max_connections=9
    )
    site = built(config).site
    assert (site.read_timeout, site.header_timeout, site.body_timeout) == (7.0, 3.0, 4.0)
    assert site.max_connections == 9


def test_reserved_resources_follow_the_configuration(built: Any, tmp_path: Path) -> None:
    plain = daemon_config(tmp_path)
    plain.metrics.enabled = False
    components = built(plain)
    assert set(components.resource.reserved) == {b"health"}
    assert isinstance(components.resource.reserved[b"health"], HealthResource)
    assert components.traffic is None
    assert components.metrics_site is None

    full = daemon_config(tmp_path)
    full.metrics.path, full.metrics.port = "/prom/scrape", 9100
    full.api.enabled, full.api.token = True, "t0ken"
    components = built(full)
    reserved = components.resource.reserved
    assert set(reserved) == {b"health", b"prom/scrape", b"api", b"web"}
    assert isinstance(reserved[b"prom/scrape"], MetricsResource)
    admin = reserved[b"api"]
    assert isinstance(admin, AdminResource)
    # The admin API reads the components and changes through the reconfigurator, nothing more.
    assert admin.daemon is components
    assert admin.reconfigurator is components.reconfigurator
    assert components.traffic is not None
    assert components.metrics_site is not None
    scrape = components.metrics_site.resource.children[b"prom"].children[b"scrape"]
    assert isinstance(scrape, MetricsResource)
    # The scrape port keeps the S3 port's deadlines, with a small cap of its own.
    assert components.metrics_site.max_connections == METRICS_MAX_CONNECTIONS
    assert components.metrics_site.header_timeout == full.server.header_timeout


def test_a_worker_relays_changes_and_only_the_first_probes(built: Any, tmp_path: Path) -> None:
    single = built(daemon_config(tmp_path))
    assert single.supervisor_channel is None
    assert single.changes is single.reconfigurator
    everything = [
        single.health, single.usage, single.pool, single.expiry, single.sweeper, single.repair,
        single.jobs, single.rebalance_watch,
    ]  # fmt: skip
    assert single.background() == everything

    config = daemon_config(tmp_path)
    config.api.enabled, config.api.token = True, "t0ken"
    first = built(config, worker=0)
    assert first.supervisor_channel is not None
    assert isinstance(first.changes, EveryWorker)
    assert first.changes.here is first.reconfigurator
    assert first.resource.reserved[b"api"].reconfigurator is first.changes  # type: ignore[attr-defined]
    assert first.health in first.background() and first.expiry in first.background()
    assert first.repair in first.background() and first.jobs in first.background()
    assert first.rebalance_watch in first.background()

    second = built(daemon_config(tmp_path), worker=1)
    assert second.background() == [second.usage, second.pool, second.sweeper]


def test_storage_builds_only_the_backends_asked_for(tmp_path: Path) -> None:
    storage = Storage(
        daemon_config(tmp_path, ("r1", "r2", "r3")), _MemoryReactor(), None, {"r2"}
    )
    try:
        assert sorted(storage.backends) == ["r2"]
    finally:
        for backend in storage.backends.values():
            backend.close()


def test_health_reconfigure_refuses_a_threshold_below_one() -> None:
    health = HealthMonitor(dict, MemoryReactorClock(), period=60.0, probe_timeout=5.0)
    with pytest.raises(ValueError):
        health.reconfigure(1.0, 0, 2)
    assert (health.probe_timeout, health.unhealthy_threshold) == (5.0, 3)
    health.reconfigure(1.5, 4, 5)
    assert (health.probe_timeout, health.unhealthy_threshold, health.healthy_threshold) == (
        1.5,
        4,
        5,
    )


class OpenReloadCloseTests(TestCase):
    """Components on the real reactor and a real SQLite database."""

    timeout = 30

    async def _start(self) -> None:
        self.workdir = os.path.abspath(self.mktemp())
        self.components = Components(
            daemon_config(self.workdir), reactor, database_url=sqlite_url(self)
        )
        await self.components.open()
        self.closed = False

    def setUp(self) -> Any:
        return defer.ensureDeferred(self._start())

    def tearDown(self) -> Any:
        if self.closed:
            return None
        return defer.ensureDeferred(self.components.close())

    async def test_open_creates_the_configured_virtual_buckets(self) -> None:
        names = [record.name for record in await self.components.store.list_buckets()]
        self.assertEqual(names, ["photos"])

    async def test_a_reload_reaches_every_part_that_reads_the_configuration(self) -> None:
        components = self.components
        config = dataclasses.replace(components.config)
        config.balancer = dataclasses.replace(
            config.balancer, strategy="least-space", retry_attempts=7, probe_timeout=1.5
        )
        config.s3api = dataclasses.replace(config.s3api, allow_create_bucket=False)
        config.buckets = [
            dataclasses.replace(b, weight=4) if b.name == "r1" else b for b in config.buckets
        ]
        changes = await components.reconfigurator.apply(config)
        self.assertIn("strategy round-robin -> least-space", changes)
        self.assertIs(components.config, components.reconfigurator.config)
        self.assertEqual(components.config.balancer.strategy, "least-space")
        self.assertEqual(components.pool.strategy.name, "least-space")
        self.assertEqual(components.pool.config("r1").weight, 4)
        self.assertEqual(components.health.probe_timeout, 1.5)
        self.assertEqual(components.gateway.settings.retry_attempts, 7)
        self.assertFalse(components.gateway.settings.allow_create_bucket)

    async def test_retired_backends_belong_to_their_own_daemon(self) -> None:
        """Reload state is the reconfigurator's, not the module's: another daemon in the same
        process sees none of it."""
        other = Components(
            daemon_config(os.path.abspath(self.mktemp())), reactor, database_url=sqlite_url(self)
        )
        await other.open()
        self.addCleanup(lambda: defer.ensureDeferred(other.close()))
        components = self.components
        old_r2 = components.backends["r2"]
        config = dataclasses.replace(
            components.config, buckets=[b for b in components.config.buckets if b.name != "r2"]
        )
        await components.reconfigurator.apply(config)
        self.assertEqual(components.reconfigurator.retired_backends(), [old_r2])
        self.assertEqual(other.reconfigurator.retired_backends(), [])
        self.assertEqual(sorted(other.backends), ["r1", "r2"])
        self.assertIsInstance(other.reconfigurator, Reconfigurator)

    async def test_close_closes_retired_and_current_backends_and_the_database(self) -> None:
        components = self.components
        closed: list[str] = []
        for name, backend in components.backends.items():
            real_close = backend.close

            def close(name: str = name, real_close: Any = real_close) -> Any:
                closed.append(name)
                return real_close()

            backend.close = close  # type: ignore[method-assign]
        config = dataclasses.replace(
            components.config, buckets=[b for b in components.config.buckets if b.name != "r2"]
        )
        await components.reconfigurator.apply(config)  # r2 retired, closed at shutdown
        await components.close()
        self.closed = True
        self.assertEqual(sorted(closed), ["r1", "r2"])
        self.assertEqual(components.reconfigurator.retired_backends(), [])
        self.assertFalse(components.database.pool.running)
