"""Bodies the daemon reads into memory (issue 13, 2): refused before they are read when the
request fails authentication or declares more than its operation allows, held within one memory
budget, and never written to a temporary file.  Real sockets against the in-process daemon."""

from __future__ import annotations

import base64
import hashlib
import secrets
import socket
import tempfile

from twisted.internet import reactor, task
from twisted.trial import unittest

from s3balance.config import BucketConfig, Config
from s3balance.metrics import REFUSALS
from s3balance.web.bodies import BodyBudget
from test.support.daemon import DaemonTestCase, in_thread, seaweed_buckets
from test.support.rawhttp import exchange, read_until_closed


def refusals(reason: str) -> float:
    return REFUSALS.labels(reason)._value.get()


def headers_only(target: str, length: int, method: str = "POST", extra: str = "") -> bytes:
    return (
        f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {length}\r\n"
        f"{extra}\r\n"
    ).encode()


class UnauthenticatedBodyTests(DaemonTestCase, unittest.TestCase):
    timeout = 60

    def configure(self, config: Config) -> None:
        config.s3api.auth_required = True
        config.s3api.access_key = "MAINKEY"
        config.s3api.secret_key = "main-secret"

    async def test_an_unsigned_body_is_refused_before_it_is_read(self) -> None:
        before = refusals("unauthenticated")
        # Only the headers of a 1 MB DeleteObjects body: the answer comes without the body.
        answer = await in_thread(
            exchange, self.daemon.port_number, headers_only("/vb?delete", 1_000_000), 10.0
        )
        self.assertTrue(answer.startswith(b"HTTP/1.1 403 "), answer[:200])
        self.assertIn(b"<Code>AccessDenied</Code>", answer)
        self.assertEqual(refusals("unauthenticated") - before, 1)

    async def test_a_bad_signature_is_refused_before_the_body(self) -> None:
        extra = (
            "x-amz-date: 20260101T000000Z\r\nx-amz-content-sha256: UNSIGNED-PAYLOAD\r\n"
            "Authorization: AWS4-HMAC-SHA256 Credential=MAINKEY/20260101/us-east-1/s3/"
            "aws4_request, SignedHeaders=host;x-amz-date, Signature=" + "0" * 64 + "\r\n"
        )
        answer = await in_thread(
            exchange, self.daemon.port_number,
            headers_only("/vb?delete", 1_000_000, extra=extra), 10.0,
        )  # fmt: skip
        self.assertTrue(answer.startswith(b"HTTP/1.1 403 "), answer[:200])


class BodyCapTests(DaemonTestCase, unittest.TestCase):
    timeout = 60

    async def test_a_declared_length_above_the_operation_cap_is_refused_at_once(self) -> None:
        port = self.daemon.port_number
        for target, method, length in (
            ("/vb?delete", "POST", (2 << 20) + 1),
            ("/vb/k?uploadId=x", "POST", (4 << 20) + 1),
            ("/vb?acl", "PUT", (64 << 10) + 1),
        ):
            answer = await in_thread(exchange, port, headers_only(target, length, method), 10.0)
            self.assertTrue(answer.startswith(b"HTTP/1.1 400 "), (target, answer[:200]))
            self.assertIn(b"<Code>MaxMessageLengthExceeded</Code>", answer)

    async def test_a_chunked_body_is_cut_at_the_cap(self) -> None:
        chunk = b"x" * 65536

        def send() -> bytes:
            with socket.create_connection(("127.0.0.1", self.daemon.port_number)) as sock:
                sock.sendall(
                    b"PUT /vb?acl HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    b"Transfer-Encoding: chunked\r\n\r\n"
                )
                try:
                    for _ in range(4):
                        sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                except OSError:
                    pass  # the daemon answered and closed: the rest is refused
                return read_until_closed(sock, 10.0)

        answer = await in_thread(send)
        self.assertTrue(answer.startswith(b"HTTP/1.1 400 "), answer[:200])
        self.assertIn(b"<Code>MaxMessageLengthExceeded</Code>", answer)

    async def test_bodies_share_one_memory_budget(self) -> None:
        site = self.daemon.site
        site.body_budget = BodyBudget(100_000)
        port = self.daemon.port_number
        before = refusals("body_budget")
        holder = socket.create_connection(("127.0.0.1", port), timeout=10)
        try:
            holder.sendall(headers_only("/vb?acl", 60_000, "PUT"))
            for _ in range(200):
                if site.body_budget.held:
                    break
                await task.deferLater(reactor, 0.02, lambda: None)
            self.assertEqual(site.body_budget.held, 60_000)
            answer = await in_thread(exchange, port, headers_only("/vb?acl", 60_000, "PUT"))
            self.assertTrue(answer.startswith(b"HTTP/1.1 503 "), answer[:200])
            self.assertIn(b"<Code>SlowDown</Code>", answer)
            self.assertEqual(refusals("body_budget") - before, 1)
        finally:
            holder.close()
        for _ in range(200):
            if not site.body_budget.held:
                break
            await task.deferLater(reactor, 0.02, lambda: None)
        self.assertEqual(site.body_budget.held, 0)
        body = b"<AccessControlPolicy>" + b" " * 50_000 + b"</AccessControlPolicy>"
        answer = await in_thread(
            exchange, port, headers_only("/vb?acl", len(body), "PUT", "Connection: close\r\n")
            + body,
        )
        self.assertNotIn(b"SlowDown", answer)
        self.assertFalse(answer.startswith(b"HTTP/1.1 503"), answer[:200])
        self.assertEqual(site.body_budget.held, 0)

    async def test_a_large_document_stays_in_memory(self) -> None:
        def no_temporary_file(*args: object, **kwargs: object) -> object:
            raise AssertionError("a request body went to a temporary file")

        self.patch(tempfile, "TemporaryFile", no_temporary_file)
        keys = "".join(
            f"<Object><Key>{index:06d}-{'k' * 100}</Key></Object>" for index in range(1000)
        )
        body = f"<Delete><Quiet>true</Quiet>{keys}</Delete>".encode()
        self.assertGreater(len(body), 100_000)  # Twisted's threshold for a temporary file
        md5 = base64.b64encode(hashlib.md5(body).digest()).decode()
        request = headers_only(
            "/vb?delete", len(body), "POST", f"Content-MD5: {md5}\r\nConnection: close\r\n"
        )
        answer = await in_thread(exchange, self.daemon.port_number, request + body)
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 "), answer[:300])
        self.assertIn(b"<DeleteResult", answer)


