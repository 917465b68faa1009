"""The query string of an S3 request, written down once: what we refuse, honour and ignore.

S3 decides an operation from its sub-resource (``?acl``, ``?uploads``...) and then the method, and
ignores query parameters it does not know.  A gateway that ignored a sub-resource it does not serve
would turn ``PUT /b/k?tagging`` into an overwrite of the object and ``DELETE /b?cors`` into a
delete of the bucket, so three explicit lists say what each parameter means here:

- :data:`UNSERVED_SUBRESOURCES`: S3 sub-resources s3balance does not serve; a request naming one
  is answered 501 NotImplemented whatever its method, before any data is touched.  (A sub-resource
  served for some methods only, such as ``?versioning`` (GET) or ``?acl`` (GET, PUT), is refused
  for the other methods by :mod:`s3balance.web.routing`.)
- :data:`HONOURED_PARAMS`: per served operation, the parameters it honours, sub-resource selector
  included (``ListObjectsV2`` honours ``list-type``, ``prefix``...).
- :data:`IGNORED_PARAMS` (and :data:`IGNORED_PREFIXES`): parameters ignored as S3 ignores them:
  authentication (checked by :mod:`s3balance.auth`, meaningless to the operation), SDK
  bookkeeping (``x-id``), the checksum parameters SDKs hoist into presigned URLs, and vendor
  extensions of other servers' clients.

Anything else is unknown.  S3 ignores unknown parameters; here, so that a sub-resource this list
has not heard of yet can never become a write or a misleading answer:

- an unknown ``x-amz-*`` parameter, ``content-type`` or ``content-md5`` is refused (501) with every
  method: presigners hoist request headers (``x-amz-meta-*``, ``x-amz-acl``,
  ``x-amz-copy-source``..., and for SigV2 botocore also ``Content-Type`` and ``Content-MD5``) into
  the query, and S3 then applies them; s3balance reads those only as headers, and would otherwise
  drop them;
- on PUT, POST and DELETE any unknown parameter is refused (501): it may be a sub-resource;
- on GET and HEAD an unknown parameter with a value (``?_=1712345``, a cache buster) is ignored as
  S3 does, and one without a value (``?newthing``, the way S3 spells a sub-resource) is refused.

Sub-resources we refuse and parameters we ignore are recognised whatever their case (refusing or
ignoring is safe either way).  A parameter is honoured only in S3's spelling (``uploadId``,
``partNumber``, ``versionId``; every other one in lower case): S3 takes ``?UPLOADID=`` for a
parameter it does not know, and the handlers read S3's spelling, so another spelling is judged
as unknown (``PUT /b/k?UPLOADID=u&PARTNUMBER=1`` is refused, never an overwrite).

To serve a sub-resource (``?tagging``, say): take it out of :data:`UNSERVED_SUBRESOURCES`, give
each operation it selects an entry in :data:`HONOURED_PARAMS` (``"GetObjectTagging":
frozenset({"tagging", "versionid"})``...), and route it by method in
:mod:`s3balance.web.routing` (a branch before the plain object or bucket operations).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from urllib.parse import unquote, unquote_to_bytes

from s3balance import errors
from s3balance.integers import parse_decimal

#: Sub-resources of S3's API that s3balance does not serve: 501 NotImplemented, any method.
UNSERVED_SUBRESOURCES = frozenset(
    {
        # bucket configuration
        "accelerate", "analytics", "cors", "encryption", "intelligent-tiering", "inventory",
        "lifecycle", "logging", "metadataconfiguration", "metadatatable", "metrics",
        "notification", "object-lock", "ownershipcontrols", "policy", "policystatus",
        "publicaccessblock", "replication", "requestpayment", "session", "website",
        # object sub-resources
        "legal-hold", "renameobject", "restore", "retention", "select",
        "select-type", "torrent",
    }
)  # fmt: skip

#: Response header overrides of GetObject/HeadObject.
RESPONSE_OVERRIDES = frozenset(
    {
        "response-cache-control", "response-content-disposition", "response-content-encoding",
        "response-content-language", "response-content-type", "response-expires",
    }
)  # fmt: skip

#: The parameters each served operation honours (lower case), its sub-resource included.
HONOURED_PARAMS: Mapping[str, frozenset[str]] = {
    "ListBuckets": frozenset({"prefix", "max-buckets", "continuation-token", "bucket-region"}),
    "ListObjects": frozenset({"prefix", "delimiter", "marker", "max-keys", "encoding-type"}),
    "ListObjectsV2": frozenset(
        {
            "list-type", "prefix", "delimiter", "max-keys", "encoding-type", "continuation-token",
            "start-after", "fetch-owner",
        }
    ),
    "ListObjectVersions": frozenset(
        {
            "versions", "prefix", "delimiter", "max-keys", "encoding-type", "key-marker",
            "version-id-marker",
        }
    ),
    "ListMultipartUploads": frozenset(
        {
            "uploads", "prefix", "delimiter", "max-uploads", "encoding-type", "key-marker",
            "upload-id-marker",
        }
    ),
    "GetBucketLocation": frozenset({"location"}),
    "GetBucketVersioning": frozenset({"versioning"}),
    "GetBucketAcl": frozenset({"acl"}),
    "PutBucketAcl": frozenset({"acl"}),
    "DeleteObjects": frozenset({"delete"}),
    "GetBucketTagging": frozenset({"tagging"}),
    "PutBucketTagging": frozenset({"tagging"}),
    "DeleteBucketTagging": frozenset({"tagging"}),
    "GetObject": RESPONSE_OVERRIDES | {"versionid", "partnumber"},
    "HeadObject": RESPONSE_OVERRIDES | {"versionid", "partnumber"},
    "DeleteObject": frozenset({"versionid"}),
    "GetObjectAcl": frozenset({"acl", "versionid"}),
    "PutObjectAcl": frozenset({"acl", "versionid"}),
    "GetObjectAttributes": frozenset({"attributes", "versionid"}),
    "GetObjectTagging": frozenset({"tagging", "versionid"}),
    "PutObjectTagging": frozenset({"tagging", "versionid"}),
    "DeleteObjectTagging": frozenset({"tagging", "versionid"}),
    "CreateMultipartUpload": frozenset({"uploads"}),
    "UploadPart": frozenset({"uploadid", "partnumber"}),
    "UploadPartCopy": frozenset({"uploadid", "partnumber"}),
    "CompleteMultipartUpload": frozenset({"uploadid"}),
    "AbortMultipartUpload": frozenset({"uploadid"}),
    "ListParts": frozenset({"uploadid", "max-parts", "part-number-marker", "encoding-type"}),
}  # fmt: skip

#: Parameters ignored as S3 ignores them (lower case).
IGNORED_PARAMS = frozenset(
    {
        # SigV4 presigned URLs (verified by s3balance.auth before routing matters)
        "x-amz-algorithm", "x-amz-credential", "x-amz-date", "x-amz-expires",
        "x-amz-signedheaders", "x-amz-signature", "x-amz-security-token",
        # the payload mode the AWS SDK for JavaScript v3 hoists into the query (also read, and
        # signed, by s3balance.auth)
        "x-amz-content-sha256",
        # SigV2 query-string authentication
        "awsaccesskeyid", "signature", "expires",
        # SDK bookkeeping: the operation name (AWS SDKs for JavaScript v3, Go v2...) and the
        # user agent some SDKs put in presigned URLs
        "x-id", "x-amz-user-agent",
        # the checksum algorithm an SDK announces (its values: see IGNORED_PREFIXES)
        "x-amz-sdk-checksum-algorithm",
        # vendor extensions: MinIO clients' listing with user metadata, Ceph's unordered listing
        "metadata", "allow-unordered",
    }
)  # fmt: skip

#: Families of parameters ignored as S3 ignores them: the checksums the AWS SDK for JavaScript v3
#: hoists into a presigned URL (``x-amz-checksum-crc32=AAAAAA==``, the checksum of the empty body
#: it had when signing; S3 does not check a checksum given in the query) and
#: ``x-amz-checksum-mode`` of a presigned GET.
IGNORED_PREFIXES = ("x-amz-checksum-",)

#: Every parameter some served operation honours.
_ALL_HONOURED = frozenset().union(*HONOURED_PARAMS.values())
#: The parameters whose S3 spelling is not all lower case (the lists hold lower-case names).
_SPELLING = {"uploadid": "uploadId", "partnumber": "partNumber", "versionid": "versionId"}
#: Request headers (besides ``x-amz-*``) that presigners move into the query.
_HOISTED_HEADERS = frozenset({"content-type", "content-md5"})
_READ_METHODS = frozenset({"GET", "HEAD"})


@dataclass(frozen=True)
class QueryVerdict:
    """What the query string of one request means to routing.

    :ivar params: the lower-case names of the honoured parameters present (the ones that select
        and shape the operation).
    :ivar refusal: why the request is refused with 501 NotImplemented, ``""`` when it is not.
    """

    params: frozenset[str]
    refusal: str = ""


def is_ignored(name: str) -> bool:
    """Whether ``name`` (any case) is a parameter S3 ignores and so do we."""
    lower = name.lower()
    return lower in IGNORED_PARAMS or lower.startswith(IGNORED_PREFIXES)


def judge_query(method: str, query: Mapping[str, str]) -> QueryVerdict:
    """Sort a request's parameters into the three lists (see the module docstring).

    :param method: the HTTP method, upper case.
    :param query: decoded parameters, names as sent, ``""`` for a bare ``?name``.
    """
    params: set[str] = set()
    for name, value in query.items():
        lower = name.lower()
        if is_ignored(lower):
            continue
        if lower in UNSERVED_SUBRESOURCES:
            return QueryVerdict(frozenset(params), f"The {name} sub-resource is not implemented.")
        if lower in _ALL_HONOURED and name == _SPELLING.get(lower, lower):
            params.add(lower)
        elif lower.startswith("x-amz-") or lower in _HOISTED_HEADERS:
            return QueryVerdict(
                frozenset(params),
                f"Query parameter {name} is a request header given in the query string; "
                "s3balance reads it only as a header.",
            )
        elif method not in _READ_METHODS or value == "":
            return QueryVerdict(
                frozenset(params),
                f"Query parameter {name} is not implemented (it may name a sub-resource).",
            )
    return QueryVerdict(frozenset(params))


def _pairs(raw_query: bytes) -> Iterator[tuple[bytes, bytes]]:
    """The raw ``(name, value)`` of each ``&``-separated parameter, ``+`` read as a space (form
    encoding); a parameter without ``=`` (``?uploads``) has an empty value."""
    for part in raw_query.split(b"&"):
        if part:
            name, _, value = part.partition(b"=")
            yield name.replace(b"+", b" "), value.replace(b"+", b" ")


def parse_query(raw_query: bytes) -> dict[str, str]:
    """The parameters of a request target's query, percent-decoded as UTF-8; the first of a
    repeated name wins.  The one reader of a query in the front: routing and every handler
    see these values, and ``request.args`` (:func:`query_args`) has the same parameters.

    :raises ValueError: a percent-escape that is not UTF-8.
    """
    query: dict[str, str] = {}
    for name, value in _pairs(raw_query):
        query.setdefault(
            unquote(name.decode("latin-1"), errors="strict"),
            unquote(value.decode("latin-1"), errors="strict"),
        )
    return query


def query_args(raw_query: bytes) -> dict[bytes, list[bytes]]:
    """The same parameters as :func:`parse_query`, in twisted.web's ``request.args`` form
    (bytes, every value of a repeated name), for resources that read ``args``."""
    args: dict[bytes, list[bytes]] = {}
    for name, value in _pairs(raw_query):
        args.setdefault(unquote_to_bytes(name), []).append(unquote_to_bytes(value))
    return args


# -- the values of listing parameters, read the same way by every listing --------------------------

#: The largest count S3 takes in a listing parameter (a signed 32-bit integer).
LARGEST_COUNT = 2**31 - 1


def url_encoded(value: str | None) -> bool:
    """Whether a listing's ``encoding-type`` asks for URL-encoded keys; absent or empty, it asks
    for none.

    :raises S3Error: InvalidArgument for any encoding but ``url``.
    """
    if value is None or value == "":
        return False
    if value.lower() != "url":
        raise errors.InvalidArgument(
            "Invalid Encoding Method specified in Request",
            ArgumentName="encoding-type",
            ArgumentValue=value,
        )
    return True


def count_param(value: str | None, name: str, default: int, cap: int | None = None) -> int:
    """A listing's count (``max-keys``, ``max-uploads``, ``max-parts``, ``part-number-marker``):
    ``default`` when absent or empty, at most ``cap`` (larger values are capped, as S3 does).

    :raises S3Error: InvalidArgument for a negative number, or anything but a number of 0 to
        :data:`LARGEST_COUNT`.
    """
    if value is None or value == "":
        return default
    if value.startswith("-") and value[1:].isdigit():
        raise errors.InvalidArgument(
            f"Argument {name} must be an integer between 0 and {LARGEST_COUNT}",
            ArgumentName=name,
            ArgumentValue=value,
        )
    try:
        number = parse_decimal(value, maximum=LARGEST_COUNT)
    except ValueError:
        raise errors.InvalidArgument(
            f"Provided {name} not an integer or within integer range",
            ArgumentName=name,
            ArgumentValue=value,
        ) from None
    return number if cap is None else min(number, cap)
