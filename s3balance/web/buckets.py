"""Service- and bucket-level operations: virtual buckets and their listings.

Only virtual buckets exist for clients: real buckets are never listed nor addressable.
Listings come from the metadata store, never from a backend.
"""

from __future__ import annotations

import base64
import binascii

from s3balance import errors
from s3balance.db.records import ObjectPage
from s3balance.integers import parse_decimal
from s3balance.web import xml
from s3balance.web.answer import Answer, RequestContext, refuse_acl_header

#: S3's page size limit for listings.
MAX_KEYS = 1000


async def handle_ListBuckets(ctx: RequestContext) -> Answer:
    buckets = await ctx.gateway.list_buckets()
    if ctx.identity is not None:
        buckets = [b for b in buckets if ctx.identity.may_access(b.name, False)]
    return Answer.xml(xml.list_buckets(buckets, ctx.owner))


async def handle_HeadBucket(ctx: RequestContext) -> Answer:
    await ctx.gateway.get_bucket(ctx.bucket)
    return Answer(200, [("x-amz-bucket-region", ctx.region)])


async def handle_GetBucketLocation(ctx: RequestContext) -> Answer:
    await ctx.gateway.get_bucket(ctx.bucket)
    return Answer.xml(xml.location_constraint(ctx.region))


async def handle_GetBucketVersioning(ctx: RequestContext) -> Answer:
    await ctx.gateway.get_bucket(ctx.bucket)
    return Answer.xml(xml.versioning_configuration())


async def handle_CreateBucket(ctx: RequestContext) -> Answer:
    refuse_acl_header(ctx)
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
    await ctx.gateway.create_bucket(ctx.bucket)
    return Answer(200, [("Location", "/" + ctx.bucket)])


async def handle_DeleteBucket(ctx: RequestContext) -> Answer:
    await ctx.gateway.delete_bucket(ctx.bucket)
    return Answer(204)


async def handle_GetBucketAcl(ctx: RequestContext) -> Answer:
    await ctx.gateway.get_bucket(ctx.bucket)
    return Answer.xml(xml.access_control_policy(ctx.owner))


async def handle_PutBucketAcl(ctx: RequestContext) -> Answer:
    await ctx.gateway.get_bucket(ctx.bucket)
    accept_private_acl(ctx)
    return Answer(200)


def accept_private_acl(ctx: RequestContext) -> None:
    """PutBucketAcl/PutObjectAcl: the private policy (as a canned header or as a document) is
    what exists already; anything else is refused.

    :raises S3Error: NotImplemented for another ACL, InvalidRequest when none is given.
    """
    refuse_acl_header(ctx)
    body = ctx.read_body()
    if ctx.header("x-amz-acl") is not None:
        return
    if not body.strip():
        raise errors.InvalidRequest("An ACL must be given in the x-amz-acl header or the body.")
    if not xml.is_private_acl(body, ctx.owner):
        raise errors.NotImplementedError_("Only the private ACL is supported.")


def parse_max_keys(value: str | None, name: str = "max-keys") -> int:
    """S3's max-keys: 0..1000, larger values capped, anything else refused.

    :raises S3Error: InvalidArgument.
    """
    if value is None or value == "":
        return MAX_KEYS
    if value.startswith("-") and value[1:].isdigit():
        raise errors.InvalidArgument(
            f"Argument {name} must be an integer between 0 and 2147483647",
            ArgumentName=name,
            ArgumentValue=value,
        )
    try:
        number = parse_decimal(value, maximum=2**31 - 1)
    except ValueError:
        raise errors.InvalidArgument(
            f"Provided {name} not an integer or within integer range",
            ArgumentName=name,
            ArgumentValue=value,
        ) from None
    return min(number, MAX_KEYS)


def _url_encoded(ctx: RequestContext) -> bool:
    encoding = ctx.query("encoding-type")
    if encoding is None or encoding == "":
        return False
    if encoding.lower() != "url":
        raise errors.InvalidArgument(
            "Invalid Encoding Method specified in Request",
            ArgumentName="encoding-type",
            ArgumentValue=encoding,
        )
    return True


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


async def _page(ctx: RequestContext, start_after: str, max_keys: int) -> ObjectPage:
    return await ctx.gateway.list_objects(
        ctx.bucket,
        prefix=ctx.query("prefix") or "",
        delimiter=ctx.query("delimiter") or "",
        start_after=start_after,
        max_keys=max_keys,
    )


async def handle_ListObjects(ctx: RequestContext) -> Answer:
    max_keys = parse_max_keys(ctx.query("max-keys"))
    encoded = _url_encoded(ctx)
    marker = ctx.query("marker") or ""
    delimiter = ctx.query("delimiter") or ""
    page = await _page(ctx, marker, max_keys)
    listing = xml.Listing(
        bucket=ctx.bucket,
        prefix=ctx.query("prefix") or "",
        delimiter=delimiter,
        max_keys=max_keys,
        is_truncated=page.is_truncated,
        url_encoded=encoded,
        marker=marker,
        # S3 sends NextMarker only with a delimiter; without one, clients use the last key.
        next_marker=page.next_marker if page.is_truncated and delimiter else None,
    )
    return Answer.xml(xml.list_objects(listing, page.objects, page.common_prefixes, ctx.owner, 1))


async def handle_ListObjectsV2(ctx: RequestContext) -> Answer:
    max_keys = parse_max_keys(ctx.query("max-keys"))
    encoded = _url_encoded(ctx)
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
    page = await _page(ctx, begin, max_keys)
    listing = xml.Listing(
        bucket=ctx.bucket,
        prefix=ctx.query("prefix") or "",
        delimiter=ctx.query("delimiter") or "",
        max_keys=max_keys,
        is_truncated=page.is_truncated,
        url_encoded=encoded,
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
    max_keys = parse_max_keys(ctx.query("max-keys"))
    encoded = _url_encoded(ctx)
    marker = ctx.query("key-marker") or ""
    page = await _page(ctx, marker, max_keys)
    listing = xml.Listing(
        bucket=ctx.bucket,
        prefix=ctx.query("prefix") or "",
        delimiter=ctx.query("delimiter") or "",
        max_keys=max_keys,
        is_truncated=page.is_truncated,
        url_encoded=encoded,
        marker=marker,
    )
    next_marker = page.next_marker if page.is_truncated else None
    return Answer.xml(
        xml.list_object_versions(
            listing, page.objects, page.common_prefixes, ctx.owner, next_marker
        )
    )
