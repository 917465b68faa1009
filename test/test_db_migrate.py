"""Migrations on all three databases, the schema check, and how migrations are shipped."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from twisted.internet import defer, reactor
from twisted.trial import unittest

import s3balance
from s3balance import migrations
from s3balance.config import DatabaseConfig
from s3balance.db import engine as db_engine
from s3balance.db import migrate, model
from s3balance.db.connector import DBConnector
from test.dbfixture import MYSQL_SERVER, POSTGRES_SERVER, fresh_server_database

REPO = Path(s3balance.__file__).resolve().parent.parent


def schema_differences(engine: sa.Engine) -> list[Any]:
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, model.metadata))


class MigrationTests:
    """An empty database goes to head and then equals the models exactly."""

    def empty_database_url(self) -> str:
        raise NotImplementedError

    def test_upgrade_empty_database_to_head(self) -> None:
        engine = db_engine.create_engine(self.empty_database_url())
        try:
            assert migrate.current_revision(engine) is None
            with pytest.raises(migrate.SchemaOutdated, match="database.auto_migrate: true"):
                migrate.check_schema(engine)
            migrate.upgrade(engine)
            assert migrate.current_revision(engine) == migrate.head_revision()
            migrate.check_schema(engine)
            assert schema_differences(engine) == []
            migrate.upgrade(engine)  # nothing left to do
            assert set(sa.inspect(engine).get_table_names()) == set(model.metadata.tables) | {
                "alembic_version"
            }
            # The downgrade works too, and the upgrade after it.
            with engine.connect() as connection:
                from alembic import command

                command.downgrade(migrate.alembic_config(connection), "base")
                connection.commit()
            assert set(sa.inspect(engine).get_table_names()) <= {"alembic_version"}
            migrate.upgrade(engine)
            assert schema_differences(engine) == []
        finally:
            engine.dispose()

    def test_concurrent_upgrades(self) -> None:
        """Two daemons starting at once on an empty database both come up."""
        url = self.empty_database_url()
        engines = [db_engine.create_engine(url) for _ in range(2)]
        errors: list[BaseException] = []

        def run(engine: sa.Engine) -> None:
            try:
                migrate.check_or_upgrade(engine, auto_migrate=True)
            except BaseException as error:
                errors.append(error)

        threads = [threading.Thread(target=run, args=(engine,)) for engine in engines]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        try:
            assert errors == []
            assert schema_differences(engines[0]) == []
        finally:
            for engine in engines:
                engine.dispose()

    def test_0007_keeps_uploads_and_deletions_of_0006(self) -> None:
        """Upload copies (0007): an upload and a queued deletion written at 0006 come through
        the upgrade as an upload stored once and plain bytes to delete, and back down."""
        engine = db_engine.create_engine(self.empty_database_url())
        try:
            migrate.upgrade(engine, "0006")
            with engine.begin() as connection:  # the 0006 tables are those of the model
                connection.execute(
                    model.virtual_buckets.insert().values(
                        id=1, name="vb", created_at=0.0, from_config=False
                    )
                )
                connection.execute(
                    model.multipart_uploads.insert().values(
                        id=1, upload_id="u1", bucket_id=1, key="k", backend="b1",
                        real_key="vb/k", backend_upload_id="bu-1", initiated=5.0, headers={},
                        user_metadata={},
                    )  # fmt: skip
                )
                connection.execute(
                    sa.text(
                        "INSERT INTO pending_deletions (backend, real_key, delete_after) "
                        "VALUES ('b1', 'vb/old', 1)"
                    )
                )
            migrate.upgrade(engine, "0007")
            assert migrate.current_revision(engine) == "0007"
            with engine.begin() as connection:
                copies = connection.execute(sa.select(model.upload_copies)).all()
                pending = connection.execute(
                    sa.select(model.pending_deletions.c.backend_upload_id)
                ).scalars().all()
                connection.execute(
                    model.upload_copies.insert().values(
                        upload_ref=1, backend="b2", backend_upload_id="bu-2"
                    )
                )
            assert copies == []
            assert pending == [None]
            with engine.connect() as connection:
                from alembic import command

                command.downgrade(migrate.alembic_config(connection), "0006")
                connection.commit()
            inspector = sa.inspect(engine)
            assert "upload_copies" not in inspector.get_table_names()
            columns = {column["name"] for column in inspector.get_columns("pending_deletions")}
            assert "backend_upload_id" not in columns
            with engine.connect() as connection:
                count = connection.execute(sa.text("SELECT count(*) FROM multipart_uploads"))
                assert count.scalar() == 1
        finally:
            engine.dispose()

    def test_newer_schema_is_refused(self) -> None:
        engine = db_engine.create_engine(self.empty_database_url())
        try:
            migrate.upgrade(engine)
            with engine.begin() as connection:
                connection.execute(sa.text("UPDATE alembic_version SET version_num = 'f00d'"))
            with pytest.raises(migrate.SchemaOutdated, match="newer than this s3balance"):
                migrate.check_or_upgrade(engine, auto_migrate=False)
        finally:
            engine.dispose()


class SQLiteMigrationTests(MigrationTests):
    @pytest.fixture(autouse=True)
    def _tmp(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path

    def empty_database_url(self) -> str:
        return f"sqlite:///{self.tmp_path / 'fresh.db'}"


class ServerMigrationTests(MigrationTests):
    server = ""

    @pytest.fixture(autouse=True)
    def _database(self) -> Any:
        with fresh_server_database(self.server) as url:
            self.url = url
            yield

    def empty_database_url(self) -> str:
        return self.url


@pytest.mark.postgres
class TestPostgresMigrations(ServerMigrationTests):
    server = POSTGRES_SERVER


@pytest.mark.mysql
class TestMySQLMigrations(ServerMigrationTests):
    server = MYSQL_SERVER


class TestSQLiteMigrations(SQLiteMigrationTests):
    pass


class ConnectorSchemaTests(unittest.TestCase):
    """The daemon's start: upgrade when allowed, refuse an outdated schema otherwise."""

    def connector(self, auto_migrate: bool, path: str) -> DBConnector:
        config = DatabaseConfig(type="sqlite", dsn=path, auto_migrate=auto_migrate)
        connector = DBConnector(config, os.path.dirname(path), reactor)
        self.addCleanup(lambda: connector.running and connector.stopService())
        return connector

    def test_outdated_schema_refused_without_auto_migrate(self) -> defer.Deferred[None]:
        path = os.path.abspath(self.mktemp()) + ".db"
        connector = self.connector(False, path)
        connector.startService()
        d: defer.Deferred[Any] = self.assertFailure(connector.setup(), migrate.SchemaOutdated)

        def check(error: migrate.SchemaOutdated) -> None:
            self.assertIn("database.auto_migrate: true", str(error))
            self.assertIn("empty", str(error))
            engine = db_engine.create_engine(f"sqlite:///{path}")
            self.assertEqual(sa.inspect(engine).get_table_names(), [])  # nothing created
            engine.dispose()
            self.flushLoggedErrors(migrate.SchemaOutdated)

        return d.addCallback(check)

    @defer.inlineCallbacks
    def test_auto_migrate_upgrades_on_start(self) -> Generator[Any, Any, None]:
        path = os.path.abspath(self.mktemp()) + ".db"
        connector = self.connector(True, path)
        connector.startService()
        yield connector.setup()
        self.assertTrue((yield connector.store.create_bucket("vb", now=1.0)))
        yield connector.setup()  # later callers see the same outcome
        buckets = yield connector.store.list_buckets()
        self.assertEqual([b.name for b in buckets], ["vb"])
        connector.stopService()
        self.assertFalse(connector.pool.running)
        self.assertFalse([t for t in threading.enumerate() if t.name.startswith("s3balance-db")])
        # A second daemon on the same (now migrated) file starts without migrating.
        second = self.connector(False, path)
        second.startService()
        yield second.setup()
        self.assertTrue((yield second.store.get_bucket("vb")))


