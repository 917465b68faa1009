"""Reading the decimal integers clients send (headers, query parameters, XML fields).

``int()`` is the wrong tool for text from the network: it accepts ``+1``, ``1_000``, spaces and
non-ASCII digits, and a string of more than 4,300 digits makes it raise a ``ValueError`` that
few callers expect (Python's guard against quadratic-time conversion), which became a 500 with a
traceback.  :func:`parse_decimal` accepts only ASCII digits and checks the length *before*
converting, so every caller gets one answer for all of these: ``ValueError``, which it turns
into the S3 error S3 gives for that parameter.
"""

from __future__ import annotations

__all__ = ["BEYOND_ANY_VALUE", "MAX_DIGITS", "TooManyDigits", "parse_decimal"]

#: Significant digits of the largest value any S3 integer can take (a signed 64-bit length).
MAX_DIGITS = 19
#: Larger than any value of :data:`MAX_DIGITS` digits: for callers that compare a well-formed
#: but huge number (a Range beyond any object) instead of refusing it.
BEYOND_ANY_VALUE = 10**MAX_DIGITS
_DIGITS = frozenset("0123456789")


class TooManyDigits(ValueError):
    """Only ASCII digits, but more significant ones than :data:`MAX_DIGITS`."""


def parse_decimal(text: str | bytes, maximum: int | None = None) -> int:
    """A non-negative decimal integer written with ASCII digits only.

    Leading zeros are allowed (S3 reads ``007`` as 7), but a value needs at most
    :data:`MAX_DIGITS` significant digits.

    :param text: the value as sent (no surrounding spaces are removed).
    :param maximum: when given, larger values are refused too.
    :raises TooManyDigits: digits only, but too many of them.
    :raises ValueError: empty, any character other than ``0``-``9``, or above ``maximum``.
    """
    if isinstance(text, bytes):
        text = text.decode("latin-1")
    if not text:
        raise ValueError("empty")
    significant = text.lstrip("0") or "0"
    if not _DIGITS.issuperset(significant):
        raise ValueError("not a decimal integer")
    if len(significant) > MAX_DIGITS:
        raise TooManyDigits(f"more than {MAX_DIGITS} digits")
    value = int(significant)
    if maximum is not None and value > maximum:
        raise ValueError("too large")
    return value
