"""A database out of reach is the store's own :class:`MetadataUnavailable`, and the front answers
it with 503 (a condition clients retry), not with a 500 for a bug."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from twisted.trial import unittest

from s3balance.db.errors import MetadataUnavailable
from test.dbfixture import make_store
from test.support.daemon import DaemonTestCase
from test.test_pool import database_down


def test_an_unreachable_database_is_metadata_unavailable(tmp_path: Path) -> None:
    store, cleanup = make_store(tmp_path, inline=True)
    try:
        with database_down(store):
            failures: list[BaseException] = []
            store.get_object("vb", "key").addErrback(lambda f: failures.append(f.value))
        assert len(failures) == 1
        assert isinstance(failures[0], MetadataUnavailable)
        assert isinstance(failures[0].__cause__, sa.exc.OperationalError)
    finally:
        cleanup()


def test_other_database_errors_stay_what_they_are(tmp_path: Path) -> None:
    """A bug (here, a row the schema refuses) is not dressed up as an outage."""
    store, cleanup = make_store(tmp_path, inline=True)
    try:
        failures: list[BaseException] = []

        def wrong(conn: sa.Connection) -> None:
            conn.execute(sa.text("INSERT INTO virtual_buckets (name) VALUES (NULL)"))

        store.pool.do(wrong).addErrback(lambda f: failures.append(f.value))
        assert len(failures) == 1
        assert isinstance(failures[0], sa.exc.IntegrityError)
    finally:
        cleanup()


class FrontTests(DaemonTestCase, unittest.TestCase):
    backend_names = ["r1"]

    async def test_requests_answer_503_while_the_database_is_gone(self) -> None:
        await self.call(self.s3.create_bucket, Bucket="photos")
        await self.call(self.s3.put_object, Bucket="photos", Key="k", Body=b"before")
        with database_down(self.daemon.store):
            for call in (
                lambda: self.s3.get_object(Bucket="photos", Key="k"),
                lambda: self.s3.put_object(Bucket="photos", Key="k", Body=b"during"),
            ):
                code, status, _ = await self.error_of(call)
                self.assertEqual((code, status), ("ServiceUnavailable", 503))
        answer = await self.call(self.s3.get_object, Bucket="photos", Key="k")
        self.assertEqual(answer["Body"].read(), b"before")


pytestmark = pytest.mark.timeout(120)
