"""rclone against the daemon as users run it: signatures required, two real buckets on
SeaweedFS, the remote configured only through environment variables.  A tree with awkward names,
an empty file and one file above the multipart cutoff goes up, is listed page by page with both
ListObjects versions, checked by size and hash, read by range, copied and moved server-side,
synced after changes and deleted.  Afterwards the store and the real buckets agree exactly."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from test.support import unique_bucket_name
from test.support.clients import (
    ClientDaemon,
    assert_nothing_left_behind,
    client_versions,
    rclone,
)
from test.support.seaweedfs import shared_seaweedfs

MiB = 1 << 20
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
MULTIPART = ["--s3-upload-cutoff", "5M", "--s3-chunk-size", "5M"]

#: Relative path -> content.
TREE: dict[str, bytes] = {
    "top.txt": b"top level\n",
    "empty file": b"",
    "a/b/c/deep.txt": b"deep " * 100,
    "with space/and more spaces.txt": b"spaces\n",
    "unicod\u00e9/\u65e5\u672c\u8a9e \u00fc\u00df.txt": "unicode \u2713\n".encode(),
    "odd/plus+amp&eq=pct%tilde~.txt": b"punctuation\n",
    "big/large.bin": os.urandom(12 * MiB),
}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClientDaemon]:
    print("client versions:", client_versions())
    process = ClientDaemon(tmp_path_factory.mktemp("rclone"), shared_seaweedfs())
    process.start()
    try:
        yield process
    finally:
        process.stop()


def write_tree(root: Path, tree: dict[str, bytes]) -> None:
    for name, content in tree.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)


def test_rclone_round_trip(daemon: ClientDaemon, tmp_path: Path) -> None:
    endpoint = daemon.endpoint
    bucket = unique_bucket_name("rc")
    remote = f"S3B:{bucket}"
    source = tmp_path / "source"
    write_tree(source, TREE)

    rclone(endpoint, "mkdir", remote)
    assert bucket in rclone(endpoint, "lsd", "S3B:").stdout.decode()
    rclone(endpoint, "copy", *MULTIPART, str(source), f"{remote}/tree")
    head = daemon.client().head_object(Bucket=bucket, Key="tree/big/large.bin")
    assert head["ETag"].strip('"').endswith("-3")  # 5 + 5 + 2 MiB: it went up in parts

    expected = {name: len(content) for name, content in TREE.items()}
    for version in ("1", "2"):
        paging = ["--s3-list-chunk", "2", "--s3-list-version", version]
        ls = rclone(endpoint, "ls", *paging, f"{remote}/tree").stdout.decode()
        listed = {}
        for line in ls.splitlines():
            size, name = line.strip().split(" ", 1)
            listed[name] = int(size)
        assert listed == expected, version
        entries = json.loads(
            rclone(endpoint, "lsjson", "-R", "--files-only", *paging, f"{remote}/tree").stdout
        )
        assert {e["Path"]: e["Size"] for e in entries} == expected, version
        top = rclone(endpoint, "lsf", *paging, f"{remote}/tree").stdout.decode().splitlines()
        assert sorted(top) == sorted(
            ["top.txt", "empty file", "a/", "with space/", "unicod\u00e9/", "odd/", "big/"]
        ), version

    rclone(endpoint, "check", str(source), f"{remote}/tree")
    rclone(endpoint, "check", "--download", str(source), f"{remote}/tree")

    cat = rclone(
        endpoint, "cat", "--offset", "5", "--count", "1000", f"{remote}/tree/big/large.bin"
    ).stdout
    assert cat == TREE["big/large.bin"][5:1005]
    tail = rclone(endpoint, "cat", "--offset", "3", f"{remote}/tree/top.txt").stdout
    assert tail == b" level\n"

    # Server-side copy and move (S3 CopyObject), the big one included.
    rclone(endpoint, "copyto", f"{remote}/tree/top.txt", f"{remote}/copies/top copy.txt")
    rclone(
        endpoint, "copyto", *MULTIPART, f"{remote}/tree/big/large.bin", f"{remote}/copies/large.bin"
    )
    rclone(endpoint, "moveto", f"{remote}/copies/top copy.txt", f"{remote}/moved/top.txt")
    assert rclone(endpoint, "cat", f"{remote}/moved/top.txt").stdout == TREE["top.txt"]
    assert sorted(
        rclone(endpoint, "lsf", "-R", "--files-only", f"{remote}/copies")
        .stdout.decode()
        .splitlines()
    ) == ["large.bin"]
    rclone(endpoint, "check", "--download", str(source / "big"), f"{remote}/copies")

    # Sync after changes: one modified, one deleted, one added.
    (source / "top.txt").write_bytes(b"top level, modified\n")
    (source / "a/b/c/deep.txt").unlink()
    (source / "added/new file.txt").parent.mkdir()
    (source / "added/new file.txt").write_bytes(b"new\n")
    rclone(endpoint, "sync", *MULTIPART, str(source), f"{remote}/tree")
    rclone(endpoint, "check", "--download", str(source), f"{remote}/tree")
    files = rclone(endpoint, "lsf", "-R", "--files-only", f"{remote}/tree").stdout.decode()
    assert "a/b/c/deep.txt" not in files and "added/new file.txt" in files

    rclone(endpoint, "delete", f"{remote}/moved")
    assert rclone(endpoint, "lsf", "-R", f"{remote}/moved").stdout.strip() == b""
    rclone(endpoint, "purge", remote)
    assert bucket not in rclone(endpoint, "lsd", "S3B:").stdout.decode()
    assert not assert_nothing_left_behind(daemon).held
