"""aws-chunked decoding and verification: AWS's published vectors, every split, real boto3 bytes."""

from __future__ import annotations

import base64
import calendar
import hashlib
import hmac
import http.server
import io
import ssl
import subprocess
import threading
import zlib
from collections.abc import Iterable, Iterator

import boto3
import botocore.config
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from s3balance.auth.authenticator import Authenticator
from s3balance.auth.chunked import AwsChunkedDecoder, ChunkSigner, Sha256PayloadVerifier
from s3balance.auth.credentials import Identity, KeyRing
from s3balance.auth.headers import RequestHeaders
from s3balance.errors import S3Error

pytestmark = pytest.mark.timeout(60)

# -- the AWS documentation examples (sigv4-streaming.html, sigv4-streaming-trailers.html) -----

DOC_KEY = "AKIAIOSFODNN7EXAMPLE"
DOC_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
DOC_TIMESTAMP = "20130524T000000Z"
DOC_SCOPE = "20130524/us-east-1/s3/aws4_request"
DOC_TIME = float(calendar.timegm((2013, 5, 24, 0, 0, 0)))
DOC_PAYLOAD = b"a" * 66560
DOC_SEED = "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9"
DOC_CHUNK_SIGNATURES = [
    "ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648",
    "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497",
    "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9",
]
DOC_TRAILER_SEED = "106e2a8a18243abcf37539882f36619c00e2dfc72633413f02d3b74544bfeb8e"
DOC_TRAILER_CHUNK_SIGNATURES = [
    "b474d8862b1487a5145d686f57f013e54db672cee1c953b3010fb58501ef5aa2",
    "1c1344b170168f8e65b41376b44b20fe354e373826ccbbe2c1d40a8cae51e5c7",
    "2ca2aba2005185cf7159c6277faf83795951dd77a3a99e6e65d5c9f85863f992",
]
DOC_TRAILER = "x-amz-checksum-crc32c:sOO8/Q=="
DOC_TRAILER_SIGNATURE = "d81f82fc3505edab99d459891051a732e8730629a2e4a59689829ca17fe2e435"


def doc_body(signatures: list[str], trailer: str = "") -> bytes:
    parts = [
        f"10000;chunk-signature={signatures[0]}\r\n".encode() + b"a" * 65536 + b"\r\n",
        f"400;chunk-signature={signatures[1]}\r\n".encode() + b"a" * 1024 + b"\r\n",
        f"0;chunk-signature={signatures[2]}\r\n".encode() + trailer.encode() + b"\r\n",
    ]
    return b"".join(parts)


def doc_headers(trailer: bool) -> dict[str, str]:
    if trailer:
        signed = (
            "content-encoding;host;x-amz-content-sha256;x-amz-date;"
            "x-amz-decoded-content-length;x-amz-storage-class;x-amz-trailer"
        )
        seed, payload = DOC_TRAILER_SEED, "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
    else:
        signed = (
            "content-encoding;content-length;host;x-amz-content-sha256;x-amz-date;"
            "x-amz-decoded-content-length;x-amz-storage-class"
        )
        seed, payload = DOC_SEED, "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
    headers = {
        "Host": "s3.amazonaws.com",
        "x-amz-date": DOC_TIMESTAMP,
        "x-amz-storage-class": "REDUCED_REDUNDANCY",
        "Authorization": f"AWS4-HMAC-SHA256 Credential={DOC_KEY}/{DOC_SCOPE},"
        f"SignedHeaders={signed},Signature={seed}",
        "x-amz-content-sha256": payload,
        "Content-Encoding": "aws-chunked",
        "x-amz-decoded-content-length": "66560",
        "Content-Length": "66824",
    }
    if trailer:
        headers["x-amz-trailer"] = "x-amz-checksum-crc32c"
        del headers["Content-Length"]
    return headers


def doc_authenticator(required: bool = True, known: bool = True) -> Authenticator:
    ring = KeyRing()
    if known:
        ring.add(DOC_KEY, DOC_SECRET, Identity(DOC_KEY))
    return Authenticator(ring, required, "us-east-1", clock=lambda: DOC_TIME + 30)


