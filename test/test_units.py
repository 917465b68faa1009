"""Sizes and durations as written in config files, Go S3 Balance files included."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s3balance.units import format_duration, format_size, parse_duration, parse_size

GiB = 1024**3


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("100GB", 100 * GiB),  # the Go project's GB is binary
        ("50GB", 50 * GiB),
        ("1.5TiB", 1536 * GiB),
        ("512", 512),
        (512, 512),
        (0, 0),
        ("0", 0),
        ("10 MB", 10 * 1024**2),
        ("10mb", 10 * 1024**2),
        ("1KB", 1024),
        ("1KiB", 1024),
        ("1kib", 1024),
        ("1k", 1024),
        ("2m", 2 * 1024**2),
        ("3g", 3 * GiB),
        ("4t", 4 * 1024**4),
        ("1PB", 1024**5),
        ("1PiB", 1024**5),
        ("7B", 7),
        ("7 b", 7),
        (" 2GiB ", 2 * GiB),
        ("0.5KB", 512),
        (".5KiB", 512),
    ],
)
def test_parse_size(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("12 parsecs", "is not a size (use a number with a unit"),
        ("GB", "is not a size"),
        ("", "is not a size"),
        ("1.2.3GB", "is not a size"),
        ("-5GB", "negative"),
        (-5, "negative"),
        ("1.5", "whole number of bytes"),
        ("0.3KB", "whole number of bytes"),
        (True, "is not a size"),
        (1.5, "is not a size"),
    ],
)
def test_parse_size_rejects(text: object, fragment: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_size(text)  # type: ignore[arg-type]
    assert fragment in str(caught.value)
    assert repr(text) in str(caught.value)


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0B"),
        (700, "700B"),
        (1024, "1KiB"),
        (1536, "1.5KiB"),
        (10 * GiB, "10GiB"),
        (100 * GiB, "100GiB"),
        (1536 * GiB, "1.5TiB"),
        (GiB + 1, f"{GiB + 1}B"),
        (1024**5 * 3, "3PiB"),
    ],
)
def test_format_size(n: int, text: str) -> None:
    assert format_size(n) == text


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=2**62))
def test_format_size_round_trips(n: int) -> None:
    assert parse_size(format_size(n)) == n


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30.0),
        ("1m30s", 90.0),
        ("100ms", 0.1),
        ("1h", 3600.0),
        ("1.5h", 5400.0),
        ("2h45m", 9900.0),
        ("500us", 0.0005),
        ("500µs", 0.0005),
        ("10ns", 1e-8),
        ("0", 0.0),
        ("0s", 0.0),
        ("300", 300.0),  # Go files give conn_max_lifetime as bare seconds
        (300, 300.0),
        (1.5, 1.5),
        ("2.5", 2.5),
        ("+1s", 1.0),
        ("1h0m0.5s", 3600.5),
    ],
)
def test_parse_duration(text: str | int | float, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds, rel=0, abs=1e-12)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("30", None),
        ("1x", "is not a duration"),
        ("s", "is not a duration"),
        ("", "is not a duration"),
        ("1h 30m", "is not a duration"),
        ("-1s", "negative"),
        (-1, "negative"),
        ("1h-1m", "is not a duration"),
        (True, "is not a duration"),
        (float("nan"), "is not a duration"),
    ],
)
def test_parse_duration_rejects(text: object, fragment: str | None) -> None:
    if fragment is None:  # a bare number is valid: the control row of this table
        assert parse_duration(text) == 30.0  # type: ignore[arg-type]
        return
    with pytest.raises(ValueError) as caught:
        parse_duration(text)  # type: ignore[arg-type]
    assert fragment in str(caught.value)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (30, "30s"),
        (90, "1m30s"),
        (0.1, "100ms"),
        (0.0005, "500us"),
        (3600, "1h"),
        (5400, "1h30m"),
        (604800, "168h"),
        (1.5, "1.5s"),
        (3600.5, "1h0.5s"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=10**15))
def test_format_duration_round_trips(nanos: int) -> None:
    seconds = nanos / 1e9
    assert parse_duration(format_duration(seconds)) == seconds


def test_format_rejects_negative() -> None:
    with pytest.raises(ValueError):
        format_size(-1)
    with pytest.raises(ValueError):
        format_duration(-0.5)
