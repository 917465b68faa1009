"""The job runner (:mod:`s3balance.jobs`) on a real (SQLite) store and a fake clock: claims,
heartbeats and takeover by another daemon, pause/resume/cancel between objects, restarts that
resume from the cursor, failures, shutdown, and the shared limits."""

from __future__ import annotations

import functools
from typing import Any

from twisted.internet import defer, task
from twisted.trial import unittest

from s3balance import metrics
from s3balance.config import JobsConfig
from s3balance.db.records import JobProgress
from s3balance.db.store import MetadataStore
from s3balance.jobs import JobDaemon, JobKind, JobRunner, RunningJob, job_document
from test.dbfixture import make_store

ITEMS = 10


class Counting:
    """A job kind that "moves" items 0..ITEMS-1 one at a time, each when its gate opens (at once
    unless ``gated``), saving the cursor after each; remembers which items each run saw."""

    def __init__(self, name: str = "counting", gated: bool = False) -> None:
        self.name = name
        self.gated = gated
        self.gates: list[defer.Deferred[None]] = []
        self.seen: list[int] = []
        self.fail_at: int | None = None

    @property
    def kind(self) -> JobKind:
        return JobKind(self.name, self.run)

    async def run(self, job: RunningJob) -> None:
        start = int(job.progress.cursor or 0)
        job.update(objects_left=ITEMS - start, bytes_left=(ITEMS - start) * 100)
        for item in range(start, ITEMS):
            job.check()
            await job.transfer(100, functools.partial(self.move, item))
            job.moved(100)
            job.update(cursor=str(item + 1))

    async def move(self, item: int) -> None:
        if self.gated:
            gate: defer.Deferred[None] = defer.Deferred()
            self.gates.append(gate)
            await gate
        if item == self.fail_at:
            raise RuntimeError(f"item {item} broke")
        self.seen.append(item)

    def open_gate(self) -> None:
        self.gates.pop(0).callback(None)


class RunnerTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.store: MetadataStore
        self.store, cleanup = make_store(self, inline=True)
        self.addCleanup(cleanup)

    def runner(self, owner: str, *kinds: Counting, **settings: Any) -> JobRunner:
        config = JobsConfig(lease=30.0, poll_interval=5.0, **settings)
        daemon = JobDaemon(self.store, None, None, None, self.clock, None)  # type: ignore[arg-type]
        runner = JobRunner(daemon, config, owner=owner)
        for kind in kinds:
            runner.register(kind.kind)
        return runner

    def start(self, runner: JobRunner) -> JobRunner:
        runner.startService()
        self.addCleanup(lambda: runner.running and runner.stopService())
        return runner

    async def job(self, job_id: int) -> Any:
        record = await self.store.get_job(job_id)
        assert record is not None
        return record

    async def test_a_submitted_job_runs_to_done_with_its_counters(self) -> None:
        kind = Counting()
        runner = self.start(self.runner("a", kind))
        objects_before = metrics.JOB_OBJECTS.labels("counting")._value.get()
        record = await runner.submit("counting", "t", {"p": 1})
        self.assertEqual(kind.seen, list(range(ITEMS)))
        done = await self.job(record.id)
        self.assertEqual(done.state, "done")
        self.assertEqual(
            (done.progress.objects_done, done.progress.objects_left, done.progress.bytes_done),
            (ITEMS, 0, ITEMS * 100),
        )
        self.assertEqual(done.params, {"p": 1})
        self.assertIsNone(done.owner)
        self.assertEqual(
            metrics.JOB_OBJECTS.labels("counting")._value.get() - objects_before, ITEMS
        )
        self.clock.advance(5)  # the next poll counts jobs by state
        self.assertEqual(metrics.JOBS.labels("counting", "done")._value.get(), 1)
        self.assertEqual(runner.active, {})
        with self.assertRaises(ValueError):
            await runner.submit("unknown", "t", {})

    async def test_pause_stops_between_objects_and_resume_goes_on_from_the_cursor(self) -> None:
        kind = Counting(gated=True)
        runner = self.start(self.runner("a", kind))
        record = await runner.submit("counting", "t", {})
        kind.open_gate()
        kind.open_gate()
        self.assertEqual(kind.seen, [0, 1])
        paused = await runner.control(record.id, "pause")
        assert paused is not None
        self.assertEqual(paused.state, "paused")
        kind.open_gate()  # the object in flight finishes; no other starts
        self.assertEqual(kind.seen, [0, 1, 2])
        self.assertEqual(kind.gates, [])
        stopped = await self.job(record.id)
        self.assertEqual((stopped.state, stopped.progress.cursor, stopped.owner),
                         ("paused", "3", None))  # fmt: skip
        self.clock.advance(30)  # polls claim nothing while paused
        self.assertEqual(kind.gates, [])
        await runner.control(record.id, "resume")
        self.assertEqual(len(kind.gates), 1)
        while kind.gates:
            kind.open_gate()
        self.assertEqual(kind.seen, list(range(ITEMS)))
        self.assertEqual((await self.job(record.id)).state, "done")

    async def test_resumed_while_winding_down_it_runs_once_from_the_cursor(self) -> None:
        kind = Counting(gated=True)
        runner = self.start(self.runner("a", kind))
        record = await runner.submit("counting", "t", {})
        kind.open_gate()
        await runner.control(record.id, "pause")
        await runner.control(record.id, "resume")  # item 1 is still in flight
        self.assertEqual(len(kind.gates), 1)
        kind.open_gate()  # the old run ends; the resumed one starts after it, at item 2
        self.assertEqual(len(kind.gates), 1)
        while kind.gates:
            kind.open_gate()
        self.assertEqual(kind.seen, list(range(ITEMS)))
        final = await self.job(record.id)
        self.assertEqual((final.state, final.owner), ("done", None))

    async def test_a_pause_or_cancel_through_another_daemon_is_seen_at_the_heartbeat(self) -> None:
        kind = Counting(gated=True)
        runner = self.start(self.runner("a", kind))
        record = await runner.submit("counting", "t", {})
        kind.open_gate()
        # Another daemon's admin API (or the command line) only changes the row.
        await self.store.control_job(record.id, "cancel", self.clock.seconds())
        self.clock.advance(runner.heartbeat_period)
        kind.open_gate()
        self.assertEqual(kind.gates, [])
        self.assertEqual(kind.seen, [0, 1])
        final = await self.job(record.id)
        self.assertEqual((final.state, final.progress.cursor), ("cancelled", "2"))

    async def test_a_dead_daemons_job_is_taken_over_after_the_lease_from_its_cursor(self) -> None:
        kind = Counting()
        record = await self.store.create_job("counting", "t", {}, 0.0)
        # Daemon "dead" claimed it, saved its cursor at item 4, then was killed.
        await self.store.claim_job(("counting",), "dead", 0.0, 30.0)
        await self.store.heartbeat_job(record.id, "dead", JobProgress(objects_done=4,
                                       bytes_done=400, cursor="4"), 1.0, 31.0)  # fmt: skip
        self.start(self.runner("b", kind))
        self.assertEqual(kind.seen, [])
        self.clock.advance(25)
        self.assertEqual(kind.seen, [])  # the claim holds until it expires
        self.clock.advance(10)
        self.assertEqual(kind.seen, list(range(4, ITEMS)))
        final = await self.job(record.id)
        self.assertEqual((final.state, final.progress.objects_done), ("done", ITEMS))

    async def test_two_daemons_run_a_job_once(self) -> None:
        first, second = Counting(gated=True), Counting(gated=True)
        a = self.start(self.runner("a", first))
        b = self.start(self.runner("b", second))
        record = await a.submit("counting", "t", {})
        b.wake()
        self.clock.advance(5)
        self.assertEqual((len(first.gates), len(second.gates)), (1, 0))
        # a keeps its claim alive well past the lease: b never takes it.
        for _ in range(ITEMS):
            self.clock.advance(a.heartbeat_period * 10)
            first.open_gate()
        self.assertEqual(first.seen, list(range(ITEMS)))
        self.assertEqual(second.seen, [])
        self.assertEqual((await self.job(record.id)).state, "done")

    async def test_a_restarted_daemon_puts_its_job_back_and_resumes_it(self) -> None:
        kind = Counting(gated=True)
        runner = self.start(self.runner("a", kind))
        record = await runner.submit("counting", "t", {})
        kind.open_gate()
        kind.open_gate()
        stopping = runner.stopService()
        kind.open_gate()  # the object in flight ends, then the job lets go
        await stopping
        queued = await self.job(record.id)
        self.assertEqual(
            (queued.state, queued.progress.cursor, queued.owner), ("queued", "3", None)
        )
        again = Counting()
        self.start(self.runner("a2", again))
        self.assertEqual(again.seen, list(range(3, ITEMS)))
        self.assertEqual((await self.job(record.id)).state, "done")

    async def test_a_failing_job_is_failed_with_its_error_and_can_be_resumed(self) -> None:
        kind = Counting()
        kind.fail_at = 6
        runner = self.start(self.runner("a", kind))
        record = await runner.submit("counting", "t", {})
        failed = await self.job(record.id)
        self.assertEqual(failed.state, "failed")
        self.assertEqual(failed.progress.cursor, "6")
        self.assertIn("item 6 broke", failed.progress.last_error)
        self.flushLoggedErrors(RuntimeError)
        kind.fail_at = None
        await runner.control(record.id, "resume")
        self.assertEqual(kind.seen, list(range(ITEMS)))
        self.assertEqual((await self.job(record.id)).state, "done")

    async def test_the_document_has_an_eta_from_the_rate_so_far(self) -> None:
        kind = Counting(gated=True)
        runner = self.start(self.runner("a", kind))
        record = await runner.submit("counting", "t", {})
        self.clock.advance(10)
        kind.open_gate()
        live = runner.active[record.id]
        document = job_document(await self.job(record.id), self.clock.seconds(), live)
        # 100 bytes in 10 s, 900 left: 90 s.
        self.assertEqual((document["state"], document["bytes_done"], document["eta_seconds"]),
                         ("running", 100, 90.0))  # fmt: skip
        await runner.control(record.id, "cancel")
        kind.open_gate()