# -- an independent chunk signer written from the AWS spec, checked against its vectors -------


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def spec_signing_key(secret: str, date: str, region: str) -> bytes:
    k_date = _hmac(("AWS4" + secret).encode(), date)
    return _hmac(_hmac(_hmac(k_date, region), "s3"), "aws4_request")


def spec_chunk_signature(key: bytes, previous: str, data: bytes) -> str:
    to_sign = "\n".join(
        [
            "AWS4-HMAC-SHA256-PAYLOAD",
            DOC_TIMESTAMP,
            DOC_SCOPE,
            previous,
            hashlib.sha256(b"").hexdigest(),
            hashlib.sha256(data).hexdigest(),
        ]
    )
    return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()


DOC_SIGNING_KEY = spec_signing_key(DOC_SECRET, "20130524", "us-east-1")


def spec_signed_body(chunks: list[bytes], seed: str = DOC_SEED) -> bytes:
    """Frame ``chunks`` (plus the final empty one) the way SDKs do, signing each."""
    previous = seed
    out = []
    for data in [*chunks, b""]:
        previous = spec_chunk_signature(DOC_SIGNING_KEY, previous, data)
        out.append(f"{len(data):x};chunk-signature={previous}\r\n".encode() + data + b"\r\n")
    return b"".join(out)


def signed_decoder(decoded_length: int | None) -> AwsChunkedDecoder:
    signer = ChunkSigner(DOC_SIGNING_KEY, DOC_TIMESTAMP, DOC_SCOPE, DOC_SEED)
    return AwsChunkedDecoder(
        signed_chunks=True, trailer=False, signer=signer, decoded_length=decoded_length
    )


def test_spec_signer_reproduces_the_published_signatures() -> None:
    previous = DOC_SEED
    for data, expected in zip(
        [b"a" * 65536, b"a" * 1024, b""], DOC_CHUNK_SIGNATURES, strict=True
    ):
        previous = spec_chunk_signature(DOC_SIGNING_KEY, previous, data)
        assert previous == expected
    assert len(doc_body(DOC_CHUNK_SIGNATURES)) == 66824  # the documented Content-Length


def run(decoder, pieces: Iterable[bytes]) -> bytes:  # type: ignore[no-untyped-def]
    out = [decoder.feed(piece) for piece in pieces]
    out.append(decoder.finish())
    return b"".join(out)


def split_at(data: bytes, cuts: Iterable[int]) -> Iterator[bytes]:
    start = 0
    for cut in sorted(cuts):
        yield data[start:cut]
        start = cut
    yield data[start:]


# -- the documented requests end to end --------------------------------------------------------


@pytest.mark.parametrize("trailer", [False, True], ids=["signed", "signed-trailer"])
def test_documented_request_authenticates_and_decodes(trailer: bool) -> None:
    auth = doc_authenticator()
    headers = doc_headers(trailer)
    result = auth.authenticate("PUT", b"/examplebucket/chunkObject.txt", headers)
    assert result.identity is not None and result.identity.access_key == DOC_KEY
    decoder = auth.body_filter(result, headers)
    assert isinstance(decoder, AwsChunkedDecoder)
    if trailer:
        body = doc_body(
            DOC_TRAILER_CHUNK_SIGNATURES,
            f"{DOC_TRAILER}\r\nx-amz-trailer-signature:{DOC_TRAILER_SIGNATURE}\r\n",
        )
    else:
        body = doc_body(DOC_CHUNK_SIGNATURES)
    assert run(decoder, [body]) == DOC_PAYLOAD
    assert auth.decoded_length(headers) == 66560
    if trailer:
        assert decoder.trailers["x-amz-checksum-crc32c"] == "sOO8/Q=="


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cuts=st.lists(st.integers(min_value=0, max_value=66824), max_size=40))
def test_documented_body_in_random_splits(cuts: list[int]) -> None:
    auth = doc_authenticator()
    headers = doc_headers(False)
    result = auth.authenticate("PUT", b"/examplebucket/chunkObject.txt", headers)
    decoder = auth.body_filter(result, headers)
    assert run(decoder, split_at(doc_body(DOC_CHUNK_SIGNATURES), cuts)) == DOC_PAYLOAD


