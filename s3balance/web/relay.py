"""Streaming a backend's object body to the client, at the client's pace.

The backend's transport is registered as the response's producer, so a slow client pauses the
backend socket instead of filling our memory.  A body that ends early, or breaks, aborts the client
connection: with ``Content-Length`` already sent, a clean finish would turn a truncated object into
a short "successful" download.

A large body between two plain TCP connections is moved by the kernel instead
(:mod:`s3balance.net.splice`): the relay pauses the stream as soon as it starts, and on the next
reactor turn takes the backend's socket off it (:class:`ISocketBody`), takes back from the client's
transport what it had not sent yet, and lets :class:`SocketSplice` move the rest.  Anything that
does not fit (TLS on either side, chunked framing, a platform without ``splice``) takes the
ordinary path.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from twisted.internet.defer import Deferred, fail
from twisted.internet.error import TimeoutError as StallTimeout
from twisted.internet.interfaces import IPushProducer, IReactorFDSet, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from zope.interface import implementer

from s3balance.backends.interface import ISocketBody
from s3balance.labelled import labelled
from s3balance.metrics import INFLIGHT_TRANSFERS, ZERO_COPY_BYTES
from s3balance.net import splice, twistedcompat
from s3balance.net.stallwatch import StallWatch
from s3balance.web.requestbody import ClientDisconnected

_T = TypeVar("_T")

if TYPE_CHECKING:
    from s3balance.backends.interface import IObjectStream
    from s3balance.web.request import StreamingRequest

__all__ = ["BodyLengthMismatch", "StallTimeout", "relay_object"]

#: Bodies from this size on go through the kernel when both connections allow it: below it, a
#: pipe and a backend connection that cannot go back to the pool cost more than they save.
SPLICE_MIN = 4 << 20


class BodyLengthMismatch(Exception):
    """The backend ended cleanly, but after more or fewer bytes than it announced."""


@implementer(IPushProducer)
class _WatchedProducer:
    """The backend transport as the response's producer, noticing each resume (stall timer)."""

    def __init__(self, producer: IPushProducer, on_resume: Callable[[], None]) -> None:
        self._producer = producer
        self._on_resume = on_resume
        self.paused = False
        self.pause_count = 0

    def pauseProducing(self) -> None:
        self.paused = True
        self.pause_count += 1
        self._producer.pauseProducing()

    def resumeProducing(self) -> None:
        self.paused = False
        self._on_resume()
        self._producer.resumeProducing()

    def stopProducing(self) -> None:
        self._producer.stopProducing()


