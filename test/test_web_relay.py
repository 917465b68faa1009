"""Relaying a backend body to a client: the client's pace reaches the backend, and a broken body
is a broken connection, never a short successful response."""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest
from twisted.internet import reactor, threads
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IProtocol, IPushProducer
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.client import ResponseDone, ResponseFailed
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface import directlyProvides, implementer

from s3balance.backends.interface import IObjectStream, ISocketBody
from s3balance.web.relay import SPLICE_MIN, BodyLengthMismatch, StallTimeout, relay_object
from s3balance.web.request import StreamingRequest
from s3balance.web.requestbody import ClientDisconnected
from s3balance.web.site import S3Site

pytestmark = pytest.mark.timeout(60)


@implementer(IObjectStream)
class HeldStream:
    """A backend answer whose body the test delivers by hand."""

    def __init__(self, length: int) -> None:
        self.length = length
        self.size = length
        self.etag = '"x"'
        self.protocol: IProtocol | None = None
        self.transport = StringTransport()
        self.discarded = False

    def deliverBody(self, protocol: IProtocol) -> None:
        self.protocol = protocol
        protocol.makeConnection(self.transport)

    def discard(self) -> None:
        self.discarded = True


class Getter(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[StreamingRequest] = []

    def render_GET(self, request: StreamingRequest) -> Any:
        self.requests.append(request)
        return NOT_DONE_YET


def never_stream(request: Any) -> bool:
    return False


def start_get(
    length: int, zero_copy: bool = False, stream: HeldStream | None = None
) -> tuple[StreamingRequest, HeldStream, StringTransport, MemoryReactorClock, Deferred[int]]:
    clock = MemoryReactorClock()
    getter = Getter()
    site = S3Site(getter, never_stream, clock=clock)
    channel = site.buildProtocol(None)
    transport = StringTransport()
    channel.makeConnection(transport)
    channel.dataReceived(b"GET /bucket/key HTTP/1.1\r\nHost: example\r\n\r\n")
    request = getter.requests[0]
    request.setResponseCode(200)
    stream = stream or HeldStream(length)
    relayed = relay_object(request, stream, clock, 30.0, zero_copy)
    return request, stream, transport, clock, relayed


def failure_of(deferred: Deferred[Any]) -> Failure:
    failures: list[Failure] = []
    deferred.addErrback(failures.append)
    assert failures, "the relay should have failed"
    return failures[0]


def test_success_finishes_once_with_content_length() -> None:
    request, stream, transport, _, relayed = start_get(10)
    assert stream.protocol is not None
    stream.protocol.dataReceived(b"01234")
    stream.protocol.dataReceived(b"56789")
    stream.protocol.connectionLost(Failure(ResponseDone()))
    stream.protocol.connectionLost(Failure(ResponseDone()))  # a second end changes nothing
    results: list[int] = []
    relayed.addCallback(results.append)
    assert results == [10]
    response = transport.value()
    assert response.count(b"HTTP/1.1 200 ") == 1
    assert b"Content-Length: 10\r\n" in response
    assert b"chunked" not in response.lower()
    assert response.endswith(b"\r\n\r\n0123456789")
    assert request.finished and not transport.disconnecting


def test_zero_copy_does_not_hold_the_body_for_a_client_without_a_tcp_socket() -> None:
    """A backend socket that could be taken over, but a client the kernel cannot write to (TLS,
    here an in-memory transport): the body flows at once, never paused for a splice."""
    length = SPLICE_MIN * 2
    stream = HeldStream(length)
    directlyProvides(stream.transport, ISocketBody)
    request, stream, transport, clock, relayed = start_get(length, True, stream)
    assert stream.transport.producerState == "producing"
    assert stream.protocol is not None
    stream.protocol.dataReceived(b"x" * length)
    stream.protocol.connectionLost(Failure(ResponseDone()))
    assert relayed.result == length


def test_slow_client_pauses_the_backend() -> None:
    request, stream, _, _, _ = start_get(10)
    channel = request.channel
    channel.pauseProducing()  # what the client transport does when its buffer is full
    assert stream.transport.producerState == "paused"
    channel.resumeProducing()
    assert stream.transport.producerState == "producing"


def test_backend_failure_mid_body_aborts_the_client() -> None:
    request, stream, transport, _, relayed = start_get(10)
    assert stream.protocol is not None
    stream.protocol.dataReceived(b"01234")
    stream.protocol.connectionLost(Failure(ResponseFailed([Failure(ConnectionLost())])))
    assert failure_of(relayed).check(ResponseFailed)
    assert transport.disconnected, "the client connection must be aborted, not closed cleanly"
    assert not request.finished


def test_short_clean_end_is_still_an_abort() -> None:
    request, stream, transport, _, relayed = start_get(10)
    assert stream.protocol is not None
    stream.protocol.dataReceived(b"01234")
    stream.protocol.connectionLost(Failure(ResponseDone()))
    assert failure_of(relayed).check(BodyLengthMismatch)
    assert transport.disconnected and not request.finished


def test_client_gone_stops_the_backend() -> None:
    request, stream, _, _, relayed = start_get(10)
    assert stream.protocol is not None
    stream.protocol.dataReceived(b"01234")
    request.channel.connectionLost(Failure(ConnectionDone()))
    assert stream.transport.producerState == "stopped"
    assert failure_of(relayed).check(ClientDisconnected)
    stream.protocol.dataReceived(b"56789")  # late bytes are dropped without error
    stream.protocol.connectionLost(Failure(ResponseDone()))


def test_stall_aborts_both_sides() -> None:
    request, stream, transport, clock, relayed = start_get(10)
    assert stream.protocol is not None
    request.channel.pauseProducing()  # a client that stopped reading
    clock.advance(29)
    request.channel.resumeProducing()  # a resume counts as progress
    clock.advance(29)
    assert not relayed.called
    clock.advance(2)
    assert failure_of(relayed).check(StallTimeout)
    assert transport.disconnected
    assert stream.transport.producerState == "stopped"


@implementer(IPushProducer)
class GeneratedBody:
    """A backend transport that produces ``total`` bytes as fast as it is allowed to."""

    def __init__(self, protocol: IProtocol, total: int) -> None:
        self.protocol = protocol
        self.total = total
        self.sent = 0
        self.paused = False
        self.pauses = 0
        self.stopped = False

    def pauseProducing(self) -> None:
        self.paused = True
        self.pauses += 1

    def resumeProducing(self) -> None:
        self.paused = False
        reactor.callLater(0, self.produce)  # type: ignore[attr-defined]

    def stopProducing(self) -> None:
        self.stopped = True

    def produce(self) -> None:
        while not self.paused and not self.stopped and self.sent < self.total:
            size = min(64 << 10, self.total - self.sent)
            self.protocol.dataReceived(pattern(self.sent, size))
            self.sent += size
        if self.sent >= self.total and not self.stopped:
            self.stopped = True
            self.protocol.connectionLost(Failure(ResponseDone()))


def pattern(offset: int, size: int) -> bytes:
    block = bytes(range(256)) * 256  # 64 KiB, so every offset used is a multiple of it
    assert offset % len(block) == 0
    return block[:size]


@implementer(IObjectStream)
class GeneratedStream:
    def __init__(self, total: int) -> None:
        self.length = self.size = total
        self.etag = '"g"'
        self.body: GeneratedBody | None = None

    def deliverBody(self, protocol: IProtocol) -> None:
        self.body = GeneratedBody(protocol, self.length)
        protocol.makeConnection(self.body)
        reactor.callLater(0, self.body.produce)  # type: ignore[attr-defined]

    def discard(self) -> None:
        pass


class RelayLoopback(TestCase):
    timeout = 60

    def test_slow_reader_pauses_the_backend(self) -> Deferred[None]:
        total = 16 << 20
        state: dict[str, Any] = {}

        class Download(Resource):
            isLeaf = True

            def render_GET(self, request: StreamingRequest) -> Any:
                stream = GeneratedStream(total)
                state["stream"] = stream
                request.setResponseCode(200)
                clock: Any = reactor
                state["relayed"] = relay_object(request, stream, clock, 20.0)
                return NOT_DONE_YET

        site = S3Site(Download(), never_stream, clock=reactor)  # type: ignore[arg-type]
        port = reactor.listenTCP(0, site, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        port_number = port.getHost().port

        def slow_client() -> tuple[bytes, int, int]:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
            sock.settimeout(30)
            sock.connect(("127.0.0.1", port_number))
            try:
                sock.sendall(b"GET /bucket/key HTTP/1.1\r\nHost: e\r\n\r\n")
                time.sleep(1.0)  # not reading: the server side must pause the backend
                stream = state["stream"]
                sent_while_stalled = stream.body.sent
                pauses_while_stalled = stream.body.pauses
                received = bytearray()
                body_start = -1
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    data = sock.recv(1 << 20)
                    if not data:
                        break
                    received += data
                    if body_start < 0 and b"\r\n\r\n" in received:
                        body_start = received.index(b"\r\n\r\n") + 4
                    if body_start >= 0 and len(received) - body_start >= total:
                        break
                assert pauses_while_stalled > 0
                return bytes(received), sent_while_stalled, pauses_while_stalled
            finally:
                sock.close()

        async def run() -> None:
            received, sent_while_stalled, _ = await threads.deferToThread(slow_client)
            head, _, body = received.partition(b"\r\n\r\n")
            assert b"Content-Length: %d" % total in head
            assert len(body) == total
            block = pattern(0, 1 << 16)
            assert body[: 1 << 16] == block and body[-(1 << 16) :] == block
            # While the client read nothing, the backend was held to what the sockets buffer.
            assert sent_while_stalled < total // 2, sent_while_stalled
            assert await state["relayed"] == total

        return ensureDeferred(run())
