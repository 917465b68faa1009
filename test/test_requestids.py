"""Request ids: 16 hex digits, never repeated within a process."""

from __future__ import annotations

import re

from s3balance.web.requestids import new_request_id


def test_request_ids_are_sixteen_hex_digits_and_distinct() -> None:
    ids = [new_request_id() for _ in range(100_000)]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[0-9a-f]{16}", request_id) for request_id in ids)