def _signature_positions(body: bytes) -> list[int]:
    positions, start = [], 0
    while (found := body.find(b"chunk-signature=", start)) >= 0:
        positions.append(found + len(b"chunk-signature=") + 10)
        start = found + 1
    return positions


@pytest.mark.parametrize("trailer", [False, True], ids=["signed", "signed-trailer"])
def test_documented_body_tampering_is_caught(trailer: bool) -> None:
    auth = doc_authenticator()
    headers = doc_headers(trailer)
    result = auth.authenticate("PUT", b"/examplebucket/chunkObject.txt", headers)
    if trailer:
        body = doc_body(
            DOC_TRAILER_CHUNK_SIGNATURES,
            f"{DOC_TRAILER}\r\nx-amz-trailer-signature:{DOC_TRAILER_SIGNATURE}\r\n",
        )
    else:
        body = doc_body(DOC_CHUNK_SIGNATURES)
    first_data = body.index(b"\r\n") + 2
    second_data = body.index(b"\r\n", first_data + 65536 + 2) + 2
    flips = [first_data, first_data + 65535, second_data + 7, *_signature_positions(body)]
    if trailer:
        flips.append(body.index(b"x-amz-trailer-signature:") + 30)
    for position in flips:
        tampered = bytearray(body)
        tampered[position] ^= 0x01
        decoder = auth.body_filter(result, headers)
        with pytest.raises(S3Error) as caught:
            run(decoder, [bytes(tampered)])
        assert caught.value.code == "SignatureDoesNotMatch", position
    if trailer:
        wrong_sum = body.replace(b"sOO8/Q==", b"sOO8/Q=A")
        with pytest.raises(S3Error):
            run(auth.body_filter(result, headers), [wrong_sum])


def test_bad_chunk_is_rejected_before_the_next_chunk_passes() -> None:
    auth = doc_authenticator()
    headers = doc_headers(False)
    result = auth.authenticate("PUT", b"/examplebucket/chunkObject.txt", headers)
    body = bytearray(doc_body(DOC_CHUNK_SIGNATURES))
    body[100] ^= 1
    decoder = auth.body_filter(result, headers)
    first_chunk_end = body.index(b"\r\n") + 2 + 65536 + 2
    decoder.feed(bytes(body[: first_chunk_end - 2]))
    with pytest.raises(S3Error) as caught:
        decoder.feed(bytes(body[first_chunk_end - 2 : first_chunk_end + 10]))
    assert caught.value.code == "SignatureDoesNotMatch"


def test_documented_seed_signature_is_checked() -> None:
    headers = doc_headers(False)
    headers["x-amz-storage-class"] = "STANDARD"
    with pytest.raises(S3Error) as caught:
        doc_authenticator().authenticate("PUT", b"/examplebucket/chunkObject.txt", headers)
    assert caught.value.code == "SignatureDoesNotMatch"


def test_auth_off_decodes_and_verifies_known_keys_only() -> None:
    headers = doc_headers(False)
    tampered = bytearray(doc_body(DOC_CHUNK_SIGNATURES))
    tampered[_signature_positions(bytes(tampered))[0]] ^= 1
    known = doc_authenticator(required=False)
    result = known.authenticate("PUT", b"/examplebucket/chunkObject.txt", headers)
    assert result.identity is None
    with pytest.raises(S3Error):
        run(known.body_filter(result, headers), [bytes(tampered)])
    unknown = doc_authenticator(required=False, known=False)
    result = unknown.authenticate("PUT", b"/examplebucket/chunkObject.txt", headers)
    assert run(unknown.body_filter(result, headers), [bytes(tampered)]) == DOC_PAYLOAD


# -- small bodies at every byte boundary --------------------------------------------------------

SMALL_CHUNKS = [b"hello ", b"aws-chunked\r\n", b"!"]
SMALL_PAYLOAD = b"".join(SMALL_CHUNKS)
SMALL_BODY = spec_signed_body(SMALL_CHUNKS)


