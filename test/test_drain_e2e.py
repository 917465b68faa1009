"""Drain end to end: ``twistd s3balance`` processes over SeaweedFS buckets, boto3 in front.

A backend holding a few hundred objects (small ones, multipart ones, all with metadata, and an
upload in progress) is drained while a client reads, overwrites and deletes; the daemon is killed
(SIGKILL) mid-drain and restarted, and the job resumes from its cursor and finishes.  At the end
the backend is empty, every object reads back byte-exact with its metadata, nothing deleted came
back, scrub is clean, and ``GET /api/buckets/{name}`` says the backend can be removed.  Pause and
cancel (from the command line and the API) take effect; with two daemons on PostgreSQL the job
runs once.
"""

from __future__ import annotations

import json
import random
import signal
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from test.dbfixture import POSTGRES_SERVER, ServerDatabase
from test.support import s3client, unavailable, unique_bucket_name
from test.support.process import DaemonProcess
from test.support.scrubbing import run_module, run_scrubcli
from test.support.seaweedfs import seaweed_or_skip

pytestmark = [pytest.mark.slow]

TOKEN = "drain-token"
BACKENDS = ("wa", "wb", "wc")
PART = 5 << 20


def api(endpoint: str, method: str, path: str) -> tuple[int, Any]:
    request = urllib.request.Request(
        f"{endpoint}/api{path}", headers={"Authorization": f"Bearer {TOKEN}"}, method=method,
        data=b"{}" if method == "POST" else None,
    )  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def wait_for(what: str, check: Any, seconds: float) -> Any:
    """``check()`` once it is truthy (polled every 0.1 s, at most ``seconds``)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {seconds}s")


def job(endpoint: str, job_id: int) -> dict[str, Any]:
    status, document = api(endpoint, "GET", f"/jobs/{job_id}")
    assert status == 200, document
    return document


def daemon_config(weed: Any, buckets: dict[str, str], **jobs: Any) -> dict[str, Any]:
    return {
        "buckets": [weed.bucket_entry(name, real) for name, real in buckets.items()]
        + [{"name": "files", "virtual": True}, {"name": "twice", "virtual": True, "replicas": 2}],
        "balancer": {"strategy": "round-robin"},
        "api": {"enabled": True, "token": TOKEN},
        "server": {"delete_grace": 1},
        "jobs": {"lease": 3, "poll_interval": 0.5, **jobs},
    }


def body(key: str, size: int) -> bytes:
    return random.Random(key).randbytes(size)


class Client:
    """What the test wrote, kept up to date as it overwrites and deletes."""

    def __init__(self, endpoint: str) -> None:
        self.s3 = s3client.boto3_client(
            endpoint, "any", "any", request_checksum_calculation="when_required"
        )
        self.expected: dict[tuple[str, str], bytes] = {}
        self.deleted: set[tuple[str, str]] = set()

    def put(self, bucket: str, key: str, data: bytes) -> None:
        self.s3.put_object(Bucket=bucket, Key=key, Body=data, Metadata={"origin": key},
                           ContentType="application/x-test")  # fmt: skip
        self.expected[(bucket, key)] = data
        self.deleted.discard((bucket, key))

    def put_multipart(self, bucket: str, key: str, data: bytes) -> None:
        upload = self.s3.create_multipart_upload(
            Bucket=bucket, Key=key, Metadata={"origin": key}, ContentType="application/x-test"
        )["UploadId"]
        parts = []
        for number, start in enumerate(range(0, len(data), PART), 1):
            answer = self.s3.upload_part(Bucket=bucket, Key=key, UploadId=upload,
                                         PartNumber=number, Body=data[start : start + PART])
            parts.append({"PartNumber": number, "ETag": answer["ETag"]})  # fmt: skip
        self.s3.complete_multipart_upload(
            Bucket=bucket, Key=key, UploadId=upload, MultipartUpload={"Parts": parts}
        )
        self.expected[(bucket, key)] = data

    def delete(self, bucket: str, key: str) -> None:
        self.s3.delete_object(Bucket=bucket, Key=key)
        self.expected.pop((bucket, key), None)
        self.deleted.add((bucket, key))

    def check_all(self) -> None:
        for (bucket, key), data in sorted(self.expected.items()):
            answer = self.s3.get_object(Bucket=bucket, Key=key)
            assert answer["Body"].read() == data, (bucket, key)
            assert answer["Metadata"] == {"origin": key}, (bucket, key, answer["Metadata"])
            assert answer["ContentType"] == "application/x-test"
        for bucket, key in sorted(self.deleted):
            with pytest.raises(self.s3.exceptions.NoSuchKey):
                self.s3.get_object(Bucket=bucket, Key=key)


def real_keys(weed: Any, real: str) -> list[str]:
    listed = weed.boto3_client().list_objects_v2(Bucket=real).get("Contents", [])
    return [entry["Key"] for entry in listed]


def upload_backend(daemon: DaemonProcess, key: str) -> str:
    """The backend an upload in progress was placed on (from the daemon's SQLite file)."""
    path = Path(daemon.config["data_dir"]) / "s3balance.db"
    with sqlite3.connect(path) as connection:
        (backend,) = connection.execute(
            "SELECT backend FROM multipart_uploads WHERE key = ?", (key.encode(),)
        ).fetchone()
    return str(backend)


@pytest.mark.timeout(240)
def test_drain_under_traffic_survives_a_kill_and_leaves_the_backend_empty(tmp_path: Path) -> None:
    weed = seaweed_or_skip()
    buckets = {name: unique_bucket_name(f"drain-{name}") for name in BACKENDS}
    for real in buckets.values():
        weed.create_bucket(real)
    # Slow enough to be killed mid-way and to overlap the client's traffic.
    config = daemon_config(weed, buckets, max_bytes_per_second=1_500_000, max_concurrency=2)
    daemon = DaemonProcess(tmp_path, config)
    daemon.start()
    try:
        client = Client(daemon.endpoint)
        for index in range(270):
            client.put("files", f"small/{index:03d}", body(f"s{index}", 200 + index * 37))
        for index in range(30):
            client.put("twice", f"pair/{index:02d}", body(f"p{index}", 1000 + index))
        for index in range(3):
            client.put_multipart("files", f"big/{index}", body(f"b{index}", PART + 12345))
        # An upload in progress: it finishes on its backend, which is the one drained.
        s3 = client.s3
        upload = s3.create_multipart_upload(
            Bucket="files", Key="inflight", Metadata={"origin": "inflight"},
            ContentType="application/x-test",
        )["UploadId"]  # fmt: skip
        inflight = body("inflight", PART + 999)
        first = s3.upload_part(Bucket="files", Key="inflight", UploadId=upload, PartNumber=1,
                               Body=inflight[:PART])  # fmt: skip
        drained = upload_backend(daemon, "inflight")
        held_before = len(real_keys(weed, buckets[drained]))
        assert held_before > 90

        status, answer = api(daemon.endpoint, "POST", f"/buckets/{drained}/drain")
        assert status == 200, answer
        job_id = answer["job"]["id"]
        assert answer["bucket"]["draining"] is True and answer["bucket"]["removable"] is False

        # Traffic while it drains: reads, overwrites (new bytes must land elsewhere), deletes.
        errors: list[str] = []
        traffic_client = Client(daemon.endpoint)
        traffic_client.expected, traffic_client.deleted = client.expected, client.deleted
        stop = threading.Event()

        def traffic() -> None:
            rng = random.Random(7)
            for round_ in range(60):
                if stop.is_set():
                    return
                index = rng.randrange(270)
                key = f"small/{index:03d}"
                try:
                    if round_ % 3 == 0:
                        traffic_client.put("files", key, body(f"again{round_}", 300 + round_))
                    elif round_ % 3 == 1:
                        traffic_client.delete("files", key)
                    elif ("files", key) in traffic_client.expected:
                        data = traffic_client.s3.get_object(Bucket="files", Key=key)["Body"].read()
                        if data != traffic_client.expected[("files", key)]:
                            errors.append(f"read of {key} differs")
                except Exception as error:  # the daemon is being killed: that one may fail
                    if not stop.is_set():
                        errors.append(f"{key}: {error}")
                time.sleep(0.02)

        worker = threading.Thread(target=traffic)
        worker.start()
        worker.join(60)
        assert not errors, errors
        second = s3.upload_part(Bucket="files", Key="inflight", UploadId=upload, PartNumber=2,
                                Body=inflight[PART:])  # fmt: skip
        s3.complete_multipart_upload(
            Bucket="files", Key="inflight", UploadId=upload,
            MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": first["ETag"]},
                                       {"PartNumber": 2, "ETag": second["ETag"]}]},
        )  # fmt: skip
        client.expected[("files", "inflight")] = inflight

        # Kill the daemon mid-drain (SIGKILL: no shutdown, the claim is left to expire).
        progress = wait_for(
            "the drain to move objects",
            lambda: (doc := job(daemon.endpoint, job_id))["objects_done"] > 0 and doc,
            30,
        )
        assert progress["state"] == "running", progress
        daemon.signal(signal.SIGKILL)
        daemon.wait(10)
        daemon.stop()
        daemon.start()
        resumed = job(daemon.endpoint, job_id)
        assert resumed["objects_done"] >= progress["objects_done"]

        done = wait_for(
            "the drain to finish",
            lambda: (doc := job(daemon.endpoint, job_id))["state"] in ("done", "failed") and doc,
            120,
        )
        assert done["state"] == "done", done
        log = daemon.log_path.read_text()
        assert log.count(f"job {job_id}: drain {drained} starts here") == 2, "not resumed once"

        status, bucket = api(daemon.endpoint, "GET", f"/buckets/{drained}")
        assert status == 200
        assert (bucket["removable"], bucket["held_objects"], bucket["drain_state"]) == (
            True, 0, "done"
        ), bucket  # fmt: skip
        assert real_keys(weed, buckets[drained]) == []
        client.check_all()
        scrubbed = run_scrubcli(daemon.config_path, "--grace", "0")
        assert scrubbed.returncode == 0, scrubbed.stdout + scrubbed.stderr

        # New writes avoid it; the command line shows the job.
        client.put("files", "after", b"written after the drain")
        assert real_keys(weed, buckets[drained]) == []
        listed = run_module("s3balance", daemon.config_path, "jobs", "--json", "list")
        assert listed.returncode == 0, listed.stderr
        (shown,) = [j for j in json.loads(listed.stdout)["jobs"] if j["id"] == job_id]
        assert shown["state"] == "done"
        # Given back (the backend stays in the configuration): the done job stays done.
        undone = run_module("s3balance", daemon.config_path, "drain", "--undo", "--json", drained)
        assert (undone.returncode, json.loads(undone.stdout)["state"]) == (0, "done"), undone
        status, bucket = api(daemon.endpoint, "GET", f"/buckets/{drained}")
        assert (bucket["draining"], bucket["removable"]) == (False, False), bucket
    finally:
        daemon.stop()


