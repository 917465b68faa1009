"""Rebalance: moving copies between the real buckets of a running daemon until they are balanced.

What to move is decided by :mod:`s3balance.rebalancing` (``spread`` or ``pack``, a threshold),
fed here with the pool's view of each backend (used bytes from the usage monitor, capacity, room
as placement judges it, health, operation budgets, drains) and the store's objects.

- A *dry run* (``POST /api/rebalance`` with ``dry_run``, ``s3balance rebalance --dry-run``)
  answers one plan and moves nothing.
- A *rebalance job* (a :mod:`s3balance.jobs` kind: ``POST /api/rebalance``, ``s3balance
  rebalance``, or the daemon itself when ``balancer.rebalance`` is on) plans, carries the plan's
  moves out, and plans again with the numbers that result, until a plan finds the backends
  balanced or nothing useful to move.  Each move is drain's (:func:`s3balance.drain.move_copy`):
  the copy is made at the same real key on the target, the row's locations are swapped by a
  compare-and-set, and the old copy is queued for deletion; an object overwritten or deleted
  meanwhile keeps what its writer left (the copy is discarded).  Moves run under the shared job
  limits (``jobs.max_concurrency``, ``jobs.max_bytes_per_second``); a restarted or taken-over
  job simply plans again.  One rebalance job at a time: another is refused while one is queued,
  running or paused (and of two started at once by two daemons, the newer ends at once).
- With ``balancer.rebalance`` set, :class:`RebalanceWatch` (housekeeping's process) checks every
  ``balancer.rebalance_interval`` and starts a job when a plan finds copies to move.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.interfaces import IReactorTime

from s3balance import metrics
from s3balance.backends.interface import BackendError
from s3balance.config import BalancerConfig
from s3balance.db.records import JobRecord, PlacedObject
from s3balance.db.store import MetadataStore
from s3balance.drain import move_copy
from s3balance.housekeeping import PeriodicRounds
from s3balance.jobs import JobKind, JobRunner, RunningJob, settle
from s3balance.labelled import labelled
from s3balance.logs import make_logger
from s3balance.pool import BackendPool
from s3balance.rebalancing import MODES, BackendState, Move, Planner, fill_plan
from s3balance.retirement import ObjectChanged

__all__ = [
    "KIND",
    "MAX_MOVES",
    "RebalanceBusy",
    "RebalanceError",
    "RebalanceSettings",
    "RebalanceWatch",
    "active_rebalance",
    "backend_states",
    "plan_rebalance",
    "run_rebalance",
    "start_rebalance",
]

log = make_logger()

#: The jobs' ``kind``, and their ``target`` (a rebalance works on every real bucket).
KIND_NAME = "rebalance"
TARGET = "real buckets"
#: Moves one plan may hold: a job carries them out, then plans again with fresh numbers.
MAX_MOVES = 1000
#: Objects read from the store per query while planning.
PAGE = 200
#: Objects one plan may examine, so that a plan over a huge store still ends soon.
MAX_EXAMINED = 100_000
#: Plans one run of a job makes at most (each of up to ``max_moves`` moves).
MAX_PLANS = 1000
#: Plans in a row whose moves all failed before the job fails.
MAX_FRUITLESS_PLANS = 3
#: Moves carried out together (under the shared limits) before the job saves its progress.
BATCH = 50
#: Job states in which a rebalance job counts as under way.
UNDER_WAY = ("queued", "running", "paused")


class RebalanceError(Exception):
    """The rebalance cannot go on (every move of several plans failed)."""


class RebalanceBusy(Exception):
    """A rebalance job is under way already: ``job``."""

    def __init__(self, job: JobRecord) -> None:
        super().__init__(f"rebalance job {job.id} is {job.state}")
        self.job = job


@dataclass(frozen=True)
class RebalanceSettings:
    """What a rebalance is asked to do (``POST /api/rebalance``, ``balancer.rebalance``).

    :raises ValueError: a mode not in :data:`~s3balance.rebalancing.MODES`, a threshold outside
        0..1, caps below 1.
    """

    mode: str
    threshold: float
    max_moves: int = MAX_MOVES
    max_bytes: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode {self.mode!r} is not one of {', '.join(MODES)}")
        if isinstance(self.threshold, bool) or not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold {self.threshold!r} is not a number from 0 to 1")
        if self.max_moves < 1 or (self.max_bytes is not None and self.max_bytes < 1):
            raise ValueError("max_moves and max_bytes must be 1 or more")

    def to_params(self) -> dict[str, Any]:
        """The job's ``params``."""
        return {
            "mode": self.mode,
            "threshold": self.threshold,
            "max_moves": self.max_moves,
            "max_bytes": self.max_bytes,
        }

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> RebalanceSettings:
        """:raises ValueError: params no rebalance job was made with."""
        max_bytes = params.get("max_bytes")
        return cls(
            str(params.get("mode")),
            float(params.get("threshold", -1)),
            int(params.get("max_moves", MAX_MOVES)),
            None if max_bytes is None else int(max_bytes),
        )


