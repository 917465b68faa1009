"""Jobs' rows: resumable background work (:mod:`s3balance.jobs`), its claims, and the real buckets
being drained.

A job is claimed by one daemon at a time: :func:`_claim_job` moves a ``queued`` job (or a
``running`` one whose claim expired: its daemon died) to ``running`` under the claimer's name by a
compare-and-set on the row, so two daemons racing for it never both win.  The holder's heartbeat
(:func:`_heartbeat_job`) saves the progress and renews the claim, and learns of a pause or a
cancel made meanwhile (through any daemon's admin API: they only change ``state``).  A pause or
cancel therefore needs no message to the daemon running the job; a resume puts the job back in
the queue, where any daemon claims it once its last holder has let go of it (or died).

``drained_backends`` lists the real buckets placement must skip; a drain creates its row and its
job in one transaction, and cancelling the job deletes the row (the backend takes writes again).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from s3balance.db.base import DBComponent, may_fail
from s3balance.db.model import (
    drained_backends,
    jobs,
    multipart_uploads,
    object_locations,
    objects,
    pending_deletions,
    virtual_buckets,
)
from s3balance.db.records import FINAL_JOB_STATES, JobProgress, JobRecord

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

__all__ = ["BackendLocation", "JobStateError", "JobsComponent"]


@dataclass(frozen=True)
class BackendLocation:
    """One object location on a backend, as a drain pages through them."""

    id: int
    bucket: str
    key: str
    real_key: str
    size: int

#: What each control action may start from, and the state it leads to.
TRANSITIONS: dict[str, tuple[tuple[str, ...], str]] = {
    "pause": (("queued", "running"), "paused"),
    "resume": (("paused", "failed"), "queued"),
    "cancel": (("queued", "running", "paused", "failed"), "cancelled"),
}


class JobStateError(Exception):
    """A control action the job's state does not allow (pausing a finished job)."""

    def __init__(self, job: JobRecord, action: str) -> None:
        super().__init__(f"job {job.id} is {job.state}: it cannot {action}")
        self.job = job
        self.action = action


