"""Sizes and durations as people write them in the YAML file.

Sizes follow the Go S3 Balance project, where ``GB`` is 1024**3, so a Go file's ``max_size: 100GB``
means the same here; ``GiB`` is accepted too.  Durations follow Go's ``time.ParseDuration``
(``1m30s``, ``100ms``), and a bare number means seconds because Go files give some durations
(``conn_max_lifetime: 300``) that way.  Arithmetic is done in :class:`~decimal.Decimal` so that
``format_*`` output parses back to exactly the same value.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

__all__ = ["parse_size", "parse_duration", "format_size", "format_duration", "SIZE_UNITS_HELP"]

SIZE_UNITS_HELP = "use a number with a unit: B, KB, MB, GB, TB, KiB, MiB, GiB, TiB"

_SIZE_MULTIPLIERS: dict[str, int] = {"": 1, "b": 1}
for _power, _letter in enumerate("kmgtp", start=1):
    for _suffix in (_letter, _letter + "b", _letter + "ib"):
        _SIZE_MULTIPLIERS[_suffix] = 1024**_power

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)\s*$")

#: Binary units, largest first, as :func:`format_size` writes them.
_SIZE_NAMES = (
    ("PiB", 1024**5),
    ("TiB", 1024**4),
    ("GiB", 1024**3),
    ("MiB", 1024**2),
    ("KiB", 1024),
)


def _not_a_size(text: object) -> ValueError:
    return ValueError(f"{text!r} is not a size ({SIZE_UNITS_HELP})")


def parse_size(text: str | int) -> int:
    """Bytes in a size such as ``100GB``, ``1.5TiB``, ``10 MB`` or ``512``.

    :raises ValueError: not a size, negative, or a fraction of a byte.
    """
    if isinstance(text, bool) or not isinstance(text, int | str):
        raise _not_a_size(text)
    if isinstance(text, int):
        if text < 0:
            raise ValueError(f"{text!r} is negative (a size is 0 or more bytes)")
        return text
    match = _SIZE_RE.match(text)
    if match is None:
        if text.strip().startswith("-"):
            raise ValueError(f"{text!r} is negative (a size is 0 or more bytes)")
        raise _not_a_size(text)
    number, unit = match.groups()
    multiplier = _SIZE_MULTIPLIERS.get(unit.lower())
    if multiplier is None:
        raise _not_a_size(text)
    total = Decimal(number) * multiplier
    if total != total.to_integral_value():
        raise ValueError(f"{text!r} is not a whole number of bytes")
    return int(total)


def format_size(n: int) -> str:
    """The shortest exact form of ``n`` bytes in binary units (``10GiB``, ``1.5KiB``, ``700B``)."""
    if n < 0:
        raise ValueError(f"{n!r} is negative (a size is 0 or more bytes)")
    for name, multiplier in _SIZE_NAMES:
        if n < multiplier:
            continue
        value = Decimal(n) / multiplier
        text = _decimal_text(value)
        # Only short forms: 1.5GiB is friendlier than 1610612736B, 1.00000095367GiB is not.
        if len(text.partition(".")[2]) <= 2 and Decimal(text) * multiplier == n:
            return f"{text}{name}"
    return f"{n}B"


_DURATION_NANOS = {
    "ns": Decimal(1),
    "us": Decimal(1000),
    "µs": Decimal(1000),  # Go accepts both micro signs
    "μs": Decimal(1000),
    "ms": Decimal(1000**2),
    "s": Decimal(1000**3),
    "m": Decimal(60 * 1000**3),
    "h": Decimal(3600 * 1000**3),
}
_DURATION_PART_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_BARE_NUMBER_RE = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)$")
_DURATION_HELP = "use a number of seconds or Go syntax such as 30s, 1m30s, 100ms, 1h"


def parse_duration(text: str | int | float) -> float:
    """Seconds in a duration such as ``30s``, ``1m30s``, ``100ms``, ``1.5h`` or ``300``.

    :raises ValueError: not a duration, or negative.
    """
    if isinstance(text, bool) or not isinstance(text, int | float | str):
        raise ValueError(f"{text!r} is not a duration ({_DURATION_HELP})")
    if isinstance(text, int | float):
        if text != text or text in (float("inf"), float("-inf")):
            raise ValueError(f"{text!r} is not a duration ({_DURATION_HELP})")
        if text < 0:
            raise ValueError(f"{text!r} is negative (a duration is 0 or more)")
        return float(text)
    stripped = text.strip()
    if stripped.startswith("-"):
        raise ValueError(f"{text!r} is negative (a duration is 0 or more)")
    stripped = stripped.removeprefix("+")
    if _BARE_NUMBER_RE.match(stripped):
        return float(Decimal(stripped))
    nanos = Decimal(0)
    position = 0
    while position < len(stripped):
        part = _DURATION_PART_RE.match(stripped, position)
        if part is None:
            raise ValueError(f"{text!r} is not a duration ({_DURATION_HELP})")
        try:
            nanos += Decimal(part.group(1)) * _DURATION_NANOS[part.group(2)]
        except InvalidOperation:  # pragma: no cover - the regex admits only decimals
            raise ValueError(f"{text!r} is not a duration ({_DURATION_HELP})") from None
        position = part.end()
    if position == 0:
        raise ValueError(f"{text!r} is not a duration ({_DURATION_HELP})")
    return float(nanos / _DURATION_NANOS["s"])


def format_duration(seconds: float) -> str:
    """Go-style text for a duration (``30s``, ``1m30s``, ``100ms``, ``168h``), exact to 1 ns."""
    if seconds < 0:
        raise ValueError(f"{seconds!r} is negative (a duration is 0 or more)")
    nanos = int((Decimal(seconds) * _DURATION_NANOS["s"]).to_integral_value())
    if nanos == 0:
        return "0s"
    if nanos < 1000**3:
        for unit, size in (("ms", 1000**2), ("us", 1000), ("ns", 1)):
            if nanos >= size:
                return _decimal_text(Decimal(nanos) / size) + unit
    hours, rest = divmod(nanos, 3600 * 1000**3)
    minutes, rest = divmod(rest, 60 * 1000**3)
    text = ""
    if hours:
        text += f"{hours}h"
    if minutes:
        text += f"{minutes}m"
    if rest:
        text += _decimal_text(Decimal(rest) / 1000**3) + "s"
    return text


def _decimal_text(value: Decimal) -> str:
    """Plain decimal notation without trailing zeros (never ``1E+1``)."""
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text