def test_small_body_split_at_every_boundary() -> None:
    for cut in range(len(SMALL_BODY) + 1):
        assert run(signed_decoder(len(SMALL_PAYLOAD)), split_at(SMALL_BODY, [cut])) == SMALL_PAYLOAD
    one_by_one = [SMALL_BODY[i : i + 1] for i in range(len(SMALL_BODY))]
    assert run(signed_decoder(len(SMALL_PAYLOAD)), one_by_one) == SMALL_PAYLOAD


def test_small_body_any_flipped_byte_is_rejected() -> None:
    for position in range(len(SMALL_BODY)):
        tampered = bytearray(SMALL_BODY)
        tampered[position] ^= 0x01
        with pytest.raises(S3Error):
            run(signed_decoder(len(SMALL_PAYLOAD)), [bytes(tampered)])


@settings(max_examples=60, deadline=None)
@given(
    chunks=st.lists(st.binary(min_size=1, max_size=300), min_size=0, max_size=6),
    cuts=st.lists(st.integers(min_value=0, max_value=3000), max_size=12),
)
def test_random_bodies_in_random_splits(chunks: list[bytes], cuts: list[int]) -> None:
    body = spec_signed_body(chunks)
    payload = b"".join(chunks)
    pieces = split_at(body, [c for c in cuts if c <= len(body)])
    assert run(signed_decoder(len(payload)), pieces) == payload


@pytest.mark.parametrize(
    "body,code",
    [
        (SMALL_BODY[: SMALL_BODY.rindex(b"0;chunk")], "IncompleteBody"),
        (SMALL_BODY[:-2], "IncompleteBody"),
        (SMALL_BODY[:20], "IncompleteBody"),
        (SMALL_BODY + b"x", "InvalidRequest"),
        (b"zz;chunk-signature=" + b"0" * 64 + b"\r\n", "InvalidRequest"),
        (b"1" * 17 + b";chunk-signature=" + b"0" * 64 + b"\r\n", "InvalidRequest"),
        (b"ffffffffff;chunk-signature=" + b"0" * 64 + b"\r\n", "InvalidRequest"),
        (b"6;chunk-signature=" + b"0" * 5000, "InvalidRequest"),
        (b"6\r\nhello \r\n", "SignatureDoesNotMatch"),
        (SMALL_BODY.replace(b"hello \r\n", b"hello XX", 1), "InvalidRequest"),
        (SMALL_BODY.replace(b";chunk-signature=", b"\n;chunk-signature=", 1), "InvalidRequest"),
    ],
    ids=[
        "no-final-chunk",
        "no-final-crlf",
        "truncated-header",
        "trailing-garbage",
        "non-hex-size",
        "size-too-long",
        "size-too-large",
        "endless-line",
        "unsigned-chunk",
        "data-without-crlf",
        "lf-only",
    ],
)
def test_malformed_bodies(body: bytes, code: str) -> None:
    with pytest.raises(S3Error) as caught:
        run(signed_decoder(len(SMALL_PAYLOAD)), [body])
    assert caught.value.code == code


def test_decoded_length_must_match() -> None:
    for wrong in (len(SMALL_PAYLOAD) - 1, len(SMALL_PAYLOAD) + 1, 0):
        with pytest.raises(S3Error) as caught:
            run(signed_decoder(wrong), [SMALL_BODY])
        assert caught.value.code == "IncompleteBody"


def test_framing_never_reaches_the_output() -> None:
    out = signed_decoder(None).feed(SMALL_BODY)
    assert b"chunk-signature" not in out and out == SMALL_PAYLOAD


# -- unsigned trailer (what boto3 sends over TLS by default) ------------------------------------


def unsigned_trailer_body(payload: bytes, chunk: int, trailer: str) -> bytes:
    parts = [
        f"{len(payload[i : i + chunk]):x}\r\n".encode() + payload[i : i + chunk] + b"\r\n"
        for i in range(0, len(payload), chunk)
    ]
    return b"".join(parts) + f"0\r\n{trailer}\r\n\r\n".encode()


def _crc32_b64(data: bytes) -> str:
    return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()


def unsigned_headers(length: int, algorithm: str = "crc32") -> dict[str, str]:
    return {
        "x-amz-content-sha256": "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
        "content-encoding": "aws-chunked",
        "x-amz-trailer": f"x-amz-checksum-{algorithm}",
        "x-amz-decoded-content-length": str(length),
    }


