"""Authentication edges through a real socket, real clients and SeaweedFS-backed real buckets:
unsigned ``x-amz-*`` headers on presigned URLs, what the AWS SDK for JavaScript v3 presigns,
query parameters we refuse or ignore, SigV2 on a bucket as botocore signs it, errors about
headers that are not UTF-8, and the access line of each."""

from __future__ import annotations

import socket
from email.utils import formatdate
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from test.test_clients_auth import (
    MAIN_KEY,
    MAIN_SECRET,
    SeaweedAuthCase,
    curl,
    error_code,
    send,
    signed_headers,
)

pytestmark = pytest.mark.timeout(180)


def presign(endpoint: str, method: str, key: str, **params: Any) -> str:
    """A SigV4 presigned URL from boto3 (what ``generate_presigned_url`` gives users)."""
    import boto3
    from botocore.config import Config as BotoConfig

    client = boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id=MAIN_KEY,
        aws_secret_access_key=MAIN_SECRET, region_name="us-east-1",
        config=BotoConfig(s3={"addressing_style": "path"}, signature_version="s3v4"),
    )  # fmt: skip
    return str(
        client.generate_presigned_url(method, Params={"Bucket": "vb", "Key": key, **params})
    )


def presign_v2(endpoint: str, method: str, key: str) -> str:
    """A SigV2 query-string URL (``AWSAccessKeyId``, ``Expires``, ``Signature``) from boto3."""
    import boto3
    from botocore.config import Config as BotoConfig

    client = boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id=MAIN_KEY,
        aws_secret_access_key=MAIN_SECRET, region_name="us-east-1",
        config=BotoConfig(s3={"addressing_style": "path"}, signature_version="s3"),
    )  # fmt: skip
    return str(client.generate_presigned_url(method, Params={"Bucket": "vb", "Key": key}))


def presign_like_javascript_sdk(
    method: str, url: str, operation: str, extra: list[tuple[str, str]] = ()  # type: ignore[assignment]
) -> str:
    """A presigned URL as ``@aws-sdk/s3-request-presigner`` (v3) makes it.

    The JavaScript SDK sets ``X-Amz-Content-Sha256: UNSIGNED-PAYLOAD`` and, since 3.729, the
    checksum headers of the (empty) body it saw at signing time, then hoists every ``x-amz-*``
    header into the query, where the signature covers them like any parameter, next to
    ``x-id``.  botocore's query signer signs every parameter already in the URL and uses
    ``UNSIGNED-PAYLOAD`` as the payload hash: the same canonical request.
    """
    from botocore.auth import S3SigV4QueryAuth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    params = [("X-Amz-Content-Sha256", "UNSIGNED-PAYLOAD"), *extra, ("x-id", operation)]
    request = AWSRequest(method=method, url=f"{url}?{urlencode(params, quote_via=quote)}")
    S3SigV4QueryAuth(Credentials(MAIN_KEY, MAIN_SECRET), "s3", "us-east-1", 900).add_auth(request)
    return str(request.url)


def raw_exchange(port: int, request: bytes) -> bytes:
    """Send raw bytes, read the whole answer (the request asks for Connection: close)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(request)
        answer = b""
        while len(answer) < 1 << 20:
            chunk = connection.recv(65536)
            if not chunk:
                break
            answer += chunk
    return answer


class AccessLines:
    """The ``s3balance.access`` lines logged while it is installed."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, event: dict[str, Any]) -> None:
        if event.get("log_namespace") == "s3balance.access":
            self.lines.append(formatEvent(event))


