"""The header deadline of ``S3Channel``: exact per request, one timer per connection."""

from __future__ import annotations

from typing import Any

from test.test_web_request import connect

REQUEST = b"POST /bucket/key HTTP/1.1\r\nHost: example\r\nContent-Length: 1\r\n\r\nx"


def header_timers(channel: Any) -> list[str]:
    """Wrap the channel's ``callLater`` to list the header-deadline timers it schedules."""
    scheduled: list[str] = []
    schedule = channel.callLater

    def counting(delay: float, function: Any, *args: Any, **kwargs: Any) -> Any:
        name = getattr(function, "__name__", "")
        if name.startswith("_header"):
            scheduled.append(name)
        return schedule(delay, function, *args, **kwargs)

    channel.callLater = counting
    return scheduled


def test_back_to_back_requests_on_one_connection_set_one_header_timer() -> None:
    _, channel, transport, clock, _ = connect(header_timeout=10.0)
    scheduled = header_timers(channel)
    for _ in range(5):
        channel.dataReceived(REQUEST)
        clock.advance(0.5)
    assert transport.value().count(b"got:x") == 5
    assert len(scheduled) == 1


def test_a_later_request_gets_its_whole_timeout_from_its_own_first_byte() -> None:
    _, channel, transport, clock, _ = connect(header_timeout=10.0)
    channel.dataReceived(REQUEST)  # at 0: its timer is due at 10
    clock.advance(6)
    channel.dataReceived(b"POST /bucket/key HTTP/1.1\r\n")  # at 6: due at 16
    clock.advance(4.5)
    channel.dataReceived(b"Host: example\r\n")
    clock.advance(5)  # 15.5
    assert b"RequestTimeout" not in transport.value()
    assert not transport.disconnecting
    clock.advance(0.6)  # 16.1
    assert b"RequestTimeout" in transport.value()
    assert transport.disconnecting


def test_a_timer_that_finds_no_request_waiting_lapses_and_the_next_one_is_timed() -> None:
    _, channel, transport, clock, _ = connect(header_timeout=10.0)
    scheduled = header_timers(channel)
    channel.dataReceived(REQUEST)
    clock.advance(30)  # the timer came due on an idle connection and was not set again
    assert not transport.disconnecting
    channel.dataReceived(b"POST /bucket/key HTTP/1.1\r\n")  # at 30: due at 40
    clock.advance(9.9)
    assert not transport.disconnecting
    clock.advance(0.2)
    assert b"RequestTimeout" in transport.value()
    assert len(scheduled) == 2
