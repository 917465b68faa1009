"""Zero-copy downloads (``splice``): exact bytes, backpressure both ways, every kind of early end,
and the connection usable afterwards; over real loopback sockets."""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from typing import Any

import pytest
from twisted.internet import reactor, threads
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from s3balance.backends.s3 import S3Backend
from s3balance.metrics import ZERO_COPY_BYTES
from s3balance.net import splice, twistedcompat
from s3balance.net.http11 import BodyTransport
from s3balance.web.relay import SPLICE_MIN, BodyLengthMismatch, relay_object
from s3balance.web.request import StreamingRequest
from s3balance.web.requestbody import ClientDisconnected
from s3balance.web.site import S3Site
from test.support.adapters import s3_backend_at

pytestmark = pytest.mark.timeout(90)

SIZE = 12 << 20
#: SO_LINGER on with a zero timeout: close() sends a reset, as a client killed mid-transfer.
_RESET_ON_CLOSE = b"\x01\x00\x00\x00\x00\x00\x00\x00"


def _pattern(size: int, seed: int = 7) -> bytes:
    block = hashlib.sha256(b"%d" % seed).digest() * 2048  # 64 KiB
    return (block * (size // len(block) + 1))[:size]


BODY = _pattern(SIZE)


def _zero_copy_bytes() -> float:
    return ZERO_COPY_BYTES._value.get()


def _socket_pair() -> tuple[socket.socket, socket.socket]:
    """Two ends of one loopback TCP connection."""
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        client = socket.create_connection(listener.getsockname(), timeout=5)
        server, _ = listener.accept()
    finally:
        listener.close()
    return client, server


class ThreadBackend:
    """A loopback HTTP server in a thread: every GET gets ``Content-Length: announced`` and
    ``body`` (shorter than announced to play a backend that dies), then the connection stays
    open (keep-alive) or closes.  Records whether its writes stopped (backpressure)."""

    def __init__(self, body: bytes, announced: int | None = None) -> None:
        self.body = body
        self.announced = len(body) if announced is None else announced
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(10)
        self.port = self.listener.getsockname()[1]
        self.sent = 0
        self.finished_sending = threading.Event()
        self.peer_closed = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        deadline = time.monotonic() + 60
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(30)
            data = b""
            while b"\r\n\r\n" not in data and time.monotonic() < deadline:
                piece = conn.recv(65536)
                if not piece:
                    return
                data += piece
            conn.sendall(
                b'HTTP/1.1 200 OK\r\nContent-Length: %d\r\nETag: "e"\r\n\r\n' % self.announced
            )
            view = memoryview(self.body)
            try:
                while self.sent < len(self.body) and time.monotonic() < deadline:
                    self.sent += conn.send(view[self.sent : self.sent + (1 << 20)])
            except OSError:
                self.peer_closed.set()
                return
            self.finished_sending.set()
            if self.announced == len(self.body):
                # Keep-alive: wait for the other side to close (detached connections are).
                try:
                    while time.monotonic() < deadline and conn.recv(65536):
                        pass
                except OSError:
                    pass
                self.peer_closed.set()

    def close(self) -> None:
        self.listener.close()
        self.thread.join(10)


class Getter(Resource):
    """Answers GET by relaying the thread backend's object through the S3 adapter."""

    isLeaf = True

    def __init__(self, backend: S3Backend, zero_copy: bool) -> None:
        super().__init__()
        self.backend = backend
        self.zero_copy = zero_copy
        self.relays: list[Deferred[int]] = []
        self.outcomes: list[Any] = []

    def render_GET(self, request: StreamingRequest) -> Any:
        if request.path == b"/small":
            request.setHeader(b"Content-Length", b"2")
            return b"ok"
        ensureDeferred(self._serve(request))
        return NOT_DONE_YET

    async def _serve(self, request: StreamingRequest) -> None:
        stream = await self.backend.get_object("key")
        request.setResponseCode(200)
        relayed = relay_object(request, stream, reactor, 5.0, self.zero_copy)
        self.relays.append(relayed)
        try:
            self.outcomes.append(await relayed)
        except Exception as e:  # what the relay reports, for the tests to check
            self.outcomes.append(Failure(e))


def _never_stream(request: Any) -> bool:
    return False


def _read_response(sock: socket.socket, limit: int, pause: float = 0.0) -> tuple[bytes, bytes]:
    """One response: (head, body) with the body read up to Content-Length or the connection's
    end, whichever first.  ``pause`` seconds of not reading after the head."""
    sock.settimeout(20)
    data = b""
    while b"\r\n\r\n" not in data:
        piece = sock.recv(65536)
        if not piece:
            return data, b""
        data += piece
    head, body = data.split(b"\r\n\r\n", 1)
    length = limit
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if pause:
        time.sleep(pause)
    chunks = [body]
    received = len(body)
    deadline = time.monotonic() + 60
    while received < length and time.monotonic() < deadline:
        try:
            piece = sock.recv(1 << 20)
        except ConnectionResetError:
            break
        if not piece:
            break
        chunks.append(piece)
        received += len(piece)
    return head, b"".join(chunks)


class SpliceRelayTests(TestCase):
    timeout = 90

    def setUp(self) -> None:
        if not splice.available():
            raise SkipTest("no splice(2) on this platform")

    def _start(self, backend: ThreadBackend, zero_copy: bool = True) -> Getter:
        self.addCleanup(backend.close)
        adapter = s3_backend_at(self, f"http://127.0.0.1:{backend.port}", stall_timeout=10)
        getter = Getter(adapter, zero_copy)
        site = S3Site(getter, _never_stream, clock=reactor)
        port = reactor.listenTCP(0, site, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        self.front = port.getHost().port
        return getter

    def _client(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.front), timeout=5)
        self.addCleanup(sock.close)
        return sock

    async def test_large_body_moves_in_the_kernel_and_the_connection_stays_usable(self) -> None:
        backend = ThreadBackend(BODY)
        getter = self._start(backend)
        before = _zero_copy_bytes()
        sock = self._client()

        def two_gets() -> tuple[bytes, bytes, bytes]:
            sock.sendall(b"GET /v/key HTTP/1.1\r\nHost: x\r\n\r\n")
            head, body = _read_response(sock, SIZE)
            # The same connection serves the next request.
            sock.sendall(b"GET /small HTTP/1.1\r\nHost: x\r\n\r\n")
            second, small = _read_response(sock, 2)
            return head, body, second + b"\r\n\r\n" + small
            return head, body, second

        head, body, second = await threads.deferToThread(two_gets)
        self.assertTrue(head.startswith(b"HTTP/1.1 200"), head)
        self.assertIn(b"Content-Length: %d" % SIZE, head)
        self.assertEqual(len(body), SIZE)
        self.assertEqual(hashlib.md5(body).digest(), hashlib.md5(BODY).digest())
        self.assertEqual(getter.outcomes[0], SIZE)
        moved = _zero_copy_bytes() - before
        # Whatever Agent had read with the headers went through Python; the rest did not.
        self.assertGreater(moved, SIZE - (4 << 20))
        self.assertLessEqual(moved, SIZE)
        self.assertTrue(second.startswith(b"HTTP/1.1 200"), second[:100])
        self.assertTrue(second.endswith(b"\r\n\r\nok"), second[-100:])
        # The detached backend connection was closed, not returned to Agent's pool.
        self.assertTrue(await threads.deferToThread(backend.peer_closed.wait, 10))

    async def test_zero_copy_off_relays_through_the_daemon(self) -> None:
        backend = ThreadBackend(BODY)
        self._start(backend, zero_copy=False)
        before = _zero_copy_bytes()
        sock = self._client()

        def get() -> tuple[bytes, bytes]:
            sock.sendall(b"GET /v/key HTTP/1.1\r\nHost: x\r\n\r\n")
            return _read_response(sock, SIZE)

        head, body = await threads.deferToThread(get)
        self.assertEqual(hashlib.md5(body).digest(), hashlib.md5(BODY).digest())
        self.assertEqual(_zero_copy_bytes(), before)

    async def _get_without_zero_copy(self) -> None:
        backend = ThreadBackend(BODY)
        self._start(backend)
        before = _zero_copy_bytes()
        sock = self._client()

        def get() -> tuple[bytes, bytes]:
            sock.sendall(b"GET /v/key HTTP/1.1\r\nHost: x\r\n\r\n")
            return _read_response(sock, SIZE)

        head, body = await threads.deferToThread(get)
        self.assertTrue(head.startswith(b"HTTP/1.1 200"), head)
        self.assertEqual(hashlib.md5(body).digest(), hashlib.md5(BODY).digest())
        self.assertEqual(_zero_copy_bytes(), before)

    async def test_without_twisteds_unsent_buffer_the_ordinary_path_serves(self) -> None:
        # The degraded mode of a Twisted whose FileDescriptor lacks _tempDataBuffer.
        self.patch(twistedcompat, "can_take_unsent", lambda transport: False)
        await self._get_without_zero_copy()

    async def test_a_body_whose_connection_cannot_be_taken_takes_the_ordinary_path(self) -> None:
        # As under TLS, or with body bytes still waiting in the client connection.
        self.patch(BodyTransport, "connection", None)
        await self._get_without_zero_copy()

    async def test_slow_client_holds_the_backend_back(self) -> None:
        size = 64 << 20
        big = _pattern(size, 3)
        backend = ThreadBackend(big)
        self._start(backend)
        sock = self._client()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
        stalled: list[int] = []

        def get() -> tuple[bytes, bytes]:
            sock.sendall(b"GET /v/key HTTP/1.1\r\nHost: x\r\n\r\n")
            data = b""
            while b"\r\n\r\n" not in data:
                data += sock.recv(65536)
            time.sleep(1.5)  # read nothing: the pipe and both sockets fill, then nothing moves
            stalled.append(backend.sent)
            time.sleep(0.5)
            stalled.append(backend.sent)
            head, _, start = data.partition(b"\r\n\r\n")
            rest = _read_response_rest(sock, size - len(start))
            return head, start + rest

        head, body = await threads.deferToThread(get)
        self.assertEqual(stalled[0], stalled[1], "the backend kept sending to a stalled client")
        self.assertLess(stalled[0], size // 2)
        self.assertEqual(len(body), size)
        self.assertEqual(hashlib.md5(body).digest(), hashlib.md5(big).digest())

    async def test_backend_ending_early_breaks_the_client_connection(self) -> None:
        backend = ThreadBackend(BODY[: 6 << 20], announced=SIZE)
        getter = self._start(backend)
        sock = self._client()

        def get() -> tuple[bytes, bytes]:
            sock.sendall(b"GET /v/key HTTP/1.1\r\nHost: x\r\n\r\n")
            return _read_response(sock, SIZE)

        head, body = await threads.deferToThread(get)
        self.assertTrue(head.startswith(b"HTTP/1.1 200"), head)
        self.assertLess(len(body), SIZE)  # the connection ended: never a short "success"
        self.assertEqual(body, BODY[: len(body)])
        outcome = getter.outcomes[0]
        self.assertIsInstance(outcome, Failure)
        self.assertTrue(outcome.check(BodyLengthMismatch), outcome)

    async def test_client_leaving_mid_body_stops_the_backend(self) -> None:
        backend = ThreadBackend(_pattern(64 << 20, 5))
        getter = self._start(backend)
        sock = self._client()

        def get_some() -> None:
            sock.sendall(b"GET /v/key HTTP/1.1\r\nHost: x\r\n\r\n")
            received = 0
            while received < (2 << 20):
                received += len(sock.recv(1 << 20))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
            sock.close()

        await threads.deferToThread(get_some)
        self.assertTrue(await threads.deferToThread(backend.peer_closed.wait, 20))
        self.assertFalse(backend.finished_sending.is_set())
        for _ in range(100):
            if getter.outcomes:
                break
            await _sleep(0.05)
        outcome = getter.outcomes[0]
        self.assertIsInstance(outcome, Failure)
        self.assertTrue(outcome.check(ClientDisconnected), outcome)

    def test_small_bodies_and_other_transports_take_the_ordinary_path(self) -> None:
        self.assertGreaterEqual(SPLICE_MIN, 1 << 20)
        self.assertIsNone(splice.tcp_socket(StringTransport()))
        self.assertIsNone(splice.tcp_socket(None))


def _read_response_rest(sock: socket.socket, left: int) -> bytes:
    chunks = []
    deadline = time.monotonic() + 60
    while left > 0 and time.monotonic() < deadline:
        piece = sock.recv(1 << 20)
        if not piece:
            break
        chunks.append(piece)
        left -= len(piece)
    return b"".join(chunks)


def _sleep(seconds: float) -> Deferred[None]:
    from twisted.internet.task import deferLater

    return deferLater(reactor, seconds, lambda: None)


class SocketSpliceTests(TestCase):
    """The pump itself, between two raw loopback connections."""

    timeout = 60

    def setUp(self) -> None:
        if not splice.available():
            raise SkipTest("no splice(2) on this platform")
        self.backend_peer, source = _socket_pair()
        sink, self.client_peer = _socket_pair()
        for sock in (self.backend_peer, source, sink, self.client_peer):
            self.addCleanup(sock.close)
        source.setblocking(False)
        sink.setblocking(False)
        self.source, self.sink = source, sink

    def _splice(self, count: int, pending: bytes = b"") -> splice.SocketSplice:
        moving = splice.SocketSplice(
            reactor, self.source, self.sink, count, pending, lambda n: None  # type: ignore[arg-type]
        )
        self.addCleanup(moving.stop)
        return moving

    async def test_pending_bytes_first_then_exactly_count(self) -> None:
        payload = _pattern(3 << 20, 9)
        moving = self._splice(len(payload), pending=b"HEAD")
        done = moving.start()
        received = threads.deferToThread(_read_exactly, self.client_peer, 4 + len(payload))
        await threads.deferToThread(self.backend_peer.sendall, payload + b"NEXT")
        self.assertEqual(await done, len(payload))
        self.assertEqual(await received, b"HEAD" + payload)
        # What follows the body is left on the source socket, unread.
        self.source.setblocking(True)
        self.source.settimeout(5)
        self.assertEqual(self.source.recv(10), b"NEXT")
        self.assertNotIn(moving, [getattr(d, "_owner", None) for d in reactor.getReaders()])
        self.assertNotIn(moving, [getattr(d, "_owner", None) for d in reactor.getWriters()])

    async def test_source_closing_early(self) -> None:
        moving = self._splice(1 << 20)
        done = moving.start()
        await threads.deferToThread(self.backend_peer.sendall, b"x" * 1000)
        self.backend_peer.close()
        failure = await self.assertFailure(done, splice.SourceEnded)
        self.assertIn("1000 of 1048576", str(failure))

    async def test_sink_going_away(self) -> None:
        moving = self._splice(8 << 20)
        done = moving.start()
        self.client_peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
        self.client_peer.close()  # a reset: the next write fails
        sender = threads.deferToThread(_send_ignoring_errors, self.backend_peer, 8 << 20)
        await self.assertFailure(done, splice.SinkFailed)
        self.backend_peer.close()
        await sender

    def test_stop_leaves_no_descriptor_behind(self) -> None:
        moving = self._splice(1 << 20)
        moving.start()
        owners = [getattr(d, "_owner", None) for d in reactor.getReaders()]
        self.assertIn(moving, owners)  # waiting for the backend
        moving.stop()
        owners = [getattr(d, "_owner", None) for d in reactor.getReaders() + reactor.getWriters()]
        self.assertNotIn(moving, owners)


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    sock.settimeout(20)
    chunks = []
    while size > 0:
        piece = sock.recv(min(size, 1 << 20))
        if not piece:
            break
        chunks.append(piece)
        size -= len(piece)
    return b"".join(chunks)


def _send_ignoring_errors(sock: socket.socket, size: int) -> None:
    try:
        sock.sendall(b"y" * size)
    except OSError:
        pass
