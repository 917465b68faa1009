"""A twisted.web request whose body streams to a backend while it arrives.

Stock twisted.web reads a whole request body before any resource sees the request (see
``docs/streaming.md``, whose traps the comments here refer to by number).
:class:`StreamingRequest` asks the site, once the headers are in, whether this request's body
should stream; if so it runs the resource tree at once and hands the body out as a
:class:`~s3balance.web.requestbody.RequestBody`, an ``IBodyProducer`` a backend consumes with
backpressure reaching the client's TCP window.  Buffered bodies are admitted here too: capped
(:mod:`s3balance.web.bodies`) and checked against the request's authentication before they are
read.
"""

from __future__ import annotations

import time
from io import BytesIO
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure
from twisted.web import resource, server
from twisted.web.iweb import UNKNOWN_LENGTH

from s3balance import errors
from s3balance.conditions import http_date
from s3balance.errors import S3Error
from s3balance.labelled import labelled
from s3balance.logs import ACCESS_LINE, NO_VALUE, named_logger, printable
from s3balance.metrics import INFLIGHT_TRANSFERS, REFUSALS
from s3balance.net import twistedcompat
from s3balance.web.bodies import DEFAULT_BODY
from s3balance.web.queryparams import query_args
from s3balance.web.requestbody import RequestBody
from s3balance.web.requestids import new_request_id

if TYPE_CHECKING:
    from s3balance.web.bodies import BodyBudget

__all__ = ["StreamingRequest"]

_access_log = named_logger("s3balance.access")
_log = named_logger("s3balance.web.request")


class _SiteSettings(Protocol):
    """What :class:`StreamingRequest` reads from its site (provided by ``S3Site``)."""

    clock: IReactorTime
    read_timeout: float
    body_timeout: float
    body_budget: BodyBudget | None
    body_buffer: int
    server_header: bytes

    def should_stream(self, request: StreamingRequest) -> bool: ...

    def body_limit(self, request: StreamingRequest) -> int: ...

    def request_started(self, request: StreamingRequest) -> None: ...

    def request_ended(self, request: StreamingRequest) -> None: ...