class AuthEdgeTests(SeaweedAuthCase, unittest.TestCase):
    timeout = 150

    async def start(self) -> None:
        await super().start()
        self.access = AccessLines()
        globalLogPublisher.addObserver(self.access)
        self.addCleanup(globalLogPublisher.removeObserver, self.access)

    def line_for(self, fragment: str) -> str:
        found = [line for line in self.access.lines if fragment in line]
        self.assertTrue(found, f"no access line with {fragment!r} in {self.access.lines}")
        return found[-1]

    # -- presigned URLs and unsigned x-amz-* headers ----------------------------------------------

    async def test_unsigned_copy_source_on_a_presigned_put_is_refused(self) -> None:
        """An upload URL must not become read access to another object (issue 13, 3)."""
        main = self.client_for(MAIN_KEY, MAIN_SECRET)
        await self.call(main.put_object, Bucket="vb", Key="secret", Body=b"top secret")
        endpoint = self.daemon.endpoint
        upload_url = presign(endpoint, "put_object", "upload")
        stolen = await self.call(
            curl, upload_url, method="PUT", headers={"x-amz-copy-source": "vb/secret"}
        )
        self.assertEqual((stolen.status, stolen.code), (403, "AccessDenied"))
        self.assertIn(
            b"There were headers present in the request which were not signed", stolen.body
        )
        self.assertIn(b"<HeadersNotSigned>x-amz-copy-source</HeadersNotSigned>", stolen.body)
        # UploadPart: the same trick turns it into UploadPartCopy.
        upload = await self.call(main.create_multipart_upload, Bucket="vb", Key="parts")
        part_url = presign(
            endpoint, "upload_part", "parts", UploadId=upload["UploadId"], PartNumber=1
        )
        stolen = await self.call(
            curl, part_url, method="PUT", headers={"x-amz-copy-source": "vb/secret"}
        )
        self.assertEqual((stolen.status, stolen.code), (403, "AccessDenied"))
        parts = await self.call(
            main.list_parts, Bucket="vb", Key="parts", UploadId=upload["UploadId"]
        )
        self.assertEqual(parts.get("Parts", []), [])
        # Unsigned metadata, ACLs, tagging: refused too, nothing stored.
        for name, value in (("x-amz-meta-owner", "mallory"), ("x-amz-acl", "public-read"),
                            ("X-Amz-Storage-Class", "GLACIER")):  # fmt: skip
            refused = await self.call(
                curl, upload_url, method="PUT", headers={name: value}, upload=b"data"
            )
            self.assertEqual((refused.status, refused.code), (403, "AccessDenied"), name)
            self.assertIn(name.lower().encode(), refused.body)
        self.assertEqual(await self.keys_in(), ["secret"])
        self.assertIn("AccessDenied", self.line_for("PUT /vb/upload CopyObject 403"))

        # What the URL was made for still works, from curl as from a browser.
        done = await self.call(curl, upload_url, method="PUT", upload=b"uploaded")
        self.assertEqual(done.status, 200)
        # x-amz-content-sha256 may stay unsigned: its value is the payload hash it signs.
        done = await self.call(
            curl, upload_url, method="PUT", upload=b"uploaded",
            headers={"x-amz-content-sha256": "UNSIGNED-PAYLOAD"},
        )  # fmt: skip
        self.assertEqual(done.status, 200)
        got = await self.call(curl, presign(endpoint, "get_object", "upload"))
        self.assertEqual((got.status, got.body), (200, b"uploaded"))
        # Headers the presigner signed are welcome (boto3 signs Metadata as headers).
        with_meta = presign(endpoint, "put_object", "meta", Metadata={"owner": "alice"})
        done = await self.call(
            curl, with_meta, method="PUT", upload=b"m", headers={"x-amz-meta-owner": "alice"}
        )
        self.assertEqual(done.status, 200)
        head = await self.call(main.head_object, Bucket="vb", Key="meta")
        self.assertEqual(head["Metadata"], {"owner": "alice"})
        self.assertEqual(await self.keys_in(), ["meta", "secret", "upload"])

    async def test_sigv2_query_urls_sign_every_amz_header(self) -> None:
        """SigV2 puts every ``x-amz-*`` header in the string to sign: an added one breaks it."""
        main = self.client_for(MAIN_KEY, MAIN_SECRET)
        await self.call(main.put_object, Bucket="vb", Key="secret", Body=b"top secret")
        url = presign_v2(self.daemon.endpoint, "put_object", "upload")
        self.assertIn("Signature=", url)
        # (curl would add a Content-Type of its own to an upload; SigV2 signs Content-Type.)
        no_type = {"Content-Type": ""}
        stolen = await self.call(
            curl, url, method="PUT", headers={**no_type, "x-amz-copy-source": "vb/secret"},
            upload=b"v2 upload",
        )  # fmt: skip
        self.assertEqual((stolen.status, stolen.code), (403, "SignatureDoesNotMatch"))
        done = await self.call(curl, url, method="PUT", headers=no_type, upload=b"v2 upload")
        self.assertEqual(done.status, 200)
        self.assertEqual(await self.keys_in(), ["secret", "upload"])

    # -- the query string -------------------------------------------------------------------------

    async def test_presigned_urls_of_the_javascript_sdk_v3(self) -> None:
        """Refused with 501 by routing after the signature verified (issue 12, 3)."""
        base = f"{self.daemon.endpoint}/vb/js.txt"
        put_url = presign_like_javascript_sdk(
            "PUT", base, "PutObject",
            [("x-amz-checksum-crc32", "AAAAAA=="), ("x-amz-sdk-checksum-algorithm", "CRC32")],
        )  # fmt: skip
        self.assertIn("x-amz-checksum-crc32=AAAAAA%3D%3D", put_url)
        done = await self.call(curl, put_url, method="PUT", upload=b"from a browser")
        self.assertEqual((done.status, done.code), (200, ""), done.body)
        get_url = presign_like_javascript_sdk(
            "GET", base, "GetObject", [("response-content-type", "text/plain")]
        )
        got = await self.call(curl, get_url)
        self.assertEqual((got.status, got.body), (200, b"from a browser"))
        self.assertEqual(got.headers["content-type"], "text/plain")
        # The extra parameters are signed: changing one is a forgery.
        forged = put_url.replace("x-id=PutObject", "x-id=GetObject")
        refused = await self.call(curl, forged, method="PUT", upload=b"x")
        self.assertEqual((refused.status, refused.code), (403, "SignatureDoesNotMatch"))
        self.assertIn("PutObject", self.line_for("PUT /vb/js.txt PutObject 200"))

    async def test_minio_listing_with_metadata_and_refused_subresources(self) -> None:
        main = self.client_for(MAIN_KEY, MAIN_SECRET)
        await self.call(main.put_object, Bucket="vb", Key="a/one", Body=b"1")
        port = self.daemon.port_number
        target = "/vb?list-type=2&metadata=true&prefix=a%2F"
        url = f"http://127.0.0.1:{port}{target}"
        listed = await self.call(send, port, "GET", target, signed_headers("GET", url, MAIN_KEY,
                                                                           MAIN_SECRET))
        self.assertEqual(listed.status, 200, listed.body)
        self.assertIn(b"<Key>a/one</Key>", listed.body)
        # PUT ?cors must never overwrite anything; ?newthing neither.
        for query in ("cors", "website", "newthing", "x-amz-acl=public-read"):
            target = f"/vb/a/one?{query}"
            url = f"http://127.0.0.1:{port}{target}"
            refused = await self.call(
                send, port, "PUT", target,
                signed_headers("PUT", url, MAIN_KEY, MAIN_SECRET, body=b"<x/>"), b"<x/>",
            )  # fmt: skip
            self.assertEqual((refused.status, refused.code), (501, "NotImplemented"), query)
            name = query.partition("=")[0]
            self.assertIn(name.encode(), refused.body)
            line = self.line_for(f"PUT /vb/a/one NotImplemented[{name}] 501 NotImplemented")
            self.assertNotIn("Signature", line)
        got = await self.call(main.get_object, Bucket="vb", Key="a/one")
        self.assertEqual(got["Body"].read(), b"1")

    # -- SigV2 on a bucket ----------------------------------------------------------------------

    async def test_sigv2_bucket_requests_as_botocore_signs_them(self) -> None:
        """botocore signs ``/vb/`` for ``GET /vb``: refused with SignatureDoesNotMatch before."""
        v2 = self.client_for(MAIN_KEY, MAIN_SECRET, signature_version="s3")
        await self.call(v2.put_object, Bucket="vb", Key="k", Body=b"v2")
        listed = await self.call(v2.list_objects, Bucket="vb")
        self.assertEqual([o["Key"] for o in listed["Contents"]], ["k"])
        listed = await self.call(v2.list_objects_v2, Bucket="vb", Prefix="k")
        self.assertEqual(listed["KeyCount"], 1)
        await self.call(v2.head_bucket, Bucket="vb")
        location = await self.call(v2.get_bucket_location, Bucket="vb")
        self.assertIn("LocationConstraint", location)
        deleted = await self.call(
            v2.delete_objects, Bucket="vb", Delete={"Objects": [{"Key": "k"}]}
        )
        self.assertEqual([d["Key"] for d in deleted["Deleted"]], ["k"])
        wrong = self.client_for(MAIN_KEY, "not-the-secret", signature_version="s3")
        error = await self.error_of(wrong.list_objects, Bucket="vb")
        self.assertEqual(error[:2], ("SignatureDoesNotMatch", 403))

    # -- errors about bytes that are not UTF-8 --------------------------------------------------

    async def test_errors_about_non_utf8_headers_render(self) -> None:
        """A raw 0xE9 in a header of a request failing auth dropped the connection unanswered."""
        port = self.daemon.port_number
        date = formatdate(usegmt=True).encode()
        requests = [
            # SigV2: x-amz-* headers are in the string to sign the error shows.
            b"GET /vb/x HTTP/1.1\r\nHost: 127.0.0.1\r\nDate: " + date + b"\r\n"
            b"x-amz-meta-name: caf\xe9\r\nAuthorization: AWS " + MAIN_KEY.encode()
            + b":bm90IGl0\r\nConnection: close\r\n\r\n",
            # An authorization type that is not one, its name shown in the error.
            b"GET /vb/x HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Caf\xe9 x\r\n"
            b"Connection: close\r\n\r\n",
        ]
        # SigV4 with a signed header whose value is not UTF-8 and a wrong signature: the error
        # shows the canonical request.
        headers = signed_headers(
            "GET", f"http://127.0.0.1:{port}/vb/x", MAIN_KEY, MAIN_SECRET,
            headers={"x-amz-meta-name": "cafe"},
        )  # fmt: skip
        lines = b"".join(
            f"{name}: {value}\r\n".encode()
            for name, value in headers.items()
            if name.lower() != "x-amz-meta-name"
        )
        requests.append(
            b"GET /vb/x HTTP/1.1\r\n" + lines + b"x-amz-meta-name: caf\xe9\r\n"
            b"Connection: close\r\n\r\n"
        )
        expected = ["SignatureDoesNotMatch", "InvalidArgument", "SignatureDoesNotMatch"]
        for request, code in zip(requests, expected, strict=True):
            answer = await self.call(raw_exchange, port, request)
            self.assertTrue(answer.startswith(b"HTTP/1.1 4"), answer[:200])
            head, _, body = answer.partition(b"\r\n\r\n")
            self.assertIn(b"content-type: application/xml", head.lower())
            self.assertEqual(error_code(body), code, body)
        self.assertEqual(await self.keys_in(), [])
