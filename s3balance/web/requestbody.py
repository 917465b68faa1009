"""A request body as it arrives, handed to one consumer with backpressure.

:class:`RequestBody` is the ``IBodyProducer`` a backend consumes for a streamed upload (PutObject,
UploadPart): the client's bytes go through the body filters (:mod:`s3balance.web.filters`) on
their way out, and when the consumer pushes back, reading from the client pauses, so a slow
backend slows the client's TCP window rather than filling memory.  Which requests stream is
decided by :class:`~s3balance.web.request.StreamingRequest`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IConsumer, IReactorTime
from twisted.python.failure import Failure
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from s3balance import errors
from s3balance.errors import S3Error
from s3balance.net.stallwatch import StallWatch

if TYPE_CHECKING:
    from s3balance.web.filters import BodyFilter

__all__ = [
    "DEFAULT_BODY_BUFFER",
    "BodyAbandoned",
    "ClientDisconnected",
    "InputFlow",
    "RequestBody",
]

#: Bytes a streamed body keeps while nobody consumes them.
DEFAULT_BODY_BUFFER = 256 << 10


class ClientDisconnected(Exception):
    """The client's connection closed before its request was done."""


class BodyAbandoned(Exception):
    """The request was answered (or its consumer gave up) before the body was used up."""


class InputFlow(Protocol):
    """Who can stop and restart reading from the client (the request, on behalf of its channel)."""

    def pause_input(self) -> None: ...

    def resume_input(self) -> None: ...


