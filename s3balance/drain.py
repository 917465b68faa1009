"""Drain: moving every object off a real bucket, while clients keep reading and writing.

:func:`start_drain` (``POST /api/buckets/{name}/drain``, ``s3balance drain NAME``) marks the
backend drained in the database and queues its ``drain`` job, in one transaction.  From then on
placement skips the backend (:meth:`s3balance.pool.BackendPool.candidates`): at once in the
process that received the request, within a flush period (5 s) in every other worker and daemon
sharing the database.  Reads keep going to it while objects are still there.

The job (:func:`run_drain`, a :mod:`s3balance.jobs` kind) pages through the locations on the
backend by location id (the id is its cursor: a restarted or taken-over job resumes after the
last page it finished).  For each object it:

1. reads the row again: an object deleted, or overwritten (its location is gone from the row)
   since the page was read, is skipped: there is nothing left to move;
2. picks a target with the pool's placement rules, as repair does for a lost copy: a backend
   holding no copy of the object yet, in a zone without one where possible, enabled, healthy,
   with room, not drained and under its class A budget (a backend at its limit is skipped);
3. copies the bytes at the object's own real key, with the stored headers and metadata: a
   server-side copy when both backends are on one service, streamed otherwise (the source's
   GET, class B, feeding the target's PUT, class A); a multipart object is streamed part by
   part with its own part sizes, so the copy keeps its ETag (:func:`_copy_from`);
4. commits the new location by a compare-and-set of the row's locations
   (:meth:`~s3balance.db.repairs.RepairsComponent.swap_locations`): the drained copy leaves the
   row and is queued in ``pending_deletions`` in the same transaction (deleted after
   ``server.delete_grace``, when no read is streaming it).  When the row changed during the
   copy (overwritten, deleted, or another repair), nothing is committed and the copy just made
   is discarded: an object is never resurrected nor lost.

Objects that could not be moved (no target with room, a failed copy) are counted as errors and
tried again by the next sweep; new locations that appeared meanwhile (a multipart upload begun
before the drain and completed on the backend, a write by a daemon that had not yet seen the
drain) come after the cursor or are found by the next sweep.  The job ends ``done`` once no
object, no upload in progress and no pending deletion is left on the backend, and no sooner
than two pool flush periods (10 s) after the drain began, when every process has seen it
(``GET /api/buckets/{name}`` then says ``"removable": true``; deletions that keep failing for
:data:`DELETION_PATIENCE` past their grace are left to housekeeping), and ``failed`` after
:data:`MAX_FRUITLESS_SWEEPS` sweeps in a row that moved nothing (a resume tries again).
Cancelling the job gives the backend back to placement; what was moved stays moved.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet import task

from s3balance.backends.interface import BackendError
from s3balance.db.jobs import BackendLocation
from s3balance.db.records import JobRecord, Location, ObjectRecord
from s3balance.jobs import JobKind, RunningJob, settle
from s3balance.logs import make_logger
from s3balance.retirement import ObjectChanged

if TYPE_CHECKING:
    from s3balance.jobs import JobDaemon, JobRunner

__all__ = ["KIND", "DrainError", "move_copy", "run_drain", "start_drain"]

log = make_logger()

#: Locations read per page.
PAGE = 200
#: Flush periods of the pool (5 s) after the drain began before its job may end: every process
#: sharing the database has re-read the drained backends, and stopped placing there, by then.
SETTLE_FLUSHES = 2
#: Sweeps in a row that moved nothing, with objects still left, before the job fails.
MAX_FRUITLESS_SWEEPS = 4
#: Seconds before the n-th sweep in a row that moved nothing is followed by another: n times this
#: (a backend full or unhealthy for a minute or so does not fail the job).
FRUITLESS_WAIT = 5.0
#: Seconds between checks that the job must stop while it waits.
WAIT_STEP = 1.0
#: Longest wait between looks at what is left, while uploads finish there or old copies wait
#: for their deletion (the waits double from :data:`WAIT_STEP`).
MAX_IDLE_WAIT = 30.0
#: Seconds past ``server.delete_grace`` the job waits for the deletions of the old copies before
#: it ends all the same (``done``, saying how many are left: housekeeping keeps retrying them).
DELETION_PATIENCE = 600.0


class DrainError(Exception):
    """The drain cannot go on (its backend is not configured, objects cannot be moved)."""


async def start_drain(runner: JobRunner, name: str) -> JobRecord:
    """Drain real bucket ``name``: no new writes there from now on, and its job queued (or the
    drain job it has already).

    :raises KeyError: no real bucket has that name.
    """
    daemon = runner.daemon
    if name not in daemon.pool.names():
        raise KeyError(name)
    record = await daemon.store.drain_backend(name, daemon.clock.seconds())
    daemon.pool.set_drained(set(await daemon.store.drained_backends()) | {name})
    runner.wake()
    return record


async def run_drain(job: RunningJob) -> None:
    """The ``drain`` job (see the module docstring)."""
    daemon, backend = job.daemon, job.target
    if backend not in daemon.pool.names():
        raise DrainError(f"{backend} is not a configured real bucket")
    fruitless = 0
    idle = 0.0
    deletions_since: float | None = None
    while True:
        objects, size, uploads, pending = await daemon.store.held_on(backend)
        job.update(objects_left=objects, bytes_left=size)
        if objects == 0 and uploads == 0 and pending == 0:
            # Other daemons and workers stop placing here within a flush period of the drain:
            # a write one of them made just before must not land after the job ended.
            settle_for = SETTLE_FLUSHES * daemon.pool.flush_period
            settle = job.record.created + settle_for - job.clock.seconds()
            if settle <= 0:
                return
            await _wait(job, settle)
            continue
        if objects == 0:
            # Uploads finishing there (then moved by the next sweep; housekeeping aborts those
            # abandoned after multipart.expiry), or old copies waiting for their grace before
            # housekeeping deletes them.  Looks again less and less often.
            now = job.clock.seconds()
            if uploads == 0:
                deletions_since = now if deletions_since is None else deletions_since
                patience = daemon.gateway.settings.delete_grace + DELETION_PATIENCE
                if now - deletions_since > patience:
                    job.update(last_error=f"{pending} deletions still pending on {backend} "
                               "(housekeeping retries them)")  # fmt: skip
                    return
            idle = min(MAX_IDLE_WAIT, max(WAIT_STEP, idle * 2))
            await _wait(job, idle)
            continue
        idle, deletions_since = 0.0, None
        moved = await _sweep(job, backend)
        if moved:
            fruitless = 0
            continue
        fruitless += 1
        if fruitless >= MAX_FRUITLESS_SWEEPS:
            raise DrainError(
                f"{objects} objects could not be moved off {backend}: {job.progress.last_error}"
            )
        await _wait(job, FRUITLESS_WAIT * fruitless)


async def _wait(job: RunningJob, seconds: float) -> None:
    """Sleep ``seconds``, stopping as soon as the job must."""
    left = seconds
    while left > 0:
        job.check()
        step = min(left, WAIT_STEP)
        await task.deferLater(job.clock, step, lambda: None)
        left -= step
    job.check()


async def _sweep(job: RunningJob, backend: str) -> int:
    """One pass over the backend's locations from the cursor; the objects moved.  The cursor
    goes back to the start at the end, for the next sweep."""
    moved = 0
    after = int(job.progress.cursor or 0)
    while True:
        job.check()
        page = await job.daemon.store.locations_page(backend, after, PAGE)
        if not page:
            break
        # Every move of the page ends (a stop is seen by each before its copy) before the
        # cursor passes the page.
        moved += await settle(_move_one(job, location) for location in page)
        after = page[-1].id
        job.update(cursor=str(after))
        await job.save()
    job.update(cursor=None)
    return moved


async def _move_one(job: RunningJob, location: BackendLocation) -> bool:
    """Move one location under the shared limits; whether it left the backend."""
    try:
        return await job.transfer(location.size, lambda: move_location(job, location))
    except (BackendError, ObjectChanged) as error:
        job.problem(f"{location.bucket}/{location.key}: {error}")
        return False


async def move_location(job: RunningJob, location: BackendLocation) -> bool:
    """Move ``location`` off its backend (steps 1 to 4 of the module docstring); whether it is
    no longer there (moved, or the object changed so that nothing is left to move)."""
    daemon, backend = job.daemon, job.target
    source = Location(backend, location.real_key)
    record = await daemon.store.get_object(location.bucket, location.key)
    if record is None or source not in record.locations:
        return True  # deleted or overwritten meanwhile: that location is not the row's
    holders = [loc.backend for loc in record.locations]
    others = [loc.backend for loc in record.locations if loc != source]
    targets = daemon.pool.choose_replicas(
        record.bucket, record.key, record.size, 1, exclude=holders, holding=others
    )
    if not targets:
        job.problem(
            f"{record.bucket}/{record.key}: no backend can take {record.size} bytes (full, "
            "unhealthy, drained or at its class A limit)"
        )
        return False
    return await move_copy(job, record, source, targets[0])


async def move_copy(job: RunningJob, record: ObjectRecord, source: Location, target: str) -> bool:
    """Move the copy of ``record`` at ``source`` to backend ``target`` at the same real key
    (steps 3 and 4 of the module docstring; a rebalance's move too): the bytes are read from
    ``source`` first, from the other copies if it fails.  Whether ``source`` left the row (the
    object changed meanwhile: nothing was left to move).

    :raises BackendError: no copy could be read, or the target failed.
    """
    daemon = job.daemon
    holders = [loc.backend for loc in record.locations]
    readers = daemon.pool.read_order(holders)
    if source.backend in readers:  # read the leaving copy first
        readers.remove(source.backend)
        readers.insert(0, source.backend)
    sources = [loc for name in readers for loc in record.locations if loc.backend == name]
    if not sources:
        job.problem(f"{record.bucket}/{record.key}: no copy can be read now")
        return False
    destination = Location(target, source.real_key)
    size = await _copy(daemon, record, sources, destination)
    return await _commit(job, record, source, destination, size)


async def _copy(
    daemon: JobDaemon, record: ObjectRecord, sources: list[Location], target: Location
) -> int:
    """Copy ``record``'s bytes to ``target`` from the first source that gives them.

    :raises BackendError: every source failed, or the target did.
    """
    last: BackendError | None = None
    for source in sources:
        try:
            return await _copy_from(daemon, record, source, target)
        except BackendError as error:
            last = error
            if error.backend == target.backend:
                raise
    assert last is not None
    raise last


async def _copy_from(
    daemon: JobDaemon, record: ObjectRecord, source: Location, target: Location
) -> int:
    """One copy with the source's stored headers and metadata (what a rebuild reads back), by
    the :class:`~s3balance.copying.ObjectCopier`: server-side when both backends are on one
    service, streamed otherwise; a multipart object streamed part by part with the row's own
    part sizes, so that the copy keeps the object's ETag on every service (what scrub
    compares, and what a rebuild would read back).

    :raises BackendError: either side failed, or the source is not the row's object.
    """
    return await daemon.copier.copy(record, source, target, keep_parts=True)


async def _commit(
    job: RunningJob, record: ObjectRecord, source: Location, target: Location, size: int
) -> bool:
    """Swap ``source`` for ``target`` in the row if it did not change; otherwise discard the
    copy made.  Whether the source left the row."""
    daemon = job.daemon
    gateway = daemon.gateway
    new = [target if loc == source else loc for loc in record.locations]
    delete_after = daemon.clock.seconds() + gateway.settings.delete_grace
    replaced = await daemon.store.swap_locations(
        record.bucket, record.key, record.locations, new, delete_after
    )
    if replaced is None:
        current = await daemon.store.get_object(record.bucket, record.key)
        kept = set(current.locations) if current is not None else set()
        if target not in kept:
            await gateway.retirement.discard([target])
        log.info("{kind}: {bucket}/{key} changed while it was copied; the copy is discarded",
                 kind=job.record.kind, bucket=record.bucket, key=record.key)
        return current is None or source not in kept
    daemon.usage.adjust(target.backend, record.size, 1)
    daemon.usage.adjust(source.backend, -record.size, -1)
    await gateway.retirement.retire(replaced)
    job.moved(size)
    return True


def drain_document(held: tuple[int, int, int, int], job: JobRecord | None) -> dict[str, Any]:
    """What ``GET /api/buckets/{name}`` adds about a drain: what s3balance still holds on the
    backend, and whether it can be removed from the configuration."""
    objects, size, uploads, pending = held
    return {
        "draining": job is not None,
        "drain_job": job.id if job is not None else None,
        "drain_state": job.state if job is not None else None,
        "held_objects": objects,
        "held_bytes": size,
        "uploads_in_progress": uploads,
        "deletions_pending": pending,
        "removable": job is not None and job.state == "done" and not any(held),
    }


KIND = JobKind("drain", run_drain)
