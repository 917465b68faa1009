"""A stall timer: fires once when a transfer that someone else has to move makes no progress.

Used around backend requests: the watch runs only while the peer is the one expected to act
(answering, reading what we send, sending what we read) and is suspended while we, or our own
client, hold things up, so a paused download or a slow uploader never counts as the peer's stall.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IDelayedCall


class StallWatch:
    """Fires ``on_stall`` once when, while active, nothing moved for ``timeout`` seconds.

    :meth:`touch` runs for every chunk, so it only records the time; the one timer, when it
    comes due, re-arms itself for whatever is left of the timeout since the last movement
    (resetting a DelayedCall per chunk cost a measurable share of a transfer's CPU time).
    """

    def __init__(self, reactor: Any, timeout: float) -> None:
        self._reactor = reactor
        self._timeout = timeout
        self._call: IDelayedCall | None = None
        self._active = False
        self._stopped = False
        self._last = 0.0
        self.fired = False
        self.on_stall: Callable[[], None] = lambda: None

    def resume(self) -> None:
        """The peer is expected to act from now on."""
        if self._stopped or self.fired:
            return
        self._active = True
        self.touch()

    def suspend(self) -> None:
        """We (or our client) are the ones who have to act: not the peer's stall.

        The timer is left to run: when it comes due on a suspended watch it simply lapses, and a
        watch resumed before then keeps it (re-armed for what is left since the resumption), so
        a short pause, such as between a backend's response headers and the reading of its body,
        costs no timer cancelled and set again.
        """
        self._active = False

    def touch(self) -> None:
        """Something moved: start counting again."""
        if not self._active or self._stopped or self.fired:
            return
        self._last = self._reactor.seconds()
        if self._call is None:
            self._call = self._reactor.callLater(self._timeout, self._due)

    def stop(self) -> None:
        self._stopped = True
        self._cancel()

    def _cancel(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _due(self) -> None:
        self._call = None
        if not self._active or self._stopped or self.fired:
            return
        left = self._last + self._timeout - self._reactor.seconds()
        if left > 0:
            self._call = self._reactor.callLater(left, self._due)
            return
        self.fired = True
        self.on_stall()
