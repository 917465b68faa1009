"""Real clients against a daemon that requires signatures, over SeaweedFS-backed real buckets:
boto3 (aws-chunked trailer, signed payload, hand-built signed chunks), awscli, s3cmd (SigV4 and
SigV2), presigned URLs fetched with curl and every kind of tampering, scoped and read-only keys,
and virtual-host addressing.

The helpers at the top are shared with ``test_redirect``.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import http.client
import json
import os
import secrets
import subprocess
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from unittest import mock
from urllib.parse import urlsplit

import pytest
from twisted.internet import reactor, task
from twisted.trial import unittest

from s3balance.config import BucketConfig, Config, Credential
from test.support import require_tool, s3client
from test.support.clients import aws_binary
from test.support.daemon import DaemonTestCase, seaweed_buckets, without_write_ids
from test.support.seaweedfs import seaweed_or_skip

MAIN_KEY, MAIN_SECRET = "MAINKEY", "main-secret-0123456789"
READER_KEY, READER_SECRET = "READERKEY", "reader-secret-0123456789"
SCOPED_KEY, SCOPED_SECRET = "SCOPEDKEY", "scoped-secret-0123456789"
#: Every subprocess gets a hard limit well under the tests' own timeouts.
COMMAND_TIMEOUT = 45.0


@dataclass
class Reply:
    """One HTTP answer as a client saw it (the last one, when redirects were followed)."""

    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    @property
    def code(self) -> str:
        """The S3 error code of an XML error body, ``""`` when there is none."""
        return error_code(self.body)


def error_code(body: bytes) -> str:
    if not body.strip():
        return ""
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        return ""
    found = root.find("Code")
    return found.text or "" if found is not None else ""


def clean_env(key: str = MAIN_KEY, secret: str = MAIN_SECRET) -> dict[str, str]:
    """An environment for client subprocesses: our keys, no user config, no CA bundle (it makes
    rclone refuse plain-HTTP endpoints)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_ACCESS_KEY_ID=key,
        AWS_SECRET_ACCESS_KEY=secret,
        AWS_DEFAULT_REGION="us-east-1",
        AWS_CONFIG_FILE="/dev/null",
        AWS_SHARED_CREDENTIALS_FILE="/dev/null",
        AWS_EC2_METADATA_DISABLED="true",
        RCLONE_CONFIG="/dev/null",
    )
    return env