class JobsComponent(DBComponent):
    """Job rows, their claims, and drained backends."""

    def create_job(
        self, kind: str, target: str, params: dict[str, Any], now: float
    ) -> Deferred[JobRecord]:
        """A new ``queued`` job."""
        return self.pool.do(_create_job, kind, target, dict(params), now)

    def get_job(self, job_id: int) -> Deferred[JobRecord | None]:
        return self.pool.do_read(_get_job, job_id)

    def list_jobs(
        self, states: tuple[str, ...] | None = None, limit: int = 100
    ) -> Deferred[list[JobRecord]]:
        """Jobs newest first (only those in ``states`` when given), at most ``limit``."""
        return self.pool.do_read(_list_jobs, states, limit)

    def job_counts(self) -> Deferred[dict[tuple[str, str], int]]:
        """How many jobs there are of each ``(kind, state)``."""
        return self.pool.do_read(_job_counts)

    def claim_job(
        self,
        kinds: tuple[str, ...],
        owner: str,
        now: float,
        until: float,
        exclude: tuple[int, ...] = (),
    ) -> Deferred[JobRecord | None]:
        """The oldest job of ``kinds`` that is queued (or running under an expired claim), now
        ``running`` for ``owner`` until ``until``; None when there is none.  Jobs ``exclude``
        names are left alone (the caller is still winding them down)."""
        return self.pool.do(_claim_job, tuple(kinds), owner, now, until, tuple(exclude))

    def heartbeat_job(
        self, job_id: int, owner: str, progress: JobProgress, now: float, until: float
    ) -> Deferred[str | None]:
        """Save ``progress`` and renew ``owner``'s claim; fires the job's state (``paused`` or
        ``cancelled`` when someone asked meanwhile), or None when ``owner`` no longer holds it
        (taken over, or resumed and claimed by another daemon)."""
        return self.pool.do(_heartbeat_job, job_id, owner, progress, now, until)

    def end_job(
        self, job_id: int, owner: str, progress: JobProgress, now: float, state: str
    ) -> Deferred[str | None]:
        """``owner`` lets go of the job with ``progress``: a running job becomes ``state``
        (``done``, ``failed``, or ``queued`` at shutdown), a job paused or cancelled meanwhile
        keeps that state.  Fires the state it is left in, or None when ``owner`` did not hold
        it."""
        return self.pool.do(_end_job, job_id, owner, progress, now, state)

    def control_job(self, job_id: int, action: str, now: float) -> Deferred[JobRecord | None]:
        """``pause``, ``resume`` or ``cancel`` a job; fires the job as it is now, None when there
        is no such job.

        :raises JobStateError: (as the failure) its state does not allow ``action``.
        :raises ValueError: ``action`` is none of those.
        """
        if action not in TRANSITIONS:
            raise ValueError(f"unknown job action {action!r}")
        return self.pool.do(_control_job, job_id, action, now)

    def drain_backend(self, backend: str, now: float) -> Deferred[JobRecord]:
        """Mark ``backend`` drained and give it a ``drain`` job; when it is drained already, the
        job it has (a failed one is queued again)."""
        return self.pool.do(_drain_backend, backend, now)

    def undrain_backend(self, backend: str, now: float) -> Deferred[JobRecord | None]:
        """Give ``backend`` back to placement: its drained mark goes, and its drain job is
        cancelled unless it finished; fires that job (None when it had none)."""
        return self.pool.do(_undrain_backend, backend, now)

    def drained_backends(self) -> Deferred[dict[str, int | None]]:
        """The drained real buckets and their drain job's id."""
        return self.pool.do_read(_drained_backends)

    def locations_page(
        self, backend: str, after: int, limit: int
    ) -> Deferred[list[BackendLocation]]:
        """The object locations on ``backend`` with an id above ``after``, by id, at most
        ``limit`` (a drain's pages: the id is its cursor)."""
        return self.pool.do_read(_locations_page, backend, after, limit)

    def held_on(self, backend: str) -> Deferred[tuple[int, int, int, int]]:
        """``(objects, bytes, uploads in progress, deletions pending)`` s3balance has on
        ``backend``: all four are 0 once nothing it wrote is left there."""
        return self.pool.do_read(_held_on, backend)


# In a database thread, inside the pool's transaction (see s3balance.db.base).


def _progress_values(progress: JobProgress) -> dict[str, Any]:
    return {
        "objects_done": progress.objects_done,
        "objects_left": progress.objects_left,
        "bytes_done": progress.bytes_done,
        "bytes_left": progress.bytes_left,
        "errors": progress.errors,
        "last_error": None if progress.last_error is None else progress.last_error[:2000],
        "cursor": progress.cursor,
    }


def _record(row: Any) -> JobRecord:
    return JobRecord(
        id=int(row.id),
        kind=row.kind,
        target=row.target,
        params=dict(row.params or {}),
        state=row.state,
        progress=JobProgress(
            objects_done=int(row.objects_done),
            objects_left=None if row.objects_left is None else int(row.objects_left),
            bytes_done=int(row.bytes_done),
            bytes_left=None if row.bytes_left is None else int(row.bytes_left),
            errors=int(row.errors),
            last_error=row.last_error,
            cursor=row.cursor,
        ),
        created=float(row.created),
        updated=float(row.updated),
        started=None if row.started is None else float(row.started),
        finished=None if row.finished is None else float(row.finished),
        owner=row.owner,
        expires=None if row.expires is None else float(row.expires),
    )


def _insert_job(
    conn: sa.Connection, kind: str, target: str, params: dict[str, Any], now: float
) -> int:
    values = {
        "kind": kind,
        "target": target,
        "params": params,
        "state": "queued",
        "created": now,
        "updated": now,
        **_progress_values(JobProgress()),
    }
    result = conn.execute(jobs.insert().values(**values))
    key = result.inserted_primary_key
    assert key is not None
    return int(key[0])


