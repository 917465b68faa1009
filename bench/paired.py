"""Paired rounds: two daemons measured close together, judged on the median of per-round figures.

On a shared 2-core machine the CPU a request costs drifts by hundreds of µs within a minute
(whatever the other tenants run beside it). Two medians taken a minute apart, then subtracted,
carry that drift whole: the cost of SigV4 verification drowned in swings of ±300 µs between runs
of the same code. In a round the base and the other daemon run close together (pinned to one core
and loaded at the same time where they can share the machine, else back to back); each round gives
one difference (or ratio), and the median over the rounds judges the target while the spread of
the rounds says how far to trust it. The order alternates (base first, then other first) so that a
steady drift, or whatever the first run of a round inherits, does not side with either daemon.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class Pairs:
    """One figure (CPU µs per request, or req/s) of the base and the other daemon, per round."""

    #: What both ran, ``GET 4 KiB x8``.
    operation: str = ""
    base: list[float] = field(default_factory=list)
    other: list[float] = field(default_factory=list)
    #: Set when a run failed; the rounds before it still count.
    error: str = ""

    def add(self, base: float, other: float) -> None:
        self.base.append(base)
        self.other.append(other)

    def differences(self) -> list[float]:
        """other - base, per round."""
        return [o - b for b, o in zip(self.base, self.other, strict=True)]

    def ratios(self) -> list[float]:
        """other / base, per round (rounds where the base measured nothing left out)."""
        return [o / b for b, o in zip(self.base, self.other, strict=True) if b]


@dataclass(frozen=True)
class Spread:
    """The median of per-round values, their quartiles and their range."""

    median: float
    q1: float
    q3: float
    low: float
    high: float
    rounds: int


def spread(values: Sequence[float]) -> Spread | None:
    """Median, quartiles (inclusive method: within the range of the values) and min-max, or None
    when there is no round."""
    if not values:
        return None
    ordered = sorted(values)
    if len(ordered) == 1:
        q1 = q3 = ordered[0]
    else:
        q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
    return Spread(statistics.median(ordered), q1, q3, ordered[0], ordered[-1], len(ordered))


def base_first(round_number: int) -> bool:
    """Whether the base daemon runs first in this round: it alternates, A B, B A, A B, ..."""
    return round_number % 2 == 0


def describe_difference(found: Spread, unit: str = "µs") -> str:
    """``+27 µs (IQR +12..+41, range -30..+75, 8 paired rounds)``"""
    return (
        f"{found.median:+.0f} {unit} (IQR {found.q1:+.0f}..{found.q3:+.0f}, "
        f"range {found.low:+.0f}..{found.high:+.0f}, {found.rounds} paired rounds)"
    )


def describe_ratio(found: Spread) -> str:
    """``1.52x (IQR 1.45-1.58, range 1.30-1.66, 8 paired rounds)``"""
    return (
        f"{found.median:.2f}x (IQR {found.q1:.2f}-{found.q3:.2f}, "
        f"range {found.low:.2f}-{found.high:.2f}, {found.rounds} paired rounds)"
    )
