"""A worker process of ``server.workers: N``: the sockets it adopts, its line to the supervisor.

A worker is a whole daemon (its own reactor, database pool and backend pools) that does not bind:
it adopts the listening sockets the supervisor (:mod:`s3balance.supervisor`) passed it as file
descriptors.  It talks to the supervisor over two pipes, one JSON document a line:

- worker to supervisor: ``{"ready": pid}`` once it serves; ``{"id": n, "relay": config}`` to
  have a configuration it has just applied applied by every other worker too;
  ``{"health": [name, state]}`` after each finding about a backend (only the first worker probes
  periodically; any worker may see a failure on the data path or probe when asked).
- supervisor to worker: ``{"id": n, "apply": config}`` (apply, answer ``{"id": n, "changes"}``
  or ``{"id": n, "errors"}``); ``{"id": n, "relayed": {...}}`` the outcome of a relay;
  ``{"health": [name, state]}`` another worker's finding.

When the supervisor's end closes (it died), the worker shuts down instead of serving orphaned.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
from typing import TYPE_CHECKING, Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure

from s3balance.configfile import ConfigError, config_to_dict, parse_config
from s3balance.health import BackendHealth, HealthMonitor
from s3balance.logs import make_logger

if TYPE_CHECKING:
    from s3balance.admin.reload import Reconfigurator
    from s3balance.config import Config

log = make_logger()

#: Environment variable naming a worker's index (0 for the first); set only in workers.
WORKER_INDEX_ENV = "S3BALANCE_WORKER"
#: Seconds a worker waits for the others to apply a configuration it relayed.
RELAY_TIMEOUT = 60.0
#: The file descriptors of the control pipes in a worker: it reads 3 and writes 4.
CONTROL_IN_FD = 3
CONTROL_OUT_FD = 4


def worker_index() -> int | None:
    """This process's worker index, or None when it is not a worker."""
    value = os.environ.get(WORKER_INDEX_ENV)
    return int(value) if value is not None and value.isdigit() else None


def parse_adopted(text: str) -> list[tuple[str, int]]:
    """``s3=5,s3=6,metrics=7``: the role and the descriptor of each adopted socket.

    :raises ValueError: for anything else.
    """
    adopted = []
    for item in filter(None, text.split(",")):
        role, _, fd = item.partition("=")
        if role not in ("s3", "metrics") or not fd.isdigit():
            raise ValueError(f"{item!r} is not ROLE=FD with ROLE s3 or metrics")
        adopted.append((role, int(fd)))
    return adopted


class AdoptedPort(Service):
    """A listening socket inherited from the supervisor, served with ``factory`` while running.

    Stopping closes only this process's descriptor: the socket stays open in the supervisor and
    in the other workers (Twisted does not shut a pre-existing socket down).
    """

    def __init__(self, reactor: Any, fd: int, factory: Any) -> None:
        self.reactor = reactor
        self.fd = fd
        self.factory = factory
        self.port: Any = None  # an IListeningPort while running

    def startService(self) -> None:
        super().startService()
        family = socket.socket(fileno=os.dup(self.fd)).family
        self.port = self.reactor.adoptStreamPort(self.fd, family, self.factory)

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        if self.port is None:
            return None
        port, self.port = self.port, None
        return defer.maybeDeferred(port.stopListening)


class _ControlLine(LineOnlyReceiver):
    delimiter = b"\n"
    MAX_LENGTH = 16 * 1024 * 1024

    def __init__(self, channel: SupervisorChannel) -> None:
        self.channel = channel

    def lineReceived(self, line: bytes) -> None:
        self.channel.received(json.loads(line))

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.channel.lost()


