"""Faults a user meets: dying backends and databases, vanishing clients, SIGTERM, hostile input.

Each test is bounded (timeouts on every socket and wait) and uses loopback only. After a fault,
``test.support.scrubbing`` proves that nothing was left behind: no orphan bytes, no dangling rows.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import re
import signal
import socket
import sqlite3
import struct
import threading
import time
from pathlib import Path
from typing import Any

import botocore.exceptions
import pytest
import sqlalchemy as sa

from test.dbfixture import POSTGRES_SERVER, ServerDatabase
from test.support import s3client, unavailable, unique_bucket_name, wait_until
from test.support.daemon import without_write_ids
from test.support.postgres import PrivatePostgres, postgres_bin_dir
from test.support.process import DaemonProcess
from test.support.scrubbing import assert_process_left_nothing
from test.support.seaweedfs import SeaweedFS, shared_seaweedfs


def client(endpoint: str) -> Any:
    return s3client.boto3_client(endpoint, "any", "any", read_timeout=20)


class RawResponse:
    """What came back on a raw socket: status, headers, the body bytes actually received, and
    whether the connection was cut before ``Content-Length`` bytes arrived."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes, cut: bool) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.cut = cut

    @property
    def s3_code(self) -> str | None:
        if b"<Error>" not in self.body:
            return None
        start = self.body.find(b"<Code>") + len(b"<Code>")
        return self.body[start : self.body.find(b"</Code>")].decode()


def read_response(sock: Any, limit: float = 20.0) -> RawResponse:
    """Read one response; never trusts a short body (the point of several tests)."""
    sock.settimeout(limit)
    data = b""
    while b"\r\n\r\n" not in data:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            chunk = b""
        if not chunk:
            return RawResponse(0, {}, data, True)
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = headers.get("content-length")
    wanted = int(length) if length is not None else None
    cut = False
    while wanted is None or len(body) < wanted:
        try:
            chunk = sock.recv(1 << 20)
        except (ConnectionResetError, TimeoutError):
            chunk = b""
        if not chunk:
            cut = wanted is not None and len(body) < wanted
            break
        body += chunk
    return RawResponse(status, headers, body, cut)


def raw_request(port: int, request: bytes, limit: float = 20.0) -> RawResponse:
    with socket.create_connection(("127.0.0.1", port), timeout=limit) as sock:
        try:
            sock.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the daemon may refuse before reading it all; its answer is still there
        return read_response(sock, limit)


def vm_rss_kib(daemon: DaemonProcess) -> int:
    assert daemon.process is not None
    status = Path(f"/proc/{daemon.process.pid}/status").read_text()
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


# -- malformed input --------------------------------------------------------------------------


