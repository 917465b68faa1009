"""The S3 semantics of virtual buckets, independent of HTTP: where objects go, where metadata is
written, and how the two stay consistent.

Placement: :meth:`BackendPool.choose` ranks the eligible backends; the first one that accepts the
bytes wins.  A write that fails *before any body byte was consumed* moves on to the next choice
(up to ``balancer.retry_attempts`` attempts, ``balancer.retry_delay`` apart); once bytes went out
it fails, and the backend keeps nothing (its ``put_object`` contract).

Consistency rules, in order:

1. Metadata is committed (``store.put_object``) only after the backend confirmed the write; a
   failed commit deletes the bytes just written.
2. Writes to one ``(backend, real key)`` are serialised from the backend write to the commit, so
   the backend's last writer is also the database's last commit.  Several daemons may share the
   database, so the lock is a *write intent* row in it (``store.claim_write``), claimed in a short
   transaction before the backend write; a daemon that finds the location claimed polls (with
   backoff, up to ``claim_wait_timeout``, answering SlowDown after) while its client's body
   waits, paused.  An in-process lock sits in front, so a daemon never polls against itself.  A
   long write renews its claim's heartbeat every ``claim_heartbeat`` seconds; a claim not renewed
   for ``claim_stale_after`` seconds belongs to a dead daemon and is taken over.  The commit
   releases the claim in its own transaction, and refuses to commit when the claim was taken
   over meanwhile (the bytes may be the other daemon's).
3. Bytes an overwrite or a delete made unreachable are deleted *after* the commit, and only under a
   claim the commit took in its transaction for them: a replaced location that another writer
   holds is left alone (that writer is about to commit new bytes there, and its commit will in
   turn hand over ours for deletion), and no one can start writing a location between our commit
   and our deletion of it.  So of two writers of one key to different backends the later
   committer wins and deletes the earlier one's bytes.  A crash in between leaves an orphan for
   scrub, never a row without bytes.

Real keys must stay ``<virtual bucket>/<key>`` (an index can be rebuilt from the backends), which is
why per-write unique keys are not used to avoid these races.

A plain PUT costs two transactions: the claim (which also checks that the bucket exists) and the
commit (which releases the claim); a third releases the deletion claims when an overwrite moved
the object to another backend.

Real keys are ``<virtual bucket>/<key>`` inside the chosen real bucket.

Operation classes counted per backend follow Cloudflare R2: class A (mutating or listing) for
PutObject, CopyObject, multipart calls and listings; class B (reads) for GetObject and
HeadObject on a backend; DeleteObject is free.  Listings and HeadObject are answered from the
metadata store, so they never reach a backend and are not counted (HeadObject still answers 503
when no location of the object is readable, as GetObject would).  In redirect mode a GetObject
answered with a presigned URL counts as one class-B read of the backend it points at.
"""

from __future__ import annotations

import os
import re
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet import defer, task
from twisted.internet.interfaces import IConsumer, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from s3balance import errors
from s3balance.backends.interface import (
    ENCRYPTION_HEADER,
    BackendCannotEncrypt,
    BackendError,
    BackendNoSuchKey,
    BackendUnavailable,
    IBackend,
    IObjectStream,
    PutResult,
    backend_error_to_s3,
)
from s3balance.config import Config
from s3balance.db.records import BucketRecord, Location, ObjectPage, ObjectRecord
from s3balance.db.store import (
    BucketNotEmptyError,
    ClaimLostError,
    MetadataStore,
    NoSuchBucketError,
    Replacement,
    WriteIntent,
)

log = Logger()

#: S3's limit for a single PUT.
MAX_PUT_SIZE = 5 * 1024**3
#: S3's limit on a key's UTF-8 length.
MAX_KEY_BYTES = 1024
#: Names the daemon serves itself; a virtual bucket may not take them.
RESERVED_BUCKET_NAMES = frozenset({"health", "metrics", "api"})

_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_IP_ADDRESS = re.compile(r"^\d+\.\d+\.\d+\.\d+$")


class Pool(Protocol):
    """What the core needs of :class:`s3balance.pool.BackendPool`."""

    def get(self, name: str) -> IBackend: ...

    def is_available(self, name: str) -> bool: ...

    def choose(self, bucket: str, key: str, size: int) -> list[str]: ...

    def reserve(self, name: str, size: int) -> Callable[[], None]: ...

    def over_read_limit(self, name: str) -> bool: ...

    def record_operation(
        self, name: str, op_class: str, bytes_in: int = 0, bytes_out: int = 0
    ) -> None: ...