def test_unsigned_trailer_every_boundary_and_bad_checksum() -> None:
    payload = b"abc def ghi"
    body = unsigned_trailer_body(payload, 4, f"x-amz-checksum-crc32:{_crc32_b64(payload)}")
    auth = Authenticator(KeyRing(), False, "us-east-1")
    headers = unsigned_headers(len(payload))
    result = auth.authenticate("PUT", b"/b/k", headers)
    assert result.payload == "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
    for cut in range(len(body) + 1):
        decoder = auth.body_filter(result, headers)
        assert run(decoder, split_at(body, [cut])) == payload
        assert decoder.trailers["x-amz-checksum-crc32"] == _crc32_b64(payload)
    bad = body.replace(_crc32_b64(payload).encode(), _crc32_b64(b"other").encode())
    with pytest.raises(S3Error) as caught:
        run(auth.body_filter(result, headers), [bad])
    assert caught.value.code == "BadDigest"
    missing = unsigned_trailer_body(payload, 4, "x-amz-checksum-sha1:AAAA")
    with pytest.raises(S3Error):
        run(auth.body_filter(result, headers), [missing])


def unsigned_decoder(length: int | None) -> AwsChunkedDecoder:
    return AwsChunkedDecoder(
        signed_chunks=False,
        trailer=True,
        expected_trailer="x-amz-checksum-crc32",
        decoded_length=length,
    )


UNSIGNED_PAYLOAD = bytes(range(48)) + b"\r\n0\r\n\r\n"
UNSIGNED_BODY = unsigned_trailer_body(
    UNSIGNED_PAYLOAD, 7, f"x-amz-checksum-crc32:{_crc32_b64(UNSIGNED_PAYLOAD)}"
)


def _outcome(length: int | None, body: bytes, pieces: Iterable[bytes]) -> bytes | str:
    """The payload a decoder gives for ``pieces``, or the code of the error it raises."""
    try:
        return run(unsigned_decoder(length), pieces)
    except S3Error as error:
        return error.code


def test_unsigned_chunks_split_at_every_pair_of_boundaries() -> None:
    """Several chunks per read (one loop step per chunk) and framing cut anywhere, twice."""
    length = len(UNSIGNED_PAYLOAD)
    for first in range(len(UNSIGNED_BODY) + 1):
        for second in range(first, len(UNSIGNED_BODY) + 1):
            pieces = split_at(UNSIGNED_BODY, [first, second])
            assert run(unsigned_decoder(length), pieces) == UNSIGNED_PAYLOAD, (first, second)


def test_unsigned_chunks_in_reads_of_every_size() -> None:
    length = len(UNSIGNED_PAYLOAD)
    for size in range(1, len(UNSIGNED_BODY) + 1):
        pieces = [UNSIGNED_BODY[i : i + size] for i in range(0, len(UNSIGNED_BODY), size)]
        assert run(unsigned_decoder(length), pieces) == UNSIGNED_PAYLOAD, size


def _reframed(old: bytes, new: bytes) -> bytes:
    """UNSIGNED_BODY with its second chunk header ``old`` replaced by ``new``."""
    second = UNSIGNED_BODY.index(b"\r\n" + old + b"\r\n", 4) + 2
    return UNSIGNED_BODY[:second] + new + UNSIGNED_BODY[second + len(old) :]