def _create_job(
    conn: sa.Connection, kind: str, target: str, params: dict[str, Any], now: float
) -> JobRecord:
    record = _get_job(conn, _insert_job(conn, kind, target, params, now))
    assert record is not None
    return record


def _get_job(conn: sa.Connection, job_id: int) -> JobRecord | None:
    row = conn.execute(sa.select(jobs).where(jobs.c.id == job_id)).first()
    return None if row is None else _record(row)


def _list_jobs(conn: sa.Connection, states: tuple[str, ...] | None, limit: int) -> list[JobRecord]:
    query = sa.select(jobs).order_by(jobs.c.id.desc()).limit(limit)
    if states is not None:
        query = query.where(jobs.c.state.in_(states))
    return [_record(row) for row in conn.execute(query)]


def _job_counts(conn: sa.Connection) -> dict[tuple[str, str], int]:
    rows = conn.execute(
        sa.select(jobs.c.kind, jobs.c.state, sa.func.count()).group_by(jobs.c.kind, jobs.c.state)
    )
    return {(row[0], row[1]): int(row[2]) for row in rows}


def _claim_job(
    conn: sa.Connection,
    kinds: tuple[str, ...],
    owner: str,
    now: float,
    until: float,
    exclude: tuple[int, ...],
) -> JobRecord | None:
    if not kinds:
        return None
    let_go = sa.or_(jobs.c.owner.is_(None), jobs.c.expires.is_(None), jobs.c.expires < now)
    claimable = sa.and_(jobs.c.state.in_(("queued", "running")), let_go)
    query = sa.select(jobs.c.id, jobs.c.state, jobs.c.owner)
    query = query.where(jobs.c.kind.in_(kinds), claimable)
    if exclude:
        query = query.where(jobs.c.id.not_in(exclude))
    candidates = conn.execute(query.order_by(jobs.c.id).limit(10)).all()
    for row in candidates:
        # Compare-and-set: only if nobody claimed (or renewed) it since we read it.
        same_owner = jobs.c.owner.is_(None) if row.owner is None else jobs.c.owner == row.owner
        taken = conn.execute(
            jobs.update()
            .where(jobs.c.id == row.id, jobs.c.state == row.state, same_owner, claimable)
            .values(
                state="running",
                owner=owner,
                expires=until,
                updated=now,
                started=sa.func.coalesce(jobs.c.started, now),
            )
        )
        if taken.rowcount == 1:
            return _get_job(conn, int(row.id))
    return None


def _heartbeat_job(
    conn: sa.Connection,
    job_id: int,
    owner: str,
    progress: JobProgress,
    now: float,
    until: float,
) -> str | None:
    renewed = conn.execute(
        jobs.update()
        .where(jobs.c.id == job_id, jobs.c.owner == owner)
        .values(expires=until, updated=now, **_progress_values(progress))
    )
    if renewed.rowcount != 1:
        return None
    state: str = conn.execute(sa.select(jobs.c.state).where(jobs.c.id == job_id)).scalar_one()
    return state


def _end_job(
    conn: sa.Connection, job_id: int, owner: str, progress: JobProgress, now: float, state: str
) -> str | None:
    row = conn.execute(
        sa.select(jobs.c.state, jobs.c.owner).where(jobs.c.id == job_id).with_for_update()
    ).first()
    if row is None or row.owner != owner:
        return None
    final = state if row.state == "running" else row.state
    values: dict[str, Any] = {"state": final, "owner": None, "expires": None, "updated": now}
    if final in FINAL_JOB_STATES:
        values["finished"] = now
    conn.execute(
        jobs.update().where(jobs.c.id == job_id).values(**values, **_progress_values(progress))
    )
    return final


