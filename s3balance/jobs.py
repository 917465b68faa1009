"""Jobs: resumable, rate-limited background work kept in the database (a drain, a rebalance).

A job is a row of ``jobs`` (:mod:`s3balance.db.jobs`): its kind, its target, its parameters, its
state (``queued``, ``running``, ``paused``, ``done``, ``failed``, ``cancelled``), its counters and
a *cursor*, the kind's own resume position.  The :class:`JobRunner` of the process that runs
housekeeping (the only process, or worker 0) polls for queued jobs every ``jobs.poll_interval``
and claims them; several daemons sharing the database never run one job at once: the claim is a
compare-and-set on the row, renewed by a heartbeat every :data:`HEARTBEAT` seconds, and a job
whose daemon died (its claim older than ``jobs.lease``) is claimed again by another daemon (or by
the same daemon restarted) and resumes from its saved cursor.  The heartbeat saves the counters
and the cursor and learns whether someone paused or cancelled the job (through any daemon's admin
API, which only changes the row's ``state``); the job stops between two objects.  A daemon that
shuts down puts its jobs back in the queue.

All jobs of a daemon share one :class:`~s3balance.pacing.TransferLimits`:
``jobs.max_concurrency`` objects in flight and ``jobs.max_bytes_per_second``.

Adding a kind
-------------
A kind is one module exposing a :class:`JobKind` (its name and a coroutine function taking a
:class:`RunningJob`), and one registration in the composition root
(:class:`s3balance.components.Components`: ``self.jobs.register(mykind.KIND)``)::

    async def run(job: RunningJob) -> None:
        after = int(job.progress.cursor or 0)        # resume where the last run stopped
        for item in await page_after(job.daemon.store, after):
            # JobStopped (paused, cancelled, shutdown) is raised before the work starts; the
            # work runs under the shared limits (objects at once, bytes per second).
            if await job.transfer(item.size, lambda: move(job.daemon, item)):
                job.moved(item.size)
            else:
                job.problem(f"{item.key}: ...")      # counted, logged, kept as last_error
            job.update(cursor=str(item.id))          # everything up to here is done
        await job.save()                             # optional: the heartbeat saves anyway

    KIND = JobKind("mykind", run)

The coroutine returning means ``done``; raising anything but :class:`JobStopped` means ``failed``
(with the error as ``last_error``; a resume queues it again).  ``job.daemon`` is the
:class:`JobDaemon` (store, pool, gateway, usage, clock, and the :class:`~s3balance.copying.
ObjectCopier` that moves an object's bytes).  Call ``job.check()`` wherever else the job may
stop.  Submit a job with :meth:`JobRunner.submit` (any process: the runner that polls takes it).
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TypeVar

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from s3balance import metrics
from s3balance.config import JobsConfig
from s3balance.db.records import JOB_STATES, JobProgress, JobRecord
from s3balance.db.store import MetadataStore
from s3balance.labelled import labelled
from s3balance.logs import make_logger
from s3balance.pacing import TransferLimits
from s3balance.periodic import Periodic

if TYPE_CHECKING:
    from s3balance.copying import ObjectCopier
    from s3balance.gateway import Gateway
    from s3balance.pool import BackendPool
    from s3balance.usage import UsageMonitor

__all__ = [
    "HEARTBEAT",
    "JobDaemon",
    "JobKind",
    "JobRunner",
    "JobStopped",
    "RunningJob",
    "job_document",
    "settle",
]

log = make_logger()

T = TypeVar("T")

#: Seconds between heartbeats of a running job (at most a third of ``jobs.lease``): how soon a
#: pause or cancel made through another daemon takes effect.
HEARTBEAT = 2.0
#: Jobs one daemon runs at once (they share its limits).
MAX_RUNNING = 4
#: Seconds a shutting-down daemon waits for its jobs to stop between objects before it lets go of
#: them anyway (the object in flight is then abandoned: its copy is discarded by the next run).
STOP_GRACE = 10.0


class JobStopped(Exception):
    """The job must stop now, between objects: ``reason`` is ``paused``, ``cancelled``,
    ``shutdown`` or ``taken over``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class JobKind:
    """A kind of job: its name (the ``kind`` column) and what running one does."""

    name: str
    run: Callable[[RunningJob], Awaitable[None]]


