"""The rebalance job at the gateway, over in-memory backends and a SQLite store: spread ends
within the threshold after an empty backend joins, pack empties the tail, replicas keep their
zones, every object reads back byte-exact with its metadata, an object overwritten or deleted
during its move is never resurrected, one rebalance at a time, pause and resume, and the
automatic check of ``balancer.rebalance``."""

from __future__ import annotations

import hashlib
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from s3balance import metrics
from s3balance.config import BucketConfig, Config
from s3balance.db.records import JobRecord, ObjectRecord
from s3balance.jobs import JobRunner
from s3balance.net.bytesproducer import BytesProducer
from s3balance.reads import ReadRequest
from s3balance.rebalance import (
    KIND_NAME,
    TARGET,
    RebalanceBusy,
    RebalanceSettings,
    RebalanceWatch,
    start_rebalance,
)
from test.support.bodies import collect
from test.support.daemon import Daemon, start_daemon
from test.support.jobs import assert_reads_back, job_finished, orphans_of, scrubbed

#: Each object's size; a backend holds at most CAPACITY bytes (max_size).
SIZE = 4000
CAPACITY = 100 * SIZE


def body_of(key: str) -> bytes:
    digest = hashlib.sha256(key.encode()).digest()
    return (digest * (SIZE // len(digest) + 1))[:SIZE]


class RebalanceJobTests(unittest.TestCase):
    timeout = 60
    #: Backends and their zones.
    zones = {"r1": "east", "r2": "east", "r3": "west"}

    def configure(self, config: Config) -> None:
        config.jobs.poll_interval = 0.2
        for bucket in config.virtual_buckets:
            if bucket.name == "twice":
                bucket.replicas = 2

    async def _start(self) -> None:
        self.daemon: Daemon = await start_daemon(
            self.mktemp(),
            [
                BucketConfig(name=name, path=":memory:", max_size=CAPACITY, zone=zone)
                for name, zone in self.zones.items()
            ],
            virtual_buckets=("vb", "twice"),
            configure=self.configure,
        )
        self.addCleanup(lambda: defer.ensureDeferred(self.daemon.stop()))
        self.gateway = self.daemon.gateway
        self.pool = self.daemon.pool
        self.runner: JobRunner = self.daemon.components.jobs
        self.runner.startService()
        self.addCleanup(lambda: self.runner.running and self.runner.stopService())

    def setUp(self) -> defer.Deferred[None]:
        return defer.ensureDeferred(self._start())

    async def write(self, bucket: str, keys: list[str], only: list[str]) -> None:
        """Write ``keys`` while only the backends ``only`` take writes."""
        for name in self.zones:
            self.pool.set_enabled(name, name in only)
        for key in keys:
            data = body_of(key)
            await self.gateway.put_object(
                bucket, key, BytesProducer(data), len(data), {"content-type": "text/x-k"},
                {"m": key},
            )  # fmt: skip
        for name in self.zones:
            self.pool.set_enabled(name, True)
        await self.daemon.usage.refresh()

    async def finished(self, job_id: int, seconds: float = 30.0) -> JobRecord:
        return await job_finished(self.daemon, job_id, seconds)

    async def fractions(self) -> dict[str, float]:
        usage = await self.daemon.store.usage()
        return {name: usage[name].used_bytes / CAPACITY if name in usage else 0.0
                for name in self.zones}  # fmt: skip

    async def assert_intact(self, bucket: str, key: str, data: bytes) -> ObjectRecord:
        """``key`` reads back as ``data`` with its metadata, through the gateway and from each
        copy, and every copy is on a distinct backend."""
        record = await assert_reads_back(self.daemon, bucket, key, data)
        backends = [location.backend for location in record.locations]
        self.assertEqual(len(backends), len(set(backends)), key)
        return record

    async def assert_nothing_left_behind(self) -> None:
        found = await scrubbed(self.daemon)
        self.assertEqual(orphans_of(found), [])
        self.assertEqual([d for b in found.backends.values() for d in b.dangling], [])

    async def test_spread_evens_out_an_empty_newcomer(self) -> None:
        keys = [f"k{i:03}" for i in range(120)]
        await self.write("vb", keys, only=["r1", "r2"])
        self.assertEqual(await self.fractions(), {"r1": 0.6, "r2": 0.6, "r3": 0.0})
        bytes_before = metrics.JOB_BYTES.labels(KIND_NAME)._value.get()
        job = await start_rebalance(self.runner, RebalanceSettings("spread", 0.05))
        self.assertEqual((job.kind, job.target), (KIND_NAME, TARGET))
        done = await self.finished(job.id)
        self.assertEqual((done.state, done.progress.errors, done.progress.last_error),
                         ("done", 0, None))  # fmt: skip
        fractions = await self.fractions()
        for name, fraction in fractions.items():
            self.assertLessEqual(abs(fraction - 0.4), 0.05 + 1e-9, (name, fractions))
        moved = done.progress.objects_done
        self.assertEqual(done.progress.bytes_done, moved * SIZE)
        self.assertEqual(fractions["r3"], moved * SIZE / CAPACITY)
        self.assertEqual(metrics.JOB_BYTES.labels(KIND_NAME)._value.get() - bytes_before,
                         moved * SIZE)  # fmt: skip
        for key in keys:
            await self.assert_intact("vb", key, body_of(key))
        # The old copies are gone (no delete grace with SQLite and one process).
        held = {name: len(await self.daemon.real_keys(name)) for name in self.zones}
        self.assertEqual(sum(held.values()), len(keys))
        self.assertEqual(held["r3"], moved)
        await self.assert_nothing_left_behind()
        # Balanced now: a new job plans nothing and ends at once.
        again = await self.finished((await start_rebalance(
            self.runner, RebalanceSettings("spread", 0.05))).id)  # fmt: skip
        self.assertEqual((again.state, again.progress.objects_done), ("done", 0))

    async def test_pack_empties_the_last_backend(self) -> None:
        await self.write("vb", [f"a{i}" for i in range(30)], only=["r1"])
        await self.write("vb", [f"b{i}" for i in range(30)], only=["r2"])
        await self.write("vb", [f"c{i}" for i in range(25)], only=["r3"])
        job = await start_rebalance(self.runner, RebalanceSettings("pack", 0.0))
        done = await self.finished(job.id)
        self.assertEqual(done.state, "done")
        self.assertEqual(await self.fractions(), {"r1": 0.85, "r2": 0.0, "r3": 0.0})
        self.assertEqual(await self.daemon.real_keys("r3"), [])
        for key in [f"c{i}" for i in range(25)] + [f"b{i}" for i in range(30)]:
            record = await self.assert_intact("vb", key, body_of(key))
            self.assertNotEqual(record.locations[0].backend, "r3")
        await self.assert_nothing_left_behind()

    async def test_replicas_keep_their_zones(self) -> None:
        # r1 and r2 in the east, r3 in the west: each object has a copy in each zone.
        keys = [f"t{i:02}" for i in range(40)]
        await self.write("twice", keys, only=["r1", "r3"])
        self.assertEqual(await self.fractions(), {"r1": 0.4, "r2": 0.0, "r3": 0.4})
        job = await start_rebalance(self.runner, RebalanceSettings("spread", 0.05))
        done = await self.finished(job.id)
        self.assertEqual(done.state, "done")
        fractions = await self.fractions()
        # Only r1's copies may go to r2 (r3's would leave the west without a copy): r1 gives
        # down to the mean (0.8 / 3), not below.
        self.assertEqual(fractions["r3"], 0.4)
        self.assertLessEqual(abs(fractions["r1"] - 0.8 / 3), 0.05 + 1e-9)
        self.assertGreater(fractions["r2"], 0.1)
        self.assertEqual(fractions["r1"] + fractions["r2"], 0.4)
        for key in keys:
            record = await self.assert_intact("twice", key, body_of(key))
            zones = {self.zones[location.backend] for location in record.locations}
            self.assertEqual(zones, {"east", "west"}, key)
        # The out-of-balance check is still out (r3 cannot give): the job says so.
        self.assertIn("nothing useful to move", done.progress.last_error or "")

    async def test_an_object_changed_during_its_move_is_not_resurrected(self) -> None:
        keys = [f"k{i:02}" for i in range(40)]
        await self.write("vb", keys, only=["r1"])
        key_at = {}
        for key in keys:
            record = await self.daemon.store.get_object("vb", key)
            assert record is not None
            key_at[record.locations[0].real_key] = key
        target = self.daemon.backends["r3"]
        changed: dict[str, bytes | None] = {}

        def meddling(write: Any) -> Any:
            """``write`` (r3's put_object or copy_object, whichever the copy uses), which
            overwrites the object of the first copy and deletes that of the second meanwhile."""

            def wrapped(*args: Any, **kwargs: Any) -> Any:
                key = next((key_at[a] for a in args if isinstance(a, str) and a in key_at), None)
                if key is None:
                    pass  # the overwrite's own write
                elif not changed:
                    changed[key] = b"overwritten" * 10
                    defer.ensureDeferred(self.gateway.put_object(
                        "vb", key, BytesProducer(changed[key]), len(changed[key]), {}, {}
                    ))  # fmt: skip
                elif len(changed) == 1:
                    changed[key] = None
                    defer.ensureDeferred(self.gateway.delete_object("vb", key))
                return write(*args, **kwargs)

            return wrapped

        target.put_object = meddling(target.put_object)  # type: ignore[method-assign]
        target.copy_object = meddling(target.copy_object)  # type: ignore[method-assign]
        self.pool.set_enabled("r2", False)  # r3 alone receives
        job = await start_rebalance(self.runner, RebalanceSettings("spread", 0.0))
        done = await self.finished(job.id)
        self.assertEqual(done.state, "done")
        self.assertEqual(len(changed), 2)
        for key, data in changed.items():
            record = await self.daemon.store.get_object("vb", key)
            if data is None:
                self.assertIsNone(record, key)
            else:
                assert record is not None
                self.assertEqual(record.size, len(data))
                await self.assert_intact_body("vb", key, data)
        for key in keys:
            if key not in changed:
                await self.assert_intact("vb", key, body_of(key))
        await self.assert_nothing_left_behind()

    async def assert_intact_body(self, bucket: str, key: str, data: bytes) -> None:
        plan = await self.gateway.read(bucket, key, ReadRequest(with_body=True))
        async with plan:
            assert plan.stream is not None
            self.assertEqual(await collect(plan.stream), data)

    async def test_one_rebalance_at_a_time_and_pause_resume(self) -> None:
        await self.write("vb", [f"k{i:03}" for i in range(80)], only=["r1"])
        self.runner.limits.max_bytes_per_second = 40 * SIZE  # 40 objects a second
        self.runner.limits.max_concurrency = 1
        job = await start_rebalance(self.runner, RebalanceSettings("spread", 0.02))
        with self.assertRaises(RebalanceBusy) as busy:
            await start_rebalance(self.runner, RebalanceSettings("pack", 0.1))
        self.assertEqual(busy.exception.job.id, job.id)
        await task.deferLater(reactor, 0.3, lambda: None)
        paused = await self.runner.control(job.id, "pause")
        assert paused is not None
        for _ in range(100):  # the moves under way end (bounded wait)
            if job.id not in self.runner.active:
                break
            await task.deferLater(reactor, 0.05, lambda: None)
        self.assertNotIn(job.id, self.runner.active)
        halfway = await self.daemon.store.get_job(job.id)
        assert halfway is not None
        self.assertEqual(halfway.state, "paused")
        self.assertGreater(halfway.progress.objects_done, 0)
        still = (await self.fractions())["r1"]
        await task.deferLater(reactor, 0.3, lambda: None)
        self.assertEqual((await self.fractions())["r1"], still)  # nothing moves while paused
        self.assertGreater(still, 0.4)
        with self.assertRaises(RebalanceBusy):  # paused is still under way
            await start_rebalance(self.runner, RebalanceSettings("pack", 0.1))
        await self.runner.control(job.id, "resume")
        done = await self.finished(job.id)
        self.assertEqual(done.state, "done")
        for fraction in (await self.fractions()).values():
            self.assertLessEqual(abs(fraction - 80 * SIZE / CAPACITY / 3), 0.02 + 1e-9)

    async def test_of_two_jobs_started_at_once_the_newer_ends(self) -> None:
        await self.write("vb", [f"k{i:03}" for i in range(30)], only=["r1"])
        self.runner.stopService()
        params = RebalanceSettings("spread", 0.1).to_params()
        now = reactor.seconds()
        first = await self.daemon.store.create_job(KIND_NAME, TARGET, params, now)
        second = await self.daemon.store.create_job(KIND_NAME, TARGET, params, now)
        self.runner.startService()
        done = [await self.finished(first.id), await self.finished(second.id)]
        self.assertEqual([d.state for d in done], ["done", "done"])
        self.assertGreater(done[0].progress.objects_done, 0)
        self.assertEqual(done[1].progress.objects_done, 0)
        self.assertEqual(done[1].progress.last_error,
                         f"rebalance job {first.id} was under way already")  # fmt: skip

    async def test_the_automatic_check_starts_a_job_when_out_of_balance(self) -> None:
        balancer = self.daemon.config.balancer
        watch = RebalanceWatch(self.runner, lambda: balancer, reactor, 3600)
        self.assertEqual(await watch.run_once(), 0)  # off by default
        self.assertIsNone(watch.last)
        balancer.rebalance = "spread"
        balancer.rebalance_threshold = 0.05
        self.assertEqual(await watch.run_once(), 0)  # nothing stored: balanced
        assert watch.last is not None
        self.assertEqual(watch.last["plan"]["stopped"], "balanced")
        await self.write("vb", [f"k{i:03}" for i in range(45)], only=["r1"])
        self.assertEqual(await watch.run_once(), 1)
        assert watch.last is not None
        job_id = watch.last["started_job"]
        self.assertEqual(watch.last["plan"]["out_of_balance_before"], ["r1", "r2", "r3"])
        self.assertEqual(metrics.REBALANCE_OUT_OF_BALANCE.labels("spread")._value.get(), 3)
        record = await self.daemon.store.get_job(job_id)
        assert record is not None
        self.assertEqual(record.params["mode"], "spread")
        done = await self.finished(job_id)
        self.assertEqual(done.state, "done")
        self.assertEqual(await watch.run_once(), 0)
        assert watch.last is not None
        self.assertEqual((watch.last["plan"]["stopped"], watch.last["started_job"]),
                         ("balanced", None))  # fmt: skip
        self.assertEqual(metrics.REBALANCE_OUT_OF_BALANCE.labels("spread")._value.get(), 0)

    async def test_a_job_stopped_by_a_shutdown_plans_again_when_it_is_taken_up(self) -> None:
        keys = [f"k{i:03}" for i in range(80)]
        await self.write("vb", keys, only=["r1"])
        self.runner.limits.max_bytes_per_second = 40 * SIZE  # 40 objects a second
        job = await start_rebalance(self.runner, RebalanceSettings("spread", 0.02))
        await task.deferLater(reactor, 0.4, lambda: None)
        await self.runner.stopService()  # a daemon shutting down puts its jobs back
        stopped = await self.daemon.store.get_job(job.id)
        assert stopped is not None
        self.assertEqual(stopped.state, "queued")
        self.assertGreater(stopped.progress.objects_done, 0)
        self.assertLess((await self.fractions())["r1"], 0.8)
        self.assertGreater((await self.fractions())["r1"], 0.8 / 3 + 0.02)
        self.runner.startService()
        done = await self.finished(job.id)
        self.assertEqual((done.state, done.progress.errors), ("done", 0))
        self.assertGreater(int(done.progress.cursor or 0), int(stopped.progress.cursor or 0))
        for fraction in (await self.fractions()).values():
            self.assertLessEqual(abs(fraction - 0.8 / 3), 0.02 + 1e-9)
        for key in keys:
            await self.assert_intact("vb", key, body_of(key))
        await self.assert_nothing_left_behind()
