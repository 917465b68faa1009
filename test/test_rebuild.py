"""Rebuilding the index from the backends, and importing foreign objects, as an operator does:
a daemon process writes through boto3, the database is lost, ``python -m s3balance rebuild``
brings it back, and every object reads back as it was written."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from twisted.internet import reactor
from twisted.trial import unittest

from s3balance.db import model
from s3balance.rebuild import Checkpoint, Rebuilder
from s3balance.rebuildmeta import (
    METADATA_LIMIT,
    key_may_be_normalised,
    metadata_size,
    read_reserved,
    reserved_metadata,
)
from test import dbfixture
from test.dbfixture import POSTGRES_SERVER, ServerDatabase
from test.support import s3client, unique_bucket_name
from test.support.daemon import DaemonTestCase, in_thread
from test.support.process import DaemonProcess
from test.support.scrubbing import run_module
from test.support.seaweedfs import shared_seaweedfs

MIB = 1024 * 1024
#: Longer than fits in a real key with its bucket and write id: written in the hashed form.
LONG_KEY = "long/" + "k" * 1015


def test_reserved_metadata_round_trips_what_the_backend_does_not_keep() -> None:
    headers = {"content-type": "text/plain", "x-amz-server-side-encryption": "AES256"}
    client = {"colour": "blue"}
    reserved = reserved_metadata(
        "a//b", headers, client, {"team": "a b&c", "x": ""}, "public-read",
        lambda: {"x-amz-checksum-crc32": "AAAA+w==", "x-amz-checksum-type": "FULL_OBJECT"},
    )
    assert all(value.isascii() and " " not in value for value in reserved.values())
    hints = read_reserved({**client, **reserved})
    assert hints.key == "a//b" and hints.metadata == client
    assert hints.headers == {"x-amz-server-side-encryption": "AES256"}
    assert hints.acl == "public-read"
    assert hints.tags == {"team": "a b&c", "x": ""}
    assert hints.checksums == {"x-amz-checksum-crc32": "AAAA+w==",
                               "x-amz-checksum-type": "FULL_OBJECT"}
    # A plain write needs nothing reserved: the backend keeps all of it.
    assert reserved_metadata("k", {"content-type": "x/y"}, client) == {}


def test_reserved_metadata_stays_within_the_2_kib_limit() -> None:
    client = {"big": "v" * (METADATA_LIMIT - 60)}
    reserved = reserved_metadata("k", {}, client, {"tag": "t" * 100}, "public-read")
    assert reserved == {"s3balance-acl": "public-read"}  # the tags did not fit, the ACL did
    assert metadata_size({**client, **reserved}) <= METADATA_LIMIT


def test_keys_a_service_may_normalise() -> None:
    assert key_may_be_normalised("a//b") and key_may_be_normalised("/a")
    assert key_may_be_normalised("./a") and key_may_be_normalised("a/./b")
    assert not key_may_be_normalised("a/b/") and not key_may_be_normalised("a.b/..c")


def run_cli(config_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m s3balance <args> --config FILE``, as an operator runs it."""
    return run_module("s3balance", config_path, *args, timeout=120.0)


def _client(endpoint: str) -> Any:
    return s3client.boto3_client(endpoint, "any", "any")


def _weed_bucket(weed: Any, prefix: str) -> tuple[str, dict[str, Any]]:
    bucket = unique_bucket_name(prefix)
    weed.create_bucket(bucket)
    return bucket, {
        "name": "weed",
        "bucket": bucket,
        "endpoint": weed.endpoint,
        "region": weed.region,
        "access_key_id": weed.access_key,
        "secret_access_key": weed.secret_key,
        "path_style": True,
    }


