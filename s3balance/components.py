"""The composition root: every part of a daemon, built from one :class:`Config`, in one place.

The daemon (:mod:`s3balance.app`, a worker too), the test daemon and the command-line tools
(:mod:`s3balance.scrubcli`) all build their parts here, so a part is wired one way only: what a
test runs is what the daemon runs.  Nothing here starts anything; starting, listening and the
order of shutdown belong to whoever runs the parts (:class:`s3balance.app.S3BalanceService`).

- :class:`Storage`: the database and the real buckets (what a tool such as a scrub opens).
- :class:`Components`: a whole daemon over a :class:`Storage`: monitors, pool, gateway, the S3
  front and its reserved resources, housekeeping, and the :class:`Reconfigurator` a reload
  goes through.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from typing import Any

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.web.resource import Resource

from s3balance import drain, rebalance
from s3balance.admin.api import AdminResource, Reconfiguring
from s3balance.admin.history import TrafficHistory
from s3balance.admin.reload import Reconfigurator
from s3balance.auth.authenticator import Authenticator
from s3balance.auth.credentials import KeyRing
from s3balance.backends.factory import make_backend
from s3balance.backends.interface import IBackend
from s3balance.config import BucketConfig, Config
from s3balance.console.resource import ConsoleResource
from s3balance.copying import ObjectCopier
from s3balance.db.connector import DBConnector
from s3balance.db.store import MetadataStore
from s3balance.gateway import Gateway
from s3balance.health import HealthMonitor
from s3balance.housekeeping import DeletionSweeper, UploadExpiry
from s3balance.jobs import JobDaemon, JobRunner
from s3balance.metrics import MetricsResource, exposition_registry
from s3balance.multipart import MultipartUploads
from s3balance.net.httpclient import make_http_pool
from s3balance.placement import make_strategy
from s3balance.pool import BackendPool
from s3balance.repair import Repairer
from s3balance.usage import UsageMonitor
from s3balance.web.health import HealthResource
from s3balance.web.multipart import MultipartHandler
from s3balance.web.resource import S3Resource
from s3balance.web.site import S3Site
from s3balance.worker import EveryWorker, SupervisorChannel

#: Connections the ``metrics.port`` site keeps open at once; more are answered 503 and closed.
METRICS_MAX_CONNECTIONS = 32
#: The largest request body it reads (a scrape is a GET without one).
METRICS_MAX_BODY = 64 << 10


class Storage:
    """The database and the real buckets of a configuration.

    :param reactor: the reactor the database threads and the backends report to.
    :param database_url: a database other than the one ``config.database`` names (a test's
        prepared SQLite file, another daemon's database to share).
    :param backend_names: build only these real buckets (a tool working on some of them);
        all of them by default.
    """

    def __init__(
        self,
        config: Config,
        reactor: Any,
        database_url: str | None = None,
        backend_names: Collection[str] | None = None,
    ) -> None:
        self.reactor = reactor
        self.data_dir = config.data_dir
        #: ``server.write_timeout``: a backend that makes no progress for this long fails.
        self.stall_timeout = config.server.write_timeout
        os.makedirs(config.data_dir, exist_ok=True)
        self.database = DBConnector(config.database, config.data_dir, reactor, url=database_url)
        self.http_pool = make_http_pool(reactor)
        #: The backends built at start; after a reload the pool's set is the current one.
        self.backends: dict[str, IBackend] = {
            bucket.name: self.make_backend(bucket)
            for bucket in config.real_buckets
            if backend_names is None or bucket.name in backend_names
        }

    @property
    def store(self) -> MetadataStore:
        return self.database.store

    def make_backend(self, bucket: BucketConfig) -> IBackend:
        """A backend for ``bucket``, sharing this storage's HTTP pool (a reload builds its new
        backends with this too)."""
        return make_backend(bucket, self.reactor, self.data_dir, self.http_pool, self.stall_timeout)

    async def close(self, backends: Collection[IBackend] | None = None) -> None:
        """Close ``backends`` (default: those built at start), the HTTP pool and the database
        (its threads end once their transactions have)."""
        for backend in self.backends.values() if backends is None else backends:
            await backend.close()
        await self.http_pool.closeCachedConnections()
        self.database.stopService()


class Components:
    """Every part of one daemon, wired; nothing is started.

    :param config: the validated configuration the daemon starts with.
    :param reactor: the reactor (or a ``MemoryReactorClock`` in tests that only inspect).
    :param config_path: the file a SIGHUP reloads.
    :param worker: with ``server.workers`` above 1, this worker's index: ``/health`` names it,
        a reload is relayed to every worker, and only worker 0 probes and expires uploads.
    :param database_url: see :class:`Storage`.
    """

    def __init__(
        self,
        config: Config,
        reactor: Any,
        config_path: str | None = None,
        worker: int | None = None,
        database_url: str | None = None,
    ) -> None:
        self.reactor = reactor
        self.worker = worker
        self.storage = Storage(config, reactor, database_url=database_url)
        self.database = self.storage.database
        self.store = self.storage.store
        self.http_pool = self.storage.http_pool
        balancer = config.balancer
        # Monitors ask the pool for the live set, so a reload's added backends are probed too.
        self.health = HealthMonitor(
            lambda: self.pool.backends(),
            clock=reactor,
            period=balancer.health_check_period,
            probe_timeout=balancer.probe_timeout,
            unhealthy_threshold=balancer.unhealthy_threshold,
            healthy_threshold=balancer.healthy_threshold,
            record_operation=lambda name, operation: self.pool.record_operation(name, operation),
        )
        self.usage = UsageMonitor(
            self.store,
            lambda: self.pool.backends(),
            clock=reactor,
            period=balancer.update_stats_period,
        )
        self.pool = BackendPool(
            self.storage.backends,
            {b.name: b for b in config.real_buckets},
            make_strategy(balancer.strategy),
            self.health,
            self.usage,
            store=self.store,
            clock=reactor,
        )
        self.gateway = Gateway(
            store=self.store,
            pool=self.pool,
            health=self.health,
            usage=self.usage,
            clock=reactor,
            config=config,
        )
        self.reconfigurator = Reconfigurator(
            config,
            pool=self.pool,
            health=self.health,
            gateway=self.gateway,
            store=self.store,
            clock=reactor,
            build_backend=self.storage.make_backend,
            config_path=config_path,
        )
        #: A worker's line to the supervisor (opened when the worker serves).
        self.supervisor_channel: SupervisorChannel | None = None
        #: What the admin API changes: here, or (in a worker) in every worker.
        self.changes: Reconfiguring = self.reconfigurator
        if worker is not None:
            self.supervisor_channel = SupervisorChannel(
                self.health, self.reconfigurator, reactor, reloads_file=config_path is not None
            )
            self.changes = EveryWorker(self.reconfigurator, self.supervisor_channel)
        self.expiry = UploadExpiry.from_config(
            config.multipart, self.store, self.pool, reactor, usage=self.usage
        )
        # Every 10 s, or every grace period when shorter (but at most once a second).
        grace = self.gateway.settings.delete_grace
        self.sweeper = DeletionSweeper(
            self.gateway, reactor, min(10.0, max(1.0, grace)) if grace > 0 else 10.0
        )
        #: Brings replicated objects back to their number of copies (housekeeping's process).
        self.repair = Repairer(
            self.gateway, self.pool, self.health, self.usage, self.store, reactor, config.repair
        )
        #: Drains and other resumable jobs (housekeeping's process runs them; any process
        #: queues them).  A new job kind is one module and one line here (see s3balance.jobs).
        self.jobs = JobRunner(
            JobDaemon(
                self.store, self.pool, self.gateway, self.usage, reactor,
                ObjectCopier(self.pool, self.gateway.holding),
            ),
            config.jobs,
        )  # fmt: skip
        self.jobs.register(drain.KIND)
        self.jobs.register(rebalance.KIND)
        #: Starts a rebalance job when ``balancer.rebalance`` asks (housekeeping's process).
        self.rebalance_watch = rebalance.RebalanceWatch(
            self.jobs,
            lambda: self.reconfigurator.config.balancer,
            reactor,
            balancer.rebalance_interval,
        )
        #: The console's traffic history, which its dashboard charts (with the admin API only).
        self.traffic = TrafficHistory(reactor) if config.api.enabled else None
        self.resource = S3Resource(
            self.gateway,
            config=config,
            reserved=self._reserved(config),
            authenticator=Authenticator(
                KeyRing.from_config(config.s3api),
                required=config.s3api.auth_required,
                region=config.s3api.region,
                host_override=config.s3api.host,
                clock=reactor.seconds,
            ),
            multipart=MultipartHandler(MultipartUploads(self.gateway)),
            clock=reactor,
            stall_timeout=config.server.write_timeout,
        )
        server = config.server
        self.site = S3Site(
            self.resource,
            should_stream=self.resource.should_stream,
            clock=reactor,
            read_timeout=server.read_timeout,
            idle_timeout=server.idle_timeout,
            header_timeout=server.header_timeout,
            body_timeout=server.body_timeout,
            max_connections=server.max_connections,
            body_memory=server.body_memory,
        )
        #: ``metrics.port``: the metrics path also on a port of its own; None without one.
        self.metrics_site = self._separate_metrics_site(config, reactor)

    def _reserved(self, config: Config) -> dict[bytes, Resource]:
        """The resources at reserved first path segments (``/health``, ``/metrics``, ``/api``,
        ``/web``)."""
        reserved: dict[bytes, Resource] = {b"health": HealthResource(self.pool, self.worker)}
        if config.metrics.enabled:
            metrics_name = config.metrics.path.strip("/").encode("utf-8")
            reserved[metrics_name] = MetricsResource(
                exposition_registry(), token=config.metrics.token
            )
        if config.api.enabled:
            # The console's pages show only what comes through /api.
            reserved[b"api"] = AdminResource(self, self.changes)
            reserved[b"web"] = ConsoleResource()
        return reserved

    @staticmethod
    def _separate_metrics_site(config: Config, reactor: Any) -> S3Site | None:
        """``metrics.port`` (a Go key): so a scraper can be let in where S3 clients are not.

        It is a port anyone who reaches it can open connections to, so it gets the S3 port's
        header, body and idle deadlines, and a cap of its own (:data:`METRICS_MAX_CONNECTIONS`)
        on connections open at once: a scraper needs one or two, and idle or slow connections
        beyond that would otherwise hold file descriptors the S3 port needs.
        """
        metrics = config.metrics
        if not (metrics.enabled and metrics.port):
            return None
        root = Resource()
        node = root
        segments = [s.encode("utf-8") for s in metrics.path.strip("/").split("/")]
        for segment in segments[:-1]:
            child = Resource()
            node.putChild(segment, child)
            node = child
        node.putChild(segments[-1], MetricsResource(exposition_registry(), token=metrics.token))
        server = config.server
        return S3Site(
            root,
            should_stream=lambda _: False,
            clock=reactor,
            idle_timeout=server.idle_timeout,
            header_timeout=server.header_timeout,
            body_timeout=server.body_timeout,
            max_buffered_body=METRICS_MAX_BODY,
            max_connections=METRICS_MAX_CONNECTIONS,
            body_memory=METRICS_MAX_CONNECTIONS * METRICS_MAX_BODY,
            counts_clients=False,
        )

    # -- what the running daemon reads -------------------------------------------------------

    @property
    def config(self) -> Config:
        """The configuration in effect (a reload changes it)."""
        return self.reconfigurator.config

    @property
    def clock(self) -> IReactorTime:
        clock: IReactorTime = self.reactor
        return clock

    @property
    def backends(self) -> dict[str, IBackend]:
        """The backends in the pool now."""
        return self.pool.backends()

    def background(self) -> list[Service]:
        """The periodic services this process runs, in starting order: the first worker (or
        the only process) probes, expires uploads, repairs, runs jobs and checks the balance
        for all; the other workers take its health findings from the supervisor."""
        services: list[Service] = [
            self.health, self.usage, self.pool, self.expiry, self.sweeper, self.repair, self.jobs,
            self.rebalance_watch,
        ]  # fmt: skip
        if self.worker not in (None, 0):
            firsts = (self.health, self.expiry, self.repair, self.jobs, self.rebalance_watch)
            services = [s for s in services if s not in firsts]
        return services

    # -- start and end -----------------------------------------------------------------------

    async def open(self) -> None:
        """Set the database up (schema checked or upgraded) and create the virtual buckets the
        configuration names.

        :raises Exception: the database cannot be used (nothing should be served then).
        """
        await self.database.setup()
        for bucket in self.config.virtual_buckets:
            await self.store.create_bucket(bucket.name, self.reactor.seconds(), from_config=True)
        # Before any write with them: see RepairsComponent.forget_changed_replicas.
        await self.store.forget_changed_replicas(
            {bucket.name: bucket.replicas for bucket in self.config.virtual_buckets}
        )

    async def close(self) -> None:
        """Close the retired and current backends, the HTTP pool and the database; for after
        the listeners and the background services have stopped."""
        await self.reconfigurator.close_retired()
        await self.storage.close(list(self.pool.backends().values()))
        if self.supervisor_channel is not None:
            self.supervisor_channel.close()
