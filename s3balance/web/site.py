"""The twisted.web site of the S3 front: streaming requests, HTTP/1.1 only, quiet errors.

No S3 routing here: which requests stream is the front's decision, given as ``should_stream``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.web.http import Request
from twisted.web.resource import IResource
from twisted.web.server import Site

from s3balance import errors
from s3balance.logs import make_logger
from s3balance.metrics import OPEN_CONNECTIONS, REFUSALS
from s3balance.net import twistedcompat
from s3balance.web.bodies import BodyBudget
from s3balance.web.channel import S3Channel, error_response
from s3balance.web.request import StreamingRequest
from s3balance.web.requestbody import DEFAULT_BODY_BUFFER

#: ``request -> whether its body streams``, asked once its request line and headers are in.
StreamPredicate = Callable[[StreamingRequest], bool]
#: ``request -> the largest body allowed``; raises ``S3Error`` to refuse the request before its
#: body is read (authentication).
BodyLimit = Callable[[StreamingRequest], int]


class S3Site(Site):
    """The site serving S3 clients.

    :param resource: the root of the S3 resource tree.
    :param should_stream: ``request -> bool``, asked once the request line and headers are
        in (``method``, ``uri`` and ``requestHeaders`` are set): true for requests whose body
        goes to a backend (PutObject, UploadPart); those run the resource tree before the body
        arrives.
    :param clock: the reactor for timers (idle timeout, stall timers, log timestamps).
    :param read_timeout: seconds a streamed body's client may stay silent while we read.
    :param max_buffered_body: largest body of a non-streamed request when no ``body_limit`` is
        given (larger is answered with ``MaxMessageLengthExceeded``).
    :param body_buffer: bytes a streamed body keeps while nobody consumes them.
    :param idle_timeout: seconds an idle connection stays open (None: forever).
    :param body_limit: asked once the headers of a request with a buffered body are in; by
        default the resource's ``body_limit`` method when it has one (see
        :mod:`s3balance.web.bodies`).
    :param header_timeout: seconds from a request's first byte to the end of its headers.
    :param body_timeout: seconds from the headers to the end of a buffered body.
    :param max_connections: client connections open at once (0: no cap).
    :param body_memory: bytes all buffered bodies may hold together (0: no budget).
    :param counts_clients: whether its connections are the S3 clients'
        ``s3_balance_open_connections`` (false for the ``metrics.port`` site).
    """

    requestFactory = StreamingRequest
    protocol = S3Channel  # type: ignore[assignment]  # a plain HTTP/1.1 channel, never h2
    displayTracebacks = False
    server_header = b"s3balance"

    def __init__(
        self,
        resource: IResource,
        should_stream: StreamPredicate,
        clock: IReactorTime | None = None,
        read_timeout: float = 30.0,
        max_buffered_body: int = 8 << 20,
        body_buffer: int = DEFAULT_BODY_BUFFER,
        idle_timeout: float | None = 60.0,
        body_limit: BodyLimit | None = None,
        header_timeout: float = 10.0,
        body_timeout: float = 30.0,
        max_connections: int = 1000,
        body_memory: int = 32 << 20,
        counts_clients: bool = True,
    ) -> None:
        # A Twisted without the internals streaming needs stops the daemon here, by name.
        for degraded in twistedcompat.check_running_twisted():
            log.warn(
                "Twisted lacks {attribute}: its documented fallback is used",
                attribute=degraded,
            )
        if clock is None:
            from twisted.internet import reactor

            clock = reactor  # type: ignore[assignment]
        assert clock is not None
        # Body parameters of a POST are not query parameters: S3 routing must see only the URL.
        super().__init__(
            resource,
            parsePOSTFormSubmission=False,
            timeout=idle_timeout,
            reactor=clock,
        )
        self.clock: IReactorTime = clock
        self._should_stream = should_stream
        self.read_timeout = read_timeout
        self.max_buffered_body = max_buffered_body
        self.body_buffer = body_buffer
        self._body_limit: BodyLimit | None = body_limit or getattr(resource, "body_limit", None)
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        self.max_connections = max_connections
        self.body_budget: BodyBudget | None = BodyBudget(body_memory) if body_memory else None
        self.open_connections = 0
        self._counts_clients = counts_clients
        self.in_flight: set[StreamingRequest] = set()
        self._drain_waiters: list[Deferred[None]] = []

    def should_stream(self, request: StreamingRequest) -> bool:
        """Whether this request's body streams (the front's predicate)."""
        return self._should_stream(request)

    def body_limit(self, request: StreamingRequest) -> int:
        """The largest body this request may send to be read into memory.

        :raises S3Error: the request is refused before its body is read.
        """
        if self._body_limit is None:
            return self.max_buffered_body
        return min(self._body_limit(request), self.max_buffered_body)

    def buildProtocol(self, addr: IAddress | None) -> Any:
        """A channel, or, beyond ``max_connections``, a 503 SlowDown and a close: a file
        descriptor per connection is what slow or idle clients would exhaust otherwise."""
        if self.max_connections and self.open_connections >= self.max_connections:
            REFUSALS.labels("max_connections").inc()
            return _Refusal(
                errors.SlowDown("Too many connections are open; retry later."),
                self.server_header,
            )
        channel = super().buildProtocol(addr)
        if channel is not None:
            channel.header_timeout = self.header_timeout
            channel.clock = self.clock
        return channel

    def connection_opened(self) -> None:
        self.open_connections += 1
        if self._counts_clients:
            OPEN_CONNECTIONS.set(self.open_connections)

    def connection_closed(self) -> None:
        self.open_connections -= 1
        if self._counts_clients:
            OPEN_CONNECTIONS.set(self.open_connections)

    def request_started(self, request: StreamingRequest) -> None:
        self.in_flight.add(request)

    def request_ended(self, request: StreamingRequest) -> None:
        self.in_flight.discard(request)
        if not self.in_flight:
            waiters, self._drain_waiters = self._drain_waiters, []
            for waiter in waiters:
                if not waiter.called:  # a drain that already gave up
                    waiter.callback(None)

    def drained(self, grace: float) -> Deferred[int]:
        """Fires once no request is in flight, or after ``grace`` seconds, with the number of
        requests still running then (a shutdown lets transfers finish, but not forever)."""
        if not self.in_flight:
            return succeed(0)
        waiter: Deferred[None] = Deferred()
        self._drain_waiters.append(waiter)

        def give_up() -> None:
            if not waiter.called:
                waiter.callback(None)

        timeout = self.clock.callLater(grace, give_up)

        def remaining(_: None) -> int:
            if timeout.active():
                timeout.cancel()
            return len(self.in_flight)

        return waiter.addCallback(remaining)

    def acceptableProtocols(self) -> list[bytes]:
        """Only HTTP/1.1 over TLS: the streaming hooks exist for it alone (see
        ``docs/streaming.md``, trap 9)."""
        return [b"http/1.1"]

    def log(self, request: Request) -> None:
        """No combined-log line: :class:`StreamingRequest` writes the access log, with the
        request id and byte counts both ways, and without the query (presigned signatures)."""


class _Refusal(Protocol):
    """Answers one S3 error at once and closes (the request itself is never read)."""

    def __init__(self, error: errors.S3Error, server_header: bytes) -> None:
        self._response = error_response(error, server_header)

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self._response)
        self.transport.loseConnection()


log = make_logger()
