"""Placement strategies: given the backends that can take an object, which one gets it.

A strategy only ranks; the pool (:mod:`s3balance.pool`) decides which backends are eligible
(enabled, healthy, room left, under their operation budget) and hands them over as
:class:`Candidate`.  The ranking's tail is the fallback order the core walks when a write to the
first choice fails before any body byte was sent.
"""

from __future__ import annotations

import bisect
import hashlib
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from zope.interface import Attribute, Interface, implementer

from s3balance.config import STRATEGIES


@dataclass(frozen=True)
class Candidate:
    """An eligible backend as a strategy sees it.

    :ivar max_size: configured limit in bytes, ``None`` for unlimited.
    :ivar free_bytes: what is left for new objects: ``max_size`` minus used and reserved bytes,
        or the storage's own free space when that is known and smaller; ``None`` when neither
        bounds it.
    """

    name: str
    weight: int
    used_bytes: int
    max_size: int | None
    free_bytes: int | None


class IPlacementStrategy(Interface):
    """Ranks eligible backends for a new object."""

    name = Attribute("The configured strategy name (``balancer.strategy``), used in metrics.")

    def rank(candidates: Sequence[Candidate], bucket: str, key: str, size: int) -> list[str]:
        """All candidate names that may take the object, best first: the first is the choice,
        the rest are fallbacks for retries."""


@implementer(IPlacementStrategy)
class RoundRobinStrategy:
    """Takes turns over the candidates in name order.

    The turn is remembered as the last name chosen, not as an index, so a backend joining or
    leaving the candidate set (full, unhealthy) does not make the others skip or repeat a turn.
    """

    name = "round-robin"

    def __init__(self) -> None:
        self._last: str | None = None

    def rank(self, candidates: Sequence[Candidate], bucket: str, key: str, size: int) -> list[str]:
        names = sorted(c.name for c in candidates)
        if not names:
            return []
        start = 0 if self._last is None else bisect.bisect_right(names, self._last)
        if start == len(names):
            start = 0
        ranked = names[start:] + names[:start]
        self._last = ranked[0]
        return ranked


@implementer(IPlacementStrategy)
class LeastSpaceStrategy:
    """Most free bytes first, so backends fill up evenly.

    Unbounded backends (``free_bytes`` unknown) count as the most free; among equals the less
    used comes first (so unlimited backends still share the load), then the name decides.
    """

    name = "least-space"

    def rank(self, candidates: Sequence[Candidate], bucket: str, key: str, size: int) -> list[str]:
        def order(c: Candidate) -> tuple[int, int, int, str]:
            if c.free_bytes is None:
                return (0, 0, c.used_bytes, c.name)
            return (1, -c.free_bytes, c.used_bytes, c.name)

        return [c.name for c in sorted(candidates, key=order)]


@implementer(IPlacementStrategy)
class WeightedStrategy:
    """Random choice proportional to ``weight``; fallbacks are drawn the same way without
    replacement.  A weight of 0 means never chosen, not even as a fallback."""

    name = "weighted"

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def rank(self, candidates: Sequence[Candidate], bucket: str, key: str, size: int) -> list[str]:
        remaining = sorted((c.name, c.weight) for c in candidates if c.weight > 0)
        ranked: list[str] = []
        while remaining:
            total = sum(weight for _, weight in remaining)
            point = self._rng.uniform(0, total)
            index = len(remaining) - 1
            for i, (_, weight) in enumerate(remaining):
                point -= weight
                if point < 0:
                    index = i
                    break
            ranked.append(remaining.pop(index)[0])
        return ranked


#: Virtual nodes per unit of weight: enough that a weight-1 backend's share of the ring stays
#: within a few percent of its fair share.
VNODES_PER_WEIGHT = 160


def _ring_hash(text: str) -> int:
    """A hash that is the same in every process and Python version (``hash()`` is salted)."""
    return int.from_bytes(hashlib.sha1(text.encode("utf-8")).digest()[:8], "big")