def test_top_level_alembic_folder_does_not_shadow_the_library() -> None:
    assert not (REPO / "alembic" / "__init__.py").exists()
    output = subprocess.run(
        [sys.executable, "-c", "import alembic, alembic.command; print(alembic.__file__)"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.strip()
    assert "site-packages" in output, output


def test_migrations_live_in_the_package_only() -> None:
    location = migrate.script_location()
    assert location == REPO / "s3balance" / "migrations"
    assert not location.is_symlink()
    assert (location / "env.py").is_file()
    assert (location / "versions" / "0001_initial.py").is_file()
    # The top-level folder only points Alembic's command line there.
    assert sorted(path.name for path in (REPO / "alembic").iterdir()) == ["alembic.ini"]


def test_declared_head_is_alembics_head() -> None:
    """A daemon takes a database at ``migrations.HEAD`` as current without asking Alembic: a new
    script must move it."""
    assert migrations.HEAD == migrate.head_revision()


def test_a_database_elsewhere_in_the_history_is_left_to_alembic(tmp_path: Path) -> None:
    engine = db_engine.create_engine(f"sqlite:///{tmp_path / 'old.db'}")
    try:
        migrate.upgrade(engine, "0004")
        assert not migrate.at_head(engine)
        with pytest.raises(migrate.SchemaOutdated, match="at revision 0004"):
            migrate.check_or_upgrade(engine, auto_migrate=False)
        migrate.check_or_upgrade(engine, auto_migrate=True)
        assert migrate.at_head(engine)
        assert migrate.current_revision(engine) == migrate.head_revision()
    finally:
        engine.dispose()


def test_operators_alembic_ini_runs_the_package_scripts(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'by-alembic.db'}"
    done = subprocess.run(
        [sys.executable, "-m", "alembic", "-c", "alembic/alembic.ini", "-x", f"url={url}"]
        + ["upgrade", "head"],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    engine = db_engine.create_engine(url)
    try:
        assert migrate.current_revision(engine) == migrate.head_revision()
        assert schema_differences(engine) == []
    finally:
        engine.dispose()


@pytest.mark.slow
def test_wheel_ships_working_migrations(tmp_path: Path) -> None:
    """Build a wheel, install it elsewhere, and migrate a database from the installed copy."""
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "s3balance", "twisted"):
        target = source / name
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(REPO / name, target)
    (source / "README.md").write_text("s3balance\n")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "-q", "-w", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    if build.returncode != 0:
        pytest.skip(f"cannot build a wheel here (build dependencies unavailable?): {build.stderr}")
    wheel = next(tmp_path.glob("s3balance-*.whl"))
    site = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(site),
            str(wheel),
        ],
        check=True,
        timeout=120,
    )
    assert not (site / "alembic").exists()  # only the library is "alembic"
    database = tmp_path / "from-wheel.db"
    script = (
        "import sqlalchemy as sa, s3balance\n"
        "from s3balance.db import migrate\n"
        f"assert s3balance.__file__.startswith({str(site)!r}), s3balance.__file__\n"
        "print(migrate.script_location())\n"
        f"engine = sa.create_engine({f'sqlite:///{database}'!r})\n"
        "migrate.upgrade(engine)\n"
        "print(migrate.current_revision(engine))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    location, revision = result.stdout.split()
    assert location == str(site / "s3balance" / "migrations")
    assert revision == migrate.head_revision()


def test_command_line_upgrades_and_writes_the_next_migration(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    assert migrate.main(["--url", url, "upgrade"]) == 0
    migrate.main(["--url", url, "current"])
    head = migrate.head_revision()
    assert capsys.readouterr().out.strip() == f"current: {head}  head: {head}"
    scripts = tmp_path / "scripts"
    shutil.copytree(
        migrate.script_location(), scripts, ignore=shutil.ignore_patterns("__pycache__")
    )
    migrate.main(
        ["--url", url, "--scripts", str(scripts), "revision", "-m", "next", "--autogenerate"]
    )
    (written,) = scripts.glob("versions/*_next.py")
    text = written.read_text()
    assert f"down_revision = '{head}'" in text
    # The models equal the migrated schema, so there is nothing to do yet.
    assert "op." not in text.split("def upgrade")[1]
    revision = written.name.split("_")[0]
    assert f"its revision '{revision}' is the new HEAD" in capsys.readouterr().out
