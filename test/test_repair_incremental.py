"""What a repair pass costs: it looks at what changed and no more.

A bucket's every object only when its ``replicas`` changed; a lost backend's objects through its
index, once; short writes and leftovers through the queue; copies verified a slice per pass, and
a backend back from unavailable verified whole.  Over local directories and SQLite, with the
statements a pass issues counted.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import math
import time
from typing import Any

import sqlalchemy as sa

from s3balance.db import model
from s3balance.db.records import Location
from s3balance.health import BackendHealth
from s3balance.net.bytesproducer import BytesProducer
from s3balance.repair import RepairPass
from test.test_repair import BACKENDS, RepairBase, body_of

#: Objects of the steady-state measurement.
MANY = 20_000
#: SQLite instructions per progress callback.
STEP = 10


class StatementLog:
    """The statements an engine runs while it is listening, and the work SQLite does for them
    (virtual machine instructions, counted by hundreds: a measure of rows visited)."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self.statements: list[str] = []
        self.instructions = 0
        self.listening = True
        self._counted: list[Any] = []
        sa.event.listen(engine, "before_cursor_execute", self._heard)

    def _heard(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        self.statements.append(statement)
        raw = conn.connection.dbapi_connection
        if raw not in self._counted:
            raw.set_progress_handler(self._step, STEP)
            self._counted.append(raw)

    def _step(self) -> int:
        self.instructions += STEP
        return 0  # go on

    def touching(self, table: str) -> list[str]:
        """The statements that read or write ``table``."""
        return [s for s in self.statements if f"FROM {table}" in s or f"JOIN {table}" in s]

    def close(self) -> None:
        if self.listening:
            self.listening = False
            sa.event.remove(self.engine, "before_cursor_execute", self._heard)
            for raw in self._counted:
                raw.set_progress_handler(None, STEP)


class IncrementalRepair(RepairBase):
    async def run_pass(self) -> RepairPass:
        await self.repairer.run_once()
        assert self.repairer.last is not None
        return self.repairer.last

    def listen(self) -> StatementLog:
        log = StatementLog(self.daemon.store.pool.engine)
        self.addCleanup(log.close)
        return log

    async def set_replicas(self, replicas: int) -> None:
        changed = copy.deepcopy(self.daemon.config)
        for bucket in changed.virtual_buckets:
            bucket.replicas = replicas
        await self.daemon.components.reconfigurator.apply(changed)


class SingleCopySteadyStateTests(IncrementalRepair):
    """``replicas: 1`` and nothing lost, the common deployment."""

    replicas = 1
    timeout = 120

    def insert_many(self) -> None:
        """:data:`MANY` objects with a copy each, written straight into the database."""
        engine = self.daemon.store.pool.engine
        with engine.begin() as connection:
            owner = connection.execute(
                sa.select(model.virtual_buckets.c.id).where(model.virtual_buckets.c.name == "vb")
            ).scalar_one()
            connection.execute(
                model.objects.insert(),
                [
                    {
                        "bucket_id": owner, "key": f"k{index:06d}", "size": 1, "etag": '"e"',
                        "last_modified": 0.0, "headers": {}, "user_metadata": {},
                        "checksums": {}, "part_sizes": [],
                    }
                    for index in range(MANY)
                ],
            )  # fmt: skip
            ids = connection.execute(sa.select(model.objects.c.id)).scalars().all()
            connection.execute(
                model.object_locations.insert(),
                [
                    {"object_id": oid, "position": 0, "backend": BACKENDS[oid % 3],
                     "real_key": f"vb/{oid}"}
                    for oid in ids
                ],
            )  # fmt: skip

    async def test_a_steady_pass_reads_no_object_row(self) -> None:
        self.insert_many()
        first = self.listen()
        started = time.monotonic()
        done = await self.run_pass()
        full_seconds = time.monotonic() - started
        # Never repaired for replicas 1: the bucket's every object looked at, once.
        self.assertEqual(done.full_buckets, ["vb"])
        # That pass is what every pass used to be: a grouped query over every location.
        self.assertEqual(len(first.touching("object_locations")), 1)
        first.close()
        self.assertGreater(first.instructions, MANY * 10)

        steady = self.listen()
        started = time.monotonic()
        for _ in range(3):
            done = await self.run_pass()
            self.assertEqual((done.full_buckets, done.examined, done.verified), ([], 0, 0))
        # The old pass ran the grouped query over all 20,000 rows every time; now no statement
        # of a steady pass reads an object or a location.
        steady_seconds = (time.monotonic() - started) / 3
        steady.close()
        self.assertEqual(steady.touching("object_locations"), [])
        # What it reads: the buckets, the replicas they were repaired for, usage, the queue
        # (empty); the work does not grow with the objects.
        self.assertLessEqual(len(steady.statements), 3 * 4, steady.statements)
        self.assertLess(steady.instructions * 100, first.instructions)
        print(
            f"\nrepair pass over {MANY} single-copy objects: first (full) pass "
            f"~{first.instructions} SQLite instructions ({full_seconds * 1000:.0f} ms), then "
            f"~{steady.instructions // 3} a pass ({steady_seconds * 1000:.1f} ms)"
        )


class ReplicatedIncrementalTests(IncrementalRepair):
    replicas = 2

    async def test_a_replicas_change_rescans_that_bucket_only(self) -> None:
        await self.daemon.store.create_bucket("other", 0.0)
        await self.gateway.put_object("other", "o", BytesProducer(b"x"), 1, {}, {})
        await self.write(["a", "b"])
        self.assertEqual((await self.run_pass()).full_buckets, ["other", "vb"])
        self.assertEqual((await self.run_pass()).full_buckets, [])

        await self.set_replicas(1)
        self.assertEqual((await self.run_pass()).full_buckets, ["vb"])
        for key in ("a", "b"):
            await self.assert_copies(key, 1)
        await self.set_replicas(2)
        done = await self.run_pass()
        self.assertEqual((done.full_buckets, done.copies), (["vb"], 2))
        for key in ("a", "b"):
            await self.assert_copies(key, 2)
        self.assertEqual((await self.run_pass()).full_buckets, [])

    async def test_replicas_changed_and_back_between_passes_still_rescans(self) -> None:
        """2 -> 1 -> 2 before any pass: an object written at 1 still gets its second copy."""
        self.assertEqual((await self.run_pass()).full_buckets, ["vb"])
        await self.set_replicas(1)
        await self.write(["single"])
        await self.set_replicas(2)
        done = await self.run_pass()
        self.assertEqual((done.full_buckets, done.copies), (["vb"], 1))
        await self.assert_copies("single", 2)

    async def test_replicas_changed_and_back_during_a_full_pass_is_not_recorded(self) -> None:
        """The pass began at 2, a reload went to 1 and back to 2 while it ran: objects written
        at 1 may be past its scan, so it records nothing and the next pass looks again."""
        await self.set_replicas(1)
        await self.run_pass()
        await self.set_replicas(2)
        scan = self.repairer._repair_bucket

        async def flipping(*args: Any) -> None:
            await scan(*args)
            await self.set_replicas(1)
            await self.write(["written-at-1"])  # past the scan
            await self.set_replicas(2)

        self.repairer._repair_bucket = flipping  # type: ignore[method-assign]
        self.assertEqual((await self.run_pass()).full_buckets, ["vb"])
        self.repairer._repair_bucket = scan  # type: ignore[method-assign]
        state = (await self.daemon.store.repaired_replicas())["vb"]
        self.assertIsNone(state.replicas)
        done = await self.run_pass()
        self.assertEqual((done.full_buckets, done.copies), (["vb"], 1))
        await self.assert_copies("written-at-1", 2)
        self.assertEqual((await self.run_pass()).full_buckets, [])

    async def test_a_lost_backend_sends_only_its_objects(self) -> None:
        keys = [f"k{index}" for index in range(9)]
        before = await self.write(keys)
        await self.run_pass()
        on_r1 = [k for k in keys if "r1" in {loc.backend for loc in before[k].locations}]
        self.assertTrue(0 < len(on_r1) < len(keys))
        self.daemon.health.mark_failure("r1", "down")

        done = await self.run_pass()
        self.assertEqual(done.full_buckets, [])
        self.assertEqual((done.on_lost_backends, done.examined), (len(on_r1), len(on_r1)))
        self.assertEqual((done.copies, done.backlog), (len(on_r1), 0))
        for key in keys:
            record = await self.assert_copies(key, 2)
            self.assertNotIn("r1", {location.backend for location in record.locations})
        # Looked at once: the next pass does not read r1's locations again.
        log = self.listen()
        done = await self.run_pass()
        self.assertEqual((done.on_lost_backends, done.examined), (0, 0))
        self.assertEqual([s for s in log.statements if "object_locations.backend IN" in s], [])

    async def test_a_copy_another_daemon_puts_on_a_lost_backend_is_looked_at(self) -> None:
        """Usage counts more copies on the lost backend than after the last look: a daemon
        that thinks it healthy wrote there, and its objects are looked at again."""
        await self.write(["k"])
        self.daemon.health.mark_failure("r1", "down")
        await self.run_pass()
        self.assertEqual((await self.run_pass()).on_lost_backends, 0)
        # The other daemon's write: its bytes on r1 and r2, its row naming both.
        data = body_of("late")
        real, _ = self.gateway.new_location("vb", "late")
        for name in ("r1", "r2"):
            backend = self.daemon.backends[name]
            await backend.put_object(real, BytesProducer(data), len(data), {}, {})
        record = dataclasses.replace(
            await self.record("k"), key="late", size=len(data),
            etag=f'"{hashlib.md5(data).hexdigest()}"',
            locations=(Location("r1", real), Location("r2", real)),
        )  # fmt: skip
        await self.daemon.store.commit_object(record)

        done = await self.run_pass()
        self.assertEqual((done.on_lost_backends, done.copies), (1, 1))
        moved = await self.assert_copies("late", 2)
        self.assertNotIn("r1", {location.backend for location in moved.locations})

    async def test_a_backend_back_from_unavailable_is_verified_whole(self) -> None:
        self.repairer.config.after = 3600.0  # down, not lost: its copies stay where they are
        self.repairer.config.verify_batch = 1
        keys = [f"k{index}" for index in range(6)]
        before = await self.write(keys)
        await self.run_pass()
        wiped = [k for k in keys if "r1" in {loc.backend for loc in before[k].locations}]
        self.assertGreater(len(wiped), 1)
        self.daemon.health.mark_failure("r1", "restarting")
        self.wipe("r1")
        await self.run_pass()  # r1 unavailable: neither verified nor lost
        self.daemon.health.adopt("r1", BackendHealth(healthy=True))

        done = await self.run_pass()
        # One object per pass elsewhere, but every copy on r1 at once.
        self.assertEqual((done.copies, done.backlog, done.missing), (len(wiped), 0, len(wiped)))
        for key in keys:
            record = await self.assert_copies(key, 2)
            self.assertEqual(set(record.locations), set(before[key].locations))
        cursor = self.repairer.progress[("r1", "vb")]
        self.assertEqual((cursor.after, cursor.sweep, cursor.last_total), ("", False, len(wiped)))
        others = [self.repairer.progress[(name, "vb")] for name in ("r2", "r3")]
        self.assertTrue(all(c.checked <= 3 for c in others), others)

    async def test_the_cursor_covers_every_copy_in_ceil_n_over_batch_passes_and_wraps(
        self,
    ) -> None:
        self.repairer.config.verify_batch = 3
        keys = [f"k{index}" for index in range(10)]
        before = await self.write(keys)
        await self.run_pass()  # slices of 3 from the start on every backend
        counts = {
            name: sum(name in {loc.backend for loc in r.locations} for r in before.values())
            for name in BACKENDS
        }
        name = max(counts, key=lambda n: counts[n])
        self.assertGreater(counts[name], 3)
        # The last of its copies in key order, corrupted: found only by the pass that gets there.
        last_key = max(k for k in keys if name in {loc.backend for loc in before[k].locations})
        corrupt = next(loc for loc in before[last_key].locations if loc.backend == name)
        backend = self.daemon.backends[name]
        info = await backend.head_object(corrupt.real_key)
        bad = bytes(len(body_of(last_key)))
        await backend.put_object(
            corrupt.real_key, BytesProducer(bad), len(bad), info.headers, info.metadata
        )
        passes = math.ceil(counts[name] / 3)
        for done_passes in range(2, passes + 1):
            cursor = self.repairer.progress[(name, "vb")]
            self.assertEqual((cursor.cycles, cursor.checked), (0, 3 * (done_passes - 1)))
            self.assertEqual(await self.bytes_at(corrupt), bad)
            await self.run_pass()
        cursor = self.repairer.progress[(name, "vb")]
        self.assertEqual((cursor.cycles, cursor.after, cursor.last_total), (1, "", counts[name]))
        self.assertEqual(await self.bytes_at(corrupt), body_of(last_key))
        self.assertEqual(self.repairer.report()["verification"][name]["fraction"], 0.0)
        # It wraps: the next pass starts over from the first key.
        await self.run_pass()
        cursor = self.repairer.progress[(name, "vb")]
        self.assertEqual((cursor.cycles, cursor.checked), (1, 3))
        shown = self.repairer.report()["verification"][name]
        self.assertEqual(shown["buckets"]["vb"]["checked"], 3)
        self.assertAlmostEqual(shown["fraction"], 3 / counts[name])

    async def test_a_listing_spans_its_slice_even_where_a_key_prefixes_the_next(self) -> None:
        """``logs`` sorts after every ``logs/...`` once ``~w`` is appended: its copy gets a HEAD
        so that the slice's listing does not run through every ``logs/`` key past it."""
        self.repairer.config.verify_batch = 3
        keys = ["a", "logs", *[f"logs/{index:02d}" for index in range(12)], "z"]
        before = await self.write(keys)
        await self.run_pass()
        name = before["logs"].locations[0].backend
        backend: Any = self.daemon.backends[name]
        listed: list[int] = []
        list_objects = backend.list_objects

        async def counting(*args: Any, **kwargs: Any) -> Any:
            found = await list_objects(*args, **kwargs)
            listed.append(len(found))
            return found

        backend.list_objects = counting
        corrupt = before["logs"].locations[0]
        info = await backend.head_object(corrupt.real_key)
        bad = bytes(len(body_of("logs")))
        await backend.put_object(
            corrupt.real_key, BytesProducer(bad), len(bad), info.headers, info.metadata
        )
        class_a = self.daemon.pool.operation_counts(name).class_a
        for _ in range(len(keys)):
            await self.run_pass()
        self.assertEqual(await self.bytes_at(corrupt), body_of("logs"))
        self.assertTrue(listed)
        self.assertLessEqual(max(listed), 3, listed)
        # Each listing is a ListObjectsV2 (class A) on the backend, besides the copy made.
        self.assertGreaterEqual(
            self.daemon.pool.operation_counts(name).class_a - class_a, len(listed) + 1
        )

    async def test_progress_shows_in_metrics(self) -> None:
        from s3balance import metrics

        self.repairer.config.verify_batch = 2
        await self.write([f"k{index}" for index in range(6)])
        for _ in range(5):
            await self.run_pass()
        for name in BACKENDS:
            fraction = metrics.REPAIR_VERIFY_PROGRESS.labels(name)._value.get()
            self.assertEqual(fraction, self.repairer.report()["verification"][name]["fraction"])
            self.assertTrue(0.0 <= fraction <= 1.0)
        self.assertGreater(metrics.REPAIR_VERIFIED.labels("r1")._value.get(), 0)
