"""Jobs' queries (:mod:`s3balance.db.jobs`) on SQLite, PostgreSQL and MariaDB: creation, claims
by compare-and-set, heartbeats that see a pause, the control transitions, and drained backends."""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

import pytest
from twisted.internet import defer
from twisted.trial import unittest

from s3balance.db.records import JobProgress
from s3balance.db.store import JobStateError, MetadataStore
from test.dbfixture import (
    MYSQL_SERVER,
    POSTGRES_SERVER,
    fresh_store,
    server_database,
)
from test.test_db_store import obj

Gen = Generator[Any, Any, None]


class JobQueryTests:
    store: MetadataStore
    db_url: str | None = None
    addCleanup: Callable[..., None]
    assertEqual: Callable[..., None]
    assertTrue: Callable[..., None]
    assertFalse: Callable[..., None]
    assertIsNone: Callable[..., None]
    assertIsNotNone: Callable[..., None]
    failureResultOf: Callable[..., Any]

    def setUp(self) -> None:
        self.store = fresh_store(self, self.db_url)

    @defer.inlineCallbacks
    def test_a_job_is_claimed_by_one_owner_until_its_claim_expires(self) -> Gen:
        job = yield self.store.create_job("drain", "b1", {"why": "test"}, 10.0)
        self.assertEqual((job.state, job.params, job.progress), ("queued", {"why": "test"},
                                                                 JobProgress()))  # fmt: skip
        other = yield self.store.create_job("rebalance", "", {}, 11.0)
        # Only the kinds a daemon knows are claimed, oldest first.
        self.assertIsNone((yield self.store.claim_job(("nothing",), "a", 12.0, 72.0)))
        claimed = yield self.store.claim_job(("drain", "rebalance"), "a", 12.0, 72.0)
        self.assertEqual((claimed.id, claimed.state, claimed.owner), (job.id, "running", "a"))
        self.assertEqual((claimed.started, claimed.expires), (12.0, 72.0))
        second = yield self.store.claim_job(("drain",), "b", 13.0, 73.0)
        self.assertIsNone(second)
        # The holder's heartbeat saves progress and renews the claim.
        progress = JobProgress(objects_done=3, objects_left=7, bytes_done=30, bytes_left=70,
                               errors=1, last_error="oops", cursor="42")  # fmt: skip
        state = yield self.store.heartbeat_job(job.id, "a", progress, 50.0, 110.0)
        self.assertEqual(state, "running")
        self.assertIsNone((yield self.store.claim_job(("drain",), "b", 100.0, 160.0)))
        # Its daemon died: once the claim expired, another owner takes it over, with the cursor.
        taken = yield self.store.claim_job(("drain",), "b", 111.0, 171.0)
        self.assertEqual((taken.owner, taken.progress, taken.started), ("b", progress, 12.0))
        self.assertIsNone((yield self.store.heartbeat_job(job.id, "a", progress, 112.0, 172.0)))
        self.assertIsNone((yield self.store.end_job(job.id, "a", progress, 112.0, "done")))
        done = JobProgress(objects_done=10, objects_left=0, bytes_done=100, bytes_left=0)
        self.assertEqual((yield self.store.end_job(job.id, "b", done, 120.0, "done")), "done")
        final = yield self.store.get_job(job.id)
        self.assertEqual((final.state, final.finished, final.owner, final.progress),
                         ("done", 120.0, None, done))  # fmt: skip
        listed = yield self.store.list_jobs()
        self.assertEqual([j.id for j in listed], [other.id, job.id])
        self.assertEqual([j.id for j in (yield self.store.list_jobs(("done",)))], [job.id])
        counts = yield self.store.job_counts()
        self.assertEqual(counts, {("drain", "done"): 1, ("rebalance", "queued"): 1})

    @defer.inlineCallbacks
    def test_pause_resume_and_cancel_follow_the_states(self) -> Gen:
        job = yield self.store.create_job("drain", "b1", {}, 1.0)
        yield self.store.claim_job(("drain",), "a", 2.0, 62.0)
        paused = yield self.store.control_job(job.id, "pause", 3.0)
        self.assertEqual(paused.state, "paused")
        # The holder learns it at its heartbeat, and lets go keeping the pause.
        self.assertEqual(
            (yield self.store.heartbeat_job(job.id, "a", JobProgress(cursor="5"), 4.0, 64.0)),
            "paused",
        )
        left = yield self.store.end_job(job.id, "a", JobProgress(cursor="5"), 5.0, "running")
        self.assertEqual(left, "paused")
        self.assertIsNone((yield self.store.claim_job(("drain",), "b", 6.0, 66.0)))
        error = self.failureResultOf(self.store.control_job(job.id, "pause", 7.0), JobStateError)
        self.assertEqual(error.value.job.state, "paused")
        resumed = yield self.store.control_job(job.id, "resume", 8.0)
        self.assertEqual((resumed.state, resumed.owner, resumed.progress.cursor),
                         ("queued", None, "5"))  # fmt: skip
        again = yield self.store.claim_job(("drain",), "b", 9.0, 69.0)
        self.assertEqual((again.owner, again.progress.cursor), ("b", "5"))
        cancelled = yield self.store.control_job(job.id, "cancel", 10.0)
        self.assertEqual((cancelled.state, cancelled.finished), ("cancelled", 10.0))
        self.assertEqual(
            (yield self.store.heartbeat_job(job.id, "b", JobProgress(), 11.0, 71.0)), "cancelled"
        )
        self.failureResultOf(self.store.control_job(job.id, "resume", 12.0), JobStateError)
        self.failureResultOf(self.store.control_job(job.id, "cancel", 12.0), JobStateError)
        self.assertIsNone((yield self.store.control_job(job.id + 100, "cancel", 12.0)))
        # Resumed while its holder still winds down: claimed only once the holder let go.
        held = yield self.store.create_job("drain", "b3", {}, 20.0)
        yield self.store.claim_job(("drain",), "a", 21.0, 81.0)
        yield self.store.control_job(held.id, "pause", 22.0)
        yield self.store.control_job(held.id, "resume", 23.0)
        self.assertIsNone((yield self.store.claim_job(("drain",), "b", 24.0, 84.0)))
        kept = yield self.store.end_job(held.id, "a", JobProgress(cursor="9"), 25.0, "running")
        self.assertEqual(kept, "queued")
        reclaimed = yield self.store.claim_job(("drain",), "b", 26.0, 86.0)
        self.assertEqual((reclaimed.id, reclaimed.progress.cursor), (held.id, "9"))
        # A failed job may be resumed (tried again).
        failing = yield self.store.create_job("drain", "b2", {}, 13.0)
        yield self.store.claim_job(("drain",), "a", 14.0, 74.0)
        yield self.store.end_job(failing.id, "a", JobProgress(last_error="boom"), 15.0, "failed")
        retried = yield self.store.control_job(failing.id, "resume", 16.0)
        self.assertEqual((retried.state, retried.finished), ("queued", None))

    @defer.inlineCallbacks
    def test_a_drain_marks_the_backend_once_and_cancelling_unmarks_it(self) -> Gen:
        job = yield self.store.drain_backend("b1", 1.0)
        self.assertEqual((job.kind, job.target, job.state), ("drain", "b1", "queued"))
        again = yield self.store.drain_backend("b1", 2.0)
        self.assertEqual(again.id, job.id)
        self.assertEqual((yield self.store.drained_backends()), {"b1": job.id})
        yield self.store.control_job(job.id, "cancel", 3.0)
        self.assertEqual((yield self.store.drained_backends()), {})
        fresh = yield self.store.drain_backend("b1", 4.0)
        self.assertTrue(fresh.id != job.id)
        self.assertEqual((yield self.store.drained_backends()), {"b1": fresh.id})
        # Undraining cancels a running drain; a finished one stays as it is.
        undone = yield self.store.undrain_backend("b1", 5.0)
        self.assertEqual((undone.id, undone.state), (fresh.id, "cancelled"))
        self.assertEqual((yield self.store.drained_backends()), {})
        self.assertIsNone((yield self.store.undrain_backend("b1", 6.0)))
        last = yield self.store.drain_backend("b2", 7.0)
        yield self.store.claim_job(("drain",), "a", 8.0, 68.0)
        yield self.store.end_job(last.id, "a", JobProgress(), 9.0, "done")
        kept = yield self.store.undrain_backend("b2", 10.0)
        self.assertEqual(kept.state, "done")
        self.assertEqual((yield self.store.drained_backends()), {})

    @defer.inlineCallbacks
    def test_locations_on_a_backend_page_by_id_with_what_is_held(self) -> Gen:
        yield self.store.create_bucket("vb", now=0)
        for index in range(5):
            yield self.store.put_object(
                obj(f"k{index}", size=10 + index, locations=(("b1", f"x/{index}"),))
            )
        yield self.store.put_object(obj("other", size=99, locations=(("b2", "x/o"),)))
        first = yield self.store.locations_page("b1", 0, 3)
        self.assertEqual([(loc.key, loc.real_key, loc.size) for loc in first],
                         [("k0", "x/0", 10), ("k1", "x/1", 11), ("k2", "x/2", 12)])  # fmt: skip
        rest = yield self.store.locations_page("b1", first[-1].id, 3)
        self.assertEqual([loc.key for loc in rest], ["k3", "k4"])
        self.assertEqual(rest[0].bucket, "vb")
        self.assertEqual((yield self.store.held_on("b1")), (5, 60, 0, 0))
        self.assertEqual((yield self.store.held_on("b9")), (0, 0, 0, 0))


class SQLiteJobQueryTests(JobQueryTests, unittest.TestCase):
    pass


postgres_db = server_database(POSTGRES_SERVER, "postgres_db")
mysql_db = server_database(MYSQL_SERVER, "mysql_db")


@pytest.mark.postgres
@pytest.mark.usefixtures("postgres_db")
class PostgresJobQueryTests(JobQueryTests, unittest.TestCase):
    pass


@pytest.mark.mysql
@pytest.mark.usefixtures("mysql_db")
class MySQLJobQueryTests(JobQueryTests, unittest.TestCase):
    pass
