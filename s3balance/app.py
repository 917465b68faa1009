"""The daemon run: the parts :mod:`s3balance.components` wires, started, listening and stopped.

The order matters and is the reason this module exists: the ports are bound first, so a daemon
that cannot listen exits at once; the schema is checked (and upgraded when
``database.auto_migrate`` is on) before any connection is accepted, monitors start before the
first request, and listeners stop first at shutdown so in-flight transfers get a grace period.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet import defer, endpoints
from twisted.python.failure import Failure
from twisted.web.server import Site

from s3balance.components import Components
from s3balance.config import Config
from s3balance.logs import make_logger
from s3balance.worker import AdoptedPort, worker_index

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
    """Everything ``twistd s3balance`` runs: the parts :class:`Components` wires from a
    validated :class:`Config`, started, listening and stopped in the right order."""

    def __init__(
        self,
        config: Config,
        reactor: Any,
        listen: list[str],
        config_path: str | None = None,
        adopted: list[tuple[str, int]] | None = None,
    ) -> None:
        super().__init__()
        self.reactor = reactor
        #: ``server.workers`` above 1: this is a worker serving the supervisor's sockets.
        self.adopted = adopted or []
        self.components = Components(
            config,
            reactor,
            config_path=config_path,
            worker=worker_index() if self.adopted else None,
        )
        self.components.database.setServiceParent(self)
        if self.components.traffic is not None:
            self.components.traffic.setServiceParent(self)
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
        components = self.components
        wanted: list[tuple[str, Site]] = [(d, components.site) for d in self.listen]
        if components.metrics_site is not None and not self.adopted:
            config = components.config
            host = config.server.host.replace(":", "\\:")
            wanted.append(
                (f"tcp:{config.metrics.port}:interface={host}", components.metrics_site)
            )
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
        components = self.components
        try:
            yield defer.ensureDeferred(components.open())
        except Exception:
            log.failure("s3balance cannot start")
            self.reactor.stop()
            return
        for child in components.background():
            child.setServiceParent(self)
        super().startService()
        if components.supervisor_channel is not None:
            # The line to the supervisor first: a request may arrive as soon as we adopt.
            components.supervisor_channel.open()
            self._adopt_listeners()
        for port in self._ports:
            _resume_accepting(port)
        if components.reconfigurator.config_path is not None:
            self._uninstall_sighup = components.reconfigurator.install_sighup(self.reactor)
        yield components.usage.refresh()
        if components.supervisor_channel is not None:
            components.supervisor_channel.ready()
            log.info("s3balance worker {index} serves", index=components.worker)
            return
        log.info("s3balance listening on {listen}", listen=", ".join(self.listen))

    def _adopt_listeners(self) -> None:
        """A worker: serve the sockets the supervisor bound (see :mod:`s3balance.supervisor`)."""
        for role, fd in self.adopted:
            site = self.components.site if role == "s3" else self.components.metrics_site
            listener = AdoptedPort(self.reactor, fd, site)
            listener.setServiceParent(self)
            self._listeners.append(listener)

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        # Stop accepting first, then let transfers in flight finish (within the grace period)
        # before the backends and the database go away under them.
        ports, self._ports = self._ports, []
        for port in ports:
            yield defer.maybeDeferred(port.stopListening)
        for listener in self._listeners:
            yield defer.maybeDeferred(listener.disownServiceParent)
        site, grace = self.components.site, self.components.config.server.shutdown_grace
        if site.in_flight:
            log.info(
                "waiting up to {grace}s for {count} requests in flight",
                grace=grace,
                count=len(site.in_flight),
            )
        left = yield site.drained(grace)
        if left:
            log.warn("{count} requests still running at shutdown are cut off", count=left)
        if self._uninstall_sighup is not None:
            self._uninstall_sighup()
        # Monitors and the pool's counter flush still use the database: stop them (and wait for
        # their last queries) before the database's threads go.
        Service.stopService(self)
        for child in reversed(list(self)):
            if child is not self.components.database:
                yield defer.maybeDeferred(child.stopService)
        yield defer.ensureDeferred(self.components.close())
