"""Checks that run over a request body as it streams past, without holding it.

Each filter sees every body chunk once, in order (:meth:`BodyFilter.feed`), and gets a last word
when the body ends (:meth:`BodyFilter.finish`).  A filter that finds the body bad raises
:class:`~s3balance.errors.S3Error`; :class:`~s3balance.web.requestbody.RequestBody` then
withholds the last bytes from the backend, so an object whose digest failed is never stored
complete.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Protocol

from s3balance import errors
from s3balance.auth import checksums


class BodyFilter(Protocol):
    """One stage of the body pipeline; the output of one filter is the input of the next."""

    def feed(self, data: bytes) -> bytes:
        """Inspect or transform one chunk; returns what goes on. May raise :class:`S3Error`."""
        ...

    def finish(self) -> bytes:
        """The body ended: returns any remaining output; raises :class:`S3Error` if it fails."""
        ...


class ContentMD5Filter:
    """Verifies ``Content-MD5`` (RFC 1864: base64 of the 16-byte MD5 digest).

    :raises S3Error: ``InvalidDigest`` from the constructor when the header is malformed.
    """

    def __init__(self, expected_b64: str) -> None:
        expected = checksums.decode_digest(expected_b64, 16)
        if expected is None:
            raise errors.InvalidDigest()
        self._expected = expected
        self._md5 = hashlib.md5()

    def feed(self, data: bytes) -> bytes:
        self._md5.update(data)
        return data

    def finish(self) -> bytes:
        if self._md5.digest() != self._expected:
            raise errors.BadDigest()
        return b""



class ChecksumFilter:
    """Computes an ``x-amz-checksum-<algorithm>`` over the body and checks it when one was given.

    :param algorithm: any algorithm of :mod:`s3balance.auth.checksums`, by name (any case).
    :param expected_b64: the client's base64 value, or None to only compute it (the value is
        then in :attr:`value_b64` for the core to store).
    :param trailing: the value came in an aws-chunked trailer (only changes the message).
    :param verified: computing is left to another filter, earlier in the chain, which verified
        the value: called when the body ended, it returns that value (the aws-chunked decoder's
        checked trailer), so the body is not checksummed twice.
    :raises S3Error: ``InvalidRequest`` for an unknown algorithm or a malformed value.
    """

    def __init__(
        self,
        algorithm: str,
        expected_b64: str | None,
        trailing: bool = False,
        verified: Callable[[], str | None] | None = None,
    ) -> None:
        found = checksums.by_name(algorithm)
        if found is None:
            raise errors.InvalidRequest(f"Unsupported checksum algorithm: {algorithm}")
        self.checksum = found
        self.algorithm = found.name.lower()
        self._expected: bytes | None = None
        if expected_b64 is not None:
            self._expected = found.decode(expected_b64)
            if self._expected is None:
                where = "trailing header" if trailing else "header"
                raise errors.InvalidRequest(f"Value for {found.header} {where} is invalid.")
        self._verified = verified
        self._running = found.new() if verified is None else None
        self.value_b64: str | None = None
        #: The binary digest, once the body ended.
        self.digest: bytes | None = None

    @property
    def header(self) -> str:
        return self.checksum.header

    @property
    def declared_b64(self) -> str | None:
        """The client's value when it came before the body (a header), else None."""
        return None if self._expected is None else checksums.encode(self._expected)

    def feed(self, data: bytes) -> bytes:
        if self._running is not None:
            self._running.update(data)
        return data

    def finish(self) -> bytes:
        if self._running is not None:
            digest = self._running.digest()
        else:
            assert self._verified is not None
            value = self._verified()
            decoded = self.checksum.decode(value) if value is not None else None
            if decoded is None:
                raise errors.IncompleteBody("The body ended before its checksum trailer.")
            digest = decoded
        self.digest = digest
        self.value_b64 = checksums.encode(digest)
        if self._expected is not None and digest != self._expected:
            raise errors.BadDigest(
                f"The {self.checksum.name} you specified did not match the calculated checksum."
            )
        return b""