def _write_objects(s3: Any) -> None:
    """Objects of every kind the index must be able to restore."""
    s3.create_bucket(Bucket="vbc")  # a bucket made through the API, not the configuration
    s3.put_object(Bucket="vba", Key="plain.txt", Body=b"plain body", ContentType="text/plain",
                  Metadata={"colour": "blue", "owner": "ann"})
    s3.put_object(Bucket="vba", Key="dir/nested.bin", Body=os.urandom(3000),
                  CacheControl="max-age=60", ContentDisposition="attachment")
    s3.put_object(Bucket="vba", Key="declared-checksum", Body=b"sha256 sent in a header",
                  ChecksumSHA256=base64.b64encode(hashlib.sha256(
                      b"sha256 sent in a header").digest()).decode())
    s3.put_object(Bucket="vbb", Key="overwritten", Body=b"first version")
    s3.put_object(Bucket="vbb", Key="overwritten", Body=b"second, newer version",
                  Metadata={"version": "2"})
    # Round-robin: of two writes in a row, one goes to each backend.
    for bucket in ("vba", "vbb"):
        s3.put_object(Bucket=bucket, Key=LONG_KEY, Body=b"long key body", ContentType="x/long",
                      Metadata={"long": "yes"})
    for bucket in ("vba", "vbb"):
        s3.put_object(Bucket=bucket, Key="a//double//slash", Body=b"SeaweedFS lists it as a/")
    s3.put_object(Bucket="vbc", Key="tagged", Body=b"tagged body", Tagging="team=blue&x=1",
                  ACL="public-read")
    s3.copy_object(Bucket="vbc", Key="copied", CopySource={"Bucket": "vba", "Key": "plain.txt"})
    upload = s3.create_multipart_upload(Bucket="vba", Key="multi", ContentType="video/mp4",
                                        Metadata={"parts": "two"})
    parts = []
    for number, body in ((1, b"a" * (5 * MIB)), (2, b"b" * MIB)):
        answer = s3.upload_part(Bucket="vba", Key="multi", UploadId=upload["UploadId"],
                                PartNumber=number, Body=body)
        parts.append({"PartNumber": number, "ETag": answer["ETag"]})
    s3.complete_multipart_upload(Bucket="vba", Key="multi", UploadId=upload["UploadId"],
                                 MultipartUpload={"Parts": parts})
    for index in range(6):
        s3.put_object(Bucket="vbb", Key=f"many/{index}", Body=f"object {index}".encode())


def _snapshot(s3: Any) -> dict[str, Any]:
    """What clients see: per bucket, each listing entry, HEAD, body, tags and ACL."""
    seen: dict[str, Any] = {"buckets": sorted(b["Name"] for b in s3.list_buckets()["Buckets"])}
    for bucket in seen["buckets"]:
        listed = s3.list_objects_v2(Bucket=bucket).get("Contents", [])
        for entry in listed:
            key = entry["Key"]
            head = s3.head_object(Bucket=bucket, Key=key)
            seen[f"{bucket}/{key}"] = {
                "list": (entry["Size"], entry["ETag"]),
                "list_time": entry["LastModified"].timestamp(),
                "head": (head["ContentLength"], head["ETag"], head["ContentType"],
                         head["Metadata"], head.get("CacheControl"),
                         head.get("ContentDisposition")),
                "body": s3.get_object(Bucket=bucket, Key=key)["Body"].read(),
                "checksum": {name: value for name, value in s3.head_object(
                    Bucket=bucket, Key=key, ChecksumMode="ENABLED").items()
                    if name.startswith("Checksum")},
                "tags": s3.get_object_tagging(Bucket=bucket, Key=key)["TagSet"],
                "acl": [g["Permission"] for g in
                        s3.get_object_acl(Bucket=bucket, Key=key)["Grants"]],
            }
    return seen


def _assert_same(before: dict[str, Any], after: dict[str, Any]) -> None:
    assert sorted(after) == sorted(before)
    for name, seen in before.items():
        if name == "buckets":
            assert after[name] == seen
            continue
        restored = after[name]
        for aspect in ("list", "head", "body", "tags", "acl", "checksum"):
            assert restored[aspect] == seen[aspect], (name, aspect)
        # The time the row was committed is not kept: the backend's own is close to it.
        assert restored["list_time"] == pytest.approx(seen["list_time"], abs=5), name