@pytest.mark.parametrize(
    "body,expected",
    [
        (_reframed(b"7", b"07"), UNSIGNED_PAYLOAD),
        (_reframed(b"7", b"000000007"), UNSIGNED_PAYLOAD),
        (_reframed(b"7", b"7;ext=1"), UNSIGNED_PAYLOAD),
        (_reframed(b"7", b"7 "), UNSIGNED_PAYLOAD),
        (_reframed(b"7", b"8"), "InvalidRequest"),
        (_reframed(b"7", b"6"), "InvalidRequest"),
        (_reframed(b"7", b"x7"), "InvalidRequest"),
        (_reframed(b"7", b"1" * 17), "InvalidRequest"),
        (_reframed(b"7", b"ffffffffff"), "InvalidRequest"),
        (_reframed(b"7", b"fffffff"), "IncompleteBody"),
        (_reframed(b"7", b"0"), "IncompleteBody"),
        (UNSIGNED_BODY.replace(b"\r\n7\r\n", b"\n7\r\n", 1), "InvalidRequest"),
        (UNSIGNED_BODY.replace(b"\r\n7\r\n", b"\r\n7\n", 1), "InvalidRequest"),
        (UNSIGNED_BODY.replace(b"\r\n7\r\n", b"\r\n7\r\r", 1), "InvalidRequest"),
    ],
    ids=[
        "leading-zero",
        "nine-digits",
        "extension",
        "space",
        "size-too-big",
        "size-too-small",
        "not-hex",
        "seventeen-digits",
        "beyond-the-limit",
        "beyond-the-length",
        "early-final-chunk",
        "lf-before",
        "lf-after",
        "cr-after",
    ],
)
def test_unsigned_framing_outcome_does_not_depend_on_the_split(
    body: bytes, expected: bytes | str
) -> None:
    """Whatever the reads, a body is decoded or refused the same way (the per-chunk loop and
    the byte-wise state machine agree)."""
    length = len(UNSIGNED_PAYLOAD)
    assert _outcome(length, body, [body]) == expected
    for cut in range(len(body) + 1):
        assert _outcome(length, body, split_at(body, [cut])) == expected, cut
    assert _outcome(length, body, [body[i : i + 1] for i in range(len(body))]) == expected


#: Chunk sizes that change mid-body and back, in lower and upper case hex: the framing after a
#: chunk is sometimes the one after the previous chunk (compared as bytes) and sometimes not.
MIXED_SIZES = ["5", "5", "5", "3", "5", "5", "b", "B", "B", "5", "05", "5"]
MIXED_SIZES_PAYLOAD = b"".join(bytes([65 + i]) * int(n, 16) for i, n in enumerate(MIXED_SIZES))


def _mixed_body() -> bytes:
    chunks = b"".join(
        n.encode() + b"\r\n" + bytes([65 + i]) * int(n, 16) + b"\r\n"
        for i, n in enumerate(MIXED_SIZES)
    )
    return chunks + f"0\r\nx-amz-checksum-crc32:{_crc32_b64(MIXED_SIZES_PAYLOAD)}\r\n\r\n".encode()


def test_unsigned_chunks_of_changing_sizes_split_at_every_pair_of_boundaries() -> None:
    body = _mixed_body()
    length = len(MIXED_SIZES_PAYLOAD)
    assert run(unsigned_decoder(length), [body]) == MIXED_SIZES_PAYLOAD
    for first in range(len(body) + 1):
        for second in range(first, len(body) + 1):
            pieces = split_at(body, [first, second])
            assert run(unsigned_decoder(length), pieces) == MIXED_SIZES_PAYLOAD, (first, second)


def _reframed_later(old: bytes, new: bytes) -> bytes:
    """The changing-sizes body with its fifth chunk header (after three of the same size and a
    smaller one) ``old`` replaced by ``new``."""
    body = _mixed_body()
    at = 0
    for _ in range(5):
        at = body.index(b"\r\n", at) + 2
        at = body.index(b"\r\n", at) + 2
    assert body[at : at + len(old)] == old
    return body[:at] + new + body[at + len(old) :]


