"""A GET body that its adapter reads chunk by chunk from storage it holds itself (a file, memory),
rather than from a connection.

The stream is its own transport: the protocol pauses and resumes it like a socket, and no read
is asked for while it is paused, so a slow client holds at most one chunk in memory.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IPushProducer
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from zope.interface import implementer

from s3balance.backends.interface import IObjectStream

#: Bytes read per delivered chunk.
READ_CHUNK = 256 * 1024


@implementer(IObjectStream, IPushProducer)
class ChunkedObjectStream:
    """Delivers ``length`` bytes from ``first`` on, one :meth:`_read` at a time.

    A subclass says how to read (:meth:`_read`, whose Deferred must not fire before it returns,
    or a large body would be delivered in one reactor turn) and what to free (:meth:`_release`).
    """

    def __init__(self, first: int, length: int, size: int, etag: str) -> None:
        self._position = first
        self._remaining = length
        self.length = length
        self.size = size
        self.etag = etag
        self._protocol: Any = None
        self._paused = False
        self._reading = False
        self._done = False

    def _read(self, position: int, count: int) -> Deferred[bytes]:
        """Up to ``count`` bytes at ``position``; fewer only at the end of the storage."""
        raise NotImplementedError

    def _release(self) -> None:
        """Free what the stream holds; called once, when it ends or is discarded."""

    def deliverBody(self, protocol: Any) -> None:
        self._protocol = protocol
        protocol.makeConnection(self)
        self._read_next()

    def discard(self) -> None:
        self._close()

    def _read_next(self) -> None:
        if self._paused or self._reading or self._done:
            return
        if self._remaining == 0:
            self._finish(Failure(ResponseDone()))
            return
        self._reading = True
        reading = self._read(self._position, min(READ_CHUNK, self._remaining))
        reading.addCallbacks(self._chunk_read, self._read_failed)

    def _chunk_read(self, chunk: bytes) -> None:
        self._reading = False
        if self._done:
            return
        if not chunk:
            self._finish(Failure(ConnectionLost("stored data is shorter than recorded")))
            return
        self._position += len(chunk)
        self._remaining -= len(chunk)
        self._protocol.dataReceived(chunk)
        self._read_next()

    def _read_failed(self, failure: Failure) -> None:
        self._reading = False
        if not self._done:
            self._finish(failure)

    def _finish(self, reason: Failure) -> None:
        self._close()
        self._protocol.connectionLost(reason)

    def _close(self) -> None:
        if self._done:
            return
        self._done = True
        self._release()

    # IPushProducer: the transport the protocol sees.

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._read_next()

    def stopProducing(self) -> None:
        if not self._done:
            self._finish(Failure(ConnectionLost("body delivery stopped")))

    def loseConnection(self) -> None:
        """Protocols written for sockets call this to stop: same as :meth:`stopProducing`."""
        self.stopProducing()

    def abortConnection(self) -> None:
        self.stopProducing()
