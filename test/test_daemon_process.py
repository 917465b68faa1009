"""The daemon as users run it: ``twistd -n s3balance`` in its own process, real sockets."""

from __future__ import annotations

import re
import signal
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from test.support import s3client, unique_bucket_name, wait_until
from test.support.process import DaemonProcess, run_twistd
from test.support.seaweedfs import SeaweedFS

GO_METRIC_NAMES = (
    "s3_balance_bucket_healthy",
    "s3_balance_bucket_usage_bytes",
    "s3_balance_bucket_capacity_bytes",
    "s3_balance_s3_operations_total",
    "s3_balance_s3_operation_duration_seconds",
    "s3_balance_balancer_decisions_total",
)


def client(endpoint: str) -> Any:
    return s3client.boto3_client(endpoint, "any", "any")


def metric_value(text: str, name: str, bucket: str) -> float | None:
    match = re.search(rf'^{name}{{bucket="{re.escape(bucket)}"}} (\S+)$', text, re.M)
    return float(match.group(1)) if match else None


def test_embedded_default_serves_s3_health_and_metrics(tmp_path: Path) -> None:
    """The README's two commands: no configuration at all gives a working S3 endpoint."""
    config = {"buckets": [{"name": "disk-1", "path": "b1"}, {"name": "disk-2", "path": "b2"}]}
    with DaemonProcess(tmp_path, config) as daemon:
        s3 = client(daemon.endpoint)
        s3.create_bucket(Bucket="demo")
        for i in range(6):
            s3.put_object(Bucket="demo", Key=f"k{i}", Body=b"x" * (1000 + i))
        assert s3.get_object(Bucket="demo", Key="k3")["Body"].read() == b"x" * 1003
        listed = s3.list_objects_v2(Bucket="demo")
        assert [o["Key"] for o in listed["Contents"]] == [f"k{i}" for i in range(6)]
        health = daemon.health()
        assert health["status"] == "healthy"
        assert set(health["backends"]) == {"disk-1", "disk-2"}
        metrics = daemon.metrics()
        for name in GO_METRIC_NAMES:
            assert name in metrics, name
        # Both real buckets received objects (the default strategy spreads by free space).
        placed = [
            metric_value(metrics, "s3_balance_bucket_usage_bytes", b) for b in ("disk-1", "disk-2")
        ]
        assert sum(v or 0 for v in placed) == sum(1000 + i for i in range(6))
        assert_clean_exit(daemon, daemon.stop())