def _control_job(conn: sa.Connection, job_id: int, action: str, now: float) -> JobRecord | None:
    row = conn.execute(sa.select(jobs).where(jobs.c.id == job_id).with_for_update()).first()
    if row is None:
        return None
    sources, state = TRANSITIONS[action]
    if row.state not in sources:
        raise JobStateError(_record(row), action)
    values: dict[str, Any] = {"state": state, "updated": now}
    if action == "resume":
        # Back in the queue: whichever daemon claims it first runs it, once the daemon that
        # ran it has let go (saving its last progress) or its claim has expired.
        values["finished"] = None
    if action == "cancel":
        values["finished"] = now
        if row.owner is None:
            values["expires"] = None
        conn.execute(drained_backends.delete().where(drained_backends.c.job_id == job_id))
    conn.execute(jobs.update().where(jobs.c.id == job_id).values(**values))
    return _get_job(conn, job_id)


def _drain_backend(conn: sa.Connection, backend: str, now: float) -> JobRecord:
    existing = conn.execute(
        sa.select(drained_backends.c.job_id).where(drained_backends.c.backend == backend)
    ).first()
    if existing is not None and existing.job_id is not None:
        job = _get_job(conn, int(existing.job_id))
        if job is not None and job.state != "cancelled":
            if job.state == "failed":
                return _control_job(conn, job.id, "resume", now) or job
            return job
    job_id = _insert_job(conn, "drain", backend, {}, now)
    if existing is not None:
        conn.execute(
            drained_backends.update()
            .where(drained_backends.c.backend == backend)
            .values(job_id=job_id)
        )
    else:
        try:
            with may_fail(conn):
                conn.execute(
                    drained_backends.insert().values(backend=backend, since=now, job_id=job_id)
                )
        except sa.exc.IntegrityError:
            # Another daemon drained it at the same moment: its job is the one.
            conn.execute(jobs.delete().where(jobs.c.id == job_id))
            return _drain_backend(conn, backend, now)
    job = _get_job(conn, job_id)
    assert job is not None
    return job


def _undrain_backend(conn: sa.Connection, backend: str, now: float) -> JobRecord | None:
    row = conn.execute(
        sa.select(drained_backends.c.job_id).where(drained_backends.c.backend == backend)
    ).first()
    conn.execute(drained_backends.delete().where(drained_backends.c.backend == backend))
    if row is None or row.job_id is None:
        return None
    job = _get_job(conn, int(row.job_id))
    if job is not None and job.state in TRANSITIONS["cancel"][0]:
        return _control_job(conn, job.id, "cancel", now)
    return job


def _drained_backends(conn: sa.Connection) -> dict[str, int | None]:
    rows = conn.execute(sa.select(drained_backends.c.backend, drained_backends.c.job_id))
    return {row.backend: None if row.job_id is None else int(row.job_id) for row in rows}


def _locations_page(
    conn: sa.Connection, backend: str, after: int, limit: int
) -> list[BackendLocation]:
    query = (
        sa.select(
            object_locations.c.id,
            virtual_buckets.c.name,
            objects.c.key,
            object_locations.c.real_key,
            objects.c.size,
        )
        .join(objects, objects.c.id == object_locations.c.object_id)
        .join(virtual_buckets, virtual_buckets.c.id == objects.c.bucket_id)
        .where(object_locations.c.backend == backend, object_locations.c.id > after)
        .order_by(object_locations.c.id)
        .limit(limit)
    )
    return [
        BackendLocation(int(row.id), row.name, row.key, row.real_key, int(row.size))
        for row in conn.execute(query)
    ]


def _held_on(conn: sa.Connection, backend: str) -> tuple[int, int, int, int]:
    counted = conn.execute(
        sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(objects.c.size), 0))
        .select_from(object_locations)
        .join(objects, objects.c.id == object_locations.c.object_id)
        .where(object_locations.c.backend == backend)
    ).one()
    uploads = conn.execute(
        sa.select(sa.func.count())
        .select_from(multipart_uploads)
        .where(multipart_uploads.c.backend == backend)
    ).scalar_one()
    pending = conn.execute(
        sa.select(sa.func.count())
        .select_from(pending_deletions)
        .where(pending_deletions.c.backend == backend)
    ).scalar_one()
    return int(counted[0]), int(counted[1]), int(uploads), int(pending)
