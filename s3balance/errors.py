"""S3 errors as clients expect them: one exception type carrying S3's code, status and message.

Everything below the HTTP front raises :class:`S3Error` (or lets a backend error be mapped to one by
:func:`s3balance.backends.interface.backend_error_to_s3`); the front renders it as S3's XML error
body.  Keeping the catalogue in one place keeps codes and statuses consistent across handlers.
"""

from __future__ import annotations

import re
from xml.sax.saxutils import escape as _escape_markup

#: What XML 1.0 cannot carry: control characters other than tab/newline/return, lone surrogates
#: (a header byte that is not UTF-8 reaches us as one), U+FFFE and U+FFFF.
_NOT_XML_CHARACTER = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def escape(text: str) -> str:
    """``text`` as XML character data: markup escaped, and every character XML 1.0 cannot carry
    replaced by U+FFFD, so that an error about a request with a raw ``0xE9`` or a control byte
    in a header still renders (the exact bytes are in the ``...Bytes`` elements)."""
    return _escape_markup(_NOT_XML_CHARACTER.sub("\ufffd", text))


class S3Error(Exception):
    """An error a client sees as S3's ``<Error>`` document.

    :param code: S3's error code, e.g. ``NoSuchKey``.
    :param status: the HTTP status that goes with it.
    :param message: a human-readable explanation.
    :param extra: further elements S3 includes for this code (``Key``, ``BucketName``,
        ``StringToSign``...), rendered in order after ``Message``.
    """

    def __init__(
        self, code: str, status: int, message: str, extra: dict[str, str] | None = None
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.status = status
        self.message = message
        self.extra: dict[str, str] = dict(extra or {})

    def to_xml(self, resource: str, request_id: str) -> bytes:
        """Render S3's XML error body."""
        parts = [
            '<?xml version="1.0" encoding="UTF-8"?>\n<Error>',
            f"<Code>{escape(self.code)}</Code>",
            f"<Message>{escape(self.message)}</Message>",
        ]
        for name, value in self.extra.items():
            parts.append(f"<{name}>{escape(value)}</{name}>")
        parts.append(f"<Resource>{escape(resource)}</Resource>")
        parts.append(f"<RequestId>{escape(request_id)}</RequestId>")
        parts.append("</Error>")
        return "".join(parts).encode("utf-8")


def _factory(code: str, status: int, default_message: str):  # type: ignore[no-untyped-def]
    def make(message: str | None = None, **extra: str) -> S3Error:
        return S3Error(code, status, message or default_message, extra)

    make.__name__ = code
    make.__doc__ = f"{status} {code}: {default_message}"
    return make


# The catalogue: the codes s3balance answers with, each with S3's status.
AccessDenied = _factory("AccessDenied", 403, "Access Denied")
AuthorizationHeaderMalformed = _factory(
    "AuthorizationHeaderMalformed", 400, "The authorization header is malformed."
)
AuthorizationQueryParametersError = _factory(
    "AuthorizationQueryParametersError", 400, "Error parsing the X-Amz-Credential parameter."
)
BadDigest = _factory(
    "BadDigest", 400, "The Content-MD5 or checksum you specified did not match what we received."
)
BucketAlreadyExists = _factory(
    "BucketAlreadyExists", 409, "The requested bucket name is not available."
)
BucketAlreadyOwnedByYou = _factory(
    "BucketAlreadyOwnedByYou",
    409,
    "Your previous request to create the named bucket succeeded and you already own it.",
)
BucketNotEmpty = _factory(
    "BucketNotEmpty", 409, "The bucket you tried to delete is not empty."
)
EntityTooLarge = _factory(
    "EntityTooLarge", 400, "Your proposed upload exceeds the maximum allowed object size."
)
EntityTooSmall = _factory(
    "EntityTooSmall", 400, "Your proposed upload is smaller than the minimum allowed object size."
)
IncompleteBody = _factory(
    "IncompleteBody",
    400,
    "You did not provide the number of bytes specified by the Content-Length.",
)
InternalError = _factory(
    "InternalError", 500, "We encountered an internal error. Please try again."
)
InvalidAccessKeyId = _factory(
    "InvalidAccessKeyId", 403, "The AWS Access Key Id you provided does not exist in our records."
)
InvalidArgument = _factory("InvalidArgument", 400, "Invalid Argument")
InvalidBucketName = _factory("InvalidBucketName", 400, "The specified bucket is not valid.")
InvalidDigest = _factory("InvalidDigest", 400, "The Content-MD5 you specified is not valid.")
InvalidPart = _factory(
    "InvalidPart",
    400,
    "One or more of the specified parts could not be found. The part may not have been uploaded, "
    "or the specified entity tag may not match the part's entity tag.",
)
InvalidPartOrder = _factory(
    "InvalidPartOrder", 400, "The list of parts was not in ascending order."
)
InvalidRange = _factory("InvalidRange", 416, "The requested range is not satisfiable")
InvalidPartNumber = _factory(
    "InvalidPartNumber", 416, "The requested partnumber is not satisfiable"
)
InvalidRequest = _factory("InvalidRequest", 400, "Invalid Request")
KeyTooLongError = _factory("KeyTooLongError", 400, "Your key is too long")
MalformedXML = _factory(
    "MalformedXML",
    400,
    "The XML you provided was not well-formed or did not validate against our published schema",
)
MaxMessageLengthExceeded = _factory(
    "MaxMessageLengthExceeded", 400, "Your request was too big."
)
MethodNotAllowed = _factory(
    "MethodNotAllowed", 405, "The specified method is not allowed against this resource."
)
MissingContentLength = _factory(
    "MissingContentLength", 411, "You must provide the Content-Length HTTP header."
)
NoSuchBucket = _factory("NoSuchBucket", 404, "The specified bucket does not exist")
NoSuchKey = _factory("NoSuchKey", 404, "The specified key does not exist.")
NoSuchUpload = _factory(
    "NoSuchUpload",
    404,
    "The specified upload does not exist. The upload ID may be invalid, or the upload may have "
    "been aborted or completed.",
)
NotImplementedError_ = _factory(
    "NotImplemented",
    501,
    "A header or query you provided implies functionality that is not implemented.",
)
NotModified = _factory("NotModified", 304, "Not Modified")
PreconditionFailed = _factory(
    "PreconditionFailed", 412, "At least one of the preconditions you specified did not hold."
)
RequestTimeout = _factory(
    "RequestTimeout",
    400,
    "Your socket connection to the server was not read from or written to within the timeout "
    "period.",
)
RequestTimeTooSkewed = _factory(
    "RequestTimeTooSkewed",
    403,
    "The difference between the request time and the server's time is too large.",
)
ServiceUnavailable = _factory(
    "ServiceUnavailable", 503, "Reduce your request rate."
)
SignatureDoesNotMatch = _factory(
    "SignatureDoesNotMatch",
    403,
    "The request signature we calculated does not match the signature you provided. "
    "Check your key and signing method.",
)
SlowDown = _factory("SlowDown", 503, "Please reduce your request rate.")
XAmzContentSHA256Mismatch = _factory(
    "XAmzContentSHA256Mismatch",
    400,
    "The provided 'x-amz-content-sha256' header does not match what was computed.",
)
InsufficientStorage = _factory(
    "ServiceUnavailable",
    503,
    "No backend bucket can take this object now: all are full, disabled or unhealthy.",
)
