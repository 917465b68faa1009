"""The backend pool: which backends may take new bytes, in which order, and monthly budgets."""

from __future__ import annotations

import calendar
import contextlib
import itertools
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.pool import NullPool
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from s3balance import metrics
from s3balance.backends.interface import Capacity
from s3balance.config import BucketConfig, OperationLimits
from s3balance.db.records import BackendUsage, Location, ObjectRecord
from s3balance.db.store import MetadataStore
from s3balance.health import HealthMonitor
from s3balance.placement import make_strategy
from s3balance.pool import BackendPool, month_of
from s3balance.usage import UsageMonitor
from test.dbfixture import make_store

pytestmark = pytest.mark.timeout(60)

_names = itertools.count()

JAN_31_LATE = calendar.timegm((2031, 1, 31, 23, 59, 0))


def unique(prefix: str) -> str:
    return f"{prefix}-{next(_names)}"


class ProbeOnlyBackend:
    """Health and capacity are all the pool and its monitors ask of a backend."""

    def __init__(self, name: str, free: int | None = None, total: int | None = None) -> None:
        self.name = name
        self.free = free
        self.total = total

    def probe(self, timeout: float) -> Deferred[None]:
        return defer.succeed(None)

    def capacity(self) -> Deferred[Capacity]:
        return defer.succeed(Capacity(self.total, self.free))


class NoUsageRows:
    """A store with no usage rows yet (the usage numbers come from ``adjust`` here)."""

    def usage(self) -> Deferred[dict[str, BackendUsage]]:
        return defer.succeed({})


class Fixture:
    def __init__(self, configs: list[BucketConfig], strategy: str = "least-space", **free) -> None:
        self.clock = Clock()
        self.clock.advance(JAN_31_LATE)
        self.backends = {c.name: ProbeOnlyBackend(c.name, free.get(c.name)) for c in configs}
        self.health = HealthMonitor(lambda: self.backends, self.clock, 10.0, 1.0)
        self.usage = UsageMonitor(NoUsageRows(), lambda: self.backends, self.clock, 10.0)
        self.pool = BackendPool(
            dict(self.backends),
            {c.name: c for c in configs},
            make_strategy(strategy),
            self.health,
            self.usage,
            clock=self.clock,
        )

    def candidate_names(self, size: int) -> list[str]:
        return [c.name for c in self.pool.candidates(size)]


def test_candidates_exclude_disabled_unhealthy_and_full_backends() -> None:
    ok, disabled, sick, full = (unique(p) for p in ("ok", "disabled", "sick", "full"))
    fx = Fixture(
        [
            BucketConfig(ok, max_size=1000),
            BucketConfig(disabled, enabled=False),
            BucketConfig(sick),
            BucketConfig(full, max_size=1000),
        ]
    )
    fx.usage.adjust(full, 950, 3)
    fx.health.mark_failure(sick, "connection refused")  # never probed: one failure is decisive
    assert fx.candidate_names(10) == [full, ok]
    assert fx.candidate_names(51) == [ok]
    assert fx.candidate_names(1001) == []
    assert not fx.pool.is_available(disabled)
    assert not fx.pool.is_available(sick)
    assert fx.pool.is_available(full)
    fx.pool.set_enabled(disabled, True)
    assert disabled in fx.candidate_names(10)
    assert fx.pool.is_available(disabled)


def test_a_backend_with_no_room_left_takes_not_even_an_empty_object() -> None:
    name = unique("brim")
    fx = Fixture([BucketConfig(name, max_size=100)])
    fx.usage.adjust(name, 100, 1)
    assert fx.candidate_names(0) == []


def test_storage_free_space_limits_candidates_when_smaller() -> None:
    roomy, cramped = unique("roomy"), unique("cramped")
    fx = Fixture(
        [BucketConfig(roomy), BucketConfig(cramped, max_size=10_000)],
        **{roomy: None, cramped: 300},
    )
    fx.usage.refresh()
    by_name = {c.name: c for c in fx.pool.candidates(100)}
    assert by_name[cramped].free_bytes == 300
    assert by_name[roomy].free_bytes is None
    assert fx.candidate_names(301) == [roomy]


def test_reservations_count_until_released() -> None:
    name, other = unique("reserved"), unique("other")
    fx = Fixture([BucketConfig(name, max_size=1000), BucketConfig(other, max_size=1000)])
    fx.usage.adjust(other, 10, 1)
    assert fx.pool.choose("v", "k", 600) == [name, other]
    release = fx.pool.reserve(name, 600)
    # Only 400 left on the first: a second 600-byte write must go elsewhere.
    assert fx.pool.choose("v", "k2", 600) == [other]
    assert {c.name: c.used_bytes for c in fx.pool.candidates(100)} == {name: 600, other: 10}
    release()
    release()  # twice is harmless
    assert fx.pool.reserved(name) == 0
    assert fx.pool.choose("v", "k3", 600) == [name, other]


