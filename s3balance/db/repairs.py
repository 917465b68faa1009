"""Repair's rows: which objects lack copies, the claims that keep two daemons from repairing one
object at once, the compare-and-set that swaps an object's locations, and what repair remembers
between passes so that a pass costs what changed (``repair_buckets``: the ``replicas`` each
bucket was last fully repaired for; ``repair_queue``: objects to look at; ``repair_cursors``: how
far the incremental verification of each backend's copies got).

The swap (:func:`_swap_locations`) locks the object row and goes ahead only when its locations are
still exactly those the repair read: a write, delete or other repair meanwhile makes it fire None
and change nothing, and the caller discards the copies it made.  In the same transaction it moves
usage (each copy counts on its backend) and queues the dropped locations in ``pending_deletions``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from s3balance.db.base import DBComponent, may_fail
from s3balance.db.buckets import bucket_id
from s3balance.db.deletions import queue_deletions
from s3balance.db.model import (
    object_locations,
    objects,
    repair_buckets,
    repair_claims,
    repair_cursors,
    repair_queue,
    virtual_buckets,
)
from s3balance.db.objects import Replacement
from s3balance.db.records import Location
from s3balance.db.repairqueue import queue_repair, upsert
from s3balance.db.usage import UPSERT_ATTEMPTS, apply_usage, new_deltas

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

__all__ = ["Cursor", "Queued", "RepairedBucket", "RepairsComponent", "VerifiedRow"]


@dataclass(frozen=True)
class RepairedBucket:
    """What a bucket was last fully repaired for: its ``replicas`` (None: never, or forgotten
    since), and the generation of that record (see :data:`s3balance.db.model.repair_buckets`)."""

    replicas: int | None
    generation: int


@dataclass(frozen=True)
class Queued:
    """An object in ``repair_queue``: its id, bucket and key, and when it was queued (a dequeue
    names it, so that a later queueing of the same object is not lost)."""

    object_id: int
    bucket: str
    key: str
    queued_at: float


@dataclass(frozen=True)
class VerifiedRow:
    """One copy the incremental verification checks: the object and the copy's real key."""

    object_id: int
    key: str
    real_key: str
    size: int
    etag: str


@dataclass(frozen=True)
class Cursor:
    """How far the verification of ``backend``'s copies of ``bucket`` got (``repair_cursors``:
    see :mod:`s3balance.db.model`)."""

    backend: str
    bucket: str
    after: str = ""
    checked: int = 0
    last_total: int | None = None
    cycles: int = 0
    sweep: bool = False
    updated_at: float = 0.0


