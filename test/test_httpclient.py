"""The backends' HTTP/1.1 client against a scripted loopback server: framing, reuse, the retry
of a request a stale connection lost, backpressure both ways, cancellation, early answers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IConsumer
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.client import PotentialDataLoss, ResponseDone, ResponseNeverReceived
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

from s3balance.net.http11 import BUFFER_BEFORE_PAUSE, encode_head
from s3balance.net.httpclient import ConnectionPool, HTTPClient

pytestmark = pytest.mark.timeout(60)

Handler = Callable[["ScriptedServer", bytes, bytes], None]


class ScriptedServer(Protocol):
    """Reads requests (head and ``Content-Length`` body) and lets the test's handler answer."""

    def __init__(self, site: Site) -> None:
        self.site = site
        self.buffer = b""
        self.lost = False

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.lost = True

    def connectionMade(self) -> None:
        self.site.connections.append(self)

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        self.site.received += len(data)
        while b"\r\n\r\n" in self.buffer:
            head, _, rest = self.buffer.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(rest) < length and not self.site.answer_early:
                return
            body, self.buffer = rest[:length], rest[length:]
            self.site.requests.append((head, body))
            self.site.handler(self, head, body)
            if self.site.answer_early:
                self.buffer = b""
                return

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)


class Site(Factory):
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections: list[ScriptedServer] = []
        self.requests: list[tuple[bytes, bytes]] = []
        self.received = 0
        self.answer_early = False

    def buildProtocol(self, addr: Any) -> ScriptedServer:
        return ScriptedServer(self)


def ok(body: bytes = b"hello") -> Handler:
    def handle(server: ScriptedServer, head: bytes, _: bytes) -> None:
        if head.startswith(b"HEAD "):
            server.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
        else:
            server.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

    return handle


class Collector(Protocol):
    def __init__(self, pause_at_start: bool = False) -> None:
        self.chunks: list[bytes] = []
        #: Fires with the end's reason (in a list: a Failure result would errback).
        self.done: Deferred[list[Failure]] = Deferred()
        self._pause_at_start = pause_at_start

    def connectionMade(self) -> None:
        if self._pause_at_start:
            self.transport.pauseProducing()  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        assert reason is not None
        self.done.callback([reason])


@implementer(IBodyProducer)
class HeldBody:
    """A streamed request body the test writes by hand."""

    def __init__(self, length: int) -> None:
        self.length = length
        self.consumer: IConsumer | None = None
        self.finished: Deferred[None] = Deferred()
        self.paused = 0
        self.stopped = False

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        self.consumer = consumer
        return self.finished

    def pauseProducing(self) -> None:
        self.paused += 1

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        self.stopped = True


