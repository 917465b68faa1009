"""The streaming request path: bodies reach a consumer as they arrive, with backpressure to the
client socket, and every early answer leaves the connection in a state no client can misread.

Most tests drive ``S3Channel`` over ``StringTransport`` with ``MemoryReactorClock`` timers, as
Twisted's own ``web/test/test_http.py`` does; one test pushes 64 MiB through a real socket.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import random
from typing import Any

import pytest
from twisted.internet import reactor, threads
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IConsumer
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.iweb import UNKNOWN_LENGTH
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from s3balance import errors
from s3balance.errors import S3Error
from s3balance.web.channel import S3Channel
from s3balance.web.filters import ContentMD5Filter
from s3balance.web.request import StreamingRequest
from s3balance.web.requestbody import BodyAbandoned, ClientDisconnected, RequestBody
from s3balance.web.site import S3Site

pytestmark = pytest.mark.timeout(60)


@implementer(IConsumer)
class Sink:
    """A consumer standing in for a backend connection."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass

    def write(self, data: bytes) -> None:
        self.chunks.append(data)

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)


class Recorder(Resource):
    """Records streamed requests; ``on_put`` decides how render_PUT answers."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[StreamingRequest] = []
        self.on_put: Any = None

    def render_PUT(self, request: StreamingRequest) -> Any:
        self.requests.append(request)
        if self.on_put is not None:
            self.on_put(request)
        return NOT_DONE_YET

    def render_POST(self, request: StreamingRequest) -> bytes:
        assert request.content is not None
        return b"got:" + request.content.read()


def stream_puts(request: Any) -> bool:
    return bool(request.method == b"PUT")


def connect(
    resource: Resource | None = None, **site_args: Any
) -> tuple[S3Site, S3Channel, StringTransport, MemoryReactorClock, Recorder]:
    clock = MemoryReactorClock()
    recorder = resource if isinstance(resource, Recorder) else Recorder()
    site = S3Site(recorder, stream_puts, clock=clock, **site_args)
    channel = site.buildProtocol(None)
    transport = StringTransport()
    channel.makeConnection(transport)
    return site, channel, transport, clock, recorder


def put_head(length: int | None, *extra: bytes) -> bytes:
    lines = [b"PUT /bucket/key HTTP/1.1", b"Host: example"]
    framing = b"Transfer-Encoding: chunked" if length is None else b"Content-Length: %d" % length
    lines.append(framing)
    lines.extend(extra)
    return b"\r\n".join(lines) + b"\r\n\r\n"


PENDING = object()


def outcome(deferred: Deferred[Any]) -> Any:
    """The result or Failure a Deferred already has, or PENDING; a Failure is consumed."""
    results: list[Any] = []

    def keep(result: Any) -> Any:
        results.append(result)
        return None if isinstance(result, Failure) else result

    deferred.addBoth(keep)
    return results[0] if results else PENDING


PAYLOAD = bytes(random.Random(7).randbytes(100_000))
CHUNK = 10_000


def test_streamed_put_runs_before_the_body_and_feeds_a_consumer_as_bytes_arrive() -> None:
    _, channel, transport, _, recorder = connect()
    channel.dataReceived(put_head(len(PAYLOAD)))
    assert len(recorder.requests) == 1, "render_PUT must run after the headers alone"
    request = recorder.requests[0]
    assert request.method == b"PUT" and request.path == b"/bucket/key"
    assert request.body is not None and request.body.length == len(PAYLOAD)
    sink = Sink()
    done = request.body.startProducing(sink)
    for offset in range(0, 30_000, CHUNK):
        channel.dataReceived(PAYLOAD[offset : offset + CHUNK])
    # Everything but the newest chunk (held back until the end is verified) is through.
    assert sink.data == PAYLOAD[:20_000]

    request.body.pauseProducing()
    assert transport.producerState == "paused"
    channel.dataReceived(PAYLOAD[30_000:40_000])  # already in flight when we paused
    assert sink.data == PAYLOAD[:20_000]
    request.body.resumeProducing()
    assert transport.producerState == "producing"
    assert sink.data == PAYLOAD[:30_000]

    channel.dataReceived(PAYLOAD[40_000:-CHUNK])
    assert outcome(done) is PENDING, "must not fire before the last byte"
    channel.dataReceived(PAYLOAD[-CHUNK:])
    assert outcome(done) is None
    assert sink.data == PAYLOAD
    assert request.body.complete and request.body.bytes_received == len(PAYLOAD)


def test_args_keep_a_parameter_without_a_value_streamed_or_buffered() -> None:
    """``request.args`` comes from the front's one query parser: ``?uploads`` is there with an
    empty value (twisted.web's own parser dropped it), for a streamed PUT and a buffered POST."""
    _, channel, _, _, recorder = connect()
    channel.dataReceived(
        b"PUT /bucket/key?uploads&prefix=a+b HTTP/1.1\r\nHost: example\r\n"
        b"Content-Length: 1\r\n\r\n"
    )
    assert recorder.requests[0].args == {b"uploads": [b""], b"prefix": [b"a b"]}
    seen: list[Any] = []
    original = recorder.render_POST

    def render_POST(request: StreamingRequest) -> bytes:
        seen.append(request.args)
        return original(request)

    recorder.render_POST = render_POST  # type: ignore[method-assign]
    _, channel, _, _, _ = connect(recorder)
    channel.dataReceived(
        b"POST /bucket?delete HTTP/1.1\r\nHost: example\r\nContent-Length: 2\r\n\r\nhi"
    )
    assert seen == [{b"delete": [b""]}]


def test_start_producing_fires_only_after_the_final_bytes() -> None:
    _, channel, _, _, recorder = connect()
    channel.dataReceived(put_head(len(PAYLOAD)))
    body = recorder.requests[0].body
    assert body is not None
    fired: list[Any] = []
    body.startProducing(Sink()).addBoth(fired.append)
    channel.dataReceived(PAYLOAD[:-1])
    assert fired == []
    channel.dataReceived(PAYLOAD[-1:])
    assert fired == [None]


def test_unconsumed_body_pauses_the_client_beyond_the_buffer() -> None:
    _, channel, transport, _, recorder = connect(body_buffer=64 << 10)
    channel.dataReceived(put_head(len(PAYLOAD) * 4))
    body = recorder.requests[0].body
    assert body is not None
    data = PAYLOAD * 4
    sent = 0
    # A real socket stops delivering once paused; send only while the transport reads.
    while transport.producerState == "producing" and sent < len(data):
        channel.dataReceived(data[sent : sent + 8192])
        sent += 8192
    assert transport.producerState == "paused"
    assert body.buffered <= (64 << 10) + 8192
    sink = Sink()
    done = body.startProducing(sink)
    assert transport.producerState == "producing"
    for offset in range(sent, len(data), 8192):
        channel.dataReceived(data[offset : offset + 8192])
    assert outcome(done) is None
    assert sink.data == data
    assert body.peak_buffered <= (64 << 10) + 8192


def test_wrong_content_md5_fails_and_withholds_the_final_chunk() -> None:
    _, channel, transport, _, recorder = connect()
    channel.dataReceived(put_head(len(PAYLOAD)))
    request = recorder.requests[0]
    body = request.body
    assert body is not None
    body.add_filter(ContentMD5Filter("1B2M2Y8AsgTpgAmY7PhCfg=="))  # MD5 of the empty string
    sink = Sink()
    done = body.startProducing(sink)
    for offset in range(0, len(PAYLOAD), CHUNK):
        channel.dataReceived(PAYLOAD[offset : offset + CHUNK])
    failure = outcome(done)
    assert isinstance(failure, Failure) and failure.check(S3Error)
    assert failure.value.code == "BadDigest"
    # The backend never saw a complete object: the last chunk was held back.
    assert sink.data == PAYLOAD[:-CHUNK]
    request.respond_error(failure.value)
    assert b"<Code>BadDigest</Code>" in transport.value()


def test_right_content_md5_delivers_everything() -> None:
    _, channel, _, _, recorder = connect()
    channel.dataReceived(put_head(len(PAYLOAD)))
    body = recorder.requests[0].body
    assert body is not None
    digest = hashlib.md5(PAYLOAD).digest()
    body.add_filter(ContentMD5Filter(base64.b64encode(digest).decode()))
    sink = Sink()
    done = body.startProducing(sink)
    channel.dataReceived(PAYLOAD)
    assert outcome(done) is None
    assert sink.data == PAYLOAD


def test_early_error_closes_the_connection_and_never_parses_the_body_as_a_request() -> None:
    def deny(request: StreamingRequest) -> None:
        request.prepare_early_response()
        request.respond_error(errors.AccessDenied())

    recorder = Recorder()
    recorder.on_put = deny
    _, channel, transport, _, _ = connect(recorder)
    smuggled = b"GET /other HTTP/1.1\r\nHost: example\r\n\r\n"
    body = smuggled * 10
    channel.dataReceived(put_head(len(body)))
    channel.dataReceived(body)
    channel.dataReceived(smuggled)  # a pipelined request after the body: also ignored
    response = transport.value()
    assert response.count(b"HTTP/1.1 ") == 1, response
    assert response.startswith(b"HTTP/1.1 403 ")
    assert b"Connection: close" in response
    assert b"<Code>AccessDenied</Code>" in response
    assert transport.disconnecting


def test_late_answer_before_the_body_ended_also_closes_the_connection() -> None:
    _, channel, transport, _, recorder = connect()
    body = b"GET /x HTTP/1.1\r\nHost: e\r\n\r\n" * 100
    channel.dataReceived(put_head(len(body)))
    channel.dataReceived(body[:500])
    request = recorder.requests[0]
    # The front forgot prepare_early_response(): the first write must still protect us.
    request.respond_error(errors.ServiceUnavailable())
    assert request.body is not None
    assert isinstance(outcome(request.body.startProducing(Sink())), Failure)
    channel.dataReceived(body[500:])
    response = transport.value()
    assert response.count(b"HTTP/1.1 ") == 1
    assert b"Connection: close" in response
    assert transport.disconnecting


def test_expect_continue_is_not_sent_before_an_early_error() -> None:
    def deny(request: StreamingRequest) -> None:
        request.prepare_early_response()
        request.respond_error(errors.AccessDenied())

    recorder = Recorder()
    recorder.on_put = deny
    _, channel, transport, _, _ = connect(recorder)
    channel.dataReceived(put_head(10, b"Expect: 100-continue"))
    response = transport.value()
    assert response.startswith(b"HTTP/1.1 403 "), response
    assert b"100 Continue" not in response


def test_expect_continue_is_sent_once_the_body_is_wanted() -> None:
    _, channel, transport, clock, recorder = connect()
    channel.dataReceived(put_head(5, b"Expect: 100-continue"))
    assert transport.value() == b""
    body = recorder.requests[0].body
    assert body is not None
    clock.advance(300)  # the client waits for our 100: that is no stall
    sink = Sink()
    done = body.startProducing(sink)
    assert transport.value() == b"HTTP/1.1 100 Continue\r\n\r\n"
    channel.dataReceived(b"hello")
    assert outcome(done) is None and sink.data == b"hello"
    assert transport.value().count(b"100 Continue") == 1


def test_expect_continue_for_a_buffered_request_is_sent_at_once() -> None:
    _, channel, transport, _, _ = connect()
    channel.dataReceived(
        b"POST /bucket?delete HTTP/1.1\r\nHost: e\r\nContent-Length: 5\r\n"
        b"Expect: 100-continue\r\n\r\n"
    )
    assert transport.value() == b"HTTP/1.1 100 Continue\r\n\r\n"
    channel.dataReceived(b"hello")
    assert transport.value().endswith(b"got:hello")


def test_idle_timeout_spares_a_paused_body_and_the_stall_timer_catches_a_silent_client() -> None:
    _, channel, transport, clock, recorder = connect(read_timeout=30.0, idle_timeout=60.0)
    channel.dataReceived(put_head(len(PAYLOAD)))
    request = recorder.requests[0]
    body = request.body
    assert body is not None
    done = body.startProducing(Sink())
    channel.dataReceived(PAYLOAD[:CHUNK])
    body.pauseProducing()  # the backend is slow
    clock.advance(1000)
    assert not transport.disconnecting, "the idle timeout fired during backpressure"
    assert not done.called
    body.resumeProducing()
    clock.advance(29)
    channel.dataReceived(PAYLOAD[CHUNK : 2 * CHUNK])  # activity resets the stall timer
    clock.advance(29)
    assert not done.called
    clock.advance(2)
    failure = outcome(done)
    assert isinstance(failure, Failure) and failure.value.code == "RequestTimeout"
    request.respond_error(failure.value)
    assert b"Connection: close" in transport.value()


def test_client_disconnect_mid_body() -> None:
    _, channel, _, _, recorder = connect()
    channel.dataReceived(put_head(len(PAYLOAD)))
    request = recorder.requests[0]
    body = request.body
    assert body is not None
    gone = request.notify_disconnect()
    done = body.startProducing(Sink())
    channel.dataReceived(PAYLOAD[:CHUNK])
    channel.connectionLost(Failure(ConnectionDone()))
    failure = outcome(done)
    assert isinstance(failure, Failure) and failure.check(ClientDisconnected)
    assert request.disconnected and gone.called and outcome(gone) is None
    request.write(b"ignored")  # trap 5 of docs/streaming.md: neither raises
    request.finish()
    request.unregisterProducer()
    assert outcome(request.notify_disconnect()) is None


def test_restart_on_another_consumer_while_no_byte_was_handed_out() -> None:
    _, channel, _, _, recorder = connect()
    channel.dataReceived(put_head(len(PAYLOAD)))
    body = recorder.requests[0].body
    assert body is not None
    first = Sink()
    first_done = body.startProducing(first)
    channel.dataReceived(PAYLOAD[:CHUNK])  # held back: nothing reached the first consumer
    assert first.data == b"" and body.restartable()
    body.stopProducing()  # that backend failed
    second = Sink()
    second_done = body.startProducing(second)
    channel.dataReceived(PAYLOAD[CHUNK:])
    assert outcome(second_done) is None and second.data == PAYLOAD
    assert not first_done.called, "a stopped consumer's Deferred must never fire"
    assert not body.restartable()


def test_no_restart_once_bytes_were_consumed() -> None:
    _, channel, _, _, recorder = connect()
    channel.dataReceived(put_head(len(PAYLOAD)))
    body = recorder.requests[0].body
    assert body is not None
    body.startProducing(Sink())
    for offset in range(0, 3 * CHUNK, CHUNK):
        channel.dataReceived(PAYLOAD[offset : offset + CHUNK])
    assert not body.restartable()
    body.stopProducing()
    failure = outcome(body.startProducing(Sink()))
    assert isinstance(failure, Failure) and failure.check(BodyAbandoned)


def test_chunked_upload_streams_with_unknown_length() -> None:
    _, channel, _, _, recorder = connect()
    channel.dataReceived(put_head(None))
    body = recorder.requests[0].body
    assert body is not None and body.length == UNKNOWN_LENGTH
    sink = Sink()
    done = body.startProducing(sink)
    channel.dataReceived(b"5\r\nhello\r\n6\r\n world\r\n")
    assert not done.called
    channel.dataReceived(b"0\r\n\r\n")
    assert done.called and sink.data == b"hello world"


def test_declared_decoded_length_is_enforced() -> None:
    _, channel, _, _, recorder = connect()
    channel.dataReceived(put_head(None))
    body = recorder.requests[0].body
    assert body is not None
    body.length = 20  # as the front does from x-amz-decoded-content-length
    sink = Sink()
    done = body.startProducing(sink)
    channel.dataReceived(b"5\r\nhello\r\n0\r\n\r\n")
    failure = outcome(done)
    assert isinstance(failure, Failure) and failure.value.code == "IncompleteBody"
    assert sink.data == b""


def test_buffered_post_works_as_stock_and_answers_like_s3site() -> None:
    _, channel, transport, _, _ = connect()
    channel.dataReceived(
        b"POST /bucket?delete HTTP/1.1\r\nHost: e\r\nContent-Length: 5\r\n\r\nhello"
    )
    response = transport.value()
    assert response.startswith(b"HTTP/1.1 200 ")
    assert response.endswith(b"got:hello")
    assert b"Server: s3balance" in response
    assert b"x-amz-request-id: " in response.lower() or b"X-Amz-Request-Id: " in response
    assert b"Content-Type" not in response  # no text/html default
    assert not transport.disconnecting


@pytest.mark.parametrize("chunked", [False, True])
def test_oversized_buffered_body_is_refused(chunked: bool) -> None:
    _, channel, transport, _, _ = connect(max_buffered_body=1000)
    if chunked:
        channel.dataReceived(
            b"POST /b?delete HTTP/1.1\r\nHost: e\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        for _ in range(3):
            channel.dataReceived(b"200\r\n" + b"x" * 0x200 + b"\r\n")
    else:
        channel.dataReceived(
            b"POST /b?delete HTTP/1.1\r\nHost: e\r\nContent-Length: 5000\r\n\r\n"
        )
        channel.dataReceived(b"x" * 5000)
    response = transport.value()
    assert response.startswith(b"HTTP/1.1 400 ")
    assert b"<Code>MaxMessageLengthExceeded</Code>" in response
    assert b"Connection: close" in response
    assert response.count(b"HTTP/1.1 ") == 1
    assert transport.disconnecting


def test_http2_is_never_offered_and_header_limits_stay() -> None:
    site, channel, transport, _, _ = connect()
    assert site.acceptableProtocols() == [b"http/1.1"]
    assert type(channel) is S3Channel
    channel.dataReceived(
        b"GET / HTTP/1.1\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(channel.maxHeaders + 1))
        + b"\r\n"
    )
    assert transport.value().startswith(b"HTTP/1.1 400 ")


def test_access_log_line_per_request() -> None:
    events: list[dict[str, Any]] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_namespace") == "s3balance.access":
            events.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        _, channel, _, _, recorder = connect()
        channel.dataReceived(put_head(5))
        request = recorder.requests[0]
        assert request.body is not None
        request.body.startProducing(Sink())
        channel.dataReceived(b"hello")
        request.setHeader(b"Content-Length", b"2")
        request.write(b"ok")
        request.finish()
    finally:
        globalLogPublisher.removeObserver(observe)
    assert len(events) == 1
    event = events[0]
    assert (event["method"], event["path"], event["status"]) == ("PUT", "/bucket/key", 200)
    assert (event["bytes_in"], event["bytes_out"]) == (5, 2)
    assert event["request_id"] == request.request_id and len(request.request_id) == 16
    assert event["client"] == "192.168.1.1:54321"


def test_body_unit_without_channel_hold_back_and_stall() -> None:
    clock = MemoryReactorClock()
    body = RequestBody(6, clock=clock, read_timeout=5.0)
    sink = Sink()
    done = body.startProducing(sink)
    body.receive(b"abc")
    body.receive(b"def")
    assert sink.data == b"abc"
    body.end_of_input()
    assert outcome(done) is None and sink.data == b"abcdef"
    stalled = RequestBody(6, clock=clock, read_timeout=5.0)
    waiting = stalled.startProducing(Sink())
    clock.advance(6)
    failure = outcome(waiting)
    assert isinstance(failure, Failure) and failure.value.code == "RequestTimeout"


class StreamingLoopback(TestCase):
    """64 MiB through a real socket into a slow consumer, with bounded memory."""

    timeout = 60

    def test_64_mib_put_streams_with_bounded_buffer(self) -> Deferred[None]:
        size = 64 << 20
        state: dict[str, Any] = {}

        @implementer(IConsumer)
        class SlowHasher:
            """Pauses its producer after every write and resumes on the next reactor turn."""

            def __init__(self, producer: RequestBody) -> None:
                self.producer = producer
                self.md5 = hashlib.md5()
                self.count = 0
                self.pauses = 0

            def registerProducer(self, producer: Any, streaming: bool) -> None:
                pass

            def unregisterProducer(self) -> None:
                pass

            def write(self, data: bytes) -> None:
                self.md5.update(data)
                self.count += len(data)
                self.pauses += 1
                self.producer.pauseProducing()
                reactor.callLater(0, self.producer.resumeProducing)  # type: ignore[attr-defined]

        class Upload(Resource):
            isLeaf = True

            def render_PUT(self, request: StreamingRequest) -> Any:
                body = request.body
                assert body is not None
                consumer = SlowHasher(body)
                state["body"], state["consumer"] = body, consumer

                def answer(_: object) -> None:
                    digest = consumer.md5.hexdigest().encode()
                    request.setHeader(b"Content-Length", b"%d" % len(digest))
                    request.write(digest)
                    request.finish()

                body.startProducing(consumer).addCallback(answer)
                return NOT_DONE_YET

        site = S3Site(Upload(), stream_puts, clock=reactor)  # type: ignore[arg-type]
        port = reactor.listenTCP(0, site, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        port_number = port.getHost().port

        def client() -> tuple[int, bytes, str]:
            generator = random.Random(64)
            expected = hashlib.md5()
            connection = http.client.HTTPConnection("127.0.0.1", port_number, timeout=30)
            try:
                connection.putrequest("PUT", "/bucket/big")
                connection.putheader("Content-Length", str(size))
                connection.endheaders()
                for _ in range(size // (1 << 20)):
                    chunk = generator.randbytes(1 << 20)
                    expected.update(chunk)
                    connection.send(chunk)
                response = connection.getresponse()
                return response.status, response.read(), expected.hexdigest()
            finally:
                connection.close()

        async def run() -> None:
            status, answer, expected = await threads.deferToThread(client)
            assert status == 200
            assert answer.decode() == expected
            assert state["consumer"].count == size
            assert state["consumer"].pauses > 0
            assert state["body"].peak_buffered < (1 << 20), state["body"].peak_buffered

        return ensureDeferred(run())


def test_draining_our_write_buffer_does_not_resume_a_client_held_by_the_body() -> None:
    _, channel, transport, _, recorder = connect()
    channel.dataReceived(put_head(len(PAYLOAD), b"Expect: 100-continue"))
    body = recorder.requests[0].body
    assert body is not None
    body.startProducing(Sink())
    body.pauseProducing()
    channel.pauseProducing()  # our write buffer filled (the 100 Continue)...
    channel.resumeProducing()  # ...and drained: the backend still wants the client paused
    assert transport.producerState == "paused"
    body.resumeProducing()
    assert transport.producerState == "producing"
