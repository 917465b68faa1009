"""Running a command-line tool's coroutine on the real reactor, for an exit status."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet import defer, task


def react_to_status(command: Callable[[Any], Awaitable[int]], error_status: int) -> int:
    """Run ``command(reactor)`` on the real reactor; the exit status it returned, or
    ``error_status`` when the reactor ended otherwise."""
    status = [error_status]

    async def run(reactor: Any) -> None:
        status[0] = await command(reactor)

    try:
        task.react(lambda reactor: defer.ensureDeferred(run(reactor)))
    except SystemExit as exit_:
        if exit_.code not in (0, None):
            return error_status
    return status[0]
