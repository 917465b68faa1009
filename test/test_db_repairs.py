"""Repair's queries (:mod:`s3balance.db.repairs`) on SQLite, PostgreSQL and MariaDB: candidates,
claims, and the compare-and-set of an object's locations."""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

import pytest
from twisted.internet import defer
from twisted.trial import unittest

from s3balance.db.records import Location
from s3balance.db.repairs import Cursor, RepairedBucket
from s3balance.db.store import MetadataStore
from test.dbfixture import (
    MYSQL_SERVER,
    POSTGRES_SERVER,
    fresh_store,
    server_database,
)
from test.test_db_store import obj

Gen = Generator[Any, Any, None]


class RepairQueryTests:
    store: MetadataStore
    db_url: str | None = None
    addCleanup: Callable[..., None]
    assertEqual: Callable[..., None]
    assertTrue: Callable[..., None]
    assertFalse: Callable[..., None]
    assertIsNone: Callable[..., None]

    def setUp(self) -> None:
        self.store = fresh_store(self, self.db_url)

    @defer.inlineCallbacks
    def test_candidates_are_objects_with_the_wrong_count_or_a_suspect_copy(self) -> Gen:
        yield self.store.create_bucket("vb", now=0)
        yield self.store.put_object(obj("fine", locations=(("b1", "x/1"), ("b2", "x/1"))))
        yield self.store.put_object(obj("short", locations=(("b1", "x/2"),)))
        yield self.store.put_object(
            obj("over", locations=(("b1", "x/3"), ("b2", "x/3"), ("b3", "x/3")))
        )
        yield self.store.put_object(obj("on-b9", locations=(("b1", "x/4"), ("b9", "x/4"))))
        found = yield self.store.repair_candidates("vb", 2, ["b1", "b2", "b3"], "", 10)
        self.assertEqual([key for _, key in found], ["on-b9", "over", "short"])
        page = yield self.store.repair_candidates("vb", 2, ["b1", "b2", "b3"], "on-b9", 1)
        self.assertEqual([key for _, key in page], ["over"])
        counted_only = yield self.store.repair_candidates("vb", 2, None, "", 10)
        self.assertEqual([key for _, key in counted_only], ["over", "short"])
        self.assertEqual((yield self.store.repair_candidates("nope", 2, None, "", 10)), [])
        on = yield self.store.copies_on_backends(["b2", "b9"], ["vb"], 0, 10)
        self.assertEqual([key for _, _, _, key in on], ["fine", "over", "on-b9"])
        self.assertEqual((yield self.store.copies_on_backends(["b2"], ["other"], 0, 10)), [])
        rest = yield self.store.copies_on_backends(["b2", "b9"], ["vb"], on[0][0], 1)
        self.assertEqual([key for _, _, _, key in rest], ["over"])

    @defer.inlineCallbacks
    def test_replicas_repaired_are_remembered_and_forgotten_when_changed(self) -> Gen:
        yield self.store.create_bucket("vb", now=0)
        yield self.store.create_bucket("one", now=0)
        self.assertEqual((yield self.store.repaired_replicas()), {})
        self.assertTrue((yield self.store.set_repaired_replicas("vb", 2, None)))
        self.assertTrue((yield self.store.set_repaired_replicas("one", 1, None)))
        # A second recording from "no row" lost a race: nothing changes.
        self.assertFalse((yield self.store.set_repaired_replicas("vb", 3, None)))
        self.assertFalse((yield self.store.set_repaired_replicas("nope", 3, None)))
        self.assertEqual(
            (yield self.store.repaired_replicas()),
            {"vb": RepairedBucket(2, 0), "one": RepairedBucket(1, 0)},
        )
        # Buckets the mapping does not name have 1 copy.
        self.assertEqual((yield self.store.forget_changed_replicas({"vb": 2})), [])
        self.assertEqual((yield self.store.forget_changed_replicas({"vb": 3})), ["vb"])
        self.assertEqual((yield self.store.repaired_replicas())["vb"], RepairedBucket(None, 1))
        # Changed by this process (even back): forgotten, one generation on.
        self.assertEqual((yield self.store.forget_changed_replicas({"vb": 3}, ["vb"])), ["vb"])
        self.assertEqual((yield self.store.repaired_replicas())["vb"], RepairedBucket(None, 2))
        # A pass that read generation 1 records nothing; one that read 2 does.
        self.assertFalse((yield self.store.set_repaired_replicas("vb", 3, 1)))
        self.assertTrue((yield self.store.set_repaired_replicas("vb", 3, 2)))
        self.assertEqual((yield self.store.repaired_replicas())["vb"], RepairedBucket(3, 2))
        yield self.store.forget_repaired_replicas(["one"])
        self.assertEqual((yield self.store.repaired_replicas())["one"], RepairedBucket(None, 1))
        yield self.store.forget_repaired_replicas()
        self.assertEqual(
            (yield self.store.repaired_replicas()),
            {"vb": RepairedBucket(None, 3), "one": RepairedBucket(None, 2)},
        )

    @defer.inlineCallbacks
    def test_the_queue_keeps_a_requeued_object_and_loses_deleted_ones(self) -> Gen:
        yield self.store.create_bucket("vb", now=0)
        for key in ("a", "b", "c"):
            yield self.store.put_object(obj(key, locations=(("b1", f"x/{key}"),)))
        located = yield self.store.copies_on_backends(["b1"], ["vb"], 0, 10)
        ids = {key: object_id for _, object_id, _, key in located}
        yield self.store.queue_repairs([ids["a"], ids["b"], ids["c"], 10**9], 5.0)
        queued = yield self.store.queued_repairs(0, 10)
        self.assertEqual(
            [(q.key, q.queued_at) for q in queued], [("a", 5.0), ("b", 5.0), ("c", 5.0)]
        )
        self.assertEqual(
            [q.key for q in (yield self.store.queued_repairs(queued[0].object_id, 1))], ["b"]
        )
        # Queued again after it was read: the dequeue of the older entry leaves it.
        yield self.store.queue_repairs([ids["a"]], 6.0)
        yield self.store.dequeue_repair(ids["a"], 5.0)
        yield self.store.dequeue_repair(ids["b"], 5.0)
        yield self.store.delete_object("vb", "c")
        self.assertEqual(
            [(q.key, q.queued_at) for q in (yield self.store.queued_repairs(0, 10))], [("a", 6.0)]
        )

    @defer.inlineCallbacks
    def test_a_short_commit_queues_its_object_in_the_same_transaction(self) -> Gen:
        yield self.store.create_bucket("vb", now=0)
        yield self.store.commit_object(obj("full", last_modified=1.0))
        replaced = yield self.store.commit_object(obj("short", last_modified=2.0), short=True)
        queued = yield self.store.queued_repairs(0, 10)
        self.assertEqual([(q.bucket, q.key, q.queued_at) for q in queued], [("vb", "short", 2.0)])
        self.assertEqual(queued[0].object_id, replaced.object_id)
        # Overwritten short again later: queued at the later time, under the same row id.
        yield self.store.commit_object(obj("short", last_modified=3.0), short=True)
        self.assertEqual([q.queued_at for q in (yield self.store.queued_repairs(0, 10))], [3.0])

    @defer.inlineCallbacks
    def test_verification_slices_follow_key_order_on_one_backend(self) -> Gen:
        yield self.store.create_bucket("vb", now=0)
        for index in range(5):
            where = (("b1", f"vb/k{index}~w1"), ("b2", f"vb/k{index}~w1"))
            yield self.store.put_object(
                obj(f"k{index}", locations=where if index % 2 else where[1:])
            )
        first = yield self.store.verification_slice("b1", "vb", "", 1)
        self.assertEqual([(row.key, row.real_key) for row in first], [("k1", "vb/k1~w1")])
        rest = yield self.store.verification_slice("b1", "vb", "k1", 10)
        self.assertEqual([row.key for row in rest], ["k3"])
        self.assertEqual(len((yield self.store.verification_slice("b2", "vb", "", 10))), 5)
        self.assertEqual((yield self.store.verification_slice("b2", "nope", "", 10)), [])

    @defer.inlineCallbacks
    def test_cursors_are_saved_and_read_back(self) -> Gen:
        yield self.store.create_bucket("vb", now=0)
        yield self.store.save_cursor(Cursor("b1", "vb", "k7", 7, None, 0, True, 3.0))
        yield self.store.save_cursor(Cursor("b1", "nope", "k7"))
        self.assertEqual(
            (yield self.store.repair_cursors()), [Cursor("b1", "vb", "k7", 7, None, 0, True, 3.0)]
        )
        yield self.store.save_cursor(Cursor("b1", "vb", "", 0, 9, 1, False, 4.0))
        self.assertEqual(
            (yield self.store.repair_cursors()), [Cursor("b1", "vb", "", 0, 9, 1, False, 4.0)]
        )

    @defer.inlineCallbacks
    def test_claims_exclude_other_owners_until_they_expire(self) -> Gen:
        self.assertTrue((yield self.store.claim_repair(1, "a", 10.0, 20.0)))
        self.assertFalse((yield self.store.claim_repair(1, "b", 15.0, 25.0)))
        self.assertTrue((yield self.store.claim_repair(1, "b", 21.0, 31.0)))
        yield self.store.release_repair(1, "b")
        self.assertTrue((yield self.store.claim_repair(1, "a", 22.0, 32.0)))

    @defer.inlineCallbacks
    def test_swap_goes_ahead_only_on_the_locations_read(self) -> Gen:
        yield self.store.create_bucket("vb", now=0)
        yield self.store.put_object(obj("k", size=10, locations=(("b1", "x/1"), ("b2", "x/1"))))
        old = (Location("b1", "x/1"), Location("b2", "x/1"))
        new = (Location("b2", "x/1"), Location("b3", "x/1"))
        stale = (Location("b1", "x/0"), Location("b2", "x/0"))
        self.assertIsNone((yield self.store.swap_locations("vb", "k", stale, new, 5.0)))
        self.assertIsNone((yield self.store.swap_locations("vb", "gone", old, new, 5.0)))
        replaced = yield self.store.swap_locations("vb", "k", old, new, 5.0)
        self.assertEqual(replaced.to_delete, [Location("b1", "x/1")])
        self.assertEqual(len(replaced.pending_ids), 1)
        record = yield self.store.get_object("vb", "k")
        self.assertEqual(record.locations, new)
        usage = yield self.store.usage()
        self.assertEqual(
            {name: (u.used_bytes, u.object_count) for name, u in usage.items() if u.object_count},
            {"b2": (10, 1), "b3": (10, 1)},
        )
        due = yield self.store.due_deletions(5.0)
        self.assertEqual([pending.location for pending in due], [Location("b1", "x/1")])


class SQLiteRepairQueryTests(RepairQueryTests, unittest.TestCase):
    pass


postgres_db = server_database(POSTGRES_SERVER, "postgres_db")
mysql_db = server_database(MYSQL_SERVER, "mysql_db")


@pytest.mark.postgres
@pytest.mark.usefixtures("postgres_db")
class PostgresRepairQueryTests(RepairQueryTests, unittest.TestCase):
    pass


@pytest.mark.mysql
@pytest.mark.usefixtures("mysql_db")
class MySQLRepairQueryTests(RepairQueryTests, unittest.TestCase):
    pass
