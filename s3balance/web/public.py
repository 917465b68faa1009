"""What an anonymous (unsigned) client may do while ``s3api.auth_required`` is on: read an
object whose canned ACL is ``public-read`` (GetObject, HeadObject) and list a bucket whose ACL
is ``public-read`` (ListObjects v1 and v2, and HeadBucket, which S3 grants with listing).
Everything else stays AccessDenied.

With authentication off every request is allowed anyway and nothing here runs; the operational
endpoints (``/health``, ``/metrics``, ``/api``) are served before S3 routing and never reach it.
"""

from __future__ import annotations

from s3balance import acl, errors
from s3balance.web.answer import RequestContext

#: The only operations an unsigned request is let through authentication for.
ANONYMOUS_READS = frozenset(
    {"GetObject", "HeadObject", "ListObjects", "ListObjectsV2", "HeadBucket"}
)


async def authorize_anonymous(ctx: RequestContext) -> None:
    """Let an anonymous request on, or refuse it.

    A missing key of a publicly listable bucket is left for the handler to answer 404, as S3
    does; anywhere else a missing object is AccessDenied, so anonymous clients learn nothing.

    :raises S3Error: AccessDenied; InvalidRequest for ``response-*`` overrides, which S3 does not
        accept on anonymous requests.
    """
    operation = ctx.route.operation
    if operation not in ANONYMOUS_READS or ctx.route.bucket is None:
        raise errors.AccessDenied()
    store = ctx.gateway.store
    if operation in ("GetObject", "HeadObject"):
        if any(name.startswith("response-") for name in ctx.route.query):
            raise errors.InvalidRequest(
                "Request specific response headers cannot be used for anonymous GET requests."
            )
        record = await store.get_object(ctx.bucket, ctx.key)
        if record is not None:
            if acl.anonymous_may_read(record.acl):
                return
            raise errors.AccessDenied()
    bucket = await store.get_bucket(ctx.bucket)
    if bucket is not None and acl.anonymous_may_read(bucket.acl):
        return
    raise errors.AccessDenied()
