"""The S3 semantics of virtual buckets, independent of HTTP: where objects go, where metadata is
written, and how the two stay consistent.

Placement: :meth:`BackendPool.choose` ranks the eligible backends; the first one that accepts the
bytes wins.  A write that fails *before any body byte was consumed* moves on to the next choice
(up to ``balancer.retry_attempts`` attempts, ``balancer.retry_delay`` apart); once bytes went out
it fails, and the backend keeps nothing (its ``put_object`` contract).  A virtual bucket with
``replicas`` above 1 is written to that many backends at once and read from whichever answers:
:mod:`s3balance.replicated`, under the same rules.

Consistency rules, in order:

1. **Bytes at a location never change.**  Every write (PutObject, CopyObject, and the target of a
   multipart upload, chosen at CreateMultipartUpload) goes to a real key of its own, made by
   :func:`s3balance.realkeys.new_real_key`: no write can touch the bytes another row points at,
   so writers of one key never wait for each other and a stalled, failed or killed write cannot
   tear a visible object.
2. **The commit is the switch.**  Metadata is committed only after the backend confirmed the
   write, in one transaction that points the object row at the new location (the last commit
   wins) and, for a conditional write (``If-None-Match: *``, ``If-Match``), compares the locked
   current row with the condition first (compare and swap: of two racing conditional writers
   exactly one commits).  A write that cannot commit (condition failed, bucket deleted) deletes
   the bytes it wrote; a write abandoned half way (crash, kill) leaves only an orphan that no row
   references, which scrub removes.
3. **Replaced bytes outlive their readers.**  The commit (or delete) that unreferences a location
   queues it in ``pending_deletions`` in its own transaction, deletable ``delete_grace`` seconds
   later (the time a GET of another daemon sharing the database may still be streaming it).
   This daemon counts its own readers of each location and never deletes one being read: with no
   grace the bytes go as soon as the last local reader is done, otherwise housekeeping
   (:meth:`Gateway.sweep_deletions`) deletes them once due.  The queue row survives a crash.
   The bookkeeping is :class:`s3balance.retirement.Retirement`.

A GET reads the row, then the location the row names; when that location was replaced and
deleted in between, :meth:`Gateway.reading` raises :class:`ObjectChanged` and the caller starts
again from the row, so the ETag a client gets always belongs to the bytes it gets.

Operation classes counted per backend follow Cloudflare R2: class A (mutating or listing) for
PutObject, CopyObject, multipart calls and listings; class B (reads) for GetObject and
HeadObject on a backend; DeleteObject is free.  Listings and HeadObject are answered from the
metadata store, so they never reach a backend and are not counted (HeadObject still answers 503
when no location of the object is readable, as GetObject would).  In redirect mode a GetObject
answered with a presigned URL counts as one class-B read of the backend it points at.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Protocol

from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IBodyProducer

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
from s3balance.db.errors import MetadataUnavailable, MetadataUnreachable
from s3balance.db.records import BucketRecord, Location, ObjectPage, ObjectRecord
from s3balance.db.store import (
    UNCONDITIONAL,
    BucketNotEmptyError,
    Condition,
    MetadataStore,
    NoSuchBucketError,
    ObjectMissingError,
    PreconditionFailedError,
    Replacement,
)
from s3balance.etags import quoted_etag
from s3balance.names import check_client_metadata, validate_bucket_name, validate_key
from s3balance.operations import Operation
from s3balance.reads import ReadPlan, ReadRequest, plan_read
from s3balance.realkeys import new_real_key, new_write_id
from s3balance.rebuildmeta import reserved_metadata
from s3balance.replicated import NewObjectFields, ReplicaHealth, ReplicaPool, Replicas
from s3balance.retirement import ObjectChanged, Retirement
from s3balance.streams import StreamBodyProducer, restartable

log = Logger()

#: S3's limit for a single PUT.
MAX_PUT_SIZE = 5 * 1024**3
#: Attempts at reading an object whose location was replaced between the row and the bytes.
READ_ATTEMPTS = 5


#: One attempt's upload: ``(backend, real key, backend metadata) -> its result``.
Write = Callable[[IBackend, str, dict[str, str]], defer.Deferred[PutResult]]


@dataclass(frozen=True)
class NewObject:
    """What a write commits besides its bytes: the object row's fields the client chose."""

    bucket: str
    key: str
    headers: dict[str, str]
    metadata: dict[str, str]
    condition: Condition
    tags: dict[str, str]
    acl: str


