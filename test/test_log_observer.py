"""``BatchedTextLog``: twistd's text log line for line, access lines written in batches."""

from __future__ import annotations

import io
import threading
from collections.abc import Callable
from typing import Any

from twisted.internet.task import Clock
from twisted.logger import Logger as TwistedLogger
from twisted.logger import LogLevel, LogPublisher, textFileLogObserver
from twisted.python.failure import Failure

from s3balance.logs import ACCESS_LINE, ACCESS_NAMESPACE, BatchedTextLog

ACCESS_FIELDS = dict(
    method="GET", path="/vb/k\\x85", operation="GetObject", status=200, error_code="-",
    bytes_in=0, bytes_out=4096, duration=0.0123, client="127.0.0.1:5", request_id="abc",
)  # fmt: skip


def _log_everything(observer: Callable[[dict[str, Any]], None]) -> None:
    """Events as ``Logger.emit`` makes them, at chosen times (two in one second)."""

    def event(namespace: str, level: LogLevel, log_format: str, **fields: Any) -> dict[str, Any]:
        return dict(
            log_namespace=namespace, log_level=level, log_format=log_format, log_source=None,
            **fields,
        )  # fmt: skip

    for second in (1_700_000_000.25, 1_700_000_000.75, 1_700_000_001.5):
        observer(
            event(ACCESS_NAMESPACE, LogLevel.info, ACCESS_LINE, log_time=second, **ACCESS_FIELDS)
        )
    observer(event("s3balance.app", LogLevel.info, "started {what}", what="x\ny", log_time=2e9))
    try:
        raise ValueError("boom")
    except ValueError:
        failure = Failure()
    observer(event("s3balance.app", LogLevel.critical, "failed", log_failure=failure, log_time=3e9))
    observer(
        event(ACCESS_NAMESPACE, LogLevel.info, ACCESS_LINE, log_time=4e9, log_system="sys",
              **ACCESS_FIELDS)
    )  # fmt: skip
    observer(event(ACCESS_NAMESPACE, LogLevel.info, "{missing}", log_time=5e9))
    observer(event(ACCESS_NAMESPACE, LogLevel.info, ACCESS_LINE, **ACCESS_FIELDS))  # no time


def test_writes_what_twisteds_text_observer_writes() -> None:
    ours, theirs = io.StringIO(), io.StringIO()
    observer = BatchedTextLog(ours, clock=Clock())
    _log_everything(observer)
    observer.flush()
    _log_everything(textFileLogObserver(theirs))
    assert ours.getvalue() == theirs.getvalue()
    assert "GET /vb/k\\x85 GetObject 200 - in=0 out=4096 0.012s 127.0.0.1:5 abc" in ours.getvalue()


def test_access_lines_wait_for_the_batch_and_other_lines_do_not() -> None:
    out, clock = io.StringIO(), Clock()
    observer = BatchedTextLog(out, delay=0.25, max_lines=3, clock=clock)
    publisher = LogPublisher(observer)
    access = TwistedLogger(namespace=ACCESS_NAMESPACE, observer=publisher)
    other = TwistedLogger(namespace="s3balance.app", observer=publisher)
    access.emit(LogLevel.info, ACCESS_LINE, **ACCESS_FIELDS)
    assert out.getvalue() == ""
    clock.advance(0.25)
    assert out.getvalue().count("\n") == 1
    access.emit(LogLevel.info, ACCESS_LINE, **ACCESS_FIELDS)
    other.warn("late")  # written at once, after the access line held before it
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 and "GetObject" in lines[1] and lines[2].endswith("late")
    for _ in range(3):  # max_lines: the third line writes the batch
        access.emit(LogLevel.info, ACCESS_LINE, **ACCESS_FIELDS)
    assert out.getvalue().count("\n") == 6


def test_access_lines_from_another_thread_are_written_at_once() -> None:
    out = io.StringIO()
    observer = BatchedTextLog(out, clock=Clock())
    access = TwistedLogger(namespace=ACCESS_NAMESPACE, observer=LogPublisher(observer))
    worker = threading.Thread(
        target=access.emit, args=(LogLevel.info, ACCESS_LINE), kwargs=ACCESS_FIELDS
    )
    worker.start()
    worker.join(10)
    assert out.getvalue().count("\n") == 1


def test_binary_files_get_utf8() -> None:
    out = io.BytesIO()
    observer = BatchedTextLog(out, clock=Clock())
    TwistedLogger(namespace="s3balance.app", observer=LogPublisher(observer)).info("caf\u00e9")
    assert out.getvalue().endswith("caf\u00e9\n".encode())
