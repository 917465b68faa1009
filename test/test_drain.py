"""Drain at the gateway, over local directories: every object leaves the drained backend for
one placement picks, byte-exact with its metadata; writes stop going there at once; an object
overwritten or deleted during its move is never resurrected nor lost; budgets and room are
respected; cancelling gives the backend back."""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from typing import Any

from twisted.internet import defer
from twisted.trial import unittest

from s3balance import drain
from s3balance.config import Config
from s3balance.db.records import JobRecord, ObjectRecord
from s3balance.drain import start_drain
from s3balance.jobs import JobRunner
from s3balance.net.bytesproducer import BytesProducer
from test.support.daemon import Daemon, local_buckets, start_daemon
from test.support.jobs import assert_reads_back, job_finished, orphans_of, scrubbed

BACKENDS = ["r1", "r2", "r3"]


def body_of(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest() * 100 + key.encode()


class DrainTests(unittest.TestCase):
    timeout = 60

    def configure(self, config: Config) -> None:
        for bucket in config.virtual_buckets:
            if bucket.name == "twice":
                bucket.replicas = 2
        config.jobs.poll_interval = 0.2

    async def _start(self) -> None:
        self.workdir = tempfile.mkdtemp(prefix="s3b-drain-")
        self.addCleanup(shutil.rmtree, self.workdir, True)
        self.daemon: Daemon = await start_daemon(
            self.workdir,
            local_buckets(self.workdir, BACKENDS),
            virtual_buckets=("vb", "twice"),
            configure=self.configure,
        )
        self.addCleanup(lambda: defer.ensureDeferred(self.daemon.stop()))
        self.gateway = self.daemon.gateway
        self.runner: JobRunner = self.daemon.components.jobs
        self.runner.startService()
        self.addCleanup(lambda: self.runner.running and self.runner.stopService())

    def setUp(self) -> defer.Deferred[None]:
        # One process: nobody else to wait for before a drain ends.
        self.patch(drain, "SETTLE_FLUSHES", 0)
        return defer.ensureDeferred(self._start())

    async def write(self, bucket: str, keys: list[str]) -> dict[str, ObjectRecord]:
        written = {}
        for key in keys:
            data = body_of(key)
            written[key] = await self.gateway.put_object(
                bucket, key, BytesProducer(data), len(data), {"content-type": "text/x-k"},
                {"m": key},
            )  # fmt: skip
        return written

    async def finished(self, job_id: int, seconds: float = 20.0) -> JobRecord:
        return await job_finished(self.daemon, job_id, seconds)

    async def assert_intact(self, bucket: str, key: str, data: bytes) -> ObjectRecord:
        """``key`` reads back (through the gateway, and from each copy) as ``data`` with its
        metadata, and has no copy on r1."""
        record = await assert_reads_back(self.daemon, bucket, key, data)
        self.assertNotIn("r1", {location.backend for location in record.locations})
        return record

    async def orphans(self) -> list[Any]:
        return orphans_of(await scrubbed(self.daemon))

    async def test_every_object_leaves_and_new_writes_go_elsewhere_at_once(self) -> None:
        keys = [f"k{index}" for index in range(24)]
        before = await self.write("vb", keys)
        await self.write("twice", keys[:9])
        on_r1 = [k for k in keys if "r1" in {loc.backend for loc in before[k].locations}]
        self.assertTrue(on_r1)
        job = await start_drain(self.runner, "r1")
        self.assertTrue(self.daemon.pool.is_drained("r1"))
        # New writes never go to r1 from now on.
        during = await self.write("vb", [f"new{index}" for index in range(6)])
        self.assertFalse(any(loc.backend == "r1" for r in during.values() for loc in r.locations))
        done = await self.finished(job.id)
        self.assertEqual((done.state, done.progress.errors), ("done", 0))
        self.assertEqual(done.progress.objects_left, 0)
        self.assertGreaterEqual(done.progress.objects_done, len(on_r1))
        self.assertEqual(await self.daemon.real_keys("r1"), [])
        self.assertEqual(await self.daemon.store.held_on("r1"), (0, 0, 0, 0))
        for key in keys:
            await self.assert_intact("vb", key, body_of(key))
        for key in keys[:9]:
            record = await self.assert_intact("twice", key, body_of(key))
            # Two copies still, on distinct backends.
            self.assertEqual(len({loc.backend for loc in record.locations}), 2)
        self.assertEqual(await self.orphans(), [])
        # Draining again answers the same (done) job.
        self.assertEqual((await start_drain(self.runner, "r1")).id, job.id)

    async def test_an_object_changed_during_its_move_is_never_resurrected(self) -> None:
        keys = [f"k{index}" for index in range(12)]
        before = await self.write("vb", keys)
        on_r1 = [k for k in keys if before[k].locations[0].backend == "r1"]
        self.assertGreaterEqual(len(on_r1), 3)
        overwritten, deleted = on_r1[0], on_r1[1]
        copy_one = drain._copy_from

        async def copy_then_change(daemon: Any, record: ObjectRecord, *args: Any) -> int:
            size = await copy_one(daemon, record, *args)
            if record.key == overwritten:
                data = b"replaced meanwhile"
                await self.gateway.put_object("vb", overwritten, BytesProducer(data), len(data),
                                              {"content-type": "text/x-k"}, {"m": overwritten})
            elif record.key == deleted:
                await self.gateway.delete_object("vb", deleted)
            return size

        self.patch(drain, "_copy_from", copy_then_change)
        job = await start_drain(self.runner, "r1")
        done = await self.finished(job.id)
        self.assertEqual(done.state, "done")
        self.assertIsNone(await self.daemon.store.get_object("vb", deleted))
        await self.assert_intact("vb", overwritten, b"replaced meanwhile")
        for key in keys:
            if key not in (overwritten, deleted):
                await self.assert_intact("vb", key, body_of(key))
        self.assertEqual(await self.daemon.real_keys("r1"), [])
        # The copies made of the old bytes were discarded: nothing left that no row names.
        self.assertEqual(await self.orphans(), [])
        old_keys = {before[key].locations[0].real_key for key in (overwritten, deleted)}
        for name in BACKENDS:
            self.assertEqual(set(await self.daemon.real_keys(name)) & old_keys, set(), name)

    async def test_a_backend_at_its_class_a_limit_is_skipped(self) -> None:
        keys = [f"k{index}" for index in range(9)]
        before = await self.write("vb", keys)
        on_r1 = [k for k in keys if before[k].locations[0].backend == "r1"]
        limits = self.daemon.pool.config("r2").operation_limits
        limits.type_a = 1  # r2 has used its budget already
        self.assertTrue(self.daemon.pool.over_write_limit("r2"))
        # Streamed copies (as between two providers): the source's GETs are its class B.
        self.patch(self.daemon.backends["r3"], "can_copy_from", lambda other: False)
        b_before = self.daemon.pool.operation_counts("r1").class_b
        job = await start_drain(self.runner, "r1")
        self.assertEqual((await self.finished(job.id)).state, "done")
        for key in on_r1:
            record = await self.assert_intact("vb", key, body_of(key))
            self.assertEqual([loc.backend for loc in record.locations], ["r3"])
        # The source's HEAD and GET of each object count as class B (its health probes'
        # HeadBuckets too, so at least).
        self.assertTrue(on_r1)
        self.assertGreaterEqual(
            self.daemon.pool.operation_counts("r1").class_b - b_before, 2 * len(on_r1)
        )

    async def test_with_nowhere_to_go_the_job_fails_and_cancel_gives_the_backend_back(
        self,
    ) -> None:
        self.patch(drain, "WAIT_STEP", 0.05)
        self.patch(drain, "FRUITLESS_WAIT", 0.05)
        keys = [f"k{index}" for index in range(6)]
        before = await self.write("vb", keys)
        on_r1 = [k for k in keys if before[k].locations[0].backend == "r1"]
        for name in ("r2", "r3"):
            self.daemon.pool.set_enabled(name, False)
        job = await start_drain(self.runner, "r1")
        failed = await self.finished(job.id)
        self.assertEqual(failed.state, "failed")
        self.assertIn("could not be moved", failed.progress.last_error or "")
        self.flushLoggedErrors(drain.DrainError)
        self.assertGreaterEqual(failed.progress.errors, len(on_r1))
        for key in on_r1:  # still there, still readable
            record = await self.daemon.store.get_object("vb", key)
            assert record is not None
            self.assertEqual(record.locations, before[key].locations)
        # With room again, a resume finishes it.
        for name in ("r2", "r3"):
            self.daemon.pool.set_enabled(name, True)
        await self.runner.control(job.id, "resume")
        self.assertEqual((await self.finished(job.id)).state, "done")
        self.assertEqual(await self.daemon.real_keys("r1"), [])
        # Cancelling a finished job is refused; draining another and cancelling it gives the
        # backend back to placement.
        other = await start_drain(self.runner, "r2")
        await self.runner.control(other.id, "pause")
        self.assertTrue(self.daemon.pool.is_drained("r2"))
        await self.runner.control(other.id, "cancel")
        self.daemon.pool.set_drained(await self.daemon.store.drained_backends())
        self.assertFalse(self.daemon.pool.is_drained("r2"))
        self.assertTrue(self.daemon.pool.is_drained("r1"))

    async def test_writes_of_processes_not_yet_aware_are_moved_before_the_end(self) -> None:
        """Another process places on the backend until its next re-read of the drained list:
        the job does not end before every process has had one, and moves what they wrote."""
        self.patch(drain, "SETTLE_FLUSHES", 1)
        self.daemon.pool.flush_period = 1.0
        job = await start_drain(self.runner, "r1")  # r1 holds nothing yet
        self.daemon.pool.set_drained(set())  # as a daemon that has not re-read it yet
        late = await self.write("vb", [f"late{index}" for index in range(6)])
        self.assertTrue(any(r.locations[0].backend == "r1" for r in late.values()))
        done = await self.finished(job.id)
        self.assertEqual(done.state, "done")
        assert done.finished is not None
        self.assertGreaterEqual(done.finished - done.created, 1.0)
        self.assertEqual(await self.daemon.real_keys("r1"), [])
        for key in late:
            await self.assert_intact("vb", key, body_of(key))

    async def test_repair_makes_a_missing_copy_elsewhere_than_on_a_drained_backend(self) -> None:
        written = await self.write("twice", [f"k{index}" for index in range(6)])
        key = next(k for k, r in written.items() if "r1" in {loc.backend for loc in r.locations})
        self.daemon.pool.set_drained({"r1"})  # drained, its job not run yet
        lost = next(loc for loc in written[key].locations if loc.backend == "r1")
        await self.daemon.backends["r1"].delete_object(lost.real_key)
        await self.daemon.components.repair.run_once()
        record = await self.assert_intact("twice", key, body_of(key))
        self.assertEqual(len({loc.backend for loc in record.locations}), 2)
        self.assertEqual(await self.daemon.real_keys("r1", "twice/" + key), [])

    async def test_pages_resume_after_the_cursor(self) -> None:
        self.patch(drain, "PAGE", 4)
        keys = [f"k{index}" for index in range(30)]
        await self.write("vb", keys)
        saved: list[str | None] = []
        save = self.runner.heartbeat

        async def remember(job: Any) -> None:
            saved.append(job.progress.cursor)
            await save(job)

        self.patch(self.runner, "heartbeat", remember)
        job = await start_drain(self.runner, "r1")
        self.assertEqual((await self.finished(job.id)).state, "done")
        cursors = [int(c) for c in saved if c is not None]
        self.assertEqual(cursors, sorted(cursors))
        self.assertGreaterEqual(len(cursors), 2)  # one save per page of 4
