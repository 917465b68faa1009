"""s3cmd (the Debian package) against the daemon as users run it: signatures required, two real
buckets on SeaweedFS, path-style addressing from a config file in the test's directory.  put,
get, ls, info, cp, mv, modify, sync and del, and a multipart upload.  Afterwards the store and
the real buckets agree exactly."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from test.support import unique_bucket_name
from test.support.clients import (
    ClientDaemon,
    assert_nothing_left_behind,
    client_versions,
    s3cmd,
    write_s3cmd_config,
)
from test.support.seaweedfs import shared_seaweedfs

MiB = 1 << 20
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClientDaemon]:
    print("client versions:", client_versions())
    process = ClientDaemon(tmp_path_factory.mktemp("s3cmd"), shared_seaweedfs())
    process.start()
    try:
        yield process
    finally:
        process.stop()


def test_s3cmd_round_trip(daemon: ClientDaemon, tmp_path: Path) -> None:
    config = write_s3cmd_config(tmp_path / "s3cfg", daemon.port)
    bucket = unique_bucket_name("s3cmd")
    url = f"s3://{bucket}"

    def run(*args: str) -> str:
        return s3cmd(config, *args).stdout.decode()

    run("mb", url)
    small = tmp_path / "small.txt"
    small.write_text("small file\n")
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(12 * MiB))

    run("put", str(small), f"{url}/dir/small.txt")
    run("put", "--multipart-chunk-size-mb=5", str(big), f"{url}/dir/big.bin")
    head = daemon.client().head_object(Bucket=bucket, Key="dir/big.bin")
    assert head["ContentLength"] == 12 * MiB
    assert head["ETag"].strip('"').endswith("-3")  # 5 + 5 + 2 MiB

    listing = run("ls", "--recursive", url)
    assert f"{url}/dir/small.txt" in listing and f"{url}/dir/big.bin" in listing
    assert run("ls", url).split() == ["DIR", f"{url}/dir/"]

    info = run("info", f"{url}/dir/small.txt")
    assert "File size: 11" in info
    assert hashlib.md5(small.read_bytes()).hexdigest() in info

    run("get", f"{url}/dir/big.bin", str(tmp_path / "big.back"))
    assert (tmp_path / "big.back").read_bytes() == big.read_bytes()

    run("cp", f"{url}/dir/small.txt", f"{url}/copy/small.txt")
    run("mv", f"{url}/copy/small.txt", f"{url}/moved/small.txt")
    run("modify", "--add-header=Cache-Control: max-age=60", f"{url}/moved/small.txt")
    moved = daemon.client().get_object(Bucket=bucket, Key="moved/small.txt")
    assert moved["Body"].read() == small.read_bytes()
    assert moved["CacheControl"] == "max-age=60"
    assert "copy/" not in run("ls", "--recursive", url)

    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "one.txt").write_text("one\n")
    (tree / "sub" / "two.txt").write_text("two\n")
    run("sync", f"{tree}/", f"{url}/tree/")
    (tree / "one.txt").write_text("one, changed\n")
    (tree / "sub" / "two.txt").unlink()
    run("sync", "--delete-removed", f"{tree}/", f"{url}/tree/")
    synced = run("ls", "--recursive", f"{url}/tree/")
    assert f"{url}/tree/one.txt" in synced and "two.txt" not in synced
    run("get", f"{url}/tree/one.txt", str(tmp_path / "one.back"))
    assert (tmp_path / "one.back").read_text() == "one, changed\n"

    run("del", f"{url}/dir/small.txt")
    run("del", "--recursive", "--force", url)
    assert run("ls", "--recursive", url).strip() == ""
    run("rb", url)
    assert not assert_nothing_left_behind(daemon).held
