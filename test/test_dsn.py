"""database.dsn in every form a user may write, down to a real connection where one is running."""

from __future__ import annotations

import os
import uuid

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from s3balance.dsn import database_url, mask_dsn_password
from test.support import unavailable

NASTY_PASSWORD = "p@ss/w:rd %+?#&='\"\\"


@pytest.mark.parametrize(
    ("db_type", "dsn", "expected"),
    [
        # SQLite: relative paths are relative to data_dir.
        ("sqlite", "s3balance.db", "sqlite:////srv/data/s3balance.db"),
        ("sqlite", "data/s3-balance.db", "sqlite:////srv/data/data/s3-balance.db"),
        ("sqlite", "/var/lib/x.db", "sqlite:////var/lib/x.db"),
        ("sqlite", "file:x.db?cache=shared", "sqlite:////srv/data/x.db"),
        ("sqlite", ":memory:", "sqlite://"),
        ("sqlite", "sqlite:///relative.db", "sqlite:///relative.db"),
        ("sqlite", "sqlite+pysqlite:////abs.db", "sqlite+pysqlite:////abs.db"),
        # MySQL: Go form, SQLAlchemy URLs, plain mysql:// normalised to PyMySQL.
        (
            "mysql",
            "user:password@tcp(localhost:3306)/s3balance?charset=utf8mb4&parseTime=True&loc=Local",
            "mysql+pymysql://user:password@localhost:3306/s3balance?charset=utf8mb4",
        ),
        ("mysql", "root@tcp(db.example:3307)/s3", "mysql+pymysql://root@db.example:3307/s3"),
        ("mysql", "root@tcp(db.example)/s3", "mysql+pymysql://root@db.example:3306/s3"),
        ("mysql", "u:p@tcp([::1]:3306)/s3", "mysql+pymysql://u:p@[::1]:3306/s3"),
        ("mysql", "/s3", "mysql+pymysql://127.0.0.1:3306/s3"),
        (
            "mysql",
            "u:p@unix(/run/mysqld/mysqld.sock)/s3?loc=Asia%2FShanghai",
            "mysql+pymysql://u:p@/s3?unix_socket=%2Frun%2Fmysqld%2Fmysqld.sock",
        ),
        (
            "mysql",
            "u:p@tcp(h:3306)/s3?charset=utf8mb4,utf8&loc=Asia/Shanghai&timeout=5s",
            "mysql+pymysql://u:p@h:3306/s3?charset=utf8mb4",
        ),
        ("mysql", "mysql://u:p@h/s3", "mysql+pymysql://u:p@h/s3"),
        ("mysql", "mariadb://u:p@h/s3", "mysql+pymysql://u:p@h/s3"),
        ("mysql", "mysql+mysqldb://u:p@h/s3", "mysql+mysqldb://u:p@h/s3"),
        # PostgreSQL: libpq key=value (GORM's TimeZone becomes a run-time option), URLs.
        (
            "postgres",
            "host=localhost user=postgres password=password dbname=s3balance port=5432 "
            "sslmode=disable TimeZone=Asia/Shanghai",
            "postgresql+psycopg2://postgres:password@localhost:5432/s3balance"
            "?options=-c+TimeZone%3DAsia%2FShanghai&sslmode=disable",
        ),
        (
            "postgres",
            "host=/var/run/postgresql dbname=s3",
            "postgresql+psycopg2:///s3?host=%2Fvar%2Frun%2Fpostgresql",
        ),
        ("postgres", "postgres://u:p@h:5433/s3", "postgresql+psycopg2://u:p@h:5433/s3"),
        ("postgres", "postgresql://u:p@h/s3", "postgresql+psycopg2://u:p@h/s3"),
        ("postgres", "postgresql+psycopg2://u:p@h/s3", "postgresql+psycopg2://u:p@h/s3"),
    ],
)
def test_database_url(db_type: str, dsn: str, expected: str) -> None:
    assert database_url(db_type, dsn, "/srv/data") == expected


@pytest.mark.parametrize(
    ("db_type", "dsn"),
    [
        ("mysql", "us@r:" + NASTY_PASSWORD + "@tcp(127.0.0.1:3306)/db"),
        (
            "postgres",
            "user=us@r password='"
            + NASTY_PASSWORD.replace("\\", "\\\\").replace("'", "\\'")
            + "' host=h",
        ),
        (
            "postgres",
            'user=us@r password="'
            + NASTY_PASSWORD.replace("\\", "\\\\").replace('"', '\\"')
            + '" host=h',
        ),
    ],
)
def test_special_character_passwords_survive(db_type: str, dsn: str) -> None:
    url = make_url(database_url(db_type, dsn, "/d"))
    assert url.password == NASTY_PASSWORD
    assert url.username == "us@r"
    assert url.host == "h" or url.host == "127.0.0.1"


def test_url_password_escapes_are_kept() -> None:
    url = make_url(database_url("postgres", "postgres://u:a%40b%2Fc@h/s3", "/d"))
    assert url.password == "a@b/c"