class HTTPClientTests(TestCase):
    def serve(self, handler: Handler) -> tuple[Site, HTTPClient, ConnectionPool]:
        site = Site(handler)
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        pool = ConnectionPool(reactor)
        self.addCleanup(self._close, site, pool)
        client = HTTPClient(reactor, pool, "http", "127.0.0.1", port.getHost().port, 5)
        return site, client, pool

    async def _close(self, site: Site, pool: ConnectionPool) -> None:
        await pool.closeCachedConnections()
        for connection in site.connections:
            assert connection.transport is not None
            connection.transport.abortConnection()
        await deferLater(reactor, 0.05, lambda: None)

    async def get_body(self, client: HTTPClient, method: str = "GET") -> tuple[Any, bytes]:
        response = await client.request(method, "/k", {"Host": "h"})
        collector = Collector()
        response.deliverBody(collector)
        [reason] = await collector.done
        assert reason.check(ResponseDone), reason
        return response, b"".join(collector.chunks)

    async def test_a_connection_serves_request_after_request(self) -> None:
        site, client, _ = self.serve(ok())
        for _ in range(3):
            response, body = await self.get_body(client)
            self.assertEqual((response.code, response.length, body), (200, 5, b"hello"))
        self.assertEqual(len(site.connections), 1)
        self.assertEqual(site.requests[0][0], b"GET /k HTTP/1.1\r\nHost: h")

    async def test_a_head_answer_has_no_body_and_keeps_the_connection(self) -> None:
        site, client, _ = self.serve(ok(b"x" * 100))
        response, body = await self.get_body(client, "HEAD")
        self.assertEqual((response.length, body), (0, b""))
        self.assertEqual(response.headers.getRawHeaders("content-length"), ["100"])
        await self.get_body(client)
        self.assertEqual(len(site.connections), 1)

    async def test_chunked_answers_are_decoded(self) -> None:
        def chunked(server: ScriptedServer, head: bytes, body: bytes) -> None:
            server.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for piece in (b"5;ext=1\r\nhello\r\n", b"1\r\n", b" \r\n6\r\nworld!\r\n", b"0\r\n"):
                server.send(piece)
            server.send(b"X-Trailer: t\r\n\r\n")

        site, client, _ = self.serve(chunked)
        response, body = await self.get_body(client)
        self.assertEqual((response.length, body), (UNKNOWN_LENGTH, b"hello world!"))
        await self.get_body(client)
        self.assertEqual(len(site.connections), 1)

    async def test_a_body_until_close_may_have_lost_data_and_is_not_reused(self) -> None:
        def until_close(server: ScriptedServer, head: bytes, body: bytes) -> None:
            server.send(b"HTTP/1.1 200 OK\r\n\r\nall of it")
            assert server.transport is not None
            server.transport.loseConnection()

        site, client, _ = self.serve(until_close)
        response = await client.request("GET", "/k", {"Host": "h"})
        collector = Collector()
        response.deliverBody(collector)
        [reason] = await collector.done
        self.assertTrue(reason.check(PotentialDataLoss))
        self.assertEqual(b"".join(collector.chunks), b"all of it")
        await client.request("GET", "/k", {"Host": "h"})
        self.assertEqual(len(site.connections), 2)

    async def test_connection_close_answers_are_not_reused(self) -> None:
        def closing(server: ScriptedServer, head: bytes, body: bytes) -> None:
            server.send(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok")

        site, client, _ = self.serve(closing)
        await self.get_body(client)
        await self.get_body(client)
        self.assertEqual(len(site.connections), 2)

    async def idle_connection_the_server_will_drop(self) -> tuple[Site, HTTPClient]:
        """A client with one idle kept-alive connection, which the server closes as the next
        request arrives on it (nothing answered); requests on new connections are answered."""
        site, client, _ = self.serve(ok())
        await self.get_body(client)
        first = site.connections[0]

        def drop_first(server: ScriptedServer, head: bytes, body: bytes) -> None:
            if server is first:
                assert server.transport is not None
                server.transport.abortConnection()
            else:
                ok()(server, head, body)

        site.handler = drop_first
        return site, client

    async def test_a_connection_the_server_closed_between_requests_is_retried_once(
        self,
    ) -> None:
        site, client = await self.idle_connection_the_server_will_drop()
        _, body = await self.get_body(client)
        self.assertEqual(body, b"hello")
        self.assertEqual(len(site.connections), 2)

    async def test_a_request_with_a_body_is_not_sent_again(self) -> None:
        site, client = await self.idle_connection_the_server_will_drop()
        with self.assertRaises(ResponseNeverReceived):
            await client.request("PUT", "/k", {"Host": "h"}, small_body=b"data")
        self.assertEqual(len(site.connections), 1)

    async def test_a_streamed_body_goes_out_at_the_servers_pace_then_the_answer_comes(
        self,
    ) -> None:
        site, client, _ = self.serve(ok(b""))
        body = HeldBody(8 << 20)
        sending = client.request("PUT", "/k", {"Host": "h"}, body, body.length)
        answered: list[object] = []
        sending.addCallback(lambda response: answered.append(response) or response)
        await deferLater(reactor, 0.05, lambda: None)
        assert body.consumer is not None
        block = b"x" * (1 << 20)
        for _ in range(8):
            body.consumer.write(block)
        # The server reads as fast as it can, but 8 MiB written at once fill the socket.
        self.assertGreater(body.paused, 0)
        self.assertEqual(answered, [])
        body.finished.callback(None)
        response = await sending
        self.assertEqual(response.code, 200)
        while site.received < (8 << 20):
            await deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(len(site.requests[0][1]), 8 << 20)

    async def test_an_answer_before_the_whole_body_stops_the_body(self) -> None:
        def refuse(server: ScriptedServer, head: bytes, body: bytes) -> None:
            server.send(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno")

        site, client, _ = self.serve(refuse)
        site.answer_early = True
        body = HeldBody(1000)
        sending = client.request("PUT", "/k", {"Host": "h"}, body, body.length)
        await deferLater(reactor, 0.05, lambda: None)
        assert body.consumer is not None
        body.consumer.write(b"x" * 10)
        response = await sending
        self.assertEqual(response.code, 403)
        self.assertTrue(body.stopped)
        collector = Collector()
        response.deliverBody(collector)
        self.assertTrue((await collector.done)[0].check(ResponseDone))
        self.assertEqual(b"".join(collector.chunks), b"no")
        await self.get_body(client)
        self.assertEqual(len(site.connections), 2)  # the first one was not reused

    async def test_a_failed_body_aborts_the_request(self) -> None:
        site, client, _ = self.serve(ok())
        body = HeldBody(1000)
        sending = client.request("PUT", "/k", {"Host": "h"}, body, body.length)
        await deferLater(reactor, 0.05, lambda: None)
        body.finished.errback(ValueError("bad checksum"))
        with self.assertRaises(ValueError):
            await sending
        await deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(site.requests, [])
        await self.get_body(client)
        self.assertEqual(len(site.connections), 2)

    async def test_cancelling_aborts_the_connection(self) -> None:
        site, client, _ = self.serve(lambda server, head, body: None)  # never answers
        sending = client.request("GET", "/k", {"Host": "h"})
        await deferLater(reactor, 0.05, lambda: None)
        sending.cancel()
        with self.assertRaises(CancelledError):
            await sending
        site.handler = ok()
        await self.get_body(client)
        self.assertEqual(len(site.connections), 2)

    async def test_a_body_not_taken_yet_pauses_the_socket_past_a_few_kib(self) -> None:
        size = 512 * BUFFER_BEFORE_PAUSE  # more than the sockets' buffers hold
        site, client, _ = self.serve(ok(b"y" * size))
        response = await client.request("GET", "/k", {"Host": "h"})
        await deferLater(reactor, 0.2, lambda: None)
        connection = site.connections[0]
        assert connection.transport is not None
        # The server could not write everything: the client stopped reading.
        self.assertGreater(len(connection.transport.dataBuffer) + sum(  # type: ignore[attr-defined]
            len(b) for b in connection.transport._tempDataBuffer  # type: ignore[attr-defined]
        ), 0)
        collector = Collector()
        response.deliverBody(collector)
        self.assertTrue((await collector.done)[0].check(ResponseDone))
        self.assertEqual(len(b"".join(collector.chunks)), size)

    async def test_a_body_ended_before_it_was_taken_is_delivered_whole(self) -> None:
        site, client, _ = self.serve(ok(b"z" * 1000))
        response = await client.request("GET", "/k", {"Host": "h"})
        await deferLater(reactor, 0.05, lambda: None)
        await self.get_body(client)  # the connection served another request meanwhile
        collector = Collector(pause_at_start=True)
        response.deliverBody(collector)
        self.assertTrue((await collector.done)[0].check(ResponseDone))
        self.assertEqual(b"".join(collector.chunks), b"z" * 1000)
        self.assertEqual(len(site.connections), 1)

    async def test_idle_connections_close_after_the_idle_timeout(self) -> None:
        site = Site(ok())
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        pool = ConnectionPool(reactor, idle_timeout=0.1)
        self.addCleanup(pool.closeCachedConnections)
        client = HTTPClient(reactor, pool, "http", "127.0.0.1", port.getHost().port, 5)
        await self.get_body(client)
        await self.get_body(client)
        await deferLater(reactor, 0.4, lambda: None)
        # Closed without another request coming to find it aged.
        self.assertEqual([connection.lost for connection in site.connections], [True])
        self.assertIsNone(pool.take(("http", "127.0.0.1", port.getHost().port, None)))
        await self.get_body(client)
        self.assertEqual(len(site.connections), 2)

    async def test_a_garbled_answer_fails_the_request(self) -> None:
        site, client, _ = self.serve(lambda server, head, body: server.send(b"SPAM\r\n\r\n"))
        with self.assertRaises(Exception) as raised:
            await client.request("GET", "/k", {"Host": "h"})
        self.assertIn("bad status line", str(raised.exception.reasons[0].value))  # type: ignore[attr-defined]

    async def test_a_chunk_size_that_is_not_plain_hex_fails_the_body(self) -> None:
        # int(text, 16) also takes "0x5", "+5" and "5_0"; a chunk size is hex digits only.
        for size in (b"0x5", b"+5", b"5_0"):

            def chunked(
                server: ScriptedServer, head: bytes, body: bytes, size: bytes = size
            ) -> None:
                server.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                server.send(size + b"\r\nhello\r\n0\r\n\r\n")

            site, client, _ = self.serve(chunked)
            response = await client.request("GET", "/k", {"Host": "h"})
            collector = Collector()
            response.deliverBody(collector)
            [reason] = await collector.done
            self.assertIn("bad chunk size", str(reason.value), size)
            self.assertEqual(b"".join(collector.chunks), b"", size)


def test_header_values_never_add_a_line() -> None:
    head = encode_head("PUT", "/k", {"Host": "h", "x-amz-meta-a": "1\r\nEvil: yes"}, 3)
    assert head == (
        b"PUT /k HTTP/1.1\r\nHost: h\r\nx-amz-meta-a: 1 Evil: yes\r\nContent-Length: 3\r\n\r\n"
    )


def test_header_names_must_be_tokens() -> None:
    with pytest.raises(ValueError):
        encode_head("GET", "/", {"Bad: name": "v"}, None)
