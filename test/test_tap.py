"""The tap: what ``twistd s3balance`` parses, and what ``makeService`` wires from it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage

from s3balance import tap
from s3balance.app import S3BalanceService


def parse(*argv: str) -> tap.Options:
    options = tap.Options()
    options.parseOptions(list(argv))
    return options


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_no_file_gives_the_embedded_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    options = parse()
    config = options["loaded"]
    assert options["config_path"] is None
    assert [b.name for b in config.real_buckets] == ["local-1", "local-2"]
    assert options["listen"] == ["tcp:8080:interface=127.0.0.1"]


def test_etc_s3balance_yaml_is_the_default_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "etc").mkdir()
    write(
        tmp_path / "etc" / "s3balance.yaml",
        "server: {port: 9999}\nbuckets: [{name: only, path: d}]\n",
    )
    options = parse()
    assert options["config_path"] == os.path.join("etc", "s3balance.yaml")
    assert options["listen"] == ["tcp:9999:interface=0.0.0.0"]


def test_listen_is_repeatable_and_overrides_server_host_port(tmp_path: Path) -> None:
    config = write(tmp_path / "c.yaml", "server: {port: 9999}\nbuckets: [{name: r, path: d}]\n")
    options = parse(
        "--config",
        config,
        "--listen",
        "tcp:0:interface=127.0.0.1",
        "-l",
        "tcp6:0:interface=\\:\\:1",
    )
    assert options["listen"] == ["tcp:0:interface=127.0.0.1", "tcp6:0:interface=\\:\\:1"]


def test_ipv6_host_is_escaped_in_the_endpoint(tmp_path: Path) -> None:
    config = write(
        tmp_path / "c.yaml", "server: {host: '::1', port: 8081}\nbuckets: [{name: r, path: d}]\n"
    )
    assert parse("--config", config)["listen"] == ["tcp:8081:interface=\\:\\:1"]


def test_a_bad_file_is_a_usage_error_naming_key_and_value(tmp_path: Path) -> None:
    config = write(tmp_path / "c.yaml", "buckets: [{name: r, path: d, max_size: '12 parsecs'}]\n")
    with pytest.raises(usage.UsageError) as raised:
        parse("--config", config)
    assert "buckets[0].max_size" in str(raised.value)
    assert "12 parsecs" in str(raised.value)


def test_a_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(usage.UsageError, match="cannot read configuration"):
        parse("--config", str(tmp_path / "absent.yaml"))


def test_data_dir_option_overrides_the_file(tmp_path: Path) -> None:
    config = write(tmp_path / "c.yaml", "data_dir: here\nbuckets: [{name: r, path: d}]\n")
    assert parse("--config", config, "--data-dir", str(tmp_path / "there"))[
        "loaded"
    ].data_dir == str(tmp_path / "there")


def test_make_service_wires_database_backends_and_front(tmp_path: Path) -> None:
    config = write(
        tmp_path / "c.yaml",
        f"""
data_dir: {tmp_path / "data"}
buckets:
  - {{name: disk-a, path: a, max_size: 1GiB}}
  - {{name: disk-b, path: b, weight: 3}}
  - {{name: photos, virtual: true}}
balancer: {{strategy: weighted}}
metrics: {{path: /prom}}
""",
    )
    options = parse("--config", config, "--listen", "tcp:0:interface=127.0.0.1")
    service = tap.makeService(options, reactor=MemoryReactorClock())
    assert isinstance(service, S3BalanceService)
    components = service.components
    for backend in components.backends.values():  # their disk threads would outlive the test
        backend.close()
    assert sorted(components.pool.names()) == ["disk-a", "disk-b"]
    assert components.pool.strategy.name == "weighted"
    assert components.pool.config("disk-a").max_size == 1 << 30
    assert service.listen == ["tcp:0:interface=127.0.0.1"]
    assert set(components.resource.reserved) == {b"health", b"prom"}
    # The schema was created before the service existed: the database is ready to serve.
    assert (tmp_path / "data" / "s3balance.db").exists()


def test_make_service_refuses_an_outdated_schema_without_auto_migrate(tmp_path: Path) -> None:
    import sqlalchemy as sa

    db = tmp_path / "old.db"
    engine = sa.create_engine(f"sqlite:///{db}")
    with engine.begin() as connection:
        connection.execute(sa.text("CREATE TABLE unrelated (id INTEGER)"))
    engine.dispose()
    config = write(
        tmp_path / "c.yaml",
        f"""
database: {{type: sqlite, dsn: "{db}", auto_migrate: false}}
buckets: [{{name: r, path: {tmp_path / "r"}}}]
""",
    )
    options = parse("--config", config)
    with pytest.raises(SystemExit) as raised:
        tap.makeService(options, reactor=MemoryReactorClock())
    assert "auto_migrate" in str(raised.value.code)
