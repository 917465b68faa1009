"""Clients that hold connections open for nothing (issue 13, 2): slow headers, slow buffered
bodies, more connections than the daemon takes.  Real sockets against the in-process daemon."""

from __future__ import annotations

import http.client
import selectors
import socket
import time
from pathlib import Path

from twisted.internet import reactor, task
from twisted.trial import unittest

from s3balance.components import METRICS_MAX_CONNECTIONS
from s3balance.metrics import REFUSALS
from test.support import free_port, wait_until
from test.support.daemon import DaemonTestCase, in_thread
from test.support.process import DaemonProcess
from test.support.rawhttp import exchange, read_until_closed

SLOWLORIS_CONNECTIONS = 1000
HEADER_TIMEOUT = 1.0
SCRAPE = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"


def refusals(reason: str) -> float:
    return REFUSALS.labels(reason)._value.get()


def slowloris(port: int, count: int, trickle_for: float, wait_for: float) -> list[bytes]:
    """``count`` connections that send a request line and then one header byte at a time.

    :returns: what each connection received before the daemon closed it; a connection still
        open after ``wait_for`` seconds gives ``b"still open"``.
    """
    sockets = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(b"GET /vb/k HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        sock.setblocking(False)
        sockets.append(sock)
    received = {sock: b"" for sock in sockets}
    open_ = set(sockets)
    selector = selectors.DefaultSelector()  # epoll: descriptors beyond select()'s 1024
    for sock in sockets:
        selector.register(sock, selectors.EVENT_READ)
    started = time.monotonic()
    try:
        while open_ and time.monotonic() - started < wait_for:
            if time.monotonic() - started < trickle_for:
                for sock in list(open_):
                    try:
                        sock.send(b"a")
                    except OSError:
                        open_.discard(sock)
                        selector.unregister(sock)
            for key, _ in selector.select(0.2):
                sock = key.fileobj  # type: ignore[assignment]
                try:
                    chunk = sock.recv(65536)
                except OSError:
                    chunk = b""
                received[sock] += chunk
                if not chunk:
                    open_.discard(sock)
                    selector.unregister(sock)
    finally:
        selector.close()
        for sock in sockets:
            sock.close()
    return [received[sock] if sock not in open_ else b"still open" for sock in sockets]


def list_bucket(port: int) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        connection.request("GET", "/vb?list-type=2")
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


class SlowClientTests(DaemonTestCase, unittest.TestCase):
    timeout = 120

    async def test_slowloris_connections_are_closed_at_the_header_deadline(self) -> None:
        self.daemon.site.header_timeout = HEADER_TIMEOUT
        # Room for the slow connections and the normal client (the cap has its own test).
        self.daemon.site.max_connections = SLOWLORIS_CONNECTIONS + 10
        port = self.daemon.port_number
        before = refusals("header_timeout")
        attack = in_thread(slowloris, port, SLOWLORIS_CONNECTIONS, HEADER_TIMEOUT * 0.8, 45.0)
        # A normal client is served while the slow ones are connected.
        await task.deferLater(reactor, 0.3, lambda: None)
        self.assertEqual(await in_thread(list_bucket, port), 200)
        answers = await attack
        self.assertEqual([a for a in answers if a == b"still open"], [])
        timed_out = [a for a in answers if b"<Code>RequestTimeout</Code>" in a]
        self.assertTrue(timed_out)
        self.assertTrue(timed_out[0].startswith(b"HTTP/1.1 400 "))
        self.assertEqual(refusals("header_timeout") - before, SLOWLORIS_CONNECTIONS)
        self.assertEqual(await in_thread(list_bucket, port), 200)

    async def test_a_slow_buffered_body_is_cut_at_the_body_deadline(self) -> None:
        self.daemon.site.body_timeout = 1.0
        port = self.daemon.port_number
        before = refusals("body_timeout")

        def trickle() -> bytes:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(
                    b"POST /vb?delete HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    b"Content-Length: 1000\r\n\r\n<Delete>"
                )
                started = time.monotonic()
                while time.monotonic() - started < 0.8:
                    sock.sendall(b" ")
                    time.sleep(0.1)
                return read_until_closed(sock, 20)

        answer = await in_thread(trickle)
        self.assertTrue(answer.startswith(b"HTTP/1.1 400 "), answer[:200])
        self.assertIn(b"<Code>RequestTimeout</Code>", answer)
        self.assertEqual(refusals("body_timeout") - before, 1)

    async def test_connections_beyond_the_cap_are_refused_then_served_again(self) -> None:
        cap = 20
        self.daemon.site.max_connections = cap
        port = self.daemon.port_number
        before = refusals("max_connections")
        idle = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(cap)]
        try:
            for _ in range(200):  # the daemon has accepted them all
                if self.daemon.site.open_connections >= cap:
                    break
                await task.deferLater(reactor, 0.02, lambda: None)
            self.assertEqual(self.daemon.site.open_connections, cap)
            answer = await in_thread(
                exchange, port, b"GET /vb?list-type=2 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
            )
            self.assertTrue(answer.startswith(b"HTTP/1.1 503 "), answer[:200])
            self.assertIn(b"<Code>SlowDown</Code>", answer)
            self.assertEqual(refusals("max_connections") - before, 1)
        finally:
            for sock in idle[:5]:
                sock.close()
        try:
            for _ in range(200):
                if self.daemon.site.open_connections <= cap - 5:
                    break
                await task.deferLater(reactor, 0.02, lambda: None)
            self.assertEqual(await in_thread(list_bucket, port), 200)
        finally:
            for sock in idle[5:]:
                sock.close()

    async def test_a_content_length_of_thousands_of_digits_is_invalid_argument(self) -> None:
        answer = await in_thread(
            exchange,
            self.daemon.port_number,
            b"PUT /vb/k HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: "
            + b"9" * 5000
            + b"\r\n\r\n",
        )
        self.assertTrue(answer.startswith(b"HTTP/1.1 400 "), answer[:200])
        self.assertIn(b"<Code>InvalidArgument</Code>", answer)
        self.assertIn(b"<ArgumentName>Content-Length</ArgumentName>", answer)

    async def test_a_content_length_with_thousands_of_leading_zeros_is_read(self) -> None:
        answer = await in_thread(
            exchange,
            self.daemon.port_number,
            b"PUT /vb/zeros HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            b"Content-Length: " + b"0" * 5000 + b"3\r\n\r\nabc",
        )
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 "), answer[:300])

    async def test_what_twisted_cannot_parse_gets_s3s_xml_error_and_the_daemon_serves_on(
        self,
    ) -> None:
        malformed = [
            b"GET /vb/k\r\nHost: 127.0.0.1\r\n\r\n",  # no HTTP version
            b"GET /vb/k HTTP/1.1\r\nHost 127.0.0.1\r\n\r\n",  # a header without a colon
            b"GET /vb/k HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: ten\r\n\r\n",
            b"GET /vb/k HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"v" * 20000 + b"\r\n\r\n",
            b"GET /vb/k HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            + b"".join(b"X-H%d: v\r\n" % n for n in range(600))  # more headers than allowed
            + b"\r\n",
        ]
        before = refusals("malformed_request")
        for request in malformed:
            answer = await in_thread(exchange, self.daemon.port_number, request)
            head, _, body = answer.partition(b"\r\n\r\n")
            self.assertTrue(head.startswith(b"HTTP/1.1 400 "), (request[:60], answer[:200]))
            self.assertIn(b"\r\nContent-Type: application/xml\r\n", head + b"\r\n")
            self.assertIn(b"<Code>InvalidRequest</Code>", body)
            self.assertIn(b"\r\nContent-Length: %d\r\n" % len(body), head + b"\r\n")
        self.assertEqual(refusals("malformed_request") - before, len(malformed))
        self.assertEqual(await in_thread(list_bucket, self.daemon.port_number), 200)