class StreamingRequest(server.Request):
    """A request that may stream its body (see the module docstring).

    :ivar request_id: 16 hex characters, for ``x-amz-request-id`` and the access log.
    :ivar body: the streaming body, or None for a buffered request (read ``content`` then).
    :ivar streamed: whether the resource tree ran before the body arrived.
    :ivar disconnected: the client's connection is gone; writes are dropped.
    """

    defaultContentType = None

    def __init__(self, channel: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(channel, *args, **kwargs)
        self.request_id = new_request_id()
        #: For the access line: the S3 operation and error code, set by whoever decides them.
        self.access_operation = NO_VALUE
        self.access_error = NO_VALUE
        self.body: RequestBody | None = None
        self.streamed = False
        self.disconnected = False
        self.bytes_in = 0
        self.bytes_out = 0
        self._settings: _SiteSettings | None = (
            channel.site if hasattr(channel.site, "should_stream") else None
        )
        self._clock: IReactorTime = self._resolve_clock()
        self._started_at = self._clock.seconds()
        self._disconnect_waiters: list[Deferred[None]] = []
        self._rejected = False
        self._body_cap = 0
        self._body_reserved = 0
        self._body_deadline: IDelayedCall | None = None
        self._wants_continue = False
        self._continue_sent = False
        self._logged = False
        if self._settings is not None:
            self._settings.request_started(self)

    def _resolve_clock(self) -> IReactorTime:
        if self._settings is not None:
            return self._settings.clock
        from twisted.internet import reactor

        return reactor  # type: ignore[return-value]

    # -- channel callbacks ------------------------------------------------------------------------

    def gotLength(self, length: int | None) -> None:
        """Headers are in: decide between streaming (run the resource now) and stock buffering."""
        channel = self.channel
        command, path, version = twistedcompat.request_line(channel)
        expect = self.requestHeaders.getRawHeaders(b"Expect")
        self._wants_continue = bool(
            version == b"HTTP/1.1" and expect and expect[0].lower() == b"100-continue"
        )
        settings = self._settings
        if settings is None:
            super().gotLength(length)
            return
        # The front reads the request line from the request, as it will when it renders.
        self._set_request_line(command, path, version)
        if settings.should_stream(self):
            self._begin_streaming(length)
            return
        # A buffered body stays in memory (never a temporary file): it is capped first.
        self.content = BytesIO()
        if length == 0:
            return
        self._admit_body(settings, length)

    def handleContentChunk(self, data: bytes) -> None:
        self.bytes_in += len(data)
        if self.streamed:
            assert self.body is not None
            self.body.receive(data)
            return
        if self._rejected:
            return
        if self._settings is not None:
            content = self.content
            assert content is not None
            if content.tell() + len(data) > self._body_cap:
                REFUSALS.labels("body_too_large").inc()
                self._reject(errors.MaxMessageLengthExceeded())
                return
            # A chunked body (no declared length) is reserved as it arrives.
            unreserved = content.tell() + len(data) - self._body_reserved
            if unreserved > 0 and not self._reserve(unreserved):
                return
        super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        """End of body: a streamed request already runs, so only tell its body."""
        if self.streamed:
            assert self.body is not None
            self.body.end_of_input()
            return
        self._stop_body_deadline()
        if self._rejected:
            return
        super().requestReceived(command, path, version)

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        self.disconnected = True
        if self.body is not None:
            self.body.connection_lost()
        waiters, self._disconnect_waiters = self._disconnect_waiters, []
        for waiter in waiters:
            waiter.callback(None)
        self._log_access()

    def process(self) -> None:
        """Render, with ``args`` read by the front's one query parser (twisted.web's drops a
        parameter without ``=``, which S3 reads as an empty value)."""
        self.args = query_args(self.uri.partition(b"?")[2])
        super().process()

    # -- streaming setup ---------------------------------------------------------------------------

    def _set_request_line(self, command: bytes, path: bytes, version: bytes) -> None:
        """What ``http.Request.requestReceived`` sets, without touching a body."""
        self.method, self.uri = command, path
        self.clientproto = version
        self.path, _, argstring = self.uri.partition(b"?")
        self.args = query_args(argstring)

    def _begin_streaming(self, length: int | None) -> None:
        settings = self._settings
        assert settings is not None
        self.streamed = True
        labelled(INFLIGHT_TRANSFERS, "in").inc()
        self.content = BytesIO()
        self.body = RequestBody(
            UNKNOWN_LENGTH if length is None else length,
            clock=self._clock,
            read_timeout=settings.read_timeout,
            buffer_limit=settings.body_buffer,
            input_flow=self,
            awaiting_continue=self._wants_continue,
            on_start=self._body_wanted,
        )
        # The channel's idle timeout would fire while a backend pushes back; the body's stall
        # timer replaces it until this request is done (requestDone restores it).
        channel = self.channel
        previous = channel.setTimeout(None)
        if previous is not None:
            twistedcompat.restore_idle_timeout_later(channel, previous)
        self.process()

    def _body_wanted(self) -> None:
        """First ``startProducing``: the client may send its body now (``100 Continue``)."""
        channel = getattr(self, "channel", None)
        body = self.body
        if (
            self._wants_continue
            and not self._continue_sent
            and not self.startedWriting
            and not self.finished
            and not self.disconnected
            and channel is not None
            and body is not None
            and not body.complete
        ):
            self._continue_sent = True
            twistedcompat.send_100_continue(channel)

    def pause_input(self) -> None:
        channel = getattr(self, "channel", None)
        if channel is not None and not self.disconnected:
            channel.hold_input()

    def resume_input(self) -> None:
        channel = getattr(self, "channel", None)
        if channel is not None and not self.disconnected:
            channel.release_input()

    # -- buffered bodies ---------------------------------------------------------------------------

    def _admit_body(self, settings: _SiteSettings, length: int | None) -> None:
        """Decide, from the headers alone, whether this body may be read into memory: the
        request must pass authentication (the payload hash is checked later, over the body),
        fit its operation's cap and the shared budget, and arrive within ``body_timeout``."""
        try:
            self._body_cap = settings.body_limit(self)
        except S3Error as error:
            REFUSALS.labels("unauthenticated").inc()
            self._reject(error)
            return
        except Exception:
            # A defect of ours: the request goes on with the smallest cap, and meets the
            # same failure (answered InternalError) once its body is in.
            _log.failure(
                "checking request {request_id} before its body", request_id=self.request_id
            )
            self._body_cap = DEFAULT_BODY
        if length is not None and length > self._body_cap:
            REFUSALS.labels("body_too_large").inc()
            self._reject(errors.MaxMessageLengthExceeded())
            return
        if length is not None and not self._reserve(length):
            return
        self._body_deadline = self._clock.callLater(settings.body_timeout, self._body_too_slow)

    def _reserve(self, count: int) -> bool:
        """Take ``count`` bytes from the shared budget, or answer 503 SlowDown."""
        budget = self._settings.body_budget if self._settings is not None else None
        if budget is None:
            return True
        if not budget.take(count):
            REFUSALS.labels("body_budget").inc()
            self._reject(
                errors.SlowDown("Too many request bodies are being received; retry later.")
            )
            return False
        self._body_reserved += count
        return True

    def _release_body(self) -> None:
        self._stop_body_deadline()
        if self._body_reserved and self._settings is not None:
            budget = self._settings.body_budget
            if budget is not None:
                budget.give_back(self._body_reserved)
        self._body_reserved = 0

    def _stop_body_deadline(self) -> None:
        if self._body_deadline is not None and self._body_deadline.active():
            self._body_deadline.cancel()
        self._body_deadline = None

    def _body_too_slow(self) -> None:
        self._body_deadline = None
        if self._rejected or self.finished or self.disconnected:
            return
        REFUSALS.labels("body_timeout").inc()
        self._reject(errors.RequestTimeout())

    def _reject(self, error: S3Error) -> None:
        """Answer before the body was read (the connection closes after the answer)."""
        self._rejected = True
        self._stop_body_deadline()
        self.content = BytesIO()
        self.prepare_early_response()
        self.respond_error(error)

    # -- answering -------------------------------------------------------------------------------

    def prepare_early_response(self) -> None:
        """Call before answering a request whose body was not (fully) read.

        The unread rest of the body must never be parsed as a next request (trap 1), so the
        connection closes after this answer; the body stops being fed and fails with
        :class:`BodyAbandoned`.  A streamed body that already arrived whole keeps the
        connection open.
        """
        unread = self._rejected or (self.body is not None and not self.body.complete)
        if unread:
            channel = getattr(self, "channel", None)
            if channel is not None:
                channel.persistent = False
            if not self.startedWriting:
                self.responseHeaders.setRawHeaders(b"Connection", [b"close"])
        if self.body is not None:
            self.body.abandon()

    def render(self, resrc: Any) -> None:
        super().render(_MethodRefusedAsS3(resrc))

    def respond_error(self, error: S3Error, resource: str | None = None) -> None:
        """Answer with S3's XML error document (headers only for HEAD and 304) and finish: the
        one way an S3 error is answered, here before the body or by the front.

        :param resource: the ``<Resource>`` of the document; the request's path by default.
        """
        if self.finished or self.disconnected:
            return
        if resource is None:
            path = self.path
            resource = path.decode("utf-8", "replace") if isinstance(path, bytes) else "/"
        document = error.to_xml(resource, self.request_id)
        self.access_error = error.code
        self.setResponseCode(error.status)
        self.responseHeaders.setRawHeaders(b"content-type", [b"application/xml"])
        if self.method == b"HEAD" or error.status == 304:
            self.responseHeaders.removeHeader(b"content-length")
        else:
            self.responseHeaders.setRawHeaders(b"content-length", [b"%d" % len(document)])
            self.write(document)
        self.finish()

    def write(self, data: bytes) -> None:
        """Write response bytes; after the client left, drop them (trap 5)."""
        if self.disconnected or getattr(self, "channel", None) is None:
            return
        if not self.startedWriting:
            self._before_headers()
        before = self.sentLength
        super().write(data)
        self.bytes_out += self.sentLength - before

    def note_sent(self, count: int) -> None:
        """Count response bytes that went to the client without :meth:`write` (the kernel moved
        them: :mod:`s3balance.net.splice`)."""
        self.sentLength += count
        self.bytes_out += count

    def _before_headers(self) -> None:
        if self.streamed and self.body is not None and not self.body.complete:
            self.prepare_early_response()
        server_header = self._settings.server_header if self._settings else b"s3balance"
        self.responseHeaders.setRawHeaders(b"Server", [server_header])
        if not self.responseHeaders.hasHeader(b"Date"):
            self.responseHeaders.setRawHeaders(b"Date", [http_date(time.time()).encode()])
        if not self.responseHeaders.hasHeader(b"x-amz-request-id"):
            self.responseHeaders.setRawHeaders(b"x-amz-request-id", [self.request_id.encode()])

    def finish(self) -> None:
        """Finish the response; after a disconnect or a second call, do nothing (trap 5)."""
        if self.disconnected or self.finished or getattr(self, "channel", None) is None:
            return
        super().finish()
        self._log_access()

    def unregisterProducer(self) -> None:
        if getattr(self, "channel", None) is None:
            self.producer = None
            return
        super().unregisterProducer()

    def notify_disconnect(self) -> Deferred[None]:
        """A Deferred firing None when the client's connection is lost (never on a normal end)."""
        if self.disconnected:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._disconnect_waiters.append(waiter)
        return waiter

    def _log_access(self) -> None:
        """The request's one ending, whichever way it ends: log it and stop counting it."""
        if self._logged:
            return
        self._logged = True
        self._release_body()
        if self.streamed:
            labelled(INFLIGHT_TRANSFERS, "in").dec()
        if self._settings is not None:
            self._settings.request_ended(self)
        client = self.client
        host = getattr(client, "host", None)
        address = f"{host}:{getattr(client, 'port', '')}" if host is not None else str(client)
        status: int | str = self.code if self.finished else "disconnected"
        _access_log.info(
            ACCESS_LINE,
            method=_text(self.method),
            path=printable(_text(self.path if isinstance(self.path, bytes) else self.uri)),
            operation=getattr(self, "access_operation", NO_VALUE),
            status=status,
            error_code=getattr(self, "access_error", NO_VALUE),
            bytes_in=self.bytes_in,
            bytes_out=self.bytes_out,
            duration=self._clock.seconds() - self._started_at,
            client=address,
            request_id=self.request_id,
        )


def _text(value: bytes | str) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else value


class _MethodRefusedAsS3:
    """A resource as stock Twisted renders it, except that a method it does not serve (PUT on
    ``/metrics``, DELETE on ``/health``) gets S3's XML ``MethodNotAllowed`` with an ``Allow``
    header, not Twisted's HTML "501 Huh?" page: to a client, every path here is S3's."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def render(self, request: StreamingRequest) -> Any:
        try:
            return self._inner.render(request)
        except resource.UnsupportedMethod as refusal:
            allowed: list[bytes] = list(refusal.allowedMethods)
            if request.method == b"HEAD" and b"GET" in allowed:
                raise  # stock Twisted answers a HEAD with the GET's headers
            request.setHeader(b"Allow", b", ".join(allowed))
            request.respond_error(
                errors.MethodNotAllowed(Method=request.method.decode("latin-1"))
            )
            return server.NOT_DONE_YET
