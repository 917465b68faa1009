"""Which S3 operation a request is, decided from the query string first, then the method.

Routing on the method alone is how other gateways turned ``PUT ?tagging`` into an overwrite of the
object and ``DELETE /bucket?cors`` into a wipe of the bucket: here every query parameter is judged
by :mod:`s3balance.web.queryparams` (sub-resources we do not serve, parameters we honour,
parameters we ignore as S3 does) before the method is looked at.  A sub-resource s3balance does
not serve routes to ``NotImplemented``, and so does a combination of parameters no served
operation takes, so nothing is ever guessed.

Addressing: path style ``/{bucket}/{key}``, and virtual-host style ``Host: {bucket}.{domain}``
when a domain is configured.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import unquote_to_bytes

from twisted.web.http_headers import Headers

from s3balance.web.queryparams import HONOURED_PARAMS, judge_query, parse_query

_HONOURED = HONOURED_PARAMS
_LIST_V1_PARAMS = HONOURED_PARAMS["ListObjects"]
_LIST_V2_PARAMS = HONOURED_PARAMS["ListObjectsV2"]
_LIST_VERSIONS_PARAMS = HONOURED_PARAMS["ListObjectVersions"]
_LIST_UPLOADS_PARAMS = HONOURED_PARAMS["ListMultipartUploads"]

#: Answered 501 NotImplemented without touching any data.
NOT_IMPLEMENTED = "NotImplemented"
#: A method S3 does not define for the resource: 405.
METHOD_NOT_ALLOWED = "MethodNotAllowed"


@dataclass(frozen=True)
class Route:
    """A classified request.

    :ivar operation: S3's operation name (``GetObject``...), or :data:`NOT_IMPLEMENTED` /
        :data:`METHOD_NOT_ALLOWED`.
    :ivar bucket: the virtual bucket, ``None`` for service-level requests.
    :ivar key: the object key (decoded UTF-8), ``None`` for bucket-level requests.
    :ivar query: decoded query parameters (first value of each; a bare ``?acl`` maps to ``""``).
    :ivar path: the decoded path, for ``Resource`` in error documents.
    :ivar refusal: for :data:`NOT_IMPLEMENTED` because of the query string, why (the message of
        the 501).
    """

    operation: str
    bucket: str | None
    key: str | None
    query: dict[str, str] = field(default_factory=dict)
    path: str = "/"
    refusal: str = ""


class Router:
    """Classifies requests; one instance per daemon, configured with the addressing style.

    :param virtual_host_domain: the base domain of virtual-host addressing
        (``<bucket>.<domain>``), or ``None`` for path style only.
    """

    def __init__(self, virtual_host_domain: str | None = None) -> None:
        domain = (virtual_host_domain or "").strip(".").lower()
        self._suffix = "." + domain if domain else None

    def host_bucket(self, headers: Headers) -> str | None:
        """The bucket named by the ``Host`` header in virtual-host style, if any."""
        if self._suffix is None:
            return None
        raw = headers.getRawHeaders(b"host", [b""])[0].decode("latin-1").lower()
        if raw.startswith("["):
            return None
        host = raw.rsplit(":", 1)[0] if ":" in raw else raw
        if host.endswith(self._suffix) and len(host) > len(self._suffix):
            return host[: -len(self._suffix)]
        return None

    def split_target(
        self, raw_target: bytes, headers: Headers
    ) -> tuple[str | None, str | None, dict[str, str], str]:
        """``(bucket, key, query, decoded path)`` of a raw request target.

        :raises ValueError: the path is not valid percent-encoded UTF-8.
        """
        raw_path, _, raw_query = raw_target.partition(b"?")
        path = unquote_to_bytes(raw_path).decode("utf-8")
        query = parse_query(raw_query)
        vhost_bucket = self.host_bucket(headers)
        if vhost_bucket is not None:
            key = path[1:] if path.startswith("/") else path
            return vhost_bucket, (key or None), query, path
        rest = path[1:] if path.startswith("/") else path
        if not rest:
            return None, None, query, path
        bucket, slash, key = rest.partition("/")
        return bucket, (key if slash and key else None), query, path

    def route(self, method: bytes, raw_target: bytes, headers: Headers) -> Route:
        """Classify a request.

        :raises ValueError: the path is not valid percent-encoded UTF-8.
        """
        bucket, key, query, path = self.split_target(raw_target, headers)
        verb = method.decode("latin-1").upper()
        verdict = judge_query(verb, query)
        if verdict.refusal:
            return Route(NOT_IMPLEMENTED, bucket, key, query, path, verdict.refusal)
        lowered = set(verdict.params)
        has_copy_source = headers.hasHeader(b"x-amz-copy-source")
        if bucket is None:
            operation = _service_operation(verb, lowered)
        elif key is None:
            operation = _bucket_operation(verb, lowered, query)
        else:
            operation = _object_operation(verb, lowered, has_copy_source)
        refusal = ""
        if operation == NOT_IMPLEMENTED:
            named = ", ".join(sorted(lowered)) or "no query parameters"
            refusal = f"{verb} with {named} is not implemented."
        return Route(operation, bucket, key, query, path, refusal)

    def should_stream(self, method: bytes, raw_target: bytes, headers: Headers) -> bool:
        """:func:`streams` of this request's route."""
        try:
            route = self.route(method, raw_target, headers)
        except ValueError:
            return False
        return streams(route, method, headers)


