"""Conditional requests and Range parsing, as S3 evaluates them."""

from __future__ import annotations

import datetime
import email.utils
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s3balance import errors
from s3balance.conditions import (
    Outcome,
    content_range,
    evaluate,
    http_date,
    parse_http_date,
    parse_range,
)

pytestmark = pytest.mark.timeout(60)

ETAG = '"0123456789abcdef0123456789abcdef"'
MODIFIED = 1_700_000_000.4  # served as whole seconds
BEFORE = http_date(MODIFIED - 3600)
AT = http_date(MODIFIED)
AFTER = http_date(MODIFIED + 3600)


def test_no_condition_proceeds():
    assert evaluate(ETAG, MODIFIED) is Outcome.PROCEED


@pytest.mark.parametrize(
    ("kwargs", "outcome"),
    [
        ({"if_match": ETAG}, Outcome.PROCEED),
        ({"if_match": "0123456789abcdef0123456789abcdef"}, Outcome.PROCEED),
        ({"if_match": '"other", ' + ETAG}, Outcome.PROCEED),
        ({"if_match": "*"}, Outcome.PROCEED),
        ({"if_match": '"other"'}, Outcome.PRECONDITION_FAILED),
        ({"if_none_match": ETAG}, Outcome.NOT_MODIFIED),
        ({"if_none_match": "*"}, Outcome.NOT_MODIFIED),
        ({"if_none_match": '"other"'}, Outcome.PROCEED),
        ({"if_modified_since": AT}, Outcome.NOT_MODIFIED),
        ({"if_modified_since": AFTER}, Outcome.NOT_MODIFIED),
        ({"if_modified_since": BEFORE}, Outcome.PROCEED),
        ({"if_unmodified_since": AT}, Outcome.PROCEED),
        ({"if_unmodified_since": BEFORE}, Outcome.PRECONDITION_FAILED),
        ({"if_modified_since": "not a date"}, Outcome.PROCEED),
        ({"if_unmodified_since": "garbage"}, Outcome.PROCEED),
    ],
)
def test_single_conditions(kwargs: dict[str, str], outcome: Outcome):
    assert evaluate(ETAG, MODIFIED, **kwargs) is outcome


def test_if_match_wins_over_a_failing_if_unmodified_since():
    """S3: If-Match true and If-Unmodified-Since false -> 200."""
    assert evaluate(ETAG, MODIFIED, if_match=ETAG, if_unmodified_since=BEFORE) is Outcome.PROCEED


def test_if_none_match_failure_wins_over_a_holding_if_modified_since():
    """S3: If-None-Match false and If-Modified-Since true -> 304."""
    result = evaluate(ETAG, MODIFIED, if_none_match=ETAG, if_modified_since=BEFORE)
    assert result is Outcome.NOT_MODIFIED


def test_a_matching_if_none_match_ignores_if_modified_since():
    result = evaluate(ETAG, MODIFIED, if_none_match='"other"', if_modified_since=AFTER)
    assert result is Outcome.PROCEED


def test_412_comes_before_304():
    result = evaluate(ETAG, MODIFIED, if_match='"other"', if_none_match=ETAG)
    assert result is Outcome.PRECONDITION_FAILED


def test_copy_source_conditions_fail_with_412_instead_of_304():
    assert evaluate(ETAG, MODIFIED, if_none_match=ETAG, for_copy=True) is (
        Outcome.PRECONDITION_FAILED
    )
    assert evaluate(ETAG, MODIFIED, if_modified_since=AFTER, for_copy=True) is (
        Outcome.PRECONDITION_FAILED
    )


def test_http_dates_round_trip_in_all_three_forms():
    assert http_date(MODIFIED) == "Tue, 14 Nov 2023 22:13:20 GMT"
    assert parse_http_date("Tue, 14 Nov 2023 22:13:20 GMT") == 1_700_000_000
    assert parse_http_date("Tuesday, 14-Nov-23 22:13:20 GMT") == 1_700_000_000
    assert parse_http_date("Tue Nov 14 22:13:20 2023") == 1_700_000_000
    assert parse_http_date("") is None
    assert parse_http_date("yesterday") is None


@given(st.floats(min_value=-86_400.0, max_value=253_402_300_799.0))
@settings(max_examples=300)
def test_http_date_is_rfc_1123_in_gmt_as_email_utils_writes_it(timestamp: float):
    moment = datetime.datetime.fromtimestamp(math.floor(timestamp), tz=datetime.UTC)
    assert http_date(timestamp) == email.utils.format_datetime(moment, usegmt=True)


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        (None, 10, None),
        ("bytes=0-0", 10, (0, 0)),
        ("bytes=2-5", 10, (2, 5)),
        ("bytes=2-", 10, (2, 9)),
        ("bytes=-3", 10, (7, 9)),
        ("bytes=-30", 10, (0, 9)),
        ("bytes=5-100", 10, (5, 9)),
        ("bytes = 1-2", 10, (1, 2)),
        ("bytes=0-1,4-5", 10, None),  # several ranges: S3 sends the whole object
        ("items=0-1", 10, None),
        ("bytes=5-2", 10, None),  # invalid: ignored
        ("bytes=a-b", 10, None),
        ("bytes=-", 10, None),
        ("bytes", 10, None),
    ],
)
def test_parse_range(header: str | None, size: int, expected: tuple[int, int] | None):
    assert parse_range(header, size) == expected


@pytest.mark.parametrize(
    ("header", "size"),
    [("bytes=10-", 10), ("bytes=10-20", 10), ("bytes=0-", 0), ("bytes=-0", 10), ("bytes=-5", 0)],
)
def test_unsatisfiable_ranges_are_416_with_s3_details(header: str, size: int):
    with pytest.raises(errors.S3Error) as raised:
        parse_range(header, size)
    assert (raised.value.code, raised.value.status) == ("InvalidRange", 416)
    assert raised.value.extra == {"RangeRequested": header, "ActualObjectSize": str(size)}


def test_content_range():
    assert content_range((2, 5), 10) == "bytes 2-5/10"


@settings(max_examples=300, deadline=None)
@given(
    size=st.integers(min_value=0, max_value=10_000),
    first=st.integers(min_value=0, max_value=12_000),
    length=st.integers(min_value=0, max_value=12_000),
)
def test_any_served_range_lies_inside_the_object(size: int, first: int, length: int):
    for header in (f"bytes={first}-{first + length}", f"bytes={first}-", f"bytes=-{length}"):
        try:
            result = parse_range(header, size)
        except errors.S3Error as error:
            assert error.status == 416
            assert size == 0 or first >= size or length == 0
            continue
        assert result is not None
        start, end = result
        assert 0 <= start <= end < size


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=30))
def test_arbitrary_headers_never_crash(header: str):
    try:
        result = parse_range(header, 100)
    except errors.S3Error as error:
        assert error.code == "InvalidRange"
    else:
        assert result is None or 0 <= result[0] <= result[1] < 100