# -- planning ------------------------------------------------------------------------------------


def backend_states(pool: BackendPool) -> list[BackendState]:
    """Each real bucket of the pool, in configuration order, as a plan sees it.

    Capacity is ``max_size``, else the total the storage reports; room is what placement would
    still put there (:meth:`BackendPool.room`).  A backend receives when it is available, under
    its class A budget and not drained; it gives when available, under its class B budget (the
    copy reads from it) and not drained (its drain moves its objects).
    """
    states: list[BackendState] = []
    for name in pool.configured_names():
        config = pool.config(name)
        available = pool.is_available(name)
        drained = pool.is_drained(name)
        over_a, over_b = pool.over_write_limit(name), pool.over_read_limit(name)
        notes = [
            note for note, applies in (
                ("disabled", not config.enabled),
                ("unhealthy", config.enabled and not available),
                ("over its class A budget", over_a),
                ("over its class B budget", over_b),
                ("draining", drained),
            ) if applies
        ]  # fmt: skip
        capacity = config.max_size
        if capacity is None:
            capacity = pool.usage.storage_total(name)
            if capacity is None:
                notes.append("capacity unknown (no max_size)")
        states.append(
            BackendState(
                name=name,
                zone=config.failure_domain,
                used_bytes=pool.usage.usage(name).used_bytes,
                capacity=capacity,
                room=pool.room(name),
                receives=available and not over_a and not drained,
                gives=available and not over_b and not drained,
                note="; ".join(notes),
            )
        )
    return states


async def plan_rebalance(
    pool: BackendPool, store: MetadataStore, settings: RebalanceSettings
) -> tuple[Planner, bool]:
    """Plan one round of moves from the numbers of now (nothing is moved).

    :returns: the planner holding the moves, and whether a cap stopped it before the plan was
        complete (:func:`~s3balance.rebalancing.fill_plan`).
    """
    planner = Planner(
        backend_states(pool),
        settings.mode,
        settings.threshold,
        max_moves=settings.max_moves,
        max_bytes=settings.max_bytes,
    )

    async def read_page(backend: str, after: int, limit: int) -> list[PlacedObject]:
        return await store.objects_located_on(backend, after, limit)

    partial = await fill_plan(planner, read_page, PAGE, MAX_EXAMINED)
    out = len(planner.out_of_balance_before)
    labelled(metrics.REBALANCE_OUT_OF_BALANCE, settings.mode).set(out)
    labelled(metrics.REBALANCE_PLANNED_BYTES, settings.mode).set(planner.planned_bytes)
    return planner, partial


# -- jobs ----------------------------------------------------------------------------------------


async def active_rebalance(store: MetadataStore) -> JobRecord | None:
    """The oldest rebalance job queued, running or paused; None when there is none."""
    found = [job for job in await store.list_jobs(UNDER_WAY, 1000) if job.kind == KIND_NAME]
    return min(found, key=lambda job: job.id) if found else None


async def start_rebalance(runner: JobRunner, settings: RebalanceSettings) -> JobRecord:
    """Queue a rebalance job (whichever daemon's runner claims it first runs it).

    :raises RebalanceBusy: one is under way already.
    """
    under_way = await active_rebalance(runner.daemon.store)
    if under_way is not None:
        raise RebalanceBusy(under_way)
    return await runner.submit(KIND_NAME, TARGET, settings.to_params())


