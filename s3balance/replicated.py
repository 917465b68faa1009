"""Objects of a virtual bucket with ``replicas: N`` above 1: written to N backends at once, read
from whichever answers.

**Writes.**  :meth:`Replicas.place` asks the pool for N distinct backends, in distinct zones where
there are enough (:meth:`BackendPool.choose_replicas
<s3balance.pool.BackendPool.choose_replicas>`), and refuses the write with 503
(InsufficientStorage) when fewer than N can take it: an object is never stored with fewer copies
than its bucket promises.  The body streams to the N backends at once through a
:class:`~s3balance.fanout.FanOut`, at the pace of the slowest.  The object becomes visible only
when all N confirmed, by one commit of a row with N locations (usage counts each copy on its
backend); with ``write_quorum: W`` below N, a copy that fails is dropped while W are left and the
row commits the copies stored, queued for repair in its transaction (repair makes the others).
When too many copies fail, the others are abandoned (their uploads are aborted before the last
byte) and every copy that was stored all the same (it confirmed before another failed) is queued
in ``pending_deletions`` and deleted: nothing is visible and nothing is left.  A backend that
refused before any body byte was sent is replaced by another choice, as for single writes (with a
quorum, it is dropped instead).

**Reads.**  :meth:`Replicas.reading` tries the replicas in the pool's read order (healthy ones,
fastest probe first, taking turns among equals) and serves the first that opens; a replica that
breaks mid-body is taken over by the next from the byte reached (:mod:`s3balance.failover`).  All
replicas count as being read for the whole read, so none is deleted under a failover.

Deletes need nothing here: a row's every location is queued for deletion by the commit or delete
that unreferences it.  A copy lost later (a backend wiped, down or gone) and a reload's new
``replicas`` are :mod:`s3balance.repair`'s business.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet import defer, task
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
from s3balance.db.records import Location, ObjectRecord
from s3balance.failover import NoReplicaLeft, open_replicas
from s3balance.fanout import Branch, FanOut, ReplicaLost
from s3balance.logs import make_logger
from s3balance.operations import Operation
from s3balance.streams import StreamBodyProducer

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from s3balance.db.store import Condition, MetadataStore, Replacement
    from s3balance.retirement import Retirement

__all__ = ["Replicas", "abandon_the_others"]

log = make_logger()


class NewObjectFields(Protocol):
    """What a write commits besides its bytes (the gateway's ``NewObject``)."""

    @property
    def bucket(self) -> str: ...
    @property
    def key(self) -> str: ...
    @property
    def headers(self) -> dict[str, str]: ...
    @property
    def metadata(self) -> dict[str, str]: ...
    @property
    def condition(self) -> Condition: ...
    @property
    def tags(self) -> dict[str, str]: ...
    @property
    def acl(self) -> str: ...


class Settings(Protocol):
    @property
    def replicas(self) -> Mapping[str, int]: ...
    @property
    def write_quorum(self) -> Mapping[str, int]: ...
    @property
    def retry_attempts(self) -> int: ...
    @property
    def retry_delay(self) -> float: ...


class ReplicaPool(Protocol):
    """What the replicated paths ask of :class:`s3balance.pool.BackendPool` (the gateway's
    ``Pool`` asks this and more)."""

    def get(self, name: str) -> IBackend: ...

    def names(self) -> list[str]: ...

    def is_available(self, name: str) -> bool: ...

    def choose_replicas(
        self, bucket: str, key: str, size: int, count: int, exclude: Collection[str] = ()
    ) -> list[str]: ...

    def read_order(self, names: Sequence[str]) -> list[str]: ...

    def reserve(self, name: str, size: int) -> Callable[[], None]: ...

    def record_operation(
        self, name: str, operation: Operation, bytes_in: int = 0, bytes_out: int = 0
    ) -> None: ...


class ReplicaHealth(Protocol):
    """Where data-path failures go (:class:`s3balance.health.HealthMonitor`)."""

    def mark_failure(self, name: str, error: str) -> None: ...


class ReplicaHost(Protocol):
    """What the replicated paths use of the gateway (:class:`s3balance.gateway.Gateway`): its
    settings and parts, the commit, and how it opens, holds and deletes locations."""

    @property
    def store(self) -> MetadataStore: ...
    @property
    def pool(self) -> ReplicaPool: ...
    @property
    def health(self) -> ReplicaHealth: ...
    @property
    def clock(self) -> IReactorTime: ...

    @property
    def settings(self) -> Settings: ...

    def encrypting(self, candidates: list[str]) -> list[str]: ...

    async def get_bucket(self, name: str) -> Any: ...

    def new_location(self, bucket: str, key: str) -> tuple[str, dict[str, str]]: ...

    def backend_metadata(
        self,
        new: NewObjectFields,
        extra_metadata: Mapping[str, str],
        checksums: Callable[[], dict[str, str]] | None,
    ) -> dict[str, str]: ...

    def new_record(
        self,
        new: NewObjectFields,
        result: PutResult,
        locations: tuple[Location, ...],
        checksums: Callable[[], dict[str, str]] | None,
    ) -> ObjectRecord: ...

    async def commit(
        self,
        record: ObjectRecord,
        condition: Condition = ...,
        upload_id: str | None = ...,
        short: bool = ...,
    ) -> Replacement: ...

    def holding(self, location: Location) -> AbstractAsyncContextManager[None]: ...

    def reading(
        self, record: ObjectRecord, byte_range: tuple[int, int] | None = None
    ) -> AbstractAsyncContextManager[IObjectStream]: ...

    def copy_source(
        self, source: ObjectRecord, byte_range: tuple[int, int] | None = None
    ) -> AbstractAsyncContextManager[StreamBodyProducer]: ...

    async def _open(
        self, record: ObjectRecord, location: Location, byte_range: tuple[int, int] | None
    ) -> IObjectStream: ...

    @property
    def retirement(self) -> Retirement: ...


def abandon_the_others(failure: Failure, fan: FanOut, branch: Branch) -> Failure:
    """Errback of one copy's upload: abandon the write, or (``write_quorum``) only this copy
    while enough are left."""
    if not failure.check(ReplicaLost):
        if fan.quorum < len(fan.branches):
            fan.lose(branch)
        else:
            fan.abort(ReplicaLost("another copy of this write failed"))
    return failure


class Replicas:
    """The replicated write and read paths of one gateway."""

    def __init__(self, gateway: ReplicaHost) -> None:
        self.gateway = gateway

    def copies(self, bucket: str) -> int:
        """How many copies a new object of ``bucket`` gets (``replicas``; 1 when not set)."""
        return self.gateway.settings.replicas.get(bucket, 1)

    def quorum(self, bucket: str) -> int:
        """How many copies a write of ``bucket`` needs to succeed (``write_quorum``)."""
        return self.gateway.settings.write_quorum.get(bucket, self.copies(bucket))

    # -- writing -----------------------------------------------------------------------------

    async def place(
        self,
        new: NewObjectFields,
        size: int,
        body: IBodyProducer,
        checksums: Callable[[], dict[str, str]] | None,
    ) -> ObjectRecord:
        """Write ``body`` to :meth:`copies` backends at once and commit them as one object.

        :raises S3Error: InsufficientStorage (503) when fewer backends than copies can take it,
            the body's own error, a backend's error mapped for clients, or the commit's errors.
        """
        gateway = self.gateway
        count = self.copies(new.bucket)
        refused: set[str] = set()
        if ENCRYPTION_HEADER in new.headers:
            everyone = gateway.pool.names()
            refused.update(set(everyone) - set(gateway.encrypting(everyone)))
        attempts = max(1, gateway.settings.retry_attempts)
        last_error: BackendUnavailable | None = None
        for attempt in range(attempts):
            names = gateway.pool.choose_replicas(new.bucket, new.key, size, count, refused)
            if len(names) < count:
                if last_error is not None:
                    break
                await gateway.get_bucket(new.bucket)
                raise errors.InsufficientStorage(
                    f"This bucket keeps {count} copies of each object, and only {len(names)} "
                    "storage backends can take this one now."
                )
            if attempt:
                await task.deferLater(gateway.clock, gateway.settings.retry_delay, lambda: None)
            fan = FanOut(body, count, self.quorum(new.bucket))
            outcome = await self._write_and_commit(names, fan, new, size, checksums)
            if isinstance(outcome, ObjectRecord):
                return outcome
            last_error = outcome
            refused.add(outcome.backend)
            if outcome.body_started or fan.written or not fan.restartable():
                break
            log.warn(
                "backend {backend} refused a copy of {bucket}/{key} before the body: {detail}; "
                "trying another choice",
                backend=outcome.backend, bucket=new.bucket, key=new.key, detail=outcome.detail,
            )  # fmt: skip
        assert last_error is not None
        raise backend_error_to_s3(last_error)

    async def copy(self, source: ObjectRecord, new: NewObjectFields) -> ObjectRecord:
        """CopyObject into a replicated bucket: the source (from one of its replicas) streams
        into the copies as a client's body would.

        :raises S3Error: NoSuchKey when the source was replaced and deleted meanwhile; as
            :meth:`place`.
        """
        kept = dict(source.checksums)
        async with self.gateway.copy_source(source) as body:
            return await self.place(new, body.length, body, lambda: kept)

    async def _write_and_commit(
        self,
        names: list[str],
        fan: FanOut,
        new: NewObjectFields,
        size: int,
        checksums: Callable[[], dict[str, str]] | None,
    ) -> ObjectRecord | BackendUnavailable:
        """One attempt: every copy at the write's fresh real key, then one commit of them all.  A
        refusal that may be retried elsewhere is returned; every other failure raised."""
        gateway = self.gateway
        locations: list[Location] = []
        puts: list[defer.Deferred[PutResult]] = []
        releases = [gateway.pool.reserve(name, size) for name in names]
        try:
            # One real key for every copy (on distinct backends): one write, one write id, so
            # a rebuild from the backends sees the copies as one write.
            target, extra_metadata = gateway.new_location(new.bucket, new.key)
            backend_metadata = gateway.backend_metadata(new, extra_metadata, checksums)
            for name, branch in zip(names, fan.branches, strict=True):
                locations.append(Location(name, target))
                put = gateway.pool.get(name).put_object(
                    target, branch, size, dict(new.headers), dict(backend_metadata)
                )
                put.addErrback(self._abandon_the_others, fan, branch)
                puts.append(put)
            outcomes = await defer.DeferredList(puts, consumeErrors=True)
            stored = [loc for loc, (ok, _) in zip(locations, outcomes, strict=True) if ok]
            failures: list[Failure] = [result for ok, result in outcomes if not ok]  # type: ignore[misc]
            if failures and (fan.failed or len(stored) < fan.quorum):
                await gateway.retirement.discard(stored)
                return self._failed(failures, fan)
            if failures:
                self._short_of_copies(failures, new, len(stored), count=len(names))
            results: list[PutResult] = [result for ok, result in outcomes if ok]
            for location, result in zip(stored, results, strict=True):
                gateway.pool.record_operation(location.backend, "PutObject", bytes_in=result.size)
            record = gateway.new_record(new, results[0], tuple(stored), checksums)
            await gateway.commit(record, new.condition, short=len(stored) < len(names))
            return record
        finally:
            for release in releases:
                release()

    _abandon_the_others = staticmethod(abandon_the_others)

    def _short_of_copies(
        self, failures: list[Failure], new: NewObjectFields, stored: int, count: int
    ) -> None:
        """A write with ``write_quorum`` succeeded with fewer copies than ``replicas``: note the
        backends that failed; repair makes the missing copies."""
        for failure in failures:
            cause = failure.value
            if isinstance(cause, BackendUnavailable) and not isinstance(
                cause, BackendCannotEncrypt
            ):
                self.gateway.health.mark_failure(cause.backend, cause.detail)
        log.warn(
            "{bucket}/{key} stored with {stored} of {count} copies (write_quorum); repair will "
            "make the others",
            bucket=new.bucket, key=new.key, stored=stored, count=count,
        )  # fmt: skip

    def _failed(self, failures: list[Failure], fan: FanOut) -> BackendUnavailable:
        """The outcome of an attempt whose copies did not all succeed: the first failure that
        is not only the consequence of another (a retryable refusal is returned, the rest
        raised)."""
        causes = [f for f in failures if not f.check(ReplicaLost)] or failures
        cause = causes[0].value
        if isinstance(cause, BackendUnavailable):
            if not isinstance(cause, BackendCannotEncrypt):
                self.gateway.health.mark_failure(cause.backend, cause.detail)
            if fan.written and not cause.body_started:
                return BackendUnavailable(cause.backend, cause.detail, body_started=True)
            return cause
        if isinstance(cause, BackendError):
            log.error(
                "writing a copy to {backend} failed: {detail}",
                backend=cause.backend, detail=cause.detail,
            )  # fmt: skip
            raise backend_error_to_s3(cause) from cause
        causes[0].raiseException()
        raise AssertionError("unreachable")

    # -- reading -----------------------------------------------------------------------------

    def readable(self, record: ObjectRecord) -> list[Location]:
        """``record``'s locations a read may use, in the order to try them.

        :raises S3Error: ServiceUnavailable when none is enabled and healthy, SlowDown when
            those that are have used their class-B budget.
        """
        pool = self.gateway.pool
        by_backend = {location.backend: location for location in record.locations}
        order = pool.read_order([location.backend for location in record.locations])
        if order:
            return [by_backend[name] for name in order]
        if any(pool.is_available(name) for name in by_backend):
            raise errors.SlowDown("The storage holding this object has used its read budget.")
        raise errors.ServiceUnavailable("No storage backend holding this object is available.")

    @asynccontextmanager
    async def reading(
        self, record: ObjectRecord, byte_range: tuple[int, int] | None
    ) -> AsyncIterator[IObjectStream]:
        """The bytes of ``record`` from the first replica that answers, failing over to the
        others mid-body; every replica counts as being read until the block ends.

        :raises ObjectChanged: the row moved on (a replica was replaced and deleted meanwhile).
        :raises S3Error: as :meth:`readable`; NoSuchKey when no replica has the bytes, 503 when
            none answers.
        """
        gateway = self.gateway
        order = self.readable(record)
        async with AsyncExitStack() as held:
            for location in record.locations:
                await held.enter_async_context(gateway.holding(location))

            async def open_one(
                location: Location, byte_range: tuple[int, int] | None
            ) -> IObjectStream:
                try:
                    return await gateway._open(record, location, byte_range)
                except errors.S3Error as error:
                    cause = error.__cause__
                    if isinstance(cause, BackendError):
                        raise cause from None
                    if isinstance(error, errors.NoSuchKey):
                        raise BackendNoSuchKey(location.backend, "missing") from None
                    raise BackendUnavailable(location.backend, str(error)) from None

            try:
                stream = await open_replicas(order, byte_range, record.size, open_one)
            except NoReplicaLeft as failure:
                if all(isinstance(e, BackendNoSuchKey) for e in failure.errors):
                    raise errors.NoSuchKey(Key=record.key) from None
                raise backend_error_to_s3(failure) from None
            yield stream
