"""Repair: bringing every object of a replicated virtual bucket back to ``replicas`` usable copies.

A write stores N copies (:mod:`s3balance.replicated`); later a backend may die, be wiped, or be
dropped from the configuration, and ``replicas`` may change on reload.  Every ``repair.interval``
seconds a pass (:meth:`Repairer.run_once`, in the one process that runs housekeeping) looks at
what may have changed since the last, and no more (the database keeps what it needs to know:
:mod:`s3balance.db.repairs`):

- a bucket's every object whose locations are not what they should be (fewer or more than
  ``replicas``, or one on a backend lost or removed), only when its ``replicas`` is not the one
  it was last fully repaired for (``repair_buckets``; every process forgets it on start and
  reload when it differs, a rebuild or import forgets it too);
- the objects of replicated buckets with a copy on a backend no longer configured, or that has
  not been available (healthy and enabled) for longer than ``repair.after``: that copy is
  *lost*; found through the index on ``object_locations.backend``, once per backend while it
  stays lost (again when usage counts more copies on it than right after);
- the objects in ``repair_queue``: writes committed with fewer copies (``write_quorum``), queued
  by their commit, and what earlier passes could not fix;
- the next ``repair.verify_batch`` objects of each replicated bucket on each available backend
  (a cursor per backend and bucket in ``repair_cursors``, wrapping at the end): one listing of
  their key range is compared with the rows (as scrub does), and a copy the listing lacks, lists
  at another size, or lists with an ETag that says other bytes (:func:`~s3balance.etags.
  etag_agrees`: only plain MD5 ETags are compared, a multipart one says nothing) is confirmed
  with a HEAD before it counts as *missing* (re-created where it was).  A backend seen
  unavailable that is available again (maybe restarted empty) has all its copies checked at once.

For each, under a claim in the database (``repair_claims``: daemons sharing the database never
repair one object at once; a claim expires, so a crashed daemon's is taken over), it copies the
object from a healthy replica with :class:`~s3balance.copying.ObjectCopier`: server-side when both
backends are buckets of one S3 service (CopyObject), streamed otherwise (the source's GET feeds the
target's PUT with backpressure), multipart above 5 GiB (UploadPartCopy or ranged GETs part by part,
the upload aborted on failure); a source whose size or ETag is not the row's is skipped for the
next.  The copy goes at the object's own real key: a missing copy is re-created where it was
(elsewhere when that backend is drained: :mod:`s3balance.drain`), a lost one on another backend
chosen by the pool's placement rules (a backend without a copy, in a zone without one where
possible, with room left), and as many as ``replicas`` asks.  Only then it
commits, by a compare-and-set of the row's locations
(:meth:`~s3balance.db.repairs.RepairsComponent.swap_locations`): the new locations go in, the lost
ones and any beyond ``replicas`` (the worst: unavailable ones, then a zone's second copy) come out
and are queued in ``pending_deletions``.  When the row changed meanwhile (the object was overwritten
or deleted), nothing is committed and the copies just made are discarded through the same queue.  A
lost copy is kept in the row while no replacement could be made: its backend may come back.

Limits (:class:`~s3balance.pacing.TransferLimits`): at most ``repair.max_concurrency`` objects
at once, and ``repair.max_bytes_per_second`` paced per object (each copy starts once the copies
before it have had their share of time).
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime

from s3balance import metrics
from s3balance.backends.interface import BackendError, BackendNoSuchKey, ListedObject
from s3balance.backends.objectrules import key_bytes
from s3balance.config import RepairConfig
from s3balance.copying import ObjectCopier
from s3balance.db.records import Location, ObjectRecord
from s3balance.db.repairs import Cursor, VerifiedRow
from s3balance.db.store import MetadataStore
from s3balance.etags import etag_agrees
from s3balance.gateway import Gateway
from s3balance.health import BackendHealth, HealthMonitor
from s3balance.housekeeping import PeriodicRounds
from s3balance.logs import make_logger
from s3balance.operations import listing_pages
from s3balance.pacing import TransferLimits
from s3balance.placement import spread
from s3balance.pool import BackendPool
from s3balance.retirement import ObjectChanged
from s3balance.scrub import comparable_key
from s3balance.usage import UsageMonitor

__all__ = ["CLAIM_LEASE", "RepairPass", "Repairer", "Suspect"]

log = make_logger()

#: Seconds a claim holds without being renewed (it is renewed before each copy); a daemon that
#: died leaves claims that others take over after this.
CLAIM_LEASE = 900.0
#: Objects read from the store per query.
PAGE = 500
#: Problems a pass keeps for ``GET /api/repair`` (the first ones; the log has them all).
MAX_ERRORS = 50


@dataclass(frozen=True)
class Suspect:
    """An object a pass found in need of repair: its row id (what claims name), its key, and
    those of its copies a backend's listing lacked."""

    object_id: int
    bucket: str
    key: str
    missing: frozenset[Location] = frozenset()


