"""Object tagging operations: PutObjectTagging, GetObjectTagging, DeleteObjectTagging.

Tags live in the metadata store with the object's row (:mod:`s3balance.tagging` has S3's rules);
they never reach a backend, so changing them moves no bytes.  Bucket tagging is not served.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from s3balance import errors, tagging
from s3balance.web.answer import Answer, RequestContext
from s3balance.web.xml import _parse as parse_xml


def _version_id_must_be_null(ctx: RequestContext) -> None:
    version = ctx.query("versionId")
    if version is not None and version != "null":
        raise errors.InvalidArgument(
            "Invalid version id specified", ArgumentName="versionId", ArgumentValue=version
        )


async def handle_GetObjectTagging(ctx: RequestContext) -> Answer:
    _version_id_must_be_null(ctx)
    record = await ctx.gateway.get_object_record(ctx.bucket, ctx.key)
    return Answer.xml(tagging.document(record.tags))


async def _set_tags(ctx: RequestContext, tags: dict[str, str]) -> None:
    found = await ctx.gateway.store.set_object_tags(ctx.bucket, ctx.key, tags)
    if not found:
        await ctx.gateway.get_object_record(ctx.bucket, ctx.key)  # NoSuchBucket or NoSuchKey
        raise errors.NoSuchKey(Key=ctx.key)  # gone again meanwhile


async def handle_PutObjectTagging(ctx: RequestContext) -> Answer:
    from s3balance.web.objects import verify_body_digests

    _version_id_must_be_null(ctx)
    body = ctx.read_body()
    if len(body) > tagging.MAX_TAGGING_BODY:
        raise errors.MaxMessageLengthExceeded()
    verify_body_digests(ctx, body)
    tags = tagging.parse_document(parse_xml(body))
    await _set_tags(ctx, tags)
    return Answer(200)


async def handle_DeleteObjectTagging(ctx: RequestContext) -> Answer:
    _version_id_must_be_null(ctx)
    await _set_tags(ctx, {})
    return Answer(204)


HANDLERS: dict[str, Callable[[RequestContext], Any]] = {
    "GetObjectTagging": handle_GetObjectTagging,
    "PutObjectTagging": handle_PutObjectTagging,
    "DeleteObjectTagging": handle_DeleteObjectTagging,
}
