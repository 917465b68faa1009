"""Limits on background transfers: bytes per second and transfers at once.

Repair (and the data-moving jobs) copy whole objects between backends in the background; one
:class:`TransferLimits` caps what they move together, so a daemon's background copies never take
more than the operator allowed however many loops share it.  Pacing is per transfer: a transfer
of ``size`` bytes starts once the transfers before it have had their share of time
(``size / max_bytes_per_second`` each), so the rate holds on average without watching bytes.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime

__all__ = ["TransferLimits"]

_T = TypeVar("_T")


class TransferLimits:
    """A bytes-per-second pace and a bound on transfers at once, shared by their users.

    :param clock: what waits are scheduled on.
    :param max_bytes_per_second: ``None`` or 0: no limit on the rate.
    :param max_concurrency: transfers :meth:`run` lets go at once (at least 1).
    """

    def __init__(
        self, clock: IReactorTime, max_bytes_per_second: int | None, max_concurrency: int
    ) -> None:
        self.clock = clock
        #: Both may be changed while in use (a reload); they count from the next transfer on.
        self.max_bytes_per_second = max_bytes_per_second
        self.max_concurrency = max_concurrency
        self._running = 0
        self._waiting: deque[defer.Deferred[None]] = deque()
        #: When the next transfer may start.
        self._next_slot = 0.0

    async def pace(self, size: int) -> None:
        """Wait for a transfer of ``size`` bytes' turn under ``max_bytes_per_second``."""
        rate = self.max_bytes_per_second
        if not rate:
            return
        now = self.clock.seconds()
        start = max(now, self._next_slot)
        self._next_slot = start + size / rate
        if start > now:
            await task.deferLater(self.clock, start - now, lambda: None)

    def run(self, work: Callable[[], Coroutine[Any, Any, _T]]) -> defer.Deferred[_T]:
        """Run ``work`` once fewer than ``max_concurrency`` others run; fires with its result."""
        return defer.ensureDeferred(self._run(work))

    async def _run(self, work: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
        # Each wake-up follows a transfer's end, so the wait ends with the transfers before it.
        while self._running >= max(1, self.max_concurrency):
            waiter: defer.Deferred[None] = defer.Deferred()
            self._waiting.append(waiter)
            await waiter
        self._running += 1
        try:
            return await work()
        finally:
            self._running -= 1
            if self._waiting:
                self._waiting.popleft().callback(None)
