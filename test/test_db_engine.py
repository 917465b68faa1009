"""Engine settings per database, and the pool's transactions and retries."""

from __future__ import annotations

import logging
import shutil
import sqlite3
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.internet.task import deferLater
from twisted.trial import unittest as twisted_unittest

from s3balance.config import DatabaseConfig
from s3balance.db import engine as db_engine
from s3balance.db import migrate, model
from s3balance.db.base import may_fail
from s3balance.db.connector import DBConnector
from s3balance.db.pool import DBThreadPool, InlineDBPool, is_transient, run_transaction
from s3balance.db.records import Location, ObjectRecord
from test.dbfixture import (
    MYSQL_SERVER,
    POSTGRES_SERVER,
    ServerDatabase,
    fresh_server_database,
    make_store,
)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'x' / 'meta.db'}"


def test_sqlite_connections_use_wal_busy_timeout_and_foreign_keys(sqlite_url: str) -> None:
    engine = db_engine.create_engine(sqlite_url)
    try:
        with engine.connect() as connection:
            pragma = connection.exec_driver_sql
            assert pragma("PRAGMA journal_mode").scalar() == "wal"
            assert pragma("PRAGMA foreign_keys").scalar() == 1
            assert pragma("PRAGMA busy_timeout").scalar() == db_engine.SQLITE_BUSY_TIMEOUT_MS
    finally:
        engine.dispose()


def test_sqlite_writers_queue_instead_of_failing(sqlite_url: str) -> None:
    """A writer waits (busy timeout) for another's transaction rather than failing."""
    engine = db_engine.create_engine(sqlite_url)
    model.metadata.create_all(engine)
    pool = InlineDBPool(engine)
    holding = threading.Event()
    release = threading.Event()

    def slow_writer(connection: sa.Connection) -> None:
        connection.execute(
            model.backend_usage.insert().values(backend="a", used_bytes=1, object_count=1)
        )
        holding.set()
        assert release.wait(10)

    thread = threading.Thread(target=pool.do, args=(slow_writer,))
    thread.start()
    assert holding.wait(10)
    threading.Timer(0.3, release.set).start()
    try:
        pool.do(
            lambda c: c.execute(
                model.backend_usage.update().values(used_bytes=model.backend_usage.c.used_bytes + 1)
            )
        )
    finally:
        release.set()
        thread.join(10)
    with engine.connect() as connection:
        assert connection.execute(sa.select(model.backend_usage.c.used_bytes)).scalar() == 2
    engine.dispose()


def test_thread_and_connection_counts_follow_config(sqlite_url: str) -> None:
    config = DatabaseConfig(max_open_conns=25, max_idle_conns=5)
    assert db_engine.thread_count(sqlite_url, config) == db_engine.SQLITE_MAX_THREADS
    assert db_engine.thread_count("sqlite://", config) == 1
    assert db_engine.thread_count("postgresql+psycopg2://h/db", config) == 25
    assert (
        db_engine.thread_count("postgresql+psycopg2://h/db", DatabaseConfig(max_open_conns=0)) == 1
    )
    engine = db_engine.create_engine("postgresql+psycopg2://u@127.0.0.1/none", config)
    pool: Any = engine.pool
    assert (pool.size(), pool._max_overflow) == (5, 20)
    assert pool._pre_ping and pool._recycle == 300
    engine.dispose()
    connector = DBConnector(
        DatabaseConfig(type="sqlite", dsn="meta.db", max_open_conns=2), "/nonexistent", reactor
    )
    assert connector.pool.max_threads == 2
    assert connector.url.endswith("/nonexistent/meta.db")