def _malformed_requests(upload_id: str) -> list[tuple[str, bytes]]:
    big_delete = (
        b"<Delete>" + b"".join(b"<Object><Key>k%d</Key></Object>" % i for i in range(200_000))
    )
    truncated_delete = b"<Delete><Object><Key>a</Key></Obj"
    complete = b"<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>"
    big_complete = b"<CompleteMultipartUpload>" + b"<Part><PartNumber>1</PartNumber>" * 400_000

    def post(path: str, body: bytes) -> bytes:
        # DeleteObjects demands Content-MD5: send a right one so the XML itself is judged.
        md5 = base64.b64encode(hashlib.md5(body).digest())
        return (
            b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\nContent-MD5: %s\r\n"
            b"Connection: close\r\n\r\n" % (path.encode(), len(body), md5)
            + body
        )

    def get(path: str, extra: bytes = b"") -> bytes:
        return b"GET %s HTTP/1.1\r\nHost: x\r\n%sConnection: close\r\n\r\n" % (path.encode(), extra)

    def put_length(value: bytes) -> bytes:
        return (
            b"PUT /fuzz/obj HTTP/1.1\r\nHost: x\r\nContent-Length: %s\r\n"
            b"Connection: close\r\n\r\n" % value
        )

    key_1025 = "k" * 1025
    flood = b"".join(b"X-Flood-%d: %d\r\n" % (i, i) for i in range(5000))
    return [
        ("truncated DeleteObjects", post("/fuzz?delete", truncated_delete)),
        ("oversized DeleteObjects", post("/fuzz?delete", big_delete)),
        ("truncated CompleteMultipartUpload", post(f"/fuzz/mp?uploadId={upload_id}", complete)),
        ("oversized CompleteMultipartUpload", post(f"/fuzz/mp?uploadId={upload_id}", big_complete)),
        ("invalid UTF-8 key", get("/fuzz/bad%ffkey")),
        ("key of 1025 bytes", put_length(b"0").replace(b"/fuzz/obj", f"/fuzz/{key_1025}".encode())),
        ("duplicate query parameters", get("/fuzz?list-type=2&list-type=1&max-keys=1&max-keys=2")),
        ("Content-Length 10^30", put_length(b"1" + b"0" * 30)),
        ("negative Content-Length", put_length(b"-5")),
        ("non-numeric Content-Length", put_length(b"twelve")),
        ("thousands of headers", get("/fuzz/obj", flood)),
        ("one huge header", get("/fuzz/obj", b"X-Huge: " + b"h" * (4 << 20) + b"\r\n")),
    ]


@pytest.mark.timeout(120)
def test_malformed_input_gets_an_error_and_the_daemon_keeps_serving(tmp_path: Path) -> None:
    config = {"buckets": [{"name": "disk", "path": "d"}]}
    with DaemonProcess(tmp_path, config) as daemon:
        s3 = client(daemon.endpoint)
        s3.create_bucket(Bucket="fuzz")
        s3.put_object(Bucket="fuzz", Key="obj", Body=b"original")
        upload_id = s3.create_multipart_upload(Bucket="fuzz", Key="mp")["UploadId"]
        rss_before = vm_rss_kib(daemon)
        answers = {}
        for name, request in _malformed_requests(upload_id):
            answer = raw_request(daemon.port, request)
            answers[name] = answer
            # An error (never a 5xx traceback), or the HTTP layer closing on a hopeless request;
            # duplicate parameters may also be answered (one of the values is used).
            acceptable = answer.status == 0 or 400 <= answer.status < 500
            if name == "duplicate query parameters":
                acceptable = acceptable or answer.status == 200
            assert acceptable, (name, answer.status, answer.body[:300])
            assert b"Traceback" not in answer.body, name
            # The daemon still serves a normal request after each one.
            assert s3.get_object(Bucket="fuzz", Key="obj")["Body"].read() == b"original", name
        codes = {name: (a.status, a.s3_code) for name, a in answers.items()}
        assert codes["truncated DeleteObjects"] == (400, "MalformedXML"), codes
        assert codes["key of 1025 bytes"] == (400, "KeyTooLongError"), codes
        assert codes["truncated CompleteMultipartUpload"][0] == 400, codes
        for name in ("oversized DeleteObjects", "oversized CompleteMultipartUpload"):
            assert codes[name][0] in (400, 413) and codes[name][1], codes
        lengths = ("Content-Length 10^30", "negative Content-Length", "non-numeric Content-Length")
        for name in lengths:
            assert codes[name][0] in (0, 400, 413), codes
        # Bounded memory: a few MB of garbage must not grow the process by more than its size.
        rss_after = vm_rss_kib(daemon)
        assert rss_after - rss_before < 64 * 1024, (rss_before, rss_after)
        assert s3.list_objects_v2(Bucket="fuzz")["KeyCount"] == 1
        s3.abort_multipart_upload(Bucket="fuzz", Key="mp", UploadId=upload_id)
    assert_process_left_nothing(daemon.config_path)


# -- the metadata database restarted under traffic --------------------------------------------