@implementer(IPlacementStrategy)
class ConsistentHashStrategy:
    """A hash ring keyed by ``bucket/key``: the same key lands on the same backend as long as
    that backend stays a candidate, and adding or removing a backend only moves its own share.

    Each backend owns ``VNODES_PER_WEIGHT * weight`` points placed by hashing ``name#i``, so a
    point's position never depends on the other backends.  Fallbacks are the next distinct
    backends clockwise.  Backends of weight 0 own no points and come last, by name.
    """

    name = "consistent-hash"

    def __init__(self) -> None:
        self._ring_key: tuple[tuple[str, int], ...] | None = None
        self._points: list[int] = []
        self._owners: list[str] = []

    def _ring(self, members: tuple[tuple[str, int], ...]) -> None:
        if members == self._ring_key:
            return
        ring = sorted(
            (_ring_hash(f"{name}#{i}"), name)
            for name, weight in members
            for i in range(VNODES_PER_WEIGHT * weight)
        )
        self._points = [point for point, _ in ring]
        self._owners = [owner for _, owner in ring]
        self._ring_key = members

    def rank(self, candidates: Sequence[Candidate], bucket: str, key: str, size: int) -> list[str]:
        weighted = tuple(sorted((c.name, c.weight) for c in candidates if c.weight > 0))
        unweighted = sorted(c.name for c in candidates if c.weight <= 0)
        self._ring(weighted)
        ranked: list[str] = []
        if self._points:
            start = bisect.bisect_left(self._points, _ring_hash(f"{bucket}/{key}"))
            seen: set[str] = set()
            count = len(self._owners)
            for step in range(count):
                owner = self._owners[(start + step) % count]
                if owner not in seen:
                    seen.add(owner)
                    ranked.append(owner)
                    if len(ranked) == len(weighted):
                        break
        return ranked + unweighted


def spread(
    ranked: Sequence[str], zone_of: Callable[[str], str], count: int, taken: Iterable[str] = ()
) -> list[str]:
    """The ``count`` backends of ``ranked`` that hold one object's replicas, in ranking order.

    Each zone (failure domain) gives its best-ranked backend first, so the copies survive the
    loss of any one zone when there are ``count`` zones; only when there are fewer does a zone
    take a second backend (distinct backends are still better than one).  Fewer than ``count``
    names come back when ``ranked`` has fewer: the caller refuses such a write.

    :param taken: zones that already hold a copy (repair adding to an object's copies): their
        backends come last.
    """
    chosen: list[str] = []
    zones: set[str] = set(taken)
    for name in ranked:
        if len(chosen) == count:
            return chosen
        if zone_of(name) not in zones:
            zones.add(zone_of(name))
            chosen.append(name)
    for name in ranked:
        if len(chosen) == count:
            break
        if name not in chosen:
            chosen.append(name)
    return sorted(chosen, key=list(ranked).index)


#: Probe latencies within this many seconds of the fastest count as equal (probe jitter).
LATENCY_TOLERANCE = 0.005


def order_reads(
    names: Sequence[str], latency_of: Callable[[str], float | None], turn: int
) -> list[str]:
    """The order in which to try the replicas of an object on a read: the fastest by last probe
    first, taking turns (``turn``, counted by the caller) among those about as fast, so equal
    replicas share the reads; then the slower ones, fastest first.  A backend not probed yet
    counts as fast (it has not shown otherwise)."""
    known = [seconds for name in names if (seconds := latency_of(name)) is not None]
    best = min(known) if known else 0.0

    def expected(name: str) -> float:
        seconds = latency_of(name)
        return best if seconds is None else seconds

    fastest = [name for name in names if expected(name) <= best + LATENCY_TOLERANCE]
    slower = sorted((name for name in names if name not in fastest), key=expected)
    if fastest:
        start = turn % len(fastest)
        fastest = fastest[start:] + fastest[:start]
    return fastest + slower


def make_strategy(name: str, rng: random.Random | None = None) -> IPlacementStrategy:
    """The strategy configured as ``balancer.strategy``.

    :param rng: randomness for ``weighted`` (seed it in tests).
    :raises ValueError: unknown name.
    """
    if name == "round-robin":
        return RoundRobinStrategy()
    if name == "least-space":
        return LeastSpaceStrategy()
    if name == "weighted":
        return WeightedStrategy(rng)
    if name == "consistent-hash":
        return ConsistentHashStrategy()
    known = ", ".join(STRATEGIES)
    raise ValueError(f"unknown placement strategy {name!r}; expected one of {known}")
