"""S3 errors as clients expect them: each code a subclass of :class:`S3Error` carrying S3's code,
status and message.

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


class CatalogError(S3Error):
    """An S3 error of a fixed code and status: each is its own class, so that a caller can catch
    exactly the one it handles (``except errors.NoSuchKey``) and a test can assert the type.

    :param message: replaces the code's usual message.
    :param extra: further elements of the ``<Error>`` document (``Key="..."``).
    """

    code: str = "InternalError"
    status: int = 500
    default_message: str = "We encountered an internal error. Please try again."

    def __init__(self, message: str | None = None, **extra: str) -> None:
        cls = type(self)
        super().__init__(cls.code, cls.status, message or cls.default_message, extra)


# The catalogue: the codes s3balance answers with, each with S3's status.


class AccessDenied(CatalogError):
    code = "AccessDenied"
    status = 403
    default_message = "Access Denied"


class AuthorizationHeaderMalformed(CatalogError):
    code = "AuthorizationHeaderMalformed"
    status = 400
    default_message = "The authorization header is malformed."


class AuthorizationQueryParametersError(CatalogError):
    code = "AuthorizationQueryParametersError"
    status = 400
    default_message = "Error parsing the X-Amz-Credential parameter."


class BadDigest(CatalogError):
    code = "BadDigest"
    status = 400
    default_message = "The Content-MD5 or checksum you specified did not match what we received."


class BucketAlreadyOwnedByYou(CatalogError):
    code = "BucketAlreadyOwnedByYou"
    status = 409
    default_message = (
        "Your previous request to create the named bucket succeeded and you already own it."
    )


class BucketNotEmpty(CatalogError):
    code = "BucketNotEmpty"
    status = 409
    default_message = "The bucket you tried to delete is not empty."


class EntityTooLarge(CatalogError):
    code = "EntityTooLarge"
    status = 400
    default_message = "Your proposed upload exceeds the maximum allowed object size."


class EntityTooSmall(CatalogError):
    code = "EntityTooSmall"
    status = 400
    default_message = "Your proposed upload is smaller than the minimum allowed object size."


class IncompleteBody(CatalogError):
    code = "IncompleteBody"
    status = 400
    default_message = "You did not provide the number of bytes specified by the Content-Length."


class InternalError(CatalogError):
    code = "InternalError"
    status = 500
    default_message = "We encountered an internal error. Please try again."


class InvalidAccessKeyId(CatalogError):
    code = "InvalidAccessKeyId"
    status = 403
    default_message = "The AWS Access Key Id you provided does not exist in our records."


class InvalidArgument(CatalogError):
    code = "InvalidArgument"
    status = 400
    default_message = "Invalid Argument"


class InvalidBucketName(CatalogError):
    code = "InvalidBucketName"
    status = 400
    default_message = "The specified bucket is not valid."


class InvalidDigest(CatalogError):
    code = "InvalidDigest"
    status = 400
    default_message = "The Content-MD5 you specified is not valid."


class InvalidPart(CatalogError):
    code = "InvalidPart"
    status = 400
    default_message = (
        "One or more of the specified parts could not be found. The part may not have been "
        "uploaded, or the specified entity tag may not match the part's entity tag."
    )


class InvalidPartOrder(CatalogError):
    code = "InvalidPartOrder"
    status = 400
    default_message = "The list of parts was not in ascending order."


class InvalidRange(CatalogError):
    code = "InvalidRange"
    status = 416
    default_message = "The requested range is not satisfiable"


class InvalidPartNumber(CatalogError):
    code = "InvalidPartNumber"
    status = 416
    default_message = "The requested partnumber is not satisfiable"


class InvalidRequest(CatalogError):
    code = "InvalidRequest"
    status = 400
    default_message = "Invalid Request"


class KeyTooLongError(CatalogError):
    code = "KeyTooLongError"
    status = 400
    default_message = "Your key is too long"


class MalformedXML(CatalogError):
    code = "MalformedXML"
    status = 400
    default_message = (
        "The XML you provided was not well-formed or did not validate against our published schema"
    )


class MaxMessageLengthExceeded(CatalogError):
    code = "MaxMessageLengthExceeded"
    status = 400
    default_message = "Your request was too big."


class MethodNotAllowed(CatalogError):
    code = "MethodNotAllowed"
    status = 405
    default_message = "The specified method is not allowed against this resource."


class MissingContentLength(CatalogError):
    code = "MissingContentLength"
    status = 411
    default_message = "You must provide the Content-Length HTTP header."


class NoSuchBucket(CatalogError):
    code = "NoSuchBucket"
    status = 404
    default_message = "The specified bucket does not exist"


class NoSuchKey(CatalogError):
    code = "NoSuchKey"
    status = 404
    default_message = "The specified key does not exist."


class NoSuchUpload(CatalogError):
    code = "NoSuchUpload"
    status = 404
    default_message = (
        "The specified upload does not exist. The upload ID may be invalid, or the upload may "
        "have been aborted or completed."
    )


class NotImplementedError_(CatalogError):
    code = "NotImplemented"
    status = 501
    default_message = (
        "A header or query you provided implies functionality that is not implemented."
    )


class PreconditionFailed(CatalogError):
    code = "PreconditionFailed"
    status = 412
    default_message = "At least one of the preconditions you specified did not hold."


class RequestTimeout(CatalogError):
    code = "RequestTimeout"
    status = 400
    default_message = (
        "Your socket connection to the server was not read from or written to within the "
        "timeout period."
    )


class RequestTimeTooSkewed(CatalogError):
    code = "RequestTimeTooSkewed"
    status = 403
    default_message = "The difference between the request time and the server's time is too large."


class ServiceUnavailable(CatalogError):
    code = "ServiceUnavailable"
    status = 503
    default_message = "Reduce your request rate."


class SignatureDoesNotMatch(CatalogError):
    code = "SignatureDoesNotMatch"
    status = 403
    default_message = (
        "The request signature we calculated does not match the signature you provided. Check "
        "your key and signing method."
    )


class SlowDown(CatalogError):
    code = "SlowDown"
    status = 503
    default_message = "Please reduce your request rate."


class XAmzContentSHA256Mismatch(CatalogError):
    code = "XAmzContentSHA256Mismatch"
    status = 400
    default_message = "The provided 'x-amz-content-sha256' header does not match what was computed."


class InsufficientStorage(ServiceUnavailable):
    code = "ServiceUnavailable"
    status = 503
    default_message = (
        "No backend bucket can take this object now: all are full, disabled or unhealthy."
    )
