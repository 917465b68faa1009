"""A request body already in memory, as the producer a backend's upload consumes.

Small bodies (a PUT twisted.web buffered, a multipart completion document) are handed to backends
the same way streamed ones are: as an ``IBodyProducer``.  This one can be produced again, so a
backend that refused it before reading may be replaced by the next choice.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.interfaces import IConsumer
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer


@implementer(IBodyProducer)
class BytesBody:
    """A small, already-received body (buffered by twisted.web) as a restartable producer."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.length = len(data)

    def startProducing(self, consumer: IConsumer) -> defer.Deferred[None]:
        consumer.write(self.data)
        return defer.succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass

    def restartable(self) -> bool:
        return True


__all__ = ["BytesBody"]
