"""boto3 against the daemon as users run it (a real process, signatures required, two real
buckets on SeaweedFS): the transfer manager up and down with concurrency, and many small objects
from parallel threads.  Afterwards the store and the real buckets agree exactly."""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from boto3.s3.transfer import TransferConfig

from test.support.clients import (
    VIRTUAL,
    ClientDaemon,
    assert_nothing_left_behind,
    client_versions,
)
from test.support.seaweedfs import shared_seaweedfs

MiB = 1 << 20
pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClientDaemon]:
    print("client versions:", client_versions())
    process = ClientDaemon(tmp_path_factory.mktemp("boto3"), shared_seaweedfs())
    process.start()
    try:
        yield process
    finally:
        process.stop()


def test_transfer_manager_multipart_upload_and_parallel_ranged_download(
    daemon: ClientDaemon, tmp_path: Path
) -> None:
    s3 = daemon.client(max_pool_connections=16)
    config = TransferConfig(
        multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB, max_concurrency=8
    )
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(40 * MiB))
    digest = hashlib.md5(source.read_bytes()).hexdigest()

    s3.upload_file(str(source), VIRTUAL, "dir/big.bin", Config=config)
    head = s3.head_object(Bucket=VIRTUAL, Key="dir/big.bin")
    assert head["ContentLength"] == 40 * MiB
    assert head["ETag"].strip('"').endswith("-8")  # eight 5 MiB parts

    target = tmp_path / "back.bin"
    s3.download_file(VIRTUAL, "dir/big.bin", str(target), Config=config)
    assert hashlib.md5(target.read_bytes()).hexdigest() == digest

    # download_fileobj to a non-seekable sink streams ranged GETs in order.
    sink = io.BytesIO()
    s3.download_fileobj(VIRTUAL, "dir/big.bin", sink, Config=config)
    assert hashlib.md5(sink.getvalue()).hexdigest() == digest

    # Both real buckets stay consistent with the store while the object exists...
    inventory = assert_nothing_left_behind(daemon)
    assert sorted(size for size, _ in inventory.recorded.values()) == [40 * MiB]
    # ...and after it is deleted nothing of it remains.
    s3.delete_object(Bucket=VIRTUAL, Key="dir/big.bin")
    inventory = assert_nothing_left_behind(daemon)
    assert not inventory.held


def test_many_small_objects_from_parallel_threads(daemon: ClientDaemon) -> None:
    bodies = {f"small/{i:03d}": os.urandom(i * 37 % 3000) for i in range(200)}

    def put(key: str) -> str:
        s3 = daemon.client()
        return str(s3.put_object(Bucket=VIRTUAL, Key=key, Body=bodies[key])["ETag"])

    with ThreadPoolExecutor(max_workers=12) as pool:
        etags = dict(zip(bodies, pool.map(put, bodies), strict=True))
    for key, body in bodies.items():
        assert etags[key] == f'"{hashlib.md5(body).hexdigest()}"'

    s3 = daemon.client()
    listed = {
        entry["Key"]: (entry["Size"], entry["ETag"])
        for page in s3.get_paginator("list_objects_v2").paginate(
            Bucket=VIRTUAL, Prefix="small/", PaginationConfig={"PageSize": 70}
        )
        for entry in page.get("Contents", [])
    }
    assert listed == {key: (len(body), etags[key]) for key, body in bodies.items()}

    def get(key: str) -> bytes:
        return bytes(daemon.client().get_object(Bucket=VIRTUAL, Key=key)["Body"].read())

    with ThreadPoolExecutor(max_workers=12) as pool:
        assert dict(zip(bodies, pool.map(get, bodies), strict=True)) == bodies

    inventory = assert_nothing_left_behind(daemon)
    # Round-robin placement used both real buckets.
    assert {backend for backend, _ in inventory.held} == set(daemon.real_buckets)

    keys = list(bodies)
    for start in range(0, len(keys), 100):
        answer = s3.delete_objects(
            Bucket=VIRTUAL, Delete={"Objects": [{"Key": k} for k in keys[start : start + 100]]}
        )
        assert not answer.get("Errors")
    assert s3.list_objects_v2(Bucket=VIRTUAL, Prefix="small/")["KeyCount"] == 0
    assert not assert_nothing_left_behind(daemon).held