@dataclass
class RepairPass:
    """What one pass found and did (``GET /api/repair``)."""

    started: float
    finished: float | None = None
    #: Objects that looked in need of repair.
    examined: int = 0
    #: Objects brought to exactly ``replicas`` usable copies.
    repaired: int = 0
    copies: int = 0
    bytes_copied: int = 0
    dropped: int = 0
    #: Objects left short or over (no healthy source, no backend with room, a failed copy, the
    #: object changed meanwhile): the backlog.
    backlog: int = 0
    #: Objects of the backlog with no available copy to copy from.
    no_source: int = 0
    #: Objects another daemon was repairing.
    claimed_elsewhere: int = 0
    failures: int = 0
    #: Buckets whose every object was looked at (their ``replicas`` changed).
    full_buckets: list[str] = field(default_factory=list)
    #: Objects taken from the queue (short writes, earlier passes' backlog).
    queued: int = 0
    #: Objects with a copy on a lost or removed backend, found by that backend's index.
    on_lost_backends: int = 0
    #: Copies the incremental verification checked, and those it found missing or corrupt.
    verified: int = 0
    missing: int = 0
    errors: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def problem(self, text: str) -> None:
        """Note a problem (logged; the first :data:`MAX_ERRORS` kept for the API)."""
        log.warn("repair: {problem}", problem=text)
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(text)


