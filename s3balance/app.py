"""The daemon assembled: database, backends, monitors, gateway core, the S3 front and listeners.

The order matters and is the reason this module exists: the ports are bound first, so a daemon
that cannot listen exits at once; the schema is checked (and upgraded when
``database.auto_migrate`` is on) before any connection is accepted, monitors start before the
first request, and listeners stop first at shutdown so in-flight transfers get a grace period.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet import defer, endpoints
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Site

from s3balance.admin.api import AdminResource
from s3balance.admin.history import TrafficHistory
from s3balance.admin.reload import close_retired, install_sighup
from s3balance.auth.authenticator import Authenticator
from s3balance.auth.credentials import KeyRing
from s3balance.backends.factory import make_backend
from s3balance.backends.interface import IBackend
from s3balance.config import Config
from s3balance.console.resource import ConsoleResource
from s3balance.db.connector import DBConnector
from s3balance.gateway import Gateway
from s3balance.health import HealthMonitor
from s3balance.housekeeping import DeletionSweeper, UploadExpiry
from s3balance.logs import make_logger
from s3balance.metrics import MetricsResource, exposition_registry
from s3balance.multipart import MultipartUploads
from s3balance.net.httpclient import make_http_pool
from s3balance.placement import make_strategy
from s3balance.pool import BackendPool
from s3balance.usage import UsageMonitor
from s3balance.web.health import HealthResource
from s3balance.web.multipart import MultipartHandler
from s3balance.web.resource import S3Resource
from s3balance.web.site import S3Site
from s3balance.worker import AdoptedPort, SupervisorChannel, worker_index

log = make_logger()


class ListenError(Exception):
    """An endpoint the daemon was told to listen on cannot be listened on."""


class CannotStart(SystemExit, Exception):  # noqa: N818 (it is an exit, like SystemExit)
    """Ends twistd with status 1 and one line, in the foreground and as a daemon.

    A :class:`SystemExit` so that Python prints only its text (no traceback) and exits 1; an
    :class:`Exception` too, because a daemonising twistd reports only an ``Exception`` to the
    parent process waiting on its status pipe (a bare ``SystemExit`` would leave that parent
    waiting for ever).
    """


def _listen_failure_text(failure: Failure) -> str:
    """``Address already in use`` rather than Twisted's ``Couldn't listen on ...`` preamble."""
    error = failure.value
    os_error = getattr(error, "socketError", None)
    if isinstance(os_error, OSError) and os_error.strerror:
        return os_error.strerror
    return failure.getErrorMessage()


def _pause_accepting(port: Any) -> None:
    """Stop accepting connections on a bound port (they wait in the kernel's backlog)."""
    stop_reading = getattr(port, "stopReading", None)
    if stop_reading is not None:
        stop_reading()


def _resume_accepting(port: Any) -> None:
    start_reading = getattr(port, "startReading", None)
    if start_reading is not None:
        start_reading()


class S3BalanceService(MultiService):
    """Everything ``twistd s3balance`` runs, wired once from a validated :class:`Config`."""

    def __init__(
        self,
        config: Config,
        reactor: Any,
        listen: list[str],
        config_path: str | None = None,
        adopted: list[tuple[str, int]] | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.reactor = reactor
        self.config_path = config_path
        os.makedirs(config.data_dir, exist_ok=True)

        self.db = DBConnector(config.database, config.data_dir, reactor)
        self.db.setServiceParent(self)
        self.store = self.db.store

        self.http_pool = make_http_pool(reactor)
        self.backends: dict[str, IBackend] = {
            bucket.name: make_backend(
                bucket, reactor, config.data_dir, self.http_pool, config.server.write_timeout
            )
            for bucket in config.real_buckets
        }

        # Monitors ask the pool for the live set, so a reload's added backends are probed too.
        self.health = HealthMonitor(
            lambda: self.pool.backends(),
            clock=reactor,
            period=config.balancer.health_check_period,
            probe_timeout=config.balancer.probe_timeout,
            unhealthy_threshold=config.balancer.unhealthy_threshold,
            healthy_threshold=config.balancer.healthy_threshold,
        )
        self.usage = UsageMonitor(
            self.store,
            lambda: self.pool.backends(),
            clock=reactor,
            period=config.balancer.update_stats_period,
        )
        self.pool = BackendPool(
            self.backends,
            {b.name: b for b in config.real_buckets},
            make_strategy(config.balancer.strategy),
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

        #: ``server.workers`` above 1: this is a worker serving the supervisor's sockets.
        self.adopted = adopted or []
        self.worker = worker_index() if self.adopted else None
        self.supervisor_channel: SupervisorChannel | None = None
        reserved: dict[bytes, Resource] = {b"health": HealthResource(self.pool, self.worker)}
        if config.metrics.enabled:
            metrics_name = config.metrics.path.strip("/").encode("utf-8")
            reserved[metrics_name] = MetricsResource(
                exposition_registry(), token=config.metrics.token
            )
        if config.api.enabled:
            reserved[b"api"] = AdminResource(self)
            # The web console (pages only; all it shows comes through /api) and the traffic
            # history its dashboard charts.
            reserved[b"web"] = ConsoleResource()
            self.traffic = TrafficHistory(reactor)
            self.traffic.setServiceParent(self)
        authenticator = Authenticator(
            KeyRing.from_config(config.s3api),
            required=config.s3api.auth_required,
            region=config.s3api.region,
            host_override=config.s3api.host,
            clock=reactor.seconds,
        )
        self.resource = S3Resource(
            self.gateway,
            config=config,
            reserved=reserved,
            authenticator=authenticator,
            multipart=MultipartHandler(MultipartUploads(self.gateway)),
            clock=reactor,
            stall_timeout=config.server.write_timeout,
        )
        self.site = S3Site(
            self.resource,
            should_stream=self.resource.should_stream,
            clock=reactor,
            read_timeout=config.server.read_timeout,
            idle_timeout=config.server.idle_timeout,
            header_timeout=config.server.header_timeout,
            body_timeout=config.server.body_timeout,
            max_connections=config.server.max_connections,
            body_memory=config.server.body_memory,
        )
        #: Endpoints this process binds itself; a worker binds none (it adopts the supervisor's).
        self.listen = [] if self.adopted else listen
        self._ports: list[Any] = []
        #: A worker's adopted sockets (services of their own, see :meth:`_adopt_listeners`).
        self._listeners: list[Any] = []
        self._bound = False
        self._uninstall_sighup: Callable[[], None] | None = None

    def privilegedStartService(self) -> None:
        """Bind every listener now, before twistd runs the reactor (and before it sheds
        privileges): a port that cannot be bound ends the process with one line and status 1,
        as a bad configuration does, instead of a daemon that listens nowhere.

        The ports accept nothing until :meth:`startService` has set up the database.
        """
        try:
            self._bind_listeners()
        except ListenError as error:
            raise CannotStart(str(error)) from None
        super().privilegedStartService()

    def _listen_descriptions(self) -> list[tuple[str, Site]]:
        """Every ``(endpoint description, site)`` this daemon listens on."""
        wanted: list[tuple[str, Site]] = [(description, self.site) for description in self.listen]
        metrics_site = self._separate_metrics_site()
        if metrics_site is not None and not self.adopted:
            host = self.config.server.host.replace(":", "\\:")
            wanted.append((f"tcp:{self.config.metrics.port}:interface={host}", metrics_site))
        return wanted

    def _bind_listeners(self) -> None:
        """Listen on every endpoint, paused; all or none.

        :raises ListenError: one endpoint cannot be listened on (those already bound are closed).
        """
        if self._bound:
            return
        self._bound = True
        for description, site in self._listen_descriptions():
            outcome: list[Any] = []
            try:
                endpoint = endpoints.serverFromString(self.reactor, description)
                endpoint.listen(site).addBoth(outcome.append)
            except Exception as error:  # a description the parser refuses
                outcome.append(Failure(error))
            result = outcome[0] if outcome else None
            if result is None or isinstance(result, Failure):
                for port in self._ports:
                    port.stopListening()
                self._ports = []
                reason = (
                    "the endpoint did not start listening at once"
                    if result is None
                    else _listen_failure_text(result)
                )
                raise ListenError(f"s3balance: cannot listen on {description}: {reason}")
            _pause_accepting(result)
            self._ports.append(result)

    @defer.inlineCallbacks
    def startService(self) -> Any:
        # Bound already when twistd called privilegedStartService; tests may call only this.
        try:
            self._bind_listeners()
        except ListenError as error:
            log.critical("{message}", message=str(error))
            self.reactor.stop()
            return
        # The database first (schema check or upgrade); a failure stops the daemon before it
        # accepts any connection.
        try:
            yield self.db.setup()
            for bucket in self.config.virtual_buckets:
                now = self.reactor.seconds()
                yield self.store.create_bucket(bucket.name, now, from_config=True)
        except Exception:
            log.failure("s3balance cannot start")
            self.reactor.stop()
            return
        self.expiry = UploadExpiry.from_config(
            self.config.multipart, self.store, self.pool, self.reactor, usage=self.usage
        )
        # Every 10 s, or every grace period when shorter (but at most once a second).
        grace = self.gateway.settings.delete_grace
        period = min(10.0, max(1.0, grace)) if grace > 0 else 10.0
        self.sweeper = DeletionSweeper(self.gateway, self.reactor, period)
        for child in (self.health, self.usage, self.pool, self.expiry, self.sweeper):
            if child in (self.expiry, self.health) and self.worker not in (None, 0):
                # The first worker probes and cleans up for all; the others take its health
                # results from the supervisor (s3balance/worker.py).
                continue
            child.setServiceParent(self)
        super().startService()
        if self.adopted:
            # The line to the supervisor first: a request may arrive as soon as we adopt.
            self.supervisor_channel = SupervisorChannel(self)
            self._adopt_listeners()
        for port in self._ports:
            _resume_accepting(port)
        if self.config_path is not None:
            self._uninstall_sighup = install_sighup(self)
        yield self.usage.refresh()
        if self.supervisor_channel is not None:
            self.supervisor_channel.ready()
            log.info("s3balance worker {index} serves", index=self.worker)
            return
        log.info("s3balance listening on {listen}", listen=", ".join(self.listen))

    def _adopt_listeners(self) -> None:
        """A worker: serve the sockets the supervisor bound (see :mod:`s3balance.supervisor`)."""
        metrics_site = self._separate_metrics_site()
        for role, fd in self.adopted:
            site = self.site if role == "s3" else metrics_site
            listener = AdoptedPort(self.reactor, fd, site)
            listener.setServiceParent(self)
            self._listeners.append(listener)

    def _separate_metrics_site(self) -> Site | None:
        """``metrics.port`` (a Go key): the metrics path also on a port of its own, so a
        scraper can be let in where S3 clients are not."""
        metrics = self.config.metrics
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
        site = Site(root)
        site.displayTracebacks = False
        return site

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        # Stop accepting first, then let transfers in flight finish (within the grace period)
        # before the backends and the database go away under them.
        ports, self._ports = self._ports, []
        for port in ports:
            yield defer.maybeDeferred(port.stopListening)
        for listener in self._listeners:
            yield defer.maybeDeferred(listener.disownServiceParent)
        if self.site.in_flight:
            log.info(
                "waiting up to {grace}s for {count} requests in flight",
                grace=self.config.server.shutdown_grace,
                count=len(self.site.in_flight),
            )
        left = yield self.site.drained(self.config.server.shutdown_grace)
        if left:
            log.warn("{count} requests still running at shutdown are cut off", count=left)
        if self._uninstall_sighup is not None:
            self._uninstall_sighup()
        # Monitors and the pool's counter flush still use the database: stop them (and wait for
        # their last queries) before the database's threads go.
        Service.stopService(self)
        for child in reversed(list(self)):
            if child is not self.db:
                yield defer.maybeDeferred(child.stopService)
        yield close_retired(self)
        for backend in self.backends.values():
            yield backend.close()
        yield self.http_pool.closeCachedConnections()
        yield defer.maybeDeferred(self.db.stopService)
        if self.supervisor_channel is not None:
            self.supervisor_channel.close()