@pytest.mark.postgres
@pytest.mark.timeout(120)
def test_postgres_connections_killed_under_traffic_then_recovery(tmp_path: Path) -> None:
    database = ServerDatabase(POSTGRES_SERVER)
    reason = database.unreachable_reason()
    if reason:
        unavailable(reason)
    url = database.create()
    try:
        config = {
            "buckets": [{"name": "disk", "path": "d"}],
            "database": {"type": "postgres", "dsn": url},
        }
        admin = sa.create_engine(f"{POSTGRES_SERVER}/postgres", poolclass=sa.pool.NullPool)
        with DaemonProcess(tmp_path, config) as daemon:
            s3 = client(daemon.endpoint)
            s3.create_bucket(Bucket="pgdb")
            s3.put_object(Bucket="pgdb", Key="before", Body=b"b" * 100)
            get_before = b"GET /pgdb/before HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            results: list[tuple[str, int, str]] = []
            stop = threading.Event()

            def traffic() -> None:
                for i in range(400):
                    if stop.is_set():
                        return
                    answer = raw_request(daemon.port, get_before, limit=15)
                    results.append((f"get{i}", answer.status, answer.s3_code or ""))

            worker = threading.Thread(target=traffic)
            worker.start()
            terminated: list[bool] = []
            try:
                for _ in range(5):
                    with admin.connect() as connection:
                        rows = connection.exec_driver_sql(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            f"WHERE datname = '{database.name}' AND pid <> pg_backend_pid()"
                        )
                        terminated.extend(bool(row[0]) for row in rows)
                    time.sleep(0.2)
            finally:
                stop.set()
                worker.join(30)
            assert not worker.is_alive()
            # Otherwise the test proves nothing: the daemon really lost connections.
            assert any(terminated), terminated
            statuses = {status for _, status, _ in results}
            # Every answer is a whole HTTP response: 200, or a clean S3 5xx error document.
            assert 0 not in statuses, results
            for name, status, code in results:
                assert status == 200 or (status in (500, 503) and code), (name, status, code)
            # Recovery by itself, no restart: reads and writes work again.
            assert wait_until(
                lambda: raw_request(daemon.port, get_before).status
                == 200,
                timeout=20,
            )
            s3.put_object(Bucket="pgdb", Key="after", Body=b"a" * 10)
            assert s3.get_object(Bucket="pgdb", Key="after")["Body"].read() == b"a" * 10
        admin.dispose()
        assert_process_left_nothing(daemon.config_path)
    finally:
        database.drop()


# -- SIGTERM with downloads in flight ---------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_sigterm_lets_a_download_finish_and_cuts_one_past_the_grace(tmp_path: Path) -> None:
    size = 8 << 20
    config = {"buckets": [{"name": "disk", "path": "d"}], "server": {"shutdown_grace": "3s"}}
    with DaemonProcess(tmp_path, config) as daemon:
        s3 = client(daemon.endpoint)
        s3.create_bucket(Bucket="dls")
        s3.put_object(Bucket="dls", Key="big", Body=b"z" * size)
        # Bigger than every socket buffer between the daemon and a reader that stopped reading.
        huge = 48 << 20
        s3.put_object(Bucket="dls", Key="huge", Body=b"h" * huge)
        request = b"GET /dls/big HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        finishing = socket.create_connection(("127.0.0.1", daemon.port), timeout=20)
        stalled = socket.create_connection(("127.0.0.1", daemon.port), timeout=20)
        stalled.sendall(request.replace(b"/big", b"/huge"))
        finishing.sendall(request)
        first = finishing.recv(65536)
        assert first.startswith(b"HTTP/1.1 200"), first[:200]
        stalled_head = stalled.recv(4096)
        assert stalled_head.startswith(b"HTTP/1.1 200")
        daemon.signal(signal.SIGTERM)
        # The reader that keeps reading gets every byte.
        rest = read_response_body(finishing, first, size)
        assert rest == size, rest
        finishing.close()
        # The one that does not read is cut off after the grace, and the process exits.
        status = daemon.wait(30)
        assert status in (0, -signal.SIGTERM), daemon.log_tail()
        received = len(stalled_head.partition(b"\r\n\r\n")[2])
        stalled.settimeout(10)
        cut = False
        while True:
            try:
                chunk = stalled.recv(1 << 20)
            except (ConnectionResetError, TimeoutError):
                cut = True
                break
            if not chunk:
                break
            received += len(chunk)
        stalled.close()
        assert cut or received < huge, received
        assert "cut off" in daemon.log_tail(100), daemon.log_tail()


