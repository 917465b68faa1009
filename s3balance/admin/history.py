"""A small in-memory history of the daemon's traffic, for the console's charts.

The daemon's counters (:mod:`s3balance.metrics`) only ever grow; a chart of "requests per second
over the last hour" needs their rates at points in time.  :class:`TrafficHistory` reads the
counters every ``period`` seconds and keeps the last ``size`` rates (an hour at the defaults), so
the console needs no Prometheus server.  Memory is bounded by ``size``; nothing is written to disk,
so a restart starts an empty history.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from prometheus_client.metrics import MetricWrapperBase
from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime

from s3balance import metrics
from s3balance.logs import make_logger
from s3balance.periodic import Periodic

log = make_logger()

#: Seconds between two samples.
DEFAULT_PERIOD = 10.0
#: Samples kept: one hour at the default period.
DEFAULT_SIZE = 360


@dataclass(frozen=True)
class Totals:
    """The counters' values at one moment (they only grow, except when a series is dropped)."""

    requests: float = 0.0
    server_errors: float = 0.0
    client_errors: float = 0.0
    bytes_in: float = 0.0
    bytes_out: float = 0.0


@dataclass(frozen=True)
class Sample:
    """Rates per second over the ``period`` that ended at ``time``."""

    time: float
    requests_per_second: float
    server_errors_per_second: float
    client_errors_per_second: float
    bytes_in_per_second: float
    bytes_out_per_second: float


def _sum(
    metric: MetricWrapperBase, accept: Callable[[dict[str, str]], bool] | None = None
) -> float:
    total = 0.0
    for family in metrics.families_of(metric):
        for sample in family.samples:
            if not sample.name.endswith("_total"):
                continue
            if accept is None or accept(sample.labels):
                total += sample.value
    return total


def _status_class(labels: dict[str, str]) -> str:
    return labels.get("status", "")[:1]


def read_totals() -> Totals:
    """The daemon's counters now: S3 requests answered (by status class) and bytes written to
    and read from the real buckets."""
    return Totals(
        requests=_sum(metrics.S3_OPERATIONS),
        server_errors=_sum(metrics.S3_OPERATIONS, lambda labels: _status_class(labels) == "5"),
        client_errors=_sum(metrics.S3_OPERATIONS, lambda labels: _status_class(labels) == "4"),
        bytes_in=_sum(metrics.BACKEND_BYTES_IN),
        bytes_out=_sum(metrics.BACKEND_BYTES_OUT),
    )


def balancer_decisions() -> dict[str, dict[str, float]]:
    """Placement decisions since the daemon started: ``{real bucket: {strategy: count}}``."""
    decisions: dict[str, dict[str, float]] = {}
    for family in metrics.families_of(metrics.BALANCER_DECISIONS):
        for sample in family.samples:
            if not sample.name.endswith("_total"):
                continue
            per_strategy = decisions.setdefault(sample.labels.get("bucket", ""), {})
            strategy = sample.labels.get("strategy", "")
            per_strategy[strategy] = per_strategy.get(strategy, 0.0) + sample.value
    return decisions


class TrafficHistory(Service):
    """Samples :func:`read_totals` every ``period`` seconds and keeps the last ``size`` rates.

    :param clock: the reactor (time and the looping call).
    :param read: where the totals come from (the daemon's counters by default).
    """

    def __init__(
        self,
        clock: IReactorTime,
        period: float = DEFAULT_PERIOD,
        size: int = DEFAULT_SIZE,
        read: Callable[[], Totals] = read_totals,
    ) -> None:
        self.clock = clock
        self.period = period
        self.size = size
        self._read = read
        self._samples: deque[Sample] = deque(maxlen=size)
        self._previous: tuple[float, Totals] | None = None
        self._loop = Periodic(clock, self.sample, "traffic history sample")

    def startService(self) -> None:
        super().startService()
        self._loop.start(self.period)

    def stopService(self) -> Any:
        self._loop.stop()
        return super().stopService()

    def sample(self) -> None:
        """Read the counters and record the rates since the previous reading."""
        now = self.clock.seconds()
        totals = self._read()
        previous = self._previous
        self._previous = (now, totals)
        if previous is None:
            return
        then, before = previous
        elapsed = now - then
        if elapsed <= 0:
            return

        def rate(name: str) -> float:
            # A dropped series (a backend removed by a reload) can make a total go down.
            return max(0.0, getattr(totals, name) - getattr(before, name)) / elapsed

        self._samples.append(
            Sample(
                time=now,
                requests_per_second=rate("requests"),
                server_errors_per_second=rate("server_errors"),
                client_errors_per_second=rate("client_errors"),
                bytes_in_per_second=rate("bytes_in"),
                bytes_out_per_second=rate("bytes_out"),
            )
        )

    def samples(self) -> list[dict[str, float]]:
        """The kept samples, oldest first, as JSON-ready dictionaries."""
        return [asdict(sample) for sample in self._samples]
