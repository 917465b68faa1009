"""The S3 error catalogue: each code a class of its own, caught by type, rendered as S3 XML."""

from __future__ import annotations

import inspect
from xml.etree import ElementTree

import pytest

from s3balance import errors


def _catalogue() -> list[type[errors.CatalogError]]:
    return [
        value
        for value in vars(errors).values()
        if inspect.isclass(value)
        and issubclass(value, errors.CatalogError)
        and value is not errors.CatalogError
    ]


def test_every_code_is_a_class_that_a_handler_can_catch_by_type() -> None:
    catalogue = _catalogue()
    assert len(catalogue) > 30
    for error_class in catalogue:
        with pytest.raises(error_class) as raised:
            raise error_class()
        assert isinstance(raised.value, errors.S3Error)
        assert raised.value.code == error_class.code
        assert raised.value.status == error_class.status
        assert raised.value.message == error_class.default_message
        assert 300 <= raised.value.status < 600


def test_one_code_does_not_catch_another() -> None:
    with pytest.raises(errors.NoSuchBucket):
        try:
            raise errors.NoSuchBucket()
        except errors.NoSuchKey:  # must not swallow a different code
            pytest.fail("NoSuchKey caught NoSuchBucket")


def test_insufficient_storage_is_a_service_unavailable() -> None:
    """Clients see S3's 503 ServiceUnavailable (they retry it); handlers of that code catch both."""
    error = errors.InsufficientStorage()
    assert isinstance(error, errors.ServiceUnavailable)
    assert (error.code, error.status) == ("ServiceUnavailable", 503)


def test_message_and_extra_elements_render_in_the_error_document() -> None:
    error = errors.NoSuchKey("gone <now>", Key="a&b")
    document = ElementTree.fromstring(error.to_xml("/vb/a&b", "req-1"))
    assert [child.tag for child in document] == ["Code", "Message", "Key", "Resource", "RequestId"]
    assert document.findtext("Code") == "NoSuchKey"
    assert document.findtext("Message") == "gone <now>"
    assert document.findtext("Key") == "a&b"
    assert document.findtext("Resource") == "/vb/a&b"