class Health(Protocol):
    def mark_failure(self, name: str, error: str) -> None: ...


class Usage(Protocol):
    def adjust(self, name: str, delta_bytes: int, delta_objects: int) -> None: ...


@dataclass(frozen=True)
class GatewaySettings:
    retry_attempts: int = 3
    retry_delay: float = 1.0
    allow_create_bucket: bool = True
    region: str = "us-east-1"
    #: ``False`` is redirect mode: GetObject answers 302 to a presigned URL of the backend.
    proxy_mode: bool = True
    #: Lifetime in seconds of the presigned URLs of redirect mode.
    presign_expiry: float = 300.0
    #: How long a write waits for another daemon's write of the same location (then SlowDown).
    claim_wait_timeout: float = 30.0
    #: First and longest pause between two attempts at a claimed location.
    claim_poll_initial: float = 0.05
    claim_poll_max: float = 1.0
    #: How often a write in progress renews its claim, and when an unrenewed claim is dead.
    claim_heartbeat: float = 30.0
    claim_stale_after: float = 300.0

    @classmethod
    def from_config(cls, config: Config) -> GatewaySettings:
        return cls(
            retry_attempts=config.balancer.retry_attempts,
            retry_delay=config.balancer.retry_delay,
            allow_create_bucket=config.s3api.allow_create_bucket,
            region=config.s3api.region,
            proxy_mode=config.s3api.proxy_mode,
            presign_expiry=config.s3api.presign_expiry,
            claim_wait_timeout=config.server.read_timeout,
        )


def real_key(bucket: str, key: str) -> str:
    """Where a virtual object lives inside whichever real bucket holds it."""
    return f"{bucket}/{key}"


def validate_bucket_name(name: str) -> None:
    """S3's rules for new bucket names (the DNS-compatible ones), plus our reserved names.

    :raises S3Error: InvalidBucketName.
    """
    if (
        not _BUCKET_NAME.match(name)
        or ".." in name
        or ".-" in name
        or "-." in name
        or _IP_ADDRESS.match(name)
        or name.startswith("xn--")
        or name.endswith("-s3alias")
        or name in RESERVED_BUCKET_NAMES
    ):
        raise errors.InvalidBucketName(BucketName=name)


def quoted_etag(etag: str) -> str:
    """S3's quoted form; some servers (SeaweedFS's CopyObjectResult) drop the quotes."""
    etag = etag.strip()
    if len(etag) >= 2 and etag.startswith('"') and etag.endswith('"'):
        return etag
    return f'"{etag.strip(chr(34))}"'


def validate_key(key: str) -> None:
    """:raises S3Error: KeyTooLongError past 1024 UTF-8 bytes."""
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise errors.KeyTooLongError(Size=str(len(key.encode("utf-8"))), MaxSizeAllowed="1024")


class _KeyLocks:
    """One DeferredLock per ``(backend, real key)`` in use, dropped when nobody holds or waits."""

    def __init__(self) -> None:
        self._locks: dict[tuple[str, str], tuple[defer.DeferredLock, int]] = {}

    @asynccontextmanager
    async def hold(self, backend: str, key: str) -> AsyncIterator[None]:
        ident = (backend, key)
        lock, users = self._locks.get(ident, (defer.DeferredLock(), 0))
        self._locks[ident] = (lock, users + 1)
        try:
            await lock.acquire()
            try:
                yield
            finally:
                lock.release()
        finally:
            lock, users = self._locks[ident]
            if users <= 1:
                del self._locks[ident]
            else:
                self._locks[ident] = (lock, users - 1)

    def __len__(self) -> int:
        return len(self._locks)


