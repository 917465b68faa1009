"""The backend pool: the one place where a backend is chosen for new bytes.

The pool combines configuration (enabled, ``max_size``, weight, monthly operation budgets),
health (:mod:`s3balance.health`), usage (:mod:`s3balance.usage`) and the bytes of writes still
in flight into the list of :class:`~s3balance.placement.Candidate` a strategy ranks.

Drained backends (:mod:`s3balance.drain`) take no new bytes either, but serve reads: the set
lives in the store (``drained_backends``), and every pool re-reads it with each flush, so every
worker and every daemon sharing the database stops placing there within ``flush_period``; the
process that drains one stops at once (:meth:`BackendPool.set_drained`).

Operation budgets (``operation_limits.type_a`` / ``type_b`` per calendar month, UTC, 0 meaning
unlimited) are counted in memory and flushed to the metadata store every ``flush_period`` and
at :meth:`BackendPool.stopService`; each flush re-reads the month's totals, which picks up counts
written by other daemons sharing the database and those of earlier runs.
"""

from __future__ import annotations

import calendar
import dataclasses
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import Deferred, DeferredLock
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from s3balance import metrics
from s3balance.backends.interface import IBackend
from s3balance.config import BucketConfig
from s3balance.db.records import OperationCounts
from s3balance.db.store import MetadataStore
from s3balance.health import HealthMonitor
from s3balance.labelled import labelled
from s3balance.logs import make_logger
from s3balance.operations import CLASS_A, CLASS_B, FREE, Operation, operation_class
from s3balance.periodic import Periodic
from s3balance.placement import Candidate, IPlacementStrategy, order_reads, spread
from s3balance.usage import UsageMonitor

log = make_logger()

@dataclass
class _Tally:
    """Operations and bytes of one backend in one month, not yet in the store."""

    class_a: int = 0
    class_b: int = 0
    bytes_in: int = 0
    bytes_out: int = 0

    def add(self, other: _Tally) -> None:
        self.class_a += other.class_a
        self.class_b += other.class_b
        self.bytes_in += other.bytes_in
        self.bytes_out += other.bytes_out


#: The last month :func:`month_of` worked out: its first second, the next month's, its name.
_last_month: tuple[float, float, str] = (0.0, 0.0, "")


def month_of(seconds: float) -> str:
    """The calendar month (UTC) of a clock reading, as the store keys it: ``"YYYY-MM"``.

    Every backend operation asks, so the month last found is kept with its bounds and the
    calendar is consulted only when a reading falls outside them.
    """
    global _last_month
    start, end, month = _last_month
    if start <= seconds < end:
        return month
    day = time.gmtime(seconds)
    month = time.strftime("%Y-%m", day)
    following = (day.tm_year + 1, 1) if day.tm_mon == 12 else (day.tm_year, day.tm_mon + 1)
    _last_month = (
        calendar.timegm((day.tm_year, day.tm_mon, 1, 0, 0, 0)),
        calendar.timegm((*following, 1, 0, 0, 0)),
        month,
    )
    return month


