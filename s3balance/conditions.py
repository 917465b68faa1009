"""Conditional requests and byte ranges, as S3 evaluates them: pure functions, no I/O.

S3's precedence (GetObject/HeadObject documentation): when ``If-Match`` holds, a failing
``If-Unmodified-Since`` is ignored; when ``If-None-Match`` fails (the ETag matches), a holding
``If-Modified-Since`` is ignored and the answer is 304.  ``If-Match`` failures answer 412 before any
304 is considered.  Unparseable dates are ignored, as HTTP says.  CopyObject's
``x-amz-copy-source-if-*`` follow the same rules, except that every failure is a 412.

Ranges: one ``bytes=`` range is served (206); a syntactically invalid header, another unit, or
several ranges are ignored and the whole object is returned (S3 does the same); a range that
starts past the end answers 416 InvalidRange.
"""

from __future__ import annotations

import enum
import functools
import math
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

from s3balance import errors
from s3balance.etags import etag_matches
from s3balance.integers import BEYOND_ANY_VALUE, TooManyDigits, parse_decimal


class Outcome(enum.Enum):
    PROCEED = "proceed"
    NOT_MODIFIED = "not-modified"
    PRECONDITION_FAILED = "precondition-failed"


def parse_http_date(value: str | None) -> float | None:
    """Seconds since the epoch for an HTTP date (any of the three RFC 9110 forms), or ``None``
    when absent or unparseable."""
    if not value:
        return None
    try:
        parsed = parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if parsed is None:
        return None
    return parsed.timestamp()


_WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def http_date(timestamp: float) -> str:
    """RFC 1123 date in GMT (``Last-Modified``, ``Date``): whole seconds, as S3 sends it."""
    return _http_date_of_second(math.floor(timestamp))


@functools.lru_cache(maxsize=1024)
def _http_date_of_second(second: int) -> str:
    # Every answer carries one or two of these, and many share a second: email.utils'
    # formatter (a datetime and a format per call) was a visible share of a small GET.
    moment = time.gmtime(second)
    return (
        f"{_WEEKDAYS[moment.tm_wday]}, {moment.tm_mday:02d} {_MONTHS[moment.tm_mon - 1]} "
        f"{moment.tm_year:04d} {moment.tm_hour:02d}:{moment.tm_min:02d}:{moment.tm_sec:02d} GMT"
    )


@dataclass(frozen=True)
class Preconditions:
    """The conditional headers of a read (``If-Match``...), or the ``x-amz-copy-source-if-*`` of
    a copy, as received."""

    if_match: str | None = None
    if_none_match: str | None = None
    if_modified_since: str | None = None
    if_unmodified_since: str | None = None

    def judge(self, etag: str, last_modified: float, *, for_copy: bool = False) -> Outcome:
        """:func:`evaluate` these headers against an object."""
        return evaluate(
            etag,
            last_modified,
            self.if_match,
            self.if_none_match,
            self.if_modified_since,
            self.if_unmodified_since,
            for_copy=for_copy,
        )


def evaluate(
    etag: str,
    last_modified: float,
    if_match: str | None = None,
    if_none_match: str | None = None,
    if_modified_since: str | None = None,
    if_unmodified_since: str | None = None,
    *,
    for_copy: bool = False,
) -> Outcome:
    """Decide a conditional request against the stored object's ETag and modification time.

    :param for_copy: evaluating ``x-amz-copy-source-if-*``: a would-be 304 is a 412.
    """
    modified = math.floor(last_modified)
    if if_match is not None:
        if not etag_matches(if_match, etag):
            return Outcome.PRECONDITION_FAILED
    else:
        unmodified_since = parse_http_date(if_unmodified_since)
        if unmodified_since is not None and modified > unmodified_since:
            return Outcome.PRECONDITION_FAILED
    not_modified = Outcome.PRECONDITION_FAILED if for_copy else Outcome.NOT_MODIFIED
    if if_none_match is not None:
        if etag_matches(if_none_match, etag):
            return not_modified
    else:
        modified_since = parse_http_date(if_modified_since)
        if modified_since is not None and modified <= modified_since:
            return not_modified
    return Outcome.PROCEED


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The inclusive byte range ``(first, last)`` a ``Range`` header asks of an object of
    ``size`` bytes, or ``None`` to serve the whole object.

    :raises S3Error: InvalidRange (416) when the range is well formed but not satisfiable.
    """
    if header is None:
        return None
    value = header.strip()
    unit, sep, spec = value.partition("=")
    if not sep or unit.strip().lower() != "bytes":
        return None
    spec = spec.strip()
    if "," in spec:
        return None
    first_text, dash, last_text = spec.partition("-")
    first_text, last_text = first_text.strip(), last_text.strip()
    if not dash or not (first_text or last_text):
        return None
    try:
        first = _range_number(first_text) if first_text else None
        last = _range_number(last_text) if last_text else None
    except ValueError:
        return None  # S3 ignores a Range it cannot read and serves the whole object
    if first is None:
        suffix = last or 0
        if suffix == 0 or size == 0:
            raise _unsatisfiable(value, size)
        return max(0, size - suffix), size - 1
    if last is not None:
        if last < first:
            return None
    else:
        last = size - 1
    if first >= size:
        raise _unsatisfiable(value, size)
    return first, min(last, size - 1)


def _range_number(text: str) -> int:
    """A Range bound; a huge one is beyond any object (not an error of its own)."""
    try:
        return parse_decimal(text)
    except TooManyDigits:
        return BEYOND_ANY_VALUE


def _unsatisfiable(requested: str, size: int) -> errors.S3Error:
    return errors.InvalidRange(RangeRequested=requested, ActualObjectSize=str(size))


def content_range(byte_range: tuple[int, int], size: int) -> str:
    """The ``Content-Range`` header value of a 206 answer."""
    return f"bytes {byte_range[0]}-{byte_range[1]}/{size}"
