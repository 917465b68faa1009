"""Repair's queries (:mod:`s3balance.db.repairs`) on SQLite, PostgreSQL and MariaDB: candidates,
claims, and the compare-and-set of an object's locations."""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

import pytest
from twisted.internet import defer
from twisted.trial import unittest

from s3balance.db.records import Location
from s3balance.db.store import MetadataStore
from test.dbfixture import (
    MYSQL_SERVER,
    POSTGRES_SERVER,
    empty_all_tables,
    make_store,
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
        if self.db_url is not None:
            self.store, cleanup = make_store(self, url=self.db_url, inline=True)
            empty_all_tables(self.store.pool.engine)
        else:
            self.store, cleanup = make_store(self, inline=True)
        self.addCleanup(cleanup)

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
        at = yield self.store.objects_at("b2", ["x/1", "x/3", "x/9"])
        self.assertEqual(
            sorted((b, k, r) for _, b, k, r in at), [("vb", "fine", "x/1"), ("vb", "over", "x/3")]
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
