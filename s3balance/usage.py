"""Bytes and objects s3balance placed on each backend, and what the storage says it can hold.

The metadata store is the truth for used bytes (it changes them in the same transaction as the
rows); this monitor keeps a copy in memory so placement never waits for the database.  The copy is
refreshed every ``period`` and nudged by :meth:`UsageMonitor.adjust` after each commit in between.
A refresh replaces the copy wholesale, so an ``adjust`` racing with it may be lost until the next
refresh: a bounded, self-correcting error of one period at most.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from s3balance import metrics
from s3balance.backends.interface import Capacity, IBackend
from s3balance.db.records import BackendUsage
from s3balance.db.store import MetadataStore
from s3balance.labelled import labelled
from s3balance.logs import make_logger
from s3balance.periodic import Periodic

log = make_logger()


class UsageMonitor(Service):
    """Refreshes ``store.usage()`` and every backend's ``capacity()`` each ``period`` seconds.

    A failed refresh (database down, a backend not answering within ``period``) is logged and the
    previous numbers are kept; the loop carries on.

    :param backends: the current backends by name, asked at every refresh.
    """

    def __init__(
        self,
        store: MetadataStore,
        backends: Callable[[], dict[str, IBackend]],
        clock: IReactorTime,
        period: float,
    ) -> None:
        self._store = store
        self._backends = backends
        self._clock = clock
        self.period = period
        self._usage: dict[str, BackendUsage] = {}
        self._capacity: dict[str, Capacity] = {}
        self._max_sizes: Callable[[], Mapping[str, int | None]] = dict
        self._running: Deferred[None] | None = None
        self._waiting: list[Deferred[None]] = []
        self._loop = Periodic(clock, self._tick, "usage refresh")

    def set_max_sizes(self, max_sizes: Callable[[], Mapping[str, int | None]]) -> None:
        """Where the configured ``max_size`` of each backend comes from (the pool calls this),
        for the capacity gauge."""
        self._max_sizes = max_sizes

    # -- service -----------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._loop.start(self.period)

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        self._loop.stop()
        return None

    # -- queries -----------------------------------------------------------------------------

    def usage(self, name: str) -> BackendUsage:
        """What s3balance placed on ``name``; zero for a backend the store has no row for."""
        return self._usage.get(name, BackendUsage(name, 0, 0))

    def storage_free(self, name: str) -> int | None:
        """Free bytes as the storage itself reported at the last refresh; None when unknown."""
        capacity = self._capacity.get(name)
        return None if capacity is None else capacity.free_bytes

    def storage_total(self, name: str) -> int | None:
        capacity = self._capacity.get(name)
        return None if capacity is None else capacity.total_bytes

    def adjust(self, name: str, delta_bytes: int, delta_objects: int) -> None:
        """Apply a commit's effect (object stored, replaced, deleted) until the next refresh."""
        before = self.usage(name)
        self._usage[name] = BackendUsage(
            name,
            max(0, before.used_bytes + delta_bytes),
            max(0, before.object_count + delta_objects),
        )
        self._publish(name)

    def forget(self, name: str) -> None:
        """Drop a removed backend's numbers."""
        self._usage.pop(name, None)
        self._capacity.pop(name, None)

    # -- refreshing --------------------------------------------------------------------------

    def refresh(self) -> Deferred[None]:
        """Re-read usage and capacities; fires (never fails) once numbers read *after* this call
        are in place: when a refresh is already running, another one follows it."""
        done: Deferred[None] = Deferred()
        self._waiting.append(done)
        if self._running is None:
            self._start()
        return done

    def _tick(self) -> None:
        if self._running is None:
            self._start()

    def _start(self) -> None:
        waiting, self._waiting = self._waiting, []
        running = self._refresh_once()
        self._running = running

        def ended(_: None) -> None:
            self._running = None
            for done in waiting:
                done.callback(None)
            if self._waiting:
                self._start()

        running.addCallback(ended)

    def _refresh_once(self) -> Deferred[None]:
        backends = self._backends()
        usage_read: Deferred[dict[str, BackendUsage]] = defer.maybeDeferred(self._store.usage)
        usage_read.addTimeout(self.period, self._clock)
        reads: list[Deferred[None]] = [usage_read.addCallbacks(self._got_usage, self._usage_failed)]
        for name, backend in backends.items():
            capacity: Deferred[Capacity] = defer.maybeDeferred(backend.capacity)
            capacity.addTimeout(self.period, self._clock)
            reads.append(
                capacity.addCallbacks(
                    self._got_capacity,
                    self._capacity_failed,
                    callbackArgs=(name,),
                    errbackArgs=(name,),
                )
            )

        def publish(_: object) -> None:
            for name in self._backends():
                self._publish(name)

        return defer.gatherResults(reads, consumeErrors=True).addBoth(publish)

    def _got_usage(self, usage: dict[str, BackendUsage]) -> None:
        self._usage = dict(usage)

    def _usage_failed(self, failure: Failure) -> None:
        log.failure("could not read backend usage from the metadata store", failure)

    def _got_capacity(self, capacity: Capacity, name: str) -> None:
        self._capacity[name] = capacity

    def _capacity_failed(self, failure: Failure, name: str) -> None:
        log.warn(
            "could not read the capacity of backend {name}: {error}",
            name=name,
            error=failure.getErrorMessage(),
        )

    def _publish(self, name: str) -> None:
        used = self.usage(name)
        labelled(metrics.BUCKET_USAGE_BYTES, name).set(used.used_bytes)
        labelled(metrics.BUCKET_OBJECTS, name).set(used.object_count)
        capacity = self._max_sizes().get(name)
        if capacity is None:
            capacity = self.storage_total(name)
        if capacity is not None:
            labelled(metrics.BUCKET_CAPACITY_BYTES, name).set(capacity)
