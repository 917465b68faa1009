"""A GET answer of an S3 service, its body still on the backend connection.

The body goes from the backend connection to the caller's protocol at the caller's pace: the
caller's pauses pause the socket and suspend the stall watch (a paused download is not the
backend's stall).  A plain TCP connection with a length-delimited body can be handed over whole
(:class:`ISocketBody`) for the zero-copy path of :mod:`s3balance.net.splice`.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.iweb import UNKNOWN_LENGTH, IResponse
from zope.interface import implementer

from s3balance.backends.interface import BackendUnavailable, IObjectStream, ISocketBody
from s3balance.net.http11 import BodyTransport
from s3balance.net.responses import BodyDrain, close_body
from s3balance.net.splice import tcp_socket
from s3balance.net.stallwatch import StallWatch

#: When a GET stream is discarded, a remainder this small is read to keep the connection.
DISCARD_READ_LIMIT = 64 * 1024


@implementer(IPushProducer, ISocketBody)
class _ConsumerTransport:
    """The transport a GET stream's protocol sees: its pauses are not backend stalls."""

    def __init__(self, guard: _StreamGuard) -> None:
        self._guard = guard

    def pauseProducing(self) -> None:
        self._guard.consumer_pause(True)

    def resumeProducing(self) -> None:
        self._guard.consumer_pause(False)

    def stopProducing(self) -> None:
        self._guard.stop()

    def abortConnection(self) -> None:
        self._guard.stop()

    def loseConnection(self) -> None:
        self._guard.stop()

    def detach(self) -> socket.socket | None:
        return self._guard.detach()

    def release(self) -> None:
        self._guard.release()


class _StreamGuard(Protocol):
    """Passes a GET body from the backend connection to the caller's protocol.

    Until :meth:`S3ObjectStream.deliverBody` is called the connection keeps what arrived (and
    pauses the socket past a few KiB); afterwards the caller's pauses pause the socket and suspend
    the stall watch.  A stall replaces the end reason with :class:`BackendUnavailable`.
    """

    def __init__(
        self, backend: str, watch: StallWatch, inner: Any, identity: bool = False
    ) -> None:
        self._backend = backend
        self._watch = watch
        self._inner = inner
        self._identity = identity
        self._buffer: list[bytes] = []
        self._ended: Failure | None = None
        self._consumer_paused = False
        self._delivered_end = False
        #: Set by :meth:`detach`: the caller reads the body off the socket, we deliver nothing.
        self._detached = False
        self._raw: Any = None
        watch.on_stall = self.stop

    def connectionMade(self) -> None:
        self._watch.resume()
        self._inner.makeConnection(_ConsumerTransport(self))

    def consumer_pause(self, paused: bool) -> None:
        self._consumer_paused = paused
        if paused:
            self._watch.suspend()
            if self._ended is None and self.transport is not None:
                self.transport.pauseProducing()  # type: ignore[attr-defined]
            return
        self._flush()
        if not self._consumer_paused and self._ended is None and self.transport is not None:
            self._watch.resume()
            self.transport.resumeProducing()  # type: ignore[attr-defined]

    def stop(self) -> None:
        """Give up on the body: close the backend connection."""
        if self._ended is None and self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]

    def detach(self) -> socket.socket | None:
        """See :meth:`ISocketBody.detach`: only for a length-delimited body on plain TCP."""
        if self._ended is not None or self._detached or not self._identity:
            return None
        # Under TLS the connection's transport is a TLS protocol, not a socket.
        transport = self.transport
        if not isinstance(transport, BodyTransport):
            return None
        raw = transport.connection
        sock = tcp_socket(raw)
        if sock is None or raw is None or raw in raw.reactor.getWriters():
            return None  # TLS or not TCP; or still sending the request: not ours to take
        while self._buffer:
            self._inner.dataReceived(self._buffer.pop(0))
        transport.take()
        raw.stopReading()
        self._detached = True
        self._raw = raw
        self._watch.stop()
        return sock

    def release(self) -> None:
        raw, self._raw = self._raw, None
        if raw is not None:
            raw.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        if self._detached:
            return
        self._watch.touch()
        if self._buffer or self._consumer_paused:
            # Twisted resumes the socket right after connecting us, even if our consumer paused
            # meanwhile, and may hand over a chunk already read: keep it, pause again.
            self._buffer.append(data)
            if self._consumer_paused and self.transport is not None:
                self.transport.pauseProducing()  # type: ignore[attr-defined]
        else:
            self._inner.dataReceived(data)

    def _flush(self) -> None:
        while self._buffer and not self._consumer_paused:
            self._inner.dataReceived(self._buffer.pop(0))
        if not self._buffer:
            self._deliver_end()

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._watch.stop()
        if self._detached:
            return  # the caller read the body off the socket and closed it
        if reason is None:
            reason = Failure(ResponseDone())
        if self._watch.fired:
            reason = Failure(
                BackendUnavailable(self._backend, "backend stalled while sending a body", True)
            )
        self._ended = reason
        self._flush()

    def _deliver_end(self) -> None:
        if self._ended is None or self._delivered_end:
            return
        self._delivered_end = True
        self._inner.connectionLost(self._ended)


@implementer(IObjectStream)
class S3ObjectStream:
    """A GET answer whose body is still on the backend connection."""

    def __init__(
        self, backend: str, response: IResponse, watch: StallWatch, size: int, etag: str
    ) -> None:
        self.length = response.length
        self.size = size
        self.etag = etag
        self._backend = backend
        self._response = response
        self._watch = watch

    def deliverBody(self, protocol: Any) -> None:
        identity = self._response.length is not UNKNOWN_LENGTH
        self._response.deliverBody(_StreamGuard(self._backend, self._watch, protocol, identity))

    def discard(self) -> None:
        self._watch.stop()
        length = self._response.length
        if length is not UNKNOWN_LENGTH and length <= DISCARD_READ_LIMIT:
            self._response.deliverBody(BodyDrain())
        else:
            close_body(self._response)


def content_range_total(value: str | None) -> int | None:
    """The total size from ``Content-Range: bytes a-b/total``."""
    if not value or "/" not in value:
        return None
    total = value.rsplit("/", 1)[1].strip()
    return int(total) if total.isdigit() else None