class _RelayProtocol(Protocol):
    """Receives the backend body (via ``IObjectStream.deliverBody``) and writes it out."""

    def __init__(
        self,
        request: StreamingRequest,
        expected: int,
        clock: IReactorTime,
        stall_timeout: float,
        zero_copy: bool = False,
    ) -> None:
        self.request = request
        self.expected = expected
        self.clock = clock
        self.stall_timeout = stall_timeout
        self.deferred: Deferred[int] = Deferred()
        self.relayed = 0
        self.producer: _WatchedProducer | None = None
        self._stall = StallWatch(clock, stall_timeout)
        self._stall.on_stall = self._stalled
        self._done = False
        self._zero_copy = zero_copy and expected >= SPLICE_MIN and splice.available()
        self._splice: splice.SocketSplice | None = None
        #: Set while a splice runs: the stream it came from (:class:`ISocketBody`).
        self._detached_from: ISocketBody | None = None
        self._client_was_reading = False

    def connectionMade(self) -> None:
        request = self.request
        backend = IPushProducer(self.transport)
        self.producer = _WatchedProducer(backend, self._stall.touch)
        self._stall.resume()
        if request.disconnected:
            self._client_gone(None)
            return
        request.registerProducer(self.producer, True)
        if twistedcompat.waiting_for_transport(request.channel):
            # The client is already behind: start paused rather than overfill its buffer.
            self.producer.pauseProducing()
        request.notify_disconnect().addCallback(self._client_gone)
        if (
            self._zero_copy
            and ISocketBody.providedBy(self.transport)
            and self._client_socket() is not None
        ):
            # Hold the body until the next turn, when the backend's socket can be taken over.
            self.producer.pauseProducing()
            self.clock.callLater(0, self._begin_splice)

    def _client_socket(self) -> tuple[Any, Any, socket.socket] | None:
        """The client's transport, its reactor and its socket, when a splice can write to it
        (plain TCP, a reactor that watches file descriptors); ``None`` otherwise (TLS...)."""
        client = getattr(self.request.channel, "transport", None)
        reactor = getattr(client, "reactor", None)
        sink = splice.tcp_socket(client)
        if client is None or sink is None or not IReactorFDSet.providedBy(reactor):
            return None
        if not twistedcompat.can_take_unsent(client):
            return None  # this Twisted's write buffer cannot be taken back: ordinary relay
        return client, reactor, sink

    def _begin_splice(self) -> None:
        """Hand the rest of the body to the kernel, or resume the ordinary relay."""
        if self._done or self.request.disconnected:
            return
        assert self.producer is not None
        found = self._client_socket()
        if found is None:
            self.producer.resumeProducing()
            return
        client, reactor, sink = found
        body: ISocketBody = ISocketBody(self.transport)
        source = body.detach()  # delivers what was already read: it goes through write()
        if source is None:
            self.producer.resumeProducing()
            return
        if self._done:
            body.release()
            return
        self.request.unregisterProducer()
        if not self.request.startedWriting:
            self.request.write(b"")  # the status line and headers, which go out first
        # The splice owns the client's socket until it ends: the channel's transport stops
        # reading (it reads on while answering, to see a disconnect; a failed write shows that
        # now) and gives back what it had not sent.
        self._client_was_reading = client in reactor.getReaders()
        client.stopReading()
        pending = splice.take_unsent(client)
        self._detached_from = body
        self._splice = splice.SocketSplice(
            reactor, source, sink, self.expected - self.relayed, pending, self._spliced
        )
        self._splice.start().addCallbacks(self._splice_ended, self._splice_failed)

    def _spliced(self, count: int) -> None:
        self._stall.touch()
        ZERO_COPY_BYTES.inc(count)

    def _splice_ended(self, moved: int) -> None:
        assert self._detached_from is not None
        self.relayed += moved  # what was taken back from the transport was counted already
        self._detached_from.release()
        if self._done:
            return
        self.request.note_sent(moved)
        self._end()
        client = getattr(self.request.channel, "transport", None)
        if self._client_was_reading and client is not None:
            client.startReading()
        self.request.finish()
        self.deferred.callback(self.relayed)

    def _splice_failed(self, reason: Failure) -> None:
        assert self._detached_from is not None
        self._detached_from.release()
        if self._done:
            return
        if reason.check(splice.SinkFailed):
            self._end()
            transport = getattr(self.request, "transport", None)
            if transport is not None:
                transport.abortConnection()
            self.deferred.errback(Failure(ClientDisconnected(reason.getErrorMessage())))
            return
        if reason.check(splice.SourceEnded):
            reason = Failure(BodyLengthMismatch(reason.getErrorMessage()))
        self._break(reason, stop_backend=False)

    def dataReceived(self, data: bytes) -> None:
        if self._done:
            return
        self.relayed += len(data)
        if self.relayed > self.expected:
            self._break(
                Failure(BodyLengthMismatch(f"backend sent more than {self.expected} bytes")),
                stop_backend=True,
            )
            return
        self._stall.touch()
        self.request.write(data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        if reason is None:
            reason = Failure(ResponseDone())
        if self._done:
            return
        if reason.check(ResponseDone) is None:
            self._break(reason, stop_backend=False)
            return
        if self.relayed != self.expected:
            self._break(
                Failure(
                    BodyLengthMismatch(
                        f"backend ended after {self.relayed} of {self.expected} bytes"
                    )
                ),
                stop_backend=False,
            )
            return
        self._end()
        self.request.unregisterProducer()
        self.request.finish()
        self.deferred.callback(self.relayed)

    def _end(self) -> None:
        self._done = True
        if self._splice is not None:
            self._splice.stop()  # no-op once it has ended by itself
        self._stall.stop()

    def _break(self, reason: Failure, stop_backend: bool) -> None:
        """Fail the relay: the client must see a broken connection, never a clean end."""
        self._end()
        if self._detached_from is not None:
            self._detached_from.release()
        elif stop_backend and self.producer is not None:
            self.producer.stopProducing()
        request = self.request
        if not request.disconnected:
            request.unregisterProducer()
            transport = request.transport
            if transport is not None:
                transport.abortConnection()  # type: ignore[attr-defined]  # a TCP transport
        self.deferred.errback(reason)

    def _client_gone(self, _: object) -> None:
        if self._done:
            return
        self._end()
        if self._detached_from is not None:
            self._detached_from.release()
        elif self.producer is not None:
            self.producer.stopProducing()
        self.request.unregisterProducer()
        self.deferred.errback(Failure(ClientDisconnected("the client left during the download")))

    def _stalled(self) -> None:
        if self._done:
            return
        self._break(
            Failure(StallTimeout(f"no progress for {self.stall_timeout} seconds")),
            stop_backend=True,
        )


def relay_object(
    request: StreamingRequest,
    stream: IObjectStream,
    clock: IReactorTime,
    stall_timeout: float,
    zero_copy: bool = False,
) -> Deferred[int]:
    """Stream ``stream``'s body as the response to ``request`` (status and headers already set).

    Sets ``Content-Length`` from ``stream.length`` when the caller did not.

    :param zero_copy: let the kernel move a large body when both connections are plain TCP.

    :returns: a Deferred firing with the number of bytes relayed once the response finished;
        failing with :class:`ClientDisconnected` (the backend was stopped),
        :class:`BodyLengthMismatch`, :class:`StallTimeout` or the backend's own failure (the
        client connection was aborted in those cases).
    """
    if request.disconnected:
        stream.discard()
        return fail(ClientDisconnected("the client left before the download started"))
    if not request.responseHeaders.hasHeader(b"Content-Length"):
        request.setHeader(b"Content-Length", b"%d" % stream.length)
    relay = _RelayProtocol(request, stream.length, clock, stall_timeout, zero_copy)
    labelled(INFLIGHT_TRANSFERS, "out").inc()
    relay.deferred.addBoth(_transfer_ended)
    stream.deliverBody(relay)
    return relay.deferred


def _transfer_ended(result: _T) -> _T:
    labelled(INFLIGHT_TRANSFERS, "out").dec()
    return result
