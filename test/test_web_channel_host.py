"""``S3Channel.getHost``: the local address is asked of the transport once per connection."""

from __future__ import annotations

from typing import Any

from twisted.internet.testing import StringTransport

from test.test_web_request import connect


class CountingTransport(StringTransport):
    def __init__(self) -> None:
        super().__init__()
        self.asked = 0

    def getHost(self) -> Any:
        self.asked += 1
        return super().getHost()


def test_requests_on_one_connection_share_the_local_address() -> None:
    site, channel, _, _, recorder = connect()
    transport = CountingTransport()
    channel.connectionLost(None)  # type: ignore[arg-type]
    channel = site.buildProtocol(None)
    channel.makeConnection(transport)
    request = b"POST /bucket/key HTTP/1.1\r\nHost: example\r\nContent-Length: 1\r\n\r\nx"
    channel.dataReceived(request * 3)
    assert transport.value().count(b"got:x") == 3
    assert transport.asked == 1
    assert channel.getHost() == transport.getHost()
