"""Repair: bringing every object of a replicated virtual bucket back to ``replicas`` usable copies.

A write stores N copies (:mod:`s3balance.replicated`); later a backend may die, be wiped, or be
dropped from the configuration, and ``replicas`` may change on reload.  Every ``repair.interval``
seconds a pass (:meth:`Repairer.run_once`, in the one process that runs housekeeping) finds:

- objects with a location on a backend that is no longer configured, or that has not been
  available (healthy and enabled) for longer than ``repair.after``: that copy is *lost*;
- objects whose copy a backend no longer has, or holds with other bytes: for the buckets with
  ``replicas`` above 1, each available backend's listing of their prefixes is compared with the
  rows (as scrub does), and a key the listing lacks, lists at another size, or lists with an ETag
  that says other bytes (:func:`~s3balance.copying.etag_agrees`: only plain MD5 ETags are
  compared, a multipart one says nothing) is confirmed with a HEAD before it counts as
  *missing* (re-created where it was);
- objects with fewer or more locations than their bucket's ``replicas``.

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
from dataclasses import asdict, dataclass, field
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime

from s3balance import metrics
from s3balance.backends.interface import BackendError, BackendNoSuchKey, ListedObject
from s3balance.config import RepairConfig
from s3balance.copying import ObjectCopier, etag_agrees
from s3balance.db.records import Location, ObjectRecord
from s3balance.db.store import MetadataStore
from s3balance.gateway import Gateway
from s3balance.health import BackendHealth, HealthMonitor
from s3balance.housekeeping import PeriodicRounds
from s3balance.logs import make_logger
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

    def _lost_backends(self, now: float) -> set[str]:
        """Configured backends unavailable for longer than ``repair.after``."""
        lost: set[str] = set()
        for name in self.pool.names():
            if self.pool.is_available(name):
                self._unavailable_since.pop(name, None)
                continue
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
        try:
            lost = self._lost_backends(now)
            usable = [name for name in self.pool.names() if name not in lost]
            # Only objects with another copy can have a missing one re-created.
            replicated = sorted(b for b, n in self.gateway.settings.replicas.items() if n > 1)
            missing = await self._missing_copies(summary, replicated) if replicated else {}
            for bucket in await self.store.list_buckets():
                await self._repair_bucket(bucket.name, usable, lost, missing, summary)
            leftover = [
                Suspect(*found, frozenset(where)) for found, where in sorted(missing.items())
            ]
            await self._repair_all(leftover, lost, summary)
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

    async def _repair_bucket(
        self,
        bucket: str,
        usable: list[str],
        lost: set[str],
        missing: dict[tuple[int, str, str], set[Location]],
        summary: RepairPass,
    ) -> None:
        """Page through ``bucket``'s objects whose locations are not what they should be."""
        copies = self.gateway.replicas.copies(bucket)
        # A lone copy on a lost backend has nothing to be copied from: only the count matters.
        suspects_of = usable if copies > 1 else None
        after = ""
        while True:
            page = await self.store.repair_candidates(bucket, copies, suspects_of, after, PAGE)
            if not page:
                return
            after = page[-1][1]
            await self._repair_all(
                [
                    Suspect(oid, bucket, key, frozenset(missing.pop((oid, bucket, key), ())))
                    for oid, key in page
                ],
                lost,
                summary,
            )
            if len(page) < PAGE:
                return

    async def _repair_all(
        self,
        suspects: list[Suspect],
        lost: set[str],
        summary: RepairPass,
    ) -> None:
        """Repair ``suspects``, ``repair.max_concurrency`` at once."""

        def one(suspect: Suspect) -> defer.Deferred[None]:
            return self.limits.run(lambda: self._repair_claimed(suspect, lost, summary))

        await defer.gatherResults([one(suspect) for suspect in suspects], consumeErrors=True)

    async def _missing_copies(
        self, summary: RepairPass, buckets: list[str]
    ) -> dict[tuple[int, str, str], set[Location]]:
        """Locations of ``buckets``' objects each available backend's listing lacks, or lists
        at another size or with an ETag that says other bytes (:func:`~s3balance.copying.
        etag_agrees`), by object.  Only those buckets' prefixes are listed (a real key starts
        with its virtual bucket's name); rows are read before the listing, so a write committed
        meanwhile is not among them."""
        found: dict[tuple[int, str, str], set[Location]] = {}
        prefixes = tuple(f"{bucket}/" for bucket in buckets)
        for name in self.pool.names():
            if not self.pool.is_available(name):
                continue
            try:
                rows = {
                    real: stored
                    for real, stored in (await self.store.objects_on(name)).items()
                    if real.startswith(prefixes)
                }
                listed: dict[str, ListedObject] = {}
                for prefix in prefixes if rows else ():
                    for entry in await self.pool.get(name).list_objects(prefix):
                        listed[comparable_key(entry.key)] = entry
            except Exception as error:
                summary.problem(f"listing {name}: {error}")
                continue
            absent = [
                real for real, (size, etag) in rows.items()
                if not _listed_intact(listed.get(comparable_key(real)), size, etag)
            ]  # fmt: skip
            for start in range(0, len(absent), PAGE):
                chunk = absent[start : start + PAGE]
                for object_id, bucket, key, real in await self.store.objects_at(name, chunk):
                    found.setdefault((object_id, bucket, key), set()).add(Location(name, real))
        return found

    async def _repair_claimed(self, suspect: Suspect, lost: set[str], summary: RepairPass) -> None:
        """Claim one object, repair it, release it; its outcome goes into ``summary``."""
        now = self.clock.seconds()
        owner, object_id = self.owner, suspect.object_id
        if not await self.store.claim_repair(object_id, owner, now, now + CLAIM_LEASE):
            summary.claimed_elsewhere += 1
            return
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
        else:
            summary.backlog += 1

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
            return True
        except BackendError:
            return False
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
            "settings": {
                "interval": self.config.interval,
                "after": self.config.after,
                "max_concurrency": self.config.max_concurrency,
                "max_bytes_per_second": self.config.max_bytes_per_second,
            },
        }


def _listed_intact(entry: ListedObject | None, size: int, etag: str) -> bool:
    """Whether a listing's entry shows the row's bytes: listed, same size, and an ETag (when
    the listing gives one) that does not say otherwise."""
    if entry is None or entry.size != size:
        return False
    if not entry.etag:
        return True
    return etag_agrees(etag, entry.etag) is not False
