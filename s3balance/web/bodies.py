"""Request bodies the daemon reads into memory: how large each may be, and how much all may hold.

Only PutObject and UploadPart stream their bodies to a backend.  Every other body is a small
document the handler reads whole (DeleteObjects, CompleteMultipartUpload, ACLs, the
CreateBucket configuration, the admin API's JSON), and it is held in memory, never in a
temporary file.  Before one byte of it is read, the request's signature has been checked (see
``S3Resource.body_limit``), and its declared length is compared with the cap of its operation
below; the bytes then count against one :class:`BodyBudget` shared by every connection, so
anonymous or slow clients cannot park memory in the daemon.

The caps follow what S3 itself accepts:

- DeleteObjects: at most 1,000 keys of at most 1,024 bytes each; with the XML around them and
  escaped characters, 2 MiB is more than any valid request needs.
- CompleteMultipartUpload: at most 10,000 parts, each about 100 bytes of XML, or 200 with a
  checksum element: 4 MiB.
- ACL, tagging and the CreateBucket configuration: a few KiB at most (100 grants, 50 tags):
  64 KiB, as is every other operation (those we do not serve answer 501 anyway).
- The admin API (``/api``): JSON configuration updates, 1 MiB.

A body above its cap is ``400 MaxMessageLengthExceeded``; a body that does not fit in the budget
now is ``503 SlowDown`` (S3's "reduce your request rate"), which SDKs retry.
"""

from __future__ import annotations

from s3balance.metrics import BUFFERED_BODY_BYTES

__all__ = ["ADMIN_BODY", "BODY_LIMITS", "DEFAULT_BODY", "LARGEST_BODY", "BodyBudget"]

BODY_LIMITS: dict[str, int] = {
    "DeleteObjects": 2 << 20,
    "CompleteMultipartUpload": 4 << 20,
}
#: Every other operation's body (ACL, tagging, CreateBucket configuration, unserved ones).
DEFAULT_BODY = 64 << 10
#: The admin API's JSON bodies.
ADMIN_BODY = 1 << 20
#: No buffered body is larger: ``server.body_memory`` must hold at least one.
LARGEST_BODY = max(*BODY_LIMITS.values(), DEFAULT_BODY, ADMIN_BODY)


class BodyBudget:
    """Bytes of buffered request bodies held at once, across every connection.

    :param limit: the most bytes held together (``server.body_memory``).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def take(self, count: int) -> bool:
        """Reserve ``count`` more bytes; False (and nothing reserved) when they do not fit."""
        if self.held + count > self.limit:
            return False
        self.held += count
        BUFFERED_BODY_BYTES.set(self.held)
        return True

    def give_back(self, count: int) -> None:
        """Release bytes reserved with :meth:`take`."""
        self.held = max(0, self.held - count)
        BUFFERED_BODY_BYTES.set(self.held)
