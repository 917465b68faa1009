"""The S3 backend adapter against real S3 servers (SeaweedFS and moto) and hostile sockets."""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from twisted.internet import reactor, ssl
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, TestCase
from twisted.web.client import ResponseDone
from twisted.web.iweb import IBodyProducer
from twisted.web.resource import Resource
from twisted.web.server import Site
from zope.interface import implementer

from s3balance.backends.interface import (
    BackendAccessDenied,
    BackendError,
    BackendInvalidPart,
    BackendNoSuchKey,
    BackendUnavailable,
)
from s3balance.backends.s3 import S3Backend
from s3balance.backends.s3headers import decode_metadata_value, encode_metadata_value
from s3balance.backends.s3signing import BucketAddress, Signer
from s3balance.config import BucketConfig
from test.backend_contract import MIN_PART, BackendContractMixin
from test.support import free_port, unique_bucket_name
from test.support.adapters import s3_backend_at
from test.support.bodies import (
    BodyFailed,
    BytesBody,
    GeneratedBody,
    IgnoresFlowControl,
    collect,
    generated_md5,
    md5_of,
)
from test.support.motoserver import shared_moto
from test.support.seaweedfs import SeaweedFS, shared_seaweedfs


def _backend_on(server: Any, test: TestCase, stall_timeout: float = 30) -> S3Backend:
    bucket = unique_bucket_name(test.id().rsplit(".", 1)[-1][:20])
    server.create_bucket(bucket)
    backend = S3Backend(
        name="test-backend",
        endpoint=server.endpoint,
        bucket=bucket,
        region=server.region,
        access_key=server.access_key,
        secret_key=server.secret_key,
        path_style=True,
        reactor=reactor,
        stall_timeout=stall_timeout,
    )
    test.addCleanup(backend.close)
    return backend


class SeaweedFSContractTests(BackendContractMixin, TestCase):
    unsupported_keys = {
        "../escape": "SeaweedFS rejects keys with '..' segments (InvalidRequest)",
        "a/../../b": "SeaweedFS rejects keys with '..' segments (InvalidRequest)",
        "..": "SeaweedFS rejects keys with '..' segments (InvalidRequest)",
        ".": "SeaweedFS rejects a '.' key (InvalidRequest)",
        "back\\slash\\..\\x": "SeaweedFS reads '\\' as '/' and rejects the '..' segment",
        "/leading": "SeaweedFS drops the leading '/' of keys it lists",
        "k" * 1021 + "日": "SeaweedFS limits each path segment to 255 bytes (KeyTooLongError)",
    }

    def make_backend(self) -> S3Backend:
        return _backend_on(shared_seaweedfs(), self)

    async def test_upload_part_replaces_same_part_number(self) -> None:
        raise SkipTest(
            "SeaweedFS 4.48 keeps both uploads of a part number and lists them with the same "
            "whole-second LastModified in random order, so ListParts cannot tell which is current"
        )

    async def test_upload_part_copy_with_range(self) -> None:
        """SeaweedFS 4.x answers UploadPartCopy with an ETag that is not the part's MD5 (its
        own chunk list ETag); the copied bytes are still right, which is what is checked here.
        The MD5 ETags are checked against moto by the contract test itself."""
        backend = self.make_backend()
        size = MIN_PART + 1000
        await backend.put_object("copy-source", GeneratedBody(size, seed=5), size, {}, {})
        upload_id = await backend.create_multipart_upload("copied", {}, {})
        first = await backend.upload_part_copy(
            "copied", upload_id, 1, "copy-source", (0, MIN_PART - 1)
        )
        second = await backend.upload_part_copy(
            "copied", upload_id, 2, "copy-source", (MIN_PART, size - 1)
        )
        self.assertEqual((first.size, second.size), (MIN_PART, 1000))
        listed = await backend.list_parts("copied", upload_id)
        self.assertEqual(
            [(p.part_number, p.etag) for p in listed], [(1, first.etag), (2, second.etag)]
        )
        result = await backend.complete_multipart_upload(
            "copied", upload_id, [(1, first.etag), (2, second.etag)]
        )
        self.assertEqual(result.size, size)
        stream = await backend.get_object("copied")
        self.assertEqual(await md5_of(stream), generated_md5(size, seed=5))


