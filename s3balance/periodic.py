"""Periodic work: one loop on Twisted's ``LoopingCall`` whose failed rounds are logged and never
end it.

A bare ``LoopingCall`` stops for good at the first round that raises, and the failure shows only
once, as the loop's own end; a service built on one (health probes, usage refresh, operation
counts, housekeeping, job polls, the console's traffic samples) would then go quiet until the
daemon restarts.  :class:`Periodic` runs each round through a catch-and-log, so a round that fails
(a database that is briefly away, a counter read that raises) costs that round only.  A round
that returns a Deferred is waited for before the next is scheduled (as ``LoopingCall`` does).
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure

from s3balance.logs import make_logger

__all__ = ["Periodic"]

log = make_logger()


class Periodic:
    """Calls ``work`` every ``period`` seconds on ``clock`` while started.

    :param work: one round; may return a Deferred (the next round waits for it).
    :param what: names the work in log lines.
    """

    def __init__(self, clock: IReactorTime, work: Callable[[], object], what: str) -> None:
        self.clock = clock
        self.work = work
        self.what = what
        self._loop: LoopingCall | None = None
        self._ended: defer.Deferred[None] = defer.succeed(None)

    @property
    def running(self) -> bool:
        return self._loop is not None and self._loop.running

    def start(self, period: float, now: bool = True) -> None:
        """Run a round every ``period`` seconds, the first at once when ``now``."""
        if self.running:
            raise RuntimeError(f"{self.what} is already running")
        loop = LoopingCall(self._round)
        loop.clock = self.clock
        self._loop = loop
        ended: defer.Deferred[None] = loop.start(period, now=now).addCallback(lambda _: None)
        # Only a bug of LoopingCall itself can get here: every round's failure is caught.
        ended.addErrback(lambda failure: log.failure("{what} stopped", failure, what=self.what))
        self._ended = ended

    def stop(self) -> defer.Deferred[None]:
        """Schedule no more rounds.

        :returns: fires once a round in progress has ended (at once when none is).
        """
        loop, self._loop = self._loop, None
        if loop is not None and loop.running:
            loop.stop()
        return self._ended

    def _round(self) -> defer.Deferred[object]:
        return defer.maybeDeferred(self.work).addErrback(self._failed)

    def _failed(self, failure: Failure) -> None:
        log.failure("{what} failed; the next round runs in its time", failure, what=self.what)