class _Relay(TwistedProtocol):
    """Receives a backend stream and writes it into the consumer of another backend's upload."""

    def __init__(self, producer: StreamBodyProducer, consumer: IConsumer) -> None:
        self._producer = producer
        self._consumer = consumer

    def connectionMade(self) -> None:
        self._producer._attached(self.transport)

    def dataReceived(self, data: bytes) -> None:
        self._consumer.write(data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._producer._ended(reason if reason is not None else Failure(ResponseDone()))


@implementer(IBodyProducer)
class StreamBodyProducer:
    """Feeds a backend's GET stream into another backend's PUT, with backpressure: the target's
    ``pauseProducing`` pauses the source connection.

    Used once; call :meth:`discard` when the upload never started.
    """

    def __init__(self, stream: IObjectStream) -> None:
        self.length: int = stream.length
        self._stream = stream
        self._started = False
        self._transport: IPushProducer | None = None
        self._paused = False
        self._done: defer.Deferred[None] = defer.Deferred()

    def startProducing(self, consumer: IConsumer) -> defer.Deferred[None]:
        self._started = True
        self._stream.deliverBody(_Relay(self, consumer))
        return self._done

    def _attached(self, transport: Any) -> None:
        self._transport = transport
        if self._paused:
            transport.pauseProducing()

    def _ended(self, reason: Failure) -> None:
        if self._done.called:
            return
        if reason.check(ResponseDone):
            self._done.callback(None)
        else:
            self._done.errback(reason)

    def pauseProducing(self) -> None:
        self._paused = True
        if self._transport is not None:
            self._transport.pauseProducing()

    def resumeProducing(self) -> None:
        self._paused = False
        if self._transport is not None:
            self._transport.resumeProducing()

    def stopProducing(self) -> None:
        if self._transport is not None:
            self._transport.stopProducing()

    def discard(self) -> None:
        if not self._started:
            self._started = True
            self._stream.discard()


def _restartable(body: IBodyProducer) -> bool:
    check = getattr(body, "restartable", None)
    return bool(check()) if callable(check) else False


class Gateway:
    """Virtual buckets over a pool of real ones.

    :param store: the metadata store.
    :param pool: ranks and hands out backends (:class:`s3balance.pool.BackendPool`).
    :param health: told about backend failures seen on the data path.
    :param usage: the in-memory usage estimate, kept in step with commits.
    :param clock: for retry delays and object timestamps.
    :param config: the daemon's configuration (or pass ``settings``).
    """

    def __init__(
        self,
        store: MetadataStore,
        pool: Pool,
        health: Health,
        usage: Usage,
        clock: IReactorTime,
        config: Config | None = None,
        settings: GatewaySettings | None = None,
    ) -> None:
        self.store = store
        self.pool = pool
        self.health = health
        self.usage = usage
        self.clock = clock
        if settings is None:
            settings = GatewaySettings.from_config(config) if config else GatewaySettings()
        self.settings = settings
        self._locks = _KeyLocks()
        #: Names this daemon in the write intents it holds.
        self.daemon_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    # -- buckets -------------------------------------------------------------------------

    async def list_buckets(self) -> list[BucketRecord]:
        return await self.store.list_buckets()

    async def get_bucket(self, name: str) -> BucketRecord:
        """:raises S3Error: NoSuchBucket."""
        record = await self.store.get_bucket(name)
        if record is None:
            raise errors.NoSuchBucket(BucketName=name)
        return record

    async def create_bucket(self, name: str, acl: str = "private") -> None:
        """:raises S3Error: AccessDenied when disabled, InvalidBucketName,
        BucketAlreadyOwnedByYou (there is a single owner)."""
        if not self.settings.allow_create_bucket:
            raise errors.AccessDenied("Creating buckets is disabled on this server.")
        validate_bucket_name(name)
        created = await self.store.create_bucket(name, self.clock.seconds(), acl=acl)
        if not created:
            raise errors.BucketAlreadyOwnedByYou(BucketName=name)

    async def delete_bucket(self, name: str) -> None:
        """Delete an empty virtual bucket.  A bucket declared in the configuration comes back at
        the next start.

        :raises S3Error: NoSuchBucket, BucketNotEmpty.
        """
        try:
            await self.store.delete_bucket(name)
        except NoSuchBucketError:
            raise errors.NoSuchBucket(BucketName=name) from None
        except BucketNotEmptyError:
            raise errors.BucketNotEmpty(BucketName=name) from None

    # -- reading -------------------------------------------------------------------------

    async def get_object_record(self, bucket: str, key: str) -> ObjectRecord:
        """The visible object, from metadata only.

        :raises S3Error: NoSuchKey, or NoSuchBucket when the bucket itself is missing.
        """
        record = await self.store.get_object(bucket, key)
        if record is None:
            await self.get_bucket(bucket)
            raise errors.NoSuchKey(Key=key)
        return record

    def readable_location(self, record: ObjectRecord) -> Location:
        """The location a read of ``record`` should use.

        :raises S3Error: ServiceUnavailable when no location's backend is enabled and healthy,
            SlowDown when the ones that are have used up their class-B budget.
        """
        over_limit = False
        for location in record.locations:
            if not self.pool.is_available(location.backend):
                continue
            if self.pool.over_read_limit(location.backend):
                over_limit = True
                continue
            return location
        if over_limit:
            raise errors.SlowDown("The storage holding this object has used its read budget.")
        raise errors.ServiceUnavailable("The storage backend for this object is not available.")

    async def open_object(
        self, record: ObjectRecord, byte_range: tuple[int, int] | None = None
    ) -> IObjectStream:
        """Start reading ``record``'s bytes (a range of them) from its backend.

        :raises S3Error: as :meth:`readable_location`; NoSuchKey when the backend lost the bytes
            (a dangling row, logged for the operator).
        """
        location = self.readable_location(record)
        backend = self.pool.get(location.backend)
        try:
            stream = await backend.get_object(location.real_key, byte_range)
        except BackendNoSuchKey:
            log.error(
                "dangling metadata: {bucket}/{key} is recorded on {backend} as {real_key} but "
                "the backend does not have it",
                bucket=record.bucket,
                key=record.key,
                backend=location.backend,
                real_key=location.real_key,
            )
            raise errors.NoSuchKey(Key=record.key) from None
        except BackendError as error:
            if isinstance(error, BackendUnavailable):
                self.health.mark_failure(location.backend, error.detail)
            raise backend_error_to_s3(error) from error
        self.pool.record_operation(location.backend, "B", bytes_out=stream.length)
        return stream

    def presigned_url(self, record: ObjectRecord, response_overrides: dict[str, str]) -> str | None:
        """Redirect mode: a presigned GET URL of ``record``'s bytes on the backend chosen as for a
        read, valid ``presign_expiry`` seconds, or ``None`` when that backend cannot presign (a
        local directory) and the read must be proxied.

        The URL pins no range, so a client that follows the redirect with its ``Range`` header
        gets the range from the backend.  A URL handed out counts as the class-B read it will
        become; its bytes never pass through the daemon, so none are counted.

        :param response_overrides: ``response-*`` query parameters for the backend to apply.
        :raises S3Error: as :meth:`readable_location`.
        """
        location = self.readable_location(record)
        backend = self.pool.get(location.backend)
        if not backend.can_presign:
            return None
        expires_in = max(1, int(self.settings.presign_expiry))
        try:
            url = backend.presign_get(location.real_key, expires_in, dict(response_overrides))
        except BackendError as error:
            log.warn(
                "{backend} could not presign {real_key} ({detail}); proxying the read",
                backend=location.backend, real_key=location.real_key, detail=error.detail,
            )
            return None
        self.pool.record_operation(location.backend, "B")
        return url

    async def list_objects(
        self,
        bucket: str,
        prefix: str = "",
        delimiter: str = "",
        start_after: str = "",
        max_keys: int = 1000,
    ) -> ObjectPage:
        """A page of the bucket's listing, from metadata. :raises S3Error: NoSuchBucket."""
        await self.get_bucket(bucket)
        if max_keys <= 0:
            return ObjectPage([], [], False, None)
        return await self.store.list_objects(bucket, prefix, delimiter, start_after, max_keys)

    # -- writing -------------------------------------------------------------------------

    async def put_object(
        self,
        bucket: str,
        key: str,
        body: IBodyProducer,
        length: int,
        headers: Mapping[str, str],
        metadata: Mapping[str, str],
        checksums: Callable[[], dict[str, str]] | None = None,
        tags: Mapping[str, str] | None = None,
        acl: str = "private",
    ) -> ObjectRecord:
        """Store a new object from a streamed body and make it visible.

        :param body: the producer; when it has ``restartable()`` returning true, a backend that
            refused before reading it may be replaced by the next choice.
        :param checksums: called after the body was fully read; ``x-amz-checksum-*`` values to
            keep with the object (lower-case names).
        :returns: the committed record (its ETag is the backend's).
        :raises S3Error: NoSuchBucket, EntityTooLarge, ServiceUnavailable when no backend can take
            it, the body's own error (BadDigest...), or a backend error mapped for clients.
        """
        validate_key(key)
        if length > MAX_PUT_SIZE:
            raise errors.EntityTooLarge(ProposedSize=str(length), MaxSizeAllowed=str(MAX_PUT_SIZE))

        def write(backend: IBackend, target: str) -> defer.Deferred[PutResult]:
            return backend.put_object(target, body, length, dict(headers), dict(metadata))

        return await self._place(
            bucket,
            key,
            length,
            write,
            lambda: _restartable(body),
            headers=dict(headers),
            metadata=dict(metadata),
            checksums=checksums,
            tags=dict(tags or {}),
            acl=acl,
        )

    async def copy_object(
        self,
        source: ObjectRecord,
        bucket: str,
        key: str,
        headers: Mapping[str, str],
        metadata: Mapping[str, str],
        tags: Mapping[str, str] | None = None,
        acl: str = "private",
    ) -> ObjectRecord:
        """Copy ``source`` to ``bucket``/``key`` with the given stored headers and metadata (the
        caller has applied the metadata and tagging directives).

        The pool chooses the target as for a new object; when that is a backend holding the
        source, the copy is server-side, otherwise the bytes stream from one backend into the
        other with backpressure.
        """
        validate_key(key)
        await self.get_bucket(bucket)
        source_location = self.readable_location(source)

        def write(backend: IBackend, target: str) -> defer.Deferred[PutResult]:
            if backend.name == source_location.backend:
                return backend.copy_object(
                    source_location.real_key, target, dict(headers), dict(metadata)
                )
            return defer.ensureDeferred(
                self._streamed_copy(source_location, backend, target, headers, metadata)
            )

        kept = dict(source.checksums)
        in_place = source.bucket == bucket and source.key == key
        return await self._place(
            bucket,
            key,
            source.size,
            write,
            lambda: True,
            headers=dict(headers),
            metadata=dict(metadata),
            checksums=lambda: kept,
            prefer=source_location.backend if in_place else None,
            tags=dict(tags or {}),
            acl=acl,
        )

    async def _streamed_copy(
        self,
        source: Location,
        target_backend: IBackend,
        target: str,
        headers: Mapping[str, str],
        metadata: Mapping[str, str],
    ) -> PutResult:
        try:
            stream = await self.pool.get(source.backend).get_object(source.real_key)
        except BackendNoSuchKey:
            raise errors.NoSuchKey("The source object's bytes are missing.") from None
        except BackendError as error:
            raise backend_error_to_s3(error) from error
        self.pool.record_operation(source.backend, "B", bytes_out=stream.length)
        producer = StreamBodyProducer(stream)
        try:
            return await target_backend.put_object(
                target, producer, stream.length, dict(headers), dict(metadata)
            )
        finally:
            producer.discard()

    async def _place(
        self,
        bucket: str,
        key: str,
        size: int,
        write: Callable[[IBackend, str], defer.Deferred[PutResult]],
        restartable: Callable[[], bool],
        headers: dict[str, str],
        metadata: dict[str, str],
        checksums: Callable[[], dict[str, str]] | None,
        prefer: str | None = None,
        tags: dict[str, str] | None = None,
        acl: str = "private",
    ) -> ObjectRecord:
        """Write to the best backend that takes it, then commit; the retry loop of the module
        docstring.  :raises S3Error: NoSuchBucket (checked when claiming), and see callers."""
        candidates = self.pool.choose(bucket, key, size)
        if ENCRYPTION_HEADER in headers:
            candidates = self.encrypting(candidates)
        if prefer is not None and prefer in candidates:
            candidates = [prefer] + [name for name in candidates if name != prefer]
        if not candidates:
            await self.get_bucket(bucket)
            raise errors.InsufficientStorage()
        target = real_key(bucket, key)
        attempts = max(1, self.settings.retry_attempts)
        last_error: BackendUnavailable | None = None
        for attempt, name in enumerate(candidates[:attempts]):
            if attempt:
                await task.deferLater(self.clock, self.settings.retry_delay, lambda: None)
            outcome = await self._write_and_commit(
                name, bucket, key, target, size, write, headers, metadata, checksums,
                tags=tags or {}, acl=acl,
            )
            if isinstance(outcome, BackendUnavailable):
                last_error = outcome
                if outcome.body_started or not restartable():
                    break
                log.warn(
                    "backend {backend} refused {bucket}/{key} before the body: {detail}; "
                    "trying the next choice",
                    backend=name,
                    bucket=bucket,
                    key=key,
                    detail=outcome.detail,
                )
                continue
            return outcome
        assert last_error is not None
        raise backend_error_to_s3(last_error)

    def encrypting(self, candidates: list[str]) -> list[str]:
        """The ``candidates`` that may store objects encrypted at rest (SSE-S3).

        :raises S3Error: NotImplemented when there were candidates but none can encrypt.
        """
        able = [name for name in candidates if getattr(self.pool.get(name), "can_encrypt", False)]
        if candidates and not able:
            raise errors.NotImplementedError_(
                "Server-side encryption (x-amz-server-side-encryption: AES256) is not available: "
                "no storage backend this object could be placed on encrypts at rest."
            )
        return able

    # -- write intents -------------------------------------------------------------------

    def write_intent(self, token: str) -> WriteIntent:
        """``token``'s claim as of now, by this daemon's clock and staleness limit."""
        return WriteIntent(
            token, self.daemon_id, self.clock.seconds(), self.settings.claim_stale_after
        )

    async def _claim(self, backend: str, target: str, token: str, bucket: str | None) -> None:
        """Claim ``(backend, target)``, polling with backoff while another daemon holds it.

        :raises S3Error: SlowDown after ``claim_wait_timeout``; NoSuchBucket.
        """
        settings = self.settings
        deadline = self.clock.seconds() + settings.claim_wait_timeout
        delay = settings.claim_poll_initial
        while True:
            try:
                claimed = await self.store.claim_write(
                    backend, target, self.write_intent(token), bucket
                )
            except NoSuchBucketError:
                raise errors.NoSuchBucket(BucketName=bucket) from None
            if claimed:
                return
            remaining = deadline - self.clock.seconds()
            if remaining <= 0:
                log.warn(
                    "{target} on {backend} stayed claimed by another write for {wait}s",
                    target=target, backend=backend, wait=settings.claim_wait_timeout,
                )
                await self._release(token)  # leave the queue, or it would hold up the next writer
                raise errors.SlowDown("Another write of this key is in progress; try again.")
            await task.deferLater(self.clock, min(delay, remaining), lambda: None)
            delay = min(delay * 2, settings.claim_poll_max)

    async def _heartbeat(self, token: str) -> None:
        try:
            await self.store.refresh_write(token, self.clock.seconds())
        except Exception as error:
            log.warn("could not renew write intent {token}: {error}", token=token, error=error)

    @asynccontextmanager
    async def claimed(
        self, backend: str, target: str, bucket: str | None = None
    ) -> AsyncIterator[_Claim]:
        """Hold ``(backend, target)`` against every writer, in this daemon and in others sharing
        the database, renewing the claim while held; released on the way out unless the body
        marked it released (a commit releases it in its transaction).

        :param bucket: check this virtual bucket exists in the claiming transaction.
        :raises S3Error: SlowDown, NoSuchBucket.
        """
        async with self._locks.hold(backend, target):
            claim = _Claim(uuid.uuid4().hex)
            await self._claim(backend, target, claim.token, bucket)
            heartbeat = task.LoopingCall(
                lambda: defer.ensureDeferred(self._heartbeat(claim.token))
            )
            heartbeat.clock = self.clock
            heartbeat.start(self.settings.claim_heartbeat, now=False)
            try:
                yield claim
            finally:
                heartbeat.stop()
                if not claim.released:
                    await self._release(claim.token)

    async def _release(self, token: str) -> None:
        try:
            await self.store.release_write(token)
        except Exception as error:
            log.warn(
                "could not release write intent {token} ({error}); it expires after {stale}s",
                token=token, error=error, stale=self.settings.claim_stale_after,
            )

    async def commit(self, record: ObjectRecord, claim: _Claim) -> Replacement:
        """Commit ``record`` written under ``claim``, then delete the bytes it replaced and
        adjust the usage estimate.

        :raises ClaimLostError: :raises NoSuchBucketError: (nothing committed; bytes untouched)
        """
        replaced = await self.store.replace_object(record, self.write_intent(claim.token))
        claim.committed = True
        claim.released = not replaced.to_delete
        self._adjust_usage(record, replaced)
        await self.delete_claimed(replaced.to_delete, claim.token)
        claim.released = True
        return replaced

    async def delete_claimed(self, locations: list[Location], token: str) -> None:
        """Delete bytes the metadata no longer points at, which ``token`` claimed in the
        transaction that unreferenced them, then release the claims."""
        if not locations:
            return
        for location in locations:
            await self._delete_bytes(location.backend, location.real_key)
        await self._release(token)

    async def _write_and_commit(
        self,
        name: str,
        bucket: str,
        key: str,
        target: str,
        size: int,
        write: Callable[[IBackend, str], defer.Deferred[PutResult]],
        headers: dict[str, str],
        metadata: dict[str, str],
        checksums: Callable[[], dict[str, str]] | None,
        tags: dict[str, str] | None = None,
        acl: str = "private",
    ) -> ObjectRecord | BackendUnavailable:
        """One attempt on one backend, under the location's claim; a refusal that may be
        retried is returned, every other failure raised."""
        backend = self.pool.get(name)
        release = self.pool.reserve(name, size)
        try:
            async with self.claimed(name, target, bucket) as claim:
                try:
                    result = await write(backend, target)
                except BackendUnavailable as error:
                    if not isinstance(error, BackendCannotEncrypt):
                        self.health.mark_failure(name, error.detail)
                    return error
                except BackendError as error:
                    log.error(
                        "writing {target} to {backend} failed: {detail}",
                        target=target, backend=name, detail=error.detail,
                    )
                    raise backend_error_to_s3(error) from error
                self.pool.record_operation(name, "A", bytes_in=result.size)
                stored_checksums = dict(result.checksums)
                if checksums is not None:
                    stored_checksums.update(checksums())
                record = ObjectRecord(
                    bucket=bucket,
                    key=key,
                    size=result.size,
                    etag=quoted_etag(result.etag),
                    last_modified=self.clock.seconds(),
                    headers=headers,
                    metadata=metadata,
                    checksums=stored_checksums,
                    locations=(Location(name, target),),
                    tags=dict(tags or {}),
                    acl=acl,
                )
                try:
                    await self.commit(record, claim)
                except ClaimLostError as error:
                    log.error(
                        "the write intent of {bucket}/{key} on {backend} was taken over as "
                        "stale; not committing (the bytes may be the other writer's)",
                        bucket=bucket, key=key, backend=name,
                    )
                    raise errors.InternalError() from error
                except Exception as error:
                    if claim.committed:
                        raise  # committed; only the clean-up after it failed
                    await self._delete_bytes(name, target)
                    if isinstance(error, NoSuchBucketError):
                        raise errors.NoSuchBucket(BucketName=bucket) from None
                    log.failure(
                        "committing {bucket}/{key} failed; its bytes were removed",
                        Failure(error), bucket=bucket, key=key,
                    )
                    raise errors.InternalError() from error
                return record
        finally:
            release()

    def _adjust_usage(self, record: ObjectRecord, replaced: Replacement) -> None:
        for location in record.locations:
            self.usage.adjust(location.backend, record.size, 1)
        if replaced.previous_size is not None:
            for backend in {location.backend for location in replaced.previous_locations}:
                self.usage.adjust(backend, -replaced.previous_size, -1)

    async def _delete_bytes(self, backend: str, target: str) -> None:
        try:
            await self.pool.get(backend).delete_object(target)
        except Exception as error:
            log.warn(
                "could not delete {target} from {backend} ({error}); scrub will find it",
                target=target, backend=backend, error=error,
            )

    # -- deleting ------------------------------------------------------------------------

    async def delete_object(self, bucket: str, key: str) -> None:
        """Remove the row, then the bytes; deleting a missing key succeeds (S3 answers 204).
        Bytes another writer is about to commit over are left to that writer.

        :raises S3Error: NoSuchBucket.
        """
        token = uuid.uuid4().hex
        removed = await self.store.remove_object(bucket, key, self.write_intent(token))
        if removed.previous_size is None:
            await self.get_bucket(bucket)
            return
        for backend in {location.backend for location in removed.previous_locations}:
            self.usage.adjust(backend, -removed.previous_size, -1)
        await self.delete_claimed(removed.to_delete, token)


class _Claim:
    """A held write intent: its token, whether its write was committed, and whether the claims
    were released already (by the commit's transaction, or after deleting what it replaced)."""

    __slots__ = ("token", "committed", "released")

    def __init__(self, token: str) -> None:
        self.token = token
        self.committed = False
        self.released = False
