"""Two daemons sharing one database write the same key: the row must always describe the bytes.

Each "daemon" is a :class:`Gateway` with its own pool ranking and in-process locks, over ONE
metadata store (SQLite, PostgreSQL, MariaDB) and the same real local-directory backends.  The
interleavings of the two races write intents close are forced with backends whose ``put_object``
stores the bytes and then waits for the test before reporting success (so the commit waits).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Generator
from typing import Any

import pytest
import sqlalchemy as sa
from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from s3balance import errors
from s3balance.backends.interface import PutResult
from s3balance.backends.local import LocalDirectoryBackend
from s3balance.db import model
from s3balance.db.store import MetadataStore, WriteIntent
from s3balance.gateway import Gateway, GatewaySettings
from s3balance.web.objects import BytesBody
from test.dbfixture import MYSQL_SERVER, POSTGRES_SERVER, make_store, server_database
from test.test_gateway import HeldBody

KEY = "shared/key"
REAL_KEY = f"vb/{KEY}"


class GatedBackend:
    """A real local backend whose writes report success only when the test fires the gate;
    ``stored`` fires once the bytes are in place (before the gate)."""

    def __init__(self, inner: LocalDirectoryBackend) -> None:
        self.inner = inner
        self.name = inner.name
        self.gates: list[defer.Deferred[None]] = []
        self.stored: list[defer.Deferred[None]] = []

    def gate(self) -> tuple[defer.Deferred[None], defer.Deferred[None]]:
        """Gate the next write: returns (its gate to fire, fired when its bytes are stored)."""
        gate: defer.Deferred[None] = defer.Deferred()
        stored: defer.Deferred[None] = defer.Deferred()
        self.gates.append(gate)
        self.stored.append(stored)
        return gate, stored

    def put_object(self, *args: Any) -> defer.Deferred[PutResult]:
        async def gated() -> PutResult:
            result = await self.inner.put_object(*args)
            if self.gates:
                gate, stored = self.gates.pop(0), self.stored.pop(0)
                stored.callback(None)
                await gate
            return result

        return defer.ensureDeferred(gated())

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class RankedPool:
    """The core's view of a pool, with a fixed ranking (each daemon may prefer another)."""

    def __init__(self, backends: dict[str, Any], ranking: list[str]) -> None:
        self.backends = backends
        self.ranking = ranking

    def get(self, name: str) -> Any:
        return self.backends[name]

    def is_available(self, name: str) -> bool:
        return True

    def choose(self, bucket: str, key: str, size: int) -> list[str]:
        return list(self.ranking)

    def reserve(self, name: str, size: int) -> Callable[[], None]:
        return lambda: None

    def over_read_limit(self, name: str) -> bool:
        return False

    def record_operation(
        self, name: str, op_class: str, bytes_in: int = 0, bytes_out: int = 0
    ) -> None:
        pass


class Nothing:
    def mark_failure(self, name: str, error: str) -> None:
        pass

    def adjust(self, name: str, delta_bytes: int, delta_objects: int) -> None:
        pass


class RefusalWatch:
    """A store proxy whose ``refused`` fires at the first claim refused (a daemon waiting)."""

    def __init__(self, store: MetadataStore) -> None:
        self._store = store
        self.refused: defer.Deferred[None] = defer.Deferred()

    def claim_write(self, *args: Any) -> defer.Deferred[bool]:
        def seen(claimed: bool) -> bool:
            if not claimed and not self.refused.called:
                self.refused.callback(None)
            return claimed

        return self._store.claim_write(*args).addCallback(seen)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def first_of(*deferreds: defer.Deferred[Any]) -> defer.Deferred[Any]:
    return defer.DeferredList(list(deferreds), fireOnOneCallback=True, consumeErrors=True)