class MotoContractTests(BackendContractMixin, TestCase):
    def make_backend(self) -> S3Backend:
        return _backend_on(shared_moto(), self)

    async def test_abort_leaves_nothing(self) -> None:
        raise SkipTest(
            "moto 5.2 answers CompleteMultipartUpload on an aborted upload with a 500 "
            "(KeyError in moto), not NoSuchUpload; covered against SeaweedFS"
        )

    async def test_upload_part_to_aborted_upload_raises_no_such_upload(self) -> None:
        raise SkipTest(
            "moto 5.2 answers UploadPart on an aborted upload with a 500 (KeyError in moto), "
            "not NoSuchUpload; covered against SeaweedFS"
        )


# -- adapter-specific --------------------------------------------------------------------------


class _Recorder(Protocol):
    """A server connection that records what arrives and answers with ``script``."""

    def __init__(self, factory: _ScriptedFactory) -> None:
        self.factory = factory
        self.received = b""
        self.answered = False

    def connectionMade(self) -> None:
        self.factory.connections.append(self)
        if not self.factory.read:
            assert self.transport is not None
            self.transport.pauseProducing()  # type: ignore[attr-defined]

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.factory.connections.remove(self)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if not self.answered and b"\r\n\r\n" in self.received:
            self.answered = True
            self.factory.requests += 1
            self.factory.script(self)


class _ScriptedFactory(Factory):
    def __init__(self, script: Callable[[_Recorder], None]) -> None:
        self.script = script
        self.connections: list[_Recorder] = []
        self.requests = 0
        self.endpoint = ""
        self.read = True

    def buildProtocol(self, addr: Any) -> _Recorder:
        return _Recorder(self)


def _scripted_server(
    test: TestCase,
    script: Callable[[_Recorder], None],
    read: bool = True,
    tls: Any = None,
) -> _ScriptedFactory:
    """A loopback server whose connections run ``script`` once a request's headers arrived.

    :param read: false makes it never read from its connections (a backend that hangs).
    :param tls: server TLS options: serve https.
    """
    factory = _ScriptedFactory(script)
    factory.read = read
    if tls is None:
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined,arg-type]
        scheme = "http"
    else:
        port = reactor.listenSSL(0, factory, tls, interface="127.0.0.1")  # type: ignore[attr-defined,arg-type]
        scheme = "https"
    factory.endpoint = f"{scheme}://127.0.0.1:{port.getHost().port}"  # type: ignore[attr-defined]

    def cleanup() -> Deferred[None] | None:
        for connection in list(factory.connections):
            assert connection.transport is not None
            connection.transport.abortConnection()  # type: ignore[attr-defined]
        return port.stopListening()

    test.addCleanup(cleanup)
    return factory


class _Ending(Protocol):
    """Collects a GET body and fires ``done`` with how it ended."""

    def __init__(self) -> None:
        self.received = 0
        self._ended: Deferred[None] = Deferred()
        self.reason: Failure | None = None

    @property
    async def done(self) -> Failure:
        """How the body ended (a Failure is returned, not raised)."""
        await self._ended
        assert self.reason is not None
        return self.reason

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        assert reason is not None
        self.reason = reason
        self._ended.callback(None)