def test_choose_follows_the_strategy_and_counts_decisions() -> None:
    names = sorted(unique("rr") for _ in range(3))
    fx = Fixture([BucketConfig(n) for n in names], strategy="round-robin")

    def decisions(name: str) -> float:
        value = metrics.REGISTRY.get_sample_value(
            "s3_balance_balancer_decisions_total", {"strategy": "round-robin", "bucket": name}
        )
        return value or 0.0

    assert [fx.pool.choose("v", f"k{i}", 1)[0] for i in range(6)] == names + names
    assert [decisions(n) for n in names] == [2.0, 2.0, 2.0]
    fx.pool.set_strategy(make_strategy("least-space"))
    fx.usage.adjust(names[0], 50, 1)
    assert fx.pool.choose("v", "k", 1) == [names[1], names[2], names[0]]


def test_choose_with_no_candidate_is_empty_and_counts_nothing() -> None:
    name = unique("off")
    fx = Fixture([BucketConfig(name, enabled=False)])
    assert fx.pool.choose("v", "k", 1) == []


def test_class_a_limit_stops_placement_and_class_b_limit_signals_slow_down() -> None:
    limited, spare = unique("limited"), unique("spare")
    fx = Fixture(
        [
            BucketConfig(limited, operation_limits=OperationLimits(type_a=3, type_b=2)),
            BucketConfig(spare),
        ],
        strategy="round-robin",
    )
    placed = []
    for i in range(4):
        ranked = fx.pool.choose("v", f"k{i}", 1)
        if ranked[0] == limited:
            fx.pool.record_operation(limited, "PutObject", bytes_in=10)
        placed.append(ranked)
    # a, spare, a, spare... until the third class-A operation; then only spare.
    assert fx.pool.operation_counts(limited).class_a == 2
    fx.pool.record_operation(limited, "PutObject")
    assert fx.pool.over_write_limit(limited)
    assert fx.pool.choose("v", "next", 1) == [spare]
    assert not fx.pool.over_read_limit(limited)
    fx.pool.record_operation(limited, "GetObject", bytes_out=5)
    fx.pool.record_operation(limited, "GetObject", bytes_out=5)
    assert fx.pool.over_read_limit(limited)
    assert not fx.pool.over_read_limit(spare)
    assert (
        metrics.REGISTRY.get_sample_value(
            "s3_balance_bucket_operations_month", {"bucket": limited, "class": "A"}
        )
        == 3.0
    )
    assert (
        metrics.REGISTRY.get_sample_value(
            "s3_balance_bucket_operation_limit", {"bucket": limited, "class": "A"}
        )
        == 3.0
    )
    assert (
        metrics.REGISTRY.get_sample_value("s3_balance_backend_bytes_in_total", {"bucket": limited})
        == 20.0
    )
    with pytest.raises(ValueError):
        fx.pool.record_operation(limited, "A")  # type: ignore[arg-type]  # a class, not an operation


def test_a_new_month_resets_the_counts() -> None:
    name = unique("monthly")
    fx = Fixture([BucketConfig(name, operation_limits=OperationLimits(type_a=1))])
    assert month_of(fx.clock.seconds()) == "2031-01"
    fx.pool.record_operation(name, "PutObject")
    assert fx.pool.choose("v", "k", 1) == []
    fx.clock.advance(120)  # February, UTC
    assert fx.pool.choose("v", "k", 1) == [name]
    assert fx.pool.operation_counts(name).month == "2031-02"
    assert fx.pool.operation_counts(name).class_a == 0


def test_replace_returns_removed_backends_and_forgets_their_series() -> None:
    keep, drop, swap = unique("keep"), unique("drop"), unique("swap")
    fx = Fixture([BucketConfig(keep), BucketConfig(drop), BucketConfig(swap)])
    fx.health.mark_failure(drop, "down")
    assert metrics.REGISTRY.get_sample_value("s3_balance_bucket_healthy", {"bucket": drop}) == 0
    new_swap = ProbeOnlyBackend(swap)
    removed = fx.pool.replace(
        {keep: fx.backends[keep], swap: new_swap},  # type: ignore[dict-item]
        {keep: BucketConfig(keep), swap: BucketConfig(swap)},
    )
    assert {id(b) for b in removed} == {id(fx.backends[drop]), id(fx.backends[swap])}
    assert fx.pool.names() == sorted([keep, swap])
    assert fx.pool.get(swap) is new_swap
    with pytest.raises(KeyError):
        fx.pool.get(drop)
    assert metrics.REGISTRY.get_sample_value("s3_balance_bucket_healthy", {"bucket": drop}) is None


