"""The data path over raw sockets: disconnects, ``Expect: 100-continue``, slow readers.

These speak HTTP by hand because boto3 hides exactly what matters here (when the body is sent,
what happens when a client stops reading or vanishes).
"""

from __future__ import annotations

import hashlib
import os
import resource
import socket
import time
from typing import Any

from twisted.internet import reactor, task
from twisted.trial import unittest

from test.support.bodies import GeneratedBody, generated_md5
from test.support.daemon import DaemonTestCase


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def _read_response_head(sock: socket.socket, limit: float = 5.0) -> bytes:
    """Bytes up to and including the blank line after the headers (and whatever came along)."""
    sock.settimeout(limit)
    data = b""
    deadline = time.monotonic() + limit
    while b"\r\n\r\n" not in data and time.monotonic() < deadline:
        piece = sock.recv(65536)
        if not piece:
            break
        data += piece
    return data


class StreamingTests(DaemonTestCase, unittest.TestCase):
    timeout = 120

    def _connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.daemon.port_number), timeout=5)

    async def _settle(self, condition, limit: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if await condition():
                return True
            await task.deferLater(reactor, 0.05, lambda: None)
        return False

    async def test_each_request_is_routed_once(self) -> None:
        """A streamed PUT and a buffered POST are routed when their headers are in (to decide
        how the body is read), and that route serves the request too."""
        router = self.daemon.resource.router
        routed: list[bytes] = []
        route = router.route

        def counted(method: bytes, target: bytes, headers: Any) -> Any:
            routed.append(method)
            return route(method, target, headers)

        router.route = counted  # type: ignore[method-assign]
        await self.call(self.s3.put_object, Bucket="vb", Key="k", Body=b"x" * 1000)
        await self.call(
            self.s3.delete_objects, Bucket="vb", Delete={"Objects": [{"Key": "k"}]}
        )
        self.assertEqual(routed, [b"PUT", b"POST"])

    async def test_client_disconnecting_mid_upload_leaves_nothing(self) -> None:
        def upload_half() -> None:
            with self._connect() as sock:
                sock.sendall(
                    b"PUT /vb/half HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 4000000\r\n\r\n"
                )
                sock.sendall(b"a" * 2_000_000)
                time.sleep(0.3)

        await self.call(upload_half)

        async def clean() -> bool:
            keys = await self.backend_keys()
            return keys == {"r1": [], "r2": []}

        self.assertTrue(await self._settle(clean))
        # Give a wrongly committed upload time to show up before concluding.
        await task.deferLater(reactor, 0.5, lambda: None)
        self.assertIsNone(await self.daemon.store.get_object("vb", "half"))
        self.assertEqual(await self.backend_keys(), {"r1": [], "r2": []})
        for name in self.backend_names:
            leftovers = []
            for _, _, files in os.walk(os.path.join(self.workdir, name, "tmp")):
                leftovers.extend(files)
            self.assertEqual(leftovers, [], name)

    async def test_expect_100_continue_error_is_answered_without_reading_the_body(self) -> None:
        def ask() -> bytes:
            with self._connect() as sock:
                sock.sendall(
                    b"PUT /nobucket/k HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    b"Content-Length: 1000000\r\nExpect: 100-continue\r\n\r\n"
                )
                return _read_response_head(sock)

        head = await self.call(ask)
        self.assertTrue(head.startswith(b"HTTP/1.1 404"), head[:200])
        self.assertNotIn(b"100 Continue", head)
        self.assertIn(b"connection: close", head.lower())

    async def test_expect_100_continue_success(self) -> None:
        body = b"z" * 100_000

        def upload() -> tuple[bytes, bytes]:
            with self._connect() as sock:
                sock.sendall(
                    b"PUT /vb/cont HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    b"Content-Length: %d\r\nExpect: 100-continue\r\n\r\n" % len(body)
                )
                interim = _read_response_head(sock)
                sock.sendall(body)
                return interim, _read_response_head(sock)

        interim, final = await self.call(upload)
        self.assertTrue(interim.startswith(b"HTTP/1.1 100"), interim)
        self.assertTrue(final.startswith(b"HTTP/1.1 200"), final)
        self.assertIn(hashlib.md5(body).hexdigest().encode(), final)
        record = await self.daemon.store.get_object("vb", "cont")
        assert record is not None
        self.assertEqual(record.size, len(body))

    async def test_slow_reader_pauses_the_backend_and_memory_stays_flat(self) -> None:
        size = 64 * 1024 * 1024
        await self.daemon.gateway.put_object("vb", "big", GeneratedBody(size, 5), size, {}, {})
        before = _rss_bytes()

        sock = self._connect()
        self.addCleanup(sock.close)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)

        def start() -> bytes:
            sock.sendall(b"GET /vb/big HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            return _read_response_head(sock)

        head = await self.call(start)
        self.assertTrue(head.startswith(b"HTTP/1.1 200"), head[:200])
        # The client reads nothing for a while: the backend must be paused, not buffered.
        await task.deferLater(reactor, 1.5, lambda: None)
        producers = [getattr(channel, "_requestProducer", None) for channel in self.daemon.channels]
        paused = [p for p in producers if p is not None and getattr(p, "paused", False)]
        self.assertTrue(paused, "the backend stream was not paused by the slow client")
        grown = _rss_bytes() - before
        self.assertLess(grown, 24 * 1024 * 1024, f"resident memory grew by {grown} bytes")

        already = head.split(b"\r\n\r\n", 1)[1]

        def read_rest() -> tuple[int, str]:
            digest = hashlib.md5(already)
            received = len(already)
            sock.settimeout(10)
            deadline = time.monotonic() + 60
            while received < size and time.monotonic() < deadline:
                piece = sock.recv(1 << 20)
                if not piece:
                    break
                digest.update(piece)
                received += len(piece)
            return received, digest.hexdigest()

        received, md5 = await self.call(read_rest)
        self.assertEqual(received, size)
        self.assertEqual(md5, generated_md5(size, 5))