class SignedBodyTests(DaemonTestCase, unittest.TestCase):
    timeout = 60

    def configure(self, config: Config) -> None:
        config.s3api.auth_required = True
        config.s3api.access_key = "MAINKEY"
        config.s3api.secret_key = "main-secret"

    async def test_a_signed_buffered_body_must_match_its_payload_hash(self) -> None:
        await self.assert_delete_refused_and_nothing_deleted(
            signed_body=b"<Delete><Object><Key>gone</Key></Object></Delete>"
        )

    async def test_a_body_signed_as_empty_must_be_empty(self) -> None:
        """A request signed with the empty body's hash (as every GET is) that carries a body
        anyway is refused, not served with bytes nobody signed."""
        await self.assert_delete_refused_and_nothing_deleted(signed_body=b"")

    async def assert_delete_refused_and_nothing_deleted(self, signed_body: bytes) -> None:
        """Send DeleteObjects of "keep" with a valid Content-MD5, signed for ``signed_body``
        instead: 400 XAmzContentSHA256Mismatch, and "keep" is still there."""
        from botocore.auth import S3SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        await self.call(self.s3_main().put_object, Bucket="vb", Key="keep", Body=b"x")
        sent_body = b"<Delete><Object><Key>keep</Key></Object></Delete>"
        md5 = base64.b64encode(hashlib.md5(sent_body).digest()).decode()
        url = f"{self.daemon.endpoint}/vb?delete"
        signed = AWSRequest(method="POST", url=url, data=signed_body, headers={
            "Content-MD5": md5,
            "x-amz-content-sha256": hashlib.sha256(signed_body).hexdigest(),
        })  # fmt: skip
        S3SigV4Auth(Credentials("MAINKEY", "main-secret"), "s3", "us-east-1").add_auth(signed)
        head = "".join(f"{name}: {value}\r\n" for name, value in signed.headers.items())
        request = (
            f"POST /vb?delete HTTP/1.1\r\nHost: 127.0.0.1:{self.daemon.port_number}\r\n{head}"
            f"Content-Length: {len(sent_body)}\r\nConnection: close\r\n\r\n"
        ).encode() + sent_body
        answer = await in_thread(exchange, self.daemon.port_number, request)
        self.assertTrue(answer.startswith(b"HTTP/1.1 400 "), answer[:300])
        self.assertIn(b"<Code>XAmzContentSHA256Mismatch</Code>", answer)
        listed = await self.call(self.s3_main().list_objects_v2, Bucket="vb")
        self.assertEqual([o["Key"] for o in listed["Contents"]], ["keep"])

    def s3_main(self):  # type: ignore[no-untyped-def]
        import boto3

        return boto3.client(
            "s3", endpoint_url=self.daemon.endpoint, aws_access_key_id="MAINKEY",
            aws_secret_access_key="main-secret", region_name="us-east-1",
        )  # fmt: skip


class SeaweedBufferedBodyTests(SignedBodyTests):
    """The documents real clients send, over real S3 buckets (SeaweedFS, whose XML answers go
    through defusedxml too), with signatures on: served as before."""

    timeout = 180

    def real_bucket_configs(self, workdir: str) -> list[BucketConfig]:
        from test.support.seaweedfs import seaweed_or_skip

        weed = seaweed_or_skip()
        suffix = secrets.token_hex(4)
        return seaweed_buckets(weed, [f"s3b-body-{suffix}", f"s3b-body2-{suffix}"])

    async def test_documents_from_boto3_are_served(self) -> None:
        s3 = self.s3_main()
        for index in range(3):
            await self.call(s3.put_object, Bucket="vb", Key=f"k{index}", Body=b"x" * index)
        deleted = await self.call(
            s3.delete_objects, Bucket="vb",
            Delete={"Objects": [{"Key": "k0"}, {"Key": "k1"}]},
        )  # fmt: skip
        self.assertEqual(sorted(d["Key"] for d in deleted["Deleted"]), ["k0", "k1"])
        upload = await self.call(s3.create_multipart_upload, Bucket="vb", Key="mp")
        part = await self.call(
            s3.upload_part, Bucket="vb", Key="mp", UploadId=upload["UploadId"], PartNumber=1,
            Body=b"part" * 1000,
        )  # fmt: skip
        await self.call(
            s3.complete_multipart_upload, Bucket="vb", Key="mp", UploadId=upload["UploadId"],
            MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]},
        )  # fmt: skip
        got = await self.call(s3.get_object, Bucket="vb", Key="mp")
        self.assertEqual(got["Body"].read(), b"part" * 1000)
        await self.call(s3.put_bucket_acl, Bucket="vb", ACL="private")
        listed = await self.call(s3.list_objects_v2, Bucket="vb")
        self.assertEqual(sorted(o["Key"] for o in listed["Contents"]), ["k2", "mp"])
        self.assertEqual(self.daemon.site.body_budget.held, 0)  # type: ignore[union-attr]