def test_the_metrics_port_has_deadlines_and_a_connection_cap(tmp_path: Path) -> None:
    """``metrics.port`` is reachable by whoever reaches the host: a connection that never ends
    its headers is closed at the header deadline, and connections beyond the cap are answered
    503 and closed, while the S3 port goes on serving."""
    metrics_port = free_port()
    config = {
        "buckets": [{"name": "disk", "path": "b"}],
        "server": {"header_timeout": "3s"},
        "metrics": {"port": metrics_port},
    }
    with DaemonProcess(tmp_path, config) as daemon:
        stalled = socket.create_connection(("127.0.0.1", metrics_port), timeout=10)
        try:
            stalled.sendall(b"GET /met")  # and nothing more
            started = time.monotonic()
            answer = read_until_closed(stalled, 15)
            assert time.monotonic() - started < 10, "the stalled connection stayed open"
            assert b"RequestTimeout" in answer, answer[:200]
        finally:
            stalled.close()
        idle = [
            socket.create_connection(("127.0.0.1", metrics_port), timeout=10)
            for _ in range(METRICS_MAX_CONNECTIONS)
        ]
        try:
            for sock in idle:  # each is accepted: a partial request line keeps it busy
                sock.sendall(b"GET /met")
            time.sleep(0.3)
            refused = exchange(metrics_port, SCRAPE)
            assert refused.startswith(b"HTTP/1.1 503 "), refused[:200]
            assert daemon.health()["status"] == "healthy"  # the S3 port is untouched
        finally:
            for sock in idle:
                sock.close()

        # Once they are gone, a scrape is served again.
        def scraped() -> bool:
            answer = exchange(metrics_port, SCRAPE)
            return answer.startswith(b"HTTP/1.1 200 ")

        assert wait_until(scraped, 10)
