"""The parts of an object, as S3 numbers them: part numbers and the byte range of each part.

An object made by multipart upload keeps its parts' sizes (``ObjectRecord.part_sizes``), so a GET
or HEAD with ``partNumber`` reads one part's bytes; any other object is one part.
"""

from __future__ import annotations

from s3balance import errors
from s3balance.db.records import ObjectRecord
from s3balance.integers import parse_decimal

#: Part numbers go from 1 to this.
MAX_PART_NUMBER = 10_000


def validate_part_number(part_number: int) -> None:
    """:raises S3Error: InvalidArgument outside 1..10000."""
    if not 1 <= part_number <= MAX_PART_NUMBER:
        raise errors.InvalidArgument(
            "Part number must be an integer between 1 and 10000, inclusive",
            ArgumentName="partNumber",
            ArgumentValue=str(part_number),
        )


def parse_part_number(raw: str | None) -> int:
    """The ``partNumber`` query value as S3 reads it.

    :raises S3Error: InvalidArgument when missing, not an integer, or outside 1..10000.
    """
    try:
        number = parse_decimal(raw or "")
    except ValueError:
        raise errors.InvalidArgument(
            "Part number must be an integer between 1 and 10000, inclusive",
            ArgumentName="partNumber",
            ArgumentValue=raw or "",
        ) from None
    validate_part_number(number)
    return number


def part_range(record: ObjectRecord, part_number: int) -> tuple[int, int]:
    """The inclusive byte range of part ``part_number`` of an object (GET/HEAD ``partNumber``).

    An object not made by multipart upload is one part: part 1 is the whole object.  For an
    empty object part 1 is ``(0, -1)``: the caller answers the (empty) object as a whole.

    :raises S3Error: InvalidArgument outside 1..10000, InvalidPartNumber (416) beyond the
        object's parts.
    """
    validate_part_number(part_number)
    sizes = record.part_sizes or (record.size,)
    if part_number > len(sizes):
        raise errors.InvalidPartNumber(
            PartNumberRequested=str(part_number), ActualPartCount=str(len(sizes))
        )
    first = sum(sizes[: part_number - 1])
    return first, first + sizes[part_number - 1] - 1


def parts_count(record: ObjectRecord) -> int | None:
    """``x-amz-mp-parts-count`` of an object: its part count, ``None`` when not multipart."""
    return len(record.part_sizes) if record.part_sizes else None


__all__ = [
    "MAX_PART_NUMBER",
    "parse_part_number",
    "part_range",
    "parts_count",
    "validate_part_number",
]