class WriteIntentTests:
    db_url: str | None = None
    timeout = 60

    addCleanup: Callable[..., None]
    assertEqual: Callable[..., None]
    assertTrue: Callable[..., None]
    assertFalse: Callable[..., None]
    fail: Callable[..., None]
    mktemp: Callable[[], str]

    def setUp(self) -> defer.Deferred[None]:
        return defer.ensureDeferred(self._setUp())

    async def _setUp(self) -> None:
        self.store, cleanup = make_store(self, url=self.db_url)
        self.addCleanup(cleanup)
        if self.db_url is not None:
            from test.dbfixture import empty_all_tables

            empty_all_tables(self.store.pool.engine)
        await self.store.create_bucket("vb", now=0)
        workdir = tempfile.mkdtemp(prefix="s3b-intents-")
        self.addCleanup(shutil.rmtree, workdir, True)
        self.backends: dict[str, GatedBackend] = {}
        for name in ("x", "y"):
            inner = LocalDirectoryBackend(name, f"{workdir}/{name}", reactor)
            self.addCleanup(inner.close)
            self.backends[name] = GatedBackend(inner)

    def daemon(self, ranking: list[str], clock: Any = reactor, **settings: Any) -> Gateway:
        options: dict[str, Any] = {"claim_poll_initial": 0.01, "claim_poll_max": 0.05}
        options.update(settings)
        return Gateway(
            self.store,
            RankedPool(dict(self.backends), ranking),
            Nothing(),
            Nothing(),
            clock,
            settings=GatewaySettings(**options),
        )

    async def assert_consistent(self, expected: bytes) -> None:
        """The one row's size and ETag are those of the bytes its location holds, and no
        backend holds bytes no row references."""
        record = await self.store.get_object("vb", KEY)
        assert record is not None
        self.assertEqual(record.size, len(expected))
        self.assertEqual(len(record.locations), 1)
        location = record.locations[0]
        stream = await self.backends[location.backend].get_object(location.real_key)
        from test.support.bodies import collect

        self.assertEqual(await collect(stream), expected)
        for name, backend in self.backends.items():
            listed = await backend.list_objects("")
            wanted = [REAL_KEY] if name == location.backend else []
            self.assertEqual([entry.key for entry in listed], wanted, f"on backend {name}")
            for entry in listed:
                self.assertEqual(entry.etag.strip('"'), record.etag.strip('"'))
        rows = await self.store.pool.do_read(
            lambda conn: conn.execute(
                sa.select(sa.func.count()).select_from(model.write_intents)
            ).scalar()
        )
        self.assertEqual(rows, 0, "write intents left behind")

    async def test_same_backend_last_writer_is_last_commit(self) -> None:
        """Scenario 1: A stores its bytes on x, B's write of the same key must not land on x
        and commit before A commits."""
        a, b_store = self.daemon(["x"]), RefusalWatch(self.store)
        b = self.daemon(["x"])
        b.store = b_store  # type: ignore[assignment]
        x = self.backends["x"]
        gate_a, stored_a = x.gate()
        gate_b, _ = x.gate()
        gate_b.callback(None)  # B reports success as soon as its bytes are stored
        put_a = defer.ensureDeferred(a.put_object("vb", KEY, BytesBody(b"A" * 10), 10, {}, {}))
        await stored_a
        put_b = defer.ensureDeferred(b.put_object("vb", KEY, BytesBody(b"B" * 20), 20, {}, {}))
        # Without intents B writes over A's bytes and commits first; with them B waits.
        await first_of(b_store.refused, put_b)
        gate_a.callback(None)
        await put_a
        await put_b
        await self.assert_consistent(b"B" * 20)

    async def test_two_backends_commit_does_not_delete_uncommitted_bytes(self) -> None:
        """Scenario 2: the row points at y; A writes the key to x while B rewrites it on y.
        A's commit must not delete y's bytes, which B is about to commit."""
        await self.daemon(["y"]).put_object("vb", KEY, BytesBody(b"old"), 3, {}, {})
        a, b = self.daemon(["x"]), self.daemon(["y"])
        gate_a, stored_a = self.backends["x"].gate()
        gate_b, stored_b = self.backends["y"].gate()
        put_a = defer.ensureDeferred(a.put_object("vb", KEY, BytesBody(b"A" * 10), 10, {}, {}))
        await stored_a
        put_b = defer.ensureDeferred(b.put_object("vb", KEY, BytesBody(b"B" * 20), 20, {}, {}))
        await stored_b
        gate_a.callback(None)
        await put_a  # A commits first...
        gate_b.callback(None)
        await put_b  # ...B last: B's bytes win, A's are deleted by B's commit.
        await self.assert_consistent(b"B" * 20)

    async def test_two_backends_earlier_writer_committing_last_wins(self) -> None:
        """Scenario 2 the other way round: B (on y) commits first, A (on x) last."""
        await self.daemon(["y"]).put_object("vb", KEY, BytesBody(b"old"), 3, {}, {})
        a, b = self.daemon(["x"]), self.daemon(["y"])
        gate_a, stored_a = self.backends["x"].gate()
        gate_b, stored_b = self.backends["y"].gate()
        put_a = defer.ensureDeferred(a.put_object("vb", KEY, BytesBody(b"A" * 10), 10, {}, {}))
        await stored_a
        put_b = defer.ensureDeferred(b.put_object("vb", KEY, BytesBody(b"B" * 20), 20, {}, {}))
        await stored_b
        gate_b.callback(None)
        await put_b
        gate_a.callback(None)
        await put_a
        await self.assert_consistent(b"A" * 10)

    async def test_delete_leaves_bytes_another_daemon_is_committing(self) -> None:
        """A DeleteObject in one daemon while another rewrites the key in place: the delete must
        not remove the new bytes the other commits right after."""
        await self.daemon(["y"]).put_object("vb", KEY, BytesBody(b"old"), 3, {}, {})
        writer, deleter = self.daemon(["y"]), self.daemon(["y"])
        gate, stored = self.backends["y"].gate()
        put = defer.ensureDeferred(writer.put_object("vb", KEY, BytesBody(b"N" * 7), 7, {}, {}))
        await stored
        await deleter.delete_object("vb", KEY)
        gate.callback(None)
        await put
        await self.assert_consistent(b"N" * 7)

    async def test_dead_daemons_claim_is_taken_over_after_stale_after(self) -> None:
        now = reactor.seconds()
        dead = WriteIntent("dead-token", "dead-daemon", now - 301, 300)
        self.assertTrue(await self.store.claim_write("x", REAL_KEY, dead))
        await self.daemon(["x"], claim_stale_after=300).put_object(
            "vb", KEY, BytesBody(b"fresh"), 5, {}, {}
        )
        await self.assert_consistent(b"fresh")

    async def test_live_claim_makes_the_writer_wait_then_slow_down(self) -> None:
        live = WriteIntent("live-token", "other-daemon", reactor.seconds(), 300)
        self.assertTrue(await self.store.claim_write("x", REAL_KEY, live))
        gateway = self.daemon(["x"], claim_wait_timeout=0.3)
        started = reactor.seconds()
        try:
            await gateway.put_object("vb", KEY, BytesBody(b"late"), 4, {}, {})
        except errors.S3Error as error:
            self.assertEqual(error.code, "SlowDown")
        else:
            self.fail("the write went ahead under another daemon's live claim")
        self.assertTrue(reactor.seconds() - started >= 0.3)
        self.assertEqual(await self.backends["x"].list_objects(""), [])
        self.assertEqual(await self.store.get_object("vb", KEY), None)
        # The other daemon finishes: the write now goes through.
        await self.store.release_write("live-token")
        await gateway.put_object("vb", KEY, BytesBody(b"late"), 4, {}, {})
        await self.assert_consistent(b"late")

    async def test_heartbeat_keeps_a_long_writes_claim_alive(self) -> None:
        clock = task.Clock()
        clock.advance(1000)
        gateway = self.daemon(["x"], clock, claim_heartbeat=30, claim_stale_after=300)
        body = HeldBody(b"slow body")
        put = defer.ensureDeferred(gateway.put_object("vb", KEY, body, body.length, {}, {}))
        await body.written

        async def heartbeat() -> float:
            return float(
                await self.store.pool.do_read(
                    lambda conn: conn.execute(
                        sa.select(model.write_intents.c.heartbeat_at)
                    ).scalar()
                )
            )

        renewed = 0
        beat = await heartbeat()
        for _ in range(14):  # 420 s of a write in progress, well past stale_after
            clock.advance(30)
            previous = beat
            # A renewal lands on a database thread; a tick that comes while the previous
            # renewal is still on its way is skipped (LoopingCall), never stacked up.
            for _ in range(200):
                beat = await heartbeat()
                if beat > previous:
                    renewed += 1
                    break
                await task.deferLater(reactor, 0.01, lambda: None)
            # What matters: the claim never looks like a dead daemon's.
            self.assertLess(clock.seconds() - beat, 300)
        self.assertGreaterEqual(renewed, 7)
        other = WriteIntent("other", "other-daemon", clock.seconds(), 300)
        self.assertFalse(await self.store.claim_write("x", REAL_KEY, other))
        body.release.callback(None)
        await put
        await self.assert_consistent(b"slow body")


