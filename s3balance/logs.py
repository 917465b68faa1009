"""Loggers for every s3balance module, under one level knob.

txaio's loggers sit on twisted.logger (so twistd's log files and observers see every event) and
add what twisted.logger lacks: a global level that turns the methods below it into no-ops, so a
``--log-level warn`` daemon does not even format its per-request access lines.
"""

from __future__ import annotations

import signal
from collections.abc import Iterable
from typing import IO, Any, cast

import txaio
from twisted.logger import ILogObserver, textFileLogObserver
from twisted.logger import Logger as TwistedLogger
from twisted.python.logfile import LogFile

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


#: The access log's line, one per request (written by ``s3balance.web.request``): method, path
#: without the query (a presigned URL's query holds its signature), the S3 operation (with the
#: query parameter names that made a request refused), status, S3 error code (``-`` when none),
#: bytes in and out, duration, client address and request id.
ACCESS_LINE = (
    "{method} {path} {operation} {status} {error_code} in={bytes_in} out={bytes_out} "
    "{duration:.3f}s {client} {request_id}"
)
#: The operation or error code of a request that has none (``/health``, a dropped connection).
NO_VALUE = "-"


def access_operation(operation: str, param_names: Iterable[str] = ()) -> str:
    """The operation as the access line shows it: ``GetObject``; for a refusal, the query
    parameter names that caused it (names only: values may be signatures), as in
    ``NotImplemented[cors]``."""
    names = sorted(set(param_names))
    return f"{operation}[{','.join(names)}]" if names else operation


def printable(text: str) -> str:
    """``text`` for a one-line log: each character that is not printable (a request path may
    carry U+0085, a line break to some readers) as a ``\\xNN`` / ``\\uNNNN`` escape."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
# -- the log file twistd writes (rotation only) ------------------------------------------------

#: A log file is rotated when it reaches this size (twistd's own default is 1 MB) ...
LOG_FILE_SIZE = 10 << 20
#: ... and at most this many rotated files are kept (twistd keeps every one).
LOG_FILES_KEPT = 5

_log_file_settings: dict[str, Any] = {}


def use_capped_log_file(path: str, max_size: int, max_files: int) -> str:
    """Arrange for twistd to log to ``path`` through :func:`capped_log_observer`.

    :returns: the ``--logger`` value twistd needs (twistd builds the observer only after the
        options were parsed, and calls its factory without arguments).
    """
    _log_file_settings.update(path=path, max_size=max_size, max_files=max_files)
    return f"{__name__}.capped_log_observer"


def capped_log_file(path: str, max_size: int, max_files: int) -> LogFile:
    """A log file rotated at ``max_size`` bytes that keeps ``max_files`` rotated files."""
    return LogFile.fromFullPath(path, rotateLength=max_size, maxRotatedFiles=max_files)


def capped_log_observer() -> ILogObserver:
    """twistd's ``--logger`` factory: the text log in the file :func:`use_capped_log_file`
    named, with a bounded number of rotated files; ``SIGUSR1`` rotates it, as with twistd's."""
    log_file = capped_log_file(
        _log_file_settings["path"],
        _log_file_settings["max_size"],
        _log_file_settings["max_files"],
    )
    if not signal.getsignal(signal.SIGUSR1):

        def rotate(signum: int, frame: Any) -> None:
            from twisted.internet import reactor

            reactor.callFromThread(log_file.rotate)  # type: ignore[attr-defined]

        signal.signal(signal.SIGUSR1, rotate)
    return textFileLogObserver(cast(IO[Any], log_file))  # a file-like LogFile
