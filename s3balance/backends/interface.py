"""What a backend (one real bucket) can do, whatever kind of storage is behind it.

The S3 front and the gateway core only ever talk to :class:`IBackend`; the S3 adapter
(:mod:`s3balance.backends.s3`), the local-directory adapter (:mod:`s3balance.backends.local`) and
the in-memory one (:mod:`s3balance.backends.memory`) implement it, and one contract-test mixin
(``test/backend_contract.py``) runs against all three.

Keys given to a backend are *real* keys (``<virtual-bucket>/<key>``), already chosen by the core.
Every method returns a Deferred; bodies stream in both directions and never sit whole in memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from zope.interface import Attribute, Interface

from s3balance import errors

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred
    from twisted.internet.interfaces import IProtocol
    from twisted.web.iweb import IBodyProducer


#: The SSE-S3 request header: in the ``headers`` of a write, the backend must store the object
#: encrypted at rest (``AES256``) and confirm it, or refuse with :class:`BackendCannotEncrypt`.
ENCRYPTION_HEADER = "x-amz-server-side-encryption"

# Headers S3 stores with an object and returns on GET/HEAD, lower-case names.
STORED_HEADERS = (
    "content-type",
    "content-encoding",
    "content-disposition",
    "content-language",
    "cache-control",
    "expires",
)


@dataclass(frozen=True)
class PutResult:
    """What a backend reports after it durably stored an object (or completed a multipart upload).

    :ivar etag: the backend's ETag, with its double quotes (``'"abc..."'``, ``'"abc...-3"'``).
    :ivar size: the stored size in bytes.
    :ivar checksums: ``x-amz-checksum-*`` values the backend reported, lower-case names.
    """

    etag: str
    size: int
    checksums: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PartResult:
    """One uploaded part: its ETag (quoted) and size."""

    part_number: int
    etag: str
    size: int


@dataclass(frozen=True)
class ObjectInfo:
    """What HEAD on a backend says about a stored object.

    :ivar headers: the stored headers of :data:`STORED_HEADERS` that are set.
    :ivar metadata: user metadata, keys without the ``x-amz-meta-`` prefix, lower-case.
    :ivar last_modified: seconds since the epoch.
    """

    key: str
    size: int
    etag: str
    last_modified: float
    headers: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ListedObject:
    """One entry of a backend listing, for reconciliation (scrub) and index rebuilding."""

    key: str
    size: int
    etag: str
    last_modified: float


@dataclass(frozen=True)
class Capacity:
    """Capacity as the storage itself sees it; ``None`` where the storage cannot tell (most S3).

    Configured ``max_size`` and the bytes s3balance placed there are the core's business, not this.
    """

    total_bytes: int | None
    free_bytes: int | None


class IObjectStream(Interface):
    """A backend's answer to GET, whose body has not been read yet.

    Exactly one of :meth:`deliverBody` or :meth:`discard` must be called.
    """

    length = Attribute("Number of body bytes that will be delivered (int).")
    size = Attribute("Total size of the stored object (int), whatever range was asked for.")
    etag = Attribute("The stored object's ETag, quoted.")

    def deliverBody(protocol: IProtocol) -> None:
        """Deliver the body to ``protocol`` as :meth:`twisted.web.iweb.IResponse.deliverBody` does.

        ``protocol.makeConnection(transport)`` gets a transport that provides
        :class:`twisted.internet.interfaces.IPushProducer` (pause it to apply backpressure to
        the backend), then ``dataReceived`` for each chunk, then ``connectionLost(reason)``: a
        :class:`twisted.web.client.ResponseDone` failure when every byte arrived, anything else
        when the transfer broke (the caller must then abort its client, never finish cleanly).
        """

    def discard() -> None:
        """Throw the body away and release the connection, without reading it."""


class ISocketBody(Interface):
    """Offered, beside ``IPushProducer``, by the transport an :class:`IObjectStream` body
    protocol is connected to, when the rest of the body can be read straight off a plain TCP
    socket (the zero-copy download path, :mod:`s3balance.net.splice`)."""

    def detach() -> Any:
        """Take the rest of the body off the stream: first deliver (``dataReceived``) whatever
        was already read, then stop reading and return the ``socket.socket``, positioned at the
        next body byte.  ``None`` when that is not possible (TLS, chunked framing, the body
        already ended); the stream then goes on as before.

        After a detach the protocol gets no more calls; the caller reads the remaining bytes
        itself and then calls :meth:`release`.
        """

    def release() -> None:
        """Close the detached connection (its HTTP state is no longer known to the client)."""


class IBackend(Interface):
    """One real bucket (or local directory) objects can be placed on."""

    name = Attribute("The configured bucket name (``buckets[].name``), unique, used in metrics.")
    can_presign = Attribute("True when :meth:`presign_get` works (redirect mode).")
    can_encrypt = Attribute(
        "False when the storage can never honour :data:`ENCRYPTION_HEADER` (local directories): "
        "such a backend is not chosen for encrypted writes.  True means it may: the write "
        "still fails with :class:`BackendCannotEncrypt` when the service refuses it."
    )

    def put_object(
        key: str,
        body: IBodyProducer,
        length: int,
        headers: dict[str, str],
        metadata: dict[str, str],
    ) -> Deferred[PutResult]:
        """Store ``length`` bytes produced by ``body`` under ``key``, replacing any object there.

        The object becomes visible on the backend only if ``body.startProducing``'s Deferred fires
        successfully and the backend confirms; if the body fails (client gone, bad checksum found
        at the end), the backend must not keep a complete object: the S3 adapter aborts the
        connection before the last byte, the local adapter discards its temporary file.

        :param headers: stored headers (:data:`STORED_HEADERS`, lower-case names) to keep.
        :param metadata: user metadata, keys without ``x-amz-meta-``.
        :returns: a Deferred firing with :class:`PutResult`.
        :raises BackendUnavailable: connection refused, timed out, or the backend answered 5xx
            before any body byte was consumed (``body_started`` tells whether it is safe to retry).
        :raises BackendError: any other failure; the body's own failure is re-raised as it is.
        """

    def get_object(key: str, byte_range: tuple[int, int] | None = None) -> Deferred[IObjectStream]:
        """Start reading ``key`` (the inclusive byte range ``(first, last)`` when given).

        :raises BackendNoSuchKey: nothing stored under ``key``.
        :raises BackendUnavailable: the backend cannot be reached.
        """

    def head_object(key: str) -> Deferred[ObjectInfo]:
        """Describe ``key``. :raises BackendNoSuchKey: nothing stored under ``key``."""

    def delete_object(key: str) -> Deferred[None]:
        """Delete ``key``; deleting a missing key succeeds."""

    def can_copy_from(source: IBackend) -> bool:
        """Whether :meth:`copy_object` and :meth:`upload_part_copy` can read from ``source``
        (another real bucket) without the bytes passing through this process: the same S3
        service (endpoint and credentials), any local directory of this host, any in-memory
        backend of this process.  Always true for this backend itself."""

    def copy_object(
        source_key: str,
        key: str,
        headers: dict[str, str],
        metadata: dict[str, str],
        source_backend: IBackend | None = None,
    ) -> Deferred[PutResult]:
        """Copy ``source_key`` to ``key`` with the given stored headers and metadata (the core
        has already decided between COPY and REPLACE).

        :param source_backend: the backend holding ``source_key`` (one :meth:`can_copy_from`
            accepts); ``None``: this one.
        :raises BackendNoSuchKey: ``source_key`` is missing.
        """

    def create_multipart_upload(
        key: str, headers: dict[str, str], metadata: dict[str, str]
    ) -> Deferred[str]:
        """Start a multipart upload; fires with the backend's own upload id (never shown to
        clients)."""

    def upload_part(
        key: str, upload_id: str, part_number: int, body: IBodyProducer, length: int
    ) -> Deferred[PartResult]:
        """Store one part from a streamed body; same failure rules as :meth:`put_object`.

        :raises BackendNoSuchUpload: the backend does not know ``upload_id``.
        """

    def upload_part_copy(
        key: str,
        upload_id: str,
        part_number: int,
        source_key: str,
        byte_range: tuple[int, int] | None,
        source_backend: IBackend | None = None,
    ) -> Deferred[PartResult]:
        """Make a part from (a range of) another object, on ``source_backend`` (one
        :meth:`can_copy_from` accepts; ``None``: this backend)."""

    def complete_multipart_upload(
        key: str, upload_id: str, parts: list[tuple[int, str]]
    ) -> Deferred[PutResult]:
        """Assemble ``parts`` (``(part_number, quoted etag)``, ascending) into the object.

        :raises BackendInvalidPart: the backend rejects a part (missing or wrong ETag, too small).
        """

    def abort_multipart_upload(key: str, upload_id: str) -> Deferred[None]:
        """Discard an upload and its parts; aborting an unknown upload succeeds."""

    def list_parts(key: str, upload_id: str) -> Deferred[list[PartResult]]:
        """The parts the backend holds for an upload, ascending by part number."""

    def list_objects(
        prefix: str, start_after: str = "", until: str | None = None
    ) -> Deferred[list[ListedObject]]:
        """Every object whose real key starts with ``prefix``, pages already followed, in UTF-8
        byte order; only those after ``start_after`` and (unless None) up to ``until``
        included, so that a slice of a large bucket costs about its own pages.

        For reconciliation; not on any client's request path.
        """

    def presign_get(
        key: str, expires_in: int, response_overrides: dict[str, str]
    ) -> str:
        """A URL that lets anyone GET ``key`` for ``expires_in`` seconds, carrying the
        ``response-*`` query overrides given (``{"response-content-type": "..."}``).

        :raises PresignNotSupported: when :attr:`can_presign` is false.
        """

    def probe(timeout: float) -> Deferred[None]:
        """A cheap liveness check (HeadBucket or a one-key listing) that fails within ``timeout``
        seconds when the backend is not serving."""

    def capacity() -> Deferred[Capacity]:
        """What the storage itself reports about its size and free space."""

    def close() -> Deferred[None]:
        """Release connections and threads; called when the backend is removed or at shutdown."""


class BackendError(Exception):
    """A backend failed in a way the client should see as ``s3_error``.

    :ivar backend: the backend's configured name (for logs and metrics, never for clients).
    :ivar detail: what happened, for logs.
    """

    s3_code = "InternalError"

    def __init__(self, backend: str, detail: str) -> None:
        super().__init__(f"{backend}: {detail}")
        self.backend = backend
        self.detail = detail


class BackendUnavailable(BackendError):
    """The backend could not be reached or answered 5xx.

    :ivar body_started: whether any request body byte was consumed; only when false may the core
        retry the write elsewhere.
    """

    s3_code = "ServiceUnavailable"

    def __init__(self, backend: str, detail: str, body_started: bool = False) -> None:
        super().__init__(backend, detail)
        self.body_started = body_started


class BackendCannotEncrypt(BackendUnavailable):
    """The backend refused, or did not confirm, server-side encryption of a write.

    A placement failure: the core tries the next choice (without counting it against the
    backend's health) and answers 501 NotImplemented when no choice encrypts.  Whatever the
    backend wrote was removed.
    """

    s3_code = "NotImplemented"


class BackendNoSuchKey(BackendError):
    s3_code = "NoSuchKey"


class BackendNoSuchUpload(BackendError):
    s3_code = "NoSuchUpload"


class BackendInvalidPart(BackendError):
    s3_code = "InvalidPart"


class BackendAccessDenied(BackendError):
    """The backend refused our credentials: an operator's problem, shown as 503 to clients."""

    s3_code = "ServiceUnavailable"


class BackendRefused(BackendError):
    """The backend refused the request as sent (HTTP 400-class): a key it cannot store (some
    services reject ``.`` path segments or over-long segments), a size over its limits."""

    s3_code = "InvalidArgument"


class PresignNotSupported(BackendError):
    s3_code = "NotImplemented"


def backend_error_to_s3(error: BackendError) -> errors.S3Error:
    """The error a client sees for a backend failure; never names the backend's host or bucket."""
    if isinstance(error, BackendNoSuchKey):
        return errors.NoSuchKey()
    if isinstance(error, BackendNoSuchUpload):
        return errors.NoSuchUpload()
    if isinstance(error, BackendInvalidPart):
        return errors.InvalidPart()
    if isinstance(error, BackendCannotEncrypt):
        return errors.NotImplementedError_(
            "No storage backend of this server could store the object with server-side "
            "encryption (x-amz-server-side-encryption: AES256)."
        )
    if isinstance(error, BackendRefused):
        return errors.InvalidArgument(
            "The storage backend chosen for this object refused the request; the key or the "
            "size may not be supported there."
        )
    if isinstance(error, (BackendUnavailable, BackendAccessDenied)):
        return errors.ServiceUnavailable("The storage backend for this object is not available.")
    return errors.InternalError()