@pytest.mark.timeout(180)
def test_pause_and_cancel_from_the_command_line_and_the_api(tmp_path: Path) -> None:
    weed = seaweed_or_skip()
    buckets = {name: unique_bucket_name(f"pause-{name}") for name in BACKENDS}
    for real in buckets.values():
        weed.create_bucket(real)
    config = daemon_config(weed, buckets, max_bytes_per_second=4_000, max_concurrency=1)
    with DaemonProcess(tmp_path, config) as daemon:
        client = Client(daemon.endpoint)
        for index in range(60):
            client.put("files", f"k{index:02d}", body(f"k{index}", 2000))
        drained = run_module("s3balance", daemon.config_path, "drain", "wa", "--json")
        assert drained.returncode == 0, drained.stderr
        job_id = json.loads(drained.stdout)["id"]
        wait_for("the job to run", lambda: job(daemon.endpoint, job_id)["objects_done"] > 0, 30)
        paused = run_module("s3balance", daemon.config_path, "jobs", "pause", str(job_id))
        assert paused.returncode == 0, paused.stderr
        # The daemon sees it at its next heartbeat (1 s with a 3 s lease) and stops.
        stopped = wait_for(
            "the job to let go",
            lambda: (doc := job(daemon.endpoint, job_id))["owner"] is None and doc,
            10,
        )
        assert stopped["state"] == "paused"
        time.sleep(1.5)
        assert job(daemon.endpoint, job_id)["objects_done"] == stopped["objects_done"]
        assert run_module("s3balance", daemon.config_path, "jobs", "pause",
                          str(job_id)).returncode == 1  # fmt: skip
        status, resumed = api(daemon.endpoint, "POST", f"/jobs/{job_id}/resume")
        assert (status, resumed["state"]) == (200, "queued")
        wait_for(
            "the job to move on",
            lambda: job(daemon.endpoint, job_id)["objects_done"] > stopped["objects_done"],
            15,
        )
        status, cancelled = api(daemon.endpoint, "POST", f"/jobs/{job_id}/cancel")
        assert (status, cancelled["state"]) == (200, "cancelled")
        status, bucket = api(daemon.endpoint, "GET", "/buckets/wa")
        assert (bucket["draining"], bucket["removable"]) == (False, False)
        assert bucket["held_objects"] > 0
        # wa takes writes again: with round-robin, one of three new objects goes there.
        before = set(real_keys(weed, buckets["wa"]))
        for index in range(3):
            client.put("files", f"new{index}", b"n" * 10)
        assert set(real_keys(weed, buckets["wa"])) - before
        client.check_all()
        assert api(daemon.endpoint, "POST", f"/jobs/{job_id}/resume")[0] == 409
        assert api(daemon.endpoint, "POST", "/jobs/999999/pause")[0] == 404
        assert api(daemon.endpoint, "POST", "/buckets/files/drain")[0] == 409
        assert api(daemon.endpoint, "POST", "/buckets/nope/drain")[0] == 404


