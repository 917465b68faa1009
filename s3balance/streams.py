"""Stream plumbing of the core: one backend's GET stream fed into another backend's PUT.

A copy between two backends (CopyObject, UploadPartCopy) moves the bytes without holding them:
:class:`StreamBodyProducer` is the ``IBodyProducer`` of the upload, and the upload's consumer
pausing pauses the source connection, so the copy runs at the slower side's pace.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from s3balance.backends.interface import IObjectStream


class _Relay(TwistedProtocol):
    """Receives a backend stream and writes it into the consumer of another backend's upload."""

    def __init__(self, producer: StreamBodyProducer, consumer: IConsumer) -> None:
        self._producer = producer
        self._consumer = consumer

    def connectionMade(self) -> None:
        self._producer._attached(self.transport)

    def dataReceived(self, data: bytes) -> None:
        self._consumer.write(data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._producer._ended(reason if reason is not None else Failure(ResponseDone()))


@implementer(IBodyProducer)
class StreamBodyProducer:
    """Feeds a backend's GET stream into another backend's PUT, with backpressure: the target's
    ``pauseProducing`` pauses the source connection.

    Used once; call :meth:`discard` when the upload never started.
    """

    def __init__(self, stream: IObjectStream) -> None:
        self.length: int = stream.length
        self._stream = stream
        self._started = False
        self._transport: IPushProducer | None = None
        self._paused = False
        self._done: defer.Deferred[None] = defer.Deferred()

    def startProducing(self, consumer: IConsumer) -> defer.Deferred[None]:
        self._started = True
        self._stream.deliverBody(_Relay(self, consumer))
        return self._done

    def _attached(self, transport: Any) -> None:
        self._transport = transport
        if self._paused:
            transport.pauseProducing()

    def _ended(self, reason: Failure) -> None:
        if self._done.called:
            return
        if reason.check(ResponseDone):
            self._done.callback(None)
        else:
            self._done.errback(reason)

    def pauseProducing(self) -> None:
        self._paused = True
        if self._transport is not None:
            self._transport.pauseProducing()

    def resumeProducing(self) -> None:
        self._paused = False
        if self._transport is not None:
            self._transport.resumeProducing()

    def stopProducing(self) -> None:
        if self._transport is not None:
            self._transport.stopProducing()

    def discard(self) -> None:
        if not self._started:
            self._started = True
            self._stream.discard()


def restartable(body: IBodyProducer) -> bool:
    """Whether ``body`` can be produced again from its start (it says so by a ``restartable()``
    method), so a backend that refused it before reading may be replaced by another."""
    check = getattr(body, "restartable", None)
    return bool(check()) if callable(check) else False


__all__ = ["StreamBodyProducer", "restartable"]
