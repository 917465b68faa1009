"""Reading backends' responses: a small body whole, an unwanted body dropped, a header, a failure.

The large bodies (object downloads) are not read here: they are relayed chunk by chunk
(:mod:`s3balance.backends.s3stream`).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.iweb import IResponse

from s3balance.net.stallwatch import StallWatch


class BodyCollector(Protocol):
    """Reads a small response body whole, touching the stall watch on every chunk.

    :param limit: the most bytes kept; a longer body is cut off and :attr:`done` fails, so a
        misbehaving server cannot make us buffer without bound.
    """

    def __init__(self, watch: StallWatch, limit: int) -> None:
        self.done: Deferred[bytes] = Deferred()
        self._watch = watch
        self._limit = limit
        self._chunks: list[bytes] = []
        self._size = 0

    def connectionMade(self) -> None:
        transport: Any = self.transport
        self._watch.on_stall = transport.stopProducing

    def dataReceived(self, data: bytes) -> None:
        self._watch.touch()
        self._size += len(data)
        if self._size > self._limit:
            assert self.transport is not None
            self.transport.stopProducing()  # type: ignore[attr-defined]
            return
        self._chunks.append(data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._watch.stop()
        if self._size > self._limit:
            self.done.errback(ValueError(f"response body over {self._limit} bytes"))
        elif reason is None or reason.check(ResponseDone):
            self.done.callback(b"".join(self._chunks))
        else:
            self.done.errback(reason)


class BodyDrain(Protocol):
    """Reads a small unwanted body to its end so the connection goes back to the pool."""

    def connectionLost(self, reason: Failure | None = None) -> None:
        pass


class _Closer(Protocol):
    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.stopProducing()  # type: ignore[attr-defined]

    def connectionLost(self, reason: Failure | None = None) -> None:
        pass


def close_body(response: IResponse) -> None:
    """Drop an unwanted answer's body by closing its connection (cheaper than reading a large
    one; see :class:`BodyDrain` for a small one)."""
    response.deliverBody(_Closer())


def first_header(response: IResponse, name: str) -> str | None:
    """The first value of header ``name``, as text."""
    values = response.headers.getRawHeaders(name)
    if not values:
        return None
    value = values[0]
    return value.decode("latin-1") if isinstance(value, bytes) else str(value)


def describe_failure(error: BaseException) -> str:
    """A log line for a transport failure, unwrapping Twisted's lists of reasons."""
    reasons = getattr(error, "reasons", None)
    if reasons:
        return "; ".join(f"{r.type.__name__}: {r.value}" for r in reasons)
    return f"{type(error).__name__}: {error}"
