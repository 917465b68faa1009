"""Tags and canned ACLs in the metadata store (schema 0005), on SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pytest
from twisted.internet import defer
from twisted.trial import unittest

from s3balance.db.records import UploadRecord
from s3balance.db.store import MetadataStore
from test.dbfixture import (
    MYSQL_SERVER,
    POSTGRES_SERVER,
    fresh_store,
    server_database,
)
from test.test_db_store import obj

Gen = Generator[Any, Any, None]


class AttributeTests:
    store: MetadataStore
    db_url: str | None = None
    assertEqual: Any
    addCleanup: Any

    def setUp(self) -> None:
        self.store = fresh_store(self, self.db_url)

    @defer.inlineCallbacks
    def test_object_tags_and_acl_follow_the_row(self) -> Gen:
        yield self.store.create_bucket("vb", 1.0)
        tags = {"é": "ü" * 256, "b": "", "a": "1"}
        yield self.store.put_object(obj("k", tags=tags, acl="public-read"))
        record = yield self.store.get_object("vb", "k")
        self.assertEqual((record.tags, record.acl), (tags, "public-read"))
        self.assertEqual((yield self.store.set_object_tags("vb", "k", {"x": "y"})), True)
        self.assertEqual((yield self.store.set_object_acl("vb", "k", "private")), True)
        record = yield self.store.get_object("vb", "k")
        self.assertEqual((record.tags, record.acl), ({"x": "y"}, "private"))
        self.assertEqual((yield self.store.set_object_tags("vb", "missing", {})), False)
        self.assertEqual((yield self.store.set_object_acl("nobucket", "k", "private")), False)
        # An overwrite carries its own (here: no) tags and ACL.
        yield self.store.put_object(obj("k"))
        record = yield self.store.get_object("vb", "k")
        self.assertEqual((record.tags, record.acl), ({}, "private"))
        page = yield self.store.list_objects("vb")
        self.assertEqual(page.objects[0].tags, {})

    @defer.inlineCallbacks
    def test_bucket_and_upload_attributes(self) -> Gen:
        yield self.store.create_bucket("vb", 1.0, acl="public-read")
        self.assertEqual((yield self.store.get_bucket("vb")).acl, "public-read")
        self.assertEqual((yield self.store.set_bucket_acl("vb", "authenticated-read")), True)
        self.assertEqual((yield self.store.get_bucket("vb")).acl, "authenticated-read")
        self.assertEqual((yield self.store.set_bucket_acl("missing", "private")), False)
        upload = UploadRecord(
            upload_id="u1", bucket="vb", key="k", backend="b1", real_key="vb/k",
            backend_upload_id="x", initiated=1.0, tags={"t": "1"}, acl="public-read",
        )
        yield self.store.create_upload(upload)
        stored = yield self.store.get_upload("u1")
        self.assertEqual((stored.tags, stored.acl), ({"t": "1"}, "public-read"))


class SQLiteAttributeTests(AttributeTests, unittest.TestCase):
    pass


postgres_db = server_database(POSTGRES_SERVER, "postgres_db")
mysql_db = server_database(MYSQL_SERVER, "mysql_db")


@pytest.mark.postgres
@pytest.mark.usefixtures("postgres_db")
class PostgresAttributeTests(AttributeTests, unittest.TestCase):
    pass


@pytest.mark.mysql
@pytest.mark.usefixtures("mysql_db")
class MySQLAttributeTests(AttributeTests, unittest.TestCase):
    pass