@pytest.mark.postgres
@pytest.mark.timeout(180)
def test_two_daemons_on_postgres_run_the_job_once(tmp_path: Path) -> None:
    weed = seaweed_or_skip()
    database = ServerDatabase(POSTGRES_SERVER)
    reason = database.unreachable_reason()
    if reason:
        unavailable(reason)
    url = database.create()
    buckets = {name: unique_bucket_name(f"two-{name}") for name in BACKENDS}
    for real in buckets.values():
        weed.create_bucket(real)
    config = daemon_config(weed, buckets, max_bytes_per_second=200_000)
    config["database"] = {"type": "postgres", "dsn": url}
    first = DaemonProcess(tmp_path / "one", config)
    second = DaemonProcess(tmp_path / "two", config)
    try:
        first.start()
        second.start()
        client = Client(first.endpoint)
        other = Client(second.endpoint)
        for index in range(90):
            client.put("files", f"k{index:02d}", body(f"k{index}", 3000))
        status, answer = api(first.endpoint, "POST", "/buckets/wb/drain")
        assert status == 200, answer
        job_id = answer["job"]["id"]
        # The other daemon stops placing there within a flush period (5 s).
        time.sleep(6)
        before = set(real_keys(weed, buckets["wb"]))
        for index in range(6):
            other.put("files", f"via-two-{index}", b"x" * 100)
            other.expected.pop(("files", f"via-two-{index}"))
            client.expected[("files", f"via-two-{index}")] = b"x" * 100
        assert not {k for k in real_keys(weed, buckets["wb"]) if "via-two" in k} - before
        done = wait_for(
            "the drain to finish",
            lambda: (doc := job(second.endpoint, job_id))["state"] in ("done", "failed") and doc,
            90,
        )
        assert done["state"] == "done", done
        starts = [
            process.log_path.read_text().count(f"job {job_id}: drain wb starts here")
            for process in (first, second)
        ]
        assert sorted(starts) == [0, 1], starts
        assert real_keys(weed, buckets["wb"]) == []
        client.check_all()
    finally:
        first.stop()
        second.stop()
        database.drop()
