"""Loggers for every s3balance module, under one level knob.

txaio's loggers sit on twisted.logger (so twistd's log files and observers see every event) and
add what twisted.logger lacks: a global level that turns the methods below it into no-ops, so a
``--log-level warn`` daemon does not even format its per-request access lines.
"""

from __future__ import annotations

from typing import Any

import txaio
from twisted.logger import Logger as TwistedLogger

txaio.use_twisted()

#: From quietest to noisiest, as ``--log-level`` accepts them.
LEVELS = ("critical", "error", "warn", "info", "debug", "trace")

#: A logger named after the calling module (txaio infers the namespace from its caller).
#: (txaio picks its implementation at run time, hence the attribute look-ups mypy cannot see.)
make_logger = txaio.make_logger  # type: ignore[attr-defined]


def named_logger(namespace: str) -> Any:
    """A logger with a fixed namespace (the access log is ``s3balance.access``, whoever writes it),
    following the global level like every other."""
    from txaio.tx import Logger

    return Logger(namespace=namespace, logger=TwistedLogger)


def set_level(level: str) -> None:
    """Apply ``level`` to every logger made here, now and later."""
    if level not in LEVELS:
        raise ValueError(f"unknown log level {level!r}; use one of {', '.join(LEVELS)}")
    txaio.set_global_log_level(level)  # type: ignore[attr-defined]
