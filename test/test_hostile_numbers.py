"""Integers of thousands of digits in every parameter that carries one (issue 13, 2): each gets
S3's 4xx answer, never a 500 (Python refuses to convert more than 4,300 digits).  Real sockets
against the in-process daemon."""

from __future__ import annotations

import http.client
import time
from urllib.parse import urlsplit

import pytest
from twisted.trial import unittest

from s3balance.config import Config
from s3balance.integers import BEYOND_ANY_VALUE, TooManyDigits, parse_decimal
from test.support.daemon import DaemonTestCase, in_thread
from test.test_multipart_e2e import MultipartDaemonCase

HUGE = "9" * 5000


def request(
    port: int, method: str, target: str, headers: dict[str, str] | None = None, body: bytes = b""
) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        connection.request(method, target, body=body or None, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def code(answer: bytes) -> str:
    start = answer.find(b"<Code>")
    return answer[start + 6 : answer.find(b"</Code>")].decode() if start >= 0 else ""


@pytest.mark.parametrize(
    "text, expected",
    [("0", 0), ("007", 7), ("18446744073709551615", None), ("9" * 19, 10**19 - 1),
     ("0" * 5000 + "12", 12)],
)  # fmt: skip
def test_parse_decimal_accepts(text: str, expected: int | None) -> None:
    if expected is None:
        with pytest.raises(TooManyDigits):
            parse_decimal(text)
    else:
        assert parse_decimal(text) == expected


@pytest.mark.parametrize("text", ["", "-1", "+1", " 1", "1_000", "1.0", "٣", "²", "1e3", HUGE])
def test_parse_decimal_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_decimal(text)


def test_parse_decimal_maximum() -> None:
    assert parse_decimal("2147483647", maximum=2**31 - 1) == 2**31 - 1
    with pytest.raises(ValueError):
        parse_decimal("2147483648", maximum=2**31 - 1)
    assert BEYOND_ANY_VALUE > 10**19 - 1


class AnonymousNumberTests(MultipartDaemonCase, unittest.TestCase):
    """Parameters read after authentication (auth off: any request reaches them)."""

    timeout = 120

    async def test_every_integer_parameter(self) -> None:
        port = self.daemon.port_number
        await self.call(self.s3.put_object, Bucket="vb", Key="k", Body=b"0123456789")
        upload = await self.call(self.s3.create_multipart_upload, Bucket="vb", Key="m")
        upload_id = upload["UploadId"]
        cases = [
            ("GET", f"/vb?list-type=2&max-keys={HUGE}", {}, 400, "InvalidArgument"),
            ("GET", f"/vb?max-keys={HUGE}", {}, 400, "InvalidArgument"),
            ("GET", f"/vb?versions&max-keys={HUGE}", {}, 400, "InvalidArgument"),
            ("GET", f"/vb?uploads&max-uploads={HUGE}", {}, 400, "InvalidArgument"),
            ("GET", f"/vb/m?uploadId={upload_id}&max-parts={HUGE}", {}, 400, "InvalidArgument"),
            ("GET", f"/vb/m?uploadId={upload_id}&part-number-marker={HUGE}", {}, 400,
             "InvalidArgument"),
            ("GET", f"/vb/k?partNumber={HUGE}", {}, 400, "InvalidArgument"),
            ("HEAD", f"/vb/k?partNumber={HUGE}", {}, 400, ""),
            ("PUT", f"/vb/m?uploadId={upload_id}&partNumber={HUGE}", {}, 400, "InvalidArgument"),
            ("GET", "/vb/k", {"Range": f"bytes={HUGE}-"}, 416, "InvalidRange"),
            ("GET", "/vb/k", {"Range": f"bytes=-{HUGE}"}, 206, ""),
            ("GET", "/vb/k", {"Range": f"bytes=2-{HUGE}"}, 206, ""),
            ("PUT", f"/vb/m?uploadId={upload_id}&partNumber=1",
             {"x-amz-copy-source": "/vb/k", "x-amz-copy-source-range": f"bytes={HUGE}-{HUGE}"},
             416, "InvalidRange"),
            ("PUT", f"/vb/m?uploadId={upload_id}&partNumber=1",
             {"x-amz-copy-source": "/vb/k", "x-amz-copy-source-range": f"bytes=5-{HUGE}"},
             416, "InvalidRange"),
        ]  # fmt: skip
        for method, target, headers, status, expected_code in cases:
            body = b"x" if method == "PUT" and "x-amz-copy-source" not in headers else b""
            got_status, answer = await in_thread(request, port, method, target, headers, body)
            self.assertEqual(
                (got_status, code(answer)), (status, expected_code), (method, target[:80], headers)
            )


class SignedNumberTests(DaemonTestCase, unittest.TestCase):
    """Parameters read while authenticating."""

    timeout = 60

    def configure(self, config: Config) -> None:
        config.s3api.auth_required = True
        config.s3api.access_key = "MAINKEY"
        config.s3api.secret_key = "main-secret"

    async def test_presigned_expiry_parameters(self) -> None:
        port = self.daemon.port_number
        now = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        v4 = (
            "/vb/k?X-Amz-Algorithm=AWS4-HMAC-SHA256"
            f"&X-Amz-Credential=MAINKEY%2F{now[:8]}%2Fus-east-1%2Fs3%2Faws4_request"
            f"&X-Amz-Date={now}&X-Amz-Expires={HUGE}&X-Amz-SignedHeaders=host"
            f"&X-Amz-Signature={'0' * 64}"
        )
        status, answer = await in_thread(request, port, "GET", v4)
        self.assertEqual((status, code(answer)), (400, "AuthorizationQueryParametersError"))
        v2 = f"/vb/k?AWSAccessKeyId=MAINKEY&Expires={HUGE}&Signature=abc"
        status, answer = await in_thread(request, port, "GET", v2)
        self.assertEqual((status, code(answer)), (403, "AccessDenied"))

    async def test_expires_zero_has_expired(self) -> None:
        # botocore's own signer (boto3's CRT signer refuses an expiry of 0).
        from botocore.auth import S3SigV4QueryAuth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        signed = AWSRequest(method="GET", url=f"{self.daemon.endpoint}/vb/k")
        S3SigV4QueryAuth(Credentials("MAINKEY", "main-secret"), "s3", "us-east-1", expires=0
                         ).add_auth(signed)  # fmt: skip
        url = str(signed.url)
        self.assertIn("X-Amz-Expires=0", url)
        parts = urlsplit(url)
        status, answer = await in_thread(request, self.daemon.port_number, "GET",
                                         f"{parts.path}?{parts.query}")  # fmt: skip
        self.assertEqual((status, code(answer)), (403, "AccessDenied"))
        self.assertIn(b"<Message>Request has expired</Message>", answer)
