"""Tagging operations: PutObjectTagging, GetObjectTagging, DeleteObjectTagging and the same
three for buckets.

Tags live in the metadata store with the object's or bucket's row (:mod:`s3balance.tagging` has
S3's rules); they never reach a backend, so changing them moves no bytes.
"""

from __future__ import annotations

from s3balance import errors, tagging
from s3balance.web.answer import Answer, RequestContext
from s3balance.web.objects import verify_body_digests, version_id_must_be_null
from s3balance.web.xml import parse_document as parse_xml


async def handle_GetObjectTagging(ctx: RequestContext) -> Answer:
    version_id_must_be_null(ctx)
    record = await ctx.gateway.get_object_record(ctx.bucket, ctx.key)
    return Answer.xml(tagging.document(record.tags))


async def _set_tags(ctx: RequestContext, tags: dict[str, str]) -> None:
    found = await ctx.gateway.store.set_object_tags(ctx.bucket, ctx.key, tags)
    if not found:
        await ctx.gateway.get_object_record(ctx.bucket, ctx.key)  # NoSuchBucket or NoSuchKey
        raise errors.NoSuchKey(Key=ctx.key)  # gone again meanwhile


def _tags_from_body(ctx: RequestContext, for_bucket: bool) -> dict[str, str]:
    body = ctx.read_body()
    if len(body) > tagging.MAX_TAGGING_BODY:
        raise errors.MaxMessageLengthExceeded()
    verify_body_digests(ctx, body)
    return tagging.parse_document(parse_xml(body), for_bucket=for_bucket)


async def handle_PutObjectTagging(ctx: RequestContext) -> Answer:
    version_id_must_be_null(ctx)
    await _set_tags(ctx, _tags_from_body(ctx, for_bucket=False))
    return Answer(200)


async def handle_DeleteObjectTagging(ctx: RequestContext) -> Answer:
    version_id_must_be_null(ctx)
    await _set_tags(ctx, {})
    return Answer(204)


async def handle_GetBucketTagging(ctx: RequestContext) -> Answer:
    bucket = await ctx.gateway.get_bucket(ctx.bucket)
    if not bucket.tags:
        raise errors.S3Error(
            "NoSuchTagSet", 404, "The TagSet does not exist", {"BucketName": ctx.bucket}
        )
    return Answer.xml(tagging.document(bucket.tags))


async def _set_bucket_tags(ctx: RequestContext, tags: dict[str, str] | None) -> None:
    if not await ctx.gateway.store.set_bucket_tags(ctx.bucket, tags):
        raise errors.NoSuchBucket(BucketName=ctx.bucket)


async def handle_PutBucketTagging(ctx: RequestContext) -> Answer:
    tags = _tags_from_body(ctx, for_bucket=True)
    await _set_bucket_tags(ctx, tags or None)
    return Answer(204)


async def handle_DeleteBucketTagging(ctx: RequestContext) -> Answer:
    await _set_bucket_tags(ctx, None)
    return Answer(204)
