"""Loggers for every s3balance module, under one level knob.

txaio's loggers sit on twisted.logger (so twistd's log files and observers see every event) and
add what twisted.logger lacks: a global level that turns the methods below it into no-ops, so a
``--log-level warn`` daemon does not even format its per-request access lines.
"""

from __future__ import annotations

import atexit
import signal
import sys
import threading
from collections.abc import Iterable
from typing import IO, Any, cast

import txaio
from twisted.logger import (
    ILogObserver,
    LogEvent,
    formatEventAsClassicLogText,
    formatTime,
    timeFormatRFC3339,
)
from twisted.logger import Logger as TwistedLogger
from twisted.python.compat import ioType
from twisted.python.logfile import LogFile
from zope.interface import implementer

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


#: The namespace of the access log's lines.
ACCESS_NAMESPACE = "s3balance.access"

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


def use_stdout_log() -> str:
    """The ``--logger`` value for twistd logging to stdout (``twistd -n`` without a log file)
    through :class:`BatchedTextLog`, which writes what twistd's own observer would."""
    return f"{__name__}.stdout_log_observer"


def stdout_log_observer() -> ILogObserver:
    """twistd's ``--logger`` factory for stdout."""
    return BatchedTextLog(sys.stdout)


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
    return BatchedTextLog(cast(IO[Any], log_file))  # a file-like LogFile


class _SecondCache:
    """``formatTime`` for a time format without fractions of a second, computed once a second:
    the time zone look-up and ``strftime`` were the dearest part of logging one request."""

    def __init__(self, time_format: str | None) -> None:
        self._format = time_format
        self._second: int | None = None
        self._text = ""

    def __call__(self, when: float | None) -> str:
        if when is None or self._format is None:
            return formatTime(when, self._format)
        second = int(when)
        if second != self._second:
            self._text = formatTime(second, self._format)
            self._second = second
        return self._text


@implementer(ILogObserver)
class BatchedTextLog:
    """twistd's text log (``textFileLogObserver``), line for line, for less CPU per request.

    Access lines are formatted with ``str.format`` (not Twisted's formatter, which builds a
    call-aware mapping per field) and written in batches: kept for at most ``delay`` seconds or
    ``max_lines`` lines, then written with one flush.  Every other event is written at once,
    after the access lines before it, so a warning or a traceback is never held back and the
    order of lines is kept; the batch is also written at shutdown and at exit.

    :param out: a text file (a ``LogFile`` rotates between lines, as before).
    :param delay: seconds an access line may wait (only access lines logged by the reactor
        thread wait; the others are written at once).
    """

    def __init__(
        self,
        out: IO[Any],
        time_format: str | None = timeFormatRFC3339,
        delay: float = 0.25,
        max_lines: int = 200,
        clock: Any = None,
    ) -> None:
        self._out = out
        self._time = _SecondCache(time_format)
        self._delay = delay
        self._max_lines = max_lines
        self._clock = clock
        self._pending: list[str] = []
        self._lock = threading.Lock()
        self._timer: Any = None
        self._reactor_thread = threading.main_thread()
        #: Bytes for a binary file (a ``LogFile``), as ``FileLogObserver`` does.
        self._encoding = None if ioType(out) is str else "utf-8"
        #: A rotating ``LogFile`` gets one write per line: it rotates between writes.
        self._joined = not hasattr(out, "shouldRotate")
        atexit.register(self.flush)

    def __call__(self, event: LogEvent) -> None:
        if event.get("log_namespace") == ACCESS_NAMESPACE and "log_failure" not in event:
            text = self._access_text(event)
            if threading.current_thread() is self._reactor_thread:
                self._hold(text)
                return
        else:
            formatted = formatEventAsClassicLogText(event, formatTime=self._time)
            if formatted is None:
                return
            text = formatted
        with self._lock:
            self._pending.append(text)
        self.flush()

    def _access_text(self, event: LogEvent) -> str:
        try:
            line = event["log_format"].format_map(event)
        except (KeyError, ValueError, TypeError, AttributeError, IndexError):
            return formatEventAsClassicLogText(event, formatTime=self._time) or ""
        if "\n" in line:
            line = line.replace("\n", "\n\t")
        level = event.get("log_level")
        system = event.get("log_system")
        if system is None:
            system = f"{ACCESS_NAMESPACE}#{level.name if level is not None else '-'}"
        return f"{self._time(event.get('log_time'))} [{system}] {line}\n"

    def _hold(self, text: str) -> None:
        with self._lock:
            self._pending.append(text)
            full = len(self._pending) >= self._max_lines
        if full:
            self.flush()
        elif self._timer is None:
            clock = self._clock
            if clock is None:
                from twisted.internet import reactor

                clock = self._clock = cast(Any, reactor)
                clock.addSystemEventTrigger("after", "shutdown", self.flush)
            self._timer = clock.callLater(self._delay, self._flush_later)

    def _flush_later(self) -> None:
        self._timer = None
        self.flush()

    def flush(self) -> None:
        """Write every line held, in order, and flush the file."""
        with self._lock:
            lines, self._pending = self._pending, []
            if not lines:
                return
            if self._encoding is not None:
                encoded = [line.encode(self._encoding) for line in lines]
                if self._joined:
                    self._out.write(b"".join(encoded))
                else:
                    for data in encoded:
                        self._out.write(data)
            elif self._joined:
                self._out.write("".join(lines))
            else:
                for line in lines:
                    self._out.write(line)
            self._out.flush()
