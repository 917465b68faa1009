"""``server.workers: N``: a supervisor and N worker processes, tested as users run them.

Each worker names itself in the ``x-s3balance-worker`` header of ``/health`` ("index pid"), so a
test can see which process answered a connection.  With ``SO_REUSEPORT`` the kernel picks a
worker by a hash of the connection's addresses, so a few dozen fresh connections reach every
worker (the chance that 24 connections all miss one of two workers is 2 ** -23).
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import sqlite3
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.python import usage

from s3balance.configfile import ConfigError, parse_config
from s3balance.supervisor import ListenError, bind_tcp
from s3balance.tap import Options
from s3balance.worker import parse_adopted
from test.support import free_port, s3client, wait_until
from test.support.process import DaemonProcess, run_twistd

pytestmark = pytest.mark.timeout(90)

TOKEN = "workers-token"
FRESH_CONNECTIONS = 24
MAX_DRAIN_CONNECTIONS = 40  # uploads opened at most while waiting for both workers to hold two


def workers_config(**server: Any) -> dict[str, Any]:
    return {
        "server": {"host": "127.0.0.1", "workers": 2, "shutdown_grace": "10s", **server},
        "buckets": [
            {"name": "disk-a", "path": "disk-a"},
            {"name": "disk-b", "path": "disk-b"},
            {"name": "files", "virtual": True},
        ],
        "api": {"enabled": True, "token": TOKEN},
        "balancer": {
            "strategy": "least-space",
            "health_check_period": "2s",
            # No usage refresh while a test has taken a backend's directory away (it would log
            # the failed statvfs with a traceback, which assert_clean_exit looks for).
            "update_stats_period": "10m",
            "unhealthy_threshold": 1,
            "healthy_threshold": 1,
        },
    }


def ask(
    daemon: DaemonProcess, method: str, path: str, body: bytes | None = None
) -> tuple[int, http.client.HTTPMessage, bytes]:
    """One request on a connection of its own (so the kernel may pick another worker)."""
    connection = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=10)
    try:
        headers = {"Authorization": f"Bearer {TOKEN}"} if path.startswith("/api") else {}
        connection.request(method, path, body=body, headers=headers)
        answer = connection.getresponse()
        return answer.status, answer.headers, answer.read()
    finally:
        connection.close()


def worker_of(daemon: DaemonProcess) -> str:
    status, headers, _ = ask(daemon, "GET", "/health")
    assert status == 200
    return headers["x-s3balance-worker"]


def workers_seen(daemon: DaemonProcess, connections: int = FRESH_CONNECTIONS) -> set[str]:
    return {worker_of(daemon) for _ in range(connections)}


def strategies_seen(daemon: DaemonProcess) -> set[str]:
    seen = set()
    for _ in range(FRESH_CONNECTIONS):
        status, _, body = ask(daemon, "GET", "/api/config")
        assert status == 200, body
        seen.add(json.loads(body)["balancer"]["strategy"])
    return seen


def s3_client(daemon: DaemonProcess) -> Any:
    return s3client.boto3_client(daemon.endpoint, "any", "any")


def assert_clean_exit(daemon: DaemonProcess, status: int | None) -> None:
    """twistd re-raises SIGTERM after a clean shutdown, so the status says "terminated"; every
    worker shut down too, without a traceback."""
    assert status in (0, -signal.SIGTERM), daemon.log_tail()
    log = daemon.log_path.read_text()
    assert "Traceback" not in log, log[max(0, log.find("Traceback") - 2000) :][:6000]
    assert log.count("Server Shut Down.") >= 3, daemon.log_tail(200)  # two workers and itself


def operations_counted(metrics: str, operation: str, bucket: str) -> float:
    total = 0.0
    for line in metrics.splitlines():
        if line.startswith("s3_balance_s3_operations_total{") and (
            f'operation="{operation}"' in line and f'bucket="{bucket}"' in line
        ):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    config = workers_config()
    config["metrics"] = {"port": free_port()}
    process = DaemonProcess(tmp_path_factory.mktemp("workers"), config)
    process.start(timeout=60)
    try:
        assert wait_until(lambda: len(workers_seen(process)) == 2, 30), process.log_tail()
        yield process
    finally:
        assert_clean_exit(process, process.stop())


# -- configuration --------------------------------------------------------------------------


def test_workers_key_takes_a_count_or_auto_and_names_what_is_allowed() -> None:
    base = {"buckets": [{"name": "a", "path": "a"}]}
    assert parse_config(base).server.workers == 1
    assert parse_config({**base, "server": {"workers": 3}}).server.workers == 3
    auto = parse_config({**base, "server": {"workers": "auto"}}).server.workers
    assert auto == len(os.sched_getaffinity(0)) >= 1
    with pytest.raises(ConfigError, match=r"server\.workers: 0 is out of range .*auto"):
        parse_config({**base, "server": {"workers": 0}})
    with pytest.raises(ConfigError, match=r"server\.workers: 'many' is neither"):
        parse_config({**base, "server": {"workers": "many"}})


def test_only_tcp_endpoints_can_be_shared_with_workers() -> None:
    with pytest.raises(ListenError, match="only tcp:PORT"):
        bind_tcp("ssl:8443:privateKey=key.pem", 2)
    sockets = bind_tcp("tcp:0:interface=127.0.0.1", 2)
    try:
        ports = {s.getsockname()[1] for s in sockets}
        assert len(ports) == 1 and len(sockets) == 2  # SO_REUSEPORT: one socket per worker
    finally:
        for s in sockets:
            s.close()


def test_the_internal_adopt_option_is_checked_like_any_other() -> None:
    assert parse_adopted("s3=5,s3=6,metrics=7") == [("s3", 5), ("s3", 6), ("metrics", 7)]
    with pytest.raises(usage.UsageError, match="--adopt: 'web=5' is not ROLE=FD"):
        Options().parseOptions(["--adopt", "web=5"])


def test_a_port_in_use_is_refused_before_any_worker_starts(tmp_path: Path) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        port = taken.getsockname()[1]
        (tmp_path / "c.yaml").write_text(json.dumps(workers_config(port=port)))
        result = run_twistd(tmp_path, "--config", str(tmp_path / "c.yaml"), timeout=60)
    finally:
        taken.close()
    assert result.returncode != 0
    assert f"cannot listen on tcp:{port}:interface=127.0.0.1" in result.stdout + result.stderr


# -- a running supervisor -------------------------------------------------------------------


def test_connections_spread_and_every_worker_answers_health_alike(daemon: DaemonProcess) -> None:
    answers: dict[str, dict[str, Any]] = {}
    for _ in range(FRESH_CONNECTIONS):
        status, headers, body = ask(daemon, "GET", "/health")
        assert status == 200
        answers[headers["x-s3balance-worker"]] = json.loads(body)
    assert len(answers) == 2, answers.keys()
    first, second = answers.values()
    assert first["status"] == second["status"] == "healthy"
    assert {n: b["healthy"] for n, b in first["backends"].items()} == {
        n: b["healthy"] for n, b in second["backends"].items()
    }


def test_objects_written_through_any_worker_are_read_through_every_worker_and_metrics_sum(
    daemon: DaemonProcess,
) -> None:
    before = operations_counted(daemon.metrics(), "PutObject", "files")
    count = 12
    for i in range(count):  # a connection each: the PUTs land on both workers
        status, _, body = ask(daemon, "PUT", f"/files/spread-{i}", body=b"%d" % i * 100)
        assert status == 200, body
    for _ in range(4):
        s3 = s3_client(daemon)
        assert s3.get_object(Bucket="files", Key="spread-7")["Body"].read() == b"7" * 100
        listed = s3.list_objects_v2(Bucket="files", Prefix="spread-")
        assert len(listed["Contents"]) == count
    # Every worker's /metrics shows the sum over both workers.
    for _ in range(8):
        assert operations_counted(daemon.metrics(), "PutObject", "files") == before + count
    # So does metrics.port, a socket of its own that every worker adopts too.
    scraped = f"http://127.0.0.1:{daemon.config['metrics']['port']}/metrics"
    for _ in range(4):
        with urllib.request.urlopen(scraped, timeout=10) as answer:
            assert (
                operations_counted(answer.read().decode(), "PutObject", "files") == before + count
            )
    # And so do the admin API's placement decisions.
    decisions = set()
    for _ in range(FRESH_CONNECTIONS):
        status, _, body = ask(daemon, "GET", "/api/balancer")
        assert status == 200, body
        decisions.add(json.dumps(json.loads(body)["decisions"], sort_keys=True))
    assert len(decisions) == 1, decisions
    placed = json.loads(decisions.pop())
    assert sum(per_backend["total"] for per_backend in placed.values()) >= count


def test_concurrent_overwrites_through_both_workers_on_sqlite_leave_one_object_and_no_orphan(
    daemon: DaemonProcess,
) -> None:
    """Workers are separate processes on one SQLite file: writes of one key through both must
    still end with the database's last commit being the backend's last write."""
    bodies = [b"%02d" % i * 5000 for i in range(16)]
    statuses: list[int] = []

    def put(body: bytes) -> None:
        status, _, _ = ask(daemon, "PUT", "/files/contended", body=body)
        statuses.append(status)

    threads = [threading.Thread(target=put, args=(body,)) for body in bodies]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert statuses == [200] * len(bodies)
    seen = {s3_client(daemon).get_object(Bucket="files", Key="contended")["Body"].read()}
    seen |= {ask(daemon, "GET", "/files/contended")[2] for _ in range(8)}
    assert len(seen) == 1 and seen <= set(bodies)
    status, _, body = ask(daemon, "POST", "/api/scrub", body=json.dumps({"grace": 0}).encode())
    assert status == 200, body
    report = json.loads(body)
    assert report["clean"], report
    assert all(not b["recent_orphans"] for b in report["backends"].values()), report


def test_post_api_config_applies_to_every_worker(daemon: DaemonProcess) -> None:
    update = json.dumps({"balancer": {"strategy": "round-robin"}}).encode()
    status, _, body = ask(daemon, "POST", "/api/config", body=update)
    assert status == 200, body
    assert strategies_seen(daemon) == {"round-robin"}
    # A refused update changes nothing anywhere.
    bad = json.dumps({"balancer": {"strategy": "fastest"}}).encode()
    status, _, body = ask(daemon, "POST", "/api/config", body=bad)
    assert status == 400 and b"balancer.strategy" in body
    assert strategies_seen(daemon) == {"round-robin"}


def test_a_killed_worker_is_replaced_and_gets_the_running_configuration(
    daemon: DaemonProcess,
) -> None:
    update = json.dumps({"balancer": {"strategy": "weighted"}}).encode()
    status, _, body = ask(daemon, "POST", "/api/config", body=update)
    assert status == 200, body
    before = workers_seen(daemon)
    assert len(before) == 2
    victim = sorted(before)[0]
    os.kill(int(victim.split()[1]), signal.SIGKILL)
    assert wait_until(
        lambda: victim not in (seen := workers_seen(daemon)) and len(seen) == 2, 30
    ), daemon.log_tail()
    assert "restarting it" in daemon.log_tail(200)
    # The new worker was given the configuration applied through the API, not the file's.
    assert wait_until(lambda: strategies_seen(daemon) == {"weighted"}, 10)


def test_sighup_reaches_every_worker(daemon: DaemonProcess) -> None:
    config = dict(daemon.config)
    config["balancer"] = {**config["balancer"], "strategy": "consistent-hash"}
    daemon.write_config(config)
    daemon.signal(signal.SIGHUP)
    assert wait_until(lambda: strategies_seen(daemon) == {"consistent-hash"}, 15), daemon.log_tail()
    assert len(workers_seen(daemon)) == 2, "a SIGHUP must not end a worker"


def health_by_worker(daemon: DaemonProcess) -> dict[str, list[dict[str, Any]]]:
    answers: dict[str, list[dict[str, Any]]] = {}
    for _ in range(FRESH_CONNECTIONS):
        status, headers, body = ask(daemon, "GET", "/health")
        answers.setdefault(headers["x-s3balance-worker"], []).append(json.loads(body))
    return answers


def test_one_worker_probes_and_every_worker_reports_its_findings(daemon: DaemonProcess) -> None:
    """Probes are not multiplied by the number of workers: the others show the first worker's
    findings, down to the time of its last probe (independent probes would differ in it)."""

    def probed_at(answers: list[dict[str, Any]]) -> set[float]:
        return {a["backends"]["disk-a"]["last_probe"] for a in answers}

    def one_prober() -> bool:
        first, second = health_by_worker(daemon).values()
        return bool(probed_at(first) & probed_at(second))

    assert wait_until(one_prober, 10, interval=0.1)

    root = Path(daemon.config["data_dir"]) / "disk-b"
    root.rename(root.with_name("disk-b-away"))
    try:

        def everywhere(healthy: bool) -> bool:
            answers = health_by_worker(daemon)
            states = {a["backends"]["disk-b"]["healthy"] for seen in answers.values() for a in seen}
            return len(answers) == 2 and states == {healthy}

        assert wait_until(lambda: everywhere(False), 15), daemon.log_tail()
        status, _, body = ask(daemon, "GET", "/health")
        assert json.loads(body)["status"] == "degraded"
    finally:
        root.with_name("disk-b-away").rename(root)
    assert wait_until(lambda: everywhere(True), 15), daemon.log_tail()


def test_a_probe_asked_of_any_worker_reaches_every_worker(tmp_path: Path) -> None:
    """With a period too long to matter, only the asked worker probes: its finding must reach
    the other worker through the supervisor."""
    config = workers_config()
    config["balancer"] = {**config["balancer"], "health_check_period": "10m"}
    daemon = DaemonProcess(tmp_path, config)
    daemon.start(timeout=60)
    try:
        assert wait_until(lambda: len(workers_seen(daemon)) == 2, 30)
        root = Path(daemon.config["data_dir"]) / "disk-b"
        root.rename(root.with_name("disk-b-away"))
        # Ask the second worker (the first probes periodically and always shared its findings):
        # a keep-alive connection stays with the worker that accepted it.
        for _ in range(FRESH_CONNECTIONS):
            connection = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=10)
            connection.request("GET", "/health")
            answer = connection.getresponse()
            answer.read()
            if answer.headers["x-s3balance-worker"].startswith("1 "):
                break
            connection.close()
        else:
            pytest.fail("no connection reached the second worker")
        try:
            connection.request(
                "POST", "/api/health/probe", headers={"Authorization": f"Bearer {TOKEN}"}
            )
            answer = connection.getresponse()
            assert answer.status == 200, answer.read()
            answer.read()
        finally:
            connection.close()
        # The finding travels through the supervisor: every worker has it within moments.
        def unhealthy_everywhere() -> bool:
            answers = health_by_worker(daemon)
            states = {
                a["backends"]["disk-b"]["healthy"] for seen in answers.values() for a in seen
            }
            return len(answers) == 2 and states == {False}

        assert wait_until(unhealthy_everywhere, 10), health_by_worker(daemon)
    finally:
        assert_clean_exit(daemon, daemon.stop())


# -- start and stop -------------------------------------------------------------------------


def test_sigterm_drains_uploads_in_flight_on_every_worker(tmp_path: Path) -> None:
    daemon = DaemonProcess(tmp_path, workers_config())
    daemon.start(timeout=60)
    uploads: list[tuple[socket.socket, str]] = []
    size = 200_000
    try:
        assert wait_until(lambda: len(workers_seen(daemon)) == 2, 30)
        # The kernel hashes each connection to a worker, so a fixed number of connections can
        # all land on one (1 in 128 for eight); keep opening them until both workers hold two
        # uploads, within a bound.
        per_worker: dict[str, int] = {}
        for i in range(MAX_DRAIN_CONNECTIONS):
            connection = socket.create_connection(("127.0.0.1", daemon.port), timeout=20)
            connection.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            head = _read_response(connection)
            worker = _header(head, "x-s3balance-worker")
            request = f"PUT /files/drain-{i} HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n"
            connection.sendall(request.encode() + b"d" * (size // 2))
            uploads.append((connection, worker))
            per_worker[worker] = per_worker.get(worker, 0) + 1
            if len(per_worker) == 2 and min(per_worker.values()) >= 2:
                break
        assert len(per_worker) == 2 and min(per_worker.values()) >= 2, per_worker
        time.sleep(0.5)  # the halves reach the workers
        daemon.signal(signal.SIGTERM)
        time.sleep(1.0)
        with pytest.raises(OSError):  # no new connection is taken meanwhile
            probe = socket.create_connection(("127.0.0.1", daemon.port), timeout=2)
            probe.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            if not probe.recv(100):
                raise ConnectionResetError("closed without an answer")
        for connection, _ in uploads:
            connection.sendall(b"d" * (size - size // 2))
        for connection, worker in uploads:
            head = _read_response(connection)
            assert head.startswith(b"HTTP/1.1 200"), (worker, head)
        assert_clean_exit(daemon, daemon.wait(30))
    finally:
        for connection, _ in uploads:
            connection.close()
        daemon.stop()
    with sqlite3.connect(tmp_path / "data" / "s3balance.db") as database:
        rows = database.execute("SELECT key, size FROM objects").fetchall()
    stored = sorted((bytes(k).decode() if not isinstance(k, str) else k, n) for k, n in rows)
    assert stored == sorted((f"drain-{i}", size) for i in range(len(uploads)))


def _read_response(connection: socket.socket) -> bytes:
    """The head of one response (and its body, which /health and PUT keep short)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = connection.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = int(_header(head, "content-length") or 0)
    while len(rest) < length:
        chunk = connection.recv(65536)
        if not chunk:
            break
        rest += chunk
    return head