class BackendPool(Service):
    """The configured backends and everything that decides whether one may take new bytes.

    :param backends: backends by configured name.
    :param configs: each backend's configuration, same names.
    :param store: where monthly operation counts are kept; None keeps them in memory only.
    :param clock: gives the month (UTC) and drives the periodic flush; the reactor by default.
    :param flush_period: seconds between flushes of operation counts to the store.
    """

    def __init__(
        self,
        backends: dict[str, IBackend],
        configs: dict[str, BucketConfig],
        strategy: IPlacementStrategy,
        health: HealthMonitor,
        usage: UsageMonitor,
        store: MetadataStore | None = None,
        clock: IReactorTime | None = None,
        flush_period: float = 5.0,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor

            clock = reactor  # type: ignore[assignment]
        assert clock is not None
        self._clock: IReactorTime = clock
        self._backends: dict[str, IBackend] = {}
        self._configs: dict[str, BucketConfig] = {}
        self._strategy = strategy
        self._health = health
        self._usage = usage
        self._store = store
        self.flush_period = flush_period
        self._reserved: dict[str, int] = {}
        #: Turns the round-robin of equally fast replicas (:meth:`read_order`).
        self._read_turn = 0
        self._month = month_of(self._clock.seconds())
        #: The store's totals for ``_month`` (as of the last read) plus what we flushed since.
        self._stored: dict[str, _Tally] = {}
        #: Counted but not yet written, by (month, backend).
        self._pending: dict[tuple[str, str], _Tally] = {}
        #: Being written right now, by (month, backend).
        self._flushing: dict[tuple[str, str], _Tally] = {}
        self._flush_lock = DeferredLock()
        #: Real buckets being drained (:mod:`s3balance.drain`): no new bytes go there.
        self._drained: frozenset[str] = frozenset()
        self._loop = Periodic(clock, self._tick, "operation count flush")
        self._set_backends(backends, configs)
        usage.set_max_sizes(lambda: {name: c.max_size for name, c in self._configs.items()})

    # -- service -----------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._loop.start(self.flush_period)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self._loop.stop()
        return self.flush()

    # -- the backend set ---------------------------------------------------------------------

    def get(self, name: str) -> IBackend:
        """:raises KeyError: no backend has that name."""
        return self._backends[name]

    def names(self) -> list[str]:
        return sorted(self._backends)

    def configured_names(self) -> list[str]:
        """The names in configuration order (a rebalance that packs fills them in it)."""
        return list(self._configs)

    def backends(self) -> dict[str, IBackend]:
        """A copy of the current set, for the health and usage monitors."""
        return dict(self._backends)

    def config(self, name: str) -> BucketConfig:
        """:raises KeyError: no backend has that name."""
        return self._configs[name]

    def set_strategy(self, strategy: IPlacementStrategy) -> None:
        self._strategy = strategy

    @property
    def strategy(self) -> IPlacementStrategy:
        return self._strategy

    @property
    def health(self) -> HealthMonitor:
        """The monitor whose verdict the pool follows (for ``/health`` and the admin API)."""
        return self._health

    @property
    def usage(self) -> UsageMonitor:
        return self._usage

    def set_enabled(self, name: str, enabled: bool) -> None:
        """Take a backend out of placement and reads (or put it back) without reconfiguring.

        :raises KeyError: no backend has that name.
        """
        self._configs[name] = dataclasses.replace(self._configs[name], enabled=enabled)

    def replace(
        self, backends: dict[str, IBackend], configs: dict[str, BucketConfig]
    ) -> list[IBackend]:
        """Swap in a new backend set (live reconfiguration).

        :returns: the backends no longer in use (gone, or replaced by a new object under the same
            name): the caller closes them once requests using them have ended.
        """
        removed = [
            backend for name, backend in self._backends.items() if backends.get(name) is not backend
        ]
        for name in set(self._backends) - set(backends):
            metrics.forget_backend(name)
            self._health.forget(name)
            self._usage.forget(name)
            self._reserved.pop(name, None)
        self._set_backends(backends, configs)
        return removed

    def _set_backends(
        self, backends: dict[str, IBackend], configs: dict[str, BucketConfig]
    ) -> None:
        missing = set(backends) - set(configs)
        if missing:
            raise ValueError(f"no configuration for backends {sorted(missing)}")
        self._backends = dict(backends)
        self._configs = {name: configs[name] for name in backends}
        for name, config in self._configs.items():
            metrics.backend_configured(name)
            limits = config.operation_limits
            metrics.BUCKET_OPERATION_LIMIT.labels(name, "A").set(limits.type_a)
            metrics.BUCKET_OPERATION_LIMIT.labels(name, "B").set(limits.type_b)
            self._publish_counts(name)

    def set_drained(self, names: Collection[str]) -> None:
        """The backends that take no new bytes because they are being drained (the store's
        list, re-read with each flush; a drain started here sets it at once)."""
        self._drained = frozenset(names)

    def is_drained(self, name: str) -> bool:
        return name in self._drained

    # -- placement ---------------------------------------------------------------------------

    def is_available(self, name: str) -> bool:
        """Whether reads may go to ``name``: it exists, is enabled and healthy."""
        config = self._configs.get(name)
        return config is not None and config.enabled and self._health.is_healthy(name)

    def candidates(self, size: int, drained_too: bool = False) -> list[Candidate]:
        """Backends that may take a new object of ``size`` bytes, by name.

        Eligible means enabled, healthy, not drained (unless ``drained_too``: the part of an
        upload a drained backend holds), under its class-A budget, and with room: the bytes
        placed there plus those reserved by writes in flight plus ``size`` stay within
        ``max_size`` and within the free space the storage reported (when it reports any).  A
        backend with no room at all is skipped even for an empty object.
        """
        result: list[Candidate] = []
        for name in sorted(self._backends):
            config = self._configs[name]
            if not config.enabled or not self._health.is_healthy(name):
                continue
            if (name in self._drained and not drained_too) or self.over_write_limit(name):
                continue
            free = self.room(name)
            if free is not None and free < max(size, 1):
                continue
            used = self._usage.usage(name).used_bytes + self._reserved.get(name, 0)
            result.append(Candidate(name, config.weight, used, config.max_size, free))
        return result

    def room(self, name: str) -> int | None:
        """Bytes ``name`` may still take: ``max_size`` less the bytes placed and reserved there,
        and no more than the storage reported free (less the reserved bytes); None when neither
        bounds it.

        :raises KeyError: no backend has that name.
        """
        config = self._configs[name]
        used = self._usage.usage(name).used_bytes
        reserved = self._reserved.get(name, 0)
        free: int | None = None
        if config.max_size is not None:
            free = config.max_size - used - reserved
        storage_free = self._usage.storage_free(name)
        if storage_free is not None:
            free = min(storage_free - reserved, free if free is not None else storage_free)
        return free

    def choose(self, bucket: str, key: str, size: int) -> list[str]:
        """Backends for a new object of ``bucket``/``key``, best first, fallbacks after; empty
        when none can take it."""
        ranked = self._strategy.rank(self.candidates(size), bucket, key, size)
        if ranked:
            labelled(metrics.BALANCER_DECISIONS, self._strategy.name, ranked[0]).inc()
        return ranked

    def choose_replicas(
        self,
        bucket: str,
        key: str,
        size: int,
        count: int,
        exclude: Collection[str] = (),
        holding: Collection[str] = (),
    ) -> list[str]:
        """``count`` distinct backends for the copies of a new object, in distinct zones while
        there are enough (:func:`~s3balance.placement.spread`); fewer when fewer can take it.

        :param exclude: backends that already failed this write (or hold a copy).
        :param holding: backends that hold a copy already (repair): their zones come last.
        """
        ranked = [
            name for name in self._strategy.rank(self.candidates(size), bucket, key, size)
            if name not in exclude
        ]  # fmt: skip
        taken = {self.zone_of(name) for name in holding if name in self._configs}
        chosen = spread(ranked, self.zone_of, count, taken)
        for name in chosen:
            labelled(metrics.BALANCER_DECISIONS, self._strategy.name, name).inc()
        return chosen

    def zone_of(self, name: str) -> str:
        """The failure domain of backend ``name`` (:attr:`BucketConfig.failure_domain`).

        :raises KeyError: no backend has that name.
        """
        return self._configs[name].failure_domain

    def read_order(self, names: Sequence[str]) -> list[str]:
        """The backends of ``names`` a read should try, best first: available ones under their
        read budget (:func:`~s3balance.placement.order_reads`), the others left out."""
        usable = [
            name for name in names if self.is_available(name) and not self.over_read_limit(name)
        ]
        order = order_reads(
            usable, lambda name: self._health.state(name).latency, self._read_turn
        )
        self._read_turn += 1
        return order

    def reserve(self, name: str, size: int) -> Callable[[], None]:
        """Count ``size`` bytes against ``name`` while a write streams there, so concurrent
        writes do not all pick a backend that can only hold one of them.

        :returns: a function that releases the reservation (calling it again does nothing); call
            it once the write has committed (after :meth:`UsageMonitor.adjust`) or failed.
        """
        self._reserved[name] = self._reserved.get(name, 0) + size
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            if name in self._reserved:
                self._reserved[name] = max(0, self._reserved[name] - size)

        return release

    def reserved(self, name: str) -> int:
        return self._reserved.get(name, 0)

    # -- operation budgets -------------------------------------------------------------------

    def record_operation(
        self, name: str, operation: Operation, bytes_in: int = 0, bytes_out: int = 0,
        requests: int = 1,
    ) -> None:
        """Count ``requests`` of ``operation`` sent to backend ``name`` this month, in the class
        :data:`~s3balance.operations.OPERATION_CLASSES` gives it (a free one counts nothing
        against the budgets).  The bytes also feed ``s3_balance_backend_bytes_{in,out}_total``:
        count them here only.

        :raises ValueError: ``operation`` is not in the table.
        """
        op_class = operation_class(operation)
        if op_class == FREE and not bytes_in and not bytes_out:
            return
        month = self._current_month()
        tally = self._pending.get((month, name))
        if tally is None:
            tally = self._pending[(month, name)] = _Tally()
        if op_class == CLASS_A:
            tally.class_a += requests
        elif op_class == CLASS_B:
            tally.class_b += requests
        tally.bytes_in += bytes_in
        tally.bytes_out += bytes_out
        if bytes_in:
            labelled(metrics.BACKEND_BYTES_IN, name).inc(bytes_in)
        if bytes_out:
            labelled(metrics.BACKEND_BYTES_OUT, name).inc(bytes_out)
        self._publish_counts(name)

    def operation_counts(self, name: str) -> OperationCounts:
        """This month's counts for ``name`` as far as this daemon knows."""
        month = self._current_month()
        total = _Tally()
        if name in self._stored:
            total.add(self._stored[name])
        for unsaved in (self._flushing, self._pending):
            if (month, name) in unsaved:
                total.add(unsaved[(month, name)])
        return OperationCounts(
            name, month, total.class_a, total.class_b, total.bytes_in, total.bytes_out
        )

    def over_write_limit(self, name: str) -> bool:
        """Whether ``name`` has used its class-A budget this month (it takes no new objects)."""
        limit = self._configs[name].operation_limits.type_a if name in self._configs else 0
        return limit > 0 and self.operation_counts(name).class_a >= limit

    def over_read_limit(self, name: str) -> bool:
        """Whether ``name`` has used its class-B budget this month (the core answers SlowDown)."""
        limit = self._configs[name].operation_limits.type_b if name in self._configs else 0
        return limit > 0 and self.operation_counts(name).class_b >= limit

    def _current_month(self) -> str:
        month = month_of(self._clock.seconds())
        if month != self._month:
            log.info("operation counts: new month {month}", month=month)
            self._month = month
            self._stored = {}
            for name in self._backends:
                self._publish_counts(name)
        return month

    def _publish_counts(self, name: str) -> None:
        counts = self.operation_counts(name)
        labelled(metrics.BUCKET_OPERATIONS_MONTH, name, "A").set(counts.class_a)
        labelled(metrics.BUCKET_OPERATIONS_MONTH, name, "B").set(counts.class_b)

    def flush(self) -> Deferred[None]:
        """Write the counts not yet stored, then re-read this month's totals; never fails
        (a write that fails is kept for the next flush)."""
        flushed: Deferred[None] = self._flush_lock.run(self._flush_once)
        return flushed.addErrback(lambda f: log.failure("operation counter flush failed", f))

    def _tick(self) -> None:
        if not self._flush_lock.locked:
            self.flush()

    def _flush_once(self) -> Deferred[None]:
        batch, self._pending = self._pending, {}
        self._flushing = batch
        # A write that completes synchronously removes itself from ``batch``: iterate a copy.
        writes = [self._write(month, name, tally) for (month, name), tally in list(batch.items())]
        return defer.gatherResults(writes, consumeErrors=True).addCallback(lambda _: self._reread())

    def _write(self, month: str, name: str, tally: _Tally) -> Deferred[None]:
        def written(_: object) -> None:
            self._flushing.pop((month, name), None)
            if month == self._month:
                self._stored.setdefault(name, _Tally()).add(tally)

        def not_written(failure: Failure) -> None:
            self._flushing.pop((month, name), None)
            self._pending.setdefault((month, name), _Tally()).add(tally)
            log.warn(
                "could not store operation counts of {name}: {error}",
                name=name,
                error=failure.getErrorMessage(),
            )

        if self._store is None:
            written(None)
            return defer.succeed(None)
        write: Deferred[None] = defer.maybeDeferred(
            self._store.count_operations,
            name,
            month,
            tally.class_a,
            tally.class_b,
            tally.bytes_in,
            tally.bytes_out,
        )
        return write.addCallbacks(written, not_written)

    def _reread(self) -> Deferred[None] | None:
        if self._store is None:
            return None
        month = self._current_month()

        def got(counts: dict[str, OperationCounts]) -> None:
            if month != self._month:
                return  # the month turned while reading
            self._stored = {
                name: _Tally(c.class_a, c.class_b, c.bytes_in, c.bytes_out)
                for name, c in counts.items()
            }
            for name in self._backends:
                self._publish_counts(name)

        def failed(failure: Failure) -> None:
            log.warn("could not read operation counts: {error}", error=failure.getErrorMessage())

        def drained(names: Collection[str]) -> None:
            self.set_drained(names)

        def not_drained(failure: Failure) -> None:
            log.warn("could not read drained backends: {error}", error=failure.getErrorMessage())

        store = self._store
        read: Deferred[dict[str, OperationCounts]] = defer.maybeDeferred(
            store.operation_counts, month
        )
        read.addCallbacks(got, failed)
        read.addCallback(lambda _: defer.maybeDeferred(store.drained_backends))
        return read.addCallbacks(drained, not_drained)