@implementer(IBodyProducer)
class RequestBody:
    """A client's request body as it arrives, produced to one consumer at a time.

    Raw client bytes wait in a small buffer until a consumer wants them; filters run as bytes
    are handed out, so filters added after the first bytes arrived still see every byte.  The
    last chunk of output is always held back until the end of input has been verified by every
    filter's ``finish()`` (the hold-back rule): a backend never receives a complete object that
    failed its digest or signature.  This is the front end of the rule and knows the filters'
    verdict; :class:`s3balance.backends.guardedbody.GuardedBody` is the backend end, holding back
    the last byte of any body on its way to any backend (it knows nothing of filters).  Both
    stay until tests show one covers every case the other does.

    :param length: the decoded body length a consumer will get, or ``UNKNOWN_LENGTH``; the front
        may reassign it (aws-chunked) before ``startProducing``.
    :param clock: for the stall timer.
    :param read_timeout: seconds the client may stay silent while we are reading from it.
    :param buffer_limit: bytes kept while nobody consumes; beyond that the client is paused.
    :param input_flow: pauses and resumes reading from the client; None in unit tests.
    :param awaiting_continue: the client sent ``Expect: 100-continue``: it sends nothing until the
        first ``startProducing``, so the stall timer waits for that too.
    :param on_start: called at the first ``startProducing`` (sends ``100 Continue``).
    """

    def __init__(
        self,
        length: int | str,
        *,
        clock: IReactorTime,
        read_timeout: float,
        buffer_limit: int = DEFAULT_BODY_BUFFER,
        input_flow: InputFlow | None = None,
        awaiting_continue: bool = False,
        on_start: Callable[[], None] | None = None,
    ) -> None:
        self.length: int | str = length
        self.bytes_received = 0
        self.complete = False
        self.peak_buffered = 0
        self._clock = clock
        self._buffer_limit = buffer_limit
        self._input_flow = input_flow
        self._awaiting_continue = awaiting_continue
        self._on_start = on_start
        self._filters: list[BodyFilter] = []
        self._pending: deque[bytes] = deque()
        self._pending_size = 0
        self._held = b""
        self._produced = 0
        self._bytes_handed = 0
        self._consumer: IConsumer | None = None
        self._deferred: Deferred[None] | None = None
        self._consumer_paused = False
        self._input_paused = False
        self._started = False
        self._draining = False
        self._succeeded = False
        self._failure: BaseException | None = None
        #: The client's stall timer, running while we wait for its bytes.
        self._stall = StallWatch(clock, read_timeout)
        self._stall.on_stall = self._stalled
        self._waiting_for_client = False
        self._update_flow()

    # -- the producer side (called by the front and by a backend) --------------------------------

    @property
    def buffered(self) -> int:
        """Bytes held in memory right now (raw input not yet consumed plus the held-back chunk)."""
        return self._pending_size + len(self._held)

    def add_filter(self, body_filter: BodyFilter) -> None:
        """Append a filter to the chain; only before the first ``startProducing``."""
        if self._started:
            raise RuntimeError("add_filter() after startProducing()")
        self._filters.append(body_filter)

    def restartable(self) -> bool:
        """Whether a new consumer could still get the whole body (no byte was handed out)."""
        return self._bytes_handed == 0 and self._failure is None and not self._succeeded

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        """Write the body to ``consumer``.

        :returns: a Deferred firing None once every filter's ``finish()`` passed and the last
            byte was written; failing with the filter's :class:`S3Error`,
            :class:`ClientDisconnected`, ``RequestTimeout``, ``IncompleteBody`` or
            :class:`BodyAbandoned`.
        :raises RuntimeError: when called again after bytes were handed to a consumer.
        """
        if self._started and not self.restartable():
            if self._failure is not None:
                return fail(self._failure)
            raise RuntimeError("RequestBody.startProducing() called twice")
        if self._failure is not None:
            return fail(self._failure)
        # A restart abandons a previous consumer that never got a byte: its Deferred never fires.
        first = not self._started
        self._started = True
        self._consumer = consumer
        self._consumer_paused = False
        deferred: Deferred[None] = Deferred()
        self._deferred = deferred
        if first:
            self._awaiting_continue = False
            if self._on_start is not None:
                self._on_start()
        self._drain()
        return deferred

    def pauseProducing(self) -> None:
        """The consumer is full: stop reading from the client."""
        self._consumer_paused = True
        self._update_flow()

    def resumeProducing(self) -> None:
        """The consumer drained: hand out what is buffered and read from the client again."""
        self._consumer_paused = False
        self._drain()

    def stopProducing(self) -> None:
        """The consumer gave up; its Deferred never fires (as ``IBodyProducer`` requires).

        While :meth:`restartable`, the body stays usable for another consumer.
        """
        self._consumer = None
        self._deferred = None
        self._consumer_paused = False
        if not self.restartable() and self._failure is None and not self._succeeded:
            self._discard(BodyAbandoned("the consumer stopped reading the body"))
        self._update_flow()

    # -- the input side (called by StreamingRequest) ---------------------------------------------

    def receive(self, data: bytes) -> None:
        """Bytes from the client (already de-chunked by the HTTP parser)."""
        self.bytes_received += len(data)
        if self._done():
            return
        self._pending.append(data)
        self._pending_size += len(data)
        self._stall.touch()
        self._drain()
        # What stays in memory once the consumer took its share (a read is at most 64 KiB).
        self.peak_buffered = max(self.peak_buffered, self.buffered)

    def end_of_input(self) -> None:
        """The client sent its last byte."""
        self.complete = True
        self._drain()

    def connection_lost(self) -> None:
        """The client went away: nothing more will arrive, and no answer can be delivered."""
        self._input_flow = None
        if not self._done():
            self._fail(ClientDisconnected("the client disconnected before the body was used"))
        self._update_flow()

    def abandon(self) -> None:
        """The request is being answered without (all of) its body; drop what arrives."""
        if not self._done():
            self._fail(BodyAbandoned("the request was answered before its body was used"))
        self._update_flow()

    # -- internals --------------------------------------------------------------------------------

    def _declared_length(self) -> int | None:
        return self.length if isinstance(self.length, int) else None

    def _done(self) -> bool:
        return self._failure is not None or self._succeeded

    def _drain(self) -> None:
        if self._draining:
            return
        self._draining = True
        try:
            self._drain_loop()
        except S3Error as error:
            self._fail(error)
        finally:
            self._draining = False
        self._update_flow()

    def _drain_loop(self) -> None:
        while self._consumer is not None and not self._consumer_paused and self._pending:
            chunk = self._pending.popleft()
            self._pending_size -= len(chunk)
            for body_filter in self._filters:
                chunk = body_filter.feed(chunk)
            if chunk:
                self._push(chunk)
        if (
            self.complete
            and not self._pending
            and self._consumer is not None
            and not self._consumer_paused
            and not self._done()
        ):
            self._finish_body()

    def _push(self, output: bytes) -> None:
        """Pass filtered output on, always keeping the newest chunk back."""
        self._produced += len(output)
        declared = self._declared_length()
        if declared is not None and self._produced > declared:
            raise errors.InvalidRequest(
                f"The request body is longer than its declared length ({self.length} bytes)."
            )
        held, self._held = self._held, output
        if held:
            self._write(held)

    def _write(self, data: bytes) -> None:
        consumer = self._consumer
        assert consumer is not None
        self._bytes_handed += len(data)
        consumer.write(data)

    def _finish_body(self) -> None:
        tail = b""
        for index, body_filter in enumerate(self._filters):
            output = body_filter.finish()
            for later in self._filters[index + 1 :]:
                output = later.feed(output)
            tail += output
        self._produced += len(tail)
        declared = self._declared_length()
        if declared is not None and self._produced != declared:
            if self._produced < declared:
                raise errors.IncompleteBody()
            raise errors.InvalidRequest(
                f"The request body is longer than its declared length ({self.length} bytes)."
            )
        final = self._held + tail
        self._held = b""
        if final:
            self._write(final)
        self._succeeded = True
        deferred, self._deferred = self._deferred, None
        self._consumer = None
        self._stall.stop()
        if deferred is not None:
            deferred.callback(None)

    def _fail(self, error: BaseException) -> None:
        deferred = self._deferred
        self._discard(error)
        if deferred is not None:
            deferred.errback(Failure(error))

    def _discard(self, error: BaseException) -> None:
        self._failure = error
        self._pending.clear()
        self._pending_size = 0
        self._held = b""
        self._consumer = None
        self._deferred = None
        self._stall.stop()

    def _update_flow(self) -> None:
        """Pause the client iff we do not want its bytes now; run the stall timer iff we are
        waiting for the client."""
        reading = not self.complete and not self._done()
        # The held-back chunk does not count: it leaves only when the next chunk arrives, so
        # counting it would stop the client for good once one read reaches the limit.
        want_pause = reading and (
            self._consumer_paused or self._pending_size >= self._buffer_limit
        )
        if want_pause != self._input_paused and self._input_flow is not None:
            self._input_paused = want_pause
            if want_pause:
                self._input_flow.pause_input()
            else:
                self._input_flow.resume_input()
        waiting_for_client = reading and not want_pause and not self._awaiting_continue
        if waiting_for_client != self._waiting_for_client:
            self._waiting_for_client = waiting_for_client
            if waiting_for_client:
                self._stall.resume()  # the wait for the client starts now
            else:
                self._stall.suspend()

    def _stalled(self) -> None:
        """The client sent nothing for ``read_timeout`` seconds while we waited for it."""
        self._waiting_for_client = False
        if not self._done():
            self._fail(errors.RequestTimeout())
        self._update_flow()