def test_a_bad_configuration_is_refused_before_binding(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(
        "buckets:\n  - {name: r, path: d}\n  - {name: s, path: e, max_size: '12 parsecs'}\n"
        "balancer: {strategy: fastest}\n"
    )
    result = run_twistd(tmp_path, "--config", "bad.yaml", "--listen", "tcp:0")
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "buckets[1].max_size: '12 parsecs' is not a size" in output
    assert "balancer.strategy: 'fastest'" in output
    assert not (tmp_path / "data").exists()  # nothing created, nothing bound


def _held_port() -> socket.socket:
    """A listening socket on a loopback port, as another program holding it."""
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    return holder


def test_a_port_already_in_use_ends_the_daemon_with_one_line(tmp_path: Path) -> None:
    """It used to log nothing, listen nowhere, keep probing and never exit (issue 13, 4)."""
    with _held_port() as holder:
        port = holder.getsockname()[1]
        daemon = DaemonProcess(tmp_path, {"buckets": [{"name": "disk-1", "path": "b1"}]}, port)
        daemon.start(wait=False)
        try:
            status = daemon.wait(timeout=60)
        finally:
            daemon.stop()
        log = daemon.log_path.read_text()
    line = f"s3balance: cannot listen on tcp:{port}:interface=127.0.0.1: Address already in use"
    assert status == 1, log
    assert log.count(line) == 1, log
    assert "Traceback" not in log, log
    assert "s3balance listening" not in log


def test_a_metrics_port_in_use_ends_the_daemon_too(tmp_path: Path) -> None:
    """``metrics.port`` is a listener like the others: all are bound, or the daemon exits."""
    with _held_port() as holder:
        metrics_port = holder.getsockname()[1]
        config = {
            "server": {"host": "127.0.0.1"},
            "buckets": [{"name": "disk-1", "path": "b1"}],
            "metrics": {"port": metrics_port},
        }
        daemon = DaemonProcess(tmp_path, config)
        daemon.start(wait=False)
        try:
            status = daemon.wait(timeout=60)
        finally:
            daemon.stop()
        log = daemon.log_path.read_text()
    assert status == 1, log
    line = (
        f"s3balance: cannot listen on tcp:{metrics_port}:interface=127.0.0.1: "
        "Address already in use"
    )
    assert log.count(line) == 1, log
    assert "s3balance listening" not in log


def test_a_daemonising_twistd_reports_the_port_in_use_and_exits(tmp_path: Path) -> None:
    """Without ``-n`` twistd's parent waits for its child's word: it must get one."""
    import subprocess

    from test.support.process import daemon_environment, twistd_command

    (tmp_path / "s3balance.yaml").write_text("buckets:\n  - {name: disk-1, path: b1}\n")
    with _held_port() as holder:
        port = holder.getsockname()[1]
        result = subprocess.run(
            twistd_command() + [
                f"--pidfile={tmp_path / 'twistd.pid'}", f"--logfile={tmp_path / 'twistd.log'}",
                "s3balance", "--config", "s3balance.yaml",
                "--listen", f"tcp:{port}:interface=127.0.0.1",
            ],
            cwd=tmp_path, env=daemon_environment(), stdin=subprocess.DEVNULL,
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert result.returncode == 1, result
    assert f"cannot listen on tcp:{port}" in result.stderr
    # twistd's child writes its word to the parent before it removes the pid file, so the
    # parent may exit a moment before the file is gone: wait for the child's cleanup.
    assert wait_until(lambda: not (tmp_path / "twistd.pid").exists(), timeout=10, interval=0.05)


def test_an_outdated_schema_refuses_to_start_without_auto_migrate(tmp_path: Path) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(f"sqlite:///{tmp_path / 'old.db'}")
    with engine.begin() as connection:
        connection.execute(sa.text("CREATE TABLE unrelated (id INTEGER)"))
    engine.dispose()
    (tmp_path / "c.yaml").write_text(
        f"database: {{dsn: '{tmp_path / 'old.db'}', auto_migrate: false}}\n"
        "buckets: [{name: r, path: d}]\n"
    )
    result = run_twistd(tmp_path, "--config", "c.yaml", "--listen", "tcp:0")
    assert result.returncode != 0
    assert "database.auto_migrate: true" in result.stderr

    # A schema from a newer s3balance is refused too, and said so.
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'old.db'}")
    with engine.begin() as connection:
        connection.execute(sa.text("CREATE TABLE alembic_version (version_num VARCHAR(32))"))
        connection.execute(sa.text("INSERT INTO alembic_version VALUES ('9999_future')"))
    engine.dispose()
    result = run_twistd(tmp_path, "--config", "c.yaml", "--listen", "tcp:0")
    assert result.returncode != 0
    assert "newer than this s3balance knows" in result.stderr


def test_sigterm_lets_an_upload_in_flight_finish_and_stops_accepting(tmp_path: Path) -> None:
    config = {"buckets": [{"name": "disk", "path": "b"}], "server": {"shutdown_grace": "20s"}}
    with DaemonProcess(tmp_path, config) as daemon:
        client(daemon.endpoint).create_bucket(Bucket="grace")
        size = 4 << 20
        upload = socket.create_connection(("127.0.0.1", daemon.port), timeout=20)
        upload.sendall(b"PUT /grace/slow HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size)
        upload.sendall(b"a" * (size // 2))
        time.sleep(0.5)
        daemon.signal(signal.SIGTERM)
        # The listener goes away at once...
        assert wait_until(lambda: _refused(daemon.port), timeout=10)
        # ...while the upload in flight still completes and is stored.
        upload.sendall(b"a" * (size - size // 2))
        answer = _read_response(upload)
        upload.close()
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        assert_clean_exit(daemon, daemon.wait(30))
    # The object really is there for the next run of the daemon.
    with DaemonProcess(tmp_path, config) as again:
        body = client(again.endpoint).get_object(Bucket="grace", Key="slow")["Body"].read()
        assert body == b"a" * size


@pytest.mark.slow
def test_a_killed_seaweedfs_turns_unhealthy_and_back(tmp_path: Path) -> None:
    weed = SeaweedFS(str(tmp_path / "weed"))
    weed.start()
    try:
        bucket = unique_bucket_name("health")
        weed.create_bucket(bucket)
        config = {
            "buckets": [
                weed.bucket_entry("weed", bucket),
                {"name": "disk", "path": "d"},
            ],
            "balancer": {
                "health_check_period": "500ms",
                "probe_timeout": "1s",
                "unhealthy_threshold": 2,
                "healthy_threshold": 2,
            },
        }
        with DaemonProcess(tmp_path / "daemon", config) as daemon:

            def weed_state() -> tuple[bool, float | None]:
                healthy = daemon.health()["backends"]["weed"]["healthy"]
                gauge = metric_value(daemon.metrics(), "s3_balance_bucket_healthy", "weed")
                return healthy, gauge

            assert wait_until(lambda: weed_state() == (True, 1.0), timeout=10)
            weed.kill()
            # Two failed probes, one period apart, each bounded by the probe timeout.
            assert wait_until(lambda: weed_state() == (False, 0.0), timeout=8)
            assert daemon.health()["status"] == "degraded"
            assert daemon.health()["backends"]["weed"]["last_error"]
            weed.restart()
            assert wait_until(lambda: weed_state() == (True, 1.0), timeout=20)
            assert daemon.health()["status"] == "healthy"
    finally:
        weed.kill()


def assert_clean_exit(daemon: DaemonProcess, status: int | None) -> None:
    """twistd re-raises SIGTERM after a clean shutdown, so the status says "terminated"."""
    assert status in (0, -signal.SIGTERM), daemon.log_tail()
    assert "Server Shut Down." in daemon.log_tail(), daemon.log_tail()
    assert "Traceback" not in daemon.log_path.read_text(), daemon.log_tail(200)


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return True
    return False


def _read_response(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_a_class_a_limit_sends_the_fourth_write_elsewhere_even_after_a_restart(
    tmp_path: Path,
) -> None:
    """``operation_limits.type_a: 3``: three writes land on the preferred backend, the fourth and
    later go to the other one, and the monthly count survives a restart."""
    config = {
        "buckets": [
            # least-space prefers the unlimited backend while it is within its budget.
            {"name": "cheap", "path": "cheap", "operation_limits": {"type_a": 3}},
            {"name": "other", "path": "other", "max_size": "1GiB"},
            {"name": "vb1", "virtual": True},
        ],
        "balancer": {"strategy": "least-space", "update_stats_period": "500ms"},
        "api": {"enabled": True, "token": "secret-token"},
    }

    def stats(daemon: DaemonProcess) -> dict:  # type: ignore[type-arg]
        import json
        import urllib.request

        request = urllib.request.Request(
            f"{daemon.endpoint}/api/stats/monthly",
            headers={"Authorization": "Bearer secret-token"},
        )
        with urllib.request.urlopen(request, timeout=5) as answer:
            return json.loads(answer.read())["backends"]

    def usage(daemon: DaemonProcess) -> tuple[float | None, float | None]:
        text = daemon.metrics()
        return (
            metric_value(text, "s3_balance_bucket_objects", "cheap"),
            metric_value(text, "s3_balance_bucket_objects", "other"),
        )

    with DaemonProcess(tmp_path, config) as daemon:
        s3 = client(daemon.endpoint)
        for i in range(5):
            s3.put_object(Bucket="vb1", Key=f"k{i}", Body=b"z" * 100)
        assert wait_until(lambda: usage(daemon) == (3.0, 2.0), timeout=10), usage(daemon)
        assert stats(daemon)["cheap"]["class_a"] == 3
        # Reads are class B and have no limit here: every object still reads back.
        for i in range(5):
            assert s3.get_object(Bucket="vb1", Key=f"k{i}")["Body"].read() == b"z" * 100
    with DaemonProcess(tmp_path, config) as again:
        client(again.endpoint).put_object(Bucket="vb1", Key="k5", Body=b"z")
        assert wait_until(lambda: usage(again) == (3.0, 3.0), timeout=10), usage(again)
        assert stats(again)["cheap"]["class_a"] == 3


def test_metrics_port_serves_the_metrics_on_a_port_of_their_own(tmp_path: Path) -> None:
    """``metrics.port`` (a Go key): scrapers get their own port; S3 is not served there."""
    import urllib.error
    import urllib.request

    from test.support import free_port

    port = free_port()
    config = {
        "server": {"host": "127.0.0.1"},
        "buckets": [{"name": "disk", "path": "d"}],
        "metrics": {"path": "/prom", "port": port, "token": "scrape-me"},
    }
    with DaemonProcess(tmp_path, config) as daemon:
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/prom", headers={"Authorization": "Bearer scrape-me"}
        )
        with urllib.request.urlopen(request, timeout=5) as answer:
            text = answer.read().decode()
        assert 's3_balance_bucket_healthy{bucket="disk"}' in text
        # The token guards that port too, and S3 requests are not answered there.
        for path, headers in (
            ("/prom", {}),
            ("/somebucket", {"Authorization": "Bearer scrape-me"}),
        ):
            try:
                urllib.request.urlopen(
                    urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers),
                    timeout=5,
                )
            except urllib.error.HTTPError as error:
                assert error.code in (401, 404), (path, error.code)
            else:
                raise AssertionError(f"{path} answered on the metrics port")
        # The main listener keeps serving the metrics path as well, with the same token.
        main = urllib.request.Request(
            f"{daemon.endpoint}/prom", headers={"Authorization": "Bearer scrape-me"}
        )
        with urllib.request.urlopen(main, timeout=5) as answer:
            assert "s3_balance_bucket_healthy" in answer.read().decode()
