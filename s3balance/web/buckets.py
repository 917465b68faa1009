"""Service- and bucket-level operations: virtual buckets and their listings.

Only virtual buckets exist for clients: real buckets are never listed nor addressable.
Listings come from the metadata store, never from a backend.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

from s3balance import acl, errors
from s3balance.backends.interface import BackendError
from s3balance.db.records import ObjectPage
from s3balance.multipart import discard_upload
from s3balance.web import xml
from s3balance.web.answer import Answer, RequestContext
from s3balance.web.queryparams import count_param, url_encoded

#: S3's page size limit for listings.
MAX_KEYS = 1000
#: The region where S3 answers CreateBucket of a bucket one owns already with 200.
LEGACY_REGION = "us-east-1"
#: DeleteBucket aborts at most this many pages of uploads in progress before giving up.
MAX_ABORT_PAGES = 100


#: S3's largest ``max-buckets``.
MAX_BUCKETS = 10000


async def handle_ListBuckets(ctx: RequestContext) -> Answer:
    """Every bucket the key may see, filtered and paged as S3 does (``prefix``,
    ``bucket-region``, ``max-buckets``, ``continuation-token``: the last name of the page before).
    """
    max_buckets = _max_buckets(ctx.query("max-buckets"))
    prefix = ctx.query("prefix") or ""
    after = ctx.query("continuation-token") or ""
    region = ctx.query("bucket-region")
    buckets = await ctx.gateway.list_buckets()
    if ctx.identity is not None:
        buckets = [b for b in buckets if ctx.identity.may_access(b.name, False)]
    buckets = sorted(
        (b for b in buckets if b.name.startswith(prefix) and b.name > after),
        key=lambda b: b.name,
    )
    if region is not None and region != ctx.region:
        buckets = []  # every bucket here is in the daemon's one region
    token = None
    if max_buckets is not None and len(buckets) > max_buckets:
        buckets = buckets[:max_buckets]
        token = buckets[-1].name
    return Answer.xml(
        xml.list_buckets(
            buckets, ctx.owner, continuation_token=token, prefix=ctx.query("prefix")
        )
    )


def _max_buckets(value: str | None) -> int | None:
    """``max-buckets``: 1..10000, or ``None`` when absent.

    :raises S3Error: InvalidArgument.
    """
    if value is None:
        return None
    text = value.strip()
    if not (text.isdigit() and len(text) <= 5 and 1 <= int(text) <= MAX_BUCKETS):
        raise errors.InvalidArgument(
            f"max-buckets must be an integer between 1 and {MAX_BUCKETS}",
            ArgumentName="max-buckets",
            ArgumentValue=value,
        )
    return int(text)


async def handle_HeadBucket(ctx: RequestContext) -> Answer:
    await ctx.gateway.get_bucket(ctx.bucket)
    return Answer(200, [("x-amz-bucket-region", ctx.region)])


async def handle_GetBucketLocation(ctx: RequestContext) -> Answer:
    await ctx.gateway.get_bucket(ctx.bucket)
    return Answer.xml(xml.location_constraint(ctx.region))


async def handle_GetBucketVersioning(ctx: RequestContext) -> Answer:
    await ctx.gateway.get_bucket(ctx.bucket)
    return Answer.xml(xml.versioning_configuration())


def _header_acl(ctx: RequestContext, for_bucket: bool) -> str:
    return acl.from_headers(
        ctx.header("x-amz-acl"), bool(ctx.headers_with_prefix("x-amz-grant-")), for_bucket
    )


async def handle_CreateBucket(ctx: RequestContext) -> Answer:
    bucket_acl = _header_acl(ctx, for_bucket=True)
    lock = ctx.header("x-amz-bucket-object-lock-enabled")
    if lock is not None and lock.strip().lower() == "true":
        raise errors.NotImplementedError_("Object lock is not supported.")
    constraint = xml.parse_location_constraint(ctx.read_body())
    if constraint is not None and constraint != ctx.region and not (
        constraint == "US" and ctx.region == "us-east-1"
    ):
        raise errors.S3Error(
            "IllegalLocationConstraintException",
            400,
            f"The {constraint} location constraint is incompatible with the region of this "
            f"server ({ctx.region}).",
        )
    try:
        await ctx.gateway.create_bucket(ctx.bucket, acl=bucket_acl)
    except errors.S3Error as error:
        # S3 answers a repeated CreateBucket of one's own bucket with 200 in us-east-1 (its
        # legacy region, where it changes nothing) and 409 BucketAlreadyOwnedByYou elsewhere.
        if error.code != "BucketAlreadyOwnedByYou" or ctx.region != LEGACY_REGION:
            raise
    return Answer(200, [("Location", "/" + ctx.bucket)])


async def handle_DeleteBucket(ctx: RequestContext) -> Answer:
    """Delete an empty bucket.  Uploads in progress do not keep a bucket alive on S3: when they
    are all that is left, they are aborted (on their backends too) and the bucket goes."""
    gateway = ctx.gateway
    try:
        await gateway.delete_bucket(ctx.bucket)
    except errors.S3Error as error:
        if error.code != "BucketNotEmpty":
            raise
        page = await gateway.list_objects(ctx.bucket, max_keys=1)
        if page.objects or page.common_prefixes:
            raise
        await abort_uploads_of(ctx, ctx.bucket)
        await gateway.delete_bucket(ctx.bucket)
    return Answer(204)


async def abort_uploads_of(ctx: RequestContext, bucket: str) -> None:
    """Abort every multipart upload of ``bucket`` on its backend and in the store.

    :raises S3Error: ServiceUnavailable when a backend cannot abort one (its row stays, so the
        bucket stays too and a retry finishes the job).
    """
    gateway = ctx.gateway
    for _ in range(MAX_ABORT_PAGES):
        page = await gateway.store.list_uploads(bucket, max_uploads=MAX_KEYS)
        if not page.uploads:
            return
        for upload in page.uploads:
            try:
                released = await discard_upload(gateway.store, gateway.pool, upload)
            except (KeyError, BackendError) as error:
                raise errors.ServiceUnavailable(
                    "An upload in progress in this bucket could not be aborted; retry later."
                ) from error
            for name, size in (released or {}).items():
                gateway.usage.adjust(name, -size, 0)


async def handle_GetBucketAcl(ctx: RequestContext) -> Answer:
    record = await ctx.gateway.get_bucket(ctx.bucket)
    return Answer.xml(acl.policy_document(ctx.owner.id, ctx.owner.display_name, record.acl))


async def handle_PutBucketAcl(ctx: RequestContext) -> Answer:
    await ctx.gateway.get_bucket(ctx.bucket)
    wanted = requested_acl_change(ctx, for_bucket=True)
    if not await ctx.gateway.store.set_bucket_acl(ctx.bucket, wanted):
        raise errors.NoSuchBucket(BucketName=ctx.bucket)
    return Answer(200)


def requested_acl_change(ctx: RequestContext, for_bucket: bool) -> str:
    """The canned ACL a PutBucketAcl/PutObjectAcl asks for, as an ``x-amz-acl`` header or as an
    ``<AccessControlPolicy>`` document (which must amount to a served canned ACL).

    :raises S3Error: NotImplemented for other ACLs and grants, InvalidRequest when none is
        given or both are, MalformedXML, MaxMessageLengthExceeded.
    """
    body = ctx.read_body()
    if len(body) > acl.MAX_ACL_BODY:
        raise errors.MaxMessageLengthExceeded()
    grants = bool(ctx.headers_with_prefix("x-amz-grant-"))
    header = ctx.header("x-amz-acl")
    if header is not None or grants:
        if body.strip():
            raise errors.S3Error(
                "UnexpectedContent", 400, "This request does not support content"
            )
        return acl.from_headers(header, grants, for_bucket)
    if not body.strip():
        raise errors.InvalidRequest("An ACL must be given in the x-amz-acl header or the body.")
    return acl.from_policy(xml.parse_document(body), ctx.owner.id)


def parse_max_keys(value: str | None) -> int:
    """S3's max-keys: 0..1000, larger values capped, anything else refused.

    :raises S3Error: InvalidArgument.
    """
    return count_param(value, "max-keys", MAX_KEYS, cap=MAX_KEYS)


def encode_token(last_key: str) -> str:
    """The opaque continuation token: where the next page starts (exclusive)."""
    return base64.urlsafe_b64encode(last_key.encode("utf-8")).decode("ascii")


def decode_token(token: str) -> str:
    """:raises S3Error: InvalidArgument for a token this server did not issue."""
    try:
        raw = base64.b64decode(token.encode("ascii"), altchars=b"-_", validate=True)
        return raw.decode("utf-8")
    except (binascii.Error, ValueError, UnicodeError):
        raise errors.InvalidArgument(
            "The continuation token provided is incorrect",
            ArgumentName="continuation-token",
            ArgumentValue=token,
        ) from None


@dataclass(frozen=True)
class _ListingParams:
    """The parameters every object listing reads the same way."""

    prefix: str
    delimiter: str
    max_keys: int
    url_encoded: bool


def _listing_params(ctx: RequestContext) -> _ListingParams:
    """:raises S3Error: InvalidArgument for a bad ``max-keys`` or ``encoding-type``."""
    max_keys = parse_max_keys(ctx.query("max-keys"))
    encoded = url_encoded(ctx.query("encoding-type"))
    return _ListingParams(
        ctx.query("prefix") or "", ctx.query("delimiter") or "", max_keys, encoded
    )


async def _page(ctx: RequestContext, params: _ListingParams, start_after: str) -> ObjectPage:
    return await ctx.gateway.list_objects(
        ctx.bucket,
        prefix=params.prefix,
        delimiter=params.delimiter,
        start_after=start_after,
        max_keys=params.max_keys,
    )


def _listing(
    ctx: RequestContext, params: _ListingParams, page: ObjectPage, **details: Any
) -> xml.Listing:
    """The listing document's header, the parameters in and ``details`` of the operation."""
    return xml.Listing(
        bucket=ctx.bucket,
        prefix=params.prefix,
        delimiter=params.delimiter,
        max_keys=params.max_keys,
        is_truncated=page.is_truncated,
        url_encoded=params.url_encoded,
        **details,
    )


