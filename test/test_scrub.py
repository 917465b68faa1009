"""Scrub: orphans and dangling rows found (and orphans removed) on real backends and databases."""

from __future__ import annotations

import dataclasses
import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer
from twisted.trial import unittest

from s3balance.multipart import MultipartUploads
from s3balance.scrub import comparable_key, scrub
from test.support import s3client, unique_bucket_name
from test.support.bodies import BytesBody
from test.support.daemon import DaemonTestCase, seaweed_buckets, without_write_ids
from test.support.process import DaemonProcess
from test.support.scrubbing import assert_nothing_left_behind, run_scrubcli
from test.support.seaweedfs import shared_seaweedfs


def test_comparable_key_survives_seaweedfs_normalisation() -> None:
    assert comparable_key("vb/a//b///c") == "vb/a/b/c"
    assert comparable_key("vb/./a/./b") == "vb/a/b"
    # Nothing else changes: ordinary keys, dots inside names, trailing slashes.
    assert comparable_key("vb/a.b/..c/d/") == "vb/a.b/..c/d/"


async def _plant(backend: Any, key: str, data: bytes) -> None:
    """Bytes put straight on a backend, behind the daemon's back (what a crash leaves)."""
    await backend.put_object(key, BytesBody(data), len(data), {}, {})


class ScrubUnderstandsRealKeys(DaemonTestCase, unittest.TestCase):  # type: ignore[misc]
    """Orphans name the write they came from; rows whose bytes differ are reported."""

    timeout = 60
    backend_names = ["r1"]

    async def test_orphans_name_their_key_and_mismatched_rows_are_reported(self) -> None:
        gateway = self.daemon.gateway
        backend = self.daemon.backends["r1"]
        record = await gateway.put_object("vb", "k", BytesBody(b"12345"), 5, {}, {})
        # An abandoned write of "k" and of a long key: what a killed daemon leaves.
        abandoned, _ = gateway.new_location("vb", "k")
        await _plant(backend, abandoned, b"half")
        long_key = "L" * 1020
        hashed, extra = gateway.new_location("vb", long_key)
        await backend.put_object(hashed, BytesBody(b"long"), 4, {}, extra)
        report = await scrub(self.daemon.store, self.daemon.backends, grace=0)
        found = {(o.key, o.bucket, o.virtual_key) for o in report.backends["r1"].orphans}
        self.assertEqual(found, {(abandoned, "vb", "k"), (hashed, "vb", long_key)})
        self.assertEqual(report.mismatch_count, 0)
        # The row's bytes replaced behind its back (what an in-place overwrite used to do).
        (location,) = record.locations
        await _plant(backend, location.real_key, b"other bytes")
        counted: list[tuple[str, str, int]] = []

        def count_request(name: str, operation: str, *, requests: int = 1) -> None:
            counted.append((name, operation, requests))

        report = await scrub(
            self.daemon.store, self.daemon.backends, True, grace=0, record_operation=count_request
        )
        # One listing page; a HEAD for the hashed orphan's key and one for the mismatch; the
        # orphans' deletes are free.
        self.assertEqual(
            sorted(counted),
            [("r1", "HeadObject", 1), ("r1", "HeadObject", 1), ("r1", "ListObjectsV2", 1)],
        )
        (mismatch,) = report.backends["r1"].mismatched
        self.assertEqual(
            (mismatch.key, mismatch.recorded_size, mismatch.stored_size),
            (location.real_key, 5, 11),
        )
        self.assertEqual(mismatch.recorded_etag, record.etag)
        self.assertFalse(report.clean)
        self.assertIn("mismatched " + location.real_key, report.summary())
        self.assertEqual(report.to_json()["mismatched"], 1)
        self.assertEqual(len(report.backends["r1"].removed), 2)  # the orphans, not the row


