"""Request headers as signature verification needs them: case-insensitive and multi-valued.

SigV4 joins repeated values of a signed header with ``,``, so a plain ``dict`` (which keeps only
one) would verify a different request than the one the client signed.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Protocol


class _RawHeaders(Protocol):
    """The part of :class:`twisted.web.http_headers.Headers` we read (kept structural)."""

    def getAllRawHeaders(self) -> Iterable[tuple[bytes, Sequence[bytes]]]: ...


def decode_header_bytes(raw: bytes) -> str:
    """Decode a header value so it re-encodes to the exact bytes the client signed."""
    return raw.decode("utf-8", "surrogateescape")


def encode_signed_text(text: str) -> bytes:
    """Inverse of :func:`decode_header_bytes`, used when hashing canonical requests."""
    return text.encode("utf-8", "surrogateescape")


class RequestHeaders:
    """Case-insensitive multi-dict of request headers, order of values preserved."""

    def __init__(self, pairs: Iterable[tuple[str, str]] = ()) -> None:
        self._values: dict[str, list[str]] = {}
        for name, value in pairs:
            self._values.setdefault(name.lower(), []).append(value)

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Sequence[str] | str]) -> RequestHeaders:
        """Build from ``{name: [values]}`` (or ``{name: value}``)."""
        pairs: list[tuple[str, str]] = []
        for name, values in mapping.items():
            if isinstance(values, str):
                pairs.append((name, values))
            else:
                pairs.extend((name, v) for v in values)
        return cls(pairs)

    @classmethod
    def from_twisted(cls, headers: _RawHeaders) -> RequestHeaders:
        """Build from a :class:`twisted.web.http_headers.Headers` (raw bytes, any case).

        Filled directly rather than through pairs: every signed request is read this way, and
        the pairs were a third of the cost.
        """
        built = cls()
        values = built._values
        for raw_name, raw_values in headers.getAllRawHeaders():
            if len(raw_values) == 1:  # nearly always: no comprehension to run
                decoded = [raw_values[0].decode("utf-8", "surrogateescape")]
            else:
                decoded = [decode_header_bytes(v) for v in raw_values]
            name = raw_name.decode("latin-1").lower()
            present = values.get(name)
            if present is None:
                values[name] = decoded
            else:  # two spellings of one name: keep every value, in order
                present.extend(decoded)
        return built

    @classmethod
    def coerce(cls, headers: RequestHeaders | Mapping[str, Sequence[str] | str]) -> RequestHeaders:
        """Accept either form at API boundaries."""
        if isinstance(headers, RequestHeaders):
            return headers
        return cls.from_mapping(headers)

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of ``name``, or ``default``."""
        values = self._values.get(name.lower())
        return values[0] if values else default

    def get_all(self, name: str) -> list[str]:
        return list(self._values.get(name.lower(), ()))

    def values_of(self, lower_name: str) -> Sequence[str]:
        """Every value of a header by its lower-cased name, not copied (read only)."""
        return self._values.get(lower_name, ())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._values

    def names(self) -> Iterator[str]:
        """Lower-cased names of all headers present."""
        return iter(self._values)
