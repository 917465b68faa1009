"""Statements run on the DBAPI cursor answer exactly as ``Connection.execute`` does, on all three
databases, and keep the error types and retries the store relies on."""

from __future__ import annotations

import logging
from collections.abc import Generator
from pathlib import Path

import pytest
import sqlalchemy as sa

from s3balance.db import buckets, migrate, objects
from s3balance.db import engine as db_engine
from s3balance.db.engine import STATEMENT_LOG
from s3balance.db.errors import MetadataUnavailable
from s3balance.db.model import virtual_buckets
from s3balance.db.pool import InlineDBPool, run_single_read
from s3balance.db.prepared import Prepared
from s3balance.db.records import Location, ObjectRecord
from s3balance.db.store import MetadataStore
from test.dbfixture import MYSQL_SERVER, POSTGRES_SERVER, fresh_server_database, sqlite_url

UNICODE_KEY = "photos/été 2026/\u00e9\u4e2d\U0001f600.jpg"


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("mysql", marks=pytest.mark.mysql),
    ]
)
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Generator[sa.Engine, None, None]:
    if request.param == "sqlite":
        created = db_engine.create_engine(sqlite_url(tmp_path))
        yield created
        created.dispose()
        return
    server = POSTGRES_SERVER if request.param == "postgres" else MYSQL_SERVER
    with fresh_server_database(server) as url:
        created = db_engine.create_engine(url)
        migrate.upgrade(created)
        yield created
        created.dispose()


def stored(engine: sa.Engine) -> MetadataStore:
    store = MetadataStore(InlineDBPool(engine))
    store.create_bucket("photos", now=1.0)
    record = ObjectRecord(
        bucket="photos",
        key=UNICODE_KEY,
        size=4096,
        etag='"5d41402abc4b2a76b9719d911017c592"',
        last_modified=1765000000.25,
        headers={"content-type": "image/jpeg", "cache-control": "max-age=60"},
        metadata={"camera": "x100", "note": "\u00e9t\u00e9"},
        checksums={"crc32": "AAAAAA=="},
        part_sizes=(2048, 2048),
        part_checksums=("a", "b"),
        locations=(Location("disk-a", "photos/x/1"), Location("disk-b", "photos/x/2")),
        tags={"k": "v"},
        acl="public-read",
    )
    store.put_object(record)
    return store


def test_prepared_select_answers_what_execute_answers(engine: sa.Engine) -> None:
    stored(engine)
    params = {"bucket_name": "photos", "object_key": UNICODE_KEY}
    with engine.connect() as conn:
        expected = [tuple(row) for row in conn.execute(objects._SELECT_OBJECT, params).all()]
        got = [tuple(row) for row in Prepared(objects._SELECT_OBJECT).rows(conn, params)]
        missing = Prepared(objects._SELECT_OBJECT).rows(conn, {**params, "object_key": "nope"})
    assert got == expected
    assert len(got) == 2 and got[0][-2:] == ("disk-a", "photos/x/1")
    assert missing == []


def test_single_read_gives_the_whole_record(engine: sa.Engine) -> None:
    store = stored(engine)
    direct = run_single_read(engine, objects._get_object, ("photos", UNICODE_KEY))
    with engine.connect() as conn:
        expected = objects._get_object(conn, "photos", UNICODE_KEY)
    assert direct == expected
    assert direct is not None and direct.metadata == {"camera": "x100", "note": "\u00e9t\u00e9"}
    assert direct.locations == (Location("disk-a", "photos/x/1"), Location("disk-b", "photos/x/2"))
    bucket = run_single_read(engine, buckets._get_bucket, ("photos",))
    assert bucket is not None and bucket.name == "photos" and bucket.from_config is False
    assert run_single_read(engine, buckets._get_bucket, ("nope",)) is None
    assert store.get_object("photos", "nope").result is None  # type: ignore[attr-defined]


def test_constraint_errors_keep_sqlalchemys_types(engine: sa.Engine) -> None:
    """``may_fail`` callers catch ``sa.exc.IntegrityError``: a prepared statement raises it."""
    stored(engine)
    insert = Prepared(
        virtual_buckets.insert().values(
            name=sa.bindparam("bucket_name"),
            created_at=sa.bindparam("created_at"),
            from_config=sa.bindparam("from_config"),
        )
    )
    with engine.begin() as conn:
        with pytest.raises(sa.exc.IntegrityError):
            insert.rowcount(conn, {"bucket_name": "photos", "created_at": 2.0, "from_config": 0})


def test_expanding_parameters_are_refused_when_compiled(tmp_path: Path) -> None:
    engine = db_engine.create_engine(sqlite_url(tmp_path))
    statement = sa.select(virtual_buckets.c.id).where(
        virtual_buckets.c.name.in_(sa.bindparam("names", expanding=True))
    )
    with pytest.raises(ValueError, match="expanding"):
        Prepared(statement).compiled(engine.dialect)
    engine.dispose()


def test_statements_are_logged_when_asked(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """``database.log_level: info`` logs every statement: prepared ones too."""
    engine = db_engine.create_engine(sqlite_url(tmp_path))
    store = stored(engine)
    previous = STATEMENT_LOG.level
    STATEMENT_LOG.setLevel(logging.INFO)
    try:
        with caplog.at_level(logging.INFO, logger=STATEMENT_LOG.name):
            assert store.get_object("photos", UNICODE_KEY).result is not None  # type: ignore[attr-defined]
    finally:
        STATEMENT_LOG.setLevel(previous)
        engine.dispose()
    assert any("FROM objects" in message for message in caplog.messages), caplog.messages


def test_a_database_out_of_reach_is_metadata_unavailable(tmp_path: Path) -> None:
    """The short path falls back to the full one, whose retries end in MetadataUnavailable."""
    missing = tmp_path / "no-such-directory" / "db.sqlite"
    engine = sa.create_engine(f"sqlite:///file:{missing}?mode=ro&uri=true")
    with pytest.raises(MetadataUnavailable):
        run_single_read(engine, objects._get_object, ("photos", "k"))
    engine.dispose()


def test_each_dialect_gets_its_own_compiled_form(tmp_path: Path) -> None:
    """One statement serves engines of several databases (the tests make many): each dialect
    object gets the SQL of its own database, however they come and go."""
    from sqlalchemy.dialects import mysql, postgresql, sqlite

    prepared = Prepared(objects._SELECT_OBJECT)
    for _ in range(3):
        for dialect, marker in (
            (sqlite.dialect(), "= ?"),
            (postgresql.dialect(), "= %(bucket_name)s"),
            (mysql.dialect(), "= %s"),
        ):
            assert marker in prepared.compiled(dialect).sql
            assert prepared.compiled(dialect) is prepared.compiled(dialect)