class AddressingTests(TestCase):
    """URL building: what Agent sends is what botocore signs."""

    def test_path_style_urls(self) -> None:
        address = BucketAddress.from_endpoint("http://127.0.0.1:9000", "bkt", path_style=True)
        self.assertEqual(address.netloc, "127.0.0.1:9000")
        self.assertEqual(
            address.url(address.object_path("dir/a b+c%d~e")),
            "http://127.0.0.1:9000/bkt/dir/a%20b%2Bc%25d~e",
        )
        self.assertEqual(address.url(address.bucket_path()), "http://127.0.0.1:9000/bkt")

    def test_virtual_host_urls(self) -> None:
        address = BucketAddress.from_endpoint("https://s3.example.com", "bkt", path_style=False)
        self.assertEqual(address.netloc, "bkt.s3.example.com")
        self.assertEqual(
            address.url(address.object_path("k"), [("uploadId", "a/b+c"), ("partNumber", "2")]),
            "https://bkt.s3.example.com/k?partNumber=2&uploadId=a%2Fb%2Bc",
        )
        self.assertEqual(address.url(address.bucket_path()), "https://bkt.s3.example.com/")

    def test_default_port_left_out_and_explicit_port_kept(self) -> None:
        self.assertEqual(
            BucketAddress.from_endpoint("https://h:443", "b", path_style=False).netloc, "b.h"
        )
        self.assertEqual(
            BucketAddress.from_endpoint("https://h:8443", "b", path_style=False).netloc,
            "b.h:8443",
        )

    def test_dot_segments_and_unicode_sent_literally(self) -> None:
        address = BucketAddress.from_endpoint("http://h", "b", path_style=True)
        self.assertEqual(address.object_path("a/../b"), "/b/a/../b")
        self.assertEqual(address.object_path("./x"), "/b/./x")
        self.assertEqual(address.object_path("ü/日"), "/b/%C3%BC/%E6%97%A5")
        self.assertEqual(address.copy_source("a b/../c"), "/b/a%20b/../c")

    def test_signature_covers_the_literal_path(self) -> None:
        """botocore must sign ``a/../b`` as sent, not a normalised ``b``."""
        signer = Signer("AKID", "secret", "us-east-1")
        url = "http://h/b/a/../b"
        headers = signer.sign("GET", url, {"Host": "h"}, None, streamed=False)
        request = AWSRequest(method="GET", url=url, headers=dict(headers))
        canonical = S3SigV4Auth(Credentials("AKID", "secret"), "s3", "us-east-1")
        self.assertIn("\n/b/a/../b\n", canonical.canonical_request(request))

    def test_streamed_bodies_are_unsigned_and_small_bodies_signed(self) -> None:
        signer = Signer("AKID", "secret", "us-east-1")
        streamed = signer.sign("PUT", "http://h/b/k", {"Host": "h"}, None, streamed=True)
        self.assertEqual(streamed["X-Amz-Content-SHA256"], "UNSIGNED-PAYLOAD")
        small = signer.sign("POST", "http://h/b/k", {"Host": "h"}, b"<xml/>", streamed=False)
        self.assertEqual(small["X-Amz-Content-SHA256"], hashlib.sha256(b"<xml/>").hexdigest())

    def test_from_config(self) -> None:
        config = BucketConfig(
            name="b1",
            endpoint="minio.local:9000",
            use_ssl=False,
            path_style=True,
            bucket="real-bucket",
        )
        backend = S3Backend.from_config(config, reactor, None)
        self.addCleanup(backend.close)
        self.assertEqual(
            backend.address.url(backend.address.object_path("k")),
            "http://minio.local:9000/real-bucket/k",
        )
        aws = S3Backend.from_config(BucketConfig(name="b2", region="eu-west-1"), reactor, None)
        self.addCleanup(aws.close)
        self.assertEqual(
            aws.address.url(aws.address.object_path("k")),
            "https://b2.s3.eu-west-1.amazonaws.com/k",
        )

    def test_metadata_values_round_trip_through_ascii_headers(self) -> None:
        for value in ("plain", "Grüße, ☃", "=?UTF-8?B?not base64!?=", ""):
            encoded = encode_metadata_value(value)
            self.assertTrue(encoded.isascii())
            self.assertEqual(decode_metadata_value(encoded), value)