class Pool(ReplicaPool, Protocol):
    """What the core needs of :class:`s3balance.pool.BackendPool` (beyond what the replicated
    paths need)."""

    def choose(self, bucket: str, key: str, size: int) -> list[str]: ...

    def over_read_limit(self, name: str) -> bool: ...


Health = ReplicaHealth


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
    #: Seconds a replaced or deleted location is kept for other daemons' readers (rule 3).
    delete_grace: float = 0.0
    #: Copies of each new object, by virtual bucket (``replicas``); absent: one.
    replicas: Mapping[str, int] = field(default_factory=dict)
    #: Copies a write of those buckets needs before it is visible (``write_quorum``), where fewer
    #: than all; absent: all.
    write_quorum: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: Config) -> GatewaySettings:
        return cls(
            retry_attempts=config.balancer.retry_attempts,
            retry_delay=config.balancer.retry_delay,
            allow_create_bucket=config.s3api.allow_create_bucket,
            region=config.s3api.region,
            proxy_mode=config.s3api.proxy_mode,
            presign_expiry=config.s3api.presign_expiry,
            delete_grace=config.server.effective_delete_grace(config.database.type),
            replicas={b.name: b.replicas for b in config.virtual_buckets if b.replicas > 1},
            write_quorum={
                b.name: b.write_quorum
                for b in config.virtual_buckets
                if 0 < b.write_quorum < b.replicas
            },
        )


#: Seconds a bucket seen to exist is taken to exist by the checks before a write: one lookup
#: (a trip to a database thread) a second instead of one per small PUT.
BUCKET_SEEN_FOR = 1.0
#: Buckets remembered at once (beyond, the memory starts again empty).
MAX_BUCKETS_SEEN = 10_000