class SupervisorChannel:
    """A worker's end of the control pipes: built with the worker's components, opened when it
    starts serving.

    :param health: this worker's monitor: its findings go to the others, theirs come in.
    :param reconfigurator: applies, here, a configuration another worker applied.
    :param reactor: drives the pipes; stopped when the supervisor goes away.
    :param reloads_file: the daemon has a configuration file for SIGHUP to reload.
    """

    def __init__(
        self,
        health: HealthMonitor,
        reconfigurator: Reconfigurator,
        reactor: Any,
        reloads_file: bool,
    ) -> None:
        self.health = health
        self.reconfigurator = reconfigurator
        self.reactor = reactor
        self.reloads_file = reloads_file
        self._next_id = 0
        self._waiting: dict[int, Deferred[dict[str, Any]]] = {}
        self._closing = False
        self.line = _ControlLine(self)
        self._stdio: Any = None

    def open(self) -> None:
        """Take the pipes and the signals over; a request may arrive as soon as this returns."""
        from twisted.internet import stdio

        # The first worker's probes, and what any worker sees on the data path or probes when
        # asked (POST /api/health/probe), reach every worker.
        self.health.listeners.append(self._share_health)
        self._take_signals_from_the_supervisor()
        self._stdio = stdio.StandardIO(
            self.line,
            stdin=CONTROL_IN_FD,  # type: ignore[call-arg]  # POSIX StandardIO takes them
            stdout=CONTROL_OUT_FD,
            reactor=self.reactor,
        )

    def _take_signals_from_the_supervisor(self) -> None:
        """Ctrl-C in a terminal, or a service manager that signals every process of the group,
        reach the workers as well as the supervisor, which forwards SIGTERM anyway: a worker
        ignores SIGINT, stops once however many SIGTERMs arrive, and ignores SIGHUP when there
        is no file to reload (the default action would end it)."""
        reactor = self.reactor
        stopping: list[bool] = []

        def stop_once() -> None:
            if not stopping:
                stopping.append(True)
                reactor.stop()

        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, lambda signum, frame: reactor.callFromThread(stop_once))
        if not self.reloads_file:
            signal.signal(signal.SIGHUP, signal.SIG_IGN)

    def send(self, document: dict[str, Any]) -> None:
        self.line.sendLine(json.dumps(document).encode("utf-8"))

    def ready(self) -> None:
        self.send({"ready": os.getpid()})

    def close(self) -> None:
        self._closing = True
        if self._stdio is not None:
            self._stdio.loseConnection()

    def lost(self) -> None:
        for waiting in self._waiting.values():
            waiting.errback(ConnectionError("the supervisor is gone"))
        self._waiting.clear()
        if not self._closing:
            log.error("the supervisor is gone: this worker stops")
            self.reactor.stop()

    def _share_health(self, name: str, state: BackendHealth) -> None:
        self.send({"health": [name, dataclasses.asdict(state)]})

    def relay(self, config: Config) -> Deferred[dict[str, Any]]:
        """Have every other worker apply ``config``; fires with the supervisor's summary."""
        self._next_id += 1
        answer: Deferred[dict[str, Any]] = Deferred()
        self._waiting[self._next_id] = answer
        self.send({"id": self._next_id, "relay": config_to_dict(config, mask_secrets=False)})
        request_id = self._next_id

        def too_late(failure: Failure) -> dict[str, Any]:
            failure.trap(defer.TimeoutError, defer.CancelledError)
            self._waiting.pop(request_id, None)
            return {"errors": [f"not every worker answered within {RELAY_TIMEOUT:g}s"]}

        answer.addTimeout(RELAY_TIMEOUT, self.reactor)
        return answer.addErrback(too_late)

    def received(self, message: dict[str, Any]) -> None:
        if "relayed" in message:
            waiting = self._waiting.pop(message["id"], None)
            if waiting is not None:
                waiting.callback(message["relayed"])
        elif "health" in message:
            name, state = message["health"]
            self.health.adopt(name, BackendHealth(**state))
        elif "apply" in message:
            self._apply(message["id"], message["apply"])

    @defer.inlineCallbacks
    def _apply(self, request_id: int, document: dict[str, Any]) -> Any:
        try:
            new = parse_config(document, environ={})
            changes = yield self.reconfigurator.apply(new)
        except ConfigError as error:
            self.send({"id": request_id, "errors": error.problems})
            return
        except Exception as error:  # noqa: BLE001 - reported to the worker that asked
            log.failure("applying a relayed configuration failed")
            self.send({"id": request_id, "errors": [f"worker {os.getpid()}: {error}"]})
            return
        self.send({"id": request_id, "changes": changes})


class EveryWorker:
    """What the admin API changes in a worker: the configuration here, then in every other
    worker through the supervisor.

    Applying here first is the check: a configuration that validates and applies in one worker
    applies in the others, which run the same code on the same machine.  What one of them still
    refuses is reported as an error (and logged by that worker).
    """

    def __init__(self, here: Reconfigurator, channel: SupervisorChannel) -> None:
        self.here = here
        self.channel = channel

    def apply(self, new: Config) -> Deferred[list[str]]:
        """:raises ConfigError: when this worker refuses it (nothing changed anywhere) or
        another did."""
        return Deferred.fromCoroutine(self._apply(new))

    async def _apply(self, new: Config) -> list[str]:
        changes = await self.here.apply(new)
        outcome = await self.channel.relay(self.here.config)
        if outcome.get("errors"):
            raise ConfigError([f"not applied by every worker: {e}" for e in outcome["errors"]])
        return changes
