"""Request ids (``x-amz-request-id``): unique without a system call per request.

``secrets.token_hex`` reads the kernel's random source on every call, a measurable share of a small
request's CPU.  An id only has to be unique, not unguessable: 8 random hex digits drawn once per
process (so workers and restarts differ) followed by a counter.
"""

from __future__ import annotations

import itertools
import secrets

_PREFIX = secrets.token_hex(4)
_COUNTER = itertools.count(secrets.randbelow(1 << 31))


def new_request_id() -> str:
    """16 lower-case hex digits, distinct for every call in this process (for 2**32 calls)."""
    return f"{_PREFIX}{next(_COUNTER) & 0xFFFFFFFF:08x}"
