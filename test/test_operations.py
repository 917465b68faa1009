"""The table of backend operations and their billing classes: the README's copy agrees with it,
and the pool counts each operation by it alone."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from s3balance.operations import (
    CLASS_A,
    CLASS_B,
    FREE,
    LISTING_PAGE,
    OPERATION_CLASSES,
    listing_pages,
    operation_class,
)

README = Path(__file__).resolve().parent.parent / "README.md"
BEGIN = "<!-- backend operations: the table of s3balance/operations.py -->"
END = "<!-- end of backend operations -->"
ROW = re.compile(r"^\| `([A-Za-z0-9]+)` \| (A|B|free) \| .+ \|$")


def readme_table() -> dict[str, str]:
    text = README.read_text(encoding="utf-8")
    assert text.count(BEGIN) == 1 and text.count(END) == 1
    lines = text[text.index(BEGIN) + len(BEGIN) : text.index(END)].strip().splitlines()
    assert lines[:2] == ["| operation | class | sent for |", "| --- | --- | --- |"]
    rows = {}
    for line in lines[2:]:
        match = ROW.match(line)
        assert match is not None, line
        assert match.group(1) not in rows, f"{match.group(1)} listed twice"
        rows[match.group(1)] = match.group(2)
    return rows


def test_the_readme_lists_the_table() -> None:
    assert readme_table() == dict(OPERATION_CLASSES)


def test_the_classes_are_r2s() -> None:
    """R2's published classes, for the operations the daemon sends."""
    assert {op for op, cls in OPERATION_CLASSES.items() if cls == CLASS_A} == {
        "PutObject", "CopyObject", "CreateMultipartUpload", "UploadPart", "UploadPartCopy",
        "CompleteMultipartUpload", "ListObjectsV2",
    }  # fmt: skip
    assert {op for op, cls in OPERATION_CLASSES.items() if cls == CLASS_B} == {
        "GetObject", "HeadObject", "HeadBucket",
    }  # fmt: skip
    assert {op for op, cls in OPERATION_CLASSES.items() if cls == FREE} == {
        "DeleteObject", "AbortMultipartUpload",
    }  # fmt: skip


def test_a_class_letter_or_an_unknown_name_is_refused() -> None:
    for name in ("A", "B", "free", "Abort", "ListParts"):
        with pytest.raises(ValueError):
            operation_class(name)


def test_listing_pages() -> None:
    assert [listing_pages(n) for n in (0, 1, LISTING_PAGE, LISTING_PAGE + 1)] == [1, 1, 1, 2]