# -- with a real SQLite metadata store ------------------------------------------------------


@contextlib.contextmanager
def database_down(store: MetadataStore) -> Iterator[None]:
    """Point the store at a server that refuses connections, as when the database goes away."""
    working = store.pool.engine
    dead = sa.create_engine("postgresql+psycopg2://postgres@127.0.0.1:1/gone", poolclass=NullPool)
    store.pool.engine = dead  # type: ignore[misc]
    try:
        yield
    finally:
        store.pool.engine = working  # type: ignore[misc]
        dead.dispose()


@pytest.fixture
def store(tmp_path) -> Iterator[MetadataStore]:
    made, cleanup = make_store(tmp_path, inline=True)
    try:
        yield made
    finally:
        cleanup()


def put(store: MetadataStore, bucket: str, key: str, size: int, backend: str) -> None:
    record = ObjectRecord(
        bucket=bucket,
        key=key,
        size=size,
        etag='"d41d8cd98f00b204e9800998ecf8427e"',
        last_modified=0.0,
        locations=(Location(backend, f"{bucket}/{key}"),),
    )
    result: list = []
    store.put_object(record).addBoth(result.append)
    assert not isinstance(result[0], Failure), result[0]


class StoreFixture:
    def __init__(self, store: MetadataStore, configs: list[BucketConfig], clock: Clock) -> None:
        self.store = store
        self.clock = clock
        self.backends = {
            c.name: ProbeOnlyBackend(c.name, free=10**9, total=2 * 10**9) for c in configs
        }
        self.health = HealthMonitor(lambda: self.backends, clock, 10.0, 1.0)
        self.usage = UsageMonitor(store, lambda: self.backends, clock, 10.0)
        self.pool = BackendPool(
            dict(self.backends),
            {c.name: c for c in configs},
            make_strategy("least-space"),
            self.health,
            self.usage,
            store=store,
            clock=clock,
            flush_period=5.0,
        )


def fired(d: Deferred) -> object:
    result: list = []
    d.addBoth(result.append)
    assert result, "the Deferred should have fired (inline store, fake clock)"
    assert not isinstance(result[0], Failure), result[0]
    return result[0]


def gauge(name: str, **labels: str) -> float | None:
    return metrics.REGISTRY.get_sample_value(name, labels)


def test_usage_monitor_reads_the_store_and_sets_the_gauges(store: MetadataStore) -> None:
    capped, open_ended = unique("capped"), unique("open")
    clock = Clock()
    fx = StoreFixture(store, [BucketConfig(capped, max_size=5000), BucketConfig(open_ended)], clock)
    fired(store.create_bucket("photos", now=0))
    put(store, "photos", "a.jpg", 1200, capped)
    put(store, "photos", "b.jpg", 300, capped)
    put(store, "photos", "c.jpg", 700, open_ended)
    fx.usage.startService()
    assert fx.usage.usage(capped) == BackendUsage(capped, 1500, 2)
    assert fx.usage.usage(open_ended).used_bytes == 700
    assert fx.usage.storage_free(capped) == 10**9
    assert gauge("s3_balance_bucket_usage_bytes", bucket=capped) == 1500
    assert gauge("s3_balance_bucket_objects", bucket=capped) == 2
    # Capacity: the configured max_size, else what the storage says.
    assert gauge("s3_balance_bucket_capacity_bytes", bucket=capped) == 5000
    assert gauge("s3_balance_bucket_capacity_bytes", bucket=open_ended) == 2 * 10**9
    assert [c.free_bytes for c in fx.pool.candidates(1) if c.name == capped] == [3500]

    # Between refreshes the core's adjustments count at once...
    fx.usage.adjust(capped, 3000, 1)
    assert fx.pool.choose("photos", "big", 1000) == [open_ended]
    # ...and the next refresh brings the store's truth back.
    clock.advance(10.0)
    assert fx.usage.usage(capped).used_bytes == 1500
    fx.usage.stopService()


def test_a_database_failure_does_not_stop_the_usage_loop(store: MetadataStore) -> None:
    name = unique("steady")
    clock = Clock()
    fx = StoreFixture(store, [BucketConfig(name)], clock)
    fired(store.create_bucket("docs", now=0))
    put(store, "docs", "one", 100, name)
    fx.usage.startService()
    assert fx.usage.usage(name).used_bytes == 100

    with database_down(store):
        put_failed = store.put_object(
            ObjectRecord("docs", "two", 50, '"x"', 0.0, locations=(Location(name, "docs/two"),))
        )
        put_failed.addErrback(lambda f: None)
        fx.backends[name].free = 12345
        clock.advance(10.0)
        clock.advance(10.0)
        # The last known numbers stay; the capacity, which does not need the database, moves on.
        assert fx.usage.usage(name).used_bytes == 100
        assert fx.usage.storage_free(name) == 12345
        refreshed = fx.usage.refresh()
        assert refreshed.called, "a refresh with the database down still completes"

    put(store, "docs", "three", 900, name)
    clock.advance(10.0)
    assert fx.usage.usage(name) == BackendUsage(name, 1000, 2)
    fx.usage.stopService()