def run(
    args: list[str], env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    """Run a client; the caller checks the return code (failures are often the point)."""
    return subprocess.run(
        args, env=dict(env) if env is not None else clean_env(), capture_output=True,
        timeout=COMMAND_TIMEOUT, check=False,
    )


def run_ok(args: list[str], env: Mapping[str, str] | None = None) -> str:
    done = run(args, env)
    if done.returncode:
        raise AssertionError(
            f"{args} failed ({done.returncode}): {done.stdout.decode()[-2000:]} "
            f"{done.stderr.decode()[-2000:]}"
        )
    return done.stdout.decode()


def _last_header_block(raw: str) -> tuple[int, dict[str, str]]:
    blocks = [b for b in raw.replace("\r\n", "\n").split("\n\n") if b.strip()]
    lines = blocks[-1].split("\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers


def curl(
    url: str,
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
    upload: bytes | None = None,
    follow: bool = False,
) -> Reply:
    """``curl -sS`` (``-L`` when ``follow``); the last response's status, headers and body."""
    with tempfile.TemporaryDirectory(prefix="s3b-curl-") as folder:
        head_path = os.path.join(folder, "head")
        body_path = os.path.join(folder, "body")
        args = ["curl", "-sS", "--max-time", "30", "-D", head_path, "-o", body_path,
                "-X", method]
        if follow:
            args.append("-L")
        for name, value in (headers or {}).items():
            args += ["-H", f"{name}: {value}"]
        if upload is not None:
            upload_path = os.path.join(folder, "upload")
            with open(upload_path, "wb") as file:
                file.write(upload)
            args += ["--data-binary", f"@{upload_path}"]
        args.append(url)
        run_ok(args)
        with open(head_path, encoding="latin-1") as file:
            status, found = _last_header_block(file.read())
        with open(body_path, "rb") as file:
            body = file.read()
    return Reply(status, found, body)


def signed_headers(
    method: str,
    url: str,
    key: str,
    secret: str,
    headers: Mapping[str, str] | None = None,
    body: bytes = b"",
    when: datetime.datetime | None = None,
    payload: str | None = None,
) -> dict[str, str]:
    """Headers of a request signed with botocore's SigV4 (header auth) for ``url`` as written,
    Host included; ``when`` fakes the signing clock; ``payload`` forces ``x-amz-content-sha256``
    (e.g. ``STREAMING-AWS4-HMAC-SHA256-PAYLOAD``, which botocore never sends by itself)."""
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    class Signer(S3SigV4Auth):
        def payload(self, request: Any) -> str:
            return payload if payload is not None else str(super().payload(request))

    request = AWSRequest(method=method, url=url, headers=dict(headers or {}), data=body)
    request.headers["Host"] = urlsplit(url).netloc
    signer = Signer(Credentials(key, secret), "s3", "us-east-1")
    if when is None:
        signer.add_auth(request)
    else:
        with mock.patch("botocore.auth.get_current_datetime", lambda: when):
            signer.add_auth(request)
    return {name: str(value) for name, value in request.headers.items()}


def send(
    port: int, method: str, target: str, headers: Mapping[str, str], body: bytes = b""
) -> Reply:
    """One request on a fresh connection to 127.0.0.1:``port`` with exactly these headers
    (``Host`` among them, so virtual-host names need no DNS)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
        names = {name.lower() for name in headers}
        for name, value in headers.items():
            connection.putheader(name, value)
        if "host" not in names:
            connection.putheader("Host", f"127.0.0.1:{port}")
        if body and "content-length" not in names:
            connection.putheader("Content-Length", str(len(body)))
        connection.endheaders()
        try:
            if body:
                connection.send(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # an early refusal: the answer is still there to read
        response = connection.getresponse()
        data = response.read()
        return Reply(
            response.status, {k.lower(): v for k, v in response.getheaders()}, data
        )
    finally:
        connection.close()



class SeaweedAuthCase(DaemonTestCase):
    """A daemon with signatures required, over two SeaweedFS buckets: the main key, a read-only
    key limited to ``vb`` and a key limited to ``other``."""

    def real_bucket_configs(self, workdir: str) -> list[BucketConfig]:
        self.weed = seaweed_or_skip()
        suffix = secrets.token_hex(4)
        configs = seaweed_buckets(self.weed, [f"s3b-ca1-{suffix}", f"s3b-ca2-{suffix}"])
        self.backend_names = [c.name for c in configs]
        return configs

    def configure(self, config: Config) -> None:
        config.s3api.auth_required = True
        config.s3api.access_key = MAIN_KEY
        config.s3api.secret_key = MAIN_SECRET
        config.s3api.credentials = [
            Credential(READER_KEY, READER_SECRET, buckets=["vb"], read_only=True),
            Credential(SCOPED_KEY, SCOPED_SECRET, buckets=["other"]),
        ]

    def client_for(self, key: str, secret: str, **options: Any) -> Any:
        return s3client.boto3_client(self.daemon.endpoint, key, secret, **options)

    async def keys_in(self, bucket: str = "vb") -> list[str]:
        """The keys the metadata store shows in a virtual bucket."""
        page = await self.daemon.store.list_objects(bucket, "", "", "", 1000)
        return [entry.key for entry in page.objects]

    async def real_keys(self) -> list[str]:
        keys: list[str] = []
        for name in self.backend_names:
            keys.extend(await self.daemon.real_keys(name))
        return sorted(keys)


def _chunk_signature(key: bytes, timestamp: str, scope: str, previous: str, data: bytes) -> str:
    to_sign = "\n".join(
        [
            "AWS4-HMAC-SHA256-PAYLOAD",
            timestamp,
            scope,
            previous,
            hashlib.sha256(b"").hexdigest(),
            hashlib.sha256(data).hexdigest(),
        ]
    )
    return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()


def signed_chunked_put(
    endpoint: str, target: str, chunks: list[bytes], flip: tuple[int, int] | None = None
) -> tuple[dict[str, str], bytes]:
    """Headers and body of a ``STREAMING-AWS4-HMAC-SHA256-PAYLOAD`` PUT (what the Java and Go SDKs
    send; botocore never does), signed with the main key; ``flip = (chunk, offset)`` alters one
    byte of one chunk after signing."""
    decoded = sum(len(chunk) for chunk in chunks)
    frame_sizes = sum(
        len(f"{len(c):x};chunk-signature=".encode()) + 64 + 2 + len(c) + 2 for c in [*chunks, b""]
    )
    headers = signed_headers(
        "PUT", f"{endpoint}{target}", MAIN_KEY, MAIN_SECRET,
        headers={
            "Content-Encoding": "aws-chunked",
            "x-amz-decoded-content-length": str(decoded),
            "Content-Length": str(frame_sizes),
        },
        payload="STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
    )
    timestamp = headers["X-Amz-Date"]
    previous = headers["Authorization"].rsplit("Signature=", 1)[1]
    scope = f"{timestamp[:8]}/us-east-1/s3/aws4_request"
    k_date = hmac.new(f"AWS4{MAIN_SECRET}".encode(), timestamp[:8].encode(), hashlib.sha256)
    key = k_date.digest()
    for part in ("us-east-1", "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    body = []
    for index, data in enumerate([*chunks, b""]):
        previous = _chunk_signature(key, timestamp, scope, previous, data)
        if flip is not None and flip[0] == index:
            altered = bytearray(data)
            altered[flip[1]] ^= 0x01
            data = bytes(altered)
        body.append(f"{len(data):x};chunk-signature={previous}\r\n".encode() + data + b"\r\n")
    raw = b"".join(body)
    assert len(raw) == frame_sizes
    return headers, raw


def s3cmd_config(folder: str, port: int, key: str, secret: str, sigv2: bool) -> str:
    path = os.path.join(folder, f"s3cfg-{key}-{int(sigv2)}")
    with open(path, "w") as file:
        file.write(
            "[default]\n"
            f"access_key = {key}\n"
            f"secret_key = {secret}\n"
            f"host_base = 127.0.0.1:{port}\n"
            f"host_bucket = 127.0.0.1:{port}\n"
            "bucket_location = us-east-1\n"
            "use_https = False\n"
            f"signature_v2 = {sigv2}\n"
            "check_ssl_certificate = False\n"
            "proxy_host =\n"
            "progress_meter = False\n"
            "socket_timeout = 30\n"
            "max_retries = 1\n"
        )
    return path




@pytest.mark.slow
class ClientAuthTests(SeaweedAuthCase, unittest.TestCase):
    timeout = 120

    async def test_boto3_chunked_trailer_and_signed_payload_uploads(self) -> None:
        data = os.urandom(300_000)
        default = self.client_for(MAIN_KEY, MAIN_SECRET)
        await self.call(default.put_object, Bucket="vb", Key="trailer", Body=data)
        # Over plain http botocore signs the payload's SHA-256 when no checksum is needed.
        plain = self.client_for(MAIN_KEY, MAIN_SECRET, request_checksum_calculation="when_required")
        await self.call(plain.put_object, Bucket="vb", Key="sha256", Body=data[::-1])
        got = await self.call(default.get_object, Bucket="vb", Key="trailer")
        self.assertEqual(got["Body"].read(), data)
        got = await self.call(default.get_object, Bucket="vb", Key="sha256")
        self.assertEqual(got["Body"].read(), data[::-1])
        # The real bucket holds the decoded bytes, not the aws-chunked framing.
        record = await self.daemon.store.get_object("vb", "trailer")
        assert record is not None
        location = record.locations[0]
        direct = await self.call(
            self.weed.boto3_client().get_object, Bucket=location.backend, Key=location.real_key
        )
        self.assertEqual(direct["Body"].read(), data)
        # A wrong secret is refused before anything is stored.
        wrong = self.client_for(MAIN_KEY, "not-the-secret")
        code, status, _ = await self.error_of(wrong.put_object, Bucket="vb", Key="no", Body=data)
        self.assertEqual((code, status), ("SignatureDoesNotMatch", 403))
        self.assertEqual(await self.keys_in(), ["sha256", "trailer"])

    async def test_hand_signed_chunked_upload_and_a_flipped_byte(self) -> None:
        chunks = [os.urandom(65536), os.urandom(65536), os.urandom(100)]
        port = self.daemon.port_number
        headers, body = signed_chunked_put(self.daemon.endpoint, "/vb/chunked", chunks)
        reply = await self.call(send, port, "PUT", "/vb/chunked", headers, body)
        self.assertEqual(reply.status, 200, reply.body)
        got = await self.call(self.s3_main().get_object, Bucket="vb", Key="chunked")
        self.assertEqual(got["Body"].read(), b"".join(chunks))
        self.assertEqual(got["ContentLength"], 131172)

        headers, body = signed_chunked_put(
            self.daemon.endpoint, "/vb/flipped", chunks, flip=(1, 1000)
        )
        reply = await self.call(send, port, "PUT", "/vb/flipped", headers, body)
        self.assertEqual((reply.status, reply.code), (403, "SignatureDoesNotMatch"))
        self.assertEqual(await self.keys_in(), ["chunked"])
        self.assertEqual(without_write_ids(await self.real_keys()), ["vb/chunked"])

    def s3_main(self) -> Any:
        return self.client_for(MAIN_KEY, MAIN_SECRET)

    async def test_awscli(self) -> None:
        AWS = aws_binary()
        endpoint = ["--endpoint-url", self.daemon.endpoint]
        source = os.path.join(self.workdir, "cli.txt")
        data = os.urandom(70_000)
        with open(source, "wb") as file:
            file.write(data)
        await self.call(run_ok, [AWS, "s3", "cp", source, "s3://vb/dir/cli.txt", *endpoint])
        listed = await self.call(run_ok, [AWS, "s3", "ls", "s3://vb/dir/", *endpoint])
        self.assertIn("cli.txt", listed)
        self.assertIn("70000", listed)
        await self.call(run_ok, [AWS, "s3api", "put-object", "--bucket", "vb", "--key", "api.bin",
                                 "--body", source, *endpoint])
        back = os.path.join(self.workdir, "back.bin")
        await self.call(run_ok, [AWS, "s3api", "get-object", "--bucket", "vb", "--key", "api.bin",
                                 back, *endpoint])
        with open(back, "rb") as file:
            self.assertEqual(file.read(), data)
        head = json.loads(await self.call(
            run_ok, [AWS, "s3api", "head-object", "--bucket", "vb", "--key", "dir/cli.txt",
                     *endpoint]
        ))
        self.assertEqual(head["ContentLength"], 70000)
        listing = json.loads(await self.call(
            run_ok, [AWS, "s3api", "list-objects-v2", "--bucket", "vb", *endpoint]
        ))
        self.assertEqual([entry["Key"] for entry in listing["Contents"]],
                         ["api.bin", "dir/cli.txt"])
        copied = os.path.join(self.workdir, "copied.txt")
        await self.call(run_ok, [AWS, "s3", "cp", "s3://vb/dir/cli.txt", copied, *endpoint])
        with open(copied, "rb") as file:
            self.assertEqual(file.read(), data)

        # The read-only key reads but cannot write; the scoped key sees only its bucket.
        reader = clean_env(READER_KEY, READER_SECRET)
        await self.call(run_ok, [AWS, "s3", "cp", "s3://vb/api.bin", back, *endpoint], reader)
        refused = await self.call(run, [AWS, "s3", "cp", source, "s3://vb/x", *endpoint], reader)
        self.assertNotEqual(refused.returncode, 0)
        self.assertIn(b"AccessDenied", refused.stderr)
        refused = await self.call(run, [AWS, "s3", "rm", "s3://vb/api.bin", *endpoint], reader)
        self.assertIn(b"AccessDenied", refused.stderr)
        scoped = clean_env(SCOPED_KEY, SCOPED_SECRET)
        refused = await self.call(run, [AWS, "s3", "ls", "s3://vb/", *endpoint], scoped)
        self.assertIn(b"AccessDenied", refused.stderr)
        wrong = clean_env(MAIN_KEY, "wrong-secret")
        refused = await self.call(run, [AWS, "s3", "ls", "s3://vb/", *endpoint], wrong)
        self.assertIn(b"SignatureDoesNotMatch", refused.stderr)
        self.assertEqual(await self.keys_in(), ["api.bin", "dir/cli.txt"])

    async def test_s3cmd_sigv4_and_sigv2(self) -> None:
        S3CMD = require_tool("s3cmd")
        port = self.daemon.port_number
        source = os.path.join(self.workdir, "s3cmd.bin")
        data = os.urandom(50_000)
        with open(source, "wb") as file:
            file.write(data)
        for sigv2 in (False, True):
            config = ["-c", s3cmd_config(self.workdir, port, MAIN_KEY, MAIN_SECRET, sigv2)]
            key = f"s3cmd-v{2 if sigv2 else 4}.bin"
            await self.call(run_ok, [S3CMD, *config, "put", source, f"s3://vb/{key}"])
            back = os.path.join(self.workdir, f"back-{key}")
            await self.call(run_ok, [S3CMD, *config, "get", "--force", f"s3://vb/{key}", back])
            with open(back, "rb") as file:
                self.assertEqual(file.read(), data)
            listed = await self.call(run_ok, [S3CMD, *config, "ls", "s3://vb/"])
            self.assertIn(f"s3://vb/{key}", listed)
            info = await self.call(run_ok, [S3CMD, *config, "info", f"s3://vb/{key}"])
            self.assertIn("50000", info)
            signed = (await self.call(
                run_ok, [S3CMD, *config, "signurl", f"s3://vb/{key}", "+300"]
            )).strip()
            self.assertIn("Signature=", signed)
            fetched = await self.call(curl, signed)
            self.assertEqual((fetched.status, fetched.body), (200, data))
            forged = signed.replace("Expires=", "Expires=1")
            refused = await self.call(curl, forged)
            self.assertEqual((refused.status, refused.code), (403, "SignatureDoesNotMatch"))
            await self.call(run_ok, [S3CMD, *config, "del", f"s3://vb/{key}"])
            self.assertEqual(await self.keys_in(), [])
        wrong = ["-c", s3cmd_config(self.workdir, port, MAIN_KEY, "wrong", True)]
        failed = await self.call(run, [S3CMD, *wrong, "put", source, "s3://vb/no"])
        self.assertNotEqual(failed.returncode, 0)
        self.assertIn(b"SignatureDoesNotMatch", failed.stdout + failed.stderr)
        self.assertEqual(await self.real_keys(), [])


@pytest.mark.slow
class PresignedUrlTests(SeaweedAuthCase, unittest.TestCase):
    """Presigned URLs fetched and put with curl; every tampering refused with S3's code and
    nothing left behind."""

    timeout = 120

    def presign(self, method: str, key: str, expires: int = 300, who: tuple[str, str] = (
            MAIN_KEY, MAIN_SECRET), **params: Any) -> str:
        client = self.client_for(*who, signature_version="s3v4")
        return str(client.generate_presigned_url(
            method, Params={"Bucket": "vb", "Key": key, **params}, ExpiresIn=expires
        ))

    async def assert_refused(self, url: str, code: str, status: int = 403, **options: Any) -> None:
        reply = await self.call(curl, url, **options)
        self.assertEqual((reply.status, reply.code), (status, code), reply.body)

    async def test_presigned_put_and_get_with_curl_and_awscli(self) -> None:
        data = os.urandom(40_000)
        put = await self.call(curl, self.presign("put_object", "up.bin"), method="PUT",
                              upload=data)
        self.assertEqual(put.status, 200, put.body)
        got = await self.call(curl, self.presign("get_object", "up.bin"))
        self.assertEqual((got.status, got.body), (200, data))
        url = (await self.call(run_ok, [aws_binary(), "s3", "presign", "s3://vb/up.bin",
                                        "--endpoint-url", self.daemon.endpoint])).strip()
        got = await self.call(curl, url)
        self.assertEqual((got.status, got.body), (200, data))

    async def test_tampered_presigned_urls(self) -> None:
        data = b"presigned payload"
        put_url = self.presign("put_object", "t.bin")
        await self.assert_refused(put_url.replace("/vb/t.bin", "/vb/u.bin"),
                                  "SignatureDoesNotMatch", method="PUT", upload=data)
        await self.assert_refused(put_url.replace("X-Amz-Expires=300", "X-Amz-Expires=301"),
                                  "SignatureDoesNotMatch", method="PUT", upload=data)
        await self.assert_refused(put_url + "&x-id=PutObject", "SignatureDoesNotMatch",
                                  method="PUT", upload=data)
        await self.assert_refused(self.presign("put_object", "t.bin", expires=604801),
                                  "AuthorizationQueryParametersError", 400, method="PUT",
                                  upload=data)
        await self.assert_refused(self.presign("put_object", "t.bin", who=("NOBODY", "x")),
                                  "InvalidAccessKeyId", method="PUT", upload=data)
        await self.assert_refused(f"{self.daemon.endpoint}/vb/t.bin", "AccessDenied",
                                  method="PUT", upload=data)
        short = self.presign("put_object", "t.bin", expires=1)
        await task.deferLater(reactor, 2.2, lambda: None)
        await self.assert_refused(short, "AccessDenied", method="PUT", upload=data)
        self.assertEqual(await self.keys_in(), [])
        self.assertEqual(await self.real_keys(), [])

        main = self.client_for(MAIN_KEY, MAIN_SECRET)
        await self.call(main.put_object, Bucket="vb", Key="g.bin", Body=data)
        get_url = self.presign("get_object", "g.bin", ResponseContentType="text/plain")
        await self.assert_refused(
            get_url.replace("content-type=text%2Fplain", "content-type=text%2Fhtml"),
            "SignatureDoesNotMatch",
        )
        await self.assert_refused(get_url + "&response-cache-control=no-cache",
                                  "SignatureDoesNotMatch")
        ok = await self.call(curl, get_url)
        self.assertEqual((ok.status, ok.body, ok.headers["content-type"]),
                         (200, data, "text/plain"))

    async def test_tampered_header_signed_requests(self) -> None:
        port = self.daemon.port_number
        url = f"{self.daemon.endpoint}/vb/h.bin"
        body = b"header signed body"
        # A signed header's value changed after signing.
        headers = signed_headers("PUT", url, MAIN_KEY, MAIN_SECRET,
                                 headers={"x-amz-meta-colour": "blue"}, body=body)
        headers["x-amz-meta-colour"] = "red"
        reply = await self.call(send, port, "PUT", "/vb/h.bin", headers, body)
        self.assertEqual((reply.status, reply.code), (403, "SignatureDoesNotMatch"))
        # The body does not match the signed x-amz-content-sha256.
        headers = signed_headers("PUT", url, MAIN_KEY, MAIN_SECRET, body=body)
        reply = await self.call(send, port, "PUT", "/vb/h.bin", headers, body.upper())
        self.assertEqual((reply.status, reply.code), (400, "XAmzContentSHA256Mismatch"))
        # Signed twenty minutes ago.
        past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=20)
        headers = signed_headers("PUT", url, MAIN_KEY, MAIN_SECRET, body=body,
                                 when=past.replace(tzinfo=None))
        reply = await self.call(send, port, "PUT", "/vb/h.bin", headers, body)
        self.assertEqual((reply.status, reply.code), (403, "RequestTimeTooSkewed"))
        self.assertEqual(await self.keys_in(), [])
        self.assertEqual(await self.real_keys(), [])
        # The same request untampered is stored.
        headers = signed_headers("PUT", url, MAIN_KEY, MAIN_SECRET,
                                 headers={"x-amz-meta-colour": "blue"}, body=body)
        reply = await self.call(send, port, "PUT", "/vb/h.bin", headers, body)
        self.assertEqual(reply.status, 200, reply.body)
        self.assertEqual(await self.keys_in(), ["h.bin"])

    async def test_scoped_and_read_only_keys(self) -> None:
        main = self.client_for(MAIN_KEY, MAIN_SECRET)
        await self.call(main.put_object, Bucket="vb", Key="k", Body=b"main's")
        await self.call(main.create_bucket, Bucket="other")
        scoped = self.client_for(SCOPED_KEY, SCOPED_SECRET)
        for call, params in ((scoped.get_object, {"Key": "k"}),
                             (scoped.put_object, {"Key": "s", "Body": b"x"}),
                             (scoped.list_objects_v2, {})):
            code, status, _ = await self.error_of(call, Bucket="vb", **params)
            self.assertEqual((code, status), ("AccessDenied", 403))
        listed = await self.call(scoped.list_buckets)
        self.assertEqual([b["Name"] for b in listed["Buckets"]], ["other"])
        await self.call(scoped.put_object, Bucket="other", Key="mine", Body=b"ok")
        listed = await self.call(main.list_buckets)
        self.assertEqual(sorted(b["Name"] for b in listed["Buckets"]), ["other", "vb"])

        reader = self.client_for(READER_KEY, READER_SECRET)
        got = await self.call(reader.get_object, Bucket="vb", Key="k")
        self.assertEqual(got["Body"].read(), b"main's")
        for call, params in ((reader.put_object, {"Key": "r", "Body": b"x"}),
                             (reader.delete_object, {"Key": "k"})):
            code, status, _ = await self.error_of(call, Bucket="vb", **params)
            self.assertEqual((code, status), ("AccessDenied", 403))
        code, status, _ = await self.error_of(reader.get_object, Bucket="other", Key="mine")
        self.assertEqual((code, status), ("AccessDenied", 403))
        self.assertEqual(await self.keys_in(), ["k"])


@pytest.mark.slow
class VirtualHostTests(SeaweedAuthCase, unittest.TestCase):
    """``Host: <bucket>.s3.test`` selects the bucket; path style keeps working."""

    timeout = 120

    def configure(self, config: Config) -> None:
        super().configure(config)
        config.s3api.virtual_host = True
        config.s3api.domain = "s3.test"

    def vhost(self, method: str, host: str, target: str, body: bytes = b"",
              secret: str = MAIN_SECRET) -> Reply:
        port = self.daemon.port_number
        headers = signed_headers(method, f"http://{host}:{port}{target}", MAIN_KEY, secret,
                                 body=body)
        return send(port, method, target, headers, body)

    async def test_virtual_host_and_path_style(self) -> None:
        put = await self.call(self.vhost, "PUT", "vb.s3.test", "/dir/v.txt", b"virtual")
        self.assertEqual(put.status, 200, put.body)
        got = await self.call(self.vhost, "GET", "vb.s3.test", "/dir/v.txt")
        self.assertEqual((got.status, got.body), (200, b"virtual"))
        listed = await self.call(self.vhost, "GET", "vb.s3.test", "/?list-type=2")
        self.assertEqual(listed.status, 200)
        self.assertIn(b"<Key>dir/v.txt</Key>", listed.body)
        missing = await self.call(self.vhost, "GET", "nosuch.s3.test", "/k")
        self.assertEqual((missing.status, missing.code), (404, "NoSuchBucket"))
        # The Host is signed: the same request under another signature is refused.
        forged = await self.call(self.vhost, "GET", "vb.s3.test", "/dir/v.txt", b"", "wrong")
        self.assertEqual((forged.status, forged.code), (403, "SignatureDoesNotMatch"))

        main = self.client_for(MAIN_KEY, MAIN_SECRET)
        got_path = await self.call(main.get_object, Bucket="vb", Key="dir/v.txt")
        self.assertEqual(got_path["Body"].read(), b"virtual")
        # The bare domain, and a Host outside the domain, are path style.
        bare = await self.call(self.vhost, "GET", "s3.test", "/vb/dir/v.txt")
        self.assertEqual((bare.status, bare.body), (200, b"virtual"))
        outside = await self.call(self.vhost, "GET", "vb.elsewhere.example", "/vb/dir/v.txt")
        self.assertEqual((outside.status, outside.body), (200, b"virtual"))
        not_a_bucket = await self.call(self.vhost, "GET", "vb.elsewhere.example", "/dir/v.txt")
        self.assertEqual((not_a_bucket.status, not_a_bucket.code), (404, "NoSuchBucket"))