def read_response_body(sock: socket.socket, first: bytes, size: int) -> int:
    """Body bytes received on a response whose first bytes are ``first``."""
    received = len(first.partition(b"\r\n\r\n")[2])
    while received < size:
        chunk = sock.recv(1 << 20)
        if not chunk:
            break
        received += len(chunk)
    return received


# -- a backend killed in the middle of transfers ----------------------------------------------


def _weed_bucket(weed: SeaweedFS, name: str) -> dict[str, Any]:
    bucket = unique_bucket_name("fault")
    weed.create_bucket(bucket)
    return weed.bucket_entry(name, bucket)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_seaweedfs_killed_during_get_and_put_then_restarted(tmp_path: Path) -> None:
    weed = SeaweedFS(str(tmp_path / "weed"))
    weed.start()
    try:
        weed_config = _weed_bucket(weed, "weed")
        config = {
            "buckets": [weed_config, {"name": "disk", "path": "d"}],
            "balancer": {
                "strategy": "round-robin",
                "health_check_period": "500ms",
                "probe_timeout": "1s",
                "unhealthy_threshold": 2,
                "healthy_threshold": 2,
            },
        }
        direct = weed.boto3_client()

        def on_weed() -> set[str]:
            listed = direct.list_objects_v2(Bucket=weed_config["bucket"])
            return set(without_write_ids([o["Key"] for o in listed.get("Contents", [])]))

        with DaemonProcess(tmp_path / "daemon", config) as daemon:
            s3 = client(daemon.endpoint)
            s3.create_bucket(Bucket="kill")
            size = 24 << 20
            for key in ("g1", "g2"):
                s3.put_object(Bucket="kill", Key=key, Body=b"g" * size)
            (weed_key,) = [k for k in ("g1", "g2") if f"kill/{k}" in on_weed()]

            # GET: the client reads a little, the backend dies, the client must see a cut.
            reader = socket.create_connection(("127.0.0.1", daemon.port), timeout=20)
            reader.sendall(b"GET /kill/%s HTTP/1.1\r\nHost: x\r\n\r\n" % weed_key.encode())
            head = reader.recv(65536)
            assert head.startswith(b"HTTP/1.1 200"), head[:200]
            weed.kill()
            answer = read_response(_Prefixed(reader, head))
            reader.close()
            assert answer.status == 200 and answer.cut, (len(answer.body), answer.headers)
            assert int(answer.headers["content-length"]) == size > len(answer.body)

            # PUT while the backend is dead and not yet known unhealthy, or once it is: the
            # client gets an error or the write lands on the disk; never a row without bytes.
            for i in range(4):
                s3.put_object(Bucket="kill", Key=f"after{i}", Body=b"a" * 1000)
            assert wait_until(lambda: not daemon.health()["backends"]["weed"]["healthy"], 10)
            for i in range(4):
                s3.put_object(Bucket="kill", Key=f"down{i}", Body=b"d" * 1000)
            weed.restart()
            assert wait_until(lambda: daemon.health()["backends"]["weed"]["healthy"], 20)
            for i in range(4):
                s3.put_object(Bucket="kill", Key=f"back{i}", Body=b"b" * 1000)
            assert {f"kill/back{i}" for i in range(4)} & on_weed(), "weed is used again"
            assert not {f"kill/down{i}" for i in range(4)} & on_weed()
        assert_process_left_nothing(daemon.config_path)
    finally:
        weed.kill()


