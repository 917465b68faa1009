"""S3's rules for an adapter that stores objects itself (a local directory, memory) rather than
asking an S3 service, which applies them on its own: the stored headers, ranges, part numbers,
the order of a completion and the multipart ETag."""

from __future__ import annotations

from s3balance.backends.interface import (
    ENCRYPTION_HEADER,
    STORED_HEADERS,
    BackendCannotEncrypt,
    BackendError,
    BackendInvalidPart,
)

#: S3's highest part number.
MAX_PART_NUMBER = 10000


def key_bytes(key: str) -> bytes:
    """UTF-8 of a key; ``surrogatepass`` so no key the front accepted can fail here (also the
    order of listings: S3 lists keys in UTF-8 byte order)."""
    return key.encode("utf-8", "surrogatepass")


def in_key_range(key: str, start_after: str, until: str | None) -> bool:
    """Whether ``key`` lies after ``start_after`` and (unless None) up to ``until``, in listing
    order (a listing's ``start_after``/``until`` slice)."""
    encoded = key_bytes(key)
    if start_after and encoded <= key_bytes(start_after):
        return False
    return until is None or encoded <= key_bytes(until)


def stored_headers(headers: dict[str, str]) -> dict[str, str]:
    """The headers of :data:`STORED_HEADERS` among ``headers``, lower-case names."""
    kept = {name.lower(): value for name, value in headers.items()}
    return {name: kept[name] for name in STORED_HEADERS if name in kept}


def stored_metadata(metadata: dict[str, str]) -> dict[str, str]:
    """User metadata as S3 returns it: lower-case names."""
    return {name.lower(): value for name, value in metadata.items()}


def refuse_encryption(backend: str, headers: dict[str, str]) -> None:
    """:raises BackendCannotEncrypt: the write asks for encryption at rest, which such storage
    does not do (checked before anything is read or written)."""
    if any(name.lower() == ENCRYPTION_HEADER for name in headers):
        raise BackendCannotEncrypt(backend, "this storage does not encrypt")


def resolve_range(
    backend: str, byte_range: tuple[int, int] | None, size: int
) -> tuple[int, int]:
    """An inclusive ``(first, last)`` inside the object; ``last`` past the end is clamped as S3
    does.  For an empty object the whole range is ``(0, -1)``.

    :raises BackendError: the range starts past the end.
    """
    if byte_range is None:
        return 0, size - 1
    first, last = byte_range
    last = min(last, size - 1)
    if first < 0 or first > last:
        raise BackendError(backend, f"unsatisfiable range {byte_range} for {size} bytes")
    return first, last


def check_part_number(backend: str, part_number: int) -> None:
    """:raises BackendError: the number is outside S3's 1 to :data:`MAX_PART_NUMBER`."""
    if not 1 <= part_number <= MAX_PART_NUMBER:
        raise BackendError(backend, f"part number {part_number} out of range")


def check_completion(backend: str, parts: list[tuple[int, str]]) -> None:
    """:raises BackendInvalidPart: no parts, or not in strictly ascending order."""
    if not parts:
        raise BackendInvalidPart(backend, "no parts given")
    numbers = [number for number, _ in parts]
    if numbers != sorted(set(numbers)):
        raise BackendInvalidPart(backend, "parts not in ascending order")