class RepairsComponent(DBComponent):
    """Candidates, claims and location swaps for :mod:`s3balance.repair`."""

    def repair_candidates(
        self, bucket: str, copies: int, usable: Sequence[str] | None, after: str, limit: int
    ) -> Deferred[list[tuple[int, str]]]:
        """``(object id, key)`` of the objects of ``bucket`` after key ``after`` (in key order)
        whose number of locations is not ``copies`` or (unless ``usable`` is None) that have a
        location on a backend not in ``usable``; at most ``limit``."""
        names = None if usable is None else list(usable)
        return self.pool.do_read(_repair_candidates, bucket, copies, names, after, limit)

    def repaired_replicas(self) -> Deferred[dict[str, RepairedBucket]]:
        """What each bucket was last fully repaired for (buckets without a row are absent)."""
        return self.pool.do_read(_repaired_replicas)

    def set_repaired_replicas(
        self, bucket: str, replicas: int, generation: int | None
    ) -> Deferred[bool]:
        """Remember that every object of ``bucket`` was looked at for ``replicas``, if its row
        is still at ``generation`` (None: there was no row) as the pass read it before it began;
        fires whether it did."""
        return self.pool.do(_set_repaired_replicas, bucket, replicas, generation)

    def forget_repaired_replicas(self, buckets: Sequence[str] | None = None) -> Deferred[None]:
        """Make the next repair pass look at every object of ``buckets`` (every bucket when
        None), and a pass running now record nothing: rows were made by something other than
        the write path (a rebuild, an import)."""
        names = None if buckets is None else list(buckets)
        return self.pool.do(_forget_repaired_replicas, names)

    def forget_changed_replicas(
        self, replicas: dict[str, int], changed: Sequence[str] = ()
    ) -> Deferred[list[str]]:
        """Forget (as :meth:`forget_repaired_replicas`) the buckets ``changed`` (whose
        ``replicas`` this process just changed) and those last fully repaired for another
        ``replicas`` than ``replicas`` gives (1 for buckets it does not name); fires with their
        names.  Every process calls it when it starts and on each reload, before writing with
        the new values: objects written meanwhile have the other number of copies, even when
        the value changes back before repair's next pass."""
        return self.pool.do(_forget_changed_replicas, dict(replicas), sorted(changed))

    def queue_repairs(self, object_ids: Iterable[int], now: float) -> Deferred[None]:
        """Put objects in ``repair_queue`` (queued at ``now``)."""
        return self.pool.do(_queue_repairs, sorted(set(object_ids)), now)

    def queued_repairs(self, after: int, limit: int) -> Deferred[list[Queued]]:
        """The queued objects with an id above ``after``, in id order; at most ``limit``."""
        return self.pool.do_read(_queued_repairs, after, limit)

    def dequeue_repair(self, object_id: int, queued_at: float) -> Deferred[None]:
        """Take an object off the queue, unless it was queued again since ``queued_at``."""
        return self.pool.do(_dequeue_repair, object_id, queued_at)

    def copies_on_backends(
        self, backends: Sequence[str], buckets: Sequence[str], after: int, limit: int
    ) -> Deferred[list[tuple[int, int, str, str]]]:
        """``(location id, object id, bucket, key)`` of the locations on ``backends`` of
        objects of ``buckets``, with a location id above ``after``, in that order; at most
        ``limit`` (found through the index on ``object_locations.backend``)."""
        return self.pool.do_read(_copies_on_backends, list(backends), list(buckets), after, limit)

    def verification_slice(
        self, backend: str, bucket: str, after: str, limit: int
    ) -> Deferred[list[VerifiedRow]]:
        """The copies on ``backend`` of the objects of ``bucket`` after key ``after``, in key
        order; at most ``limit`` objects."""
        return self.pool.do_read(_verification_slice, backend, bucket, after, limit)

    def repair_cursors(self) -> Deferred[list[Cursor]]:
        """Every verification cursor."""
        return self.pool.do_read(_repair_cursors)

    def save_cursor(self, cursor: Cursor) -> Deferred[None]:
        """Write a verification cursor (nothing when its bucket is gone)."""
        return self.pool.do(_save_cursor, cursor)

    def claim_repair(self, object_id: int, owner: str, now: float, until: float) -> Deferred[bool]:
        """Claim object ``object_id`` for ``owner`` until ``until``; fires False when another
        owner holds an unexpired claim.  Expired claims of every object are dropped too."""
        return self.pool.do(_claim_repair, object_id, owner, now, until)

    def release_repair(self, object_id: int, owner: str) -> Deferred[None]:
        """Drop ``owner``'s claim on ``object_id`` (nothing when it was taken over)."""
        return self.pool.do(_release_repair, object_id, owner)

    def swap_locations(
        self,
        bucket: str,
        key: str,
        expected: Sequence[Location],
        new: Sequence[Location],
        delete_after: float,
    ) -> Deferred[Replacement | None]:
        """Give object ``bucket``/``key`` the locations ``new`` if it still has exactly
        ``expected`` (see the module docstring); fires what was dropped (queued for deletion
        after ``delete_after``), or None when the object changed or is gone."""
        return self.pool.do(_swap_locations, bucket, key, tuple(expected), tuple(new), delete_after)


# In a database thread, inside the pool's transaction (see s3balance.db.base).


def _repaired_replicas(conn: sa.Connection) -> dict[str, RepairedBucket]:
    query = sa.select(
        virtual_buckets.c.name, repair_buckets.c.replicas, repair_buckets.c.generation
    ).join(repair_buckets, repair_buckets.c.bucket_id == virtual_buckets.c.id)
    return {
        row.name: RepairedBucket(
            None if row.replicas is None else int(row.replicas), int(row.generation)
        )
        for row in conn.execute(query)
    }


def _set_repaired_replicas(
    conn: sa.Connection, bucket: str, replicas: int, generation: int | None
) -> bool:
    owner = bucket_id(conn, bucket)
    if owner is None:
        return False
    if generation is not None:
        done = conn.execute(
            repair_buckets.update()
            .where(repair_buckets.c.bucket_id == owner, repair_buckets.c.generation == generation)
            .values(replicas=replicas)
        )
        return bool(done.rowcount)
    try:
        with may_fail(conn):
            conn.execute(
                repair_buckets.insert().values(bucket_id=owner, replicas=replicas, generation=0)
            )
    except sa.exc.IntegrityError:
        return False  # forgotten meanwhile
    return True


def _forget(conn: sa.Connection, owner: int) -> None:
    """Set a bucket's row to "not repaired", one generation on (inserting it when missing)."""
    where = repair_buckets.c.bucket_id == owner
    for _ in range(UPSERT_ATTEMPTS):
        bumped = repair_buckets.update().where(where)
        if conn.execute(
            bumped.values(replicas=None, generation=repair_buckets.c.generation + 1)
        ).rowcount:
            return
        try:
            with may_fail(conn):
                conn.execute(
                    repair_buckets.insert().values(bucket_id=owner, replicas=None, generation=1)
                )
            return
        except sa.exc.IntegrityError:
            continue
    raise RuntimeError(f"could neither update nor insert repair_buckets row {owner}")