class _RealServerTests:
    """Adapter behaviour against a real server; mixed with a server-specific class."""

    server: Callable[[], Any]
    unsupported_special_keys: frozenset[str] = frozenset()
    assertEqual: Any
    assertIn: Any
    assertFailure: Any
    assertTrue: Any

    def make_backend(self) -> S3Backend:
        return _backend_on(self.server(), self)  # type: ignore[arg-type]

    async def test_body_failing_at_its_last_chunk_leaves_no_object(self) -> None:
        backend = self.make_backend()
        size = 200 * 1024
        body = GeneratedBody(size, seed=7, fail_after=size)
        await self.assertFailure(backend.put_object("last", body, size, {}, {}), BodyFailed)
        self.assertEqual(body.produced, size)  # every byte was produced before the failure
        await self.assertFailure(backend.head_object("last"), BackendNoSuchKey)

    async def test_one_byte_body_failing_at_the_end_leaves_no_object(self) -> None:
        backend = self.make_backend()
        body = GeneratedBody(1, seed=7, fail_after=1)
        await self.assertFailure(backend.put_object("one", body, 1, {}, {}), BodyFailed)
        await self.assertFailure(backend.head_object("one"), BackendNoSuchKey)

    async def test_empty_body_failing_leaves_no_object(self) -> None:
        backend = self.make_backend()
        body = GeneratedBody(0, fail_after=0)
        await self.assertFailure(backend.put_object("none", body, 0, {}, {}), BodyFailed)
        await self.assertFailure(backend.head_object("none"), BackendNoSuchKey)

    async def test_presigned_get_with_overrides(self) -> None:
        backend = self.make_backend()
        data = b"presigned content"
        await backend.put_object("dir/pre signed+key", BytesBody(data), len(data), {}, {})
        url = backend.presign_get(
            "dir/pre signed+key",
            60,
            {
                "response-content-type": "text/x-test; charset=utf-8",
                "response-content-disposition": 'attachment; filename="a b.txt"',
            },
        )
        with urllib.request.urlopen(url, timeout=10) as response:
            self.assertEqual(response.read(), data)
            self.assertEqual(response.headers["Content-Type"], "text/x-test; charset=utf-8")
            self.assertEqual(
                response.headers["Content-Disposition"], 'attachment; filename="a b.txt"'
            )

    async def test_presigned_url_cannot_be_altered(self) -> None:
        backend = self.make_backend()
        await backend.put_object("secret", BytesBody(b"x"), 1, {}, {})
        url = backend.presign_get("secret", 60, {})
        tampered = url.replace("/secret?", "/secreT?")
        with self.assertRaises(urllib.error.HTTPError) as caught:  # type: ignore[attr-defined]
            urllib.request.urlopen(tampered, timeout=10)
        self.assertIn(caught.exception.code, (403, 404))

    async def test_special_keys_round_trip(self) -> None:
        backend = self.make_backend()
        keys = [
            "a b",
            "+",
            "%",
            "%2F",
            "ü/日本語",
            "q?x=1&y=2#frag",
            "semi;colon:at@",
            "(paren)!'*~",
            "tab\tand\u00a0nbsp",
            "trailing/",
            "x//y",
        ]
        keys = [key for key in keys if key not in self.unsupported_special_keys]
        for key in keys:
            data = key.encode() + b"!"
            await backend.put_object(key, BytesBody(data), len(data), {}, {"k": key})
            stream = await backend.get_object(key)
            self.assertEqual(await collect(stream), data, key)
            info = await backend.head_object(key)
            self.assertEqual((info.key, info.size, info.metadata), (key, len(data), {"k": key}))
        listed = await backend.list_objects("")
        self.assertEqual(sorted(o.key for o in listed), sorted(keys))

    async def test_content_md5_is_forwarded_for_the_backend_to_verify(self) -> None:
        backend = self.make_backend()
        data = b"checked content"
        right = base64.b64encode(hashlib.md5(data).digest()).decode()
        wrong = base64.b64encode(hashlib.md5(b"other").digest()).decode()
        await self.assertFailure(
            backend.put_object("md5", BytesBody(data), len(data), {"content-md5": wrong}, {}),
            BackendError,
        )
        await self.assertFailure(backend.head_object("md5"), BackendNoSuchKey)
        await backend.put_object("md5", BytesBody(data), len(data), {"content-md5": right}, {})
        self.assertEqual(await collect(await backend.get_object("md5")), data)

    async def test_slow_client_body_is_not_a_backend_stall(self) -> None:
        """Gaps longer than ``stall_timeout`` between body chunks come from the client."""
        backend = _backend_on(self.server(), self, stall_timeout=0.3)  # type: ignore[arg-type]
        body = _SlowBody([b"first ", b"second ", b"third"], gap=0.6)
        result = await backend.put_object("slow", body, body.length, {}, {})
        self.assertEqual(result.size, body.length)
        self.assertEqual(
            await collect(await backend.get_object("slow")), b"first second third"
        )

    async def test_wrong_credentials_raise_access_denied(self) -> None:
        good = self.make_backend()
        await good.put_object("k", BytesBody(b"x"), 1, {}, {})
        server = self.server()
        bad = S3Backend(
            "bad",
            server.endpoint,
            good.address.bucket,
            server.region,
            "AKIDUNKNOWN",
            "wrong-secret",
            True,
            reactor,
        )
        self.addCleanup(bad.close)  # type: ignore[attr-defined]
        await self.assertFailure(bad.get_object("k"), BackendAccessDenied)


