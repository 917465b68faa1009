"""``server.workers: N``: the supervisor process that binds and keeps N worker processes running.

Why processes: a small request costs CPU in Python, and one process uses one core.  The
supervisor binds every listening socket itself (so a port in use fails the start at once) and
starts N ``twistd s3balance`` workers that adopt them.  On Linux each worker gets a socket of its
own bound with ``SO_REUSEPORT``, so the kernel spreads new connections evenly over the workers;
elsewhere all workers share one socket.  A worker's socket stays open in the supervisor while
the worker is replaced, so connections queue instead of being refused.

The supervisor serves nothing and opens no database connection.  It

- restarts a worker that dies, after a back-off that doubles (0.5 s up to 30 s) while workers
  keep dying within 10 s of their start, and gives up (exit status 1) when no worker ever came
  up after :data:`START_ATTEMPTS` tries;
- forwards SIGHUP to every worker (each re-reads the file) and, at SIGTERM, sends SIGTERM to
  every worker and waits ``server.shutdown_grace`` (plus a margin) for them to drain;
- relays each worker's health findings to the others (only the first worker probes the
  backends periodically and runs housekeeping, so probes are not multiplied by N);
- relays a configuration one worker applied (``POST /api/config`` and friends) to every other
  worker and reports back, and gives a worker started later the same configuration;
- runs the workers with one Prometheus multiprocess directory for this run, so ``/metrics`` on
  any worker shows the sum over the workers (see :mod:`s3balance.metrics`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

from s3balance.config import Config
from s3balance.logs import make_logger
from s3balance.worker import CONTROL_IN_FD, CONTROL_OUT_FD, WORKER_INDEX_ENV

log = make_logger()

#: Consecutive failed starts, with no worker ever up, after which the supervisor gives up.
START_ATTEMPTS = 3
#: A worker that ran at least this long before dying was healthy: its back-off starts again.
STABLE_AFTER = 10.0
BACKOFF_FIRST, BACKOFF_MAX = 0.5, 30.0
#: Time a worker gets beyond ``server.shutdown_grace`` to exit after SIGTERM, before SIGKILL.
EXIT_MARGIN = 10.0
_FIRST_SOCKET_FD = 5
_UNESCAPED_COLON = re.compile(r"(?<!\\):")


class ListenError(Exception):
    """A listen description the supervisor cannot bind."""


def bind_tcp(description: str, copies: int) -> list[socket.socket]:
    """Bind ``tcp:PORT[:interface=HOST][:backlog=N]`` ``copies`` times (``SO_REUSEPORT``), or once
    where the platform has no ``SO_REUSEPORT``.

    :raises ListenError: for another kind of endpoint, or when the address cannot be bound.
    """
    kind, *parts = _UNESCAPED_COLON.split(description)
    if kind != "tcp" or not parts or not parts[0].isdigit():
        raise ListenError(
            f"{description!r}: with server.workers above 1 only tcp:PORT[:interface=HOST]"
            " listen endpoints are supported"
        )
    port = int(parts[0])
    options = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
    unknown = set(options) - {"interface", "backlog"}
    if unknown:
        raise ListenError(f"{description!r}: unsupported option {sorted(unknown)[0]!r}")
    host = options.get("interface", "0.0.0.0").replace("\\:", ":")
    backlog = int(options.get("backlog", "50"))
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    reuse_port = hasattr(socket, "SO_REUSEPORT") and sys.platform.startswith("linux")
    bound: list[socket.socket] = []
    try:
        for _ in range(copies if reuse_port else 1):
            listener = socket.socket(family, socket.SOCK_STREAM)
            bound.append(listener)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            listener.bind((host, port))
            port = listener.getsockname()[1]  # tcp:0: the copies share the port chosen
            listener.listen(backlog)
            listener.setblocking(False)
    except OSError as error:
        for listener in bound:
            listener.close()
        raise ListenError(f"cannot listen on {description}: {error.strerror}") from None
    return bound


class _WorkerProtocol(ProcessProtocol):
    """One worker process: its output goes to the supervisor's log, its control lines to it."""

    def __init__(self, supervisor: Supervisor, index: int) -> None:
        self.supervisor = supervisor
        self.index = index
        self.ready = False
        self.started_at = supervisor.reactor.seconds()
        self.ended: Deferred[None] = Deferred()
        self._partial: dict[int, bytes] = {1: b"", 2: b"", CONTROL_OUT_FD: b""}

    @property
    def pid(self) -> int | None:
        return self.transport.pid if self.transport is not None else None

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        lines = (self._partial.get(childFD, b"") + data).split(b"\n")
        self._partial[childFD] = lines.pop()
        for line in lines:
            if childFD == CONTROL_OUT_FD:
                try:
                    message = json.loads(line)
                except ValueError:
                    log.error("worker {index} sent a garbled control line", index=self.index)
                    continue
                self.supervisor.control_line(self, message)
            elif line.strip():
                # The worker's own log lines, already timestamped: pass them on as they are.
                sys.stdout.write(f"[worker {self.index}] {line.decode('utf-8', 'replace')}\n")
                sys.stdout.flush()

    def send(self, document: dict[str, Any]) -> None:
        if self.transport is not None and self.pid is not None:
            self.transport.writeToChild(CONTROL_IN_FD, json.dumps(document).encode() + b"\n")

    def signal(self, name: str) -> None:
        if self.transport is not None and self.pid is not None:
            try:
                self.transport.signalProcess(name)
            except OSError:  # exited meanwhile
                pass

    def processEnded(self, reason: Failure) -> None:
        self.supervisor.worker_ended(self, reason)
        self.ended.callback(None)