def _header(head: bytes, name: str) -> str:
    for line in head.decode("latin-1").split("\r\n")[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == name:
            return value.strip()
    return ""


def test_the_supervisor_exits_non_zero_when_no_worker_can_start(tmp_path: Path) -> None:
    daemon = DaemonProcess(tmp_path, workers_config())
    daemon.start(wait=False)
    try:
        # Workers read the file as they start, after the supervisor did: take it away then.
        assert wait_until(lambda: "starting 2 workers" in daemon.log_tail(), 30, 0.02)
        daemon.config_path.unlink()
        status = daemon.wait(60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the supervisor kept trying:\n{daemon.log_tail()}")
    finally:
        daemon.stop()
    assert status != 0
    assert "no worker could start" in daemon.log_tail(200)


def test_a_backend_removed_by_reload_leaves_the_metrics_of_every_worker(tmp_path: Path) -> None:
    """Workers share their series through files a worker cannot take a sample back out of:
    a removed backend must still vanish from every scrape, as it does with one process."""
    config = workers_config()
    config["buckets"].insert(2, {"name": "disk-c", "path": "disk-c"})
    daemon = DaemonProcess(tmp_path, config)
    daemon.start(timeout=60)
    try:
        assert wait_until(lambda: len(workers_seen(daemon)) == 2, 30)
        assert 'bucket="disk-c"' in daemon.metrics()
        smaller = workers_config()
        daemon.write_config(smaller)
        daemon.signal(signal.SIGHUP)

        def forgotten_everywhere() -> bool:
            return all('bucket="disk-c"' not in daemon.metrics() for _ in range(FRESH_CONNECTIONS))

        assert wait_until(forgotten_everywhere, 20), [
            line for line in daemon.metrics().splitlines() if "disk-c" in line
        ]
        assert 'bucket="disk-a"' in daemon.metrics()
    finally:
        assert_clean_exit(daemon, daemon.stop())