@pytest.mark.parametrize(
    "old,new,expected",
    [
        (b"5", b"5", MIXED_SIZES_PAYLOAD),
        (b"5", b"5;ext=1", MIXED_SIZES_PAYLOAD),
        (b"5", b"0005", MIXED_SIZES_PAYLOAD),
        (b"5", b"6", "InvalidRequest"),
        (b"5", b"4", "InvalidRequest"),
        (b"5", b"3", "InvalidRequest"),
        (b"5", b"x5", "InvalidRequest"),
        (b"5", b"0", "IncompleteBody"),
        (b"5", b"5\n", "InvalidRequest"),
        (b"5\r\n", b"5\n", "InvalidRequest"),
    ],
    ids=[
        "unchanged",
        "extension",
        "leading-zeros",
        "size-too-big",
        "size-too-small",
        "previous-size",
        "not-hex",
        "early-final-chunk",
        "stray-lf",
        "lf-only",
    ],
)
def test_unsigned_framing_after_a_repeated_size_is_parsed_in_full(
    old: bytes, new: bytes, expected: bytes | str
) -> None:
    """A header that differs from the previous one, even slightly, is parsed and judged as
    any other, whatever the reads."""
    body = _reframed_later(old, new)
    length = len(MIXED_SIZES_PAYLOAD)
    assert _outcome(length, body, [body]) == expected
    for cut in range(len(body) + 1):
        assert _outcome(length, body, split_at(body, [cut])) == expected, cut


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sizes=st.lists(st.sampled_from([1, 2, 7, 16, 255, 256]), min_size=0, max_size=12),
    upper=st.booleans(),
    cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=10),
)
def test_random_unsigned_bodies_in_random_splits(
    sizes: list[int], upper: bool, cuts: list[int]
) -> None:
    payload = b"".join(bytes([i % 251]) * size for i, size in enumerate(sizes))
    spelt = "{:X}" if upper else "{:x}"
    body = b"".join(
        spelt.format(size).encode() + b"\r\n" + bytes([i % 251]) * size + b"\r\n"
        for i, size in enumerate(sizes)
    ) + f"0\r\nx-amz-checksum-crc32:{_crc32_b64(payload)}\r\n\r\n".encode()
    pieces = split_at(body, sorted(c for c in cuts if c <= len(body)))
    decoder = unsigned_decoder(len(payload))
    assert run(decoder, pieces) == payload
    assert decoder.verified_trailer() == _crc32_b64(payload)


def test_unsigned_data_beyond_the_decoded_length_never_passes() -> None:
    prefix = UNSIGNED_BODY[: UNSIGNED_BODY.index(b"\r\n", 30)]  # three chunks, no final one
    for cut in range(len(prefix) + 1):
        decoder = unsigned_decoder(10)
        with pytest.raises(S3Error) as caught:
            for piece in split_at(prefix, [cut]):
                assert decoder.decoded_total + len(decoder.feed(piece)) <= 10
        assert caught.value.code == "IncompleteBody"


def test_output_is_the_input_when_a_read_holds_only_chunk_data() -> None:
    payload = b"x" * 1000
    body = unsigned_trailer_body(payload, 1000, f"x-amz-checksum-crc32:{_crc32_b64(payload)}")
    decoder = unsigned_decoder(len(payload))
    decoder.feed(body[:100])
    middle = body[100:900]
    assert decoder.feed(middle) is middle


@pytest.mark.parametrize("algorithm", ["crc32", "crc32c", "crc64nvme", "sha1", "sha256"])
def test_every_algorithm_as_a_trailer(algorithm: str) -> None:
    from s3balance.auth.checksums import by_name, encode

    payload = b"abc def ghi" * 1000
    found = by_name(algorithm)
    assert found is not None
    value = encode(found.of(payload))
    body = unsigned_trailer_body(payload, 4000, f"x-amz-checksum-{algorithm}:{value}")
    auth = Authenticator(KeyRing(), False, "us-east-1")
    headers = unsigned_headers(len(payload), algorithm)
    result = auth.authenticate("PUT", b"/b/k", headers)
    decoder = auth.body_filter(result, headers)
    assert run(decoder, split_at(body, [7, 4100])) == payload
    wrong = encode(found.of(b"other"))
    bad = unsigned_trailer_body(payload, 4000, f"x-amz-checksum-{algorithm}:{wrong}")
    with pytest.raises(S3Error) as caught:
        run(auth.body_filter(result, headers), [bad])
    assert caught.value.code == "BadDigest"
    malformed = unsigned_trailer_body(payload, 4000, f"x-amz-checksum-{algorithm}:%%%")
    with pytest.raises(S3Error) as caught:
        run(auth.body_filter(result, headers), [malformed])
    assert caught.value.code == "InvalidRequest"


