"""Paging through the objects on one backend (:mod:`s3balance.db.placed`) on SQLite, PostgreSQL
and MariaDB: by row id, every location, only objects with a copy there."""

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
    fresh_store,
    server_database,
)
from test.test_db_store import obj

Gen = Generator[Any, Any, None]


class PlacedQueryTests:
    store: MetadataStore
    db_url: str | None = None
    addCleanup: Callable[..., None]
    assertEqual: Callable[..., None]
    assertGreater: Callable[..., None]

    def setUp(self) -> None:
        self.store = fresh_store(self, self.db_url)

    @defer.inlineCallbacks
    def test_pages_by_row_id_with_every_location(self) -> Gen:
        yield self.store.create_bucket("vb", now=0)
        yield self.store.create_bucket("other", now=0)
        yield self.store.put_object(obj("z-first", size=5, locations=(("b1", "r/1"),)))
        yield self.store.put_object(obj("elsewhere", locations=(("b2", "r/2"),)))
        yield self.store.put_object(
            obj("both", size=7, locations=(("b2", "r/3"), ("b1", "r/3")), bucket="other")
        )
        yield self.store.put_object(obj("a-last", size=9, locations=(("b1", "r/4"),)))
        everything = yield self.store.objects_located_on("b1", 0, 10)
        self.assertEqual(
            [(o.bucket, o.key, o.size) for o in everything],
            [("vb", "z-first", 5), ("other", "both", 7), ("vb", "a-last", 9)],
        )
        self.assertEqual(everything[1].locations, (Location("b2", "r/3"), Location("b1", "r/3")))
        ids = [o.object_id for o in everything]
        self.assertEqual(ids, sorted(ids))
        first = yield self.store.objects_located_on("b1", 0, 2)
        self.assertEqual([o.key for o in first], ["z-first", "both"])
        rest = yield self.store.objects_located_on("b1", first[-1].object_id, 2)
        self.assertEqual([o.key for o in rest], ["a-last"])
        self.assertEqual((yield self.store.objects_located_on("b1", ids[-1], 2)), [])
        self.assertEqual((yield self.store.objects_located_on("b9", 0, 2)), [])
        self.assertEqual((yield self.store.objects_located_on("b1", 0, 0)), [])
        # An overwrite keeps its row (and place); a new object comes after those read.
        yield self.store.put_object(obj("z-first", size=6, locations=(("b1", "r/5"),)))
        yield self.store.put_object(obj("new", size=1, locations=(("b1", "r/6"),)))
        again = yield self.store.objects_located_on("b1", 0, 10)
        self.assertEqual(
            [(o.key, o.size, o.locations[0].real_key) for o in again],
            [("z-first", 6, "r/5"), ("both", 7, "r/3"), ("a-last", 9, "r/4"), ("new", 1, "r/6")],
        )
        self.assertEqual(again[0].object_id, ids[0])
        self.assertGreater(again[-1].object_id, ids[-1])


class SQLitePlacedQueryTests(PlacedQueryTests, unittest.TestCase):
    pass


postgres_db = server_database(POSTGRES_SERVER, "postgres_db")
mysql_db = server_database(MYSQL_SERVER, "mysql_db")


@pytest.mark.postgres
@pytest.mark.usefixtures("postgres_db")
class PostgresPlacedQueryTests(PlacedQueryTests, unittest.TestCase):
    pass


@pytest.mark.mysql
@pytest.mark.usefixtures("mysql_db")
class MySQLPlacedQueryTests(PlacedQueryTests, unittest.TestCase):
    pass