class ScrubOnLocalDirectories(DaemonTestCase, unittest.TestCase):  # type: ignore[misc]
    timeout = 60

    @defer.inlineCallbacks
    def test_clean_daemon_then_orphans_and_dangling_rows(self) -> Any:
        s3 = self.s3
        for i in range(4):
            yield self.call(s3.put_object, Bucket="vb", Key=f"k{i}", Body=b"x" * (10 + i))
        # A multipart upload in progress: its real key has no object yet, and that is fine.
        uploads = MultipartUploads(self.daemon.gateway)
        upload = yield defer.ensureDeferred(uploads.create("vb", "big", {}, {}))
        yield defer.ensureDeferred(
            uploads.upload_part("vb", "big", upload.upload_id, 1, BytesBody(b"p" * 100), 100)
        )
        report = yield defer.ensureDeferred(
            assert_nothing_left_behind(self.daemon.store, self.daemon.backends)
        )
        self.assertEqual(sum(b.listed for b in report.backends.values()), 4)

        # An orphan on r1, and k0's bytes deleted from wherever they are (a dangling row).
        r1, r2 = self.daemon.backends["r1"], self.daemon.backends["r2"]
        yield defer.ensureDeferred(_plant(r1, "vb/left-behind", b"o" * 1234))
        record = yield self.daemon.store.get_object("vb", "k0")
        (location,) = record.locations
        yield self.daemon.backends[location.backend].delete_object(location.real_key)

        # With the default grace, the fresh orphan is "recent": reported, not removable.
        report = yield scrub(self.daemon.store, self.daemon.backends, remove_orphans=True)
        self.assertEqual([o.key for o in report.backends["r1"].recent_orphans], ["vb/left-behind"])
        self.assertEqual(report.backends["r1"].orphans, [])
        self.assertEqual(report.backends["r1"].removed, [])
        self.assertEqual(report.backends[location.backend].dangling, [location.real_key])
        self.assertFalse(report.clean)
        self.assertEqual(report.to_json()["dangling"], 1)

        # Report only (grace 0): the orphan with its size, still on the backend.
        report = yield scrub(self.daemon.store, self.daemon.backends, grace=0)
        orphans = report.backends["r1"].orphans
        self.assertEqual([(o.key, o.size) for o in orphans], [("vb/left-behind", 1234)])
        self.assertEqual(report.backends["r1"].orphan_bytes, 1234)
        self.assertIn("vb/left-behind", (yield self.daemon.real_keys("r1")))

        # Removal deletes the orphan, never an object a row references.
        report = yield scrub(self.daemon.store, self.daemon.backends, True, grace=0)
        self.assertEqual([o.key for o in report.backends["r1"].removed], ["vb/left-behind"])
        keys = (yield self.daemon.real_keys("r1")) + (yield self.daemon.real_keys("r2"))
        self.assertEqual(without_write_ids(keys), ["vb/k1", "vb/k2", "vb/k3"])
        for i in (1, 2, 3):
            got = yield self.call(s3.get_object, Bucket="vb", Key=f"k{i}")
            self.assertEqual(got["Body"].read(), b"x" * (10 + i))
        # The dangling row stays reported until someone deletes or rewrites it.
        report = yield scrub(self.daemon.store, {"r1": r1, "r2": r2}, grace=0)
        self.assertEqual(report.dangling_count, 1)
        self.assertEqual(report.orphan_count, 0)
        yield self.call(s3.delete_object, Bucket="vb", Key="k0")
        yield defer.ensureDeferred(
            assert_nothing_left_behind(self.daemon.store, self.daemon.backends)
        )


class ScrubOnSeaweedFS(DaemonTestCase, unittest.TestCase):  # type: ignore[misc]
    """SeaweedFS collapses ``//`` in keys: the listing's spelling must not look like an orphan."""

    timeout = 60

    def real_bucket_configs(self, workdir: str) -> list[Any]:
        self.weed = shared_seaweedfs()
        names = [unique_bucket_name("scrub")]
        (config,) = seaweed_buckets(self.weed, names)
        self.backend_names = ["w"]
        return [dataclasses.replace(config, name="w", bucket=names[0])]

    @defer.inlineCallbacks
    def test_normalised_keys_are_neither_orphans_nor_dangling(self) -> Any:
        for key in ("plain", "a//b", "/leading"):
            yield self.call(self.s3.put_object, Bucket="vb", Key=key, Body=key.encode())
        report = yield defer.ensureDeferred(
            assert_nothing_left_behind(self.daemon.store, self.daemon.backends)
        )
        self.assertEqual(report.backends["w"].listed, 3)
        # A real orphan on SeaweedFS is still found and removed.
        weed_client = self.weed.boto3_client()
        bucket = self.daemon.config.real_buckets[0].real_name
        yield self.call(weed_client.put_object, Bucket=bucket, Key="vb/stray", Body=b"s" * 7)
        report = yield scrub(self.daemon.store, self.daemon.backends, True, grace=0)
        self.assertEqual([(o.key, o.size) for o in report.backends["w"].removed], [("vb/stray", 7)])
        yield defer.ensureDeferred(
            assert_nothing_left_behind(self.daemon.store, self.daemon.backends)
        )


