"""A migrated, real metadata store for tests.

``make_store(self)`` gives a store on a fresh SQLite file in a few milliseconds (the schema is
migrated once per process into a template file that each store copies).  With ``url=`` it uses
that database instead (upgrading its schema first).  :class:`ServerDatabase` creates a uniquely
named database on the test PostgreSQL or MariaDB server, and drops it afterwards.

Example (a trial TestCase)::

    store, cleanup = make_store(self)
    self.addCleanup(cleanup)
    yield store.create_bucket("photos", now=0)
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import sqlite3
import tempfile
import threading
import uuid
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from twisted.internet import reactor

from s3balance.config import DatabaseConfig
from s3balance.db import engine as db_engine
from s3balance.db import migrate, model
from s3balance.db.pool import DBThreadPool, InlineDBPool
from s3balance.db.store import MetadataStore
from test.support import unavailable

POSTGRES_SERVER = "postgresql+psycopg2://postgres@127.0.0.1:5432"
MYSQL_SERVER = "mysql+pymysql://root@127.0.0.1:3306"

_template_lock = threading.Lock()
_template_path: Path | None = None


def _sqlite_template() -> Path:
    """A SQLite file migrated to head, made once per process."""
    global _template_path
    with _template_lock:
        if _template_path is None:
            directory = Path(tempfile.mkdtemp(prefix="s3balance-db-template-"))
            atexit.register(shutil.rmtree, directory, True)
            path = directory / "template.db"
            engine = db_engine.create_engine(f"sqlite:///{path}")
            try:
                migrate.upgrade(engine)
            finally:
                engine.dispose()
            # Fold the WAL into the main file so copying that one file is enough.
            with contextlib.closing(sqlite3.connect(path)) as connection:
                connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            _template_path = path
        return _template_path


def _directory_for(testcase_or_tmpdir: Any) -> Path:
    if isinstance(testcase_or_tmpdir, str | os.PathLike):
        directory = Path(testcase_or_tmpdir)
        directory.mkdir(parents=True, exist_ok=True)
        return directory
    if hasattr(testcase_or_tmpdir, "mktemp"):  # trial TestCase
        directory = Path(testcase_or_tmpdir.mktemp())
        directory.mkdir(parents=True, exist_ok=True)
        return directory
    return Path(tempfile.mkdtemp(prefix="s3balance-db-"))


def sqlite_url(testcase_or_tmpdir: Any) -> str:
    """A fresh, already migrated SQLite database file."""
    path = _directory_for(testcase_or_tmpdir) / f"s3balance-{uuid.uuid4().hex[:8]}.db"
    shutil.copyfile(_sqlite_template(), path)
    return f"sqlite:///{path}"


def make_store(
    testcase_or_tmpdir: Any,
    url: str | None = None,
    inline: bool = False,
    config: DatabaseConfig | None = None,
) -> tuple[MetadataStore, Callable[[], None]]:
    """A store on a migrated database, and the function that releases it.

    :param testcase_or_tmpdir: a trial TestCase (its ``mktemp``) or a directory for the SQLite
        file (e.g. pytest's ``tmp_path``).
    :param url: another database (PostgreSQL/MariaDB); its schema is upgraded to head here.
    :param inline: run the SQL in the calling thread (Deferreds have fired on return; no
        reactor needed) instead of on the real database thread pool.
    :returns: ``(store, cleanup)``; ``store.pool.engine`` is the SQLAlchemy engine.  ``cleanup``
        stops the pool and closes its connections (call it once the test is done; it may be
        called twice).
    """
    config = config or DatabaseConfig()
    if url is None:
        url = sqlite_url(testcase_or_tmpdir)
        engine = db_engine.create_engine(url, config)
    else:
        engine = db_engine.create_engine(url, config)
        migrate.upgrade(engine)
    pool: InlineDBPool | DBThreadPool
    if inline:
        pool = InlineDBPool(engine)
    else:
        threaded = DBThreadPool(engine, reactor, db_engine.thread_count(url, config))  # type: ignore[arg-type]
        threaded.start()
        pool = threaded
    done: list[bool] = []

    def cleanup() -> None:
        if not done:
            done.append(True)
            pool.stop()

    return MetadataStore(pool), cleanup


def fresh_store(testcase: Any, db_url: str | None, inline: bool = True) -> MetadataStore:
    """The store of one test of a trial TestCase: a fresh SQLite file, or, with ``db_url`` (the
    server database a class fixture gave), that database emptied first; released when the test
    ends."""
    store, cleanup = make_store(testcase, url=db_url, inline=inline)
    if db_url is not None:
        empty_all_tables(store.pool.engine)
    testcase.addCleanup(cleanup)
    return store


def empty_all_tables(engine: sa.Engine) -> None:
    """Delete every row (children first), to reuse one server database across tests."""
    with engine.begin() as connection:
        for table in reversed(model.metadata.sorted_tables):
            connection.execute(table.delete())


class ServerDatabase:
    """A uniquely named database on a test server, dropped by :meth:`drop`.

    :param server_url: ``POSTGRES_SERVER`` or ``MYSQL_SERVER`` (no database name).
    """

    def __init__(self, server_url: str) -> None:
        self.server_url = server_url
        self.name = f"s3balance_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        self._admin = sa.create_engine(
            self._admin_url(), isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool
        )
        self.url: str | None = None

    def _admin_url(self) -> str:
        if self.server_url.startswith("postgresql"):
            return f"{self.server_url}/postgres"
        return f"{self.server_url}/"

    def unreachable_reason(self) -> str | None:
        """Why the server cannot be used, or None when it can."""
        try:
            with self._admin.connect() as connection:
                connection.exec_driver_sql("SELECT 1")
        except Exception as error:  # any failure means: skip, and say why
            return f"database server {self.server_url} not reachable: {error}"
        return None

    def create(self) -> str:
        with self._admin.connect() as connection:
            if self.server_url.startswith("postgresql"):
                connection.exec_driver_sql(
                    f"CREATE DATABASE \"{self.name}\" ENCODING 'UTF8' TEMPLATE template0"
                )
            else:
                connection.exec_driver_sql(
                    f"CREATE DATABASE `{self.name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
                )
        self.url = f"{self.server_url}/{self.name}"
        return self.url

    def drop(self) -> None:
        if self.url is None:
            return
        with self._admin.connect() as connection:
            if self.server_url.startswith("postgresql"):
                connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
            else:
                connection.exec_driver_sql(f"DROP DATABASE IF EXISTS `{self.name}`")
        self.url = None
        self._admin.dispose()


@contextlib.contextmanager
def fresh_server_database(server: str) -> Generator[str, None, None]:
    """The URL of a new database on ``server``, dropped afterwards; the test is skipped, with
    the reason, when the server does not answer."""
    database = ServerDatabase(server)
    reason = database.unreachable_reason()
    if reason is not None:
        unavailable(reason)
    url = database.create()
    try:
        yield url
    finally:
        database.drop()


def server_database(server: str, marker_name: str) -> Any:
    """A class-scoped pytest fixture giving the test class ``db_url``: a fresh database on
    ``server`` (skipped, with the reason, when the server does not answer), dropped after."""

    @pytest.fixture(scope="class")
    def fixture(request: pytest.FixtureRequest) -> Generator[None, None, None]:
        with fresh_server_database(server) as url:
            request.cls.db_url = url
            yield

    fixture.__name__ = marker_name
    return fixture
