"""The pure rules of :mod:`s3balance.tagging` and :mod:`s3balance.acl` (the end-to-end behaviour
is in test_s3_tagging.py and test_s3_acl.py)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from s3balance import acl, errors, tagging

OWNER = "owner-id"


def _code(error: pytest.ExceptionInfo[errors.S3Error]) -> tuple[str, int]:
    return error.value.code, error.value.status


def test_header_form_decodes_percent_encoded_utf8_in_order() -> None:
    assert tagging.parse_header("b=2&a=%C3%A9+x&empty=") == {"b": "2", "a": "é x", "empty": ""}
    assert tagging.parse_header("") == {}


@pytest.mark.parametrize(
    ("header", "code"),
    [
        ("a=1&a=2", "InvalidArgument"),
        ("a=%ff", "InvalidArgument"),
        ("a*=1", "InvalidTag"),
        ("aws:x=1", "InvalidTag"),
        ("&".join(f"k{i}=v" for i in range(11)), "BadRequest"),
    ],
)
def test_header_form_errors(header: str, code: str) -> None:
    with pytest.raises(errors.S3Error) as raised:
        tagging.parse_header(header)
    assert _code(raised) == (code, 400)


def test_document_round_trip_and_limits() -> None:
    tags = {"k" * 128: "v" * 256, "Ünïcode 1": "+-=._:/@"}
    parsed = tagging.parse_document(ET.fromstring(tagging.document(tags)))
    assert parsed == tags
    with pytest.raises(errors.S3Error) as raised:
        tagging.validate([("k" * 129, "")])
    assert _code(raised) == ("InvalidTag", 400)


def _policy(*grants: str) -> ET.Element:
    xsi = 'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"'
    body = "".join(grants)
    return ET.fromstring(
        f'<AccessControlPolicy><Owner><ID>{OWNER}</ID></Owner>'
        f"<AccessControlList>{body}</AccessControlList></AccessControlPolicy>".replace(
            "XSI", xsi
        )
    )


OWNER_GRANT = (
    f'<Grant><Grantee XSI xsi:type="CanonicalUser"><ID>{OWNER}</ID></Grantee>'
    "<Permission>FULL_CONTROL</Permission></Grant>"
)


def _group(uri: str, permission: str) -> str:
    return (
        f'<Grant><Grantee XSI xsi:type="Group"><URI>{uri}</URI></Grantee>'
        f"<Permission>{permission}</Permission></Grant>"
    )


def test_policies_equal_to_canned_acls() -> None:
    assert acl.from_policy(_policy(OWNER_GRANT), OWNER) == acl.PRIVATE
    assert acl.from_policy(_policy(OWNER_GRANT, _group(acl.ALL_USERS, "READ")), OWNER) == (
        acl.PUBLIC_READ
    )
    assert acl.from_policy(
        _policy(OWNER_GRANT, _group(acl.AUTHENTICATED_USERS, "READ")), OWNER
    ) == acl.AUTHENTICATED_READ
    for policy in (
        _policy(OWNER_GRANT, _group(acl.ALL_USERS, "READ"), _group(acl.ALL_USERS, "WRITE")),
        _policy(OWNER_GRANT, _group(acl.ALL_USERS, "FULL_CONTROL")),
        _policy(_group(acl.ALL_USERS, "READ")),
    ):
        with pytest.raises(errors.S3Error) as raised:
            acl.from_policy(policy, OWNER)
        assert _code(raised) == ("NotImplemented", 501)
    with pytest.raises(errors.S3Error) as raised:
        acl.from_policy(ET.fromstring("<Other/>"), OWNER)
    assert _code(raised) == ("MalformedXML", 400)


def test_policy_documents_show_s3s_grants() -> None:
    for name in acl.SERVED:
        root = ET.fromstring(acl.policy_document(OWNER, "me", name))
        assert acl.from_policy(root, OWNER) == name


def test_canned_header_names() -> None:
    assert acl.from_headers(None, False, for_bucket=False) == acl.PRIVATE
    assert acl.from_headers(" public-read ", False, for_bucket=True) == acl.PUBLIC_READ
    assert acl.from_headers("bucket-owner-full-control", False, for_bucket=False) == acl.PRIVATE
    for value, for_bucket, code in [
        ("public-read-write", False, "NotImplemented"),
        ("bucket-owner-read", True, "NotImplemented"),
        ("log-delivery-write", True, "NotImplemented"),
        ("everyone", False, "InvalidArgument"),
    ]:
        with pytest.raises(errors.S3Error) as raised:
            acl.from_headers(value, False, for_bucket)
        assert raised.value.code == code
    with pytest.raises(errors.S3Error) as raised:
        acl.from_headers(None, True, for_bucket=False)
    assert raised.value.code == "NotImplemented"
