"""Rebalance planning: which object copies to move between backends, decided without I/O.

A rebalance moves copies of objects already stored so that the backends' used bytes end up where
the operator wants them.  This module only decides; the caller reads the numbers (a
:class:`BackendState` per backend, from the pool and usage monitor), feeds the objects stored on
a backend one by one (:meth:`Planner.consider`, in the store's order: the plan is deterministic
for a given store), and carries out the :class:`Move` values it gets back.

Modes (``POST /api/rebalance``, ``balancer.rebalance``):

- ``spread`` evens out the used fraction of each backend's capacity (``max_size``, else what the
  storage reports).  The goal is the pool's overall fraction ``F`` (all used bytes over all
  capacities of the backends taking part: what every backend would hold if they were equal);
  the pool is balanced when every backend is within ``threshold`` of ``F`` (0.1: ten percentage
  points).  Copies move from backends above ``F`` (a source stops giving once at or below it)
  to backends below it, never past the other edge of the band, and only while some backend is
  outside it.  A backend above ``F`` that cannot give (over its read budget), or below it that
  cannot receive, is *held out*: nothing can bring it nearer, so the others balance around
  their own mean.
- ``pack`` fills backends in configuration order so the last ones empty: copies move from the
  last backend holding bytes to the first one with room.  It is balanced when no backend holds
  bytes behind one (able to take them) that is filled below ``1 - threshold``; threshold 0 moves
  everything that fits.

Rules every move follows: the target holds no copy of the object yet; a replicated object's
copies stay in as many distinct zones as before; a target never gets more than the room it has
(``max_size`` and the storage's free space, less the bytes already planned for it; bytes freed on
a source only count once deleted, i.e. at the next plan); targets must be available, under their
class A budget and not draining; sources must be available, under their class B budget and not
draining.  Every move strictly lowers a measure of imbalance (spread: the bytes outside the band;
pack: the bytes weighted by their backend's position), so a plan cannot cycle; it is also capped
in moves and bytes, and moves an object at most once (the compare-and-set of a second move would
expect the locations the first one changed).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from s3balance.db.records import Location, PlacedObject

__all__ = [
    "MODES",
    "BackendState",
    "Move",
    "PageReader",
    "Planner",
    "fill_plan",
    "keeps_zone_spread",
]

MODES = ("spread", "pack")


@dataclass(frozen=True)
class BackendState:
    """One configured backend as a plan sees it when it starts.

    :ivar zone: its failure domain (:attr:`s3balance.config.BucketConfig.failure_domain`).
    :ivar used_bytes: what s3balance placed there (the store's usage).
    :ivar capacity: ``max_size``, else the storage's reported total; None when neither is known
        (spread leaves such a backend out: it has no fraction; pack sees unlimited room).
    :ivar room: bytes it may still take now (``max_size`` less used and reserved bytes, and the
        storage's free space), None when nothing bounds it.
    :ivar receives: it may take new copies (available, under its class A budget, not draining).
    :ivar gives: its copies may be read and moved away (available, under its class B budget,
        not draining).
    :ivar note: why it does not take part fully, for the report.
    """

    name: str
    zone: str
    used_bytes: int
    capacity: int | None
    room: int | None
    receives: bool = True
    gives: bool = True
    note: str = ""


@dataclass(frozen=True)
class Move:
    """Copy ``source`` of an object to backend ``target`` (at the same real key), then make the
    row's locations ``locations`` with ``source`` replaced by the new copy."""

    object_id: int
    bucket: str
    key: str
    size: int
    source: Location
    target: str
    locations: tuple[Location, ...]

    @property
    def new_locations(self) -> tuple[Location, ...]:
        """The row's locations once the move is committed (the new copy where the old was)."""
        moved = Location(self.target, self.source.real_key)
        return tuple(moved if loc == self.source else loc for loc in self.locations)

    def to_json(self) -> dict[str, Any]:
        return {
            "bucket": self.bucket,
            "key": self.key,
            "size": self.size,
            "source": self.source.backend,
            "target": self.target,
        }


def keeps_zone_spread(
    locations: Sequence[Location], source: str, target: str, zone_of: Callable[[str], str]
) -> bool:
    """Whether moving the copy on ``source`` to ``target`` keeps the object's copies in at least
    as many distinct zones as before (moving within a zone, or to a zone with no copy)."""
    before = {zone_of(location.backend) for location in locations}
    after = {zone_of(loc.backend) for loc in locations if loc.backend != source}
    after.add(zone_of(target))
    return len(after) >= len(before)


@dataclass
class _Backend:
    """A backend's numbers as the plan goes (projected after the moves planned so far)."""

    state: BackendState
    #: Position in the configuration (pack's order; the tie-break everywhere).
    index: int
    used: int
    room: int | None
    moves_in: int = 0
    moves_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    #: Spread: the bytes it should hold (the mean), and its band's edges.
    goal: float = 0.0
    low: float = 0.0
    high: float = 0.0

    @property
    def name(self) -> str:
        return self.state.name

    @property
    def capacity(self) -> int | None:
        return self.state.capacity

    def fraction(self, used: int | None = None) -> float | None:
        capacity = self.state.capacity
        if not capacity:
            return None
        return (self.used if used is None else used) / capacity

    def fits(self, size: int) -> bool:
        return self.room is None or size <= self.room


@dataclass
class Planner:
    """Plans the moves of one rebalance (see the module docstring).

    :param backends: every configured backend, in configuration order.
    :param mode: one of :data:`MODES`.
    :param threshold: spread: how far (in fraction of capacity) a backend may be from the mean;
        pack: how far below full a backend counts as full.  0 to 1.
    :param max_moves: the plan stops after this many moves.
    :param max_bytes: ... or once its moves add up to this many bytes (None: no limit).
    :raises ValueError: unknown mode, threshold outside 0..1, a cap below 1.
    """

    backends: Sequence[BackendState]
    mode: str
    threshold: float
    max_moves: int = 1000
    max_bytes: int | None = None
    moves: list[Move] = field(default_factory=list, init=False)
    #: Objects offered to :meth:`consider`.
    examined: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode {self.mode!r} is not one of {', '.join(MODES)}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold {self.threshold!r} is not between 0 and 1")
        if self.max_moves < 1 or (self.max_bytes is not None and self.max_bytes < 1):
            raise ValueError("a plan must be allowed at least one move and one byte")
        self._all = [
            _Backend(state, index, state.used_bytes, state.room)
            for index, state in enumerate(self.backends)
        ]
        self._by_name = {backend.name: backend for backend in self._all}
        if len(self._by_name) != len(self._all):
            raise ValueError("backend names must be unique")
        self.planned_bytes = 0
        #: A move was refused for the byte cap alone: the plan is as big as it may get.
        self._bytes_capped = False
        #: One move per object per plan: a second would expect locations the first changed.
        self._moved: set[int] = set()
        #: Spread: backends left out of the mean because nothing can bring them nearer to it.
        self.held_out: list[str] = []
        self._mean: float | None = None
        self._members: list[_Backend] | None = None
        if self.mode == "spread":
            self.held_out = self._immovable()
            # Moves only shift bytes between participants: the mean and bands stay as they are.
            self._mean = self._participants_mean()
            for backend in self._all:
                capacity = backend.capacity or 0
                backend.goal = (self._mean or 0.0) * capacity
                backend.low = backend.goal - self.threshold * capacity
                backend.high = backend.goal + self.threshold * capacity
        self._members = self._participants()
        #: What was out of balance before any move (:meth:`out_of_balance` is after them).
        self.out_of_balance_before = self.out_of_balance()

    # -- who takes part ----------------------------------------------------------------------

    def _takes_part(self, backend: _Backend) -> bool:
        state = backend.state
        if not (state.receives or state.gives) or backend.name in self.held_out:
            return False
        return self.mode == "pack" or bool(state.capacity)

    def _immovable(self) -> list[str]:
        """Spread: the backends above the mean that cannot give, and those below it that cannot
        receive: nothing can bring them nearer, so the others balance around their own mean
        (found again without them, until none is left)."""
        held: list[str] = []
        for _ in range(len(self._all)):
            mean = self._participants_mean()
            if mean is None:
                break
            stuck = [
                backend.name for backend in self._participants()
                if (backend.used > mean * (backend.capacity or 0) and not backend.state.gives)
                or (backend.used < mean * (backend.capacity or 0) and not backend.state.receives)
            ]  # fmt: skip
            if not stuck:
                break
            held.extend(stuck)
            self.held_out = held
        return held

    def _participants(self) -> list[_Backend]:
        """The backends taking part (fixed once the planner is made)."""
        if self._members is not None:
            return self._members
        return [backend for backend in self._all if self._takes_part(backend)]

    def zone_of(self, name: str) -> str:
        """A backend's zone; one not configured is a zone of its own."""
        backend = self._by_name.get(name)
        return backend.state.zone if backend is not None else f"unconfigured:{name}"

    # -- spread ------------------------------------------------------------------------------

    @property
    def mean_fraction(self) -> float | None:
        """Spread's goal: the participants' used bytes over their capacities (None for pack, or
        when no backend has a capacity)."""
        return self._mean

    def _participants_mean(self) -> float | None:
        members = self._participants()
        capacity = sum(backend.capacity or 0 for backend in members)
        if not capacity:
            return None
        return sum(backend.used for backend in members) / capacity

    def _band(self, backend: _Backend) -> tuple[float, float, float]:
        """Spread: the bytes ``backend`` should hold (the mean), and its band's low and high
        edges, in bytes."""
        return backend.goal, backend.low, backend.high

    def _out_of_band(self, backend: _Backend) -> bool:
        _, low, high = self._band(backend)
        return backend.used < low or backend.used > high

    # -- pack --------------------------------------------------------------------------------

    def _underfilled(self, backend: _Backend) -> bool:
        """Pack: ``backend`` can take bytes and is filled below ``1 - threshold`` (an unlimited
        one always is)."""
        if not backend.state.receives or (backend.room is not None and backend.room <= 0):
            return False
        fraction = backend.fraction()
        return fraction is None or fraction < 1.0 - self.threshold

    # -- the state ---------------------------------------------------------------------------

    def out_of_balance(self) -> list[str]:
        """The backends that make the pool unbalanced (projected after the planned moves).

        Spread: those outside the band around the mean.  Pack: those holding bytes behind an
        under-filled backend that could take them.
        """
        members = self._participants()
        if self.mode == "spread":
            if self.mean_fraction is None:
                return []
            return [backend.name for backend in members if self._out_of_band(backend)]
        found: list[str] = []
        underfilled_before = False
        for backend in members:
            if underfilled_before and backend.used > 0 and backend.state.gives:
                found.append(backend.name)
            underfilled_before = underfilled_before or self._underfilled(backend)
        return found

    def balanced(self) -> bool:
        return not self.out_of_balance()

    @property
    def full(self) -> bool:
        """The plan has reached its cap of moves or bytes."""
        if len(self.moves) >= self.max_moves or self._bytes_capped:
            return True
        return self.max_bytes is not None and self.planned_bytes >= self.max_bytes

    @property
    def done(self) -> bool:
        """Nothing more to plan: balanced, or capped."""
        return self.full or self.balanced()

    def stop_reason(self, partial: bool) -> str:
        """Why planning stopped: ``balanced`` (once the moves are made), ``capped`` (a cap
        stopped it: more moves would follow in a next plan), or ``stuck`` (unbalanced, but no
        object can usefully move).

        :param partial: what :func:`fill_plan` answered.
        """
        if self.balanced():
            return "balanced"
        return "capped" if partial else "stuck"

    # -- choosing sources --------------------------------------------------------------------

    def wants_from(self, name: str) -> bool:
        """Whether copies on backend ``name`` may still usefully move (the caller stops reading
        its objects when not)."""
        source = self._by_name.get(name)
        if source is None or self.done or not self._takes_part(source):
            return False
        if not source.state.gives or source.used <= 0:
            return False
        if self.mode == "spread":
            mean, _, _ = self._band(source)
            if source.used <= mean:
                return False
            targets = self._spread_targets(source)
            if self._out_of_band(source):
                return bool(targets)
            return any(self._out_of_band(target) for target in targets)
        return any(self._underfilled(target) for target in self._pack_targets(source))

    def next_source(self, exhausted: Collection[str] = ()) -> str | None:
        """The backend whose objects to read next (spread: the fullest; pack: the last), among
        those not ``exhausted`` (read to the end already); None when none is worth reading."""
        members = [
            backend for backend in self._participants()
            if backend.name not in exhausted and self.wants_from(backend.name)
        ]  # fmt: skip
        if not members:
            return None
        if self.mode == "spread":
            return max(members, key=lambda b: (b.fraction() or 0.0, -b.index)).name
        return members[-1].name

    def _spread_targets(self, source: _Backend) -> list[_Backend]:
        """Spread: backends below the mean that may receive, emptiest first."""
        targets = [
            backend for backend in self._participants()
            if backend is not source and backend.state.receives and backend.fits(1)
            and backend.used < self._band(backend)[0]
        ]  # fmt: skip
        return sorted(targets, key=lambda b: (b.fraction() or 0.0, b.index))

    def _pack_targets(self, source: _Backend) -> list[_Backend]:
        """Pack: backends before ``source`` that may receive, first first."""
        return [
            backend for backend in self._participants()
            if backend.index < source.index and backend.state.receives and backend.fits(1)
        ]  # fmt: skip

    # -- deciding ----------------------------------------------------------------------------

    def consider(self, copies: PlacedObject, source_name: str) -> Move | None:
        """Decide about the copy on ``source_name`` of one object; the move planned, or None.

        A planned move counts at once: later decisions see the target fuller, the source
        emptier.
        """
        self.examined += 1
        if copies.size <= 0 or copies.object_id in self._moved:
            return None
        if not self.wants_from(source_name):
            return None
        source = self._by_name[source_name]
        location = next((loc for loc in copies.locations if loc.backend == source_name), None)
        if location is None:
            return None
        holders = {loc.backend for loc in copies.locations}
        for target in self._targets_for(source, copies.size):
            if target.name in holders:
                continue
            if not keeps_zone_spread(copies.locations, source_name, target.name, self.zone_of):
                continue
            if self.max_bytes is not None and self.planned_bytes + copies.size > self.max_bytes:
                self._bytes_capped = True
                return None
            return self._plan(copies, source, location, target)
        return None

    def _targets_for(self, source: _Backend, size: int) -> list[_Backend]:
        """The targets that may take ``size`` bytes from ``source`` now, best first."""
        if self.mode == "spread":
            _, low, _ = self._band(source)
            if source.used - size < low:
                return []
            source_out = self._out_of_band(source)
            chosen = []
            for target in self._spread_targets(source):
                _, _, high = self._band(target)
                if not target.fits(size) or target.used + size > high:
                    continue
                if source_out or self._out_of_band(target):
                    chosen.append(target)
            return chosen
        return [
            target for target in self._pack_targets(source)
            if target.fits(size)
            and (target.capacity is None or target.used + size <= target.capacity)
        ]  # fmt: skip

    def _plan(
        self, copies: PlacedObject, source: _Backend, location: Location, target: _Backend
    ) -> Move:
        move = Move(
            copies.object_id, copies.bucket, copies.key, copies.size, location, target.name,
            copies.locations,
        )  # fmt: skip
        size = copies.size
        source.used -= size
        source.moves_out += 1
        source.bytes_out += size
        target.used += size
        target.moves_in += 1
        target.bytes_in += size
        if target.room is not None:
            target.room -= size
        self.planned_bytes += size
        self._moved.add(copies.object_id)
        self.moves.append(move)
        return move

    # -- the report --------------------------------------------------------------------------

    def report(self, partial: bool = False, moves_shown: int = 100) -> dict[str, Any]:
        """The plan as ``POST /api/rebalance`` with ``dry_run`` answers it.

        :param partial: what :func:`fill_plan` answered.
        :param moves_shown: how many of the moves to list one by one.
        """
        backends = []
        for backend in self._all:
            state = backend.state
            backends.append(
                {
                    "name": backend.name,
                    "zone": state.zone,
                    "capacity": state.capacity,
                    "used_before": state.used_bytes,
                    "used_after": backend.used,
                    "fraction_before": backend.fraction(state.used_bytes),
                    "fraction_after": backend.fraction(),
                    "moves_in": backend.moves_in,
                    "moves_out": backend.moves_out,
                    "bytes_in": backend.bytes_in,
                    "bytes_out": backend.bytes_out,
                    "takes_part": self._takes_part(backend),
                    "receives": state.receives,
                    "gives": state.gives,
                    "note": state.note,
                }
            )
        return {
            "mode": self.mode,
            "threshold": self.threshold,
            "mean_fraction": self.mean_fraction,
            "balanced_before": not self.out_of_balance_before,
            "out_of_balance_before": self.out_of_balance_before,
            "balanced_after": self.balanced(),
            "out_of_balance_after": self.out_of_balance(),
            "held_out": self.held_out,
            "stopped": self.stop_reason(partial),
            "examined": self.examined,
            "moves": len(self.moves),
            "bytes": self.planned_bytes,
            "max_moves": self.max_moves,
            "max_bytes": self.max_bytes,
            "backends": backends,
            "first_moves": [move.to_json() for move in self.moves[:moves_shown]],
        }


#: ``read_page(backend, after_object_id, limit)``: the objects with a copy on ``backend`` whose
#: row id is above ``after_object_id``, by id, at most ``limit``.
PageReader = Callable[[str, int, int], Awaitable[Sequence[PlacedObject]]]


async def fill_plan(
    planner: Planner, read_page: PageReader, page_size: int = 200, max_examined: int = 100_000
) -> bool:
    """Offer ``planner`` the objects of the backends it wants to move copies from, a page at a
    time, fullest (spread) or last (pack) backend first, until it is done, every wanted backend
    has been read to the end, or ``max_examined`` objects were offered.

    Sources are chosen again after each page, so several over-full backends take turns.

    :returns: whether planning stopped at a cap with objects left to read (the plan is partial:
        carrying it out and planning again goes further).
    """
    exhausted: set[str] = set()
    cursors: dict[str, int] = {}
    # Each page consumes at least one object or exhausts a source: this bounds the loop.
    for _ in range(max_examined + len(planner.backends) + 1):
        if planner.done or planner.examined >= max_examined:
            break
        name = planner.next_source(exhausted)
        if name is None:
            return False
        page = await read_page(name, cursors.get(name, 0), page_size)
        consumed = 0
        for copies in page:
            if planner.examined >= max_examined or not planner.wants_from(name):
                break
            planner.consider(copies, name)
            cursors[name] = copies.object_id
            consumed += 1
        if consumed == len(page) and len(page) < page_size:
            exhausted.add(name)
    return not planner.balanced() and (planner.full or planner.examined >= max_examined)