#: The operations whose body goes to a backend: streamed as it arrives, never buffered.
STREAMED_OPERATIONS = frozenset({"PutObject", "UploadPart"})


def streams(route: Route, method: bytes, headers: Headers) -> bool:
    """Whether the streaming layer hands the body over as it arrives (PutObject, UploadPart)
    instead of buffering it: true for a PUT of a key carrying a body."""
    return (
        method.upper() == b"PUT"
        and route.operation in STREAMED_OPERATIONS
        and _has_body(headers)
    )


def _has_body(headers: Headers) -> bool:
    encodings = b",".join(headers.getRawHeaders(b"transfer-encoding", [])).lower()
    if b"chunked" in encodings:
        return True
    lengths = headers.getRawHeaders(b"content-length")
    if not lengths:
        return False
    try:
        return int(lengths[0]) > 0
    except ValueError:
        return False


def _only(params: set[str], allowed: frozenset[str]) -> bool:
    return params <= allowed


def _service_operation(verb: str, params: set[str]) -> str:
    if verb == "GET":
        return "ListBuckets" if _only(params, _HONOURED["ListBuckets"]) else NOT_IMPLEMENTED
    return METHOD_NOT_ALLOWED


def _bucket_operation(verb: str, params: set[str], query: dict[str, str]) -> str:
    if "tagging" in params:
        if params != _HONOURED["GetBucketTagging"]:
            return NOT_IMPLEMENTED
        return {
            "GET": "GetBucketTagging",
            "PUT": "PutBucketTagging",
            "DELETE": "DeleteBucketTagging",
        }.get(verb, NOT_IMPLEMENTED)
    if "acl" in params:
        if params != {"acl"}:
            return NOT_IMPLEMENTED
        return {"GET": "GetBucketAcl", "PUT": "PutBucketAcl"}.get(verb, NOT_IMPLEMENTED)
    if "location" in params:
        return "GetBucketLocation" if verb == "GET" and params == {"location"} else NOT_IMPLEMENTED
    if "versioning" in params:
        return "GetBucketVersioning" if verb == "GET" and params == {"versioning"} else (
            NOT_IMPLEMENTED
        )
    if "versions" in params:
        if verb == "GET" and _only(params, _LIST_VERSIONS_PARAMS):
            return "ListObjectVersions"
        return NOT_IMPLEMENTED
    if "uploads" in params:
        if verb == "GET" and _only(params, _LIST_UPLOADS_PARAMS):
            return "ListMultipartUploads"
        return NOT_IMPLEMENTED
    if "delete" in params:
        return "DeleteObjects" if verb == "POST" and params == {"delete"} else NOT_IMPLEMENTED
    if verb == "GET":
        if "list-type" in params:
            if query.get("list-type", query.get("List-Type")) == "2" and _only(
                params, _LIST_V2_PARAMS
            ):
                return "ListObjectsV2"
            return NOT_IMPLEMENTED
        return "ListObjects" if _only(params, _LIST_V1_PARAMS) else NOT_IMPLEMENTED
    if params:
        return NOT_IMPLEMENTED
    if verb == "HEAD":
        return "HeadBucket"
    if verb == "PUT":
        return "CreateBucket"
    if verb == "DELETE":
        return "DeleteBucket"
    if verb == "POST":
        # A browser form upload (POST object): not served.
        return NOT_IMPLEMENTED
    return METHOD_NOT_ALLOWED


def _object_operation(verb: str, params: set[str], has_copy_source: bool) -> str:
    if "tagging" in params:
        if not params <= _HONOURED["GetObjectTagging"]:
            return NOT_IMPLEMENTED
        return {
            "GET": "GetObjectTagging",
            "PUT": "PutObjectTagging",
            "DELETE": "DeleteObjectTagging",
        }.get(verb, NOT_IMPLEMENTED)
    if "acl" in params:
        if not params <= _HONOURED["GetObjectAcl"]:
            return NOT_IMPLEMENTED
        return {"GET": "GetObjectAcl", "PUT": "PutObjectAcl"}.get(verb, NOT_IMPLEMENTED)
    if "attributes" in params:
        if verb == "GET" and params <= _HONOURED["GetObjectAttributes"]:
            return "GetObjectAttributes"
        return NOT_IMPLEMENTED
    if "uploads" in params:
        return "CreateMultipartUpload" if verb == "POST" and params == {"uploads"} else (
            NOT_IMPLEMENTED
        )
    if "uploadid" in params:
        if verb == "PUT" and params == {"uploadid", "partnumber"}:
            return "UploadPartCopy" if has_copy_source else "UploadPart"
        if verb == "POST" and params == {"uploadid"}:
            return "CompleteMultipartUpload"
        if verb == "DELETE" and params == {"uploadid"}:
            return "AbortMultipartUpload"
        if verb == "GET" and params <= _HONOURED["ListParts"]:
            return "ListParts"
        return NOT_IMPLEMENTED
    if verb in ("GET", "HEAD"):
        if params <= _HONOURED["GetObject"]:
            return "GetObject" if verb == "GET" else "HeadObject"
        return NOT_IMPLEMENTED
    if verb == "PUT":
        if params:
            return NOT_IMPLEMENTED
        return "CopyObject" if has_copy_source else "PutObject"
    if verb == "DELETE":
        return "DeleteObject" if params <= _HONOURED["DeleteObject"] else NOT_IMPLEMENTED
    if verb == "POST":
        return NOT_IMPLEMENTED
    return METHOD_NOT_ALLOWED
