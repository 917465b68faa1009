"""Reading an object that has several replicas: the first that answers serves it, the next ones
take over where it broke.

:func:`open_replicas` tries the replicas in the order given (the pool's read order: healthy,
fastest first) until one opens; a connection error, a 5xx or a 404 moves on to the next.  The
stream it returns, :class:`FailoverStream`, looks like one backend's stream to the relay: when the
replica serving it breaks (connection lost, a stall, a body that ends short), it opens the next
replica with a ``Range`` starting at the first byte not yet delivered and goes on, after checking
that the new replica holds the same object (same ETag, same remaining length).  The client sees
one unbroken body; only when no replica is left does the stream end with the last error, and the
relay then aborts the client connection as for any broken body.

A failover stream never offers :class:`~s3balance.backends.interface.ISocketBody`: a body the
kernel moves (zero copy) could not be resumed from another replica.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from zope.interface import implementer

from s3balance import metrics
from s3balance.backends.interface import BackendError, BackendUnavailable, IObjectStream
from s3balance.logs import make_logger

__all__ = ["FailoverStream", "NoReplicaLeft", "open_replicas"]

log = make_logger()

_L = TypeVar("_L")

#: Opens one replica for a byte range (None: the whole object); raises BackendError to move on.
OpenOne = Callable[[_L, tuple[int, int] | None], Awaitable[IObjectStream]]


class NoReplicaLeft(BackendUnavailable):
    """Every replica of the object failed; :attr:`errors` says how, replica by replica."""

    def __init__(self, errors: Sequence[BackendError]) -> None:
        detail = "; ".join(f"{e.backend}: {e.detail}" for e in errors) or "no replica to read"
        super().__init__("replicas", detail)
        self.errors = list(errors)


class _Replicas:
    """The replicas not tried yet and how to open one at a position of the body."""

    def __init__(
        self,
        locations: Sequence[Any],
        byte_range: tuple[int, int] | None,
        size: int,
        open_one: OpenOne[Any],
    ) -> None:
        self.remaining = list(locations)
        self.first, self.last = byte_range if byte_range is not None else (0, size - 1)
        self.whole = byte_range is None
        self.open_one = open_one
        self.errors: list[BackendError] = []

    async def next(
        self, position: int, check: Callable[[IObjectStream], str | None]
    ) -> IObjectStream:
        """The next replica that opens at ``position`` (bytes of the range already delivered)
        and passes ``check`` (a problem, or None).

        :raises NoReplicaLeft: none did.
        """
        byte_range = None if self.whole and position == 0 else (self.first + position, self.last)
        while self.remaining:
            location = self.remaining.pop(0)
            try:
                stream = await self.open_one(location, byte_range)
            except BackendError as error:
                self.errors.append(error)
                metrics.REPLICA_FAILOVERS.inc()
                continue
            problem = check(stream)
            if problem is None:
                return stream
            stream.discard()
            self.errors.append(BackendError(str(location), problem))
            metrics.REPLICA_FAILOVERS.inc()
        raise NoReplicaLeft(self.errors)


async def open_replicas(
    locations: Sequence[_L],
    byte_range: tuple[int, int] | None,
    size: int,
    open_one: OpenOne[_L],
) -> IObjectStream:
    """Open ``locations`` in order until one answers; its stream fails over to the rest.

    :param byte_range: the inclusive range asked for, or None for the whole object.
    :param size: the object's size (the range of a whole object).
    :param open_one: opens one replica; a :class:`BackendError` moves on to the next, any other
        exception is raised to the caller.
    :raises NoReplicaLeft: no replica could be opened.
    """
    replicas = _Replicas(locations, byte_range, size, open_one)
    first = await replicas.next(0, lambda stream: None)
    return FailoverStream(first, replicas)


@implementer(IPushProducer)
class _Switch:
    """The transport the reader's protocol sees: pauses and stops reach whichever replica is
    serving now, and one that takes over starts paused when the reader is paused."""

    def __init__(self) -> None:
        self.current: IPushProducer | None = None
        self.paused = False
        self.stopped = False

    def attach(self, transport: IPushProducer) -> None:
        self.current = transport
        if self.stopped:
            transport.stopProducing()
        elif self.paused:
            transport.pauseProducing()

    def pauseProducing(self) -> None:
        self.paused = True
        if self.current is not None:
            self.current.pauseProducing()

    def resumeProducing(self) -> None:
        self.paused = False
        if self.current is not None:
            self.current.resumeProducing()

    def stopProducing(self) -> None:
        self.stopped = True
        if self.current is not None:
            self.current.stopProducing()


class _Leg(Protocol):
    """Receives one replica's body for the failover stream."""

    def __init__(self, owner: FailoverStream) -> None:
        self.owner = owner

    def makeConnection(self, transport: Any) -> None:
        self.transport = transport
        self.owner._leg_connected(self, IPushProducer(transport))

    def dataReceived(self, data: bytes) -> None:
        self.owner._leg_data(self, data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.owner._leg_lost(self, reason if reason is not None else Failure(ResponseDone()))


@implementer(IObjectStream)
class FailoverStream:
    """One replica's stream that another replica takes over when it breaks (module docstring)."""

    def __init__(self, first: IObjectStream, replicas: _Replicas) -> None:
        self.length: int = first.length
        self.size: int = first.size
        self.etag: str = first.etag
        #: Body bytes handed to the reader so far.
        self.delivered = 0
        #: How many times another replica took over.
        self.failovers = 0
        self._first = first
        self._replicas = replicas
        self._protocol: Any = None
        self._switch = _Switch()
        self._leg: _Leg | None = None
        self._ended = False

    def deliverBody(self, protocol: Any) -> None:
        self._protocol = protocol
        protocol.makeConnection(self._switch)
        self._serve(self._first)

    def discard(self) -> None:
        self._first.discard()

    def _serve(self, stream: IObjectStream) -> None:
        leg = _Leg(self)
        self._leg = leg
        stream.deliverBody(leg)

    def _leg_connected(self, leg: _Leg, transport: IPushProducer) -> None:
        if leg is self._leg:
            self._switch.attach(transport)

    def _leg_data(self, leg: _Leg, data: bytes) -> None:
        if leg is not self._leg or self._ended:
            return
        self.delivered += len(data)
        self._protocol.dataReceived(data)

    def _leg_lost(self, leg: _Leg, reason: Failure) -> None:
        if leg is not self._leg or self._ended:
            return
        self._switch.current = None
        complete = self.delivered == self.length
        if complete or self._switch.stopped or self.delivered > self.length:
            # Every byte arrived (a replica that breaks after its last byte has served it), or
            # the reader stopped us, or the replica sent too much: nothing to resume.
            self._end(Failure(ResponseDone()) if complete else reason)
            return
        metrics.REPLICA_FAILOVERS.inc()
        log.warn(
            "a replica broke after {delivered} of {length} bytes ({error}); resuming from the "
            "next one",
            delivered=self.delivered, length=self.length, error=reason.getErrorMessage(),
        )  # fmt: skip
        self._leg = None
        resumed: Deferred[IObjectStream] = Deferred.fromCoroutine(
            self._replicas.next(self.delivered, self._same_object)
        )
        resumed.addCallbacks(
            lambda stream: self._resumed(stream, reason), lambda _: self._end(reason)
        )

    def _same_object(self, stream: IObjectStream) -> str | None:
        if stream.etag != self.etag:
            return f"holds ETag {stream.etag}, not {self.etag}"
        if stream.length != self.length - self.delivered:
            return f"offers {stream.length} bytes, not the {self.length - self.delivered} left"
        return None

    def _resumed(self, stream: IObjectStream, broken: Failure) -> None:
        if self._switch.stopped:
            stream.discard()
            self._end(broken)
            return
        self.failovers += 1
        self._serve(stream)

    def _end(self, reason: Failure) -> None:
        if self._ended:
            return
        self._ended = True
        self._protocol.connectionLost(reason)