def _forget_repaired_replicas(conn: sa.Connection, buckets: list[str] | None) -> None:
    query = sa.select(virtual_buckets.c.id).order_by(virtual_buckets.c.id)
    if buckets is not None:
        query = query.where(virtual_buckets.c.name.in_(buckets))
    for owner in conn.execute(query).scalars().all():
        _forget(conn, int(owner))


def _forget_changed_replicas(
    conn: sa.Connection, replicas: dict[str, int], changed: list[str]
) -> list[str]:
    query = (
        sa.select(virtual_buckets.c.id, virtual_buckets.c.name, repair_buckets.c.replicas)
        .outerjoin(repair_buckets, repair_buckets.c.bucket_id == virtual_buckets.c.id)
        .order_by(virtual_buckets.c.id)
    )
    forgotten = []
    for owner, name, done in conn.execute(query).all():
        if name in changed or (done is not None and done != replicas.get(name, 1)):
            _forget(conn, int(owner))
            forgotten.append(name)
    return forgotten


#: Objects queued per statement.
QUEUE_CHUNK = 500


def _queue_repairs(conn: sa.Connection, object_ids: list[int], now: float) -> None:
    for start in range(0, len(object_ids), QUEUE_CHUNK):
        chunk = object_ids[start : start + QUEUE_CHUNK]
        existing = set(
            conn.execute(sa.select(objects.c.id).where(objects.c.id.in_(chunk))).scalars()
        )
        queued = set(
            conn.execute(
                sa.select(repair_queue.c.object_id).where(repair_queue.c.object_id.in_(chunk))
            ).scalars()
        )
        if queued:
            conn.execute(
                repair_queue.update()
                .where(repair_queue.c.object_id.in_(sorted(queued)))
                .values(queued_at=now)
            )
        fresh = sorted(existing - queued)
        try:
            with may_fail(conn):
                if fresh:
                    conn.execute(
                        repair_queue.insert(), [{"object_id": i, "queued_at": now} for i in fresh]
                    )
        except sa.exc.IntegrityError:  # a commit queued one meanwhile: one at a time then
            for object_id in fresh:
                queue_repair(conn, object_id, now)


def _queued_repairs(conn: sa.Connection, after: int, limit: int) -> list[Queued]:
    query = (
        sa.select(
            repair_queue.c.object_id, repair_queue.c.queued_at, virtual_buckets.c.name,
            objects.c.key,
        )
        .join(objects, objects.c.id == repair_queue.c.object_id)
        .join(virtual_buckets, virtual_buckets.c.id == objects.c.bucket_id)
        .where(repair_queue.c.object_id > after)
        .order_by(repair_queue.c.object_id)
        .limit(limit)
    )  # fmt: skip
    return [
        Queued(int(row.object_id), row.name, row.key, float(row.queued_at))
        for row in conn.execute(query)
    ]


def _dequeue_repair(conn: sa.Connection, object_id: int, queued_at: float) -> None:
    conn.execute(
        repair_queue.delete().where(
            repair_queue.c.object_id == object_id, repair_queue.c.queued_at <= queued_at
        )
    )


def _copies_on_backends(
    conn: sa.Connection, backends: list[str], buckets: list[str], after: int, limit: int
) -> list[tuple[int, int, str, str]]:
    if not backends or not buckets:
        return []
    query = (
        sa.select(object_locations.c.id, objects.c.id.label("object_id"), virtual_buckets.c.name,
                  objects.c.key)
        .join(objects, objects.c.id == object_locations.c.object_id)
        .join(virtual_buckets, virtual_buckets.c.id == objects.c.bucket_id)
        .where(
            object_locations.c.backend.in_(backends),
            virtual_buckets.c.name.in_(buckets),
            object_locations.c.id > after,
        )
        .order_by(object_locations.c.id)
        .limit(limit)
    )  # fmt: skip
    return [(int(row.id), int(row.object_id), row.name, row.key) for row in conn.execute(query)]


def _verification_slice(
    conn: sa.Connection, backend: str, bucket: str, after: str, limit: int
) -> list[VerifiedRow]:
    owner = bucket_id(conn, bucket)
    if owner is None:
        return []
    query = (
        sa.select(objects.c.id, objects.c.key, objects.c.size, objects.c.etag,
                  object_locations.c.real_key)
        .join(object_locations, object_locations.c.object_id == objects.c.id)
        .where(
            objects.c.bucket_id == owner,
            objects.c.key > after,
            object_locations.c.backend == backend,
        )
        .order_by(objects.c.key)
        .limit(limit)
    )  # fmt: skip
    return [
        VerifiedRow(int(row.id), row.key, row.real_key, int(row.size), row.etag)
        for row in conn.execute(query)
    ]


