"""Health of each backend, from periodic probes and from failures seen on the data path.

Starting state: a backend starts *healthy*, so the daemon serves at once without waiting for a
probe round.  Because that optimism has no evidence behind it, a backend that fails before it has
ever been seen succeeding (its first probe, or a data-path failure before it) is marked unhealthy
straight away; from then on it takes ``unhealthy_threshold`` consecutive failures to go down and
``healthy_threshold`` consecutive successes to come back, so one lost packet does not flap it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from s3balance import metrics
from s3balance.backends.interface import IBackend
from s3balance.logs import make_logger
from s3balance.operations import Operation
from s3balance.periodic import Periodic

log = make_logger()


@dataclass(frozen=True)
class BackendHealth:
    """What the monitor knows about one backend.

    :ivar last_probe: clock time the last probe (or data-path report) ended; None before any.
    :ivar last_error: the last failure's description; None once it is healthy again.
    :ivar latency: duration of the last successful probe in seconds.
    """

    healthy: bool = True
    last_probe: float | None = None
    last_error: str | None = None
    latency: float | None = None
    consecutive_failures: int = 0
    consecutive_successes: int = 0
    #: Whether any probe ever succeeded: until then a single failure is decisive.
    ever_succeeded: bool = False


def _describe(failure: Failure) -> str:
    if failure.check(defer.TimeoutError, defer.CancelledError):
        return "probe timed out"
    kind = type(failure.value).__name__
    text = str(failure.value)
    return f"{kind}: {text}" if text else kind


class HealthMonitor(Service):
    """Probes every backend each ``period`` seconds, all at once, each bounded by
    ``probe_timeout``; a round still running when the next one is due makes that one skip.

    :param pool_backends: the current backends by name, asked at every round so backends added
        or removed by reconfiguration are followed.
    :param clock: the reactor (or a :class:`twisted.internet.task.Clock` in tests).
    :param record_operation: counts each answered probe as the HeadBucket it sends
        (:meth:`BackendPool.record_operation <s3balance.pool.BackendPool.record_operation>`).
    """

    def __init__(
        self,
        pool_backends: Callable[[], dict[str, IBackend]],
        clock: IReactorTime,
        period: float,
        probe_timeout: float,
        unhealthy_threshold: int = 3,
        healthy_threshold: int = 2,
        record_operation: Callable[[str, Operation], None] | None = None,
    ) -> None:
        if unhealthy_threshold < 1 or healthy_threshold < 1:
            raise ValueError("health thresholds must be at least 1")
        self._backends = pool_backends
        self._record_operation = record_operation
        self._clock = clock
        self.period = period
        self.probe_timeout = probe_timeout
        self.unhealthy_threshold = unhealthy_threshold
        self.healthy_threshold = healthy_threshold
        self._states: dict[str, BackendHealth] = {}
        self._round: Deferred[None] | None = None
        self._probes: list[Deferred[object]] = []
        self._loop = Periodic(clock, self._tick, "health probes")
        self._stopped = False
        #: Called with (name, state) after every change of a backend's state; with
        #: ``server.workers`` the probing worker shares its results through this.
        self.listeners: list[Callable[[str, BackendHealth], None]] = []

    # -- service -----------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._stopped = False
        self._loop.start(self.period)

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        self._loop.stop()
        self._stopped = True
        for probe in list(self._probes):
            probe.cancel()
        return None

    # -- queries -----------------------------------------------------------------------------

    def state(self, name: str) -> BackendHealth:
        """The backend's state; a backend never probed yet is healthy."""
        return self._states.get(name, BackendHealth())

    def states(self) -> dict[str, BackendHealth]:
        """States of all current backends (for the admin API)."""
        return {name: self.state(name) for name in self._backends()}

    def is_healthy(self, name: str) -> bool:
        return self.state(name).healthy

    def reconfigure(
        self, probe_timeout: float, unhealthy_threshold: int, healthy_threshold: int
    ) -> None:
        """Take a reloaded configuration's probe settings; the next probe uses them (the
        period is fixed while the loop runs).

        :raises ValueError: a threshold below 1 (nothing is changed).
        """
        if unhealthy_threshold < 1 or healthy_threshold < 1:
            raise ValueError("health thresholds must be at least 1")
        self.probe_timeout = probe_timeout
        self.unhealthy_threshold = unhealthy_threshold
        self.healthy_threshold = healthy_threshold

    def forget(self, name: str) -> None:
        """Drop a removed backend's state (its metrics go with :func:`metrics.forget_backend`)."""
        self._states.pop(name, None)

    # -- probing -----------------------------------------------------------------------------

    def probe_now(self) -> Deferred[None]:
        """Run a round now (or join the one running); fires when every probe has ended."""
        running = self._round if self._round is not None else self._start_round()
        joined: Deferred[None] = Deferred()

        def chain(result: None) -> None:
            joined.callback(None)
            return result

        running.addBoth(chain)
        return joined

    def _tick(self) -> None:
        if self._round is not None:
            log.warn("previous health round still running; skipping this one")
            return
        self._start_round()

    def _start_round(self) -> Deferred[None]:
        backends = self._backends()
        for name in list(self._states):
            if name not in backends:
                del self._states[name]
        probes = [self._probe(name, backend) for name, backend in backends.items()]
        round_done: Deferred[None] = defer.gatherResults(probes, consumeErrors=True).addCallback(
            lambda _: None
        )
        if not round_done.called:  # probes that answer synchronously end the round at once
            self._round = round_done

            def ended(result: None) -> None:
                self._round = None
                return result

            round_done.addBoth(ended)
        return round_done

    def _probe(self, name: str, backend: IBackend) -> Deferred[None]:
        started = self._clock.seconds()
        probe: Deferred[object] = defer.maybeDeferred(backend.probe, self.probe_timeout)
        probe.addTimeout(self.probe_timeout, self._clock)
        self._probes.append(probe)

        def succeeded(_: object) -> None:
            if self._record_operation is not None:
                self._record_operation(name, "HeadBucket")
            self._record(name, backend, None, self._clock.seconds() - started)

        def failed(failure: Failure) -> None:
            self._record(name, backend, _describe(failure), None)

        def finished(_: object) -> None:
            self._probes.remove(probe)

        probe.addCallbacks(succeeded, failed).addBoth(finished)
        # Whatever happens in the bookkeeping above must not end the round with an error.
        return probe.addErrback(lambda f: log.failure("health bookkeeping failed", f)).addCallback(
            lambda _: None
        )

    def mark_failure(self, name: str, error: str) -> None:
        """Report a hard failure the data path saw (connection refused...): it counts like a
        failed probe."""
        self._update(name, error, None)

    def _record(
        self, name: str, backend: IBackend, error: str | None, latency: float | None
    ) -> None:
        if self._stopped:
            return  # cancelled by stopService: not evidence about the backend
        current = self._backends().get(name)
        if current is not backend:
            return  # removed or replaced while the probe ran: the answer is about something gone
        self._update(name, error, latency)

    def _update(self, name: str, error: str | None, latency: float | None) -> None:
        before = self.state(name)
        now = self._clock.seconds()
        if error is None:
            successes = before.consecutive_successes + 1
            healthy = before.healthy or successes >= self.healthy_threshold
            after = dataclasses.replace(
                before,
                healthy=healthy,
                last_probe=now,
                last_error=None if healthy else before.last_error,
                latency=latency,
                consecutive_failures=0,
                consecutive_successes=successes,
                ever_succeeded=True,
            )
        else:
            failures = before.consecutive_failures + 1
            unhealthy = failures >= self.unhealthy_threshold or not before.ever_succeeded
            after = dataclasses.replace(
                before,
                healthy=before.healthy and not unhealthy,
                last_probe=now,
                last_error=error,
                consecutive_failures=failures,
                consecutive_successes=0,
            )
        self._states[name] = after
        if before.healthy and not after.healthy:
            log.warn("backend {name} is now unhealthy: {error}", name=name, error=error)
        elif after.healthy and not before.healthy:
            log.info("backend {name} is healthy again", name=name)
        metrics.BUCKET_HEALTHY.labels(name).set(1 if after.healthy else 0)
        if latency is not None:
            metrics.BUCKET_PROBE_LATENCY.labels(name).set(latency)
        for listener in self.listeners:
            listener(name, after)

    def adopt(self, name: str, state: BackendHealth) -> None:
        """Take a state another process probed (``server.workers``: only one worker probes)."""
        if name not in self._backends():
            return
        before = self.state(name)
        self._states[name] = state
        if before.healthy != state.healthy:
            log.info("backend {name} healthy: {healthy} (probed by another worker)",
                     name=name, healthy=state.healthy)  # fmt: skip
        metrics.BUCKET_HEALTHY.labels(name).set(1 if state.healthy else 0)