class SeaweedFSAdapterTests(_RealServerTests, TestCase):
    timeout = 60
    # SeaweedFS keeps "trailing/" as a directory (GET answers an empty body) and lists
    # "x//y" as "x/y".
    unsupported_special_keys = frozenset({"trailing/", "x//y"})

    def server(self) -> Any:
        return shared_seaweedfs()


class MotoAdapterTests(_RealServerTests, TestCase):
    timeout = 60

    def server(self) -> Any:
        return shared_moto()

    async def test_wrong_credentials_raise_access_denied(self) -> None:
        raise SkipTest("moto does not check signatures")

    async def test_content_md5_is_forwarded_for_the_backend_to_verify(self) -> None:
        raise SkipTest("moto 5.2 does not verify Content-MD5")

    async def test_presigned_url_cannot_be_altered(self) -> None:
        raise SkipTest("moto does not check signatures")


class FailureTests(TestCase):
    """Unreachable, silent, broken and failing backends, with scripted loopback servers."""

    timeout = 30

    async def test_connection_refused_is_unavailable_before_any_body_byte(self) -> None:
        backend = s3_backend_at(self, f"http://127.0.0.1:{free_port()}")
        body = GeneratedBody(1000)
        error: Any = await self.assertFailure(
            backend.put_object("k", body, 1000, {}, {}), BackendUnavailable
        )
        self.assertFalse(error.body_started)
        self.assertEqual(body.produced, 0)
        await self.assertFailure(backend.get_object("k"), BackendUnavailable)
        await self.assertFailure(backend.probe(5), BackendUnavailable)

    async def test_stall_before_the_answer_aborts_the_request(self) -> None:
        server = _scripted_server(self, lambda connection: None)  # accepts, never answers
        backend = s3_backend_at(self, server.endpoint, stall_timeout=0.5)
        started = time.monotonic()
        await self.assertFailure(backend.head_object("k"), BackendUnavailable)
        # One retry (HEAD is idempotent), each attempt given up after 0.5 s.
        self.assertLess(time.monotonic() - started, 5)
        self.assertEqual(server.requests, 2)
        error: Any = await self.assertFailure(
            backend.put_object("k", BytesBody(b"data"), 4, {}, {}), BackendUnavailable
        )
        self.assertTrue(error.body_started)
        self.assertEqual(server.requests, 3)  # bodies are never retried

    async def test_stall_in_the_middle_of_a_body_ends_the_stream_with_a_failure(self) -> None:
        def half_an_answer(connection: _Recorder) -> None:
            assert connection.transport is not None
            connection.transport.write(
                b'HTTP/1.1 200 OK\r\nContent-Length: 100000\r\nETag: "abc"\r\n\r\n' + b"x" * 1000
            )

        server = _scripted_server(self, half_an_answer)
        backend = s3_backend_at(self, server.endpoint, stall_timeout=0.5)
        stream = await backend.get_object("k")
        self.assertEqual((stream.length, stream.size, stream.etag), (100000, 100000, '"abc"'))
        protocol = _Ending()
        stream.deliverBody(protocol)
        reason = await protocol.done
        self.assertTrue(reason.check(BackendUnavailable), reason)
        self.assertEqual(protocol.received, 1000)

    async def test_connection_closed_mid_body_is_not_a_clean_end(self) -> None:
        def truncated(connection: _Recorder) -> None:
            assert connection.transport is not None
            connection.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000
            )
            connection.transport.loseConnection()

        server = _scripted_server(self, truncated)
        backend = s3_backend_at(self, server.endpoint)
        stream = await backend.get_object("k")
        protocol = _Ending()
        stream.deliverBody(protocol)
        reason = await protocol.done
        self.assertFalse(reason.check(ResponseDone), reason)

    async def test_server_errors_retried_once_for_reads_never_for_bodies(self) -> None:
        def busy(connection: _Recorder) -> None:
            assert connection.transport is not None
            body = (
                b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate."
                b"</Message></Error>"
            )
            connection.transport.write(
                b"HTTP/1.1 503 Slow Down\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            connection.answered = False
            connection.received = b""

        server = _scripted_server(self, busy)
        backend = s3_backend_at(self, server.endpoint)
        await self.assertFailure(backend.get_object("k"), BackendUnavailable)
        self.assertEqual(server.requests, 2)
        await self.assertFailure(backend.delete_object("k"), BackendUnavailable)
        self.assertEqual(server.requests, 4)
        body = GeneratedBody(10)
        await self.assertFailure(backend.put_object("k", body, 10, {}, {}), BackendUnavailable)
        self.assertEqual(server.requests, 5)
        await self.assertFailure(
            backend.complete_multipart_upload("k", "upload", [(1, '"e"')]), BackendUnavailable
        )
        self.assertEqual(server.requests, 6)

    async def test_backend_not_reading_the_body_is_a_stall(self) -> None:
        server = _scripted_server(self, lambda connection: None, read=False)
        backend = s3_backend_at(self, server.endpoint, stall_timeout=0.5)
        size = 64 * 1024 * 1024
        body = GeneratedBody(size)
        started = time.monotonic()
        error: Any = await self.assertFailure(
            backend.put_object("k", body, size, {}, {}), BackendUnavailable
        )
        self.assertTrue(error.body_started)
        self.assertTrue(body.pause_count > 0)  # Agent pushed back before the watch fired
        self.assertLess(body.produced, size)
        self.assertLess(time.monotonic() - started, 10)

    async def test_stall_while_reading_a_listing(self) -> None:
        def half_a_listing(connection: _Recorder) -> None:
            assert connection.transport is not None
            connection.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n<?xml version="
            )

        server = _scripted_server(self, half_a_listing)
        backend = s3_backend_at(self, server.endpoint, stall_timeout=0.5)
        started = time.monotonic()
        await self.assertFailure(backend.list_objects(""), BackendUnavailable)
        self.assertLess(time.monotonic() - started, 5)

    async def test_completion_failing_inside_a_200_answer(self) -> None:
        """S3 may answer CompleteMultipartUpload with 200 and an ``<Error>`` body."""
        code = b"InternalError"

        def late_error(connection: _Recorder) -> None:
            assert connection.transport is not None
            body = b"<Error><Code>%s</Code><Message>late</Message></Error>" % code
            connection.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            connection.answered = False
            connection.received = b""

        server = _scripted_server(self, late_error)
        backend = s3_backend_at(self, server.endpoint)
        await self.assertFailure(
            backend.complete_multipart_upload("k", "u", [(1, '"e"')]), BackendUnavailable
        )
        code = b"InvalidPart"
        await self.assertFailure(
            backend.complete_multipart_upload("k", "u", [(1, '"e"')]), BackendInvalidPart
        )

    async def test_probe_gives_up_at_its_timeout(self) -> None:
        server = _scripted_server(self, lambda connection: None)
        backend = s3_backend_at(self, server.endpoint, stall_timeout=30)
        started = time.monotonic()
        await self.assertFailure(backend.probe(0.5), BackendUnavailable)
        self.assertLess(time.monotonic() - started, 3)


