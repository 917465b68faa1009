"""Rebalance plans from a running daemon's numbers: what :mod:`s3balance.rebalancing` decides,
fed with the pool's view of each backend and the store's objects.

A plan reads the backends as the pool sees them now (used bytes from the usage monitor, room as
placement judges it, health, operation budgets) and pages through the objects of the backends it
wants to move copies from.  ``POST /api/rebalance`` with ``dry_run`` answers such a plan without
moving anything.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from s3balance.db.records import PlacedObject
from s3balance.db.store import MetadataStore
from s3balance.pool import BackendPool
from s3balance.rebalancing import MODES, BackendState, Planner, fill_plan

__all__ = ["MAX_MOVES", "PAGE", "RebalanceSettings", "backend_states", "plan_rebalance"]

#: Moves one plan may hold: a job carries them out, then plans again with fresh numbers.
MAX_MOVES = 1000
#: Objects read from the store per query.
PAGE = 200
#: Objects one plan may examine, so that a plan over a huge store still ends soon.
MAX_EXAMINED = 100_000


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


def backend_states(
    pool: BackendPool, order: Sequence[str], draining: Collection[str] = ()
) -> list[BackendState]:
    """Each backend of ``order`` (the configuration's order) the pool has, as a plan sees it.

    Capacity is ``max_size``, else the total the storage reports; room is what placement would
    still put there (:meth:`BackendPool.room`).  A backend receives when it is available, under
    its class A budget and not draining; it gives when available, under its class B budget (the
    copy reads from it) and not draining.
    """
    states: list[BackendState] = []
    for name in order:
        try:
            config = pool.config(name)
        except KeyError:
            continue
        available = pool.is_available(name)
        notes: list[str] = []
        if not config.enabled:
            notes.append("disabled")
        elif not available:
            notes.append("unhealthy")
        over_a, over_b = pool.over_write_limit(name), pool.over_read_limit(name)
        if over_a:
            notes.append("over its class A budget")
        if over_b:
            notes.append("over its class B budget")
        if name in draining:
            notes.append("draining")
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
                receives=available and not over_a and name not in draining,
                gives=available and not over_b and name not in draining,
                note="; ".join(notes),
            )
        )
    return states


async def plan_rebalance(
    pool: BackendPool,
    store: MetadataStore,
    order: Sequence[str],
    settings: RebalanceSettings,
    draining: Collection[str] = (),
) -> tuple[Planner, bool]:
    """Plan one round of moves from the numbers of now.

    :param order: the real buckets' names in configuration order (pack fills them in it).
    :returns: the planner holding the moves, and whether a cap stopped it before the plan was
        complete (:func:`~s3balance.rebalancing.fill_plan`).
    """
    planner = Planner(
        backend_states(pool, order, draining),
        settings.mode,
        settings.threshold,
        max_moves=settings.max_moves,
        max_bytes=settings.max_bytes,
    )

    async def read_page(backend: str, after: int, limit: int) -> list[PlacedObject]:
        return await store.objects_located_on(backend, after, limit)

    partial = await fill_plan(planner, read_page, PAGE, MAX_EXAMINED)
    return planner, partial