def test_unsupported_trailer_algorithm() -> None:
    auth = Authenticator(KeyRing(), False, "us-east-1")
    headers = unsigned_headers(3, "md4")
    result = auth.authenticate("PUT", b"/b/k", headers)
    with pytest.raises(S3Error) as caught:
        auth.body_filter(result, headers)
    assert caught.value.code == "InvalidRequest"


# -- plain payload hash -------------------------------------------------------------------------


def test_sha256_payload_verifier() -> None:
    body = b"0123456789" * 100
    good = Sha256PayloadVerifier(hashlib.sha256(body).hexdigest())
    assert run(good, split_at(body, [1, 500, 999])) == body
    bad = Sha256PayloadVerifier(hashlib.sha256(body[:-1] + b"x").hexdigest())
    with pytest.raises(S3Error) as caught:
        run(bad, [body])
    assert caught.value.code == "XAmzContentSHA256Mismatch"


def test_unsigned_payload_needs_no_filter() -> None:
    auth = Authenticator(KeyRing(), False, "us-east-1")
    headers = {"x-amz-content-sha256": "UNSIGNED-PAYLOAD"}
    assert auth.body_filter(auth.authenticate("PUT", b"/b/k", headers), headers) is None


# -- what boto3 really sends ----------------------------------------------------------------------


class _Capture(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    captured: list[tuple[str, str, list[tuple[str, str]], bytes]] = []

    def do_PUT(self) -> None:  # noqa: N802 - http.server's naming
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = b""
            for _ in range(100_000):
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    break
                body += self.rfile.read(size)
                self.rfile.readline()
        else:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.captured.append((self.command, self.path, list(self.headers.items()), body))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.send_header("ETag", '"0"')
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def tls_capture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A TLS server on 127.0.0.1 that records requests; boto3 uses trailers only over TLS."""
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert), str(key))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Capture)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
@pytest.mark.parametrize("algorithm", [None, "SHA256", "SHA1", "CRC32C", "CRC64NVME"])
def test_boto3_put_object_bytes_verify_and_decode(tls_capture: str, algorithm: str | None) -> None:
    secret = "boto-secret"
    client = boto3.client(
        "s3",
        endpoint_url=tls_capture,
        aws_access_key_id="BOTOKEY",
        aws_secret_access_key=secret,
        region_name="us-east-1",
        verify=False,
        config=botocore.config.Config(
            s3={"addressing_style": "path"}, retries={"max_attempts": 1}
        ),
    )
    payload = bytes(range(256)) * 1200  # 300 KiB: several aws-chunked chunks
    _Capture.captured.clear()
    extra = {"ChecksumAlgorithm": algorithm} if algorithm else {}
    client.put_object(Bucket="photos", Key="a b/ü.bin", Body=io.BytesIO(payload), **extra)
    ((method, target, header_items, body),) = _Capture.captured
    headers: dict[str, list[str]] = {}
    for name, value in header_items:
        headers.setdefault(name, []).append(value)
    # botocore's own signer spells it X-Amz-Content-SHA256, awscrt's x-amz-content-sha256.
    sha256_header = {name.lower(): value for name, value in headers.items()}
    assert sha256_header["x-amz-content-sha256"] == ["STREAMING-UNSIGNED-PAYLOAD-TRAILER"]

    ring = KeyRing()
    ring.add("BOTOKEY", secret, Identity("BOTOKEY"))
    auth = Authenticator(ring, True, "us-east-1")
    result = auth.authenticate(method, target.encode("ascii"), headers)
    assert result.identity is not None
    assert auth.decoded_length(headers) == len(payload)
    decoder = auth.body_filter(result, headers)
    assert run(decoder, [body]) == payload
    trailer_name = (RequestHeaders.from_mapping(headers).get("x-amz-trailer") or "").lower()
    assert trailer_name == f"x-amz-checksum-{(algorithm or 'crc32').lower()}"
    assert trailer_name in decoder.trailers
    for cuts in ([1], [len(body) - 3], list(range(0, len(body), 997))):
        assert run(auth.body_filter(result, headers), split_at(body, cuts)) == payload
    corrupt = bytearray(body)
    corrupt[len(body) // 2] ^= 0xFF
    with pytest.raises(S3Error):
        run(auth.body_filter(result, headers), [bytes(corrupt)])