def _repair_cursors(conn: sa.Connection) -> list[Cursor]:
    query = (
        sa.select(repair_cursors, virtual_buckets.c.name)
        .join(virtual_buckets, virtual_buckets.c.id == repair_cursors.c.bucket_id)
        .order_by(repair_cursors.c.backend, virtual_buckets.c.name)
    )
    return [
        Cursor(
            row.backend, row.name, row.after, int(row.checked),
            None if row.last_total is None else int(row.last_total), int(row.cycles),
            bool(row.sweep), float(row.updated_at),
        )
        for row in conn.execute(query)
    ]  # fmt: skip


def _save_cursor(conn: sa.Connection, cursor: Cursor) -> None:
    owner = bucket_id(conn, cursor.bucket)
    if owner is None:
        return
    upsert(
        conn,
        repair_cursors,
        {"backend": cursor.backend, "bucket_id": owner},
        {
            "after": cursor.after, "checked": cursor.checked, "last_total": cursor.last_total,
            "cycles": cursor.cycles, "sweep": cursor.sweep, "updated_at": cursor.updated_at,
        },
    )  # fmt: skip


def _repair_candidates(
    conn: sa.Connection,
    bucket: str,
    copies: int,
    usable: list[str] | None,
    after: str,
    limit: int,
) -> list[tuple[int, str]]:
    owner = bucket_id(conn, bucket)
    if owner is None:
        return []
    if usable is None:
        suspect: Any = sa.literal(0)
    elif usable:
        suspect = sa.case((object_locations.c.backend.in_(usable), 0), else_=1)
    else:
        suspect = sa.literal(1)
    suspect_count = sa.func.sum(suspect)
    query = (
        sa.select(objects.c.id, objects.c.key)
        .join(object_locations, object_locations.c.object_id == objects.c.id)
        .where(objects.c.bucket_id == owner, objects.c.key > after)
        .group_by(objects.c.id, objects.c.key)
        .having(sa.or_(sa.func.count(object_locations.c.id) != copies, suspect_count > 0))
        .order_by(objects.c.key)
        .limit(limit)
    )
    return [(int(row.id), row.key) for row in conn.execute(query)]


def _claim_repair(
    conn: sa.Connection, object_id: int, owner: str, now: float, until: float
) -> bool:
    conn.execute(repair_claims.delete().where(repair_claims.c.expires < now))
    conn.execute(
        repair_claims.delete().where(
            repair_claims.c.object_id == object_id, repair_claims.c.owner == owner
        )
    )
    try:
        with may_fail(conn):
            conn.execute(
                repair_claims.insert(), {"object_id": object_id, "owner": owner, "expires": until}
            )
    except sa.exc.IntegrityError:
        return False
    return True


def _release_repair(conn: sa.Connection, object_id: int, owner: str) -> None:
    conn.execute(
        repair_claims.delete().where(
            repair_claims.c.object_id == object_id, repair_claims.c.owner == owner
        )
    )


def _swap_locations(
    conn: sa.Connection,
    bucket: str,
    key: str,
    expected: tuple[Location, ...],
    new: tuple[Location, ...],
    delete_after: float,
) -> Replacement | None:
    owner = bucket_id(conn, bucket)
    if owner is None:
        return None
    row = conn.execute(
        sa.select(objects.c.id, objects.c.size)
        .where(objects.c.bucket_id == owner, objects.c.key == key)
        .with_for_update()
    ).first()
    if row is None:
        return None
    current = tuple(
        Location(found.backend, found.real_key)
        for found in conn.execute(
            sa.select(object_locations.c.backend, object_locations.c.real_key)
            .where(object_locations.c.object_id == row.id)
            .order_by(object_locations.c.position)
        )
    )
    if set(current) != set(expected) or len(current) != len(expected):
        return None
    if new == current:
        return Replacement(row.size, current, [])
    conn.execute(object_locations.delete().where(object_locations.c.object_id == row.id))
    conn.execute(
        object_locations.insert(),
        [
            {
                "object_id": row.id,
                "position": position,
                "backend": location.backend,
                "real_key": location.real_key,
            }
            for position, location in enumerate(new)
        ],
    )
    deltas = new_deltas()
    for location in new:
        if location not in current:
            deltas[location.backend][0] += row.size
            deltas[location.backend][1] += 1
    dropped = [location for location in current if location not in new]
    for location in dropped:
        deltas[location.backend][0] -= row.size
        deltas[location.backend][1] -= 1
    apply_usage(conn, deltas)
    ids = queue_deletions(conn, dropped, delete_after)
    return Replacement(int(row.size), current, dropped, ids)
