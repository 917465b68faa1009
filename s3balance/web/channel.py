"""The HTTP/1.1 connection of the S3 front: stock ``HTTPChannel`` made safe for streamed bodies.

Three things differ from stock (the traps of ``docs/streaming.md``):

- ``Expect: 100-continue`` is answered only when the body is actually wanted: at once for a
  buffered request, at the first ``RequestBody.startProducing`` for a streamed one, never when
  the request already has its final answer (trap 2).
- While a streamed body holds the client paused for backpressure, draining our own write buffer
  must not resume reading from the client (trap 6): one owner of the pause at a time.
- Once a connection is known to close after the current answer, whatever the client still
  sends (the unread rest of a body) is dropped, never parsed as a request (trap 1).

What stock Twisted cannot parse it refuses with a bare ``400 Bad Request``; ours carries S3's
XML error document (``InvalidRequest``) like every other answer.

Header count and size limits stay those of stock Twisted (``maxHeaders``, ``totalHeadersSize``).
Two limits are ours, against clients that hold connections open for nothing: a request's headers
must be complete ``header_timeout`` seconds after its first byte (stock Twisted only has an idle
timer, which every trickled byte restarts), else the client gets ``400 RequestTimeout`` and the
connection closes; and a ``Content-Length`` is read with :func:`~s3balance.integers.parse_decimal`
(stock Twisted converts any run of digits, and 4,300 of them raised out of the parser).
"""

from __future__ import annotations

from email.utils import formatdate
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from twisted.web.http import RESPONSES, HTTPChannel

from s3balance import errors
from s3balance.integers import TooManyDigits, parse_decimal
from s3balance.metrics import REFUSALS
from s3balance.net import twistedcompat
from s3balance.net.sockets import READ_SIZE, SEND_SIZE, tune_transport
from s3balance.web.requestids import new_request_id

__all__ = ["READ_SIZE", "SEND_SIZE", "S3Channel", "error_response", "tune_transport"]


def error_response(error: errors.S3Error, server_header: bytes = b"s3balance") -> bytes:
    """A whole HTTP/1.1 response carrying S3's XML error document, closing the connection (for
    refusals made before there is a request object to answer with)."""
    request_id = new_request_id()
    document = error.to_xml("/", request_id)
    reason = RESPONSES.get(error.status, b"Error")
    head = (
        b"HTTP/1.1 %d %s\r\n" % (error.status, reason)
        + b"Server: %s\r\n" % server_header
        + b"Date: %s\r\n" % formatdate(usegmt=True).encode()
        + b"x-amz-request-id: %s\r\n" % request_id.encode()
        + b"Content-Type: application/xml\r\n"
        + b"Content-Length: %d\r\n" % len(document)
        + b"Connection: close\r\n\r\n"
    )
    return head + document


