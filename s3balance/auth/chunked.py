"""Body filters that verify a payload while it streams: plain SHA-256 and aws-chunked framing.

Both implement the front's ``BodyFilter`` protocol structurally (``feed``/``finish``).  The
aws-chunked decoder is an incremental state machine: input may be split at any byte, only the
current framing line is ever buffered (bounded), and chunk data passes straight through, so
memory stays flat whatever the object size.  Framing never reaches the output.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass, field
from enum import Enum

from s3balance import errors
from s3balance.auth import checksums, sigv4
from s3balance.auth.checksums import ChecksumAlgorithm, RunningChecksum
from s3balance.errors import S3Error

#: Longest framing line (chunk header or trailer) we buffer before giving up.
MAX_LINE = 4096
#: Most trailer lines we accept.
MAX_TRAILERS = 16
#: Largest single chunk; S3's own objects parts are at most 5 GiB.
MAX_CHUNK_SIZE = 5 * 1024**3
_HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")
#: The end of one unsigned chunk and the header of the next, whole: CRLF, a size without
#: extensions, CRLF.  At most 8 hex digits, so below :data:`MAX_CHUNK_SIZE`; longer sizes take
#: the general path.
_BOUNDARY = re.compile(rb"\r\n([0-9a-fA-F]{1,8})\r\n").match


class Sha256PayloadVerifier:
    """Pass the body through unchanged; at the end, compare its SHA-256 to the signed one."""

    def __init__(self, expected_hex: str) -> None:
        self._expected = expected_hex.lower()
        self._hash = hashlib.sha256()

    def feed(self, data: bytes) -> bytes:
        self._hash.update(data)
        return data

    def finish(self) -> bytes:
        computed = self._hash.hexdigest()
        if not hmac.compare_digest(computed, self._expected):
            raise errors.XAmzContentSHA256Mismatch(
                ClientComputedContentSHA256=self._expected,
                S3ComputedContentSHA256=computed,
            )
        return b""


@dataclass(frozen=True)
class ChunkSigner:
    """What chunk-signature verification needs from the request's header signature.

    :param key: the SigV4 signing key of the request's scope.
    :param timestamp: the request's ``X-Amz-Date`` (as signed).
    :param scope: ``date/region/s3/aws4_request``.
    :param seed_signature: the request's own signature, which the first chunk chains to.
    """

    key: bytes = field(repr=False)
    timestamp: str
    scope: str
    seed_signature: str

    def chunk_signature(self, previous: str, chunk_sha256_hex: str) -> str:
        return sigv4.sign(
            self.key,
            sigv4.chunk_string_to_sign(self.timestamp, self.scope, previous, chunk_sha256_hex),
        )

    def trailer_signature(self, previous: str, trailer_sha256_hex: str) -> str:
        return sigv4.sign(
            self.key,
            sigv4.trailer_string_to_sign(self.timestamp, self.scope, previous, trailer_sha256_hex),
        )


class _State(Enum):
    CHUNK_HEADER = "chunk header"
    DATA = "chunk data"
    DATA_END = "CRLF after chunk data"
    TRAILER = "trailer"
    DONE = "done"


def _malformed(detail: str) -> S3Error:
    return errors.InvalidRequest(f"Malformed aws-chunked body: {detail}.")


class AwsChunkedDecoder:
    """Strip aws-chunked framing, verifying chunk signatures, trailer checksum and length.

    :param signed_chunks: every chunk header carries ``chunk-signature=`` (the
        ``STREAMING-AWS4-HMAC-SHA256-PAYLOAD[-TRAILER]`` modes).
    :param trailer: the body ends with trailing headers (the ``-TRAILER`` modes).
    :param signer: verifies chunk and trailer signatures; ``None`` parses them without checking
        (auth disabled and the key unknown).
    :param expected_trailer: the checksum header named by ``x-amz-trailer``, lower-case; it must
        arrive and match.
    :param decoded_length: ``x-amz-decoded-content-length``; the payload must be exactly that long.
    """

    def __init__(
        self,
        *,
        signed_chunks: bool,
        trailer: bool,
        signer: ChunkSigner | None = None,
        expected_trailer: str | None = None,
        decoded_length: int | None = None,
    ) -> None:
        self._signed_chunks = signed_chunks
        self._trailer_mode = trailer
        self._signer = signer
        self._expected_trailer = expected_trailer.lower() if expected_trailer else None
        self._decoded_length = decoded_length
        self._checksum: RunningChecksum | None = None
        self._algorithm: ChecksumAlgorithm | None = None
        if self._expected_trailer is not None:
            self._algorithm = checksums.by_header(self._expected_trailer)
            if self._algorithm is None:
                raise errors.InvalidRequest(
                    f"The value specified in the x-amz-trailer header is not supported: "
                    f"{self._expected_trailer}"
                )
            self._checksum = self._algorithm.new()
        self._state = _State.CHUNK_HEADER
        self._line = bytearray()
        self._remaining = 0
        #: The framing after the last plain unsigned chunk, and the size it announced.
        self._boundary = b""
        self._boundary_size = 0
        self._crlf_seen = 0
        self._chunk_hash = hashlib.sha256()
        self._chunk_signature = ""
        self._previous_signature = signer.seed_signature if signer else ""
        self._total = 0
        self._trailer_lines: list[tuple[str, str]] = []
        self._out: list[memoryview] = []
        self._summed = 0
        #: Trailing headers received (lower-case names), complete once :meth:`finish` passed.
        self.trailers: dict[str, str] = {}

    @property
    def trailer_algorithm(self) -> ChecksumAlgorithm | None:
        """The algorithm of the checksum trailer this body must end with, if any."""
        return self._algorithm

    def verified_trailer(self) -> str | None:
        """The trailer checksum (base64), once it arrived and matched the decoded bytes."""
        if self._state is not _State.DONE or self._algorithm is None:
            return None
        return self.trailers.get(self._algorithm.header)

    @property
    def decoded_total(self) -> int:
        """Payload bytes passed through so far."""
        return self._total

    def feed(self, data: bytes) -> bytes:
        # Data pieces are views into ``data``: the output is copied once (by the join), or not
        # at all when ``data`` is nothing but chunk data.  The trailer checksum runs once over
        # the output (one call into C per read, not one per piece), unless the trailer arrives
        # in this same read and needs it sooner (:meth:`_sum_pieces`).
        out: list[memoryview] = []
        self._out = out
        self._summed = 0
        view = memoryview(data)
        pos = 0
        end = len(data)
        while pos < end:
            state = self._state
            if state is _State.DATA:
                pos = self._data_run(data, view, pos, end, out)
            elif state is _State.DATA_END and self._crlf_seen == 0 and end - pos >= 2:
                # The usual case: the whole CRLF is here.
                if data[pos : pos + 2] != b"\r\n":
                    raise _malformed("chunk data is not followed by CRLF")
                pos += 2
                self._end_of_chunk()
                self._state = _State.CHUNK_HEADER
            elif state is _State.DATA_END:
                expected = b"\r\n"[self._crlf_seen]
                if data[pos] != expected:
                    raise _malformed("chunk data is not followed by CRLF")
                pos += 1
                self._crlf_seen += 1
                if self._crlf_seen == 2:
                    self._end_of_chunk()
                    self._state = _State.CHUNK_HEADER
            elif state is _State.DONE:
                raise _malformed("data after the final chunk")
            else:
                newline = data.find(b"\n", pos, pos + MAX_LINE + 1)
                if newline >= 0 and not self._line:
                    # The usual case: the whole line is in this read.
                    if newline == pos or data[newline - 1] != 13:  # CR
                        raise _malformed("a framing line does not end with CRLF")
                    line = data[pos : newline - 1]
                    pos = newline + 1
                    if state is _State.CHUNK_HEADER:
                        self._chunk_header(line)
                    else:
                        self._trailer_line(line)
                    continue
                stop = end if newline < 0 else newline
                if len(self._line) + (stop - pos) > MAX_LINE:
                    raise _malformed(f"a framing line is longer than {MAX_LINE} bytes")
                self._line += view[pos:stop]
                if newline < 0:
                    pos = end
                    continue
                pos = newline + 1
                if not self._line.endswith(b"\r"):
                    raise _malformed("a framing line does not end with CRLF")
                line = bytes(self._line[:-1])
                self._line.clear()
                if state is _State.CHUNK_HEADER:
                    self._chunk_header(line)
                else:
                    self._trailer_line(line)
        result = data if len(out) == 1 and len(out[0]) == end else b"".join(out)
        if self._checksum is not None and self._summed < len(out):
            if self._summed == 0:
                self._checksum.update(result)
            else:
                self._sum_pieces()
        # The views pin ``data``: let it go now rather than when the next read arrives, so a
        # decoded read is not kept in memory beside the next one.
        out.clear()
        return result

    def _data_run(
        self, data: bytes, view: memoryview, pos: int, end: int, out: list[memoryview]
    ) -> int:
        """Pass chunk data on from ``pos``, then (unsigned chunks) every following chunk whose
        framing is here.

        :meth:`feed` takes one step per framing element; this loop takes one per chunk for the
        framing SDKs write between unsigned chunks (``CRLF <hex size> CRLF``, whole in this
        read).  SDKs give every chunk but the last the same size, so the framing after a chunk
        is nearly always the one after the previous chunk: that is compared as bytes, and only
        another one is parsed (a regular expression).  Anything else (a chunk signature,
        framing split by the read, a final, malformed or unusual chunk header) is left to
        :meth:`feed` and :meth:`_chunk_header`, so both paths accept and refuse the same bodies.

        :returns: where :meth:`feed` goes on.
        """
        remaining = self._remaining
        total = self._total
        if self._signed_chunks:
            take = remaining if remaining <= end - pos else end - pos
            piece = view[pos : pos + take]
            self._chunk_hash.update(piece)
            out.append(piece)
            pos += take
            remaining -= take
            total += take
        else:
            boundary = self._boundary
            while remaining < end - pos:
                # This chunk's data ends in this read, before its end: look at what follows.
                stop = pos + remaining
                out.append(view[pos:stop])
                total += remaining
                if boundary and data.startswith(boundary, stop):
                    pos = stop + len(boundary)
                    remaining = self._boundary_size
                    continue
                found = _BOUNDARY(data, stop)
                if found is None or (size := int(found[1], 16)) == 0:
                    # Not a plain boundary, or the final chunk: the general path takes over.
                    pos = stop
                    remaining = 0
                    break
                boundary = self._boundary = found[0]
                self._boundary_size = size
                pos = found.end()
                remaining = size
            else:
                # The read ends in this chunk's data, or exactly at its end.
                take = end - pos
                if take:
                    out.append(view[pos:end])
                pos = end
                remaining -= take
                total += take
        limit = self._decoded_length
        if limit is not None and total > limit:
            raise errors.IncompleteBody(
                "The aws-chunked body carries more data than x-amz-decoded-content-length "
                f"({limit})."
            )
        self._remaining = remaining
        self._total = total
        if not remaining:
            self._state = _State.DATA_END
            self._crlf_seen = 0
        return pos

    def _sum_pieces(self) -> None:
        """Bring the trailer checksum up to date with this read's data so far."""
        if self._checksum is not None:
            for piece in self._out[self._summed :]:
                self._checksum.update(piece)
        self._summed = len(self._out)

    def finish(self) -> bytes:
        if self._state is not _State.DONE:
            raise errors.IncompleteBody(
                f"The aws-chunked body ended early (in the {self._state.value})."
            )
        return b""

    # -- framing steps -------------------------------------------------------------------------

    def _chunk_header(self, line: bytes) -> None:
        size_field, _, extensions = line.partition(b";")
        size_field = size_field.strip()
        if not size_field or len(size_field) > 16 or not set(size_field) <= _HEX_DIGITS:
            raise _malformed("invalid chunk size")
        size = int(size_field, 16)
        if size > MAX_CHUNK_SIZE:
            raise _malformed("chunk size too large")
        signature = ""
        for extension in extensions.split(b";") if extensions else []:
            name, _, value = extension.strip().partition(b"=")
            if name == b"chunk-signature":
                signature = value.decode("ascii", "replace")
        if self._signed_chunks:
            if len(signature) != 64:
                raise errors.SignatureDoesNotMatch("A chunk-signature is missing or malformed.")
            self._chunk_signature = signature
            self._chunk_hash = hashlib.sha256()
        if size == 0:
            self._final_chunk()
        else:
            self._remaining = size
            self._state = _State.DATA

    def _end_of_chunk(self) -> None:
        """Verify the chunk just read: fail as early as the bad chunk, before more data passes."""
        if not self._signed_chunks or self._signer is None:
            return
        expected = self._signer.chunk_signature(
            self._previous_signature, self._chunk_hash.hexdigest()
        )
        if not sigv4.signatures_equal(expected, self._chunk_signature):
            raise errors.SignatureDoesNotMatch(
                "The chunk signature we calculated does not match the signature you provided.",
                SignatureProvided=self._chunk_signature,
            )
        self._previous_signature = self._chunk_signature

    def _final_chunk(self) -> None:
        self._end_of_chunk()
        if self._decoded_length is not None and self._total != self._decoded_length:
            raise errors.IncompleteBody(
                f"The aws-chunked body decoded to {self._total} bytes, "
                f"x-amz-decoded-content-length says {self._decoded_length}."
            )
        self._state = _State.TRAILER

    def _trailer_line(self, line: bytes) -> None:
        if line:
            if not self._trailer_mode:
                raise _malformed("trailing headers in a body that announced none")
            if len(self._trailer_lines) >= MAX_TRAILERS:
                raise _malformed("too many trailing headers")
            name, colon, value = line.partition(b":")
            if not colon:
                raise _malformed("a trailing header has no ':'")
            self._trailer_lines.append(
                (name.strip().lower().decode("latin-1"), value.strip().decode("latin-1"))
            )
            return
        self._check_trailers()
        self._state = _State.DONE

    def _check_trailers(self) -> None:
        trailers = dict(self._trailer_lines)
        if self._signed_chunks and self._trailer_mode and self._signer is not None:
            provided = trailers.get("x-amz-trailer-signature", "")
            canonical = "".join(
                f"{name}:{value}\n"
                for name, value in self._trailer_lines
                if name != "x-amz-trailer-signature"
            )
            expected = self._signer.trailer_signature(
                self._previous_signature, sigv4.sha256_hex(canonical)
            )
            if not sigv4.signatures_equal(expected, provided):
                raise errors.SignatureDoesNotMatch(
                    "The trailer signature we calculated does not match the one you provided.",
                    SignatureProvided=provided,
                )
        algorithm = self._algorithm
        self._sum_pieces()
        if self._expected_trailer is not None and self._checksum is not None and algorithm:
            provided_sum = trailers.get(self._expected_trailer)
            if provided_sum is None:
                raise errors.InvalidRequest(
                    f"The trailing header {self._expected_trailer} named by x-amz-trailer "
                    "was not sent."
                )
            provided_digest = algorithm.decode(provided_sum)
            if provided_digest is None:
                raise errors.InvalidRequest(
                    f"Value for {algorithm.header} trailing header is invalid."
                )
            if not hmac.compare_digest(self._checksum.digest(), provided_digest):
                raise errors.BadDigest(
                    f"The {algorithm.name} you specified did not match the calculated checksum."
                )
        self.trailers = trailers