def test_operation_counts_survive_a_new_pool_on_the_same_store(store: MetadataStore) -> None:
    name = unique("budget")
    limits = OperationLimits(type_a=3, type_b=0)
    clock = Clock()
    clock.advance(JAN_31_LATE - 3600)
    first = StoreFixture(store, [BucketConfig(name, operation_limits=limits)], clock)
    first.pool.startService()
    for _ in range(2):
        first.pool.record_operation(name, "PutObject", bytes_in=10)
    first.pool.record_operation(name, "GetObject", bytes_out=7)
    fired(first.pool.stopService())  # flushes

    second = StoreFixture(store, [BucketConfig(name, operation_limits=limits)], clock)
    second.pool.startService()  # loads this month's counts at once
    counts = second.pool.operation_counts(name)
    assert (counts.class_a, counts.class_b, counts.bytes_in, counts.bytes_out) == (2, 1, 20, 7)
    assert second.pool.choose("v", "k", 1) == [name]
    second.pool.record_operation(name, "PutObject")
    assert second.pool.choose("v", "k", 1) == [], "the third class-A operation used the budget"
    fired(second.pool.stopService())
    stored = fired(store.operation_counts("2031-01"))
    assert stored[name].class_a == 3  # type: ignore[index]


def test_counts_of_another_daemon_are_picked_up_at_the_next_flush(store: MetadataStore) -> None:
    name = unique("shared")
    limits = OperationLimits(type_a=5)
    clock = Clock()
    clock.advance(JAN_31_LATE - 3600)
    ours = StoreFixture(store, [BucketConfig(name, operation_limits=limits)], clock)
    theirs = StoreFixture(store, [BucketConfig(name, operation_limits=limits)], clock)
    ours.pool.startService()
    theirs.pool.startService()
    for _ in range(3):
        theirs.pool.record_operation(name, "PutObject")
    ours.pool.record_operation(name, "PutObject")
    ours.pool.record_operation(name, "PutObject")
    assert ours.pool.operation_counts(name).class_a == 2
    fired(theirs.pool.flush())
    clock.advance(5.0)  # our periodic flush writes ours and reads the total
    assert ours.pool.operation_counts(name).class_a == 5
    assert ours.pool.over_write_limit(name)
    fired(ours.pool.stopService())
    fired(theirs.pool.stopService())
    assert fired(store.operation_counts("2031-01"))[name].class_a == 5  # type: ignore[index]


def test_counts_are_kept_while_the_database_is_down(store: MetadataStore) -> None:
    name = unique("patient")
    clock = Clock()
    clock.advance(JAN_31_LATE - 3600)
    fx = StoreFixture(store, [BucketConfig(name)], clock)
    fx.pool.startService()
    with database_down(store):
        fx.pool.record_operation(name, "PutObject")
        fx.pool.record_operation(name, "GetObject")
        clock.advance(5.0)
        clock.advance(5.0)
        assert fx.pool.operation_counts(name).class_a == 1
    clock.advance(5.0)
    stored = fired(store.operation_counts("2031-01"))
    assert (stored[name].class_a, stored[name].class_b) == (1, 1)  # type: ignore[index]
    assert fx.pool.operation_counts(name).class_a == 1, "flushed once, counted once"
    fired(fx.pool.stopService())


def test_month_roll_over_starts_from_zero_and_keeps_the_old_month(store: MetadataStore) -> None:
    name = unique("rolling")
    clock = Clock()
    clock.advance(JAN_31_LATE)
    fx = StoreFixture(
        store, [BucketConfig(name, operation_limits=OperationLimits(type_a=1))], clock
    )
    fx.pool.startService()
    fx.pool.record_operation(name, "PutObject")
    assert fx.pool.choose("v", "k", 1) == []
    clock.advance(60.0)  # 23:59:00 -> 23:60:00, February in UTC; the flush runs on the way
    clock.advance(5.0)
    assert fx.pool.operation_counts(name).month == "2031-02"
    assert fx.pool.choose("v", "k", 1) == [name]
    assert gauge("s3_balance_bucket_operations_month", bucket=name, **{"class": "A"}) == 0
    fx.pool.record_operation(name, "PutObject")
    fired(fx.pool.stopService())
    assert fired(store.operation_counts("2031-01"))[name].class_a == 1  # type: ignore[index]
    assert fired(store.operation_counts("2031-02"))[name].class_a == 1  # type: ignore[index]