def test_log_level_controls_statement_logging(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    for level, logged in (("info", True), ("warn", False)):
        caplog.clear()
        engine = db_engine.create_engine(sqlite_url, DatabaseConfig(log_level=level))
        with caplog.at_level(logging.NOTSET), engine.connect() as connection:
            connection.exec_driver_sql("SELECT 42")
        engine.dispose()
        assert any("SELECT 42" in record.getMessage() for record in caplog.records) is logged


def test_failed_transaction_rolls_back_and_is_not_retried(sqlite_url: str) -> None:
    engine = db_engine.create_engine(sqlite_url)
    model.metadata.create_all(engine)
    calls = []

    def fails(connection: sa.Connection) -> None:
        calls.append(1)
        connection.execute(
            model.backend_usage.insert().values(backend="a", used_bytes=1, object_count=1)
        )
        raise ValueError("boom")

    with pytest.raises(ValueError):
        run_transaction(engine, fails, ())
    assert calls == [1]
    with engine.connect() as connection:
        assert connection.execute(sa.select(model.backend_usage)).all() == []
    engine.dispose()


def test_transient_failure_is_retried(sqlite_url: str) -> None:
    engine = db_engine.create_engine(sqlite_url)
    model.metadata.create_all(engine)
    locked = sa.exc.OperationalError("INSERT", {}, sqlite3.OperationalError("database is locked"))
    assert is_transient(locked)
    assert not is_transient(sa.exc.IntegrityError("INSERT", {}, sqlite3.IntegrityError("UNIQUE")))
    attempts = []

    def flaky(connection: sa.Connection) -> str:
        attempts.append(1)
        connection.execute(
            model.backend_usage.insert().values(backend="a", used_bytes=1, object_count=1)
        )
        if len(attempts) < 3:
            raise locked
        return "done"

    assert run_transaction(engine, flaky, ()) == "done"
    with engine.connect() as connection:  # the failed attempts left nothing behind
        assert (
            connection.execute(sa.select(sa.func.count()).select_from(model.backend_usage)).scalar()
            == 1
        )
    engine.dispose()


def check_a_failed_statement_undoes_only_itself(url: str) -> None:
    """What :func:`s3balance.db.base.may_fail` relies on: after a constraint error the
    transaction goes on, with what it did before the failed statement."""
    engine = db_engine.create_engine(url)
    try:
        migrate.upgrade(engine)
        row = {"backend": "taken", "used_bytes": 1, "object_count": 1}
        with engine.begin() as connection:
            connection.execute(model.backend_usage.insert(), row)
        with engine.begin() as connection:
            connection.execute(model.backend_usage.insert(), {**row, "backend": "before"})
            with pytest.raises(sa.exc.IntegrityError):
                with may_fail(connection):
                    connection.execute(model.backend_usage.insert(), row)
            connection.execute(
                model.backend_usage.update()
                .where(model.backend_usage.c.backend == "taken")
                .values(used_bytes=model.backend_usage.c.used_bytes + 10)
            )
        with engine.connect() as connection:
            usage = model.backend_usage
            rows = connection.execute(sa.select(usage.c.backend, usage.c.used_bytes)).all()
            assert sorted(rows) == [("before", 1), ("taken", 11)]
    finally:
        engine.dispose()


def test_sqlite_failed_statement_undoes_only_itself(sqlite_url: str) -> None:
    check_a_failed_statement_undoes_only_itself(sqlite_url)


class ServerEngineTests:
    server = ""

    @pytest.fixture(autouse=True)
    def _database(self) -> Any:
        with fresh_server_database(self.server) as url:
            self.url = url
            yield

    def test_failed_statement_undoes_only_itself(self) -> None:
        check_a_failed_statement_undoes_only_itself(self.url)

    def test_real_deadlock_is_retried(self) -> None:
        """Two transactions locking rows in opposite orders: the server kills one, the pool
        runs it again, and both land."""
        engine = db_engine.create_engine(self.url)
        model.metadata.create_all(engine)
        with engine.begin() as connection:
            connection.execute(
                model.backend_usage.insert(),
                [{"backend": name, "used_bytes": 0, "object_count": 0} for name in ("a", "b")],
            )
        barrier = threading.Barrier(2, timeout=20)
        table = model.backend_usage
        attempts: list[str] = []

        def bump(connection: sa.Connection, first: str, second: str) -> None:
            attempts.append(first)
            connection.execute(
                table.update()
                .where(table.c.backend == first)
                .values(used_bytes=table.c.used_bytes + 1)
            )
            if attempts.count(first) == 1:
                barrier.wait()  # both hold their first row: now each wants the other's
            connection.execute(
                table.update()
                .where(table.c.backend == second)
                .values(used_bytes=table.c.used_bytes + 1)
            )

        errors: list[BaseException] = []

        def run(first: str, second: str) -> None:
            try:
                run_transaction(engine, bump, (first, second))
            except BaseException as error:
                errors.append(error)

        threads = [threading.Thread(target=run, args=pair) for pair in (("a", "b"), ("b", "a"))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        try:
            assert errors == []
            assert len(attempts) == 3  # one of the two ran twice
            with engine.connect() as connection:
                used = dict(
                    connection.execute(sa.select(table.c.backend, table.c.used_bytes)).all()
                )
            assert used == {"a": 2, "b": 2}
        finally:
            engine.dispose()

    def test_store_survives_a_dropped_connection(self) -> None:
        """pool_pre_ping: a server restart (here: our connection killed) costs no error."""
        store, cleanup = make_store(None, url=self.url, inline=True)
        try:
            assert store.create_bucket("vb", now=0).result is True  # type: ignore[attr-defined]
            with store.pool.engine.connect() as connection:
                backend_id = connection.exec_driver_sql(
                    "SELECT pg_backend_pid()"
                    if "postgresql" in self.url
                    else "SELECT CONNECTION_ID()"
                ).scalar()
            killer = ServerDatabase(self.server)._admin
            with killer.connect() as connection:
                if "postgresql" in self.url:
                    connection.exec_driver_sql(f"SELECT pg_terminate_backend({backend_id})")
                else:
                    connection.exec_driver_sql(f"KILL {backend_id}")
            killer.dispose()
            record = ObjectRecord(
                "vb", "k", 1, '"e"', 0.0, locations=(Location("b", "\U0001f600"),)
            )
            store.put_object(record)
            assert store.get_object("vb", "k").result == record  # type: ignore[attr-defined]
        finally:
            cleanup()


@pytest.mark.postgres
class TestPostgresEngine(ServerEngineTests):
    server = POSTGRES_SERVER


@pytest.mark.mysql
class TestMySQLEngine(ServerEngineTests):
    server = MYSQL_SERVER

    def test_mysql_session_settings(self) -> None:
        engine = db_engine.create_engine(self.url)
        try:
            with engine.connect() as connection:
                charset = connection.exec_driver_sql("SELECT @@character_set_client").scalar()
                isolation = connection.exec_driver_sql("SELECT @@tx_isolation").scalar()
            assert charset == "utf8mb4"
            assert isolation == "READ-COMMITTED"
        finally:
            engine.dispose()


def test_a_current_schema_is_recognised_without_importing_alembic(tmp_path: Any) -> None:
    """Alembic costs the daemon ~10 MiB resident: a restart on a current schema must not load
    it, and an upgrade in a child process must leave a schema the daemon accepts."""
    import subprocess
    import sys

    url = f"sqlite:///{tmp_path}/meta.db"
    script = (
        "import sys\n"
        "from s3balance.db.engine import create_engine\n"
        "from s3balance.db import migrate\n"
        f"engine = create_engine({url!r})\n"
        "migrate.check_or_upgrade(engine, auto_migrate=True, in_child=True)\n"
        "print('alembic' in sys.modules)\n"
        "migrate.check_or_upgrade(engine, auto_migrate=False)\n"
    )
    first = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert first.returncode == 0, first.stderr.decode()
    # The upgrade ran in a grandchild; only the final check_schema imported alembic here.
    second = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert second.returncode == 0, second.stderr.decode()
    assert second.stdout.decode().split() == ["False"]


class OneWriterTests(twisted_unittest.TestCase):
    """SQLite's writes reach the threads one at a time, so none waits in SQLite's busy handler;
    reads run beside a write (WAL)."""

    timeout = 30

    def setUp(self) -> None:
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory, True)
        self.engine = db_engine.create_engine(f"sqlite:///{directory}/one-writer.db")
        model.metadata.create_all(self.engine)
        self.lock = threading.Lock()
        self.beginning = 0  # write transactions asking for SQLite's lock or holding it
        self.most_beginning = 0
        # SQLite's own trace of each statement as it starts, however it was issued (on new
        # connections only: drop the one create_all used).
        self.engine.dispose()
        event.listen(
            self.engine,
            "connect",
            lambda dbapi_connection, _: dbapi_connection.set_trace_callback(self.on_statement),
        )
        event.listen(self.engine, "commit", self.on_end)
        event.listen(self.engine, "rollback", self.on_end)

    def on_statement(self, statement: str) -> None:
        if statement == "BEGIN IMMEDIATE":  # asks for the write lock, and may wait for it
            with self.lock:
                self.beginning += 1
                self.most_beginning = max(self.most_beginning, self.beginning)

    def on_end(self, connection: sa.Connection) -> None:
        if not connection.get_execution_options().get(db_engine.READ_ONLY_OPTION):
            with self.lock:
                self.beginning -= 1

    def make_pool(self, one_writer: bool | None = None) -> DBThreadPool:
        pool = DBThreadPool(self.engine, reactor, 4, one_writer=one_writer)  # type: ignore[arg-type]
        pool.start()
        self.addCleanup(pool.stop)
        return pool

    def writer(self, connection: sa.Connection, name: str) -> None:
        connection.execute(
            model.backend_usage.insert().values(backend=name, used_bytes=1, object_count=1)
        )
        time.sleep(0.05)  # hold the lock long enough for the other threads to ask for it

    def reader(self, connection: sa.Connection) -> int:
        with self.lock:
            writing = self.beginning
        connection.execute(sa.select(model.backend_usage.c.backend)).all()
        return writing

    async def test_sqlite_writes_never_overlap_and_reads_run_beside_them(self) -> None:
        pool = self.make_pool()
        writes = [pool.do(self.writer, f"b{n}") for n in range(8)]
        await deferLater(reactor, 0.02, lambda: None)  # type: ignore[arg-type]
        writing_meanwhile = await pool.do_read(self.reader)
        await gatherResults(writes)
        self.assertEqual(self.most_beginning, 1)
        self.assertEqual(writing_meanwhile, 1)  # the read ran while a write held the lock
        with self.engine.connect() as connection:
            count = connection.execute(sa.select(sa.func.count()).select_from(model.backend_usage))
            self.assertEqual(count.scalar(), 8)

    async def test_without_one_writer_the_threads_contend_for_sqlites_lock(self) -> None:
        """What the queue avoids: the same writes on four threads ask for the lock together,
        and all but one wait in SQLite's busy handler."""
        pool = self.make_pool(one_writer=False)
        await gatherResults([pool.do(self.writer, f"b{n}") for n in range(8)])
        self.assertGreater(self.most_beginning, 1)


def test_by_default_every_database_thread_keeps_its_connection() -> None:
    """With fewer idle connections than threads, each busy moment closed and reopened the rest
    (a MariaDB connection's TLS handshake made small requests cost 10-20 ms of CPU)."""
    config = DatabaseConfig()
    threads = db_engine.thread_count("mysql+pymysql://root@127.0.0.1/none", config)
    engine = db_engine.create_engine("mysql+pymysql://root@127.0.0.1/none", config)
    pool: Any = engine.pool
    assert (pool.size(), pool._max_overflow) == (threads, 0)
    engine.dispose()



class InMemoryDatabaseTests(twisted_unittest.TestCase):
    timeout = 30

    async def test_an_in_memory_database_is_used_by_one_thread_only(self) -> None:
        """Its one shared connection must never serve a write and a read at once: a pool of
        one thread keeps no separate writer thread."""
        engine = db_engine.create_engine("sqlite://")
        model.metadata.create_all(engine)
        threads = db_engine.thread_count("sqlite://", DatabaseConfig())
        pool = DBThreadPool(engine, reactor, threads)  # type: ignore[arg-type]
        pool.start()
        self.addCleanup(pool.stop)
        names: list[str] = []

        def note(connection: sa.Connection) -> None:
            names.append(threading.current_thread().name)

        for call in (pool.do, pool.do_read, pool.do):
            await call(note)
        self.assertEqual(len(set(names)), 1, names)
