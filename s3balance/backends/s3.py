"""The S3 backend adapter: one real bucket on an S3-compatible service, through Twisted's Agent.

Object bytes go through :class:`twisted.web.client.Agent` with a persistent connection pool in
both directions and are never held whole (treq would decode gzip, buffer and re-serialise URLs).
Every request is signed by :mod:`s3balance.backends.s3signing` (tested against botocore); XML
answers are read by :mod:`s3balance.backends.s3xml`.

Timeouts: Agent's ``connectTimeout`` bounds connecting; a stall watch aborts a request when
nothing moves for ``stall_timeout`` while the backend is the one expected to act (answering,
reading the body we send, sending the body we read).  Waiting for the client (a slow upload, a
paused download) is not a backend stall and does not count.
"""

from __future__ import annotations

import base64
import hashlib
import re
import socket
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from email.utils import parsedate_to_datetime
from typing import Any

from twisted.internet import ssl
from twisted.internet.defer import CancelledError, Deferred, TimeoutError, succeed
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.error import ConnectingCancelledError
from twisted.internet.interfaces import (
    IConsumer,
    IDelayedCall,
    IPushProducer,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.web.client import (
    URI,
    Agent,
    BrowserLikePolicyForHTTPS,
    HTTPConnectionPool,
    ResponseDone,
)
from twisted.web.error import SchemeNotSupported
from twisted.web.http_headers import Headers
from twisted.web.iweb import (
    UNKNOWN_LENGTH,
    IAgentEndpointFactory,
    IBodyProducer,
    IPolicyForHTTPS,
    IResponse,
)
from zope.interface import implementer

from s3balance.backends import s3xml
from s3balance.backends.interface import (
    ENCRYPTION_HEADER,
    STORED_HEADERS,
    BackendAccessDenied,
    BackendCannotEncrypt,
    BackendError,
    BackendInvalidPart,
    BackendNoSuchKey,
    BackendNoSuchUpload,
    BackendRefused,
    BackendUnavailable,
    Capacity,
    IBackend,
    IObjectStream,
    ISocketBody,
    ListedObject,
    ObjectInfo,
    PartResult,
    PutResult,
)
from s3balance.backends.s3signing import BucketAddress, Signer, aws_endpoint
from s3balance.config import BucketConfig
from s3balance.logs import make_logger
from s3balance.net import twistedcompat
from s3balance.net.sockets import tune_transport
from s3balance.net.splice import tcp_socket

#: Persistent connections per backend host; Twisted's default of 2 serialises concurrent GETs.
MAX_PERSISTENT_PER_HOST = 32
#: Idle connections are dropped well before servers drop them (AWS after about 20 s, nginx 75 s,
#: SeaweedFS 120 s): a request written on a connection the server is just closing fails, and a
#: streamed body cannot be replayed.
CACHED_CONNECTION_TIMEOUT = 5
#: Delay before the single retry of a request that carries no body.
RETRY_DELAY = 0.25
#: Error and XML answers are small; refuse to buffer more than this from a misbehaving server.
MAX_CONTROL_BODY = 32 * 1024 * 1024
#: When a GET stream is discarded, a remainder this small is read to keep the connection.
DISCARD_READ_LIMIT = 64 * 1024
#: Headers besides :data:`STORED_HEADERS` forwarded on uploads so the backend verifies the bytes.
CHECKSUM_HEADERS = ("content-md5",)
CHECKSUM_PREFIX = "x-amz-checksum-"

_RFC2047 = re.compile(r"^=\?utf-8\?b\?([A-Za-z0-9+/=]*)\?=$", re.IGNORECASE)


def make_http_pool(reactor: Any, persistent: bool = True) -> HTTPConnectionPool:
    """A connection pool suited to backends (more connections per host, short idle life)."""
    pool = HTTPConnectionPool(reactor, persistent=persistent)
    pool.maxPersistentPerHost = MAX_PERSISTENT_PER_HOST
    pool.cachedConnectionTimeout = CACHED_CONNECTION_TIMEOUT
    pool.retryAutomatically = True
    return pool


def encode_metadata_value(value: str) -> str:
    """Header-safe form of a metadata value: non-ASCII as RFC 2047 ``=?UTF-8?B?...?=``, as AWS
    SDKs and S3 itself present such values."""
    if value.isascii():
        return value
    return "=?UTF-8?B?" + base64.b64encode(value.encode("utf-8")).decode("ascii") + "?="


def decode_metadata_value(value: str) -> str:
    """Inverse of :func:`encode_metadata_value`; other values are returned unchanged."""
    match = _RFC2047.match(value.strip())
    if match is None:
        return value
    try:
        return base64.b64decode(match.group(1), validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return value


def _load_trust_root(ca_bundle: str) -> Any:
    """A trust root made of every certificate in a PEM bundle file."""
    with open(ca_bundle, "rb") as f:
        pem = f.read()
    blocks = re.findall(
        rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", pem, flags=re.DOTALL
    )
    if not blocks:
        raise ValueError(f"no PEM certificate in {ca_bundle}")
    return ssl.trustRootFromCertificates([ssl.Certificate.loadPEM(block) for block in blocks])


class _StallWatch:
    """Fires ``on_stall`` once when, while active, nothing moved for ``timeout`` seconds.

    :meth:`touch` runs for every chunk, so it only records the time; the one timer, when it
    comes due, re-arms itself for whatever is left of the timeout since the last movement
    (resetting a DelayedCall per chunk cost a measurable share of a transfer's CPU time).
    """

    def __init__(self, reactor: Any, timeout: float) -> None:
        self._reactor = reactor
        self._timeout = timeout
        self._call: IDelayedCall | None = None
        self._active = False
        self._stopped = False
        self._last = 0.0
        self.fired = False
        self.on_stall: Callable[[], None] = lambda: None

    def resume(self) -> None:
        """The backend is expected to act from now on."""
        if self._stopped or self.fired:
            return
        self._active = True
        self.touch()

    def suspend(self) -> None:
        """We (or our client) are the ones who have to act: not the backend's stall."""
        self._active = False
        self._cancel()

    def touch(self) -> None:
        """Something moved: start counting again."""
        if not self._active or self._stopped or self.fired:
            return
        self._last = self._reactor.seconds()
        if self._call is None:
            self._call = self._reactor.callLater(self._timeout, self._due)

    def stop(self) -> None:
        self._stopped = True
        self._cancel()

    def _cancel(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _due(self) -> None:
        self._call = None
        if not self._active or self._stopped or self.fired:
            return
        left = self._last + self._timeout - self._reactor.seconds()
        if left > 0:
            self._call = self._reactor.callLater(left, self._due)
            return
        self.fired = True
        self.on_stall()


#: Bodies from this size on are hashed in a worker thread: MD5 costs about as much CPU as the
#: rest of the upload path, and hashlib releases the GIL, so it runs on another core.
BACKGROUND_HASH_MIN = 1 << 20
#: Bytes queued for the hashing thread before the reactor waits for it (bounds memory).
BACKGROUND_HASH_BACKLOG = 2 << 20

_hash_executor: ThreadPoolExecutor | None = None


def _hasher() -> ThreadPoolExecutor:
    """One thread for every upload's MD5: a single worker keeps each digest's updates in order."""
    global _hash_executor
    if _hash_executor is None:
        _hash_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="s3balance-md5")
    return _hash_executor


class _InlineMD5:
    """MD5 computed as bytes pass (small bodies: a thread hand-over would cost more)."""

    def __init__(self) -> None:
        self._md5 = hashlib.md5()

    def update(self, data: bytes) -> None:
        self._md5.update(data)

    def hexdigest(self) -> str:
        return self._md5.hexdigest()


class _BackgroundMD5:
    """MD5 computed in the hashing thread; :meth:`hexdigest` waits for the queued updates.

    The queue is bounded by :data:`BACKGROUND_HASH_BACKLOG`: beyond it :meth:`update` waits
    for the thread to catch up, so a slow hash costs time, never memory.
    """

    def __init__(self) -> None:
        self._md5 = hashlib.md5()
        self._queued = 0
        self._pending: deque[tuple[Future[None], int]] = deque()

    def update(self, data: bytes) -> None:
        while self._pending and self._pending[0][0].done():
            self._queued -= self._pending.popleft()[1]
        if self._queued > BACKGROUND_HASH_BACKLOG:
            self._wait()
        self._pending.append((_hasher().submit(self._md5.update, data), len(data)))
        self._queued += len(data)

    def _wait(self) -> None:
        while self._pending:
            future, size = self._pending.popleft()
            future.result()
            self._queued -= size

    def hexdigest(self) -> str:
        self._wait()
        return self._md5.hexdigest()


class BodyLengthMismatch(BackendError):
    """The body producer wrote more or fewer bytes than the length it was given with."""


@implementer(IBodyProducer)
class _GuardedBody:
    """Wraps the caller's body producer on its way into Agent.

    It records whether any byte was consumed (``started``, for ``body_started``), keeps the
    body's own failure (re-raised unchanged), runs the stall watch only while Agent has paused
    us (the backend is not reading), and holds back the last byte until the body's Deferred
    succeeds: if the body fails at the very end (a bad checksum found after the last chunk),
    the backend never receives the complete body and cannot store it.
    """

    def __init__(
        self,
        backend: str,
        inner: IBodyProducer,
        length: int,
        watch: _StallWatch,
        hash_body: bool = True,
    ) -> None:
        self.length = length
        self.started = False
        self.failure: Failure | None = None
        self._backend = backend
        self._inner = inner
        self._watch = watch
        self._consumer: IConsumer | None = None
        self._done: Deferred[None] | None = None
        self._sent = 0
        self._held = b""
        self._agent_paused = False
        #: MD5 of what went out: the ETag when a backend answers a PUT without one.
        self.md5: _InlineMD5 | _BackgroundMD5 | None = None
        if hash_body:
            self.md5 = _BackgroundMD5() if length >= BACKGROUND_HASH_MIN else _InlineMD5()

    # Agent's side (we are its producer) ------------------------------------------------------

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        self._consumer = consumer
        self._done = Deferred()
        done = self._done
        # The body now comes at the client's pace: not the backend's stall.
        self._watch.suspend()
        inner_done = self._inner.startProducing(_InnerConsumer(self))
        inner_done.addCallbacks(self._inner_finished, self._inner_failed)
        return done

    def pauseProducing(self) -> None:
        self._agent_paused = True
        self._watch.resume()
        self._inner.pauseProducing()

    def resumeProducing(self) -> None:
        self._agent_paused = False
        self._watch.suspend()
        self._inner.resumeProducing()

    def stopProducing(self) -> None:
        # The connection is gone (or aborted): our Deferred must never fire now.
        self._done = None
        self._inner.stopProducing()

    # The inner producer's side --------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self._done is None or not data:
            return
        self.started = True
        self._watch.touch()
        if self.md5 is not None:
            self.md5.update(data)
        total = self._sent + len(self._held) + len(data)
        if total > self.length:
            self._fail(
                Failure(
                    BodyLengthMismatch(
                        self._backend, f"body longer than the declared {self.length} bytes"
                    )
                )
            )
            self._inner.stopProducing()
            return
        pending = self._held + data
        if total == self.length:
            pending, self._held = pending[:-1], pending[-1:]
        else:
            self._held = b""
        if pending:
            self._sent += len(pending)
            assert self._consumer is not None
            self._consumer.write(pending)

    def _inner_finished(self, _: object) -> None:
        if self._done is None:
            return
        if self._sent + len(self._held) != self.length:
            self._fail(
                Failure(
                    BodyLengthMismatch(
                        self._backend,
                        f"body ended after {self._sent + len(self._held)} of the declared "
                        f"{self.length} bytes",
                    )
                )
            )
            return
        done, self._done = self._done, None
        if self._held:
            assert self._consumer is not None
            self._sent += len(self._held)
            self._consumer.write(self._held)
            self._held = b""
        # From here on the backend has to answer.
        self._watch.resume()
        done.callback(None)

    def _inner_failed(self, failure: Failure) -> None:
        if self._done is None:
            return  # we stopped it ourselves; the outcome is already decided
        self._fail(failure)

    def _fail(self, failure: Failure) -> None:
        if self.failure is None:
            self.failure = failure
        done, self._done = self._done, None
        if done is not None:
            done.errback(failure)


@implementer(IConsumer)
class _InnerConsumer:
    """The consumer the caller's body producer writes to: forwards to :class:`_GuardedBody`."""

    def __init__(self, guard: _GuardedBody) -> None:
        self._guard = guard

    def write(self, data: bytes) -> None:
        self._guard.write(data)

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass


@implementer(IBodyProducer)
class _BytesBody:
    """A small in-memory body (multipart XML)."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.length = len(data)

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        consumer.write(self._data)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class _Collector(Protocol):
    """Reads a small response body whole, touching the stall watch on every chunk."""

    def __init__(self, watch: _StallWatch, limit: int = MAX_CONTROL_BODY) -> None:
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


@implementer(IPushProducer, ISocketBody)
class _ConsumerTransport:
    """The transport a GET stream's protocol sees: its pauses are not backend stalls."""

    def __init__(self, guard: _StreamGuard) -> None:
        self._guard = guard

    def pauseProducing(self) -> None:
        self._guard.consumer_pause(True)

    def resumeProducing(self) -> None:
        self._guard.consumer_pause(False)

    def stopProducing(self) -> None:
        self._guard.stop()

    def abortConnection(self) -> None:
        self._guard.stop()

    def loseConnection(self) -> None:
        self._guard.stop()

    def detach(self) -> socket.socket | None:
        return self._guard.detach()

    def release(self) -> None:
        self._guard.release()


class _StreamGuard(Protocol):
    """Passes a GET body from Agent to the caller's protocol.

    Until :meth:`S3ObjectStream.deliverBody` is called Agent keeps the socket paused (Twisted's
    ``Response`` does so itself); afterwards the caller's pauses pause the socket and suspend
    the stall watch.  A stall replaces the end reason with :class:`BackendUnavailable`.
    """

    def __init__(
        self, backend: str, watch: _StallWatch, inner: Any, identity: bool = False
    ) -> None:
        self._backend = backend
        self._watch = watch
        self._inner = inner
        self._identity = identity
        self._buffer: list[bytes] = []
        self._ended: Failure | None = None
        self._consumer_paused = False
        self._delivered_end = False
        #: Set by :meth:`detach`: the caller reads the body off the socket, we deliver nothing.
        self._detached = False
        self._raw: Any = None
        watch.on_stall = self.stop

    def connectionMade(self) -> None:
        self._watch.resume()
        self._inner.makeConnection(_ConsumerTransport(self))

    def consumer_pause(self, paused: bool) -> None:
        self._consumer_paused = paused
        if paused:
            self._watch.suspend()
            if self._ended is None and self.transport is not None:
                self.transport.pauseProducing()  # type: ignore[attr-defined]
            return
        self._flush()
        if not self._consumer_paused and self._ended is None and self.transport is not None:
            self._watch.resume()
            self.transport.resumeProducing()  # type: ignore[attr-defined]

    def stop(self) -> None:
        """Give up on the body: close the backend connection."""
        if self._ended is None and self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]

    def detach(self) -> socket.socket | None:
        """See :meth:`ISocketBody.detach`: only for a length-delimited body on plain TCP."""
        if self._ended is not None or self._detached or not self._identity:
            return None
        # Agent's TransportProxyProducer wraps the connection's own transport; under TLS that
        # is a TLS protocol, not a socket.
        raw = twistedcompat.response_connection(self.transport)
        sock = tcp_socket(raw)
        if sock is None or raw is None or raw in raw.reactor.getWriters():
            return None  # TLS or not TCP; or still sending the request: not ours to take
        while self._buffer:
            self._inner.dataReceived(self._buffer.pop(0))
        assert raw is not None
        raw.stopReading()
        self._detached = True
        self._raw = raw
        self._watch.stop()
        return sock

    def release(self) -> None:
        raw, self._raw = self._raw, None
        if raw is not None:
            raw.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        if self._detached:
            return
        self._watch.touch()
        if self._buffer or self._consumer_paused:
            # Twisted resumes the socket right after connecting us, even if our consumer paused
            # meanwhile, and may hand over a chunk already read: keep it, pause again.
            self._buffer.append(data)
            if self._consumer_paused and self.transport is not None:
                self.transport.pauseProducing()  # type: ignore[attr-defined]
        else:
            self._inner.dataReceived(data)

    def _flush(self) -> None:
        while self._buffer and not self._consumer_paused:
            self._inner.dataReceived(self._buffer.pop(0))
        if not self._buffer:
            self._deliver_end()

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._watch.stop()
        if self._detached:
            return  # the caller read the body off the socket and closed it
        if reason is None:
            reason = Failure(ResponseDone())
        if self._watch.fired:
            reason = Failure(
                BackendUnavailable(self._backend, "backend stalled while sending a body", True)
            )
        self._ended = reason
        self._flush()

    def _deliver_end(self) -> None:
        if self._ended is None or self._delivered_end:
            return
        self._delivered_end = True
        self._inner.connectionLost(self._ended)


class _Dropper(Protocol):
    """Reads a small unwanted body to its end so the connection goes back to the pool."""

    def connectionLost(self, reason: Failure | None = None) -> None:
        pass


@implementer(IObjectStream)
class S3ObjectStream:
    """A GET answer whose body is still on the backend connection."""

    def __init__(
        self, backend: str, response: IResponse, watch: _StallWatch, size: int, etag: str
    ) -> None:
        self.length = response.length
        self.size = size
        self.etag = etag
        self._backend = backend
        self._response = response
        self._watch = watch

    def deliverBody(self, protocol: Any) -> None:
        identity = self._response.length is not UNKNOWN_LENGTH
        self._response.deliverBody(_StreamGuard(self._backend, self._watch, protocol, identity))

    def discard(self) -> None:
        self._watch.stop()
        length = self._response.length
        if length is not UNKNOWN_LENGTH and length <= DISCARD_READ_LIMIT:
            self._response.deliverBody(_Dropper())
        else:
            _discard_body(self._response)


def _content_range_total(value: str | None) -> int | None:
    """The total size from ``Content-Range: bytes a-b/total``."""
    if not value or "/" not in value:
        return None
    total = value.rsplit("/", 1)[1].strip()
    return int(total) if total.isdigit() else None


class _Answer:
    """A response with its body read (control calls)."""

    def __init__(self, response: IResponse, body: bytes) -> None:
        self.status = response.code
        self.headers = response.headers
        self.length = response.length
        self.body = body

    def header(self, name: str) -> str | None:
        values = self.headers.getRawHeaders(name)
        if not values:
            return None
        value = values[-1]
        return value.decode("latin-1") if isinstance(value, bytes) else str(value)


@implementer(IStreamClientEndpoint)
class _TunedEndpoint:
    """Connects like the wrapped endpoint, then tunes the connection (larger reads, no Nagle:
    Agent writes a request's headers and its body separately)."""

    def __init__(self, inner: IStreamClientEndpoint) -> None:
        self._inner = inner

    def connect(self, protocol_factory: Any) -> Deferred[Any]:
        def tuned(protocol: Any) -> Any:
            tune_transport(protocol.transport)
            return protocol

        return self._inner.connect(protocol_factory).addCallback(tuned)


@implementer(IAgentEndpointFactory)
class _TunedEndpointFactory:
    """Agent's endpoints, as stock Agent makes them (TCP for ``http``, TLS over TCP for
    ``https``, the policy's certificate checks, the connect timeout), each wrapped in a
    :class:`_TunedEndpoint`."""

    def __init__(self, reactor: Any, policy: IPolicyForHTTPS, connect_timeout: float) -> None:
        self._reactor = reactor
        self._policy = policy
        self._connect_timeout = connect_timeout

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        try:
            host = uri.host.decode("ascii")
        except UnicodeDecodeError:
            raise ValueError(f"the host {uri.host!r} is not ASCII") from None
        endpoint: IStreamClientEndpoint = HostnameEndpoint(
            self._reactor, host, uri.port, timeout=self._connect_timeout
        )
        if uri.scheme == b"https":
            creator = self._policy.creatorForNetloc(uri.host, uri.port)
            endpoint = wrapClientTLS(creator, endpoint)
        elif uri.scheme != b"http":
            raise SchemeNotSupported(f"Unsupported scheme: {uri.scheme!r}")
        return _TunedEndpoint(endpoint)


@implementer(IBackend)
class S3Backend:
    """One real bucket on an S3-compatible service.

    :param endpoint: ``http(s)://host[:port]``; empty means AWS in ``region``.
    :param path_style: ``endpoint/bucket/key`` instead of ``bucket.host/key``.
    :param pool: a shared connection pool; without one the backend makes (and closes) its own.
    :param ca_bundle: a PEM file of CA certificates trusted for this endpoint instead of the
        system's (private endpoints).
    """

    can_presign = True
    #: S3 services encrypt with SSE-S3 when asked; each write checks that the service confirmed.
    can_encrypt = True

    def __init__(
        self,
        name: str,
        endpoint: str,
        bucket: str,
        region: str,
        access_key: str,
        secret_key: str,
        path_style: bool,
        reactor: Any,
        pool: HTTPConnectionPool | None = None,
        ca_bundle: str | None = None,
        connect_timeout: float = 10,
        stall_timeout: float = 60,
    ) -> None:
        self.name = name
        self.region = region or "us-east-1"
        self.address = BucketAddress.from_endpoint(
            endpoint or aws_endpoint(self.region), bucket, path_style
        )
        self._reactor = reactor
        self._signer = Signer(access_key, secret_key, self.region)
        self._own_pool = pool is None
        self._pool = pool if pool is not None else make_http_pool(reactor)
        self._stall_timeout = stall_timeout
        #: Whether the last PUT answer carried an ETag (then the next PUT is not hashed).
        self._sends_put_etags = False
        policy: IPolicyForHTTPS = (
            BrowserLikePolicyForHTTPS(trustRoot=_load_trust_root(ca_bundle))
            if ca_bundle
            else BrowserLikePolicyForHTTPS()
        )
        self._agent = Agent.usingEndpointFactory(
            reactor, _TunedEndpointFactory(reactor, policy, connect_timeout), pool=self._pool
        )

    @classmethod
    def from_config(
        cls,
        config: BucketConfig,
        reactor: Any,
        pool: HTTPConnectionPool | None,
        stall_timeout: float = 60,
    ) -> S3Backend:
        """A backend for a ``buckets[]`` entry; an endpoint without scheme gets ``https://``
        unless ``use_ssl`` is false.

        :param stall_timeout: ``server.write_timeout``: how long the backend may make no
            progress on a transfer before it is failed."""
        endpoint = config.endpoint.strip()
        if endpoint and "://" not in endpoint:
            endpoint = ("https://" if config.use_ssl else "http://") + endpoint
        return cls(
            name=config.name,
            endpoint=endpoint,
            bucket=config.real_name,
            region=config.region,
            access_key=config.access_key_id,
            secret_key=config.secret_access_key,
            path_style=config.path_style,
            reactor=reactor,
            pool=pool,
            ca_bundle=config.ca_bundle,
            stall_timeout=stall_timeout,
        )

    def __repr__(self) -> str:
        return f"<S3Backend {self.name}>"

    # -- transport -----------------------------------------------------------------------------

    def _prepare(
        self,
        method: str,
        path: str,
        query: list[tuple[str, str]] | None,
        headers: dict[str, str] | None,
        body: bytes | None,
        streamed: bool,
    ) -> tuple[bytes, Headers]:
        url = self.address.url(path, query)
        to_sign = {"Host": self.address.netloc}
        to_sign.update(headers or {})
        signed = self._signer.sign(method, url, to_sign, body, streamed)
        raw = Headers()
        for name, value in signed.items():
            # Values are signed as UTF-8 text, so that is what goes on the wire.
            raw.addRawHeader(name.encode("ascii"), value.encode("utf-8"))
        return url.encode("ascii"), raw

    async def _attempt(
        self,
        method: str,
        path: str,
        query: list[tuple[str, str]] | None,
        headers: dict[str, str] | None,
        body: bytes | None,
        producer: IBodyProducer | None,
        length: int,
        hash_body: bool = False,
    ) -> tuple[IResponse, _StallWatch, _GuardedBody | None]:
        """Send one request and wait for the response headers.

        :raises BackendUnavailable: connection refused, connect timeout, stall, connection lost
            before the response; ``body_started`` says whether the body had begun.
        """
        streamed = producer is not None
        url, raw_headers = self._prepare(method, path, query, headers, body, streamed)
        watch = _StallWatch(self._reactor, self._stall_timeout)
        guard: _GuardedBody | None = None
        body_producer: IBodyProducer | None = None
        if producer is not None:
            guard = _GuardedBody(self.name, producer, length, watch, hash_body)
            body_producer = guard
        elif body is not None:
            body_producer = _BytesBody(body)
        request = self._agent.request(method.encode("ascii"), url, raw_headers, body_producer)
        watch.on_stall = request.cancel
        watch.resume()
        try:
            response: IResponse = await request
        except Exception as e:
            watch.stop()
            started = guard.started if guard is not None else False
            if guard is not None and guard.failure is not None:
                guard.failure.raiseException()
            if watch.fired:
                raise BackendUnavailable(
                    self.name, f"no progress for {self._stall_timeout}s", started
                ) from e
            if isinstance(e, ConnectingCancelledError | CancelledError):
                raise
            raise BackendUnavailable(self.name, f"{method} failed: {_describe(e)}", started) from e
        if guard is not None and guard.failure is not None:
            # The body failed but the backend answered anyway; the body's failure wins.
            watch.stop()
            _discard_body(response)
            guard.failure.raiseException()
        return response, watch, guard

    async def _open(
        self,
        method: str,
        path: str,
        query: list[tuple[str, str]] | None = None,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
        retry: bool = False,
    ) -> tuple[IResponse, _StallWatch]:
        """Send a request without streamed body; retried once (when ``retry``) on connection
        errors and 5xx, which is safe only for idempotent requests."""
        attempts = 2 if retry else 1
        for attempt in range(1, attempts + 1):
            try:
                response, watch, _ = await self._attempt(
                    method, path, query, headers, body, None, 0
                )
            except BackendUnavailable:
                if attempt == attempts:
                    raise
            else:
                if response.code < 500 or attempt == attempts:
                    return response, watch
                watch.stop()
                _discard_body(response)
            await deferLater(self._reactor, RETRY_DELAY, lambda: None)
        raise AssertionError("unreachable")

    async def _read(self, response: IResponse, watch: _StallWatch) -> _Answer:
        collector = _Collector(watch)
        response.deliverBody(collector)
        try:
            body = await collector.done
        except Exception as e:
            if watch.fired:
                raise BackendUnavailable(self.name, "backend stalled while answering") from e
            raise BackendUnavailable(self.name, f"answer broke off: {_describe(e)}") from e
        return _Answer(response, body)

    async def _call(
        self,
        method: str,
        path: str,
        query: list[tuple[str, str]] | None = None,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
        retry: bool = False,
        ok: tuple[int, ...] = (200,),
    ) -> _Answer:
        """A control request whose answer is read whole; statuses outside ``ok`` raise."""
        response, watch = await self._open(method, path, query, headers, body, retry)
        answer = await self._read(response, watch)
        if answer.status not in ok:
            raise self._error(answer)
        return answer

    def _error(
        self, answer: _Answer, body_started: bool = False, status: int | None = None
    ) -> BackendError:
        """The interface's exception for an error answer (details only for logs).

        :param status: the status to judge by, when it differs from the HTTP one (a 200
            carrying an ``<Error>``, which S3 sends when a copy or completion fails late).
        """
        document = s3xml.parse_error(answer.body)
        code = document.code if document else ""
        detail = f"HTTP {answer.status} {code}: {document.message if document else ''}".strip()
        if status is None:
            status = answer.status
        if status >= 500:
            return BackendUnavailable(self.name, detail, body_started)
        if status == 403:
            return BackendAccessDenied(self.name, detail)
        if code == "NoSuchUpload":
            return BackendNoSuchUpload(self.name, detail)
        if code in ("InvalidPart", "InvalidPartOrder", "EntityTooSmall"):
            return BackendInvalidPart(self.name, detail)
        if status == 404 and code in ("NoSuchKey", ""):
            return BackendNoSuchKey(self.name, detail)
        if status in (400, 411, 413, 414):
            # The backend will not take this request as sent (a key it cannot store, a size over
            # its limits): the client's to change, not an error of ours.
            return BackendRefused(self.name, detail)
        return BackendError(self.name, detail)

    def _request_headers(
        self, headers: dict[str, str], metadata: dict[str, str]
    ) -> dict[str, str]:
        """Stored headers, checksums for the backend to verify, and ``x-amz-meta-*``."""
        out: dict[str, str] = {}
        for name, value in headers.items():
            lower = name.lower()
            if lower in STORED_HEADERS or lower in CHECKSUM_HEADERS or lower == ENCRYPTION_HEADER:
                out[lower] = value
            elif lower.startswith(CHECKSUM_PREFIX):
                out[lower] = value
        for name, value in metadata.items():
            out[f"x-amz-meta-{name.lower()}"] = encode_metadata_value(value)
        return out

    async def _upload(
        self,
        path: str,
        query: list[tuple[str, str]] | None,
        headers: dict[str, str],
        body: IBodyProducer,
        length: int,
        hash_body: bool = False,
    ) -> tuple[_Answer, str | None]:
        """PUT a streamed body; never retried (the body cannot be replayed).

        :param hash_body: measure the MD5 of the bytes sent (costs about as much CPU as the
            rest of the upload path).
        :returns: the answer and, when ``hash_body``, the MD5 of the bytes sent.
        """
        if length == 0:
            # With nothing to hold back, wait for the body to succeed before the backend sees
            # the request at all.
            await _drain_empty(self.name, body, _StallWatch(self._reactor, self._stall_timeout))
            answer = await self._call("PUT", path, query, headers, b"", ok=_SUCCESS)
            return answer, hashlib.md5(b"").hexdigest()
        response, watch, guard = await self._attempt(
            "PUT", path, query, headers, None, body, length, hash_body
        )
        assert guard is not None
        answer = await self._read(response, watch)
        if answer.status not in _SUCCESS:
            raise self._error(answer, body_started=guard.started)
        return answer, guard.md5.hexdigest() if guard.md5 is not None else None

    # -- IBackend ------------------------------------------------------------------------------

    def put_object(
        self,
        key: str,
        body: IBodyProducer,
        length: int,
        headers: dict[str, str],
        metadata: dict[str, str],
    ) -> Deferred[PutResult]:
        return Deferred.fromCoroutine(self._put_object(key, body, length, headers, metadata))

    async def _put_object(
        self,
        key: str,
        body: IBodyProducer,
        length: int,
        headers: dict[str, str],
        metadata: dict[str, str],
    ) -> PutResult:
        # S3 services always answer a PUT with the ETag; plain HTTP stores (WebDAV) answer
        # 201/204 without one, and then the MD5 of what we sent is what S3 would have said.
        # Hashing costs about as much CPU as the rest of the upload, so it stops once this
        # backend has shown that it sends ETags.
        hash_body = not self._sends_put_etags
        encryption = _encryption_asked(headers)
        try:
            answer, md5 = await self._upload(
                self.address.object_path(key), None, self._request_headers(headers, metadata),
                body, length, hash_body,
            )
        except BackendError as error:
            raise self._encryption_refused(encryption, error) from error
        await self._check_encrypted(encryption, answer, key)
        etag = answer.header("etag")
        self._sends_put_etags = bool(etag)
        if etag:
            quoted = s3xml.quote_etag(etag)
        elif md5 is not None:
            quoted = f'"{md5}"'
        else:
            quoted = await self._etag_after_put(key)
        return PutResult(etag=quoted, size=length, checksums=_checksums(answer))

    async def _etag_after_put(self, key: str) -> str:
        """The ETag of an object whose PUT answer had none although earlier ones did (the
        service changed, or sits behind another proxy now): ask HEAD; without one there either,
        remove the object rather than store it under an invented ETag."""
        log.warn(
            "backend {backend} answered a PUT without an ETag after earlier ones had one; "
            "asking HEAD and hashing from now on",
            backend=self.name,
        )
        try:
            return (await self._head_object(key)).etag
        except BackendError:
            try:
                await self._delete_object(key)
            except BackendError:
                pass  # the gateway's own clean-up of a failed PUT tries again
            raise

    def get_object(
        self, key: str, byte_range: tuple[int, int] | None = None
    ) -> Deferred[IObjectStream]:
        return Deferred.fromCoroutine(self._get_object(key, byte_range))

    async def _get_object(self, key: str, byte_range: tuple[int, int] | None) -> IObjectStream:
        headers = {}
        if byte_range is not None:
            headers["range"] = f"bytes={byte_range[0]}-{byte_range[1]}"
        response, watch = await self._open(
            "GET", self.address.object_path(key), None, headers, retry=True
        )
        if response.code not in (200, 206):
            raise self._error(await self._read(response, watch))
        # Until the caller takes the body, waiting is not the backend's stall.
        watch.suspend()
        length = response.length
        content_range = _first_header(response, "content-range")
        size = _content_range_total(content_range)
        if size is None:
            size = length if length is not UNKNOWN_LENGTH else 0
        etag = _first_header(response, "etag")
        return S3ObjectStream(
            self.name, response, watch, size, s3xml.quote_etag(etag) if etag else ""
        )

    def head_object(self, key: str) -> Deferred[ObjectInfo]:
        return Deferred.fromCoroutine(self._head_object(key))

    async def _head_object(self, key: str) -> ObjectInfo:
        answer = await self._call("HEAD", self.address.object_path(key), retry=True)
        stored = {}
        metadata = {}
        for raw_name, raw_values in answer.headers.getAllRawHeaders():
            name = raw_name.decode("latin-1").lower()
            value = raw_values[-1].decode("latin-1")
            if name in STORED_HEADERS:
                stored[name] = value
            elif name.startswith("x-amz-meta-"):
                metadata[name[len("x-amz-meta-"):]] = decode_metadata_value(value)
        size_text = answer.header("content-length")
        return ObjectInfo(
            key=key,
            size=int(size_text) if size_text else 0,
            etag=_require_etag(self.name, answer),
            last_modified=_http_date(answer.header("last-modified")),
            headers=stored,
            metadata=metadata,
        )

    def delete_object(self, key: str) -> Deferred[None]:
        return Deferred.fromCoroutine(self._delete_object(key))

    async def _delete_object(self, key: str) -> None:
        try:
            await self._call(
                "DELETE", self.address.object_path(key), retry=True, ok=(200, 204)
            )
        except BackendNoSuchKey:
            pass

    def copy_object(
        self, source_key: str, key: str, headers: dict[str, str], metadata: dict[str, str]
    ) -> Deferred[PutResult]:
        return Deferred.fromCoroutine(self._copy_object(source_key, key, headers, metadata))

    async def _copy_object(
        self, source_key: str, key: str, headers: dict[str, str], metadata: dict[str, str]
    ) -> PutResult:
        request_headers = self._request_headers(headers, metadata)
        request_headers["x-amz-copy-source"] = self.address.copy_source(source_key)
        request_headers["x-amz-metadata-directive"] = "REPLACE"
        encryption = _encryption_asked(headers)
        try:
            answer = await self._call(
                "PUT", self.address.object_path(key), None, request_headers
            )
            etag = self._etag_result(answer)
        except BackendError as error:
            raise self._encryption_refused(encryption, error) from error
        await self._check_encrypted(encryption, answer, key)
        # CopyObject does not report the size; the copy is there now, so ask.
        info = await self._head_object(key)
        return PutResult(etag=etag, size=info.size, checksums=_checksums(answer))

    def _etag_result(self, answer: _Answer) -> str:
        """The ETag of a copy/complete result, which may be a 200 carrying an ``<Error>``."""
        if s3xml.parse_error(answer.body) is not None:
            # Judged as a 4xx by its code, or as a 5xx (InternalError, SlowDown...).
            raise self._error(answer, status=400 if _is_client_code(answer.body) else 500)
        try:
            return s3xml.parse_etag_result(answer.body)
        except s3xml.MalformedResponse as e:
            raise BackendError(self.name, str(e)) from e

    def create_multipart_upload(
        self, key: str, headers: dict[str, str], metadata: dict[str, str]
    ) -> Deferred[str]:
        return Deferred.fromCoroutine(self._create_multipart_upload(key, headers, metadata))

    async def _create_multipart_upload(
        self, key: str, headers: dict[str, str], metadata: dict[str, str]
    ) -> str:
        encryption = _encryption_asked(headers)
        try:
            answer = await self._call(
                "POST",
                self.address.object_path(key),
                [("uploads", "")],
                self._request_headers(headers, metadata),
                b"",
            )
        except BackendError as error:
            raise self._encryption_refused(encryption, error) from error
        try:
            upload_id = s3xml.parse_initiate(answer.body)
        except s3xml.MalformedResponse as e:
            raise BackendError(self.name, str(e)) from e
        if encryption is not None and answer.header(ENCRYPTION_HEADER) != encryption:
            await self._abort_multipart_upload(key, upload_id)
            raise BackendCannotEncrypt(
                self.name, "the service did not confirm encryption of the upload"
            )
        return upload_id

    def _encryption_refused(self, encryption: str | None, error: BackendError) -> BackendError:
        """What a failed encrypted write means: the service's refusal of the encryption (a 5xx
        answer other than 503 throttling, or a 4xx naming encryption or NotImplemented; services
        without SSE-S3 answer either way), or ``error`` itself."""
        if encryption is None or isinstance(error, (BackendAccessDenied, BackendNoSuchKey)):
            return error
        detail = error.detail
        if not detail.startswith("HTTP ") or detail.startswith("HTTP 503"):
            return error  # not an answer (connection failure), or throttling
        if not detail.startswith("HTTP 5") and "NotImplemented" not in detail and (
            "ncrypt" not in detail
        ):
            return error  # a 4xx about something else (the key, the size...)
        started = isinstance(error, BackendUnavailable) and error.body_started
        return BackendCannotEncrypt(self.name, f"encrypted write refused: {detail}", started)

    async def _check_encrypted(self, encryption: str | None, answer: _Answer, key: str) -> None:
        """A write that asked for encryption must have been answered with it; otherwise the
        service ignored the header, and the unencrypted object it stored is removed.

        :raises BackendCannotEncrypt:
        """
        if encryption is None or answer.header(ENCRYPTION_HEADER) == encryption:
            return
        await self._delete_object(key)
        raise BackendCannotEncrypt(
            self.name, "the service stored the object without confirming encryption", True
        )

    def upload_part(
        self, key: str, upload_id: str, part_number: int, body: IBodyProducer, length: int
    ) -> Deferred[PartResult]:
        return Deferred.fromCoroutine(
            self._upload_part(key, upload_id, part_number, body, length)
        )

    async def _upload_part(
        self, key: str, upload_id: str, part_number: int, body: IBodyProducer, length: int
    ) -> PartResult:
        query = [("partNumber", str(part_number)), ("uploadId", upload_id)]
        # No MD5: a part's ETag has to come from the backend (CompleteMultipartUpload names it).
        answer, _ = await self._upload(self.address.object_path(key), query, {}, body, length)
        return PartResult(part_number, _require_etag(self.name, answer), length)

    def upload_part_copy(
        self,
        key: str,
        upload_id: str,
        part_number: int,
        source_key: str,
        byte_range: tuple[int, int] | None,
    ) -> Deferred[PartResult]:
        return Deferred.fromCoroutine(
            self._upload_part_copy(key, upload_id, part_number, source_key, byte_range)
        )

    async def _upload_part_copy(
        self,
        key: str,
        upload_id: str,
        part_number: int,
        source_key: str,
        byte_range: tuple[int, int] | None,
    ) -> PartResult:
        headers = {"x-amz-copy-source": self.address.copy_source(source_key)}
        if byte_range is not None:
            headers["x-amz-copy-source-range"] = f"bytes={byte_range[0]}-{byte_range[1]}"
            size = byte_range[1] - byte_range[0] + 1
        else:
            size = (await self._head_object(source_key)).size
        query = [("partNumber", str(part_number)), ("uploadId", upload_id)]
        answer = await self._call("PUT", self.address.object_path(key), query, headers)
        return PartResult(part_number, self._etag_result(answer), size)

    def complete_multipart_upload(
        self, key: str, upload_id: str, parts: list[tuple[int, str]]
    ) -> Deferred[PutResult]:
        return Deferred.fromCoroutine(self._complete_multipart_upload(key, upload_id, parts))

    async def _complete_multipart_upload(
        self, key: str, upload_id: str, parts: list[tuple[int, str]]
    ) -> PutResult:
        # Not retried: a repeat after a lost answer would find the upload gone (NoSuchUpload).
        answer = await self._call(
            "POST",
            self.address.object_path(key),
            [("uploadId", upload_id)],
            {"content-type": "application/xml"},
            s3xml.build_complete_body(parts),
        )
        etag = self._etag_result(answer)
        info = await self._head_object(key)
        return PutResult(etag=etag, size=info.size, checksums=_checksums(answer))

    def abort_multipart_upload(self, key: str, upload_id: str) -> Deferred[None]:
        return Deferred.fromCoroutine(self._abort_multipart_upload(key, upload_id))

    async def _abort_multipart_upload(self, key: str, upload_id: str) -> None:
        try:
            await self._call(
                "DELETE",
                self.address.object_path(key),
                [("uploadId", upload_id)],
                retry=True,
                ok=(200, 204),
            )
        except BackendNoSuchUpload:
            pass

    def list_parts(self, key: str, upload_id: str) -> Deferred[list[PartResult]]:
        return Deferred.fromCoroutine(self._list_parts(key, upload_id))

    async def _list_parts(self, key: str, upload_id: str) -> list[PartResult]:
        parts: list[PartResult] = []
        marker = ""
        for _ in range(10_001):  # at most 10,000 parts, at least one per page
            query = [("uploadId", upload_id)]
            if marker:
                query.append(("part-number-marker", marker))
            answer = await self._call(
                "GET", self.address.object_path(key), query, retry=True
            )
            try:
                page = s3xml.parse_list_parts(answer.body)
            except s3xml.MalformedResponse as e:
                raise BackendError(self.name, str(e)) from e
            parts.extend(page.parts)
            if not page.truncated or not page.next_marker or page.next_marker == marker:
                break
            marker = page.next_marker
        return sorted(parts, key=lambda part: part.part_number)

    def list_objects(self, prefix: str) -> Deferred[list[ListedObject]]:
        return Deferred.fromCoroutine(self._list_objects(prefix))

    async def _list_objects(self, prefix: str) -> list[ListedObject]:
        objects: list[ListedObject] = []
        token = ""
        while True:
            query = [("list-type", "2"), ("prefix", prefix), ("encoding-type", "url")]
            if token:
                query.append(("continuation-token", token))
            answer = await self._call("GET", self.address.bucket_path(), query, retry=True)
            try:
                page = s3xml.parse_list_objects_v2(answer.body)
            except s3xml.MalformedResponse as e:
                raise BackendError(self.name, str(e)) from e
            objects.extend(page.objects)
            if not page.truncated:
                return objects
            if not page.continuation_token or page.continuation_token == token:
                raise BackendError(self.name, "truncated listing without a new token")
            token = page.continuation_token

    def presign_get(self, key: str, expires_in: int, response_overrides: dict[str, str]) -> str:
        for name in response_overrides:
            if not name.startswith("response-"):
                raise ValueError(f"not a response override: {name!r}")
        url = self.address.url(self.address.object_path(key))
        return self._signer.presign(url, self.address.netloc, expires_in, response_overrides)

    def probe(self, timeout: float) -> Deferred[None]:
        d = Deferred.fromCoroutine(self._probe())
        d.addTimeout(timeout, self._reactor)

        def timed_out(failure: Failure) -> Failure:
            if failure.check(TimeoutError, CancelledError):
                return Failure(BackendUnavailable(self.name, f"probe took over {timeout}s"))
            return failure

        d.addErrback(timed_out)
        return d

    async def _probe(self) -> None:
        await self._call("HEAD", self.address.bucket_path())

    def capacity(self) -> Deferred[Capacity]:
        # S3 has no notion of free space; configured limits are the core's business.
        return succeed(Capacity(None, None))

    def close(self) -> Deferred[None]:
        if self._own_pool:
            return self._pool.closeCachedConnections()
        return succeed(None)


def _is_client_code(body: bytes) -> bool:
    document = s3xml.parse_error(body)
    return document is not None and document.code not in (
        "InternalError",
        "ServiceUnavailable",
        "SlowDown",
    )


def _describe(error: BaseException) -> str:
    """A log line for a transport failure, unwrapping Twisted's lists of reasons."""
    reasons = getattr(error, "reasons", None)
    if reasons:
        return "; ".join(f"{r.type.__name__}: {r.value}" for r in reasons)
    return f"{type(error).__name__}: {error}"


def _discard_body(response: IResponse) -> None:
    """Drop an unwanted answer's body by closing its connection."""

    class _Closer(Protocol):
        def connectionMade(self) -> None:
            assert self.transport is not None
            self.transport.stopProducing()  # type: ignore[attr-defined]

        def connectionLost(self, reason: Failure | None = None) -> None:
            pass

    response.deliverBody(_Closer())


async def _drain_empty(backend: str, body: IBodyProducer, watch: _StallWatch) -> None:
    """Run a body declared empty to its end; it must write nothing."""
    guard = _GuardedBody(backend, body, 0, watch)
    try:
        await guard.startProducing(_NullConsumer())
    finally:
        watch.stop()


@implementer(IConsumer)
class _NullConsumer:
    def write(self, data: bytes) -> None:
        """Never called: :class:`_GuardedBody` fails a body that writes past its length."""

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass


def _first_header(response: IResponse, name: str) -> str | None:
    values = response.headers.getRawHeaders(name)
    if not values:
        return None
    value = values[0]
    return value.decode("latin-1") if isinstance(value, bytes) else str(value)


log = make_logger()

#: Statuses that mean a PUT was stored: S3 answers 200, WebDAV-style stores 201 or 204.
_SUCCESS = (200, 201, 204)


def _require_etag(backend: str, answer: _Answer) -> str:
    etag = answer.header("etag")
    if not etag:
        raise BackendError(backend, f"HTTP {answer.status} without ETag")
    return s3xml.quote_etag(etag)


def _checksums(answer: _Answer) -> dict[str, str]:
    checksums = {}
    for raw_name, raw_values in answer.headers.getAllRawHeaders():
        name = raw_name.decode("latin-1").lower()
        if name.startswith(CHECKSUM_PREFIX) and name != "x-amz-checksum-type":
            checksums[name] = raw_values[-1].decode("latin-1")
    return checksums


def _http_date(value: str | None) -> float:
    if not value:
        return 0.0
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return 0.0


def _encryption_asked(headers: dict[str, str]) -> str | None:
    """The ``x-amz-server-side-encryption`` value of a write's headers, if any."""
    for name, value in headers.items():
        if name.lower() == ENCRYPTION_HEADER:
            return value
    return None
