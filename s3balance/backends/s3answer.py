"""An S3 service's answer to a control request, read whole, and what it means for the adapter:
the interface's exception for an error answer, the ETag of a write."""

from __future__ import annotations

from email.utils import parsedate_to_datetime

from twisted.web.iweb import IResponse

from s3balance.backends import s3xml
from s3balance.backends.interface import (
    BackendAccessDenied,
    BackendError,
    BackendInvalidPart,
    BackendNoSuchKey,
    BackendNoSuchUpload,
    BackendRefused,
    BackendUnavailable,
)
from s3balance.etags import quoted_etag

#: Error codes that mean the service failed, not the request, even inside a 200 answer.
SERVER_ERROR_CODES = ("InternalError", "ServiceUnavailable", "SlowDown")


class Answer:
    """A response with its body read (control calls)."""

    def __init__(self, response: IResponse, body: bytes) -> None:
        self.status = response.code
        self.headers = response.headers
        self.length = response.length
        self.body = body

    def header(self, name: str) -> str | None:
        values = self.headers.getRawHeaders(name)
        if not values:
            return None
        value = values[-1]
        return value.decode("latin-1") if isinstance(value, bytes) else str(value)


def answer_error(
    backend: str, answer: Answer, body_started: bool = False, status: int | None = None
) -> BackendError:
    """The interface's exception for an error answer (details only for logs).

    :param status: the status to judge by, when it differs from the HTTP one (a 200
        carrying an ``<Error>``, which S3 sends when a copy or completion fails late).
    """
    document = s3xml.parse_error(answer.body)
    code = document.code if document else ""
    detail = f"HTTP {answer.status} {code}: {document.message if document else ''}".strip()
    if status is None:
        status = answer.status
    if status >= 500:
        return BackendUnavailable(backend, detail, body_started)
    if status == 403:
        return BackendAccessDenied(backend, detail)
    if code == "NoSuchUpload":
        return BackendNoSuchUpload(backend, detail)
    if code in ("InvalidPart", "InvalidPartOrder", "EntityTooSmall"):
        return BackendInvalidPart(backend, detail)
    if status == 404 and code in ("NoSuchKey", ""):
        return BackendNoSuchKey(backend, detail)
    if status in (400, 411, 413, 414):
        # The backend will not take this request as sent (a key it cannot store, a size over
        # its limits): the client's to change, not an error of ours.
        return BackendRefused(backend, detail)
    return BackendError(backend, detail)


def result_etag(backend: str, answer: Answer) -> str:
    """The ETag of a copy or complete result, which may be a 200 carrying an ``<Error>``.

    :raises BackendError: the error it carries, judged as a 4xx by its code or as a 5xx
        (InternalError, SlowDown...); or a malformed document.
    """
    document = s3xml.parse_error(answer.body)
    if document is not None:
        client_error = document.code not in SERVER_ERROR_CODES
        raise answer_error(backend, answer, status=400 if client_error else 500)
    try:
        return s3xml.parse_etag_result(answer.body)
    except s3xml.MalformedResponse as e:
        raise BackendError(backend, str(e)) from e


def require_etag(backend: str, answer: Answer) -> str:
    """The answer's ETag header, quoted.

    :raises BackendError: the answer has none.
    """
    etag = answer.header("etag")
    if not etag:
        raise BackendError(backend, f"HTTP {answer.status} without ETag")
    return quoted_etag(etag)


def http_date(value: str | None) -> float:
    """Seconds since the epoch of an HTTP date; 0 when missing or unreadable."""
    if not value:
        return 0.0
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return 0.0
