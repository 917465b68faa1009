"""``bench/`` rows of issue 15 beyond one SQLite worker: ``server.workers: 2`` with its scaling
and verdict, and the daemon on PostgreSQL and MariaDB, each run for a fraction of a second through
the one command, as ``python -m bench`` prints them."""

from __future__ import annotations

import re

import pytest
import sqlalchemy as sa

from bench import small as bench_small
from bench.dbserver import MARIADB_SERVER, POSTGRES_SERVER, BenchDatabase
from bench.procs import free_port
from bench.run import S3BALANCE, main
from bench.small import (
    S3BALANCE_2WORKERS,
    S3BALANCE_MARIADB,
    S3BALANCE_POSTGRES,
    TWISTED_PROXY,
    scaling_line,
    small_verdicts,
)
from test import test_bench_smoke as smoke
from test.support import unavailable
from test.test_bench_small import _entry

pytestmark = [pytest.mark.timeout(180), smoke.needs_nginx_and_curl]

#: The smallest run of the one command: no large objects, one repetition, a few keys.
TINY = [
    "--sizes", "none", "--repeat", "1", "--small-count", "8", "--small-seconds", "0.3",
    "--concurrency", "2", "--pair-rounds", "2",
]  # fmt: skip
LABEL = "4 KiB x2"


def leftover_databases(server: str) -> list[str]:
    """Databases this process's bench runs created on ``server`` and did not drop."""
    prefix = BenchDatabase(server).name.rsplit("_", 1)[0] + "_"
    postgres = server.startswith("postgresql")
    engine = sa.create_engine(
        f"{server}/postgres" if postgres else f"{server}/", poolclass=sa.pool.NullPool
    )
    query = (
        "SELECT datname FROM pg_database"
        if postgres
        else "SELECT schema_name FROM information_schema.schemata"
    )
    try:
        with engine.connect() as connection:
            names = [row[0] for row in connection.exec_driver_sql(query)]
    finally:
        engine.dispose()
    return [name for name in names if name.startswith(prefix)]


def test_new_rows_are_printed_with_figures(capsys: pytest.CaptureFixture[str]) -> None:
    paths = [S3BALANCE, S3BALANCE_2WORKERS, S3BALANCE_POSTGRES, S3BALANCE_MARIADB]
    code = main([*TINY, "--paths", ",".join(paths)])
    out = capsys.readouterr().out
    for path in (S3BALANCE_POSTGRES, S3BALANCE_MARIADB):
        if re.search(rf"^\S+ {LABEL}\s+{path}\s+not reachable", out, re.M):
            unavailable(f"{path}: its database server did not answer:\n{out}")
    small = out.split("small objects: CPU time", 1)[1]
    for method in ("PUT", "GET"):
        for path in paths:
            row = rf"^{method} {LABEL}\s+{path}\s+\d+\s+-\s+\d+ µs\s+([\d.]+ ms|-)$"
            assert re.search(row, small, re.M), f"no {method} row for {path}:\n{out}"
    paired = r"\(IQR [\d.]+-[\d.]+, range [\d.]+-[\d.]+, 2 paired rounds\)"
    assert re.search(
        rf"^scaling with server.workers: 2 .*: GET \d+\.\d\dx {paired}, PUT \d+\.\d\dx$", out, re.M
    ), out
    assert re.search(
        rf"^  \[(PASS|FAIL)\] GET {LABEL}: req/s with 2 workers >= 1.4x one worker: \d", out, re.M
    ), out
    assert re.search(
        rf"^  GET {LABEL}, back to back, the order alternating: {S3BALANCE_2WORKERS} req/s / "
        rf"{S3BALANCE} req/s: \d+\.\d\dx \(IQR",
        out,
        re.M,
    ), out
    assert (
        "databases: s3balance, s3balance-2workers: sqlite; s3balance-postgres: postgres; "
        "s3balance-mariadb: mariadb" in out
    ), out
    assert "FAILED" not in out and "error:" not in out, out
    assert code in (0, 1)  # 1: a target missed in so short a run is a figure
    for server in (POSTGRES_SERVER, MARIADB_SERVER):
        assert leftover_databases(server) == []


def test_unreachable_database_server_is_a_row_not_a_failure(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    nobody = f"postgresql+psycopg2://postgres@127.0.0.1:{free_port()}"
    monkeypatch.setitem(bench_small.DATABASE_SERVERS, S3BALANCE_POSTGRES, nobody)
    code = main([*TINY, "--small-client", "python", "--paths", f"{S3BALANCE},{S3BALANCE_POSTGRES}"])
    out = capsys.readouterr().out
    for method in ("PUT", "GET"):
        assert re.search(rf"^{method} {LABEL}\s+{S3BALANCE_POSTGRES}\s+not reachable", out, re.M)
    assert f"! {S3BALANCE_POSTGRES} not measured: database server {nobody}: " in out, out
    assert re.search(rf"^GET {LABEL}\s+{S3BALANCE}\s+\d+", out, re.M), out
    assert "error:" not in out, out
    assert code in (0, 1)


def test_scaling_verdict_judges_two_workers_against_one() -> None:
    rates = {
        ("GET", S3BALANCE): 1000.0,
        ("GET", S3BALANCE_2WORKERS): 1500.0,
        ("PUT", S3BALANCE): 500.0,
        ("PUT", S3BALANCE_2WORKERS): 400.0,
        ("GET", TWISTED_PROXY): 2000.0,
    }
    measurements = {
        (f"{method} {LABEL}", path): _entry(rate, 400.0, 10.0)
        for (method, path), rate in rates.items()
    }
    judged = {t: (m, p) for t, m, p in small_verdicts(measurements, LABEL, 2, S3BALANCE)}
    assert judged[f"GET {LABEL}: req/s with 2 workers >= 1.4x one worker"] == ("1.50x", True)
    assert judged[f"PUT {LABEL}: req/s with 2 workers vs one worker (no target)"] == (
        "0.80x",
        None,
    )
    assert scaling_line(measurements, LABEL, S3BALANCE).endswith("GET 1.50x, PUT 0.80x")
    del measurements[(f"GET {LABEL}", S3BALANCE_2WORKERS)]
    judged = {t: (m, p) for t, m, p in small_verdicts(measurements, LABEL, 2, S3BALANCE)}
    assert judged[f"GET {LABEL}: req/s with 2 workers >= 1.4x one worker"] == (
        "not measured",
        None,
    )
