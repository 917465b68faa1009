"""Reads of replicated objects: the first replica that answers serves, the next takes over at
the byte where it broke, and the reader sees one unbroken body (or an error, never a short or
mixed one)."""

from __future__ import annotations

import hashlib
import os
import random
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.client import ResponseDone

from s3balance.backends.interface import BackendNoSuchKey, IObjectStream
from s3balance.backends.local import LocalDirectoryBackend
from s3balance.failover import FailoverStream, NoReplicaLeft, open_replicas
from s3balance.net.bytesproducer import BytesProducer

SIZE = 1 << 20  # four read chunks of a local backend
BODY = random.Random(16).randbytes(SIZE)
KEY = "bucket/object"


class Reader(Protocol):
    """Collects a body; :attr:`done` fires with the end reason.  ``on_data`` runs after each
    chunk (to break a replica at a chosen point)."""

    def __init__(self, on_data: Any = None, pause_first: bool = False) -> None:
        self.chunks: list[bytes] = []
        self.done: Deferred[list[Failure]] = Deferred()
        self.on_data = on_data
        self.pause_first = pause_first

    def connectionMade(self) -> None:
        if self.pause_first:
            self.transport.pauseProducing()

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(data)
        if self.on_data is not None:
            self.on_data(self)

    def connectionLost(self, reason: Failure | None = None) -> None:
        assert reason is not None
        self.done.callback([reason])  # wrapped: a Failure as result would errback

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)


class FailoverTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        root = self.mktemp()
        self.backends = {
            name: LocalDirectoryBackend(name, os.path.join(root, name), reactor) for name in "abc"
        }
        for backend in self.backends.values():
            self.addCleanup(backend.close)

    async def store(self, name: str, data: bytes = BODY) -> None:
        await self.backends[name].put_object(KEY, BytesProducer(data), len(data), {}, {})

    def open_one(self, name: str, byte_range: tuple[int, int] | None) -> Deferred[IObjectStream]:
        self.opened.append((name, byte_range))
        return self.backends[name].get_object(KEY, byte_range)

    async def read(
        self, names: list[str], byte_range: tuple[int, int] | None = None, **reader: Any
    ) -> tuple[FailoverStream, Reader, Failure]:
        self.opened: list[tuple[str, tuple[int, int] | None]] = []
        stream = await open_replicas(names, byte_range, SIZE, self.open_one)
        assert isinstance(stream, FailoverStream)
        protocol = Reader(**reader)
        stream.deliverBody(protocol)
        (reason,) = await protocol.done
        return stream, protocol, reason

    def break_replica(self, name: str) -> None:
        """Damage ``name``'s copy on disk: its next read comes back short."""
        for directory, _, files in os.walk(os.path.join(self.backends[name].root, "objects")):
            for file in files:
                os.truncate(os.path.join(directory, file), 0)

    async def test_a_missing_replica_is_skipped_before_the_first_byte(self) -> None:
        await self.store("b")
        stream, protocol, reason = await self.read(["a", "b"])
        self.assertTrue(reason.check(ResponseDone))
        self.assertEqual(protocol.body, BODY)
        self.assertEqual([name for name, _ in self.opened], ["a", "b"])
        self.assertEqual(stream.failovers, 0)

    async def test_a_replica_breaking_mid_body_is_resumed_from_the_next_with_a_range(
        self,
    ) -> None:
        await self.store("b")
        await self.store("c")
        broken: list[int] = []

        def break_after_first_chunk(reader: Reader) -> None:
            if not broken:
                broken.append(len(reader.body))
                self.break_replica("b")

        stream, protocol, reason = await self.read(["b", "c"], on_data=break_after_first_chunk)
        self.assertTrue(reason.check(ResponseDone))
        self.assertEqual(hashlib.md5(protocol.body).hexdigest(), hashlib.md5(BODY).hexdigest())
        self.assertEqual(self.opened, [("b", None), ("c", (broken[0], SIZE - 1))])
        self.assertEqual(stream.failovers, 1)

    async def test_a_range_resumes_inside_the_range(self) -> None:
        await self.store("b")
        await self.store("c")
        first, last = 1000, SIZE - 1000
        done: list[int] = []

        def break_once(reader: Reader) -> None:
            if not done:
                done.append(len(reader.body))
                self.break_replica("b")

        _, protocol, reason = await self.read(["b", "c"], (first, last), on_data=break_once)
        self.assertTrue(reason.check(ResponseDone))
        self.assertEqual(protocol.body, BODY[first : last + 1])
        self.assertEqual(self.opened[1], ("c", (first + done[0], last)))

    async def test_a_replica_holding_other_bytes_is_not_spliced_in(self) -> None:
        await self.store("b")
        await self.store("c", bytes(SIZE))  # same length, another ETag
        done: list[int] = []

        def break_once(reader: Reader) -> None:
            if not done:
                done.append(1)
                self.break_replica("b")

        _, protocol, reason = await self.read(["b", "c"], on_data=break_once)
        self.assertFalse(reason.check(ResponseDone))
        self.assertEqual(protocol.body, BODY[: len(protocol.body)])
        self.assertLess(len(protocol.body), SIZE)

    async def test_a_paused_reader_stays_paused_across_a_failover(self) -> None:
        await self.store("b")
        await self.store("c")
        state: dict[str, Any] = {}

        def break_and_pause(reader: Reader) -> None:
            if "broken" not in state:
                state["broken"] = len(reader.body)
                reader.transport.pauseProducing()
                self.break_replica("b")

                def resume() -> None:
                    state["while_paused"] = len(reader.body)
                    reader.transport.resumeProducing()

                reactor.callLater(0.2, resume)

        _, protocol, reason = await self.read(["b", "c"], on_data=break_and_pause)
        self.assertTrue(reason.check(ResponseDone))
        self.assertEqual(protocol.body, BODY)
        self.assertEqual(state["while_paused"], state["broken"])

    async def test_no_replica_answering_raises(self) -> None:
        self.opened = []
        with self.assertRaises(NoReplicaLeft) as caught:
            await open_replicas(["a", "b"], None, SIZE, self.open_one)
        self.assertEqual(len(caught.exception.errors), 2)
        self.assertIsInstance(caught.exception.errors[0], BackendNoSuchKey)
