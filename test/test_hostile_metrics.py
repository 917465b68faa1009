"""Request metrics stay bounded whatever bucket names anonymous clients send (issue 13, 2)."""

from __future__ import annotations

import http.client
import time
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from twisted.trial import unittest

from s3balance import metrics
from s3balance.config import Config
from s3balance.web.labels import OTHER_BUCKET
from test.support.daemon import DaemonTestCase, in_thread
from test.support.process import DaemonProcess

#: The issue's count, for the daemon process's memory: its 38 MiB leak came from this many.
UNKNOWN_NAMES = 10_000
#: In process, one series or one scrape line per unknown name is caught by the exact series
#: count and the 200-byte scrape bound whatever the count: a fifth of the issue's names suffice.
UNKNOWN_NAMES_IN_PROCESS = 2_000


def operation_series() -> int:
    return len(metrics.S3_OPERATIONS._metrics)


def send_unsigned(port: int, paths: list[str], deadline_seconds: float) -> list[int]:
    """One keep-alive connection, one unsigned GET per path; returns the statuses."""
    statuses: list[int] = []
    deadline = time.monotonic() + deadline_seconds
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        for path in paths:
            if time.monotonic() > deadline:
                break
            connection.request("GET", path)
            response = connection.getresponse()
            response.read()
            statuses.append(response.status)
    finally:
        connection.close()
    return statuses


class BucketLabelTests(DaemonTestCase, unittest.TestCase):
    timeout = 240

    def configure(self, config: Config) -> None:
        config.s3api.auth_required = True
        config.s3api.access_key = "MAINKEY"
        config.s3api.secret_key = "main-secret"

    async def test_unknown_bucket_names_add_no_series(self) -> None:

        port = self.daemon.port_number
        # Warm up: the label set is loaded and the fixed labels exist.
        await in_thread(send_unsigned, port, ["/vb/k", "/warm-up-a/k", "/"], 30)
        await self.daemon.resource.bucket_labels.ready()
        series_before = operation_series()
        scrape_before = len(generate_latest(metrics.REGISTRY))
        paths = [f"/unknown-{index:05d}/key" for index in range(UNKNOWN_NAMES_IN_PROCESS)]
        paths[0] = "/nul%00bucket/key"
        statuses = await in_thread(send_unsigned, port, paths, 180)
        self.assertEqual(len(statuses), UNKNOWN_NAMES_IN_PROCESS)
        self.assertEqual(set(statuses), {403})
        self.assertEqual(operation_series(), series_before)
        # The scrape does not grow with the names (a counter's digits may).
        self.assertLess(len(generate_latest(metrics.REGISTRY)) - scrape_before, 200)
        labels = {labelvalues[1] for labelvalues in metrics.S3_OPERATIONS._metrics}
        self.assertIn(OTHER_BUCKET, labels)
        self.assertFalse([label for label in labels if "unknown-" in label or "\0" in label])

    async def test_known_and_created_buckets_keep_their_own_label(self) -> None:

        import boto3

        s3 = boto3.client(
            "s3",
            endpoint_url=self.daemon.endpoint,
            aws_access_key_id="MAINKEY",
            aws_secret_access_key="main-secret",
            region_name="us-east-1",
        )
        await in_thread(s3.put_object, Bucket="vb", Key="k", Body=b"x")
        await in_thread(s3.create_bucket, Bucket="made-here")
        await in_thread(s3.put_object, Bucket="made-here", Key="k", Body=b"y")
        labels = {labelvalues[1] for labelvalues in metrics.S3_OPERATIONS._metrics}
        self.assertIn("vb", labels)
        self.assertIn("made-here", labels)
        await in_thread(s3.delete_object, Bucket="made-here", Key="k")
        await in_thread(s3.delete_bucket, Bucket="made-here")
        labels = {labelvalues[1] for labelvalues in metrics.S3_OPERATIONS._metrics}
        self.assertNotIn("made-here", labels)


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.slow
def test_daemon_process_memory_and_scrape_stay_flat(tmp_path: Path) -> None:
    """The issue's measurement on the real daemon: unsigned requests to thousands of bucket
    names grew RSS by 38 MiB and the scrape to 65 MB."""
    config = {
        "buckets": [{"name": "disk-1", "path": "b1"}],
        "s3api": {"auth_required": True, "access_key": "MAINKEY", "secret_key": "main-secret"},
    }
    with DaemonProcess(tmp_path, config) as daemon:
        assert daemon.process is not None
        port = daemon.port
        # Warm up: every code path and the fixed labels exist, the allocator has its arenas.
        send_unsigned(port, [f"/warm-{index}/k" for index in range(2000)], 120)
        rss_before = rss_bytes(daemon.process.pid)
        scrape_before = len(daemon.metrics())
        statuses = send_unsigned(port, [f"/name-{index:05d}/k" for index in range(UNKNOWN_NAMES)],
                                 240)  # fmt: skip
        assert len(statuses) == UNKNOWN_NAMES and set(statuses) == {403}
        rss_growth = rss_bytes(daemon.process.pid) - rss_before
        scrape_growth = len(daemon.metrics()) - scrape_before
        daemon.stop()
    assert scrape_growth < 2000, scrape_growth
    assert rss_growth < 8 << 20, rss_growth
