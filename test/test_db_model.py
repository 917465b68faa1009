"""The MySQL table options, given at CREATE time (:func:`s3balance.db.model._add_mysql_options`)."""

from __future__ import annotations

import subprocess
import sys

import sqlalchemy as sa

from s3balance.db import model


def create_statements(url: str) -> list[str]:
    """The CREATE statements ``metadata.create_all`` sends to a database of ``url``'s kind."""
    statements: list[str] = []

    def record(sql: sa.schema.ExecutableDDLElement, *args: object, **kw: object) -> None:
        statements.append(str(sql.compile(dialect=engine.dialect)).strip())

    engine = sa.create_mock_engine(url, record)  # type: ignore[arg-type]
    model.metadata.create_all(engine, checkfirst=False)  # type: ignore[arg-type]
    return [s for s in statements if s.startswith("CREATE TABLE")]


def test_every_mysql_table_is_innodb_utf8mb4_with_a_binary_collation() -> None:
    tables = create_statements("mysql+pymysql://")
    assert len(tables) == len(model.metadata.tables)
    for statement in tables:
        assert statement.endswith(")ENGINE=InnoDB CHARSET=utf8mb4 COLLATE utf8mb4_bin"), statement


def test_other_databases_get_no_mysql_options() -> None:
    for url in ("sqlite://", "postgresql+psycopg2://"):
        for statement in create_statements(url):
            assert "InnoDB" not in statement and "utf8mb4" not in statement, statement


def test_the_model_does_not_load_the_mysql_dialect() -> None:
    """SQLAlchemy imports a dialect to validate its ``<dialect>_*`` keywords: the tables carry
    none, so a SQLite or PostgreSQL daemon never loads the MySQL one."""
    script = (
        "import sys\n"
        "import s3balance.db.store\n"
        "print(sorted(m for m in sys.modules if m.startswith('sqlalchemy.dialects.')))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().split() == ["[]"]
