"""Signed small-object load: SigV4 ``Authorization`` headers computed before the timed run.

wrk cannot compute HMACs at the rate it sends, so each request it sends is signed up front,
one line per request in a file per wrk thread (see the signed mode of ``clients.WRK_SCRIPT``).
The signatures come from s3balance's backend signer, which ``test/test_s3signing.py`` holds
byte for byte equal to botocore's: what the daemon verifies is what an SDK sends.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

from s3balance.backends.s3signing import Signer

#: The key pair the signing path's daemon accepts.
ACCESS_KEY = "bench-client"
SECRET_KEY = "bench-client-secret"
REGION = "us-east-1"

#: ``(method, path, body) -> headers`` that sign one request.
RequestSigner = Callable[[str, str, bytes], dict[str, str]]


def request_signer(base_url: str) -> RequestSigner:
    """Signs requests to ``base_url`` as the bench's client, the payload hash included."""
    signer = Signer(ACCESS_KEY, SECRET_KEY, REGION)
    host = urlsplit(base_url).netloc

    def sign(method: str, path: str, body: bytes) -> dict[str, str]:
        headers = signer.sign(
            method, f"{base_url}{path}", {"Host": host}, body or None, streamed=False
        )
        return {name: value for name, value in headers.items() if name != "Host"}

    return sign


def write_signed_requests(
    file_prefix: str,
    base_url: str,
    method: str,
    prefix: str,
    threads: int,
    keys_per_thread: int,
    object_size: int,
) -> str:
    """One file per wrk thread, ``<file_prefix><thread>.tsv``, with the same keys the unsigned
    load uses (``<prefix><thread>-<n>``); signatures hold for 15 minutes of clock skew.

    :returns: ``file_prefix``, for ``clients.run_wrk(signed_prefix=...)``.
    """
    sign = request_signer(base_url)
    body = b"s" * object_size if method == "PUT" else b""
    for tid in range(threads):
        with open(f"{file_prefix}{tid}.tsv", "w") as lines:
            for n in range(keys_per_thread):
                path = f"{prefix}{tid}-{n}"
                headers = sign(method, path, body)
                fields = (
                    path,
                    headers["X-Amz-Date"],
                    headers["X-Amz-Content-SHA256"],
                    headers["Authorization"],
                )
                lines.write("\t".join(fields) + "\n")
    return file_prefix
