"""One persistent HTTP/1.1 client connection: a request written, its response parsed, in turn.

Twisted's Agent builds, per request, a URI, a ``Request``, a parser protocol, a transport proxy
and half a dozen Deferreds, and pauses and resumes the socket around every response (two
``epoll_ctl`` calls); for a 4 KiB object that machinery cost more CPU than everything else on
the backend side.  This protocol does the same job for the requests the backends send: one
request at a time, the head written in one piece, the response parsed in place (``Content-Length``,
chunked, or until the connection closes), the body handed to the caller's protocol at its pace.

What is kept from Agent, because callers rely on it:

- the request's Deferred fires with the response once its headers arrived *and* the request
  body was written whole, or once the whole response arrived while the body was still going
  (then the body is stopped and the connection is not reused);
- a response body is delivered as :meth:`twisted.web.iweb.IResponse.deliverBody` does: to a
  protocol whose transport pauses, resumes and stops the connection, ending with
  :class:`twisted.web.client.ResponseDone` (or ``PotentialDataLoss`` for a body that ended with
  the connection);
- the request body is a streaming producer registered with the transport (backpressure toward
  the client), and is stopped when the connection goes;
- cancelling the request's Deferred aborts the connection.

The connection pool and the decision to retry a request on a fresh connection are
:mod:`s3balance.net.httpclient`'s.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import (
    PotentialDataLoss,
    ResponseDone,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer, IResponse
from zope.interface import implementer

#: A response head (status line and headers) longer than this is refused.
MAX_HEAD = 64 * 1024
#: Body bytes kept for a caller that has not taken the body yet before the socket is paused.
BUFFER_BEFORE_PAUSE = 64 * 1024
#: Statuses whose responses never carry a body.
NO_BODY_CODES = frozenset({204, 304})

_HEAD_END = b"\r\n\r\n"
#: What a header name must not hold: a colon, white space, anything but ASCII.
_NOT_IN_NAMES = re.compile(r"[:\s]|[^\x00-\x7f]")
#: A chunk size: hex digits only, at most 16 of them (a 64-bit length).
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")


class ProtocolError(Exception):
    """The server's response is not HTTP/1.1 we can read."""


class ConnectionClosedEarly(Exception):
    """The connection closed before the response was complete."""


def encode_head(method: str, target: str, headers: dict[str, str], length: int | None) -> bytes:
    """The request line and headers, encoded once (names ASCII, values UTF-8 as they were
    signed); ``length`` adds ``Content-Length`` unless it is ``None``.

    CR and LF in a value become spaces, as Twisted's ``Headers`` makes them: a value can never
    add a header line of its own.

    :raises ValueError: a header name is not a token of ASCII.
    """
    lines = [f"{method} {target} HTTP/1.1\r\n"]
    for name, value in headers.items():
        if not name or _NOT_IN_NAMES.search(name) is not None:
            raise ValueError(f"not a header name: {name!r}")
        if "\r" in value or "\n" in value:
            value = value.replace("\r\n", " ").replace("\r", " ").replace("\n", " ")
        lines.append(f"{name}: {value}\r\n")
    if length is not None:
        lines.append(f"Content-Length: {length}\r\n")
    lines.append("\r\n")
    return "".join(lines).encode("utf-8")


@implementer(IResponse)
class Response:
    """A response whose body may still be arriving (:meth:`deliverBody`)."""

    version: tuple[bytes, int, int]
    request = None
    previousResponse = None

    def __init__(
        self,
        exchange: Exchange,
        version: tuple[bytes, int, int],
        code: int,
        phrase: bytes,
        headers: Headers,
        length: Any,
    ) -> None:
        self.version = version
        self.code = code
        self.phrase = phrase
        self.headers = headers
        self.length = length
        self._exchange = exchange

    def deliverBody(self, protocol: Any) -> None:
        self._exchange.deliver_body(protocol)

    def setPreviousResponse(self, response: IResponse) -> None:
        self.previousResponse = response


