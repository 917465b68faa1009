"""Multipart uploads end to end: real clients (boto3, awscli, rclone) against the in-process
daemon over real sockets, with local-directory backends and, when available, SeaweedFS.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import secrets
import socket
import subprocess
import time
from typing import Any

import pytest
from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from s3balance.backends.interface import BackendInvalidPart
from s3balance.config import BucketConfig
from s3balance.web.multipart import MultipartHandler
from test.support import require_tool
from test.support.daemon import DaemonTestCase, seaweed_buckets
from test.support.seaweedfs import seaweed_or_skip

MiB = 1024 * 1024


def random_file(path: str, size: int) -> str:
    """Write ``size`` random bytes to ``path``; returns their MD5."""
    digest = hashlib.md5()
    with open(path, "wb") as handle:
        remaining = size
        while remaining:
            chunk = os.urandom(min(remaining, MiB))
            handle.write(chunk)
            digest.update(chunk)
            remaining -= len(chunk)
    return digest.hexdigest()


def file_md5(path: str) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        while chunk := handle.read(MiB):
            digest.update(chunk)
    return digest.hexdigest()


class MultipartDaemonCase(DaemonTestCase):
    keepalive_interval = 10.0

    async def start(self) -> None:
        await super().start()
        # The handler the daemon's composition root wired; some tests want a shorter keepalive.
        self.handler: MultipartHandler = self.daemon.resource.multipart
        self.handler.keepalive_interval = self.keepalive_interval

    def fetch(self, key: str) -> tuple[dict[str, Any], bytes]:
        """GetObject and its whole body, both in a thread (reading blocks)."""

        def run() -> tuple[dict[str, Any], bytes]:
            got = self.s3.get_object(Bucket="vb", Key=key)
            return got, got["Body"].read()

        return self.call(run)  # type: ignore[return-value]

    def leftover_uploads(self) -> list[str]:
        """Upload directories still on the local backends."""
        found = []
        for name in self.backend_names:
            path = os.path.join(self.workdir, name, "uploads")
            if os.path.isdir(path):
                found.extend(os.listdir(path))
        return found


class Boto3MultipartTests(MultipartDaemonCase, unittest.TestCase):
    timeout = 60

    async def _upload(self, key: str, parts: list[bytes]) -> tuple[str, list[dict[str, Any]]]:
        created = await self.call(self.s3.create_multipart_upload, Bucket="vb", Key=key,
                                  ContentType="text/plain", Metadata={"owner": "me"})
        upload_id = created["UploadId"]
        done = []
        for number, data in enumerate(parts, start=1):
            answer = await self.call(self.s3.upload_part, Bucket="vb", Key=key,
                                     UploadId=upload_id, PartNumber=number, Body=data)
            self.assertEqual(answer["ETag"], f'"{hashlib.md5(data).hexdigest()}"')
            done.append({"PartNumber": number, "ETag": answer["ETag"]})
        return upload_id, done

    async def test_low_level_upload_with_listings_and_part_reads(self) -> None:
        parts = [os.urandom(5 * MiB), os.urandom(5 * MiB), b"the end"]
        upload_id, done = await self._upload("dir/file.txt", parts)
        self.assertGreaterEqual(len(upload_id), 32)
        listed = await self.call(self.s3.list_parts, Bucket="vb", Key="dir/file.txt",
                                 UploadId=upload_id, MaxParts=2)
        self.assertEqual([p["PartNumber"] for p in listed["Parts"]], [1, 2])
        self.assertTrue(listed["IsTruncated"])
        self.assertEqual(listed["NextPartNumberMarker"], 2)
        self.assertEqual(listed["StorageClass"], "STANDARD")
        self.assertIn("ID", listed["Initiator"])
        rest = await self.call(self.s3.list_parts, Bucket="vb", Key="dir/file.txt",
                               UploadId=upload_id, PartNumberMarker=2)
        self.assertEqual([(p["PartNumber"], p["Size"]) for p in rest["Parts"]], [(3, 7)])
        self.assertFalse(rest["IsTruncated"])
        uploads = await self.call(self.s3.list_multipart_uploads, Bucket="vb", Delimiter="/")
        self.assertEqual(uploads.get("Uploads", []), [])
        self.assertEqual(uploads["CommonPrefixes"], [{"Prefix": "dir/"}])
        uploads = await self.call(self.s3.list_multipart_uploads, Bucket="vb", Prefix="dir/")
        self.assertEqual([(u["Key"], u["UploadId"]) for u in uploads["Uploads"]],
                         [("dir/file.txt", upload_id)])

        result = await self.call(self.s3.complete_multipart_upload, Bucket="vb",
                                 Key="dir/file.txt", UploadId=upload_id,
                                 MultipartUpload={"Parts": done})
        joined = b"".join(hashlib.md5(p).digest() for p in parts)
        self.assertEqual(result["ETag"], f'"{hashlib.md5(joined).hexdigest()}-3"')
        got, got_body = await self.fetch("dir/file.txt")
        self.assertEqual(got_body, b"".join(parts))
        self.assertEqual(got["ContentType"], "text/plain")
        self.assertEqual(got["Metadata"], {"owner": "me"})
        self.assertEqual(got["ETag"], result["ETag"])
        self.assertEqual(self.leftover_uploads(), [])

    async def test_list_uploads_pages_with_markers_and_odd_keys(self) -> None:
        keys = ["a b+c", "a b+c", "k\u00e9y", "z/1"]
        ids = []
        for key in keys:
            created = await self.call(self.s3.create_multipart_upload, Bucket="vb", Key=key)
            ids.append(created["UploadId"])
        expected = sorted(zip(keys, ids, strict=True), key=lambda p: (p[0].encode(), p[1]))
        seen: list[tuple[str, str]] = []
        key_marker, id_marker = "", ""
        for _ in range(10):
            page = await self.call(self.s3.list_multipart_uploads, Bucket="vb", MaxUploads=1,
                                   KeyMarker=key_marker, UploadIdMarker=id_marker)
            self.assertEqual(page["MaxUploads"], 1)
            seen.extend((u["Key"], u["UploadId"]) for u in page.get("Uploads", []))
            if not page["IsTruncated"]:
                break
            key_marker, id_marker = page["NextKeyMarker"], page["NextUploadIdMarker"]
        self.assertEqual(seen, expected)

        def raw(path: str) -> tuple[int, bytes]:
            connection = http.client.HTTPConnection("127.0.0.1", self.daemon.port_number,
                                                    timeout=10)
            connection.request("GET", path)
            response = connection.getresponse()
            data = response.read()
            connection.close()
            return response.status, data

        status, data = await self.call(raw, "/vb?uploads&encoding-type=url&prefix=a%20")
        self.assertEqual(status, 200)
        self.assertIn(b"<Key>a%20b%2Bc</Key>", data)
        self.assertIn(b"<EncodingType>url</EncodingType>", data)
        status, data = await self.call(raw, f"/vb/z/1?uploadId={ids[3]}&max-parts=many")
        self.assertEqual(status, 400)
        self.assertIn(b"<Code>InvalidArgument</Code>", data)
        status, data = await self.call(raw, "/vb?uploads&max-uploads=-1")
        self.assertEqual(status, 400)

    async def test_abort_leaves_nothing(self) -> None:
        upload_id, _ = await self._upload("k", [os.urandom(MiB), b"x"])
        self.assertEqual(len(self.leftover_uploads()), 1)
        answer = await self.call(self.s3.abort_multipart_upload, Bucket="vb", Key="k",
                                 UploadId=upload_id)
        self.assertEqual(answer["ResponseMetadata"]["HTTPStatusCode"], 204)
        self.assertEqual(self.leftover_uploads(), [])
        self.assertEqual(await self.backend_keys(), {"r1": [], "r2": []})
        listed = await self.call(self.s3.list_multipart_uploads, Bucket="vb")
        self.assertEqual(listed.get("Uploads", []), [])
        code, status, _ = await self.error_of(self.s3.abort_multipart_upload, Bucket="vb",
                                              Key="k", UploadId=upload_id)
        self.assertEqual((code, status), ("NoSuchUpload", 404))

    async def test_errors_clients_see(self) -> None:
        upload_id, done = await self._upload("k", [b"small", b"parts"])
        code, status, _ = await self.error_of(
            self.s3.upload_part, Bucket="vb", Key="k", UploadId="not-ours", PartNumber=1,
            Body=b"x",
        )
        self.assertEqual((code, status), ("NoSuchUpload", 404))
        code, status, _ = await self.error_of(
            self.s3.upload_part, Bucket="vb", Key="k", UploadId=upload_id, PartNumber=10001,
            Body=b"x",
        )
        self.assertEqual((code, status), ("InvalidArgument", 400))
        code, _, _ = await self.error_of(
            self.s3.complete_multipart_upload, Bucket="vb", Key="k", UploadId=upload_id,
            MultipartUpload={"Parts": done},
        )
        self.assertEqual(code, "EntityTooSmall")
        code, _, _ = await self.error_of(
            self.s3.complete_multipart_upload, Bucket="vb", Key="k", UploadId=upload_id,
            MultipartUpload={"Parts": list(reversed(done))},
        )
        self.assertEqual(code, "InvalidPartOrder")
        code, _, _ = await self.error_of(
            self.s3.complete_multipart_upload, Bucket="vb", Key="k", UploadId=upload_id,
            MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": '"' + "0" * 32 + '"'}]},
        )
        self.assertEqual(code, "InvalidPart")
        code, status, _ = await self.error_of(
            self.s3.complete_multipart_upload, Bucket="vb", Key="k", UploadId=upload_id,
            MultipartUpload={"Parts": []},
        )
        self.assertEqual((code, status), ("MalformedXML", 400))
        code, _, _ = await self.error_of(self.s3.list_parts, Bucket="vb", Key="other",
                                         UploadId=upload_id)
        self.assertEqual(code, "NoSuchUpload")
        # The last part alone may be small: completing with it works.
        result = await self.call(self.s3.complete_multipart_upload, Bucket="vb", Key="k",
                                 UploadId=upload_id, MultipartUpload={"Parts": done[1:]})
        self.assertTrue(result["ETag"].endswith('-1"'))
        got, got_body = await self.fetch("k")
        self.assertEqual(got_body, b"parts")

    async def test_bad_content_md5_fails_only_that_part(self) -> None:
        created = await self.call(self.s3.create_multipart_upload, Bucket="vb", Key="k")
        upload_id = created["UploadId"]
        code, _, _ = await self.error_of(
            self.s3.upload_part, Bucket="vb", Key="k", UploadId=upload_id, PartNumber=1,
            Body=b"payload", ContentMD5="1B2M2Y8AsgTpgAmY7PhCfg==",
        )
        self.assertEqual(code, "BadDigest")
        listed = await self.call(self.s3.list_parts, Bucket="vb", Key="k", UploadId=upload_id)
        self.assertEqual(listed.get("Parts", []), [])
        answer = await self.call(self.s3.upload_part, Bucket="vb", Key="k", UploadId=upload_id,
                                 PartNumber=1, Body=b"payload")
        self.assertEqual(answer["ETag"], f'"{hashlib.md5(b"payload").hexdigest()}"')

    async def test_upload_part_copy(self) -> None:
        source = os.urandom(6 * MiB)
        await self.call(self.s3.put_object, Bucket="vb", Key="src", Body=source)
        created = await self.call(self.s3.create_multipart_upload, Bucket="vb", Key="dest")
        upload_id = created["UploadId"]
        first = await self.call(self.s3.upload_part_copy, Bucket="vb", Key="dest",
                                UploadId=upload_id, PartNumber=1,
                                CopySource={"Bucket": "vb", "Key": "src"},
                                CopySourceRange=f"bytes=0-{5 * MiB - 1}")
        second = await self.call(self.s3.upload_part_copy, Bucket="vb", Key="dest",
                                 UploadId=upload_id, PartNumber=2,
                                 CopySource={"Bucket": "vb", "Key": "src"},
                                 CopySourceRange="bytes=100-199")
        self.assertEqual(second["CopyPartResult"]["ETag"],
                         f'"{hashlib.md5(source[100:200]).hexdigest()}"')
        for bad, expected in [("bytes=5-1", "InvalidArgument"), ("items=0-1", "InvalidArgument"),
                              (f"bytes=0-{6 * MiB}", "InvalidRange")]:
            code, _, _ = await self.error_of(
                self.s3.upload_part_copy, Bucket="vb", Key="dest", UploadId=upload_id,
                PartNumber=3, CopySource={"Bucket": "vb", "Key": "src"}, CopySourceRange=bad,
            )
            self.assertEqual(code, expected, bad)
        code, status, _ = await self.error_of(
            self.s3.upload_part_copy, Bucket="vb", Key="dest", UploadId=upload_id,
            PartNumber=3, CopySource={"Bucket": "vb", "Key": "missing"},
        )
        self.assertEqual((code, status), ("NoSuchKey", 404))
        code, status, _ = await self.error_of(
            self.s3.upload_part_copy, Bucket="vb", Key="dest", UploadId=upload_id,
            PartNumber=3, CopySource={"Bucket": "vb", "Key": "src"},
            CopySourceIfMatch='"' + "1" * 32 + '"',
        )
        self.assertEqual((code, status), ("PreconditionFailed", 412))
        await self.call(self.s3.complete_multipart_upload, Bucket="vb", Key="dest",
                        UploadId=upload_id, MultipartUpload={"Parts": [
                            {"PartNumber": 1, "ETag": first["CopyPartResult"]["ETag"]},
                            {"PartNumber": 2, "ETag": second["CopyPartResult"]["ETag"]},
                        ]})
        got, got_body = await self.fetch("dest")
        self.assertEqual(got_body, source[: 5 * MiB] + source[100:200])

    async def test_concurrent_part_uploads(self) -> None:
        created = await self.call(self.s3.create_multipart_upload, Bucket="vb", Key="k")
        upload_id = created["UploadId"]
        parts = [os.urandom(5 * MiB + n) for n in range(4)]

        def send(number: int) -> dict[str, Any]:
            client = self.daemon.client()
            answer = client.upload_part(Bucket="vb", Key="k", UploadId=upload_id,
                                        PartNumber=number, Body=parts[number - 1])
            return {"PartNumber": number, "ETag": answer["ETag"]}

        done = await defer.gatherResults([self.call(send, n) for n in range(1, 5)])
        await self.call(self.s3.complete_multipart_upload, Bucket="vb", Key="k",
                        UploadId=upload_id,
                        MultipartUpload={"Parts": sorted(done, key=lambda p: p["PartNumber"])})
        got, got_body = await self.fetch("k")
        self.assertEqual(hashlib.md5(got_body).hexdigest(),
                         hashlib.md5(b"".join(parts)).hexdigest())

    async def test_a_client_disconnecting_mid_part_leaves_the_upload_intact(self) -> None:
        upload_id, done = await self._upload("k", [os.urandom(5 * MiB)])
        port = self.daemon.port_number

        def send_half() -> None:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(
                    f"PUT /vb/k?partNumber=2&uploadId={upload_id} HTTP/1.1\r\n"
                    f"Host: 127.0.0.1:{port}\r\nContent-Length: {4 * MiB}\r\n\r\n".encode()
                )
                sock.sendall(os.urandom(MiB))
                time.sleep(0.2)

        await self.call(send_half)
        for _ in range(100):  # until the daemon saw the disconnect (the part's room released)
            if not any(self.daemon.pool.reserved(name) for name in self.backend_names):
                break
            await task.deferLater(reactor, 0.05, lambda: None)
        listed = await self.call(self.s3.list_parts, Bucket="vb", Key="k", UploadId=upload_id)
        self.assertEqual([p["PartNumber"] for p in listed["Parts"]], [1])
        last = await self.call(self.s3.upload_part, Bucket="vb", Key="k", UploadId=upload_id,
                               PartNumber=2, Body=b"tail")
        done.append({"PartNumber": 2, "ETag": last["ETag"]})
        result = await self.call(self.s3.complete_multipart_upload, Bucket="vb", Key="k",
                                 UploadId=upload_id, MultipartUpload={"Parts": done})
        self.assertTrue(result["ETag"].endswith('-2"'))


class SlowCompleteTests(MultipartDaemonCase, unittest.TestCase):
    """A completion slower than the keep-alive interval: 200 at once, spaces, then the result."""

    timeout = 60
    keepalive_interval = 0.1

    def slow_complete(self, delay: float, fail: bool = False) -> None:
        for name, backend in self.daemon.backends.items():
            original = backend.complete_multipart_upload

            def slow(key: str, upload_id: str, parts: Any, original: Any = original,
                     name: str = name) -> Any:
                def go() -> Any:
                    if fail:
                        raise BackendInvalidPart(name, "the backend lost a part")
                    return original(key, upload_id, parts)

                return task.deferLater(reactor, delay, go)

            backend.complete_multipart_upload = slow  # type: ignore[method-assign]

    def raw_complete(self, key: str, upload_id: str, etag: str) -> tuple[int, bytes, float]:
        connection = http.client.HTTPConnection("127.0.0.1", self.daemon.port_number, timeout=10)
        body = (f"<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>{etag}</ETag>"
                "</Part></CompleteMultipartUpload>").encode()
        started = time.monotonic()
        connection.request("POST", f"/vb/{key}?uploadId={upload_id}", body=body)
        response = connection.getresponse()
        first_byte = time.monotonic() - started
        data = response.read()
        connection.close()
        return response.status, data, first_byte

    async def test_whitespace_then_the_result_and_boto3_accepts_it(self) -> None:
        self.slow_complete(1.0)
        created = await self.call(self.s3.create_multipart_upload, Bucket="vb", Key="k")
        part = await self.call(self.s3.upload_part, Bucket="vb", Key="k",
                               UploadId=created["UploadId"], PartNumber=1, Body=b"data")
        status, data, first_byte = await self.call(
            self.raw_complete, "k", created["UploadId"], part["ETag"]
        )
        self.assertEqual(status, 200)
        self.assertTrue(data.startswith(b'<?xml version="1.0" encoding="UTF-8"?>\n  '), data)
        self.assertIn(b"<CompleteMultipartUploadResult", data)
        self.assertIn(b"-1&quot;</ETag>", data.replace(b'"', b"&quot;"))
        self.assertLess(first_byte, 0.9)  # the answer began before the work ended
        # boto3 reads the same answer.
        created = await self.call(self.s3.create_multipart_upload, Bucket="vb", Key="k2")
        part = await self.call(self.s3.upload_part, Bucket="vb", Key="k2",
                               UploadId=created["UploadId"], PartNumber=1, Body=b"data")
        result = await self.call(self.s3.complete_multipart_upload, Bucket="vb", Key="k2",
                                 UploadId=created["UploadId"], MultipartUpload={"Parts": [
                                     {"PartNumber": 1, "ETag": part["ETag"]}]})
        self.assertTrue(result["ETag"].endswith('-1"'))
        got, got_body = await self.fetch("k2")
        self.assertEqual(got_body, b"data")

    async def test_a_late_failure_is_an_error_document_inside_the_200(self) -> None:
        self.slow_complete(0.5, fail=True)
        created = await self.call(self.s3.create_multipart_upload, Bucket="vb", Key="k")
        part = await self.call(self.s3.upload_part, Bucket="vb", Key="k",
                               UploadId=created["UploadId"], PartNumber=1, Body=b"data")
        status, data, _ = await self.call(self.raw_complete, "k", created["UploadId"],
                                          part["ETag"])
        self.assertEqual(status, 200)
        self.assertIn(b"<Error><Code>InvalidPart</Code>", data)
        self.assertEqual(data.count(b"<?xml"), 1)
        # The upload is still there: the client may retry.
        listed = await self.call(self.s3.list_parts, Bucket="vb", Key="k",
                                 UploadId=created["UploadId"])
        self.assertEqual(len(listed["Parts"]), 1)

    async def test_a_fast_failure_keeps_its_own_status(self) -> None:
        created = await self.call(self.s3.create_multipart_upload, Bucket="vb", Key="k")
        status, data, _ = await self.call(self.raw_complete, "k", created["UploadId"],
                                          '"' + "0" * 32 + '"')
        self.assertEqual(status, 400)
        self.assertIn(b"<Code>InvalidPart</Code>", data)


@pytest.mark.slow
class RealClientTests(MultipartDaemonCase, unittest.TestCase):
    timeout = 120

    def env(self) -> dict[str, str]:
        # A CA bundle in the environment makes rclone refuse plain-HTTP endpoints.
        env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
        env.update(AWS_ACCESS_KEY_ID="anonymous-test", AWS_SECRET_ACCESS_KEY="anonymous-secret",
                   AWS_DEFAULT_REGION="us-east-1", AWS_CONFIG_FILE="/dev/null",
                   AWS_SHARED_CREDENTIALS_FILE="/dev/null", AWS_EC2_METADATA_DISABLED="true")
        return env

    def run_command(self, args: list[str], env: dict[str, str]) -> str:
        done = subprocess.run(args, env=env, capture_output=True, timeout=90, check=False)
        if done.returncode:
            raise AssertionError(f"{args[0]} failed ({done.returncode}): "
                                 f"{done.stdout.decode()[-2000:]} {done.stderr.decode()[-2000:]}")
        return done.stdout.decode()

    async def test_boto3_transfer_manager_41_mib_in_8_mib_parts(self) -> None:
        from boto3.s3.transfer import TransferConfig

        source = os.path.join(self.workdir, "source.bin")
        target = os.path.join(self.workdir, "target.bin")
        digest = random_file(source, 41 * MiB)
        config = TransferConfig(multipart_threshold=8 * MiB, multipart_chunksize=8 * MiB,
                                max_concurrency=4)
        await self.call(self.s3.upload_file, source, "vb", "big.bin", Config=config)
        head = await self.call(self.s3.head_object, Bucket="vb", Key="big.bin")
        self.assertTrue(head["ETag"].endswith('-6"'), head["ETag"])
        self.assertEqual(head["ContentLength"], 41 * MiB)
        await self.call(self.s3.download_file, "vb", "big.bin", target)
        self.assertEqual(file_md5(target), digest)
        self.assertEqual(self.leftover_uploads(), [])

    async def test_awscli_cp_of_a_large_file(self) -> None:
        aws = require_tool("aws")
        source = os.path.join(self.workdir, "cli.bin")
        back = os.path.join(self.workdir, "cli-back.bin")
        digest = random_file(source, 20 * MiB)
        endpoint = ["--endpoint-url", self.daemon.endpoint]
        env = self.env()
        await self.call(self.run_command, [aws, "s3", "cp", source, "s3://vb/cli.bin", *endpoint],
                        env)
        head = await self.call(self.s3.head_object, Bucket="vb", Key="cli.bin")
        self.assertRegex(head["ETag"], r'^"[0-9a-f]{32}-\d+"$')  # awscli went multipart
        await self.call(self.run_command, [aws, "s3", "cp", "s3://vb/cli.bin", back, *endpoint],
                        env)
        self.assertEqual(file_md5(back), digest)

    async def test_rclone_copy_and_check(self) -> None:
        rclone = require_tool("rclone")
        folder = os.path.join(self.workdir, "tree")
        os.makedirs(os.path.join(folder, "sub"))
        random_file(os.path.join(folder, "big.bin"), 12 * MiB)
        random_file(os.path.join(folder, "sub", "small.bin"), 1000)
        env = self.env()
        env.update(
            RCLONE_CONFIG_S3B_TYPE="s3", RCLONE_CONFIG_S3B_PROVIDER="Other",
            RCLONE_CONFIG_S3B_ENDPOINT=self.daemon.endpoint,
            RCLONE_CONFIG_S3B_ACCESS_KEY_ID="anonymous-test",
            RCLONE_CONFIG_S3B_SECRET_ACCESS_KEY="anonymous-secret",
            RCLONE_CONFIG_S3B_REGION="us-east-1", RCLONE_CONFIG_S3B_FORCE_PATH_STYLE="true",
            RCLONE_CONFIG="/dev/null",
        )
        common = ["--s3-upload-cutoff", "5M", "--s3-chunk-size", "5M", "--retries", "1",
                  "--low-level-retries", "1", "--contimeout", "5s", "--timeout", "30s"]
        await self.call(self.run_command, [rclone, "copy", folder, "s3b:vb/tree", *common], env)
        head = await self.call(self.s3.head_object, Bucket="vb", Key="tree/big.bin")
        self.assertTrue(head["ETag"].endswith('-3"'), head["ETag"])
        await self.call(self.run_command, [rclone, "check", folder, "s3b:vb/tree",
                                           "--download", *common], env)
        self.assertEqual(self.leftover_uploads(), [])



@pytest.mark.slow
class SeaweedMultipartTests(MultipartDaemonCase, unittest.TestCase):
    """The same uploads with real S3 buckets (SeaweedFS) behind the daemon."""

    timeout = 120

    def real_bucket_configs(self, workdir: str) -> list[BucketConfig]:
        self.weed = seaweed_or_skip()
        suffix = secrets.token_hex(4)
        configs = seaweed_buckets(self.weed, [f"s3b-mp1-{suffix}", f"s3b-mp2-{suffix}"])
        self.backend_names = [c.name for c in configs]
        return configs

    def leftover_uploads(self) -> list[str]:
        client = self.weed.boto3_client()
        found = []
        for name in self.backend_names:
            listed = client.list_multipart_uploads(Bucket=name)
            found.extend(u["UploadId"] for u in listed.get("Uploads", []))
        return found

    async def test_transfer_manager_and_abort(self) -> None:
        from boto3.s3.transfer import TransferConfig

        source = os.path.join(self.workdir, "source.bin")
        target = os.path.join(self.workdir, "target.bin")
        digest = random_file(source, 41 * MiB)
        config = TransferConfig(multipart_threshold=8 * MiB, multipart_chunksize=8 * MiB,
                                max_concurrency=4)
        await self.call(self.s3.upload_file, source, "vb", "big.bin", Config=config)
        head = await self.call(self.s3.head_object, Bucket="vb", Key="big.bin")
        self.assertTrue(head["ETag"].endswith('-6"'), head["ETag"])
        await self.call(self.s3.download_file, "vb", "big.bin", target)
        self.assertEqual(file_md5(target), digest)

        created = await self.call(self.s3.create_multipart_upload, Bucket="vb", Key="gone")
        await self.call(self.s3.upload_part, Bucket="vb", Key="gone",
                        UploadId=created["UploadId"], PartNumber=1, Body=b"x" * 1000)
        self.assertEqual(len(await self.call(self.leftover_uploads)), 1)
        await self.call(self.s3.abort_multipart_upload, Bucket="vb", Key="gone",
                        UploadId=created["UploadId"])
        self.assertEqual(await self.call(self.leftover_uploads), [])