class _Prefixed:
    """A socket whose first received bytes were already read (to reuse :func:`read_response`)."""

    def __init__(self, sock: socket.socket, prefix: bytes) -> None:
        self.sock = sock
        self.prefix = prefix

    def settimeout(self, value: float) -> None:
        self.sock.settimeout(value)

    def recv(self, size: int) -> bytes:
        if self.prefix:
            data, self.prefix = self.prefix, b""
            return data
        return self.sock.recv(size)


# -- helpers for the transfer faults below ----------------------------------------------------


def inflight(daemon: DaemonProcess, direction: str) -> float:
    """``s3_balance_inflight_transfers{direction=...}`` as the daemon reports it now."""
    pattern = rf'^s3_balance_inflight_transfers{{direction="{direction}"}} (\S+)$'
    match = re.search(pattern, daemon.metrics(), re.M)
    return float(match.group(1)) if match else 0.0


def backend_sockets(pid: int, port: int) -> dict[int, tuple[int, int]]:
    """The process's established TCP connections to ``port`` on loopback: inode to
    ``(tx_queue, rx_queue)`` (bytes not yet acknowledged by the peer, bytes not yet read)."""
    inodes = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[len("socket:[") : -1]))
    found = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            established = fields[3] == "01"
            inode = int(fields[9])
            if established and remote_port == port and inode in inodes:
                tx, rx = (int(v, 16) for v in fields[4].split(":"))
                found[inode] = (tx, rx)
    return found


def daemon_pid(daemon: DaemonProcess) -> int:
    assert daemon.process is not None
    return daemon.process.pid


def reset_close(sock: socket.socket) -> None:
    """Close with a TCP reset, as a client killed mid-transfer does."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def object_backends(data_dir: Path, key: str) -> list[str]:
    """Where the metadata (the daemon's SQLite file) says object ``key`` is: [] for no row."""
    (database,) = list(data_dir.glob("*.db"))
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        rows = db.execute(
            "SELECT l.backend FROM objects o JOIN object_locations l ON l.object_id = o.id "
            "WHERE o.key = ?",
            (key.encode(),),
        ).fetchall()
    return [row[0] for row in rows]


def head_status(s3: Any, bucket: str, key: str) -> int:
    try:
        s3.head_object(Bucket=bucket, Key=key)
    except botocore.exceptions.ClientError as error:
        return int(error.response["ResponseMetadata"]["HTTPStatusCode"])
    return 200


def listed_keys(s3: Any, bucket: str) -> set[str]:
    return {o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])}


def send_slowly(
    sock: socket.socket,
    total: int,
    chunk: int,
    pause: float,
    at: int | None = None,
    action: Any = None,
) -> int:
    """Send ``total`` bytes of body in ``chunk``s with ``pause`` between them; run ``action``
    once ``at`` bytes are out.  Stops at the first send error; the bytes sent."""
    sent = 0
    block = b"s" * chunk
    while sent < total:
        if at is not None and action is not None and sent >= at:
            action()
            action = None
        try:
            sock.sendall(block[: min(chunk, total - sent)])
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            break
        sent += min(chunk, total - sent)
        time.sleep(pause)
    return sent


