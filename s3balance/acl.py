"""Canned ACLs: the ones s3balance honours, how requests name them, and the grants they show.

s3balance has one owner (every configured key acts for it), so an ACL can only say what
*anonymous* clients may do.  Served:

- ``private`` (the default): the owner only.
- ``public-read``: anyone may read, unsigned: GetObject/HeadObject of such an object, or list
  such a bucket (ListObjects v1/v2), when ``s3api.auth_required`` is on.  Other requests stay
  refused to anonymous clients.
- ``authenticated-read``: S3's "any AWS account may read".  Here every signed key is the owner
  already, so it grants nothing more than ``private``: anonymous requests stay refused.  It is
  stored and shown so that what a client set is what it reads back.
- ``bucket-owner-read`` and ``bucket-owner-full-control`` on objects: the bucket's owner is the
  object's owner, so they are ``private``.

Refused with 501 NotImplemented, touching nothing: ``public-read-write`` (anonymous writes
would need their own quota and abuse controls, which s3balance does not have), the other canned
ACLs, grants to accounts by id or e-mail and the ``x-amz-grant-*`` headers.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from s3balance import errors

PRIVATE = "private"
PUBLIC_READ = "public-read"
PUBLIC_READ_WRITE = "public-read-write"
AUTHENTICATED_READ = "authenticated-read"

#: Canned ACLs stored as themselves.
SERVED = frozenset({PRIVATE, PUBLIC_READ, AUTHENTICATED_READ})
#: Object ACLs that mean ``private`` when the bucket owner is the object owner.
_OWNER_ONLY = frozenset({"bucket-owner-read", "bucket-owner-full-control"})
_KNOWN = frozenset(
    {
        PRIVATE,
        PUBLIC_READ,
        PUBLIC_READ_WRITE,
        AUTHENTICATED_READ,
        "aws-exec-read",
        "bucket-owner-read",
        "bucket-owner-full-control",
        "log-delivery-write",
    }
)
#: Largest PutBucketAcl/PutObjectAcl body read: an owner, a handful of grants and namespaces.
MAX_ACL_BODY = 64 * 1024

_XSI = "http://www.w3.org/2001/XMLSchema-instance"
_NAMESPACE = "http://s3.amazonaws.com/doc/2006-03-01/"
ALL_USERS = "http://acs.amazonaws.com/groups/global/AllUsers"
AUTHENTICATED_USERS = "http://acs.amazonaws.com/groups/global/AuthenticatedUsers"

#: The grants besides the owner's FULL_CONTROL that each served canned ACL shows, as S3 shows
#: them: ``(group URI, permission)``.
_GROUP_GRANTS: dict[str, tuple[tuple[str, str], ...]] = {
    PRIVATE: (),
    PUBLIC_READ: ((ALL_USERS, "READ"),),
    AUTHENTICATED_READ: ((AUTHENTICATED_USERS, "READ"),),
}

_PUBLIC_READ_WRITE_REFUSED = (
    "The public-read-write canned ACL is not supported: this server does not accept anonymous "
    "writes."
)
_GRANTS_REFUSED = (
    "Grants to other accounts and grant headers are not supported; use a canned ACL "
    "(private, public-read or authenticated-read)."
)


def anonymous_may_read(acl: str) -> bool:
    """Whether an unsigned client may read an object, or list a bucket, with this ACL."""
    return acl == PUBLIC_READ


def canned(value: str, for_bucket: bool) -> str:
    """The stored ACL for an ``x-amz-acl`` value.

    :raises S3Error: NotImplemented for a canned ACL s3balance does not honour, InvalidArgument
        for a name S3 does not know.
    """
    name = value.strip()
    if name in SERVED:
        return name
    if name in _OWNER_ONLY and not for_bucket:
        return PRIVATE
    if name == PUBLIC_READ_WRITE:
        raise errors.NotImplementedError_(_PUBLIC_READ_WRITE_REFUSED)
    if name in _KNOWN:
        raise errors.NotImplementedError_(f"The {name} canned ACL is not supported here.")
    raise errors.InvalidArgument(None, ArgumentName="x-amz-acl", ArgumentValue=name)


def from_headers(acl_header: str | None, grant_headers: bool, for_bucket: bool) -> str:
    """The ACL a write asks for with ``x-amz-acl`` (``private`` without one).

    :param grant_headers: whether the request carries any ``x-amz-grant-*`` header.
    :raises S3Error: NotImplemented, InvalidArgument (see :func:`canned`).
    """
    if grant_headers:
        raise errors.NotImplementedError_(_GRANTS_REFUSED)
    if acl_header is None:
        return PRIVATE
    return canned(acl_header, for_bucket)


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _child(element: ET.Element, name: str) -> ET.Element | None:
    for child in element:
        if _local(child.tag) == name:
            return child
    return None


def from_policy(root: ET.Element, owner_id: str) -> str:
    """The canned ACL an ``<AccessControlPolicy>`` document amounts to.

    :raises S3Error: MalformedXML for another document; NotImplemented for grants that are not
        exactly a served canned ACL's.
    """
    if _local(root.tag) != "AccessControlPolicy":
        raise errors.MalformedXML()
    grant_list = _child(root, "AccessControlList")
    if grant_list is None:
        raise errors.MalformedXML()
    owner_full_control = False
    groups: set[tuple[str, str]] = set()
    for grant in grant_list:
        if _local(grant.tag) != "Grant":
            raise errors.MalformedXML()
        grantee = _child(grant, "Grantee")
        permission_element = _child(grant, "Permission")
        if grantee is None or permission_element is None:
            raise errors.MalformedXML()
        permission = (permission_element.text or "").strip()
        kind = grantee.get(f"{{{_XSI}}}type", "")
        if kind == "CanonicalUser":
            identifier = _child(grantee, "ID")
            who = (identifier.text or "").strip() if identifier is not None else ""
            if who == owner_id and permission == "FULL_CONTROL":
                owner_full_control = True
                continue
            raise errors.NotImplementedError_(_GRANTS_REFUSED)
        if kind == "Group":
            uri = _child(grantee, "URI")
            groups.add(((uri.text or "").strip() if uri is not None else "", permission))
            continue
        if kind in ("AmazonCustomerByEmail", ""):
            raise errors.NotImplementedError_(_GRANTS_REFUSED)
        raise errors.MalformedXML()
    if groups == {(ALL_USERS, "READ"), (ALL_USERS, "WRITE")}:
        raise errors.NotImplementedError_(_PUBLIC_READ_WRITE_REFUSED)
    for name, grants in _GROUP_GRANTS.items():
        if owner_full_control and groups == set(grants):
            return name
    raise errors.NotImplementedError_(
        "Only policies equal to a canned ACL (private, public-read or authenticated-read) "
        "are supported."
    )


def policy_document(owner_id: str, owner_name: str, acl: str) -> bytes:
    """GetBucketAcl/GetObjectAcl's answer for a stored canned ACL, with S3's grants."""
    root = ET.Element("AccessControlPolicy", {"xmlns": _NAMESPACE})
    owner = ET.SubElement(root, "Owner")
    ET.SubElement(owner, "ID").text = owner_id
    ET.SubElement(owner, "DisplayName").text = owner_name
    grants = ET.SubElement(root, "AccessControlList")
    grant = ET.SubElement(grants, "Grant")
    grantee = ET.SubElement(grant, "Grantee", {"xmlns:xsi": _XSI, "xsi:type": "CanonicalUser"})
    ET.SubElement(grantee, "ID").text = owner_id
    ET.SubElement(grantee, "DisplayName").text = owner_name
    ET.SubElement(grant, "Permission").text = "FULL_CONTROL"
    for uri, permission in _GROUP_GRANTS.get(acl, ()):
        grant = ET.SubElement(grants, "Grant")
        grantee = ET.SubElement(grant, "Grantee", {"xmlns:xsi": _XSI, "xsi:type": "Group"})
        ET.SubElement(grantee, "URI").text = uri
        ET.SubElement(grant, "Permission").text = permission
    body: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=False)
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + body
