"""Object tags as S3 defines them: what a tag set may hold, and its two spellings.

A tag set comes either as an ``x-amz-tagging`` header (PutObject, CopyObject with
``x-amz-tagging-directive: REPLACE``, CreateMultipartUpload), written like a URL query string
(``k1=v1&k2=v2``, percent-encoded UTF-8), or as a ``<Tagging>`` document (PutObjectTagging).
Both are checked against S3's rules before anything is stored:

- at most :data:`MAX_TAGS` tags per object (``BadRequest``);
- keys of 1 to :data:`MAX_KEY_LENGTH` and values of 0 to :data:`MAX_VALUE_LENGTH` Unicode
  characters (``InvalidTag``);
- letters, digits and white space of any script, and ``+ - = . _ : / @`` (``InvalidTag``);
- unique keys (``InvalidTag``; ``InvalidArgument`` in the header form, as S3);
- no key starting with ``aws:``, which S3 reserves for itself (``InvalidTag``).
"""

from __future__ import annotations

import unicodedata
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from urllib.parse import parse_qsl

from s3balance import errors

MAX_TAGS = 10
#: A bucket may have more tags than an object.
MAX_BUCKET_TAGS = 50
MAX_KEY_LENGTH = 128
MAX_VALUE_LENGTH = 256
#: A PutObjectTagging body is at most this large: ten tags of the longest keys and values, each
#: character written as an escaped entity, fit with room to spare.
MAX_TAGGING_BODY = 64 * 1024
#: The punctuation S3 allows in tag keys and values besides letters, digits and spaces.
_PUNCTUATION = frozenset("+-=._:/@")
_NAMESPACE = "http://s3.amazonaws.com/doc/2006-03-01/"


def invalid_tag(message: str) -> errors.S3Error:
    return errors.S3Error("InvalidTag", 400, message)


def _allowed(text: str) -> bool:
    for character in text:
        if character in _PUNCTUATION:
            continue
        if unicodedata.category(character)[0] not in ("L", "N", "Z"):
            return False
    return True


def validate(
    pairs: list[tuple[str, str]], header_form: bool = False, for_bucket: bool = False
) -> dict[str, str]:
    """The tag set of ``pairs``, in order, after S3's checks (see the module docstring).

    :param for_bucket: a bucket's tag set: up to :data:`MAX_BUCKET_TAGS` tags.
    :raises S3Error: BadRequest, InvalidTag, InvalidArgument.
    """
    if for_bucket and len(pairs) > MAX_BUCKET_TAGS:
        raise invalid_tag(f"Bucket tag count cannot be greater than {MAX_BUCKET_TAGS}")
    if not for_bucket and len(pairs) > MAX_TAGS:
        raise errors.S3Error(
            "BadRequest", 400, f"Object tags cannot be greater than {MAX_TAGS}"
        )
    tags: dict[str, str] = {}
    for key, value in pairs:
        if key in tags:
            if header_form:
                raise errors.InvalidArgument(
                    "The header 'x-amz-tagging' shall be encoded as UTF-8 then URLEncoded URL "
                    "query parameters without tag name duplicates.",
                    ArgumentName="x-amz-tagging",
                )
            raise invalid_tag("Cannot provide multiple Tags with the same key")
        if not key:
            raise invalid_tag("The TagKey you have provided is invalid")
        if len(key) > MAX_KEY_LENGTH:
            raise invalid_tag(f"The TagKey you have provided is too long, max {MAX_KEY_LENGTH}")
        if len(value) > MAX_VALUE_LENGTH:
            raise invalid_tag(
                f"The TagValue you have provided is too long, max {MAX_VALUE_LENGTH}"
            )
        if key.lower().startswith("aws:"):
            raise invalid_tag("Your TagKey cannot be prefixed with aws:")
        if not _allowed(key):
            raise invalid_tag("The TagKey you have provided is invalid")
        if not _allowed(value):
            raise invalid_tag("The TagValue you have provided is invalid")
        tags[key] = value
    return tags


def parse_header(value: str) -> dict[str, str]:
    """The tag set of an ``x-amz-tagging`` header (``k1=v1&k2=v2``, percent-encoded UTF-8).

    :param value: the header as received (latin-1 decoded, byte for byte).
    :raises S3Error: InvalidArgument for a header that does not decode, and see :func:`validate`.
    """
    try:
        text = value.encode("latin-1").decode("utf-8")
        pairs = parse_qsl(
            text, keep_blank_values=True, strict_parsing=bool(text), encoding="utf-8",
            errors="strict",
        )
    except (UnicodeError, ValueError):
        raise errors.InvalidArgument(
            "The header 'x-amz-tagging' shall be encoded as UTF-8 then URLEncoded URL query "
            "parameters without tag name duplicates.",
            ArgumentName="x-amz-tagging",
        ) from None
    return validate(pairs, header_form=True)


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def parse_document(root: ET.Element, for_bucket: bool = False) -> dict[str, str]:
    """The tag set of a parsed ``<Tagging><TagSet><Tag><Key/><Value/></Tag>...`` document.

    :raises S3Error: MalformedXML for another shape, and see :func:`validate`.
    """
    if _local(root.tag) != "Tagging":
        raise errors.MalformedXML()
    tag_sets = [child for child in root if _local(child.tag) == "TagSet"]
    if len(tag_sets) != 1 or len(root) != 1:
        raise errors.MalformedXML()
    pairs: list[tuple[str, str]] = []
    for tag in tag_sets[0]:
        if _local(tag.tag) != "Tag":
            raise errors.MalformedXML()
        fields: dict[str, str] = {}
        for field in tag:
            name = _local(field.tag)
            if name not in ("Key", "Value") or name in fields or len(field):
                raise errors.MalformedXML()
            fields[name] = field.text or ""
        if "Key" not in fields or "Value" not in fields:
            raise errors.MalformedXML()
        pairs.append((fields["Key"], fields["Value"]))
    return validate(pairs, for_bucket=for_bucket)


def document(tags: Mapping[str, str]) -> bytes:
    """GetObjectTagging's answer."""
    root = ET.Element("Tagging", {"xmlns": _NAMESPACE})
    tag_set = ET.SubElement(root, "TagSet")
    for key, value in tags.items():
        tag = ET.SubElement(tag_set, "Tag")
        ET.SubElement(tag, "Key").text = key
        ET.SubElement(tag, "Value").text = value
    body: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=False)
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + body

