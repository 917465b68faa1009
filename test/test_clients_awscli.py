"""awscli (v1) against the daemon as users run it: signatures required, two real buckets on
SeaweedFS.  The high-level ``aws s3`` commands (a 20 MiB file crosses awscli's 8 MiB multipart
threshold), an ``aws s3api`` call for every operation s3balance serves, and ``aws s3 presign``
fetched with curl.  Afterwards the store and the real buckets agree exactly."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from test.support import unique_bucket_name
from test.support.clients import (
    VIRTUAL,
    ClientDaemon,
    assert_nothing_left_behind,
    aws,
    aws_json,
    client_versions,
)
from test.support.seaweedfs import shared_seaweedfs

MiB = 1 << 20
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClientDaemon]:
    print("client versions:", client_versions())
    process = ClientDaemon(tmp_path_factory.mktemp("awscli"), shared_seaweedfs())
    process.start()
    try:
        yield process
    finally:
        process.stop()


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_s3_cp_sync_ls_mv_rm(daemon: ClientDaemon, tmp_path: Path) -> None:
    url = f"s3://{VIRTUAL}/cli"
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "a.txt").write_text("alpha\n")
    (tree / "sub" / "b.bin").write_bytes(os.urandom(3000))
    (tree / "empty").write_bytes(b"")
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(20 * MiB))

    aws(daemon.endpoint, "s3", "cp", str(big), f"{url}/big.bin")
    head = aws_json(
        daemon.endpoint, "s3api", "head-object", "--bucket", VIRTUAL, "--key", "cli/big.bin"
    )
    assert head["ContentLength"] == 20 * MiB
    assert head["ETag"].strip('"').endswith("-3")  # awscli's 8 MiB parts: 8 + 8 + 4
    aws(daemon.endpoint, "s3", "cp", f"{url}/big.bin", str(tmp_path / "big.back"))
    assert md5(tmp_path / "big.back") == md5(big)

    aws(daemon.endpoint, "s3", "sync", str(tree), f"{url}/tree")
    listing = aws(daemon.endpoint, "s3", "ls", "--recursive", f"{url}/tree/").stdout.decode()
    assert sorted(line.split()[-1] for line in listing.splitlines()) == [
        "cli/tree/a.txt",
        "cli/tree/empty",
        "cli/tree/sub/b.bin",
    ]
    # A second sync has nothing to do; after a change it uploads and deletes exactly that.
    again = aws(daemon.endpoint, "s3", "sync", str(tree), f"{url}/tree").stdout.decode()
    assert "upload:" not in again
    (tree / "a.txt").write_text("alpha, changed and longer\n")
    (tree / "sub" / "b.bin").unlink()
    changed = aws(
        daemon.endpoint, "s3", "sync", "--delete", str(tree), f"{url}/tree"
    ).stdout.decode()
    assert "upload: " in changed and "delete: " in changed
    back = tmp_path / "back"
    aws(daemon.endpoint, "s3", "sync", f"{url}/tree", str(back))
    assert (back / "a.txt").read_text() == "alpha, changed and longer\n"
    assert (back / "empty").read_bytes() == b""
    assert not (back / "sub").exists()

    aws(daemon.endpoint, "s3", "mv", f"{url}/big.bin", f"{url}/moved.bin")
    names = aws(daemon.endpoint, "s3", "ls", f"{url}/").stdout.decode()
    assert "moved.bin" in names and "big.bin" not in names
    aws(daemon.endpoint, "s3", "rm", "--recursive", f"{url}/")
    assert aws(daemon.endpoint, "s3", "ls", f"{url}/", check=False).stdout.strip() == b""
    assert not assert_nothing_left_behind(daemon).held


def test_s3api_every_operation(daemon: ClientDaemon, tmp_path: Path) -> None:
    def api(*args: str) -> dict:  # type: ignore[type-arg]
        return aws_json(daemon.endpoint, "s3api", *args)  # type: ignore[no-any-return]

    bucket = unique_bucket_name("cli")
    api("create-bucket", "--bucket", bucket)
    api("head-bucket", "--bucket", bucket)
    location = api("get-bucket-location", "--bucket", bucket)
    assert location.get("LocationConstraint") in (None, "", "us-east-1")

    body = tmp_path / "body"
    body.write_bytes(b"hello s3balance\n")
    put = api(
        "put-object",
        "--bucket",
        bucket,
        "--key",
        "dir/one",
        "--body",
        str(body),
        "--content-type",
        "text/plain",
        "--metadata",
        "colour=blue",
    )
    assert put["ETag"] == f'"{md5(body)}"'
    head = api("head-object", "--bucket", bucket, "--key", "dir/one")
    assert (head["ContentLength"], head["ContentType"]) == (16, "text/plain")
    assert head["Metadata"] == {"colour": "blue"}
    out = tmp_path / "out"
    got = api(
        "get-object", "--bucket", bucket, "--key", "dir/one", "--range", "bytes=6-14", str(out)
    )
    assert out.read_bytes() == b"s3balance" and got["ContentRange"] == "bytes 6-14/16"

    copied = api(
        "copy-object", "--bucket", bucket, "--key", "dir/two", "--copy-source", f"{bucket}/dir/one"
    )
    assert copied["CopyObjectResult"]["ETag"] == put["ETag"]
    api("put-object", "--bucket", bucket, "--key", "three", "--body", str(body))

    v1 = api("list-objects", "--bucket", bucket, "--delimiter", "/")
    assert [o["Key"] for o in v1["Contents"]] == ["three"]
    assert v1["CommonPrefixes"] == [{"Prefix": "dir/"}]
    v2 = api("list-objects-v2", "--bucket", bucket, "--prefix", "dir/")
    assert [o["Key"] for o in v2["Contents"]] == ["dir/one", "dir/two"]
    versions = api("list-object-versions", "--bucket", bucket)
    assert [v["Key"] for v in versions["Versions"]] == ["dir/one", "dir/two", "three"]
    assert all(v["VersionId"] == "null" and v["IsLatest"] for v in versions["Versions"])

    # Multipart: one uploaded part, one copied from an object, listed, completed.
    part = tmp_path / "part"
    part.write_bytes(os.urandom(5 * MiB))
    created = api("create-multipart-upload", "--bucket", bucket, "--key", "multi")
    upload_id = created["UploadId"]
    first = api(
        "upload-part",
        "--bucket",
        bucket,
        "--key",
        "multi",
        "--part-number",
        "1",
        "--upload-id",
        upload_id,
        "--body",
        str(part),
    )
    second = api(
        "upload-part-copy",
        "--bucket",
        bucket,
        "--key",
        "multi",
        "--part-number",
        "2",
        "--upload-id",
        upload_id,
        "--copy-source",
        f"{bucket}/dir/one",
    )
    parts = api("list-parts", "--bucket", bucket, "--key", "multi", "--upload-id", upload_id)
    assert [(p["PartNumber"], p["Size"]) for p in parts["Parts"]] == [(1, 5 * MiB), (2, 16)]
    uploads = api("list-multipart-uploads", "--bucket", bucket)
    assert [(u["Key"], u["UploadId"]) for u in uploads["Uploads"]] == [("multi", upload_id)]
    manifest = tmp_path / "parts.json"
    manifest.write_text(
        json.dumps(
            {
                "Parts": [
                    {"PartNumber": 1, "ETag": first["ETag"]},
                    {"PartNumber": 2, "ETag": second["CopyPartResult"]["ETag"]},
                ]
            }
        )
    )
    api(
        "complete-multipart-upload",
        "--bucket",
        bucket,
        "--key",
        "multi",
        "--upload-id",
        upload_id,
        "--multipart-upload",
        f"file://{manifest}",
    )
    api("get-object", "--bucket", bucket, "--key", "multi", str(out))
    assert out.read_bytes() == part.read_bytes() + body.read_bytes()

    abandoned = api("create-multipart-upload", "--bucket", bucket, "--key", "gone")["UploadId"]
    api(
        "upload-part",
        "--bucket",
        bucket,
        "--key",
        "gone",
        "--part-number",
        "1",
        "--upload-id",
        abandoned,
        "--body",
        str(body),
    )
    api("abort-multipart-upload", "--bucket", bucket, "--key", "gone", "--upload-id", abandoned)
    assert not api("list-multipart-uploads", "--bucket", bucket).get("Uploads")

    acl = api("get-object-acl", "--bucket", bucket, "--key", "three")
    assert [g["Permission"] for g in acl["Grants"]] == ["FULL_CONTROL"]
    api("put-object-acl", "--bucket", bucket, "--key", "three", "--acl", "private")
    assert [g["Permission"] for g in api("get-bucket-acl", "--bucket", bucket)["Grants"]] == [
        "FULL_CONTROL"
    ]

    # A presigned GET works with a client that has no keys at all.
    url = aws(daemon.endpoint, "s3", "presign", f"s3://{bucket}/dir/one").stdout.decode().strip()
    fetched = subprocess.run(["curl", "-sf", url], capture_output=True, timeout=30, check=True)
    assert fetched.stdout == body.read_bytes()
    tampered = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", url.replace("dir/one", "three")],
        capture_output=True,
        timeout=30,
    )
    assert tampered.stdout == b"403"

    api("delete-object", "--bucket", bucket, "--key", "three")
    deleted = api(
        "delete-objects",
        "--bucket",
        bucket,
        "--delete",
        json.dumps({"Objects": [{"Key": "dir/one"}, {"Key": "dir/two"}, {"Key": "multi"}]}),
    )
    assert sorted(d["Key"] for d in deleted["Deleted"]) == ["dir/one", "dir/two", "multi"]
    assert not api("list-objects-v2", "--bucket", bucket).get("Contents")
    api("delete-bucket", "--bucket", bucket)
    failed = aws(daemon.endpoint, "s3api", "head-bucket", "--bucket", bucket, check=False)
    assert failed.returncode != 0 and b"404" in failed.stderr
    assert not assert_nothing_left_behind(daemon).held
