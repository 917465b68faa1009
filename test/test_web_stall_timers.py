"""The stall timers note the time per chunk instead of resetting a DelayedCall; they must still
fire exactly when the peer has been silent for the whole timeout, and not before."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.interfaces import IConsumer
from twisted.internet.task import Clock
from zope.interface import implementer

from s3balance.backends.uploadmd5 import BackgroundMD5
from s3balance.errors import S3Error
from s3balance.net.stallwatch import StallWatch
from s3balance.web.requestbody import RequestBody


@implementer(IConsumer)
class Sink:
    def __init__(self) -> None:
        self.data: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.data.append(data)

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass


def test_request_body_times_out_only_after_silence_of_the_whole_read_timeout() -> None:
    clock = Clock()
    body = RequestBody(1000, clock=clock, read_timeout=10.0)
    failures: list[Any] = []
    body.startProducing(Sink()).addErrback(failures.append)
    for _ in range(5):  # a byte every 6 s keeps a 10 s timer from firing for 30 s
        clock.advance(6)
        body.receive(b"x")
    assert not failures
    clock.advance(9.9)
    assert not failures
    clock.advance(0.2)
    assert len(failures) == 1
    error = failures[0].value
    assert isinstance(error, S3Error) and error.code == "RequestTimeout"
    assert not clock.getDelayedCalls()  # nothing left scheduled


def test_request_body_leaves_no_timer_once_complete() -> None:
    clock = Clock()
    body = RequestBody(2, clock=clock, read_timeout=10.0)
    sink = Sink()
    done: list[object] = []
    body.startProducing(sink).addCallback(done.append)
    body.receive(b"ab")
    body.end_of_input()
    assert done == [None] and b"".join(sink.data) == b"ab"
    assert not clock.getDelayedCalls()


def test_request_body_larger_reads_than_its_buffer_do_not_stall_the_client() -> None:
    """The held-back chunk does not count against the buffer: one read as large as the buffer
    must not pause the client for good."""
    paused: list[bool] = []

    class Flow:
        def pause_input(self) -> None:
            paused.append(True)

        def resume_input(self) -> None:
            paused.append(False)

    clock = Clock()
    body = RequestBody(
        3 * 1024, clock=clock, read_timeout=10.0, buffer_limit=1024, input_flow=Flow()
    )
    sink = Sink()
    body.startProducing(sink)
    for _ in range(3):
        body.receive(b"y" * 1024)
    assert True not in paused
    body.end_of_input()
    assert len(b"".join(sink.data)) == 3 * 1024


def test_stall_watch_fires_after_silence_and_not_while_things_move() -> None:
    clock = Clock()
    watch = StallWatch(clock, 5.0)
    fired: list[bool] = []
    watch.on_stall = lambda: fired.append(True)
    watch.resume()
    for _ in range(10):
        clock.advance(3)
        watch.touch()
    assert not fired
    clock.advance(4.9)
    assert not fired
    clock.advance(0.2)
    assert fired == [True] and watch.fired


def test_stall_watch_suspended_never_fires() -> None:
    clock = Clock()
    watch = StallWatch(clock, 5.0)
    watch.on_stall = lambda: pytest.fail("fired while suspended")
    watch.resume()
    watch.suspend()
    clock.advance(60)
    assert not clock.getDelayedCalls()


def test_stall_watch_briefly_suspended_keeps_its_timer_and_fires_on_time() -> None:
    clock = Clock()
    watch = StallWatch(clock, 5.0)
    fired: list[float] = []
    watch.on_stall = lambda: fired.append(clock.seconds())
    watch.resume()  # at 0
    clock.advance(1)
    scheduled: list[float] = []
    schedule = clock.callLater

    def counting(delay: float, function: Any, *args: Any, **kwargs: Any) -> Any:
        scheduled.append(delay)
        return schedule(delay, function, *args, **kwargs)

    clock.callLater = counting  # type: ignore[method-assign]
    watch.suspend()  # at 1: our side holds things up
    clock.advance(2)
    watch.resume()  # at 3: the peer is silent from now on
    assert scheduled == [], "a pause within the timeout set a new timer"
    clock.advance(4.9)  # 7.9: the old timer came due at 5 and was set again for 8
    assert not fired
    clock.advance(0.2)
    assert fired == [8.1] and watch.fired
    assert not clock.getDelayedCalls()


def test_background_md5_matches_hashlib() -> None:
    import hashlib
    import os

    chunks = [os.urandom(256 << 10) for _ in range(40)]  # 10 MiB: crosses the backlog bound
    md5 = BackgroundMD5()
    for chunk in chunks:
        md5.update(chunk)
    assert md5.hexdigest() == hashlib.md5(b"".join(chunks)).hexdigest()
