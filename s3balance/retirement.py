"""Rule 3 of :mod:`s3balance.gateway`: replaced bytes outlive their readers.

The commit (or delete) that unreferences a location queues it in ``pending_deletions`` in its own
transaction, deletable ``delete_grace`` seconds later (the time a GET of another daemon sharing
the database may still be streaming it).  This daemon counts its own readers of each location
(:meth:`Retirement.holding`) and never deletes one being read: with no grace the bytes go as soon
as the last local reader is done, otherwise housekeeping (:meth:`Retirement.sweep`) deletes them
once due.  The queue row survives a crash.

The same queue holds the backend uploads of replicated multipart uploads that no row references
any more (a copy that failed a part, an upload aborted or expired): the sweep aborts such an upload
on its backend, then forgets the row (:func:`remove_abandoned`).  It never deletes the key of such
a row: a dropped copy's key may be where repair puts a new copy of the completed object later.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Protocol

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from s3balance.backends.interface import BackendNoSuchKey, IBackend
from s3balance.db.records import Location
from s3balance.db.store import MetadataStore, PendingDeletion, Replacement

log = Logger()


class ObjectChanged(Exception):
    """The location a read was about to open was replaced and deleted since the row was read:
    read the row again."""


class _ForgetQueue:
    """Forgets deletion queue rows in batches: one transaction for every row whose bytes were
    deleted while the previous transaction ran, instead of one each.  Under a stream of small
    PUTs replacing objects, that is one write transaction less per PUT.  Each caller still
    waits until its own row is gone (or learns that forgetting it failed)."""

    def __init__(self, store: MetadataStore) -> None:
        self.store = store
        self._ids: list[int] = []
        self._waiters: list[defer.Deferred[None]] = []
        self._running = False

    def forget(self, pending: int) -> defer.Deferred[None]:
        done: defer.Deferred[None] = defer.Deferred()
        self._ids.append(pending)
        self._waiters.append(done)
        if not self._running:
            self._next()
        return done

    def _next(self) -> None:
        ids, waiters = self._ids, self._waiters
        self._ids, self._waiters = [], []
        self._running = True
        forgetting = defer.maybeDeferred(self.store.forget_deletions, ids)

        def finished(outcome: None | Failure) -> None:
            self._running = False
            for waiter in waiters:
                if isinstance(outcome, Failure):
                    waiter.errback(outcome)
                else:
                    waiter.callback(None)
            if self._ids:
                self._next()

        forgetting.addBoth(finished)


class Backends(Protocol):
    """What retiring needs of :class:`s3balance.pool.BackendPool`."""

    def get(self, name: str) -> IBackend: ...


async def _remove(pool: Backends, location: Location, backend_upload_id: str | None) -> None:
    """Delete a queued location's bytes, or abort the backend upload it is.

    :raises Exception: the backend could not do it now (or is not configured any more).
    """
    backend = pool.get(location.backend)
    if backend_upload_id is not None:
        await backend.abort_multipart_upload(location.real_key, backend_upload_id)
        return
    try:
        await backend.delete_object(location.real_key)
    except BackendNoSuchKey:
        pass


async def remove_abandoned(
    store: MetadataStore, pool: Backends, queued: Sequence[PendingDeletion]
) -> int:
    """Abort the queued backend uploads now, forgetting the rows of those done; the others
    stay queued for the sweep.  Nobody reads an unfinished upload: no reader to wait for.

    :returns: how many were done.
    """
    done: list[int] = []
    for pending in queued:
        try:
            await _remove(pool, pending.location, pending.backend_upload_id)
        except Exception as error:
            log.warn(
                "could not abort upload {upload} of {target} on {backend} ({error}); retrying "
                "later",
                upload=pending.backend_upload_id, target=pending.location.real_key,
                backend=pending.location.backend, error=error,
            )  # fmt: skip
            continue
        done.append(pending.id)
    if done:
        try:
            await store.forget_deletions(done)
        except Exception as error:
            log.warn("could not forget {count} aborted uploads: {error}", count=len(done),
                     error=error)  # fmt: skip
    return len(done)


class Retirement:
    """This daemon's readers of each location, and the deletion of the locations no row
    references any more (see the module docstring).

    :param store: the deletion queue.
    :param pool: the backends holding the bytes.
    :param clock: for due times.
    :param grace: the current ``delete_grace`` (a reload may change it).
    """

    def __init__(
        self,
        store: MetadataStore,
        pool: Backends,
        clock: IReactorTime,
        grace: Callable[[], float],
    ) -> None:
        self.store = store
        self.pool = pool
        self.clock = clock
        self._grace = grace
        #: Readers of each location in this daemon.
        self._readers: dict[Location, int] = {}
        #: Unreferenced locations whose deletion waits for their last local reader:
        #: location -> pending deletion id.
        self._doomed: dict[Location, int] = {}
        #: Locations being deleted now: a reader must not start on them.
        self._deleting: set[Location] = set()
        self._forgetting = _ForgetQueue(store)

    @asynccontextmanager
    async def holding(self, location: Location) -> AsyncIterator[None]:
        """Count a reader of ``location`` until the block ends, so it is not deleted meanwhile.

        :raises ObjectChanged: it is being deleted already.
        """
        if location in self._deleting:
            raise ObjectChanged()
        self._readers[location] = self._readers.get(location, 0) + 1
        try:
            yield
        finally:
            self._reader_done(location)

    def _reader_done(self, location: Location) -> None:
        left = self._readers.get(location, 1) - 1
        if left > 0:
            self._readers[location] = left
            return
        self._readers.pop(location, None)
        pending = self._doomed.pop(location, None)
        if pending is not None:
            defer.ensureDeferred(self._delete_pending(location, pending))

    def readers_of(self, location: Location) -> int:
        """How many reads of ``location`` this daemon has in progress."""
        return self._readers.get(location, 0)

    async def retire(self, replaced: Replacement) -> None:
        """Delete the locations a commit or delete unreferenced, now when there is no grace and
        no local reader, when the last local reader is done otherwise; with a grace, housekeeping
        does it once due."""
        if self._grace() > 0:
            return
        for location, pending in zip(replaced.to_delete, replaced.pending_ids, strict=False):
            if self._readers.get(location):
                self._doomed[location] = pending
            else:
                await self._delete_pending(location, pending)

    async def sweep(self, limit: int = 1000) -> int:
        """Delete the queued locations whose time has come (housekeeping), except those this
        daemon is still reading (deleted when their last reader is done).

        :returns: how many locations were deleted.
        """
        due = await self.store.due_deletions(self.clock.seconds(), limit)
        deleted = 0
        for pending in due:
            location = pending.location
            if location in self._deleting or location in self._doomed:
                continue
            if self._readers.get(location):
                self._doomed[location] = pending.id
                continue
            if await self._delete_pending(location, pending.id, pending.backend_upload_id):
                deleted += 1
        return deleted

    async def _delete_pending(
        self, location: Location, pending: int, backend_upload_id: str | None = None
    ) -> bool:
        """Delete a queued location's bytes (or abort the backend upload it is), then its queue
        row; a failure leaves the row for the next sweep."""
        self._deleting.add(location)
        try:
            try:
                await _remove(self.pool, location, backend_upload_id)
            except Exception as error:
                log.warn(
                    "could not delete {target} from {backend} ({error}); retrying later",
                    target=location.real_key, backend=location.backend, error=error,
                )
                return False
            try:
                await self._forgetting.forget(pending)
            except Exception as error:
                log.warn("could not forget the deletion of {target}: {error}",
                         target=location.real_key, error=error)
            return True
        finally:
            self._deleting.discard(location)

    async def discard(self, locations: Sequence[Location]) -> None:
        """Delete bytes no row references and nobody reads (the copies of a replicated write
        that did not complete): queued first, so a copy whose backend cannot delete it now is
        deleted by a later sweep, never forgotten."""
        if not locations:
            return
        try:
            ids = await self.store.queue_deletions(locations, self.clock.seconds())
        except Exception as error:
            log.warn("could not queue the deletion of {count} copies ({error})",
                     count=len(locations), error=error)  # fmt: skip
            for location in locations:
                await self.delete_bytes(location.backend, location.real_key)
            return
        for location, pending in zip(locations, ids, strict=True):
            await self._delete_pending(location, pending)

    async def delete_bytes(self, backend: str, target: str) -> None:
        """Delete bytes no row references (a write that did not commit); a failure leaves an
        orphan for scrub."""
        await delete_unreferenced(self.pool, Location(backend, target))


async def delete_unreferenced(pool: Backends, location: Location) -> None:
    """Delete bytes no row references and nobody reads (a write that did not commit, a copy
    that came out wrong) at once, without queueing them; a failure is logged and leaves an
    orphan for scrub.  A delete is free: it counts no class A or B operation."""
    try:
        await pool.get(location.backend).delete_object(location.real_key)
    except Exception as error:
        log.warn(
            "could not delete {target} from {backend} ({error}); scrub will find it",
            target=location.real_key, backend=location.backend, error=error,
        )


__all__ = ["ObjectChanged", "Retirement", "delete_unreferenced", "remove_abandoned"]
