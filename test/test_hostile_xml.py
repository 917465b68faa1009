"""Every XML body the daemon parses goes through defusedxml (issue 13, 2): a DTD in any encoding
is refused before anything expands, for client requests and for backend answers alike."""

from __future__ import annotations

import base64
import hashlib
import http.client

import pytest
from twisted.trial import unittest

from s3balance import errors
from s3balance.backends import s3xml
from s3balance.web import xml
from s3balance.web.multipart import parse_complete
from test.support.daemon import DaemonTestCase, in_thread

pytestmark = pytest.mark.timeout(60)


def billion_laughs(
    root: str, encoding: str, levels: int = 5, inner: str = "<Object><Key>{}</Key></Object>"
) -> bytes:
    """The classic entity bomb, ``levels`` levels of 10 "lol"s.  Five levels expand to 300 KB:
    small enough for expat's own amplification guard to let it through, so without defusedxml
    (and with a UTF-16 body, which a byte search for ``<!DOCTYPE`` misses) this parses."""
    entities = ['<!ENTITY lol0 "lol">'] + [
        f'<!ENTITY lol{level} "{f"&lol{level - 1};" * 10}">'
        for level in range(1, levels + 1)
    ]
    text = (
        f'<?xml version="1.0" encoding="{encoding.upper()}"?>\n'
        f"<!DOCTYPE {root} [{''.join(entities)}]>\n"
        f"<{root}>{inner.format(f'&lol{levels};')}</{root}>"
    )
    return text.encode(encoding)


@pytest.mark.parametrize("encoding", ["utf-8", "utf-16", "utf-16-le", "utf-32"])
def test_request_bodies_with_a_dtd_are_malformed(encoding: str) -> None:
    body = billion_laughs("Delete", encoding)
    for parse in (xml.parse_delete, parse_complete):
        with pytest.raises(errors.S3Error) as raised:
            parse(body)
        assert raised.value.code == "MalformedXML"


def test_utf16_body_without_a_dtd_still_parses() -> None:
    body = '<?xml version="1.0" encoding="UTF-16"?><Delete><Object><Key>k</Key></Object></Delete>'
    assert xml.parse_delete(body.encode("utf-16")).keys == ["k"]


@pytest.mark.parametrize("encoding", ["utf-8", "utf-16"])
def test_backend_answers_with_a_dtd_are_malformed(encoding: str) -> None:
    body = billion_laughs(
        "InitiateMultipartUploadResult", encoding, inner="<UploadId>{}</UploadId>"
    )
    with pytest.raises(s3xml.MalformedResponse):
        s3xml.parse_initiate(body)


class EntityBombOverTheWireTests(DaemonTestCase, unittest.TestCase):
    timeout = 60

    async def test_utf16_billion_laughs_is_a_fast_malformed_xml(self) -> None:
        body = billion_laughs("Delete", "utf-16")
        md5 = base64.b64encode(hashlib.md5(body).digest()).decode()

        def post() -> tuple[int, bytes]:
            port = self.daemon.port_number
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            try:
                connection.request(
                    "POST", "/vb?delete", body=body,
                    headers={"Content-MD5": md5, "Content-Type": "application/xml"},
                )
                response = connection.getresponse()
                return response.status, response.read()
            finally:
                connection.close()

        status, answer = await in_thread(post)
        self.assertEqual(status, 400)
        self.assertIn(b"<Code>MalformedXML</Code>", answer)