@pytest.mark.parametrize(
    ("db_type", "dsn", "fragment"),
    [
        ("oracle", "x", "unknown database type 'oracle'"),
        ("sqlite", "", "empty dsn"),
        ("postgres", "   ", "empty dsn"),
        ("postgres", "mysql://u:p@h/db", "is a 'mysql' URL but database.type is 'postgres'"),
        ("sqlite", "postgresql://h/db", "database.type is 'sqlite'"),
        ("mysql", "just some words", "neither a URL"),
        ("mysql", "u:p@tcp(h:99999)/db", "port '99999'"),
        ("mysql", "u:p@udp(h:1)/db", "network 'udp'"),
        ("postgres", "host=h port=abc", "port 'abc'"),
        ("postgres", "host=h password='unterminated", "has no closing quote"),
    ],
)
def test_database_url_rejects(db_type: str, dsn: str, fragment: str) -> None:
    with pytest.raises(ValueError) as caught:
        database_url(db_type, dsn, "/d")
    assert fragment in str(caught.value)


def test_errors_do_not_quote_the_password() -> None:
    with pytest.raises(ValueError) as caught:
        database_url("mysql", "u:hunter2@tcp(h:0)/db", "/d")
    assert "hunter2" not in str(caught.value)
    with pytest.raises(ValueError) as caught:
        database_url("postgres", "host=h password=hunter2 port=x", "/d")
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize(
    ("db_type", "dsn", "masked"),
    [
        ("mysql", "u:secret@tcp(h:3306)/db?x=1", "u:***@tcp(h:3306)/db?x=1"),
        ("mysql", "u@tcp(h:3306)/db", "u@tcp(h:3306)/db"),
        ("postgres", "host=h password='a b' user=u", "host=h password=*** user=u"),
        ("postgres", "postgresql://u:secret@h/db", "postgresql://u:***@h/db"),
        ("postgres", "postgresql://u@h/db", "postgresql://u@h/db"),
        ("sqlite", "data/x.db", "data/x.db"),
    ],
)
def test_mask_dsn_password(db_type: str, dsn: str, masked: str) -> None:
    assert mask_dsn_password(db_type, dsn) == masked


def test_sqlite_file_lands_in_data_dir(tmp_path: os.PathLike[str]) -> None:
    engine = sa.create_engine(database_url("sqlite", "meta/s3.db", str(tmp_path)))
    os.makedirs(os.path.join(tmp_path, "meta"))
    try:
        with engine.begin() as connection:
            connection.execute(sa.text("create table t (x int)"))
    finally:
        engine.dispose()
    assert os.path.exists(os.path.join(tmp_path, "meta", "s3.db"))


@pytest.mark.postgres
@pytest.mark.timeout(30)
def test_go_postgres_dsn_connects_with_its_time_zone() -> None:
    dsn = (
        "host=127.0.0.1 user=postgres dbname=postgres port=5432 sslmode=disable "
        "TimeZone=Asia/Shanghai connect_timeout=5"
    )
    engine = sa.create_engine(database_url("postgres", dsn, "/d"))
    try:
        with engine.connect() as connection:
            zone = connection.execute(sa.text("show timezone")).scalar()
    except sa.exc.OperationalError as e:  # pragma: no cover - depends on the machine
        unavailable(f"PostgreSQL not reachable: {e}")
    finally:
        engine.dispose()
    assert zone == "Asia/Shanghai"


@pytest.mark.mysql
@pytest.mark.timeout(30)
def test_go_mysql_dsn_connects_with_a_nasty_password() -> None:
    admin = sa.create_engine("mysql+pymysql://root@127.0.0.1:3306/?connect_timeout=5")
    user = "s3b_dsn_" + uuid.uuid4().hex[:8]
    try:
        with admin.begin() as connection:
            connection.execute(
                sa.text(f"CREATE USER '{user}'@'%' IDENTIFIED BY :password"),
                {"password": NASTY_PASSWORD},
            )
    except sa.exc.OperationalError as e:  # pragma: no cover - depends on the machine
        admin.dispose()
        unavailable(f"MariaDB not reachable: {e}")
    try:
        dsn = f"{user}:{NASTY_PASSWORD}@tcp(127.0.0.1:3306)/?charset=utf8mb4&parseTime=True"
        engine = sa.create_engine(database_url("mysql", dsn, "/d"))
        try:
            with engine.connect() as connection:
                who = connection.execute(sa.text("select current_user()")).scalar()
                charset = connection.execute(sa.text("select @@character_set_client")).scalar()
        finally:
            engine.dispose()
        assert str(who).startswith(user + "@")
        assert charset == "utf8mb4"
    finally:
        with admin.begin() as connection:
            connection.execute(sa.text(f"DROP USER '{user}'@'%'"))
        admin.dispose()


def test_unterminated_password_is_not_quoted_in_errors() -> None:
    with pytest.raises(ValueError) as caught:
        database_url("postgres", "host=h password='hunter2 user=u", "/d")
    assert "hunter2" not in str(caught.value)
    assert "password" in str(caught.value)