class _EtagScriptedStore(Resource):
    """A WebDAV-like store (PUT 201, HEAD, DELETE) whose PUT answers carry an ETag or not,
    as told per request: the adapter's ETag fallback is observable through what it returns."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.put_etags: list[bool] = []
        self.head_etag = True
        self.objects: dict[bytes, bytes] = {}
        self.heads = 0

    def render_PUT(self, request: Any) -> bytes:
        self.objects[request.path] = request.content.read()
        if self.put_etags.pop(0):
            request.setHeader(b"ETag", b'"from-the-backend"')
        request.setResponseCode(201)
        return b""

    def render_HEAD(self, request: Any) -> bytes:
        self.heads += 1
        body = self.objects.get(request.path)
        if body is None:
            request.setResponseCode(404)
            return b""
        if self.head_etag:
            request.setHeader(b"ETag", b'"from-head"')
        request.setHeader(b"Content-Length", b"%d" % len(body))
        return b""

    def render_DELETE(self, request: Any) -> bytes:
        self.objects.pop(request.path, None)
        request.setResponseCode(204)
        return b""


class PutEtagTests(TestCase):
    """The ETag a PUT reports: the backend's own, else the MD5 of the bytes sent, measured only
    while the backend has not shown that it sends ETags (hashing costs as much CPU as the rest
    of the upload)."""

    timeout = 30

    def setUp(self) -> None:
        self.store = _EtagScriptedStore()
        port = reactor.listenTCP(0, Site(self.store), interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        self.backend = s3_backend_at(self, f"http://127.0.0.1:{port.getHost().port}")

    async def _put(self, key: str, size: int) -> str:
        result = await self.backend.put_object(key, GeneratedBody(size, seed=size), size, {}, {})
        return result.etag

    async def test_store_without_etags_gets_the_md5_of_every_body(self) -> None:
        self.store.put_etags = [False, False]
        for key, size in (("small", 1000), ("large", 3 << 20)):  # inline and threaded hashing
            self.assertEqual(await self._put(key, size), f'"{generated_md5(size, seed=size)}"')
        self.assertEqual(self.store.heads, 0)

    async def test_backend_etag_wins_and_later_bodies_are_not_hashed(self) -> None:
        self.store.put_etags = [True, True, False, False]
        self.assertEqual(await self._put("a", 1000), '"from-the-backend"')
        self.assertEqual(await self._put("b", 1000), '"from-the-backend"')
        # The third answer lacks the ETag the earlier ones had: the body was not hashed, so
        # the adapter asks HEAD (an MD5 here would mean it had hashed after all) ...
        self.assertEqual(await self._put("c", 1000), '"from-head"')
        self.assertEqual(self.store.heads, 1)
        # ... and hashes again from then on.
        self.assertEqual(await self._put("d", 1000), f'"{generated_md5(1000, seed=1000)}"')
        self.assertEqual(self.store.heads, 1)

    async def test_no_etag_anywhere_fails_the_put_and_removes_the_object(self) -> None:
        self.store.put_etags = [True, False]
        self.store.head_etag = False
        await self._put("a", 10)
        await self.assertFailure(
            self.backend.put_object("b", GeneratedBody(10), 10, {}, {}), BackendError
        )
        self.assertEqual(list(self.store.objects), [b"/bucket/a"])


class KilledBackendTests(TestCase):
    """A real SeaweedFS killed while a GET streams (a private one: the shared one must live)."""

    timeout = 90

    def setUp(self) -> None:
        workdir = tempfile.mkdtemp(prefix="s3balance-killed-")
        self.addCleanup(shutil.rmtree, workdir, ignore_errors=True)
        self.weed = SeaweedFS(workdir)
        self.weed.start()
        self.addCleanup(self.weed.kill)

    async def test_backend_killed_mid_get(self) -> None:
        backend = _backend_on(self.weed, self)
        size = 24 * 1024 * 1024
        await backend.put_object("big", GeneratedBody(size, seed=9), size, {}, {})
        stream = await backend.get_object("big")
        protocol = _PauseFirst()
        stream.deliverBody(protocol)
        await protocol.first_chunk
        self.weed.kill()
        protocol.resume()
        reason = await protocol.done
        self.assertFalse(reason.check(ResponseDone), reason)
        self.assertLess(protocol.received, size)
        await self.assertFailure(backend.head_object("big"), BackendUnavailable)
        # Back on the same address with the same data: the same backend object recovers.
        self.weed.restart()
        stream = await backend.get_object("big")
        self.assertEqual(await md5_of(stream), generated_md5(size, seed=9))


class _PauseFirst(_Ending):
    """Pauses the stream at its first chunk until :meth:`resume`."""

    def __init__(self) -> None:
        super().__init__()
        self.first_chunk: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        if not self.first_chunk.called:
            assert self.transport is not None
            self.transport.pauseProducing()  # type: ignore[attr-defined]
            self.first_chunk.callback(None)

    def resume(self) -> None:
        assert self.transport is not None
        self.transport.resumeProducing()  # type: ignore[attr-defined]


@implementer(IBodyProducer)
class _SlowBody(IgnoresFlowControl):
    """Writes its chunks ``gap`` seconds apart, like a client on a slow link."""

    def __init__(self, chunks: list[bytes], gap: float) -> None:
        self.length = sum(len(chunk) for chunk in chunks)
        self._chunks = list(chunks)
        self._gap = gap

    def startProducing(self, consumer: Any) -> Deferred[None]:
        return Deferred.fromCoroutine(self._produce(consumer))

    async def _produce(self, consumer: Any) -> None:
        for chunk in self._chunks:
            await deferLater(reactor, self._gap, lambda: None)  # type: ignore[arg-type]
            consumer.write(chunk)


def _self_signed_certificate(directory: str) -> tuple[str, Any]:
    """A CA-less self-signed certificate for 127.0.0.1: its PEM file and server options."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "s3balance test")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = certificate.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "ca.pem")
    with open(path, "wb") as f:
        f.write(cert_pem)
    options = ssl.PrivateCertificate.loadPEM(cert_pem + key_pem).options()
    return path, options