class SQLiteWriteIntentTests(WriteIntentTests, unittest.TestCase):
    pass


postgres_db = server_database(POSTGRES_SERVER, "postgres_db")
mysql_db = server_database(MYSQL_SERVER, "mysql_db")


@pytest.mark.postgres
@pytest.mark.usefixtures("postgres_db")
class PostgresWriteIntentTests(WriteIntentTests, unittest.TestCase):
    pass


@pytest.mark.mysql
@pytest.mark.usefixtures("mysql_db")
class MySQLWriteIntentTests(WriteIntentTests, unittest.TestCase):
    pass


class QueryDurationMetricTests(unittest.TestCase):
    timeout = 30

    async def _count(self, operation: str) -> float:
        from s3balance.metrics import REGISTRY

        value = REGISTRY.get_sample_value(
            "s3_balance_db_query_duration_seconds_count", {"operation": operation}
        )
        return value or 0.0

    def test_each_store_call_is_timed_under_its_operation(self) -> defer.Deferred[None]:
        async def run() -> None:
            store, cleanup = make_store(self)
            self.addCleanup(cleanup)
            before = await self._count("create_bucket"), await self._count("get_bucket")
            await store.create_bucket("metered", now=0)
            await store.get_bucket("metered")
            await store.get_bucket("metered")
            after = await self._count("create_bucket"), await self._count("get_bucket")
            self.assertEqual((after[0] - before[0], after[1] - before[1]), (1, 2))

        return defer.ensureDeferred(run())