def precondition_error(error: Exception, key: str) -> errors.S3Error:
    """The S3 error of a failed write condition (:mod:`s3balance.db.store`)."""
    if isinstance(error, ObjectMissingError):
        return errors.NoSuchKey(Key=key)
    return errors.PreconditionFailed(Condition=str(error) or "If-Match")


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
        #: Readers of each location and the deletion of unreferenced ones (rule 3).
        self.retirement = Retirement(store, pool, clock, lambda: self.settings.delete_grace)
        #: The write and read paths of buckets with ``replicas`` above 1.
        self.replicas = Replicas(self)
        #: Buckets lately seen to exist, until when (:meth:`_bucket_exists_before_write`).
        self._buckets_seen: dict[str, float] = {}

    def reconfigure(self, config: Config) -> None:
        """Take a reloaded configuration's settings; requests that start after this use them."""
        self.settings = GatewaySettings.from_config(config)

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
        self._buckets_seen.pop(name, None)
        try:
            await self.store.delete_bucket(name)
        except NoSuchBucketError:
            raise errors.NoSuchBucket(BucketName=name) from None
        except BucketNotEmptyError:
            raise errors.BucketNotEmpty(BucketName=name) from None

    # -- reading -------------------------------------------------------------------------

    async def read(self, bucket: str, key: str, wanted: ReadRequest) -> ReadPlan:
        """Answer a GetObject or HeadObject: the row, its conditions and range, then (GetObject)
        a redirect in redirect mode or an open stream of the bytes.  A location replaced and
        deleted between the row and the bytes is read again from the row (see the module
        docstring), at most :data:`READ_ATTEMPTS` times.

        The caller must ``async with`` a plan that has a stream (see :class:`ReadPlan`).

        :raises S3Error: NoSuchBucket, NoSuchKey, PreconditionFailed, InvalidRange, the part
            number's errors, ServiceUnavailable or SlowDown (as :meth:`readable_location`, also
            for a HeadObject), ServiceUnavailable when the object kept changing.
        """
        for _ in range(READ_ATTEMPTS):
            record = await self.get_object_record(bucket, key)
            plan = plan_read(record, wanted)
            if plan.not_modified:
                return plan
            if not wanted.with_body:
                self.readable_location(record)
                return plan
            if plan.part_number is None and wanted.may_redirect and not self.settings.proxy_mode:
                # A presigned URL cannot carry a part's range: parts are always proxied.
                plan.redirect = self.presigned_url(record, dict(wanted.response_overrides))
                if plan.redirect is not None:
                    return plan
            try:
                await plan.open(self.reading(record, plan.byte_range))
            except ObjectChanged:
                continue  # overwritten between the row and the bytes: read the new object
            return plan
        raise errors.ServiceUnavailable("The object kept changing while it was read; retry.")

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
        if len(record.locations) > 1:
            return self.replicas.readable(record)[0]
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

    @asynccontextmanager
    async def reading(
        self, record: ObjectRecord, byte_range: tuple[int, int] | None = None
    ) -> AsyncIterator[IObjectStream]:
        """Read ``record``'s bytes (a range of them) from its backend, counted as a reader of the
        location until the block ends, so the location is not deleted under it (rule 3).

        The block must consume or discard the stream before it ends.

        :raises ObjectChanged: the location was replaced and deleted after ``record`` was read
            (read the row again).
        :raises S3Error: as :meth:`readable_location`; NoSuchKey when the backend lost the bytes
            (a dangling row, logged for the operator).
        """
        if len(record.locations) > 1:
            async with self.replicas.reading(record, byte_range) as replicated:
                yield replicated
            return
        location = self.readable_location(record)
        async with self.retirement.holding(location):
            yield await self._open(record, location, byte_range)

    @asynccontextmanager
    async def copy_source(
        self, source: ObjectRecord, byte_range: tuple[int, int] | None = None
    ) -> AsyncIterator[StreamBodyProducer]:
        """The bytes of a copy's source (CopyObject, UploadPartCopy) as the body of the
        target's upload, read as :meth:`reading` does; the stream is let go however the block
        ends.

        :raises S3Error: NoSuchKey when the source was replaced and deleted meanwhile; as
            :meth:`reading`.
        """
        try:
            async with self.reading(source, byte_range) as stream:
                producer = StreamBodyProducer(stream)
                try:
                    yield producer
                finally:
                    producer.discard()
        except ObjectChanged:
            raise _source_changed() from None

    @asynccontextmanager
    async def holding_source(self, location: Location) -> AsyncIterator[None]:
        """A copy's source copied on its own backend (server-side), counted as a reader
        (:meth:`holding`).

        :raises S3Error: NoSuchKey when the source was replaced and deleted meanwhile.
        """
        try:
            async with self.holding(location):
                yield
        except ObjectChanged:
            raise _source_changed() from None

    def holding(self, location: Location) -> AbstractAsyncContextManager[None]:
        """Count a reader of ``location`` that reads it some other way than :meth:`reading`
        (a server-side copy on its backend): :meth:`Retirement.holding`."""
        return self.retirement.holding(location)

    def readers_of(self, location: Location) -> int:
        """How many reads of ``location`` this daemon has in progress."""
        return self.retirement.readers_of(location)

    async def _open(
        self, record: ObjectRecord, location: Location, byte_range: tuple[int, int] | None
    ) -> IObjectStream:
        backend = self.pool.get(location.backend)
        try:
            stream = await backend.get_object(location.real_key, byte_range)
        except BackendNoSuchKey:
            current = await self.store.get_object(record.bucket, record.key)
            if current is None or location not in current.locations:
                raise ObjectChanged() from None
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
        self.pool.record_operation(location.backend, "GetObject", bytes_out=stream.length)
        return stream

    def presigned_url(self, record: ObjectRecord, response_overrides: dict[str, str]) -> str | None:
        """Redirect mode: a presigned GET URL of ``record``'s bytes on the backend chosen as for a
        read, valid ``presign_expiry`` seconds, or ``None`` when that backend cannot presign (a
        local directory) and the read must be proxied.

        The URL pins no range, so a client that follows the redirect with its ``Range`` header
        gets the range from the backend.  A URL handed out counts as the GetObject it will
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
        self.pool.record_operation(location.backend, "GetObject")
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

    async def check_before_write(self, bucket: str, key: str, condition: Condition) -> None:
        """Fail fast, before any body byte is read: the bucket must exist and ``condition`` hold
        now (it is judged again, atomically, at the commit).

        :raises S3Error: NoSuchBucket, PreconditionFailed, NoSuchKey (``If-Match`` on a missing
            key).
        """
        if not condition:
            await self._bucket_exists_before_write(bucket)
            return
        current = await self.store.get_object(bucket, key)
        if current is None:
            await self._bucket_exists_before_write(bucket)
        try:
            condition.check(None if current is None else current.etag)
        except (PreconditionFailedError, ObjectMissingError) as error:
            raise precondition_error(error, key) from None

    async def _bucket_exists_before_write(self, bucket: str) -> None:
        """The bucket check of :meth:`check_before_write`, asked of the database at most once
        per :data:`BUCKET_SEEN_FOR` seconds for a bucket that exists.

        It only saves a doomed write its bytes: the commit finds the bucket again under lock
        (rule 2), and a write whose bucket was deleted meanwhile deletes what it wrote and
        answers NoSuchBucket, whether the bucket went a millisecond or a second before.  A
        missing bucket is never remembered.

        :raises S3Error: NoSuchBucket.
        """
        now = self.clock.seconds()
        seen_until = self._buckets_seen.get(bucket)
        if seen_until is not None and now < seen_until:
            return
        await self.get_bucket(bucket)
        if len(self._buckets_seen) >= MAX_BUCKETS_SEEN:
            self._buckets_seen.clear()
        self._buckets_seen[bucket] = now + BUCKET_SEEN_FOR

    async def put_object(
        self,
        bucket: str,
        key: str,
        body: IBodyProducer,
        length: int,
        headers: Mapping[str, str],
        metadata: Mapping[str, str],
        checksums: Callable[[], dict[str, str]] | None = None,
        condition: Condition = UNCONDITIONAL,
        tags: Mapping[str, str] | None = None,
        acl: str = "private",
    ) -> ObjectRecord:
        """Store a new object from a streamed body and make it visible.

        :param body: the producer; when it has ``restartable()`` returning true, a backend that
            refused before reading it may be replaced by the next choice.
        :param checksums: called after the body was fully read; ``x-amz-checksum-*`` values to
            keep with the object (lower-case names).
        :param condition: ``If-None-Match``/``If-Match``, checked before the body and at the
            commit.
        :returns: the committed record (its ETag is the backend's).
        :raises S3Error: NoSuchBucket, EntityTooLarge, ServiceUnavailable when no backend can take
            it, PreconditionFailed, the body's own error (BadDigest...), or a backend error
            mapped for clients.
        """
        new = await self._new_object(
            bucket, key, headers, metadata, condition, tags, acl, size=length
        )
        if self.replicas.copies(bucket) > 1:
            return await self.replicas.place(new, length, body, checksums)

        def write(
            backend: IBackend, target: str, backend_metadata: dict[str, str]
        ) -> defer.Deferred[PutResult]:
            return backend.put_object(target, body, length, dict(headers), backend_metadata)

        return await self._place(new, length, write, lambda: restartable(body), checksums)

    async def copy_object(
        self,
        source: ObjectRecord,
        bucket: str,
        key: str,
        headers: Mapping[str, str],
        metadata: Mapping[str, str],
        condition: Condition = UNCONDITIONAL,
        tags: Mapping[str, str] | None = None,
        acl: str = "private",
    ) -> ObjectRecord:
        """Copy ``source`` to ``bucket``/``key`` with the given stored headers and metadata (the
        caller has applied the metadata and tagging directives).

        The pool chooses the target as for a new object; when that is a backend holding the
        source, the copy is server-side, otherwise the bytes stream from one backend into the
        other with backpressure.

        :param condition: on the destination, as for :meth:`put_object`.
        """
        new = await self._new_object(bucket, key, headers, metadata, condition, tags, acl)
        if self.replicas.copies(bucket) > 1:
            return await self.replicas.copy(source, new)
        source_location = self.readable_location(source)

        def write(
            backend: IBackend, target: str, backend_metadata: dict[str, str]
        ) -> defer.Deferred[PutResult]:
            return defer.ensureDeferred(
                self._copy(source, source_location, backend, target, headers, backend_metadata)
            )

        kept = dict(source.checksums)
        in_place = source.bucket == bucket and source.key == key
        return await self._place(
            new,
            source.size,
            write,
            lambda: True,
            lambda: kept,
            prefer=source_location.backend if in_place else None,
            server_side_on=source_location.backend,
        )

    async def _copy(
        self,
        source: ObjectRecord,
        location: Location,
        target_backend: IBackend,
        target: str,
        headers: Mapping[str, str],
        metadata: Mapping[str, str],
    ) -> PutResult:
        """Copy ``source`` to ``target``: server-side when the target backend holds it at
        ``location``, otherwise streamed from one backend into the other with backpressure.

        :raises S3Error: NoSuchKey when the source was replaced and deleted meanwhile.
        """
        if target_backend.name == location.backend:
            async with self.holding_source(location):
                return await target_backend.copy_object(
                    location.real_key, target, dict(headers), dict(metadata)
                )
        async with self.copy_source(source) as body:
            return await target_backend.put_object(
                target, body, body.length, dict(headers), dict(metadata)
            )

    async def _new_object(
        self,
        bucket: str,
        key: str,
        headers: Mapping[str, str],
        metadata: Mapping[str, str],
        condition: Condition,
        tags: Mapping[str, str] | None,
        acl: str,
        size: int | None = None,
    ) -> NewObject:
        """The checks every write makes before its bytes move (names, size, then
        :meth:`check_before_write`), and what it will commit.

        :param size: a PUT's length, at most :data:`MAX_PUT_SIZE`.
        """
        validate_key(key)
        check_client_metadata(metadata)
        if size is not None and size > MAX_PUT_SIZE:
            raise errors.EntityTooLarge(ProposedSize=str(size), MaxSizeAllowed=str(MAX_PUT_SIZE))
        await self.check_before_write(bucket, key, condition)
        return NewObject(
            bucket, key, dict(headers), dict(metadata), condition, dict(tags or {}), acl
        )

    async def _place(
        self,
        new: NewObject,
        size: int,
        write: Write,
        restartable: Callable[[], bool],
        checksums: Callable[[], dict[str, str]] | None,
        prefer: str | None = None,
        server_side_on: str | None = None,
    ) -> ObjectRecord:
        """Write to the best backend that takes it, then commit; the retry loop of the module
        docstring.

        :param server_side_on: the backend on which ``write`` is a CopyObject (a PutObject
            elsewhere), for the operation counts.
        :raises S3Error: see callers."""
        bucket, key = new.bucket, new.key
        candidates = self.pool.choose(bucket, key, size)
        if ENCRYPTION_HEADER in new.headers:
            candidates = self.encrypting(candidates)
        if prefer is not None and prefer in candidates:
            candidates = [prefer] + [name for name in candidates if name != prefer]
        if not candidates:
            await self.get_bucket(bucket)
            raise errors.InsufficientStorage()
        attempts = max(1, self.settings.retry_attempts)
        last_error: BackendUnavailable | None = None
        for attempt, name in enumerate(candidates[:attempts]):
            if attempt:
                await task.deferLater(self.clock, self.settings.retry_delay, lambda: None)
            operation: Operation = "CopyObject" if name == server_side_on else "PutObject"
            outcome = await self._write_and_commit(name, new, size, write, checksums, operation)
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

    def new_location(self, bucket: str, key: str) -> tuple[str, dict[str, str]]:
        """A fresh real key for one write of ``bucket``/``key`` and its extra backend metadata
        (:func:`new_real_key`)."""
        return new_real_key(bucket, key, new_write_id(self.clock.seconds()))

    async def _write_and_commit(
        self,
        name: str,
        new: NewObject,
        size: int,
        write: Write,
        checksums: Callable[[], dict[str, str]] | None,
        operation: Operation,
    ) -> ObjectRecord | BackendUnavailable:
        """One attempt on one backend, at a real key of its own; a refusal that may be retried
        is returned, every other failure raised."""
        backend = self.pool.get(name)
        target, extra_metadata = self.new_location(new.bucket, new.key)
        release = self.pool.reserve(name, size)
        try:
            try:
                result = await write(
                    backend, target, self.backend_metadata(new, extra_metadata, checksums)
                )
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
            self.pool.record_operation(name, operation, bytes_in=result.size)
            record = self.new_record(new, result, (Location(name, target),), checksums)
            await self.commit(record, new.condition)
            return record
        finally:
            release()

    def backend_metadata(
        self,
        new: NewObjectFields,
        extra_metadata: Mapping[str, str],
        checksums: Callable[[], dict[str, str]] | None,
    ) -> dict[str, str]:
        """What a write stores as backend metadata: the client's, what its real key needs
        (:meth:`new_location`) and the reserved entries a rebuild reads
        (:mod:`s3balance.rebuildmeta`)."""
        stored = {**new.metadata, **extra_metadata}
        stored.update(
            reserved_metadata(new.key, new.headers, stored, new.tags, new.acl, checksums)
        )
        return stored

    def new_record(
        self,
        new: NewObjectFields,
        result: PutResult,
        locations: tuple[Location, ...],
        checksums: Callable[[], dict[str, str]] | None,
    ) -> ObjectRecord:
        """The row a write commits once its bytes are stored at ``locations``."""
        stored_checksums = dict(result.checksums)
        if checksums is not None:
            stored_checksums.update(checksums())
        return ObjectRecord(
            bucket=new.bucket,
            key=new.key,
            size=result.size,
            etag=quoted_etag(result.etag),
            last_modified=self.clock.seconds(),
            headers=new.headers,
            metadata=new.metadata,
            checksums=stored_checksums,
            locations=locations,
            tags=new.tags,
            acl=new.acl,
        )

    async def commit(
        self,
        record: ObjectRecord,
        condition: Condition = UNCONDITIONAL,
        upload_id: str | None = None,
        short: bool = False,
    ) -> Replacement:
        """Make ``record`` (whose bytes are at its fresh location) the visible object: compare
        and swap ``condition`` in the commit's transaction, then retire what it replaced.

        When it cannot commit, its bytes are deleted (nobody else references a fresh location).

        :param upload_id: commit as the completion of this multipart upload (dropping it).
        :param short: the object has fewer copies than its bucket's ``replicas``
            (``write_quorum``): queue it for repair in the same transaction.  A record with
            fewer locations than ``replicas`` is short whatever the caller says (a multipart
            upload that dropped copies on the way).
        :raises S3Error: PreconditionFailed, NoSuchKey (``If-Match`` on a missing key),
            NoSuchBucket, NoSuchUpload (``upload_id`` gone meanwhile), InternalError.
        """
        delete_after = self.clock.seconds() + self.settings.delete_grace
        short = short or len(record.locations) < self.replicas.copies(record.bucket)
        try:
            if upload_id is None:
                replaced = await self.store.commit_object(record, condition, delete_after, short)
            else:
                replaced = await self.store.finish_upload(
                    upload_id, record, condition, delete_after, short
                )
        except Exception as error:
            if not await self._committed_anyway(record, error):
                for location in record.locations:
                    await self.retirement.delete_bytes(location.backend, location.real_key)
            raise self._commit_error(error, record, upload_id) from error
        self._adjust_usage(record, replaced)
        await self.retirement.retire(replaced)
        return replaced

    async def _committed_anyway(self, record: ObjectRecord, error: Exception) -> bool:
        """Whether the bytes of a commit that failed with ``error`` must stay: the commit may
        have happened all the same (the connection broke while committing), or another
        completion of the same multipart upload committed the same location."""
        if isinstance(error, (NoSuchBucketError, MetadataUnreachable)):
            return False  # nothing was committed (no connection was had: no statement sent)
        try:
            current = await self.store.get_object(record.bucket, record.key)
        except Exception:
            return True  # unknown: keep the bytes; scrub tells an orphan from a row's bytes
        return current is not None and record.locations[0] in current.locations

    def _commit_error(
        self, error: Exception, record: ObjectRecord, upload_id: str | None
    ) -> errors.S3Error:
        if isinstance(error, (PreconditionFailedError, ObjectMissingError)):
            return precondition_error(error, record.key)
        if isinstance(error, NoSuchBucketError):
            return errors.NoSuchBucket(BucketName=record.bucket)
        if isinstance(error, KeyError) and upload_id is not None:
            return errors.NoSuchUpload(UploadId=upload_id)
        if isinstance(error, errors.S3Error):
            return error
        if isinstance(error, MetadataUnavailable):
            log.warn(
                "committing {bucket}/{key}: the database is unavailable: {error}",
                bucket=record.bucket, key=record.key, error=error,
            )  # fmt: skip
            return errors.ServiceUnavailable("The metadata store is unavailable; retry later.")
        log.failure(
            "committing {bucket}/{key} failed",
            Failure(error), bucket=record.bucket, key=record.key,
        )
        return errors.InternalError()

    def _adjust_usage(self, record: ObjectRecord, replaced: Replacement) -> None:
        for location in record.locations:
            self.usage.adjust(location.backend, record.size, 1)
        if replaced.previous_size is not None:
            for backend in {location.backend for location in replaced.previous_locations}:
                self.usage.adjust(backend, -replaced.previous_size, -1)

    async def sweep_deletions(self, limit: int = 1000) -> int:
        """Housekeeping: :meth:`Retirement.sweep`."""
        return await self.retirement.sweep(limit)

    # -- deleting ------------------------------------------------------------------------

    async def delete_object(
        self, bucket: str, key: str, condition: Condition = UNCONDITIONAL
    ) -> None:
        """Remove the row, then (rule 3) the bytes; deleting a missing key succeeds (S3 answers
        204) unless ``condition`` has ``If-Match``.

        :raises S3Error: NoSuchBucket, PreconditionFailed, NoSuchKey (``If-Match``).
        """
        delete_after = self.clock.seconds() + self.settings.delete_grace
        try:
            removed = await self.store.remove_object(bucket, key, condition, delete_after)
        except (PreconditionFailedError, ObjectMissingError) as error:
            if isinstance(error, ObjectMissingError):
                await self.get_bucket(bucket)
            raise precondition_error(error, key) from None
        if removed.previous_size is None:
            await self.get_bucket(bucket)
            return
        for backend in {location.backend for location in removed.previous_locations}:
            self.usage.adjust(backend, -removed.previous_size, -1)
        await self.retirement.retire(removed)


def _source_changed() -> errors.S3Error:
    return errors.NoSuchKey("The source object changed during the copy.")