async def run_rebalance(job: RunningJob) -> None:
    """The ``rebalance`` job (see the module docstring)."""
    settings = RebalanceSettings.from_params(job.params)
    daemon = job.daemon
    oldest = await active_rebalance(daemon.store)
    if oldest is not None and oldest.id < job.id:
        job.update(last_error=f"rebalance job {oldest.id} was under way already")
        return
    fruitless = 0
    # The cursor counts the plans made: a resumed job simply plans again from fresh numbers.
    first = int(job.progress.cursor or 0) + 1
    for number in range(first, first + MAX_PLANS):
        job.check()
        await daemon.usage.refresh()
        planner, _ = await plan_rebalance(daemon.pool, daemon.store, settings)
        job.update(
            objects_left=len(planner.moves), bytes_left=planner.planned_bytes, cursor=str(number)
        )
        if not planner.moves:
            if not planner.balanced():
                out = ", ".join(planner.out_of_balance())
                job.update(last_error=f"out of balance ({out}) but nothing useful to move")
            return
        log.info("rebalance job {id}: plan {number}, {moves} moves ({bytes} bytes)",
                 id=job.id, number=number, moves=len(planner.moves), bytes=planner.planned_bytes)
        if await _carry_out(job, planner.moves):
            fruitless = 0
            continue
        fruitless += 1
        if fruitless >= MAX_FRUITLESS_PLANS:
            raise RebalanceError(
                f"{fruitless} plans in a row moved nothing: {job.progress.last_error}"
            )


async def _carry_out(job: RunningJob, moves: list[Move]) -> int:
    """Make ``moves``, :data:`BATCH` at a time under the shared limits; how many moved."""
    moved = 0
    for start in range(0, len(moves), BATCH):
        job.check()
        moved += await settle(_move_one(job, move) for move in moves[start : start + BATCH])
        await job.save()
    return moved


async def _move_one(job: RunningJob, move: Move) -> bool:
    """Make one planned move, under the shared limits, if it still makes sense; whether it was
    made."""
    try:
        return await job.transfer(move.size, lambda: _move(job, move))
    except (BackendError, ObjectChanged) as error:
        job.problem(f"{move.bucket}/{move.key} {move.source.backend} -> {move.target}: {error}")
        return False


async def _move(job: RunningJob, move: Move) -> bool:
    store, pool = job.daemon.store, job.daemon.pool
    record = await store.get_object(move.bucket, move.key)
    if record is None or record.locations != move.locations:
        return False  # overwritten, deleted or moved since planned: the next plan sees it
    refusal = _refusal(pool, move.target, move.size)
    if refusal is not None:
        job.problem(f"{move.bucket}/{move.key}: {move.target} {refusal} now")
        return False
    return await move_copy(job, record, move.source, move.target)


def _refusal(pool: BackendPool, name: str, size: int) -> str | None:
    """Why backend ``name`` cannot take ``size`` more bytes now (things change during a plan);
    None when it can."""
    if name not in pool.names() or not pool.is_available(name):
        return "is not available"
    if pool.is_drained(name):
        return "is draining"
    if pool.over_write_limit(name):
        return "is at its class A limit"
    room = pool.room(name)
    if room is not None and room < size:
        return "has no room"
    return None


KIND = JobKind(KIND_NAME, run_rebalance)


# -- the automatic check -------------------------------------------------------------------------


class RebalanceWatch(PeriodicRounds):
    """Starts a rebalance job when ``balancer.rebalance`` is on and a plan finds copies to move,
    every ``balancer.rebalance_interval`` (housekeeping's process).

    :param balancer: the balancer settings in effect (a reload changes them).
    """

    work = "rebalance check"

    def __init__(
        self,
        runner: JobRunner,
        balancer: Callable[[], BalancerConfig],
        clock: IReactorTime,
        period: float,
    ) -> None:
        super().__init__(clock, period)
        self.runner = runner
        self.balancer = balancer
        #: The last check: when, and what it found (``GET /api/rebalance``).
        self.last: dict[str, Any] | None = None

    async def _round(self) -> int:
        balancer = self.balancer()
        if balancer.rebalance not in MODES:
            return 0
        daemon = self.runner.daemon
        now = self.clock.seconds()
        under_way = await active_rebalance(daemon.store)
        if under_way is not None:
            self.last = {"time": now, "started_job": None, "under_way": under_way.id}
            return 0
        settings = RebalanceSettings(balancer.rebalance, balancer.rebalance_threshold)
        await daemon.usage.refresh()
        planner, partial = await plan_rebalance(daemon.pool, daemon.store, settings)
        report = planner.report(partial, moves_shown=0)
        self.last = {"time": now, "started_job": None, "under_way": None, "plan": report}
        if not planner.moves:
            return 0
        try:
            record = await start_rebalance(self.runner, settings)
        except RebalanceBusy as busy:
            self.last["under_way"] = busy.job.id
            return 0
        self.last["started_job"] = record.id
        log.info("{mode} rebalance: {out} out of balance; job {id} moves about {bytes} bytes",
                 mode=settings.mode, out=", ".join(planner.out_of_balance_before),
                 id=record.id, bytes=planner.planned_bytes)
        return 1