@implementer(IPushProducer)
class BodyTransport:
    """The transport a response body's protocol sees: it pauses, resumes or stops the
    connection while the body is arriving, and does nothing once it has ended (the connection
    may be serving another request by then)."""

    def __init__(self, exchange: Exchange) -> None:
        self._exchange = exchange

    @property
    def connection(self) -> Any:
        """The connection's own transport while the body is arriving and none of it waits here,
        else ``None``: what a caller may take the rest of the body from (:meth:`take`)."""
        return self._exchange.live_transport()

    def take(self) -> None:
        """The caller reads the rest of the body off :attr:`connection` itself and closes it;
        nothing more is delivered, and the connection never serves another request."""
        self._exchange.detach()

    def pauseProducing(self) -> None:
        self._exchange.pause_body(True)

    def resumeProducing(self) -> None:
        self._exchange.pause_body(False)

    def stopProducing(self) -> None:
        self._exchange.stop_body()

    def loseConnection(self) -> None:
        self._exchange.stop_body()

    def abortConnection(self) -> None:
        self._exchange.stop_body()


@implementer(IPushProducer)
class _RequestBodyProducer:
    """Registered with the transport for a streamed request body: the transport's pauses reach
    the body producer; stopping reaches it once."""

    def __init__(self, producer: IBodyProducer) -> None:
        self.producer = producer
        self.stopped = False

    def pauseProducing(self) -> None:
        if not self.stopped:
            self.producer.pauseProducing()

    def resumeProducing(self) -> None:
        if not self.stopped:
            self.producer.resumeProducing()

    def stopProducing(self) -> None:
        if not self.stopped:
            self.stopped = True
            self.producer.stopProducing()


@implementer(IConsumer)
class _RequestBodyConsumer:
    """Where the body producer writes: straight to the connection, while the exchange lasts."""

    def __init__(self, exchange: Exchange) -> None:
        self._exchange = exchange

    def write(self, data: bytes) -> None:
        self._exchange.write_body(data)

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass


class Exchange:
    """One request and its response on a connection."""

    def __init__(self, connection: HTTP11Connection, method: str) -> None:
        self.connection = connection
        self.head_only = method == "HEAD"
        self.deferred: Deferred[Response] = Deferred(self._cancel)
        self.fired = False
        #: Any byte of the response arrived (then a retry is out of the question).
        self.answered = False
        self.request_sent = False
        self.response: Response | None = None
        self.response_done = False
        self.ended = False
        #: The connection may serve another request after this one.
        self.reusable = True
        self.body_producer: _RequestBodyProducer | None = None
        self._body_protocol: Any = None
        self._buffered: list[bytes] = []
        self._buffered_size = 0
        self._end_reason: Failure | None = None
        self._paused = False
        self._detached = False

    # -- the request --------------------------------------------------------------------------

    def write_body(self, data: bytes) -> None:
        if self.body_producer is None or self.body_producer.stopped or self.ended:
            return
        transport = self.connection.transport
        if transport is not None:
            transport.write(data)

    def body_written(self, _: object) -> None:
        producer = self.body_producer
        if producer is None or producer.stopped:
            return
        self.body_producer = None
        transport: Any = self.connection.transport
        if transport is not None:
            transport.unregisterProducer()
        self.request_sent = True
        self._maybe_fire()

    def body_failed(self, failure: Failure) -> None:
        producer = self.body_producer
        if producer is None or producer.stopped:
            return
        producer.stopped = True  # it failed on its own; nothing to stop
        self.body_producer = None
        # The body did not arrive whole: the backend must not take what it got as a request.
        self.reusable = False
        self.fail(failure)
        self.connection.abort()

    def _stop_request_body(self) -> None:
        producer, self.body_producer = self.body_producer, None
        if producer is None:
            return
        transport: Any = self.connection.transport
        if transport is not None and not producer.stopped:
            transport.unregisterProducer()
        producer.stopProducing()

    # -- the response -------------------------------------------------------------------------

    def headers_received(self, response: Response) -> None:
        self.response = response
        self._maybe_fire()

    def _maybe_fire(self) -> None:
        if self.fired or self.response is None:
            return
        if self.request_sent or self.response_done:
            self.fired = True
            self.deferred.callback(self.response)

    def body_data(self, data: bytes) -> None:
        if self._body_protocol is not None and not self._buffered:
            self._body_protocol.dataReceived(data)
            return
        self._buffered.append(data)
        self._buffered_size += len(data)
        if self._buffered_size > BUFFER_BEFORE_PAUSE:
            self.connection.pause_reading(True)

    def body_done(self, reason: Failure) -> None:
        """The response ended: ``ResponseDone``, or the failure that cut it short."""
        if self.response_done:
            return
        self.response_done = True
        if not self.request_sent:
            # The server answered before taking the whole request: stop sending; the
            # connection cannot carry another request.
            self.reusable = False
            self._stop_request_body()
        self._end_reason = reason
        self.ended = True
        self.connection.exchange_ended(self)
        self._maybe_fire()
        if not self.fired:
            self.fired = True
            self.deferred.errback(reason)
            return
        if self._body_protocol is not None and not self._buffered:
            self._deliver_end()

    def fail(self, failure: Failure) -> None:
        """The connection failed or was cancelled before or during the response."""
        if self.ended:
            return
        self._stop_request_body()
        if self.response is not None and self.fired:
            self.body_done(failure)
            return
        self.response_done = True
        self.ended = True
        self.reusable = False
        self.connection.exchange_ended(self)
        if not self.fired:
            self.fired = True
            self.deferred.errback(failure)

    def _cancel(self, _: Deferred[Response]) -> None:
        if self.fired:
            return
        self.fired = True  # the Deferred errbacks with CancelledError itself
        self.reusable = False
        self._stop_request_body()
        self.ended = True
        self.response_done = True
        self.connection.exchange_ended(self)
        self.connection.abort()

    # -- the response body's transport ---------------------------------------------------------

    def deliver_body(self, protocol: Any) -> None:
        if self._body_protocol is not None:
            raise RuntimeError("the body was already delivered")
        self._body_protocol = protocol
        protocol.makeConnection(BodyTransport(self))
        while self._buffered and not self._detached:
            data = self._buffered.pop(0)
            self._buffered_size -= len(data)
            protocol.dataReceived(data)
        if self._detached:
            return
        if self.ended:
            self._deliver_end()
        elif not self._paused:
            self.connection.pause_reading(False)

    def _deliver_end(self) -> None:
        protocol, self._body_protocol = self._body_protocol, _Ended()
        reason = self._end_reason
        if protocol is None or isinstance(protocol, _Ended) or reason is None:
            return
        protocol.connectionLost(reason)

    def pause_body(self, paused: bool) -> None:
        self._paused = paused
        if not self.ended:
            self.connection.pause_reading(paused)

    def stop_body(self) -> None:
        if self.ended:
            return
        self.reusable = False
        self.connection.abort()

    def live_transport(self) -> Any:
        if self.ended or self._buffered or self._detached:
            return None
        return self.connection.transport

    def detach(self) -> None:
        self._detached = True
        self.reusable = False
        self.connection.detached = True


class _Ended:
    """Stands for a body protocol that was told the end."""