class S3Channel(HTTPChannel):
    """One client connection; HTTP/1.1 only (``S3Site`` never offers h2)."""

    _input_held = False
    _discarding = False
    _counted = False
    #: Seconds from a request's first byte to the end of its headers (None: no deadline).
    header_timeout: float | None = None
    #: The clock ``callLater`` schedules on (set with it by the site; else the global reactor).
    clock: IReactorTime | None = None
    #: When the first byte of the request whose headers are awaited arrived (None: none is).
    _head_started: float | None = None
    _header_deadline: IDelayedCall | None = None
    #: Set by the site that built the channel (``Site.buildProtocol``).
    site: Any
    _local_address: Any = None

    def connectionMade(self) -> None:
        super().connectionMade()
        tune_transport(self.transport)
        opened = getattr(self.site, "connection_opened", None)
        if opened is not None:
            self._counted = True
            opened()

    def getHost(self) -> Any:
        """The local address: asked of the socket once per connection, not once per request
        (stock ``Request.__init__`` asks for it on every request, a ``getsockname`` each)."""
        if self._local_address is None:
            self._local_address = super().getHost()
        return self._local_address

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._stop_header_deadline()
        if self._counted:
            self._counted = False
            self.site.connection_closed()
        super().connectionLost(reason)

    def dataReceived(self, data: bytes) -> None:
        if self._discarding:
            return
        if (
            self._head_started is None
            and self.header_timeout is not None
            and self.line_mode
            and not twistedcompat.handling_request(self)
        ):
            # The first bytes of a request (its request line or headers): they have
            # header_timeout seconds to be complete, however slowly they trickle.
            self._head_started = self._seconds()
            if self._header_deadline is None:
                self._header_deadline = self.callLater(self.header_timeout, self._header_due)
        super().dataReceived(data)

    def _seconds(self) -> float:
        clock = self.clock
        if clock is None:
            from twisted.internet import reactor

            clock = self.clock = reactor  # type: ignore[assignment]
        return clock.seconds()  # type: ignore[union-attr]

    def _header_due(self) -> None:
        """The one timer of the connection's header deadlines came due.

        Requests whose headers end in time do not cancel it (a timer set and cancelled per
        request was a measurable share of a small request's CPU): it outlives them, and when it
        comes due it is set again for the deadline of the request whose headers are awaited now,
        if any, so each request's headers still get exactly ``header_timeout`` seconds from its
        first byte.
        """
        self._header_deadline = None
        started = self._head_started
        if (
            started is None
            or self.header_timeout is None
            or self._discarding
            or not self.line_mode
            or twistedcompat.handling_request(self)
        ):
            return
        left = started + self.header_timeout - self._seconds()
        if left > 0:
            self._header_deadline = self.callLater(left, self._header_due)
            return
        REFUSALS.labels("header_timeout").inc()
        self.refuse(errors.RequestTimeout())

    def _headers_complete(self) -> None:
        """The awaited headers are complete (or refused): nothing is timed until the next
        request's first byte."""
        self._head_started = None

    def _stop_header_deadline(self) -> None:
        self._head_started = None
        if self._header_deadline is not None and self._header_deadline.active():
            self._header_deadline.cancel()
        self._header_deadline = None

    def refuse(self, error: errors.S3Error) -> None:
        """Answer ``error`` without a request object and close; whatever else the client sends
        is dropped."""
        self._discarding = True
        self.persistent = False
        transport = self.transport
        if transport is None:
            return
        server_header = getattr(self.site, "server_header", b"s3balance")
        transport.write(error_response(error, server_header))
        transport.loseConnection()
        if self.abortTimeout is not None and not twistedcompat.abort_call_pending(self):
            # A client that reads nothing would hold the connection open: abort it then.
            twistedcompat.set_abort_call(
                self, self.callLater(self.abortTimeout, self.forceAbortClient)
            )

    def _maybeChooseTransferDecoder(self, header: bytes, data: bytes) -> bool:
        if header == b"Content-Length":
            try:
                # Stock Twisted converts the text as it is: thousands of leading zeros too.
                data = b"%d" % parse_decimal(data)
            except TooManyDigits:
                self.refuse(
                    errors.InvalidArgument(
                        "The Content-Length is not a valid length.",
                        ArgumentName="Content-Length",
                        ArgumentValue=data[:64].decode("latin-1"),
                    )
                )
                return False
            except ValueError:
                pass  # stock Twisted answers anything else that is not digits with 400
        return bool(super()._maybeChooseTransferDecoder(header, data))

    def _respondToBadRequestAndDisconnect(self) -> None:
        # Stock Twisted answers a request line or header it cannot parse (a missing version,
        # a header without a colon, too many headers) with a bare "400 Bad Request" and no
        # body; an S3 client expects S3's XML error document.
        self._malformed()

    def lineLengthExceeded(self, line: bytes) -> int | None:
        # Stock: a header line longer than MAX_LENGTH closes the connection with no answer.
        self._malformed()
        return None

    def _malformed(self) -> None:
        if self._discarding:
            return
        self._stop_header_deadline()
        REFUSALS.labels("malformed_request").inc()
        self.refuse(
            errors.InvalidRequest(
                "The request could not be read as HTTP/1.1: its request line or a header is "
                "malformed, or its headers are too many or too large."
            )
        )

    def allHeadersReceived(self) -> None:
        self._headers_complete()
        request = self.requests[-1]
        request.parseCookies()
        version = twistedcompat.request_line(self)[2]
        self.persistent = self.checkPersistence(request, version)
        request.gotLength(self.length)
        if self._discarding or request.finished or request.startedWriting:
            return  # already answered: a 100 now would precede nothing the client should send
        if getattr(request, "streamed", False):
            return  # the request sends 100 Continue itself when its body is first consumed
        expect = request.requestHeaders.getRawHeaders(b"Expect")
        if expect and expect[0].lower() == b"100-continue" and version == b"HTTP/1.1":
            twistedcompat.send_100_continue(self)

    def allContentReceived(self) -> None:
        if self._discarding or not self.requests:
            # The request was answered before its body ended; the connection is closing.
            self._discarding = True
            return
        super().allContentReceived()

    def requestDone(self, request: Any) -> None:
        self._input_held = False
        if not self.persistent:
            self._discarding = True
        super().requestDone(request)

    def hold_input(self) -> None:
        """Stop reading from the client (a streamed body's consumer is full)."""
        if self._input_held or self._closing():
            return
        self._input_held = True
        twistedcompat.network_producer(self).pauseProducing()

    def release_input(self) -> None:
        """Read from the client again, unless our own write buffer still wants it paused."""
        if not self._input_held:
            return
        self._input_held = False
        if self._closing():
            return
        if not twistedcompat.waiting_for_transport(self):
            twistedcompat.network_producer(self).resumeProducing()

    def resumeProducing(self) -> None:
        """Our write buffer drained: resume the response producer, but leave the client paused
        while a streamed body holds it."""
        if not self._input_held:
            super().resumeProducing()
            return
        twistedcompat.set_waiting_for_transport(self, False)
        producer = twistedcompat.request_producer(self)
        if producer is not None:
            producer.resumeProducing()

    def _closing(self) -> bool:
        return bool(
            self._discarding
            or self.transport is None
            or getattr(self.transport, "disconnecting", False)
        )