class Repairer(PeriodicRounds):
    """The repair loop (see the module docstring).

    :param gateway: copies' reads are counted as its readers; dropped copies go through its
        retirement; it knows each bucket's ``replicas`` (reloaded).
    :param config: the repair settings.
    :param owner: this daemon's name in claims (unique per process by default).
    :param limits: the pace and concurrency its copies share (with other background movers);
        by default its own, from ``repair.max_bytes_per_second`` and ``repair.max_concurrency``.
    :param copier: what copies the bytes (by default server-side where it can, multipart
        above 5 GiB).
    """

    work = "repair"

    def __init__(
        self,
        gateway: Gateway,
        pool: BackendPool,
        health: HealthMonitor,
        usage: UsageMonitor,
        store: MetadataStore,
        clock: IReactorTime,
        config: RepairConfig,
        owner: str | None = None,
        limits: TransferLimits | None = None,
        copier: ObjectCopier | None = None,
    ) -> None:
        super().__init__(clock, config.interval)
        self.gateway = gateway
        self.pool = pool
        self.store = store
        self.usage = usage
        self.config = config
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        #: When each backend was last seen becoming unavailable.
        self._unavailable_since: dict[str, float] = {}
        #: Backends seen unavailable since the last verification: one that is available again
        #: has every copy verified (it may have come back wiped).
        self._down: set[str] = set()
        #: Every backend this process has had configured (a removed one may hold copies).
        self._known: set[str] = set()
        #: Lost backends whose objects were looked at: the replicated buckets then, and the
        #: copies usage counted on the backend right after (more later: another daemon, which
        #: thinks it healthy, wrote there).
        self._scanned_lost: dict[str, tuple[tuple[str, ...], int]] = {}
        #: The copies usage counts on each backend, read at the start of the current pass.
        self._counts: dict[str, int] = {}
        #: The current pass's objects looked at, and those of them not fixed (queued at its end).
        self._seen: set[int] = set()
        self._left: set[int] = set()
        #: Objects verification found with broken copies that are not fixed yet (they are
        #: queued; the queue's repair needs to know which copies).
        self._missing: dict[int, Suspect] = {}
        #: The verification cursors, by backend and bucket (``GET /api/repair``).
        self.progress: dict[tuple[str, str], Cursor] = {}
        #: Whether :attr:`limits` are repair's own (then its settings are followed each pass).
        self._own_limits = limits is None
        self.limits = limits or TransferLimits(
            clock, config.max_bytes_per_second, config.max_concurrency
        )
        self.copier = copier or ObjectCopier(pool, gateway.holding)
        self.last: RepairPass | None = None
        self.current: RepairPass | None = None
        health.listeners.append(self._health_changed)

    # -- what is lost ------------------------------------------------------------------------

    def _health_changed(self, name: str, state: BackendHealth) -> None:
        if state.healthy:
            self._unavailable_since.pop(name, None)
        else:
            self._unavailable_since.setdefault(name, self.clock.seconds())
            self._down.add(name)

    def _lost_backends(self, now: float) -> set[str]:
        """Configured backends unavailable for longer than ``repair.after``."""
        lost: set[str] = set()
        for name in self.pool.names():
            if self.pool.is_available(name):
                self._unavailable_since.pop(name, None)
                continue
            self._down.add(name)
            since = self._unavailable_since.setdefault(name, now)
            if now - since >= self.config.after:
                lost.add(name)
        return lost

    # -- a pass ------------------------------------------------------------------------------

    async def _round(self) -> int:
        now = self.clock.seconds()
        summary = RepairPass(started=now)
        self.current = summary
        if self._own_limits:
            self.limits.max_bytes_per_second = self.config.max_bytes_per_second
            self.limits.max_concurrency = self.config.max_concurrency
        self._left = set()
        self._seen = set()
        try:
            lost = self._lost_backends(now)
            gone = lost | await self._removed_backends()
            usable = [name for name in self.pool.names() if name not in gone]
            replicas = {
                bucket.name: self.gateway.replicas.copies(bucket.name)
                for bucket in await self.store.list_buckets()
            }
            # Only objects with another copy can have a lost or missing one re-created.
            replicated = sorted(bucket for bucket, copies in replicas.items() if copies > 1)
            await self._repair_changed_buckets(replicas, usable, lost, summary)
            await self._repair_queued(lost, summary)
            await self._repair_lost_backends(sorted(gone), replicated, lost, summary)
            await self._verify(replicated, lost, summary)
            if self._left:
                await self.store.queue_repairs(self._left, self.clock.seconds())
        finally:
            summary.finished = self.clock.seconds()
            self.current = None
            self.last = summary
            metrics.REPAIR_BACKLOG.set(summary.backlog)
        if summary.copies or summary.dropped or summary.backlog:
            log.info(
                "repair pass: {repaired} objects repaired, {copies} copies made ({bytes} bytes), "
                "{dropped} dropped, {backlog} left",
                repaired=summary.repaired, copies=summary.copies, bytes=summary.bytes_copied,
                dropped=summary.dropped, backlog=summary.backlog,
            )  # fmt: skip
        return summary.repaired

    async def _removed_backends(self) -> set[str]:
        """Backends no longer configured that may still hold copies: those usage counts
        anything on, and those this process knew."""
        configured = set(self.pool.names())
        self._known.update(configured)
        usage = await self.store.usage()
        self._counts = {name: found.object_count for name, found in usage.items()}
        counted = {name for name, found in usage.items() if found.object_count or found.used_bytes}
        return (counted | self._known) - configured

    async def _repair_changed_buckets(
        self, replicas: dict[str, int], usable: list[str], lost: set[str], summary: RepairPass
    ) -> None:
        """Look at every object of the buckets whose ``replicas`` is not the one they were last
        fully repaired for (changed by a reload, or never done), then remember it: the only
        scan of a bucket's every object, and only when its ``replicas`` changed."""
        done = await self.store.repaired_replicas()
        for bucket, copies in sorted(replicas.items()):
            state = done.get(bucket)
            if state is not None and state.replicas == copies:
                continue
            summary.full_buckets.append(bucket)
            await self._repair_bucket(bucket, copies, usable, lost, summary)
            # What is left is queued (at the pass's end), so it is not scanned for again.  A
            # reload that changed the bucket's replicas meanwhile (maybe and back) moved its
            # generation on: then nothing is recorded, and the next pass looks again.
            generation = None if state is None else state.generation
            await self.store.set_repaired_replicas(bucket, copies, generation)

    async def _repair_bucket(
        self,
        bucket: str,
        copies: int,
        usable: list[str],
        lost: set[str],
        summary: RepairPass,
    ) -> None:
        """Page through ``bucket``'s objects whose locations are not what they should be."""
        # A lone copy on a lost backend has nothing to be copied from: only the count matters.
        suspects_of = usable if copies > 1 else None
        after = ""
        while True:
            page = await self.store.repair_candidates(bucket, copies, suspects_of, after, PAGE)
            if not page:
                return
            after = page[-1][1]
            await self._repair_all([Suspect(oid, bucket, key) for oid, key in page], lost, summary)
            if len(page) < PAGE:
                return

    async def _repair_queued(self, lost: set[str], summary: RepairPass) -> None:
        """Look at the objects in the queue: writes committed short of copies, and what earlier
        passes could not fix; each fixed one leaves the queue."""
        after = 0
        queued_ids: set[int] = set()
        while True:
            page = await self.store.queued_repairs(after, PAGE)
            if not page:
                break
            after = page[-1].object_id
            queued_ids.update(queued.object_id for queued in page)
            fresh = [queued for queued in page if queued.object_id not in self._seen]
            summary.queued += len(fresh)
            outcomes = await self._repair_all(
                [
                    self._missing.get(q.object_id) or Suspect(q.object_id, q.bucket, q.key)
                    for q in fresh
                ],
                lost,
                summary,
            )
            for queued, fixed in zip(fresh, outcomes, strict=True):
                if fixed:
                    self._missing.pop(queued.object_id, None)
                    await self.store.dequeue_repair(queued.object_id, queued.queued_at)
                self._left.discard(queued.object_id)  # still queued when not fixed
            if len(page) < PAGE:
                break
        # What earlier passes left is queued; what left the queue (deleted) is forgotten.
        self._missing = {oid: s for oid, s in self._missing.items() if oid in queued_ids}

    async def _repair_lost_backends(
        self, gone: list[str], replicated: list[str], lost: set[str], summary: RepairPass
    ) -> None:
        """Look at the objects of replicated buckets with a copy on a lost or removed backend,
        found by that backend's index, once per backend while it stays lost (what could not be
        fixed is queued, and no write lands on a lost backend meanwhile: again if usage counts
        more copies there than right after the last look)."""
        for name in list(self._scanned_lost):
            buckets, count = self._scanned_lost[name]
            if (
                name not in gone
                or buckets != tuple(replicated)
                or self._counts.get(name, 0) > count
            ):
                del self._scanned_lost[name]
        todo = [name for name in gone if name not in self._scanned_lost]
        if not todo or not replicated:
            return
        after = 0
        while True:
            page = await self.store.copies_on_backends(todo, replicated, after, PAGE)
            if not page:
                break
            after = page[-1][0]
            suspects: dict[int, Suspect] = {}
            for _, object_id, bucket, key in page:
                suspects.setdefault(object_id, Suspect(object_id, bucket, key))
            summary.on_lost_backends += len(suspects)
            await self._repair_all(list(suspects.values()), lost, summary)
            if len(page) < PAGE:
                break
        counts = {name: found.object_count for name, found in (await self.store.usage()).items()}
        for name in todo:
            self._scanned_lost[name] = (tuple(replicated), counts.get(name, 0))

    async def _repair_all(
        self,
        suspects: list[Suspect],
        lost: set[str],
        summary: RepairPass,
    ) -> list[bool]:
        """Repair ``suspects``, ``repair.max_concurrency`` at once; whether each was fixed.
        Objects already looked at in this pass are skipped (counted as fixed: their outcome is
        already known), unless they come with a missing copy."""

        def one(suspect: Suspect) -> defer.Deferred[bool]:
            if suspect.object_id in self._seen and not suspect.missing:
                return defer.succeed(suspect.object_id not in self._left)
            self._seen.add(suspect.object_id)
            return self.limits.run(lambda: self._repair_claimed(suspect, lost, summary))

        outcomes = await defer.gatherResults(
            [one(suspect) for suspect in suspects], consumeErrors=True
        )
        return list(outcomes)

    # -- incremental verification ------------------------------------------------------------

    async def _verify(self, replicated: list[str], lost: set[str], summary: RepairPass) -> None:
        """Check the next ``repair.verify_batch`` objects' copies of each replicated bucket on
        each available backend against a listing slice; every copy of a backend that came back
        from unavailable (maybe wiped) at once.  The broken copies found are repaired together
        (an object missing on two backends is one repair, which knows both), before the cursors
        that went past them are saved."""
        if not replicated:
            self.progress = {}
            return
        cursors = {(c.backend, c.bucket): c for c in await self.store.repair_cursors()}
        self.progress = {
            key: cursor for key, cursor in cursors.items() if key[1] in replicated
        }  # fmt: skip
        found: dict[int, Suspect] = {}
        moved: list[Cursor] = []
        for name in self.pool.names():
            if not self.pool.is_available(name):
                continue
            returned = name in self._down
            self._down.discard(name)
            for bucket in replicated:
                cursor = cursors.get((name, bucket)) or Cursor(name, bucket)
                if returned:
                    cursor = replace(cursor, after="", checked=0, sweep=True)
                while True:
                    cursor = await self._verify_slice(cursor, found, summary)
                    self.progress[(name, bucket)] = cursor
                    moved.append(cursor)
                    if len(found) >= PAGE:
                        await self._repair_found(found, moved, lost, summary)
                    if not cursor.sweep:
                        break
        await self._repair_found(found, moved, lost, summary)
        for name in self.pool.names():
            self._publish_progress(name)

    async def _repair_found(
        self, found: dict[int, Suspect], moved: list[Cursor], lost: set[str], summary: RepairPass
    ) -> None:
        """Repair the objects verification ``found`` with broken copies, then save the cursors
        ``moved`` past them; both emptied.  What stays broken is remembered for the queue."""
        suspects = list(found.values())
        found.clear()
        outcomes = await self._repair_all(suspects, lost, summary)
        for suspect, fixed in zip(suspects, outcomes, strict=True):
            if fixed:
                self._missing.pop(suspect.object_id, None)
            else:
                self._missing[suspect.object_id] = suspect
        saved = {(cursor.backend, cursor.bucket): cursor for cursor in moved}
        moved.clear()
        for cursor in saved.values():
            await self.store.save_cursor(cursor)

    async def _verify_slice(
        self, cursor: Cursor, found: dict[int, Suspect], summary: RepairPass
    ) -> Cursor:
        """Check one slice of ``cursor``'s copies, add the broken ones to ``found``, and return
        the cursor moved past it (back to the start after the last slice)."""
        name, bucket, batch = cursor.backend, cursor.bucket, self.config.verify_batch
        # One row more than the slice says whether it is the last (then the cycle ends with
        # it, and ``ceil(objects / batch)`` passes cover every copy).
        rows = await self.store.verification_slice(name, bucket, cursor.after, batch + 1)
        following = rows[batch].key if len(rows) > batch else None
        last, rows = following is None, rows[:batch]
        try:
            broken = await self._broken_copies(name, bucket, rows, following)
        except Exception as error:
            summary.problem(f"verifying {name}: {error}")
            if cursor.sweep:
                self._down.add(name)  # the whole backend again next pass
            return replace(cursor, sweep=False)  # tried again next pass, from the same place
        summary.verified += len(rows)
        metrics.REPAIR_VERIFIED.labels(name).inc(len(rows))
        summary.missing += len(broken)
        for row in broken:
            location = Location(name, row.real_key)
            known = found.get(row.object_id)
            missing = {location} | (set(known.missing) if known is not None else set())
            found[row.object_id] = Suspect(row.object_id, bucket, row.key, frozenset(missing))
        now = self.clock.seconds()
        if last:
            return replace(
                cursor, after="", checked=0, last_total=cursor.checked + len(rows),
                cycles=cursor.cycles + 1, sweep=False, updated_at=now,
            )  # fmt: skip
        return replace(
            cursor, after=rows[-1].key, checked=cursor.checked + len(rows), updated_at=now
        )

    async def _broken_copies(
        self, name: str, bucket: str, rows: list[VerifiedRow], following: str | None
    ) -> list[VerifiedRow]:
        """Those of ``rows``' copies on backend ``name`` that a listing of their range lacks or
        lists with other bytes (``following``: the key after the last row's, None at the end).

        A real key sorts as its key followed by ``~w``, so the copy of a key that is a prefix of
        the next one (``logs`` before ``logs/1``) sorts after that whole run of keys, which may
        go on past the slice: it is asked for with a HEAD, as are copies whose real key does not
        sort with its key (hashed, or changed by the backend's normalisation); the listing then
        spans about the slice's keys only."""
        backend = self.pool.get(name)
        after_each = [row.key for row in rows[1:]] + [following]
        ranged = [
            row for row, next_key in zip(rows, after_each, strict=True)
            if row.real_key.startswith(f"{bucket}/{row.key}")
            and comparable_key(row.real_key) == row.real_key
            and not (next_key is not None and next_key.startswith(row.key))
        ]  # fmt: skip
        broken: list[VerifiedRow] = []
        if ranged:
            reals = sorted((row.real_key for row in ranged), key=key_bytes)
            listing = await backend.list_objects(
                f"{bucket}/", start_after=reals[0][:-1], until=reals[-1]
            )
            self.pool.record_operation(name, "ListObjectsV2", requests=listing_pages(len(listing)))
            listed = {entry.key: entry for entry in listing}
            broken += [
                row for row in ranged
                if not _listed_intact(listed.get(row.real_key), row.size, row.etag)
            ]  # fmt: skip
        listed_rows = set(ranged)
        for row in rows:
            if row not in listed_rows and not await self._head_intact(name, row):
                broken.append(row)
        return broken

    async def _head_intact(self, name: str, row: VerifiedRow) -> bool:
        """Whether a HEAD shows the row's bytes at ``row``'s copy on ``name`` (an error that
        says nothing counts as intact: it is checked again next cycle)."""
        try:
            info = await self.pool.get(name).head_object(row.real_key)
        except BackendNoSuchKey:
            self.pool.record_operation(name, "HeadObject")
            return False
        except BackendError:
            return True
        self.pool.record_operation(name, "HeadObject")
        return info.size == row.size and etag_agrees(row.etag, info.etag) is not False

    def _publish_progress(self, name: str) -> None:
        """``/metrics``: the share of backend ``name``'s copies checked in the current cycles."""
        fraction = self._fraction(name)
        if fraction is not None:
            metrics.REPAIR_VERIFY_PROGRESS.labels(name).set(fraction)

    def _fraction(self, name: str) -> float | None:
        """How far the current verification cycles of backend ``name`` got (objects checked
        over those of the last complete cycles); None before a cycle completed."""
        cursors = [c for (backend, _), c in self.progress.items() if backend == name]
        totals = [c.last_total for c in cursors]
        if not cursors or any(total is None for total in totals):
            return None
        total = sum(t for t in totals if t is not None)
        return 1.0 if total == 0 else min(1.0, sum(c.checked for c in cursors) / total)

    async def _repair_claimed(self, suspect: Suspect, lost: set[str], summary: RepairPass) -> bool:
        """Claim one object, repair it, release it; its outcome goes into ``summary``.  Whether
        it was fixed (an object another daemon holds is not, and is queued: that daemon may die
        before it is done)."""
        now = self.clock.seconds()
        owner, object_id = self.owner, suspect.object_id
        if not await self.store.claim_repair(object_id, owner, now, now + CLAIM_LEASE):
            summary.claimed_elsewhere += 1
            self._left.add(object_id)
            return False
        summary.examined += 1
        try:
            fixed = await self._repair(suspect, lost, summary)
        except Exception as error:
            fixed = False
            summary.failures += 1
            metrics.REPAIR_FAILURES.inc()
            summary.problem(f"{suspect.bucket}/{suspect.key}: {error}")
        finally:
            await self.store.release_repair(object_id, owner)
        if fixed:
            summary.repaired += 1
            self._left.discard(object_id)
        else:
            summary.backlog += 1
            self._left.add(object_id)
        return fixed

    # -- one object --------------------------------------------------------------------------

    async def _repair(self, suspect: Suspect, lost: set[str], summary: RepairPass) -> bool:
        """Bring one claimed object to ``replicas`` usable copies; whether it got there."""
        object_id, bucket, key, missing = (
            suspect.object_id, suspect.bucket, suspect.key, suspect.missing
        )  # fmt: skip
        record = await self.store.get_object(bucket, key)
        if record is None or not record.locations:
            return True
        want = self.gateway.replicas.copies(bucket)
        configured = set(self.pool.names())
        gone = [
            location for location in record.locations
            if location.backend not in configured or location.backend in lost
        ]  # fmt: skip
        broken = [
            location for location in record.locations
            if location in missing and location not in gone
            and await self._confirmed_broken(record, location)
        ]  # fmt: skip
        good = [
            location for location in record.locations
            if location not in gone and location not in broken
        ]  # fmt: skip
        sources = self._sources(good)
        if not sources:
            summary.no_source += 1
            summary.problem(f"{bucket}/{key}: no available copy to copy from")
            return False
        made: list[Location] = []
        for location in broken:
            # A drained backend gets no copy back: the copy is made elsewhere instead.
            where = location.backend
            if (
                self.pool.is_available(where)
                and not self.pool.is_drained(where)
                and await self._copy(object_id, record, sources, location, summary)
            ):
                made.append(location)
        healthy = [loc for loc in record.locations if loc in good or loc in made]
        needed = want - len(healthy)
        if needed > 0:
            holders = [location.backend for location in record.locations]
            targets = self.pool.choose_replicas(
                bucket, key, record.size, needed, exclude=holders,
                holding=[location.backend for location in healthy],
            )  # fmt: skip
            for name in targets:
                target = Location(name, sources[0].real_key)
                if await self._copy(object_id, record, sources, target, summary):
                    made.append(target)
                    healthy.append(target)
        if len(healthy) >= want:
            new = self._best(healthy, want)
        else:
            new = healthy + [location for location in record.locations if location not in healthy]
        if not await self._commit(record, new, made, summary):
            return False
        return len(new) == want and all(loc in healthy for loc in new)

    def _sources(self, good: Iterable[Location]) -> list[Location]:
        """The copies to read from, best first (the pool's read order)."""
        by_backend = {location.backend: location for location in good}
        return [by_backend[name] for name in self.pool.read_order(list(by_backend))]

    def _best(self, healthy: list[Location], want: int) -> list[Location]:
        """The ``want`` copies to keep: available ones first, one per zone while there are
        enough zones, in the row's order."""
        ordered = sorted(healthy, key=lambda loc: not self.pool.is_available(loc.backend))
        keep = spread([loc.backend for loc in ordered], self.pool.zone_of, want)
        return [location for location in healthy if location.backend in keep]

    async def _confirmed_broken(self, record: ObjectRecord, location: Location) -> bool:
        """Whether the backend really lacks ``location``, or holds other bytes there (size, or
        an ETag that says so); the listing may be older than the copy."""
        try:
            info = await self.pool.get(location.backend).head_object(location.real_key)
        except BackendNoSuchKey:
            self.pool.record_operation(location.backend, "HeadObject")
            return True
        except BackendError:
            return False
        self.pool.record_operation(location.backend, "HeadObject")
        if info.size != record.size:
            return True
        return etag_agrees(record.etag, info.etag) is False

    async def _commit(
        self, record: ObjectRecord, new: list[Location], made: list[Location], summary: RepairPass
    ) -> bool:
        """Swap the row's locations for ``new`` if it did not change; otherwise discard the
        copies made.  Whether it committed."""
        if new == list(record.locations) and not made:
            return True
        delete_after = self.clock.seconds() + self.gateway.settings.delete_grace
        replaced = await self.store.swap_locations(
            record.bucket, record.key, record.locations, new, delete_after
        )
        if replaced is None:
            current = await self.store.get_object(record.bucket, record.key)
            kept = set(current.locations) if current is not None else set()
            await self.gateway.retirement.discard([loc for loc in made if loc not in kept])
            summary.problem(f"{record.bucket}/{record.key}: changed during repair")
            return False
        for location in new:
            if location not in record.locations:
                self.usage.adjust(location.backend, record.size, 1)
        for location in replaced.to_delete:
            self.usage.adjust(location.backend, -record.size, -1)
        summary.dropped += len(replaced.to_delete)
        metrics.REPAIR_DROPPED.inc(len(replaced.to_delete))
        await self.gateway.retirement.retire(replaced)
        return True

    async def _copy(
        self,
        object_id: int,
        record: ObjectRecord,
        sources: list[Location],
        target: Location,
        summary: RepairPass,
    ) -> bool:
        """Copy ``record``'s bytes to ``target`` from the first source that gives them, with
        the source's stored headers and metadata (what a rebuild reads); whether it did."""
        for source in sources:
            now = self.clock.seconds()
            if not await self.store.claim_repair(object_id, self.owner, now, now + CLAIM_LEASE):
                summary.problem(f"{record.bucket}/{record.key}: claim taken over")
                return False
            await self.limits.pace(record.size)
            try:
                size = await self.copier.copy(record, source, target)
            except ObjectChanged:
                return False
            except BackendError as error:
                summary.problem(
                    f"{record.bucket}/{record.key} {source.backend} -> {target.backend}: {error}"
                )
                if error.backend == target.backend:
                    break
                continue
            summary.copies += 1
            summary.bytes_copied += size
            metrics.REPAIR_COPIES.labels(target.backend).inc()
            metrics.REPAIR_BYTES.labels(target.backend).inc(size)
            return True
        summary.failures += 1
        metrics.REPAIR_FAILURES.inc()
        return False

    # -- the admin API -----------------------------------------------------------------------

    def report(self) -> dict[str, Any]:
        """``GET /api/repair``: the last pass, the one running, and the backlog."""
        last = self.last.to_json() if self.last is not None else None
        return {
            "running": self.current is not None,
            "current_pass": self.current.to_json() if self.current is not None else None,
            "last_pass": last,
            "backlog": self.last.backlog if self.last is not None else None,
            "verification": self.verification(),
            "settings": {
                "interval": self.config.interval,
                "after": self.config.after,
                "max_concurrency": self.config.max_concurrency,
                "max_bytes_per_second": self.config.max_bytes_per_second,
                "verify_batch": self.config.verify_batch,
            },
        }

    def verification(self) -> dict[str, Any]:
        """Where the incremental verification is, by backend: the share of its copies checked
        in the current cycles, and each bucket's cursor."""
        backends: dict[str, Any] = {}
        for (name, bucket), cursor in sorted(self.progress.items()):
            entry = backends.setdefault(name, {"fraction": self._fraction(name), "buckets": {}})
            entry["buckets"][bucket] = {
                "after": cursor.after,
                "checked": cursor.checked,
                "last_total": cursor.last_total,
                "cycles": cursor.cycles,
                "sweep": cursor.sweep,
                "updated_at": cursor.updated_at,
            }
        return backends


def _listed_intact(entry: ListedObject | None, size: int, etag: str) -> bool:
    """Whether a listing's entry shows the row's bytes: listed, same size, and an ETag (when
    the listing gives one) that does not say otherwise."""
    if entry is None or entry.size != size:
        return False
    if not entry.etag:
        return True
    return etag_agrees(etag, entry.etag) is not False