class HTTP11Connection(Protocol):
    """A client connection carrying one request at a time.

    :param on_idle: called when an exchange ended and the connection may carry another.
    :param on_lost: called once when the connection is gone.
    """

    def __init__(
        self,
        on_idle: Callable[[HTTP11Connection], None],
        on_lost: Callable[[HTTP11Connection], None],
    ) -> None:
        self._on_idle = on_idle
        self._on_lost = on_lost
        self.exchange: Exchange | None = None
        #: Set when a caller took the socket over: the connection never goes back to a pool.
        self.detached = False
        self._buffer = b""
        self._state = "idle"
        self._remaining = 0
        self._reading_paused = False
        self.lost = False
        #: Closing or aborting was asked; the connection is as good as lost.
        self.closing = False

    @property
    def usable(self) -> bool:
        """Idle and open: it may carry a request."""
        return (
            self.exchange is None
            and not self.lost
            and not self.closing
            and not self.detached
            and self.transport is not None
        )

    # -- sending ------------------------------------------------------------------------------

    def request(
        self, method: str, head: bytes, body: IBodyProducer | None, small_body: bytes | None
    ) -> Deferred[Response]:
        """Send ``head`` (from :func:`encode_head`) and the body: ``small_body`` written with
        the head, or ``body`` streamed."""
        if not self.usable:
            raise RuntimeError("the connection is busy or closed")
        exchange = self.exchange = Exchange(self, method)
        self._state = "head"
        self._buffer = b""
        transport: Any = self.transport
        if self._reading_paused:
            self.pause_reading(False)
        if body is None:
            transport.write(head + small_body if small_body else head)
            exchange.request_sent = True
            return exchange.deferred
        transport.write(head)
        exchange.body_producer = _RequestBodyProducer(body)
        transport.registerProducer(exchange.body_producer, True)
        body.startProducing(_RequestBodyConsumer(exchange)).addCallbacks(
            exchange.body_written, exchange.body_failed
        )
        return exchange.deferred

    def abort(self) -> None:
        if self.transport is not None and not self.lost:
            self.closing = True
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def close(self) -> None:
        """Close an idle connection politely."""
        if self.transport is not None and not self.lost and self.exchange is None:
            self.closing = True
            self.transport.loseConnection()

    def pause_reading(self, paused: bool) -> None:
        if paused == self._reading_paused or self.transport is None or self.lost:
            return
        self._reading_paused = paused
        if paused:
            self.transport.pauseProducing()  # type: ignore[attr-defined]
        else:
            self.transport.resumeProducing()  # type: ignore[attr-defined]

    def exchange_ended(self, exchange: Exchange) -> None:
        if self.exchange is not exchange:
            return
        self.exchange = None
        self._state = "idle"
        if exchange.reusable and not self._buffer and not self.lost and not self.detached:
            if self._reading_paused:
                self.pause_reading(False)
            self._on_idle(self)
        elif not self.detached:
            self.abort()

    # -- receiving ----------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        exchange = self.exchange
        if exchange is None:
            # Nothing was asked: a server that talks now is not one to reuse.
            self.abort()
            return
        exchange.answered = True
        if self._state == "length" and not self._buffer:
            # The hot path of a download: hand the bytes on as they came.
            size = len(data)
            if size < self._remaining:
                self._remaining -= size
                exchange.body_data(data)
                return
            if size == self._remaining:
                self._remaining = 0
                exchange.body_data(data)
                self._body_finished(exchange)
                return
        self._buffer += data
        try:
            self._parse(exchange)
        except ProtocolError as e:
            exchange.reusable = False
            self._buffer = b""
            exchange.fail(Failure(ResponseFailed([Failure(e)])))
            self.abort()

    def _parse(self, exchange: Exchange) -> None:
        while self.exchange is exchange and not exchange.ended:
            state = self._state
            if state == "head":
                if not self._parse_head(exchange):
                    return
            elif state == "length":
                if not self._buffer:
                    return
                if self._deliver_counted(exchange):
                    self._body_finished(exchange)
            elif state == "close":
                data, self._buffer = self._buffer, b""
                if data:
                    exchange.body_data(data)
                return
            elif state in ("chunk-size", "trailer"):
                end = self._buffer.find(b"\r\n")
                if end < 0:
                    if len(self._buffer) > MAX_HEAD:
                        raise ProtocolError("chunk size line too long")
                    return
                line, self._buffer = self._buffer[:end], self._buffer[end + 2 :]
                if state == "trailer":
                    if not line:
                        self._body_finished(exchange)
                    continue
                size_text = line.split(b";", 1)[0].strip()
                if not _CHUNK_SIZE.fullmatch(size_text):
                    # int(text, 16) alone would also take "0x5", "+5" and "5_0".
                    raise ProtocolError(f"bad chunk size {size_text!r}")
                size = int(size_text, 16)
                if size == 0:
                    self._state = "trailer"
                else:
                    self._remaining = size
                    self._state = "chunk-data"
            elif state == "chunk-data":
                if not self._buffer:
                    return
                if self._deliver_counted(exchange):
                    self._state = "chunk-end"
            elif state == "chunk-end":
                if len(self._buffer) < 2:
                    return
                if self._buffer[:2] != b"\r\n":
                    raise ProtocolError("chunk data not followed by CRLF")
                self._buffer = self._buffer[2:]
                self._state = "chunk-size"
            else:
                raise ProtocolError(f"bytes after the response ({state})")

    def _deliver_counted(self, exchange: Exchange) -> bool:
        """Hand on what the buffer holds of the ``_remaining`` bytes of a counted body (a
        Content-Length body or one chunk); whether that was the last of them."""
        data, self._buffer = self._buffer[: self._remaining], self._buffer[self._remaining :]
        self._remaining -= len(data)
        exchange.body_data(data)
        return self._remaining == 0

    def _parse_head(self, exchange: Exchange) -> bool:
        end = self._buffer.find(_HEAD_END)
        if end < 0:
            if len(self._buffer) > MAX_HEAD:
                raise ProtocolError("response head too long")
            return False
        head, self._buffer = self._buffer[:end], self._buffer[end + 4 :]
        lines = head.split(b"\r\n")
        status = lines[0].split(b" ", 2)
        if len(status) < 2 or not status[0].startswith(b"HTTP/1.") or not status[1].isdigit():
            raise ProtocolError(f"bad status line {lines[0][:100]!r}")
        code = int(status[1])
        phrase = status[2] if len(status) > 2 else b""
        minor = 1 if status[0] == b"HTTP/1.1" else 0
        if 100 <= code < 200:
            return True  # an interim answer (100 Continue): the real one follows
        raw: dict[bytes, list[bytes]] = {}
        last: list[bytes] | None = None
        for line in lines[1:]:
            if line[:1] in (b" ", b"\t"):
                if last is None:
                    raise ProtocolError("continuation before any header")
                last[-1] += b" " + line.strip()
                continue
            name, colon, value = line.partition(b":")
            if not colon or not name or name != name.strip():
                raise ProtocolError(f"bad header line {line[:100]!r}")
            last = raw.setdefault(name.lower(), [])
            last.append(value.strip())
        connection = b",".join(raw.get(b"connection", ())).lower()
        if minor == 0 or b"close" in connection:
            exchange.reusable = False
        length: Any = UNKNOWN_LENGTH
        if exchange.head_only or code in NO_BODY_CODES:
            length = 0
            self._state = "done"
        elif b"chunked" in b",".join(raw.get(b"transfer-encoding", ())).lower():
            self._state = "chunk-size"
        elif b"content-length" in raw:
            values = set(raw[b"content-length"])
            text = values.pop()
            if values or not text.isdigit():
                raise ProtocolError("bad Content-Length")
            length = int(text)
            self._remaining = length
            self._state = "length" if length else "done"
        else:
            exchange.reusable = False
            self._state = "close"
        response = Response(exchange, (b"HTTP", 1, minor), code, phrase, Headers(raw), length)
        exchange.headers_received(response)
        if self._state == "done":
            self._body_finished(exchange)
        return True

    def _body_finished(self, exchange: Exchange) -> None:
        self._state = "done"
        exchange.body_done(Failure(ResponseDone()))

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.lost = True
        exchange = self.exchange
        if exchange is not None:
            if self._state == "close":
                exchange.body_done(Failure(PotentialDataLoss()))
            elif exchange.response is not None:
                exchange.body_done(
                    Failure(ResponseFailed([reason or Failure(ConnectionClosedEarly())]))
                )
            else:
                exchange.fail(
                    Failure(ResponseNeverReceived([reason or Failure(ConnectionClosedEarly())]))
                )
        self._on_lost(self)


