"""Repair's rows: which objects lack copies, the claims that keep two daemons from repairing one
object at once, and the compare-and-set that swaps an object's locations.

The swap (:func:`_swap_locations`) locks the object row and goes ahead only when its locations are
still exactly those the repair read: a write, delete or other repair meanwhile makes it fire None
and change nothing, and the caller discards the copies it made.  In the same transaction it moves
usage (each copy counts on its backend) and queues the dropped locations in ``pending_deletions``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from s3balance.db.base import DBComponent, may_fail
from s3balance.db.buckets import bucket_id
from s3balance.db.deletions import queue_deletions
from s3balance.db.model import object_locations, objects, repair_claims, virtual_buckets
from s3balance.db.objects import Replacement
from s3balance.db.records import Location
from s3balance.db.usage import apply_usage, new_deltas

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

__all__ = ["RepairsComponent"]


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

    def objects_at(
        self, backend: str, real_keys: Sequence[str]
    ) -> Deferred[list[tuple[int, str, str, str]]]:
        """``(object id, bucket, key, real key)`` of the objects with a location at one of
        ``real_keys`` on ``backend``."""
        return self.pool.do_read(_objects_at, backend, list(real_keys))

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


def _objects_at(
    conn: sa.Connection, backend: str, real_keys: list[str]
) -> list[tuple[int, str, str, str]]:
    if not real_keys:
        return []
    query = (
        sa.select(objects.c.id, virtual_buckets.c.name, objects.c.key, object_locations.c.real_key)
        .join(object_locations, object_locations.c.object_id == objects.c.id)
        .join(virtual_buckets, virtual_buckets.c.id == objects.c.bucket_id)
        .where(object_locations.c.backend == backend, object_locations.c.real_key.in_(real_keys))
    )
    return [(int(row.id), row.name, row.key, row.real_key) for row in conn.execute(query)]


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