@dataclass
class JobDaemon:
    """What a job works with: the daemon's parts."""

    store: MetadataStore
    pool: BackendPool
    gateway: Gateway
    usage: UsageMonitor
    clock: IReactorTime
    #: Copies an object's bytes between locations (server-side where it can).
    copier: ObjectCopier


async def settle(moves: Iterable[Coroutine[Any, Any, bool]]) -> int:
    """Run ``moves`` at once and wait for every one to end; how many returned true.

    No failure is raised before the last move ended (so a cursor saved afterwards never passes
    a move still running); then the first one is (``JobStopped`` included).
    """
    outcomes = await defer.DeferredList(
        [defer.ensureDeferred(move) for move in moves], consumeErrors=True
    )
    for ok, outcome in outcomes:
        if not ok:
            assert isinstance(outcome, Failure)
            outcome.raiseException()
    return sum(1 for _, outcome in outcomes if outcome)


class RunningJob:
    """A claimed job while its kind runs it: its row as claimed, its live progress (saved by each
    heartbeat) and its stop flag."""

    def __init__(self, record: JobRecord, runner: JobRunner) -> None:
        self.record = record
        self.runner = runner
        self.progress: JobProgress = record.progress
        #: Why the job must stop (set by the heartbeat, a local control call or shutdown).
        self.stopped: str | None = None

    @property
    def id(self) -> int:
        return self.record.id

    @property
    def target(self) -> str:
        return self.record.target

    @property
    def params(self) -> dict[str, Any]:
        return self.record.params

    @property
    def daemon(self) -> JobDaemon:
        return self.runner.daemon

    @property
    def limits(self) -> TransferLimits:
        return self.runner.limits

    @property
    def clock(self) -> IReactorTime:
        return self.runner.daemon.clock

    def check(self) -> None:
        """Call between objects.

        :raises JobStopped: the job was paused, cancelled or taken over, or the daemon stops.
        """
        if self.stopped is not None:
            raise JobStopped(self.stopped)

    async def transfer(self, size: int, work: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Run ``work`` (moving ``size`` bytes) under the daemon's shared limits: once fewer than
        ``jobs.max_concurrency`` transfers run and its turn under ``jobs.max_bytes_per_second``
        came.

        :raises JobStopped: the job must stop (checked before and after waiting its turn).
        """
        self.check()

        async def paced() -> T:
            self.check()
            await self.limits.pace(size)
            self.check()
            return await work()

        return await self.limits.run(paced)

    def update(self, **changes: Any) -> None:
        """Change progress fields (``objects_left=``, ``cursor=``...)."""
        self.progress = replace(self.progress, **changes)

    def moved(self, size: int, objects: int = 1) -> None:
        """Count ``objects`` moved (``size`` bytes in all)."""
        p = self.progress
        self.progress = replace(
            p,
            objects_done=p.objects_done + objects,
            bytes_done=p.bytes_done + size,
            objects_left=None if p.objects_left is None else max(0, p.objects_left - objects),
            bytes_left=None if p.bytes_left is None else max(0, p.bytes_left - size),
        )
        labelled(metrics.JOB_OBJECTS, self.record.kind).inc(objects)
        labelled(metrics.JOB_BYTES, self.record.kind).inc(size)

    def problem(self, text: str) -> None:
        """Count an object that could not be moved (logged, kept as ``last_error``)."""
        log.warn("job {id} ({kind} {target}): {problem}",
                 id=self.id, kind=self.record.kind, target=self.target, problem=text)
        self.progress = replace(self.progress, errors=self.progress.errors + 1, last_error=text)
        labelled(metrics.JOB_ERRORS, self.record.kind).inc()

    async def save(self) -> None:
        """Save the progress now (and learn whether to stop) instead of at the next heartbeat."""
        await self.runner.heartbeat(self)
        self.check()


class JobRunner(Service):
    """Claims and runs jobs (see the module docstring).

    :param daemon: the parts jobs work with.
    :param config: the ``jobs`` settings.
    :param owner: this daemon's name in claims (unique per process by default).
    """

    def __init__(self, daemon: JobDaemon, config: JobsConfig, owner: str | None = None) -> None:
        self.daemon = daemon
        self.config = config
        # At most 64 characters (the column): a long host name is cut.
        self.owner = owner or f"{socket.gethostname()[:40]}:{os.getpid()}:{secrets.token_hex(4)}"
        self.limits = TransferLimits(
            daemon.clock, config.max_bytes_per_second, config.max_concurrency
        )
        self.kinds: dict[str, JobKind] = {}
        #: Jobs this daemon runs now, by id, and the Deferred of each run.
        self.active: dict[int, RunningJob] = {}
        self._runs: dict[int, defer.Deferred[None]] = {}
        self._loop = Periodic(daemon.clock, self.poll, "job poll")
        self._polling = False
        self._accepting = False

    @property
    def heartbeat_period(self) -> float:
        return min(HEARTBEAT, self.config.lease / 3)

    def register(self, kind: JobKind) -> None:
        """Let this runner claim and run jobs of ``kind``.

        :raises ValueError: a kind of that name is registered already.
        """
        if kind.name in self.kinds:
            raise ValueError(f"job kind {kind.name!r} is registered already")
        self.kinds[kind.name] = kind

    # -- service -----------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._accepting = True
        self._loop.start(self.config.poll_interval)

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        self._accepting = False
        self._loop.stop()
        for job in self.active.values():
            job.stopped = "shutdown"
        runs = list(self._runs.values())
        if not runs:
            return defer.succeed(None)
        waiting = defer.DeferredList(runs, consumeErrors=True)
        timer = self.daemon.clock.callLater(STOP_GRACE, self._abandon)

        def stopped(_: object) -> None:
            if timer.active():
                timer.cancel()

        return waiting.addCallback(stopped)

    def _abandon(self) -> None:
        """The grace is over: cancel the runs still going (their copy in flight is dropped)."""
        for run in list(self._runs.values()):
            run.cancel()

    # -- claiming ----------------------------------------------------------------------------

    def poll(self) -> defer.Deferred[None]:
        """Count jobs for the metrics, then claim queued jobs while fewer than
        :data:`MAX_RUNNING` run here; never fails."""
        return defer.ensureDeferred(self._poll()).addErrback(
            lambda f: log.failure("job poll failed", f)
        )

    async def _poll(self) -> None:
        if self._polling:
            return
        self._polling = True
        try:
            await self._count()
            while self._accepting and len(self._runs) < MAX_RUNNING:
                now = self.daemon.clock.seconds()
                record = await self.daemon.store.claim_job(
                    tuple(sorted(self.kinds)), self.owner, now, now + self.config.lease,
                    exclude=tuple(self._runs),
                )  # fmt: skip
                if record is None:
                    return
                self._start(record)
        finally:
            self._polling = False

    async def _count(self) -> None:
        counts = await self.daemon.store.job_counts()
        for kind in sorted(set(self.kinds) | {k for k, _ in counts}):
            for state in JOB_STATES:
                labelled(metrics.JOBS, kind, state).set(counts.get((kind, state), 0))

    def _start(self, record: JobRecord) -> None:
        job = RunningJob(record, self)
        self.active[record.id] = job
        log.info("job {id}: {kind} {target} starts here (cursor {cursor})",
                 id=record.id, kind=record.kind, target=record.target,
                 cursor=record.progress.cursor)
        run = defer.ensureDeferred(self._run(job))
        self._runs[record.id] = run

        def gone(_: object) -> None:
            # A job paused and resumed here may be running again under a new RunningJob.
            if self.active.get(record.id) is job:
                del self.active[record.id]
            if self._runs.get(record.id) is run:
                del self._runs[record.id]
            self.wake()  # it may have been resumed while it wound down

        run.addErrback(lambda f: log.failure("job {id} runner failed", f, id=record.id))
        run.addBoth(gone)

    async def _run(self, job: RunningJob) -> None:
        beat = Periodic(
            self.daemon.clock,
            lambda: defer.ensureDeferred(self.heartbeat(job)),
            f"job {job.id} heartbeat",
        )
        beat.start(self.heartbeat_period, now=False)
        outcome, error = "done", None
        try:
            await self.kinds[job.record.kind].run(job)
        except JobStopped as stop:
            outcome = "queued" if stop.reason == "shutdown" else "running"
        except defer.CancelledError:
            outcome = "queued"
        except Exception as failure:
            outcome, error = "failed", f"{type(failure).__name__}: {failure}"
            log.failure("job {id} ({kind} {target}) failed", Failure(),
                        id=job.id, kind=job.record.kind, target=job.target)
        finally:
            beat.stop()
        if error is not None:
            job.update(last_error=error)
        if job.stopped == "taken over":
            return
        # "running" here means: keep whatever state the row has now (paused, cancelled).
        left = await self.daemon.store.end_job(
            job.id, self.owner, job.progress, self.daemon.clock.seconds(), outcome
        )
        log.info("job {id}: {kind} {target} is {state}",
                 id=job.id, kind=job.record.kind, target=job.target, state=left)

    async def heartbeat(self, job: RunningJob) -> None:
        """Save ``job``'s progress, renew its claim, and flag it to stop when it was paused,
        cancelled or taken over; never fails (a database out of reach is tried again)."""
        now = self.daemon.clock.seconds()
        try:
            state = await self.daemon.store.heartbeat_job(
                job.id, self.owner, job.progress, now, now + self.config.lease
            )
        except Exception as error:
            log.warn("job {id}: heartbeat failed: {error}", id=job.id, error=error)
            if now - job.record.updated > self.config.lease:
                job.stopped = job.stopped or "taken over"
            return
        job.record = replace(job.record, updated=now)
        if state is None:
            job.stopped = "taken over"
        elif state in ("paused", "cancelled"):
            job.stopped = job.stopped or state

    # -- what the admin API and the command line call ----------------------------------------

    async def submit(self, kind: str, target: str, params: dict[str, Any]) -> JobRecord:
        """Queue a new job (run by whichever daemon claims it first; this one looks at once).

        :raises ValueError: no kind of that name is registered.
        """
        if kind not in self.kinds:
            raise ValueError(f"unknown job kind {kind!r}")
        record = await self.daemon.store.create_job(
            kind, target, params, self.daemon.clock.seconds()
        )
        self.wake()
        return record

    def wake(self) -> None:
        """Look for queued jobs now rather than at the next poll (when this runner runs)."""
        if self._accepting:
            self.poll()

    async def control(self, job_id: int, action: str) -> JobRecord | None:
        """``pause``, ``resume`` or ``cancel`` job ``job_id``; a job running here stops at
        once (between objects), one running elsewhere at its daemon's next heartbeat.

        :raises JobStateError: the job's state does not allow ``action``.
        """
        record = await self.daemon.store.control_job(
            job_id, action, self.daemon.clock.seconds()
        )
        if record is None:
            return None
        running = self.active.get(job_id)
        if running is not None and action in ("pause", "cancel"):
            running.stopped = running.stopped or record.state
        if action == "resume":
            self.wake()
        return record


def job_document(record: JobRecord, now: float, live: RunningJob | None = None) -> dict[str, Any]:
    """A job as the admin API and ``s3balance jobs`` show it; ``live`` (a job running in this
    process) gives progress fresher than the last heartbeat.  ``eta_seconds`` is the bytes left at
    the rate so far (null while unknown)."""
    progress = live.progress if live is not None else record.progress
    eta: float | None = None
    if record.state == "running" and record.started is not None and progress.bytes_done:
        elapsed = max(now - record.started, 1e-6)
        if progress.bytes_left is not None:
            eta = round(progress.bytes_left / (progress.bytes_done / elapsed), 1)
    return {
        "id": record.id,
        "kind": record.kind,
        "target": record.target,
        "params": record.params,
        "state": record.state,
        "objects_done": progress.objects_done,
        "objects_left": progress.objects_left,
        "bytes_done": progress.bytes_done,
        "bytes_left": progress.bytes_left,
        "errors": progress.errors,
        "last_error": progress.last_error,
        "cursor": progress.cursor,
        "created": record.created,
        "started": record.started,
        "finished": record.finished,
        "updated": record.updated,
        "eta_seconds": eta,
        "owner": record.owner,
        "claim_expires": record.expires,
    }