def _client(endpoint: str, key: str = "any", secret: str = "any") -> Any:
    return s3client.boto3_client(endpoint, key, secret)


def _post_scrub(endpoint: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        f"{endpoint}/api/scrub",
        data=json.dumps(body).encode(),
        headers={"Authorization": "Bearer admin-token"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.mark.timeout(120)
def test_command_line_and_admin_endpoint_against_a_daemon_process(tmp_path: Path) -> None:
    """What an operator does: scrub the running daemon's data from the shell and over /api."""
    weed = shared_seaweedfs()
    bucket = unique_bucket_name("scrubcli")
    weed.create_bucket(bucket)
    config: dict[str, Any] = {
        "buckets": [
            weed.bucket_entry("weed", bucket),
            {"name": "vbk", "virtual": True},
        ],
        "api": {"enabled": True, "token": "admin-token"},
    }
    direct = weed.boto3_client()
    with DaemonProcess(tmp_path, config) as daemon:
        s3 = _client(daemon.endpoint)
        for i in range(3):
            s3.put_object(Bucket="vbk", Key=f"obj{i}", Body=b"d" * 100)
        done = run_scrubcli(daemon.config_path, "--json", "--grace", "0")
        assert done.returncode == 0, done.stdout + done.stderr
        report = json.loads(done.stdout)
        assert report["clean"] is True
        assert report["backends"]["weed"]["listed"] == 3

        direct.put_object(Bucket=bucket, Key="vbk/orphan", Body=b"o" * 55)
        listed = direct.list_objects_v2(Bucket=bucket)["Contents"]
        (obj1,) = [entry["Key"] for entry in listed if entry["Key"].startswith("vbk/obj1~w")]
        direct.delete_object(Bucket=bucket, Key=obj1)
        done = run_scrubcli(daemon.config_path, "--grace", "0")
        assert done.returncode == 1, done.stdout + done.stderr
        assert "orphan vbk/orphan (55 bytes)" in done.stdout
        assert f"dangling {obj1}" in done.stdout

        # The same over the admin API, with the grace period protecting a fresh orphan.
        status, answer = _post_scrub(daemon.endpoint, {"remove_orphans": True})
        assert status == 200, answer
        assert [o["key"] for o in answer["backends"]["weed"]["recent_orphans"]] == ["vbk/orphan"]
        assert answer["removed"] == 0
        status, answer = _post_scrub(
            daemon.endpoint, {"remove_orphans": True, "grace": 0, "backends": ["weed"]}
        )
        assert status == 200, answer
        assert answer["backends"]["weed"]["removed"] == [
            {
                "key": "vbk/orphan",
                "size": 55,
                "last_modified": pytest.approx(time.time(), abs=120),
                "bucket": "vbk",
                "virtual_key": "orphan",
            }
        ]
        assert answer["dangling"] == 1 and answer["clean"] is False
        keys = [o["Key"] for o in direct.list_objects_v2(Bucket=bucket).get("Contents", [])]
        assert without_write_ids(keys) == ["vbk/obj0", "vbk/obj2"]
        assert _post_scrub(daemon.endpoint, {"backends": ["nope"]})[0] == 404
        assert _post_scrub(daemon.endpoint, {"remove_orphans": "yes"})[0] == 400

        s3.delete_object(Bucket="vbk", Key="obj1")
        done = run_scrubcli(daemon.config_path, "--grace", "0")
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout.strip().endswith("clean")

    # A backend that cannot be listed makes the scrub itself fail: status 2.
    broken = dict(daemon.config)
    broken["buckets"] = [{**config["buckets"][0], "endpoint": "http://127.0.0.1:9"}] + [
        config["buckets"][1]
    ]
    daemon.write_config(broken)
    done = run_scrubcli(daemon.config_path, "--json")
    assert done.returncode == 2, done.stdout + done.stderr
    assert json.loads(done.stdout)["errors"]
    missing = run_scrubcli(tmp_path / "no-such.yaml")
    assert missing.returncode == 2 and "cannot read configuration" in missing.stderr