class Supervisor(Service):
    """Binds, starts ``config.server.workers`` workers, keeps them running, relays between them.

    :param worker_arguments: the twistd plugin's arguments for a worker, without the sockets.
    :param listeners: (role, sockets) pairs already bound, role ``s3`` or ``metrics``; with
        ``SO_REUSEPORT`` one socket per worker, else one shared by all.
    """

    def __init__(
        self,
        config: Config,
        reactor: Any,
        listeners: list[tuple[str, list[socket.socket]]],
        worker_arguments: list[str],
        exit: Callable[[int], None] = os._exit,
    ) -> None:
        self.config = config
        self.reactor = reactor
        self.count = config.server.workers
        self.listeners = listeners
        self.worker_arguments = worker_arguments
        self._exit = exit
        self.workers: dict[int, _WorkerProtocol] = {}
        self._failures: dict[int, int] = {}
        self._restarts: dict[int, Any] = {}
        self._stopping = False
        self._any_ready = False
        self._relays: dict[tuple[int, int], dict[str, Any]] = {}
        self._next_relay = 0
        #: The configuration last applied through a worker, for workers started after it; the
        #: file again after SIGHUP.
        self.applied_config: dict[str, Any] | None = None
        #: The last health message per backend from any worker.
        self.health_states: dict[str, dict[str, Any]] = {}
        self.metrics_dir = tempfile.mkdtemp(prefix="s3balance-metrics-")
        self._previous_sighup: Any = None

    # -- life cycle --------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._previous_sighup = signal.signal(signal.SIGHUP, self._on_sighup)
        log.info(
            "s3balance supervisor {pid}: starting {count} workers",
            pid=os.getpid(),
            count=self.count,
        )
        for index in range(self.count):
            self.start_worker(index)

    def _sockets_of(self, index: int) -> list[tuple[str, socket.socket]]:
        return [(role, bound[index % len(bound)]) for role, bound in self.listeners]

    def start_worker(self, index: int) -> None:
        self._restarts.pop(index, None)
        if self._stopping:
            return
        child_fds: dict[int, int | str] = {0: "w", 1: "r", 2: "r"}
        child_fds[CONTROL_IN_FD] = "w"
        child_fds[CONTROL_OUT_FD] = "r"
        adopted = []
        for offset, (role, listener) in enumerate(self._sockets_of(index)):
            fd = _FIRST_SOCKET_FD + offset
            child_fds[fd] = listener.fileno()
            adopted.append(f"{role}={fd}")
        env = dict(os.environ)
        env[WORKER_INDEX_ENV] = str(index)
        env["PROMETHEUS_MULTIPROC_DIR"] = self.metrics_dir
        arguments = [
            sys.executable,
            "-c",
            "from twisted.scripts.twistd import run; run()",
            "-n",
            "--pidfile=",
            "s3balance",
            *self.worker_arguments,
            f"--adopt={','.join(adopted)}",
        ]
        worker = _WorkerProtocol(self, index)
        self.workers[index] = worker
        self.reactor.spawnProcess(
            worker, sys.executable, arguments, env=env, path=os.getcwd(), childFDs=child_fds
        )
        log.info("worker {index} started (pid {pid})", index=index, pid=worker.pid)

    def worker_ended(self, worker: _WorkerProtocol, reason: Failure) -> None:
        self._forget_metrics_of(worker)
        if self.workers.get(worker.index) is worker:
            del self.workers[worker.index]
        self._fail_relays_of(worker)
        if self._stopping:
            log.info("worker {index} exited", index=worker.index)
            return
        status = "exited" if reason.check(ProcessDone) else f"died: {reason.value}"
        ran = self.reactor.seconds() - worker.started_at
        if ran >= STABLE_AFTER:
            self._failures[worker.index] = 0
        failures = self._failures.get(worker.index, 0) + 1
        self._failures[worker.index] = failures
        if not self._any_ready and failures >= START_ATTEMPTS:
            log.critical(
                "worker {index} {status}; no worker could start after {n} attempts: giving up",
                index=worker.index,
                status=status,
                n=failures,
            )
            self._give_up()
            return
        delay = min(BACKOFF_FIRST * 2 ** (failures - 1), BACKOFF_MAX)
        log.warn(
            "worker {index} (pid {pid}) {status}; restarting it in {delay}s",
            index=worker.index,
            pid=worker.transport.pid if worker.transport else None,
            status=status,
            delay=delay,
        )
        self._restarts[worker.index] = self.reactor.callLater(
            delay, self.start_worker, worker.index
        )

    def _give_up(self) -> None:
        self._stopping = True
        for worker in list(self.workers.values()):
            worker.signal("KILL")
        self._cleanup()
        # twistd would exit 0 after reactor.stop(); a supervisor whose workers cannot start must
        # not look successful to systemd or a container runtime.
        self.reactor.addSystemEventTrigger("after", "shutdown", self._exit, 1)
        self.reactor.stop()

    def _forget_metrics_of(self, worker: _WorkerProtocol) -> None:
        pid = worker.transport.pid if worker.transport is not None else None
        if pid is None:
            return
        try:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(pid, self.metrics_dir)
        except OSError:
            pass

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        super().stopService()
        self._stopping = True
        for call in self._restarts.values():
            if call.active():
                call.cancel()
        self._restarts.clear()
        # New connections are refused from now on: only the workers still hold the sockets,
        # and each closes its own as it starts draining.
        for _, bound in self.listeners:
            for listener in bound:
                listener.close()
        workers = list(self.workers.values())
        log.info("stopping {count} workers", count=len(workers))
        for worker in workers:
            worker.signal("TERM")
        deadline = self.config.server.shutdown_grace + EXIT_MARGIN
        ended = defer.DeferredList([w.ended for w in workers])
        timer = self.reactor.callLater(deadline, self._kill_left, workers)
        yield ended
        if timer.active():
            timer.cancel()
        self._cleanup()

    def _kill_left(self, workers: list[_WorkerProtocol]) -> None:
        for worker in workers:
            if not worker.ended.called:
                log.warn("worker {index} did not exit in time: killed", index=worker.index)
                worker.signal("KILL")

    def _cleanup(self) -> None:
        if self._previous_sighup is not None:
            signal.signal(signal.SIGHUP, self._previous_sighup)
            self._previous_sighup = None
        for _, bound in self.listeners:
            for listener in bound:
                listener.close()
        shutil.rmtree(self.metrics_dir, ignore_errors=True)

    # -- signals and control -----------------------------------------------------------------

    def _on_sighup(self, signum: int, frame: object) -> None:
        self.reactor.callFromThread(self.forward_sighup)

    def forward_sighup(self) -> None:
        """Every worker re-reads the file, which is the configuration from now on."""
        self.applied_config = None
        log.info("SIGHUP: every worker reloads the configuration")
        for worker in self.workers.values():
            worker.signal("HUP")

    def control_line(self, worker: _WorkerProtocol, message: dict[str, Any]) -> None:
        if "ready" in message:
            worker.ready = True
            self._any_ready = True
            self._failures[worker.index] = 0
            log.info("worker {index} (pid {pid}) serves", index=worker.index, pid=message["ready"])
            for finding in self.health_states.values():
                worker.send(finding)
            if self.applied_config is not None:
                self._next_relay += 1
                worker.send({"id": -self._next_relay, "apply": self.applied_config})
        elif "health" in message:
            # A worker's finding, for the others now and for workers started later.
            self.health_states[message["health"][0]] = message
            for other in self.workers.values():
                if other is not worker and other.ready:
                    other.send(message)
        elif "relay" in message:
            self._relay(worker, message["id"], message["relay"])
        elif "changes" in message or "errors" in message:
            self._relay_answer(worker, message)

    def _relay(self, origin: _WorkerProtocol, origin_id: int, config: dict[str, Any]) -> None:
        """Have every worker apply ``config``; answer ``origin`` when all did.

        ``origin`` applied it already and gets it again (which changes nothing) on purpose: when
        two workers change the configuration at the same moment, every worker then applies the
        two in the order the supervisor relays them, and all end with the same one.
        """
        self.applied_config = config
        others = [w for w in self.workers.values() if w.ready or w is origin]
        state: dict[str, Any] = {
            "origin": origin,
            "origin_id": origin_id,
            "pending": set(),
            "errors": [],
            "applied": 0,
        }
        for worker in others:
            self._next_relay += 1
            self._relays[(worker.index, self._next_relay)] = state
            state["pending"].add((worker.index, self._next_relay))
            worker.send({"id": self._next_relay, "apply": config})
        self._maybe_answer(state)

    def _relay_answer(self, worker: _WorkerProtocol, message: dict[str, Any]) -> None:
        key = (worker.index, message["id"])
        state = self._relays.pop(key, None)
        if state is None:
            if message.get("errors"):
                log.error("worker {index} refused the configuration: {e}", index=worker.index,
                          e=message["errors"])  # fmt: skip
            return
        state["pending"].discard(key)
        if message.get("errors"):
            state["errors"].extend(f"worker {worker.index}: {e}" for e in message["errors"])
        else:
            state["applied"] += 1
        self._maybe_answer(state)

    def _fail_relays_of(self, worker: _WorkerProtocol) -> None:
        for key in [k for k in self._relays if k[0] == worker.index]:
            state = self._relays.pop(key)
            state["pending"].discard(key)
            # A worker that died is replaced and gets the configuration when it comes up.
            self._maybe_answer(state)

    def _maybe_answer(self, state: dict[str, Any]) -> None:
        if state["pending"]:
            return
        origin: _WorkerProtocol = state["origin"]
        relayed = {"workers": state["applied"], "errors": state["errors"]}
        origin.send({"id": state["origin_id"], "relayed": relayed})