class TLSTests(TestCase):
    """Certificates are verified; ``ca_bundle`` trusts a private endpoint's CA."""

    timeout = 30

    def _head_answer(self, connection: _Recorder) -> None:
        assert connection.transport is not None
        connection.transport.write(
            b'HTTP/1.1 200 OK\r\nContent-Length: 5\r\nETag: "e"\r\n'
            b"Last-Modified: Sun, 01 Jan 2023 00:00:00 GMT\r\n\r\n"
        )

    async def test_private_ca_trusted_only_with_ca_bundle(self) -> None:
        directory = tempfile.mkdtemp(prefix="s3balance-tls-")
        self.addCleanup(shutil.rmtree, directory, ignore_errors=True)
        ca_path, server_options = _self_signed_certificate(directory)
        server = _scripted_server(self, self._head_answer, tls=server_options)
        untrusting = s3_backend_at(self, server.endpoint)
        await self.assertFailure(untrusting.head_object("k"), BackendUnavailable)
        trusting = S3Backend(
            "tls", server.endpoint, "bucket", "us-east-1", "AKID", "secret", True, reactor,
            ca_bundle=ca_path,
        )
        self.addCleanup(trusting.close)
        info = await trusting.head_object("k")
        self.assertEqual((info.size, info.etag), (5, '"e"'))