async def handle_ListObjects(ctx: RequestContext) -> Answer:
    params = _listing_params(ctx)
    marker = ctx.query("marker") or ""
    page = await _page(ctx, params, marker)
    listing = _listing(
        ctx,
        params,
        page,
        marker=marker,
        # S3 sends NextMarker only with a delimiter; without one, clients use the last key.
        next_marker=page.next_marker if page.is_truncated and params.delimiter else None,
    )
    return Answer.xml(xml.list_objects(listing, page.objects, page.common_prefixes, ctx.owner, 1))


async def handle_ListObjectsV2(ctx: RequestContext) -> Answer:
    params = _listing_params(ctx)
    token = ctx.query("continuation-token")
    start_after = ctx.query("start-after")
    if token is not None:
        if token == "":
            raise errors.InvalidArgument(
                "The continuation token provided is incorrect",
                ArgumentName="continuation-token",
            )
        begin = decode_token(token)
        if start_after and start_after > begin:
            begin = start_after
    else:
        begin = start_after or ""
    page = await _page(ctx, params, begin)
    listing = _listing(
        ctx,
        params,
        page,
        continuation_token=token,
        next_continuation_token=(
            encode_token(page.next_marker) if page.is_truncated and page.next_marker else None
        ),
        start_after=start_after,
        fetch_owner=(ctx.query("fetch-owner") or "").lower() == "true",
    )
    return Answer.xml(xml.list_objects(listing, page.objects, page.common_prefixes, ctx.owner, 2))


async def handle_ListObjectVersions(ctx: RequestContext) -> Answer:
    """Every object is its only, ``null``, version (the buckets are unversioned): enough for
    clients that clean a bucket through its versions."""
    params = _listing_params(ctx)
    marker = ctx.query("key-marker") or ""
    page = await _page(ctx, params, marker)
    listing = _listing(ctx, params, page, marker=marker)
    next_marker = page.next_marker if page.is_truncated else None
    return Answer.xml(
        xml.list_object_versions(
            listing, page.objects, page.common_prefixes, ctx.owner, next_marker
        )
    )
