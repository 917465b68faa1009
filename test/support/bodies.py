"""Bodies for streaming tests: produce many bytes without holding them, and read streams back.

:class:`GeneratedBody` derives its bytes from a seed, so a test can know the MD5 of 20 MiB it never
kept (:func:`generated_md5`) and can make a body break part-way, as a disconnecting client would.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from typing import Any

from twisted.internet import reactor as default_reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IConsumer
from twisted.internet.protocol import Protocol
from twisted.internet.task import TaskStopped
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from s3balance.backends.interface import IObjectStream
from s3balance.net.bytesproducer import BytesProducer

CHUNK = 64 * 1024


class BodyFailed(Exception):
    """The failure a :class:`GeneratedBody` told to fail reports, like a client going away."""


def generated_chunks(size: int, seed: int = 0, chunk: int = CHUNK) -> Iterator[bytes]:
    """The bytes a ``GeneratedBody(size, seed)`` produces, in the same chunks."""
    generator = random.Random(seed)
    remaining = size
    while remaining > 0:
        step = min(chunk, remaining)
        yield generator.randbytes(step)
        remaining -= step


def generated_bytes(size: int, seed: int = 0) -> bytes:
    """All of a generated body at once; only for small sizes."""
    return b"".join(generated_chunks(size, seed))


def generated_md5(size: int, seed: int = 0) -> str:
    """Hex MD5 of a generated body, computed chunk by chunk."""
    digest = hashlib.md5()
    for piece in generated_chunks(size, seed):
        digest.update(piece)
    return digest.hexdigest()


@implementer(IBodyProducer)
class GeneratedBody:
    """An :class:`IBodyProducer` writing ``size`` seeded pseudo-random bytes, one chunk per
    reactor turn, honouring pause/resume like a socket-fed producer.

    :param fail_after: fail ``startProducing``'s Deferred with :class:`BodyFailed` once this many
        bytes were written (``0`` fails before the first byte).
    :param length: the length announced to the consumer; defaults to ``size``.
    :ivar produced: bytes written so far.
    :ivar pause_count: how often the consumer paused us (tests assert backpressure with it).
    """

    def __init__(
        self,
        size: int,
        seed: int = 0,
        *,
        fail_after: int | None = None,
        chunk: int = CHUNK,
        length: int | None = None,
        reactor: Any = None,
    ) -> None:
        self.length = size if length is None else length
        self._chunks = generated_chunks(size, seed, chunk)
        self._fail_after = fail_after
        self._reactor = reactor if reactor is not None else default_reactor
        self._consumer: IConsumer | None = None
        self._finished: Deferred[None] | None = None
        self._paused = False
        self._scheduled: Any = None
        self.produced = 0
        self.pause_count = 0

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        self._consumer = consumer
        self._finished = Deferred()
        self._schedule()
        return self._finished

    def _schedule(self) -> None:
        if self._scheduled is None and not self._paused and self._finished is not None:
            self._scheduled = self._reactor.callLater(0, self._produce)

    def _produce(self) -> None:
        self._scheduled = None
        if self._finished is None or self._paused:
            return
        if self._fail_after is not None and self.produced >= self._fail_after:
            self._end(Failure(BodyFailed(f"body failed after {self.produced} bytes")))
            return
        piece = next(self._chunks, None)
        if piece is None:
            self._end(None)
            return
        if self._fail_after is not None:
            piece = piece[: self._fail_after - self.produced]
        assert self._consumer is not None
        self.produced += len(piece)
        self._consumer.write(piece)
        self._schedule()

    def _end(self, failure: Failure | None) -> None:
        finished, self._finished = self._finished, None
        if finished is None:
            return
        if failure is None:
            finished.callback(None)
        else:
            finished.errback(failure)

    def pauseProducing(self) -> None:
        if not self._paused:
            self.pause_count += 1
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._schedule()

    def stopProducing(self) -> None:
        if self._scheduled is not None and self._scheduled.active():
            self._scheduled.cancel()
        self._scheduled = None
        self._end(Failure(TaskStopped()))


class IgnoresFlowControl:
    """For bodies small enough to hand over at once: pausing and stopping them has no effect."""

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


#: A small body given whole, written in one go (for metadata and edge-case tests).
BytesBody = BytesProducer


class _Collector(Protocol):
    """Feeds every chunk to ``sink`` and fires ``done`` only when the body ended cleanly."""

    def __init__(self, sink: Any, done: Deferred[None]) -> None:
        self._sink = sink
        self._done = done

    def dataReceived(self, data: bytes) -> None:
        self._sink(data)

    def connectionLost(self, reason: Failure = Failure(ConnectionLost())) -> None:  # noqa: B008
        if reason.check(ResponseDone):
            self._done.callback(None)
        else:
            self._done.errback(reason)


async def _collect(stream: IObjectStream) -> bytes:
    pieces: list[bytes] = []
    done: Deferred[None] = Deferred()
    stream.deliverBody(_Collector(pieces.append, done))
    await done
    return b"".join(pieces)


def collect(stream: IObjectStream) -> Deferred[bytes]:
    """The whole body of ``stream``; fails unless it ends with ``ResponseDone``."""
    return Deferred.fromCoroutine(_collect(stream))


async def _md5_of(stream: IObjectStream) -> str:
    digest = hashlib.md5()
    done: Deferred[None] = Deferred()
    stream.deliverBody(_Collector(digest.update, done))
    await done
    return digest.hexdigest()


def md5_of(stream: IObjectStream) -> Deferred[str]:
    """Hex MD5 of the body of ``stream``, without keeping the body."""
    return Deferred.fromCoroutine(_md5_of(stream))


__all__ = [
    "BodyFailed",
    "BytesBody",
    "GeneratedBody",
    "collect",
    "generated_bytes",
    "generated_chunks",
    "generated_md5",
    "md5_of",
]