# -- a backend killed during a large PUT's body -----------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_seaweedfs_killed_mid_put_body_leaves_nothing_and_comes_back(tmp_path: Path) -> None:
    weed = SeaweedFS(str(tmp_path / "weed"))
    weed.start()
    try:
        weed_config = _weed_bucket(weed, "weed")
        config = {
            # The disk is too small for the big object: it can only go to SeaweedFS.
            "buckets": [weed_config, {"name": "disk", "path": "d", "max_size": "4MiB"}],
            "balancer": {
                "strategy": "round-robin",
                "health_check_period": "500ms",
                "probe_timeout": "1s",
                "unhealthy_threshold": 2,
                "healthy_threshold": 2,
                "retry_delay": "100ms",
            },
        }
        direct = weed.boto3_client()

        def on_weed() -> set[str]:
            listed = direct.list_objects_v2(Bucket=weed_config["bucket"])
            return set(without_write_ids([o["Key"] for o in listed.get("Contents", [])]))

        with DaemonProcess(tmp_path / "daemon", config) as daemon:
            data_dir = Path(daemon.config["data_dir"])
            s3 = client(daemon.endpoint)
            s3.create_bucket(Bucket="midput")
            size = 64 << 20
            upload = socket.create_connection(("127.0.0.1", daemon.port), timeout=20)
            upload.sendall(
                b"PUT /midput/big HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size
            )
            # 1 MiB every 50 ms: the kill lands with a quarter of the body out.
            sent = send_slowly(upload, size, 1 << 20, 0.05, at=16 << 20, action=weed.kill)
            answer = read_response(upload)
            upload.close()
            assert sent >= 16 << 20
            # An S3 error document (5xx), or the connection cut: never a 200.
            assert answer.status == 0 or (500 <= answer.status < 600 and answer.s3_code), (
                answer.status,
                answer.body[:300],
            )
            assert b"Traceback" not in answer.body
            # No row, no visible object.
            assert object_backends(data_dir, "big") == []
            assert head_status(s3, "midput", "big") == 404
            assert "big" not in listed_keys(s3, "midput")

            # The next writes go to the disk, whether or not the daemon knows yet that SeaweedFS
            # is down (a refused connection is retried on the next choice).
            for i in range(4):
                s3.put_object(Bucket="midput", Key=f"next{i}", Body=b"n" * 1000)
                assert object_backends(data_dir, f"next{i}") == ["disk"]
            assert wait_until(lambda: not daemon.health()["backends"]["weed"]["healthy"], 10)

            weed.restart()
            assert wait_until(lambda: daemon.health()["backends"]["weed"]["healthy"], 20)
            # Used again: an object only SeaweedFS can hold, and small ones taking turns.
            s3.put_object(Bucket="midput", Key="again-big", Body=b"A" * (6 << 20))
            assert object_backends(data_dir, "again-big") == ["weed"]
            for i in range(2):
                s3.put_object(Bucket="midput", Key=f"again{i}", Body=b"a" * 1000)
            placed = {object_backends(data_dir, f"again{i}")[0] for i in range(2)}
            assert placed == {"weed", "disk"}, placed
            weed_keys = on_weed()
            assert "midput/again-big" in weed_keys
            assert "midput/big" not in weed_keys, weed_keys
            uploads = direct.list_multipart_uploads(Bucket=weed_config["bucket"])
            assert uploads.get("Uploads", []) == [], uploads
            assert s3.get_object(Bucket="midput", Key="again-big")["Body"].read() == (
                b"A" * (6 << 20)
            )
        assert_process_left_nothing(daemon.config_path)
    finally:
        weed.kill()


# -- a client that leaves mid-PUT or mid-GET --------------------------------------------------


