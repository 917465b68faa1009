"""What the command-line tools share: reading their configuration, and running their coroutine
on the real reactor for an exit status."""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet import defer, task

from s3balance.config import Config
from s3balance.configfile import ConfigError, default_config, load_config


def load_tool_config(path: str | None, data_dir: str | None) -> Config | None:
    """The configuration file at ``path`` (the defaults when None), with ``data_dir`` instead of
    its own when given; None, after saying why on stderr, when it cannot be read."""
    try:
        config = load_config(path) if path else default_config("data")
    except ConfigError as error:
        print(f"invalid configuration {path}:\n{error}", file=sys.stderr)
        return None
    except OSError as error:
        print(f"cannot read configuration {path}: {error.strerror}", file=sys.stderr)
        return None
    if data_dir:
        config.data_dir = data_dir
    return config


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