def _usage(url: str) -> dict[str, tuple[int, int]]:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as connection:
            rows = connection.execute(sa.select(model.backend_usage)).all()
    finally:
        engine.dispose()
    return {row.backend: (row.used_bytes, row.object_count) for row in rows if row.object_count}


def _drop_everything(url: str) -> None:
    """The database lost: every table gone (a rebuild must recreate the schema too)."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        model.metadata.drop_all(engine)
        with engine.begin() as connection:
            connection.exec_driver_sql("DROP TABLE IF EXISTS alembic_version")
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def database(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[dict[str, Any], str]]:
    """The daemon's ``database`` section and a SQLAlchemy URL to the same database."""
    if request.param == "sqlite":
        path = tmp_path / "index.db"
        yield {"type": "sqlite", "dsn": str(path)}, f"sqlite:///{path}"
        return
    server = ServerDatabase(POSTGRES_SERVER)
    reason = server.unreachable_reason()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    url = server.create()
    try:
        yield {"type": "postgres", "dsn": url}, url
    finally:
        server.drop()


@pytest.mark.timeout(300)
def test_rebuild_restores_every_object_after_the_database_is_lost(
    tmp_path: Path, database: tuple[dict[str, Any], str]
) -> None:
    section, url = database
    weed = shared_seaweedfs()
    bucket, weed_config = _weed_bucket(weed, "rebuild")
    config: dict[str, Any] = {
        "buckets": [
            weed_config,
            {"name": "disk", "path": str(tmp_path / "disk")},
            {"name": "vba", "virtual": True},
            {"name": "vbb", "virtual": True},
        ],
        "balancer": {"strategy": "round-robin"},
        "database": section,
    }
    daemon = DaemonProcess(tmp_path / "daemon", config)
    with daemon:
        s3 = _client(daemon.endpoint)
        _write_objects(s3)
        before = _snapshot(s3)
    assert before["vba/declared-checksum"]["checksum"]["ChecksumSHA256"]
    usage_before = _usage(url)
    assert set(usage_before) == {"weed", "disk"}  # both backends hold objects
    on_weed = [o["Key"] for o in weed.boto3_client().list_objects_v2(Bucket=bucket)["Contents"]]
    assert any("/~s3balance-hashed/" in key for key in on_weed)
    assert any("a/double/slash~w" in key for key in on_weed)  # normalised in the listing

    # On the index the daemon wrote, a rebuild finds every write indexed already (the listing
    # gives some real keys normalised: the write id says they are the same).
    untouched = run_cli(daemon.config_path, "rebuild", "--json")
    assert untouched.returncode == 0, untouched.stdout + untouched.stderr
    counts = json.loads(untouched.stdout)["backends"].values()
    assert sum(b["present"] for b in counts) == len(before) - 1
    assert sum(b["adopted"] + len(b["failed"]) for b in counts) == 0
    assert _usage(url) == usage_before

    _drop_everything(url)
    done = run_cli(daemon.config_path, "rebuild", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    adopted = sum(b["adopted"] for b in report["backends"].values())
    assert adopted == len(before) - 1  # every object (the "buckets" entry is not one)
    # The first version of the overwritten key is gone already on SQLite (no delete grace),
    # kept for the grace period on PostgreSQL: then it is superseded, not adopted.
    superseded = [key for b in report["backends"].values() for key in b["superseded_keys"]]
    assert all(key.startswith("vbb/overwritten~w") for key in superseded), superseded
    assert len(superseded) == (0 if section["type"] == "sqlite" else 1)
    assert report["buckets_created"] == ["vbc"]
    assert not Path(daemon.config["data_dir"], "rebuild-checkpoint.json").exists()
    assert _usage(url) == usage_before

    with daemon:
        _assert_same(before, _snapshot(_client(daemon.endpoint)))

    # Twice is once: the second run finds every write indexed already.
    again = run_cli(daemon.config_path, "rebuild", "--json", "--recompute-usage")
    assert again.returncode == 0, again.stdout + again.stderr
    second = json.loads(again.stdout)
    assert sum(b["adopted"] for b in second["backends"].values()) == 0
    assert sum(b["present"] for b in second["backends"].values()) == adopted
    assert _usage(url) == usage_before
    # An older write of a key found later (a replaced version whose deletion was lost) is
    # reported for scrub, never adopted.
    direct = weed.boto3_client()
    keys = [o["Key"] for o in direct.list_objects_v2(Bucket=bucket)["Contents"]]
    newest = next(key for key in keys if key.startswith("vbb/many/"))
    older = newest[:-24] + "0" * 24
    direct.put_object(Bucket=bucket, Key=older, Body=b"stale")
    third = run_cli(daemon.config_path, "rebuild", "--json")
    assert third.returncode == 0, third.stdout + third.stderr
    assert older in json.loads(third.stdout)["backends"]["weed"]["superseded_keys"]
    direct.delete_object(Bucket=bucket, Key=older)
    with daemon:
        _assert_same(before, _snapshot(_client(daemon.endpoint)))


@pytest.mark.timeout(180)
def test_import_adopts_objects_already_in_a_real_bucket(tmp_path: Path) -> None:
    weed = shared_seaweedfs()
    bucket, weed_config = _weed_bucket(weed, "import")
    direct = weed.boto3_client()
    direct.put_object(Bucket=bucket, Key="photos/a.jpg", Body=b"jpeg bytes",
                      ContentType="image/jpeg", Metadata={"camera": "x100"})
    direct.put_object(Bucket=bucket, Key="photos/2024/b.txt", Body=b"text")
    direct.put_object(Bucket=bucket, Key="other/c", Body=b"not imported")
    config: dict[str, Any] = {
        "buckets": [weed_config, {"name": "vbk", "virtual": True}],
        "database": {"type": "sqlite", "dsn": str(tmp_path / "index.db")},
    }
    daemon = DaemonProcess(tmp_path / "daemon", config)
    daemon.write_config()
    arguments = ("import", "--backend", "weed", "--prefix", "photos/", "--into", "pictures",
                 "--json")
    done = run_cli(daemon.config_path, *arguments)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert (report["listed"], report["imported"], report["bucket_created"]) == (2, 2, True)
    again = run_cli(daemon.config_path, *arguments)
    assert again.returncode == 0, again.stdout + again.stderr
    assert json.loads(again.stdout)["already_indexed"] == 2
    assert json.loads(again.stdout)["imported"] == 0

    with daemon:
        s3 = _client(daemon.endpoint)
        listed = s3.list_objects_v2(Bucket="pictures")["Contents"]
        assert [entry["Key"] for entry in listed] == ["photos/2024/b.txt", "photos/a.jpg"]
        head = s3.head_object(Bucket="pictures", Key="photos/a.jpg")
        assert (head["ContentType"], head["Metadata"]) == ("image/jpeg", {"camera": "x100"})
        assert s3.get_object(Bucket="pictures", Key="photos/a.jpg")["Body"].read() == b"jpeg bytes"
        # A write through the daemon replaces the imported object like any other.
        s3.put_object(Bucket="pictures", Key="photos/2024/b.txt", Body=b"new text")
        assert s3.get_object(Bucket="pictures", Key="photos/2024/b.txt")["Body"].read() == \
            b"new text"
    # The imported bytes were not copied: only the replaced one went away.
    keys = sorted(o["Key"] for o in direct.list_objects_v2(Bucket=bucket)["Contents"])
    assert keys[:2] == ["other/c", "photos/a.jpg"]
    assert "photos/2024/b.txt" not in keys
    # A foreign object whose key the virtual bucket has already: the row is kept.
    direct.put_object(Bucket=bucket, Key="photos/2024/b.txt", Body=b"foreign again")
    conflict = run_cli(daemon.config_path, *arguments)
    assert conflict.returncode == 0, conflict.stdout + conflict.stderr
    assert json.loads(conflict.stdout)["conflicts"] == ["photos/2024/b.txt"]

    strip = run_cli(daemon.config_path, "import", "--backend", "weed", "--prefix", "other/",
                    "--into", "vbk", "--strip-prefix", "--json")
    assert strip.returncode == 0, strip.stdout + strip.stderr
    with daemon:
        s3 = _client(daemon.endpoint)
        assert s3.get_object(Bucket="vbk", Key="c")["Body"].read() == b"not imported"
        kept = s3.get_object(Bucket="pictures", Key="photos/2024/b.txt")["Body"].read()
        assert kept == b"new text"


def test_console_script_dispatches_scrub_and_refuses_bad_arguments(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(f"data_dir: {tmp_path}\nbuckets:\n  - name: d\n    path: {tmp_path}/d\n")
    scrubbed = run_cli(config, "scrub", "--json")
    assert scrubbed.returncode == 2 and "schema is empty" in scrubbed.stderr  # scrub's own check
    rebuilt = run_cli(config, "rebuild")  # creates the schema, as the daemon would
    assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
    assert "d: 0 listed" in rebuilt.stdout
    scrubbed = run_cli(config, "scrub", "--json")
    assert scrubbed.returncode == 0, scrubbed.stdout + scrubbed.stderr
    assert json.loads(scrubbed.stdout)["clean"] is True
    unknown = run_cli(config, "import", "--backend", "nope", "--into", "vb")
    assert unknown.returncode == 2 and "no real bucket named nope" in unknown.stderr
    bad_bucket = run_cli(config, "import", "--backend", "d", "--into", "Bad_Name")
    assert bad_bucket.returncode == 2, bad_bucket.stdout + bad_bucket.stderr


class RebuildResumes(DaemonTestCase, unittest.TestCase):  # type: ignore[misc]
    """An interrupted rebuild leaves a checkpoint; the next run takes up from it."""

    timeout = 120
    backend_names = ["r1"]

    async def test_interrupted_rebuild_resumes_from_its_checkpoint(self) -> None:
        keys = [f"k{index:02d}" for index in range(12)]
        for key in keys:
            await self.call(self.s3.put_object, Bucket="vb", Key=key, Body=key.encode())
        await in_thread(dbfixture.empty_all_tables, self.daemon.store.pool.engine)
        path = os.path.join(self.mktemp() + "-checkpoint.json")
        # With daemons running, young objects may be writes whose commit is still to come.
        cautious = await Rebuilder(self.daemon.store, self.daemon.backends, reactor).rebuild(
            Checkpoint(None), ["vb"], grace=3600
        )
        self.assertEqual((cautious.backends["r1"].recent, cautious.backends["r1"].adopted),
                         (len(keys), 0))
        calls = [0]

        def stop_after_five() -> bool:
            calls[0] += 1
            return calls[0] > 5

        first = Rebuilder(self.daemon.store, self.daemon.backends, reactor, concurrency=1,
                          should_stop=stop_after_five)
        report = await first.rebuild(Checkpoint(path), ["vb"])
        self.assertTrue(report.interrupted)
        taken = report.backends["r1"].adopted
        self.assertTrue(0 < taken < len(keys), taken)
        with open(path) as handle:
            saved = json.load(handle)
        self.assertFalse(saved["r1"]["done"])
        self.assertTrue(saved["r1"]["after"].startswith(f"vb/k{taken - 1:02d}~w"))

        second = Rebuilder(self.daemon.store, self.daemon.backends, reactor)
        report = await second.rebuild(Checkpoint(path), ["vb"])
        self.assertFalse(report.interrupted)
        self.assertEqual(report.backends["r1"].skipped_by_checkpoint, taken)
        self.assertEqual(report.backends["r1"].adopted, len(keys) - taken)
        self.assertFalse(os.path.exists(path))
        listed = await self.call(self.s3.list_objects_v2, Bucket="vb")
        self.assertEqual([entry["Key"] for entry in listed["Contents"]], keys)
        got = await self.call(self.s3.get_object, Bucket="vb", Key="k07")
        self.assertEqual(got["Body"].read(), b"k07")