class ClaimQueueTests(unittest.TestCase):
    """Claims go first come, first served, so one daemon's stream of writers to a hot key cannot
    starve another daemon's writer that polls for it."""

    def setUp(self) -> defer.Deferred[None]:
        store, cleanup = make_store(self, inline=True)
        self.store: MetadataStore = store
        self.addCleanup(cleanup)
        return self.store.create_bucket("vb", 0.0)

    def intent(self, token: str, now: float) -> WriteIntent:
        return WriteIntent(token, token.split("-")[0], now, 300)

    @defer.inlineCallbacks
    def test_an_older_waiter_gets_a_freed_location_before_a_newcomer(self) -> Generator:
        claim = self.store.claim_write
        self.assertTrue((yield claim("x", REAL_KEY, self.intent("a-1", 100.0))))
        # Daemon b's writer finds it held and queues.
        self.assertFalse((yield claim("x", REAL_KEY, self.intent("b-1", 100.5))))
        yield self.store.release_write("a-1")
        # Daemon a's next writer comes straight after the release: b was first.
        self.assertFalse((yield claim("x", REAL_KEY, self.intent("a-2", 101.0))))
        self.assertTrue((yield claim("x", REAL_KEY, self.intent("b-1", 101.2))))
        yield self.store.release_write("b-1")
        # Then a's writer, which queued meanwhile.
        self.assertTrue((yield claim("x", REAL_KEY, self.intent("a-2", 101.5))))

    @defer.inlineCallbacks
    def test_a_waiter_that_stopped_polling_holds_nobody_up(self) -> Generator:
        claim = self.store.claim_write
        self.assertTrue((yield claim("x", REAL_KEY, self.intent("a-1", 100.0))))
        self.assertFalse((yield claim("x", REAL_KEY, self.intent("b-1", 100.5))))
        yield self.store.release_write("a-1")
        # b's client left: it never polls again.  After WAITER_STALE_AFTER, a newcomer goes.
        self.assertFalse((yield claim("x", REAL_KEY, self.intent("a-2", 102.0))))
        self.assertTrue((yield claim("x", REAL_KEY, self.intent("a-2", 106.0))))

    @defer.inlineCallbacks
    def test_a_writer_that_gives_up_leaves_the_queue(self) -> Generator:
        claim = self.store.claim_write
        self.assertTrue((yield claim("x", REAL_KEY, self.intent("a-1", 100.0))))
        self.assertFalse((yield claim("x", REAL_KEY, self.intent("b-1", 100.5))))
        yield self.store.release_write("b-1")  # b answered SlowDown
        yield self.store.release_write("a-1")
        self.assertTrue((yield claim("x", REAL_KEY, self.intent("a-2", 101.0))))
