"""What a GetObject or HeadObject asks of an object, and the plan the gateway answers it with.

The front turns the request's headers into a :class:`ReadRequest`; :meth:`Gateway.read
<s3balance.gateway.Gateway.read>` reads the row, judges the conditions and the range
(:func:`plan_read`, no I/O), chooses between a redirect and a proxied read, opens the backend
stream and returns a :class:`ReadPlan`.  The front only writes the plan out, so a read goes down
the layers once.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from types import TracebackType

from s3balance import conditions, errors
from s3balance.backends.interface import IObjectStream
from s3balance.conditions import Preconditions
from s3balance.db.records import ObjectRecord
from s3balance.parts import parse_part_number, part_range


@dataclass(frozen=True)
class ReadRequest:
    """A read, HTTP aside.

    :ivar preconditions: ``If-Match``, ``If-None-Match``, ``If-Modified-Since``,
        ``If-Unmodified-Since``.
    :ivar range_header: the ``Range`` header, as received.
    :ivar part_number: the ``partNumber`` query value, as received (checked once the object is
        known, as S3 does: a missing object is NoSuchKey whatever the part number).
    :ivar with_body: GetObject; HeadObject reads the row only.
    :ivar response_overrides: the ``response-*`` parameters, for a presigned URL of redirect mode.
    """

    preconditions: Preconditions = Preconditions()
    range_header: str | None = None
    part_number: str | None = None
    with_body: bool = True
    response_overrides: Mapping[str, str] = field(default_factory=dict)


class ReadPlan:
    """How to answer a read: 304, a redirect, headers only, or an open stream of the bytes.

    A plan with a stream counts as a reader of its location (so its bytes are not deleted under
    it) until :meth:`close`, which ``async with plan:`` calls; the stream must be consumed or
    discarded before that.

    :ivar record: the object's row.
    :ivar not_modified: the answer is 304 (conditions said so).
    :ivar byte_range: the inclusive range served, None for the whole object.
    :ivar part_number: the part served (``partNumber``), None otherwise.
    :ivar redirect: redirect mode's presigned URL, when the read is answered by one.
    :ivar stream: the backend's stream of the bytes, for a proxied GetObject.
    """

    def __init__(
        self,
        record: ObjectRecord,
        not_modified: bool = False,
        byte_range: tuple[int, int] | None = None,
        part_number: int | None = None,
    ) -> None:
        self.record = record
        self.not_modified = not_modified
        self.byte_range = byte_range
        self.part_number = part_number
        self.redirect: str | None = None
        self.stream: IObjectStream | None = None
        self._reading: AbstractAsyncContextManager[IObjectStream] | None = None

    @property
    def status(self) -> int:
        if self.not_modified:
            return 304
        return 200 if self.byte_range is None else 206

    @property
    def length(self) -> int:
        """Bytes of the answer's body."""
        if self.byte_range is None:
            return self.record.size
        return self.byte_range[1] - self.byte_range[0] + 1

    @property
    def content_range(self) -> str | None:
        """The ``Content-Range`` of a 206."""
        if self.byte_range is None:
            return None
        return conditions.content_range(self.byte_range, self.record.size)

    async def open(self, reading: AbstractAsyncContextManager[IObjectStream]) -> None:
        """Enter ``reading`` (:meth:`Gateway.reading <s3balance.gateway.Gateway.reading>`) and
        keep its stream until :meth:`close`."""
        self.stream = await reading.__aenter__()
        self._reading = reading

    async def close(
        self,
        kind: type[BaseException] | None = None,
        error: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        """Stop counting as a reader of the location (the stream is done with)."""
        reading, self._reading = self._reading, None
        if reading is not None:
            await reading.__aexit__(kind, error, traceback)

    async def __aenter__(self) -> ReadPlan:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close(kind, error, traceback)


def plan_read(record: ObjectRecord, wanted: ReadRequest) -> ReadPlan:
    """Judge ``wanted``'s conditions and range against ``record``, S3's order: conditions (412
    or 304) first, then the part number or the range.

    :raises S3Error: PreconditionFailed, InvalidArgument or InvalidPartNumber (``partNumber``),
        InvalidRange.
    """
    outcome = wanted.preconditions.judge(record.etag, record.last_modified)
    if outcome is conditions.Outcome.PRECONDITION_FAILED:
        raise errors.PreconditionFailed(Condition="If-Match or If-Unmodified-Since")
    if outcome is conditions.Outcome.NOT_MODIFIED:
        return ReadPlan(record, not_modified=True)
    if wanted.part_number is None:
        return ReadPlan(record, byte_range=conditions.parse_range(wanted.range_header, record.size))
    # A part of a multipart object, as S3 serves it: a 206 with that part's bytes.
    number = parse_part_number(wanted.part_number)
    byte_range: tuple[int, int] | None = part_range(record, number)
    if byte_range is not None and byte_range[1] < byte_range[0]:
        byte_range = None  # part 1 of an empty object: the (empty) object itself
    return ReadPlan(record, byte_range=byte_range, part_number=number)


__all__ = ["ReadPlan", "ReadRequest", "plan_read"]