def _shared_weed_config(tmp_path: Path) -> tuple[SeaweedFS, dict[str, Any]]:
    weed = shared_seaweedfs()
    weed_bucket = _weed_bucket(weed, "weed")
    config = {
        "buckets": [weed_bucket],
        "balancer": {"health_check_period": "1s", "probe_timeout": "1s"},
    }
    return weed, config


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_client_gone_mid_put_cancels_the_backend_upload(tmp_path: Path) -> None:
    weed, config = _shared_weed_config(tmp_path)
    real_bucket = config["buckets"][0]["bucket"]
    direct = weed.boto3_client()
    with DaemonProcess(tmp_path, config) as daemon:
        s3 = client(daemon.endpoint)
        s3.create_bucket(Bucket="leave")
        s3.put_object(Bucket="leave", Key="small", Body=b"s" * 100)
        size = 64 << 20
        upload = socket.create_connection(("127.0.0.1", daemon.port), timeout=20)
        upload.sendall(b"PUT /leave/big HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size)
        send_slowly(upload, 8 << 20, 1 << 20, 0.02)
        assert wait_until(lambda: inflight(daemon, "in") == 1, 10), daemon.metrics()
        # The daemon has a connection to SeaweedFS carrying the body (give it time to drain).
        time.sleep(0.5)
        during = backend_sockets(daemon_pid(daemon), weed.s3_port)
        assert during, "no connection to SeaweedFS during the upload"
        reset_close(upload)

        # The request ended: counted out, logged as a disconnect, its backend request cancelled
        # (the connection that carried half a body is closed, never returned to the pool).
        assert wait_until(lambda: inflight(daemon, "in") == 0, 10), daemon.metrics()
        line = "PUT /leave/big PutObject disconnected"
        assert wait_until(lambda: line in daemon.log_tail(200), 10), daemon.log_tail()
        assert wait_until(
            lambda: not set(during) <= set(backend_sockets(daemon_pid(daemon), weed.s3_port)), 10
        ), (during, backend_sockets(daemon_pid(daemon), weed.s3_port))
        # Nothing on SeaweedFS: no object, no multipart upload left open.
        listed = direct.list_objects_v2(Bucket=real_bucket).get("Contents", [])
        assert without_write_ids([o["Key"] for o in listed]) == ["leave/small"], listed
        uploads = direct.list_multipart_uploads(Bucket=real_bucket).get("Uploads", [])
        assert uploads == [], uploads
        assert head_status(s3, "leave", "big") == 404
        assert object_backends(Path(daemon.config["data_dir"]), "big") == []
        # And the daemon keeps serving.
        s3.put_object(Bucket="leave", Key="after", Body=b"a" * 1000)
        assert s3.get_object(Bucket="leave", Key="after")["Body"].read() == b"a" * 1000
    assert_process_left_nothing(daemon.config_path)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_client_gone_mid_get_stops_reading_from_the_backend(tmp_path: Path) -> None:
    weed, config = _shared_weed_config(tmp_path)
    with DaemonProcess(tmp_path, config) as daemon:
        s3 = client(daemon.endpoint)
        s3.create_bucket(Bucket="gone")
        size = 64 << 20
        s3.put_object(Bucket="gone", Key="big", Body=b"g" * size)
        reader = socket.create_connection(("127.0.0.1", daemon.port), timeout=20)
        reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
        reader.sendall(b"GET /gone/big HTTP/1.1\r\nHost: x\r\n\r\n")
        head = reader.recv(65536)
        assert head.startswith(b"HTTP/1.1 200"), head[:200]
        assert inflight(daemon, "out") == 1
        # The reader stops reading: backpressure leaves SeaweedFS's bytes waiting unread in the
        # daemon's socket (a receive queue), which identifies the connection carrying the body.
        pid = daemon_pid(daemon)

        def stalled_connections() -> set[int]:
            return {i for i, (_, rx) in backend_sockets(pid, weed.s3_port).items() if rx > 0}

        assert wait_until(lambda: bool(stalled_connections()), 10), backend_sockets(
            pid, weed.s3_port
        )
        carrying = stalled_connections()
        reset_close(reader)

        # The daemon stops: the transfer is counted out promptly and that connection is closed
        # (a connection with 60 MiB unread cannot be returned to the pool).
        assert wait_until(lambda: inflight(daemon, "out") == 0, 5), daemon.metrics()
        assert wait_until(lambda: not carrying & set(backend_sockets(pid, weed.s3_port)), 5), (
            carrying,
            backend_sockets(pid, weed.s3_port),
        )
        line = "GET /gone/big GetObject disconnected"
        assert wait_until(lambda: line in daemon.log_tail(200), 10), daemon.log_tail()
        # It keeps serving, the same object included.
        body = s3.get_object(Bucket="gone", Key="big")["Body"].read()
        assert len(body) == size and body == b"g" * size
        assert inflight(daemon, "out") == 0
    assert_process_left_nothing(daemon.config_path)


# -- the metadata database really restarted ---------------------------------------------------


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.timeout(150)
def test_postgres_server_restarted_under_traffic_then_recovery(tmp_path: Path) -> None:
    """On a private PostgreSQL server: the shared one must stay up for the other tests."""
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        unavailable("PostgreSQL's initdb and pg_ctl (/usr/lib/postgresql/*/bin) are not installed")
    server = PrivatePostgres(bin_dir)
    server.start()
    database = ServerDatabase(server.server_url)
    url = database.create()
    try:
        config = {
            "buckets": [{"name": "disk", "path": "d"}],
            "database": {"type": "postgres", "dsn": url},
        }
        with DaemonProcess(tmp_path, config) as daemon:
            s3 = client(daemon.endpoint)
            s3.create_bucket(Bucket="pgrestart")
            s3.put_object(Bucket="pgrestart", Key="before", Body=b"b" * 100)
            requests = {
                "get": b"GET /pgrestart/before HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                "put": b"PUT /pgrestart/during HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                b"Connection: close\r\n\r\nhello",
                "list": b"GET /pgrestart?list-type=2 HTTP/1.1\r\nHost: x\r\n"
                b"Connection: close\r\n\r\n",
            }
            during: list[tuple[str, int, str]] = []
            try:
                server.ctl("stop")
                # The window: the server is down for the few seconds these requests take.
                for name, request in requests.items():
                    answer = raw_request(daemon.port, request, limit=15)
                    during.append((name, answer.status, answer.s3_code or ""))
                    assert b"Traceback" not in answer.body
            finally:
                server.ctl("start")
            # Each answer is whole: a success, or a clean S3 5xx error document...
            for name, status, code in during:
                assert status == 200 or (500 <= status < 600 and code), (name, status, code)
            # ...and the window was real: some request met the stopped server, and was told to
            # retry later as S3 says it (503 ServiceUnavailable), not that we broke (500).
            assert any(status == 503 for _, status, _ in during), during
            assert all(code == "ServiceUnavailable" for _, s, code in during if s >= 500), during

            # Then a real restart while requests keep coming.
            results: list[tuple[int, str]] = []
            stop = threading.Event()

            def traffic() -> None:
                for _ in range(300):
                    if stop.is_set():
                        return
                    answer = raw_request(daemon.port, requests["get"], limit=15)
                    results.append((answer.status, answer.s3_code or ""))
                    time.sleep(0.02)

            worker = threading.Thread(target=traffic)
            worker.start()
            try:
                time.sleep(0.3)
                server.ctl("restart")
            finally:
                time.sleep(0.5)
                stop.set()
                worker.join(30)
            assert not worker.is_alive()
            assert results
            for status, code in results:
                assert status == 200 or (500 <= status < 600 and code), (status, code, results)

            # Recovery by itself: reads and writes work again, nothing needed from an operator.
            get_before = requests["get"]
            assert wait_until(lambda: raw_request(daemon.port, get_before).status == 200, 20)
            s3.put_object(Bucket="pgrestart", Key="after", Body=b"a" * 10)
            assert s3.get_object(Bucket="pgrestart", Key="after")["Body"].read() == b"a" * 10
            keys = listed_keys(s3, "pgrestart")
            assert {"before", "after"} <= keys, keys
            # A PUT answered with an error left no object; one answered 200 is there.
            put_status = next(status for name, status, _ in during if name == "put")
            assert ("during" in keys) == (put_status == 200), (put_status, keys)
        assert_process_left_nothing(daemon.config_path)
    finally:
        try:
            database.drop()
        finally:
            server.destroy()
