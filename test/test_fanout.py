"""The replica fan-out: one client body into several backends at once, all or nothing, paced by
the slowest, never buffered whole."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IConsumer
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from zope.interface import implementer

from s3balance.backends.interface import BackendNoSuchKey
from s3balance.backends.memory import MemoryBackend
from s3balance.fanout import FanOut, ReplicaLost
from s3balance.web.requestbody import BodyAbandoned, RequestBody

pytestmark = pytest.mark.timeout(60)

PENDING = object()
CHUNK = 4096
PAYLOAD = bytes(range(256)) * 64  # 16 KiB: four chunks


def outcome(deferred: Deferred[Any]) -> Any:
    """The result or Failure a Deferred already has, or PENDING; a Failure is consumed."""
    results: list[Any] = []

    def keep(result: Any) -> None:
        results.append(result)

    deferred.addBoth(keep)
    return results[0] if results else PENDING


@implementer(IConsumer)
class PausingSink:
    """A backend connection whose buffer fills after every write until :meth:`drain`."""

    def __init__(self, producer: Any) -> None:
        self.producer = producer
        self.data = b""

    def write(self, data: bytes) -> None:
        self.data += data
        self.producer.pauseProducing()

    def drain(self) -> None:
        self.producer.resumeProducing()

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass


def body(length: int = len(PAYLOAD)) -> tuple[RequestBody, MemoryReactorClock]:
    clock = MemoryReactorClock()
    return RequestBody(length, clock=clock, read_timeout=30.0), clock


def feed(source: RequestBody, data: bytes = PAYLOAD, end: bool = True) -> None:
    for offset in range(0, len(data), CHUNK):
        source.receive(data[offset : offset + CHUNK])
    if end:
        source.end_of_input()


def stored(backend: MemoryBackend, key: str, clock: MemoryReactorClock) -> bytes | None:
    """What ``backend`` holds under ``key`` (None: nothing), its stream run on ``clock``."""
    reading = ensureDeferred(_stored(backend, key))
    for _ in range(1000):
        if reading.called:
            break
        clock.advance(1)
    return outcome(reading)


async def _stored(backend: MemoryBackend, key: str) -> bytes | None:
    try:
        stream = await backend.get_object(key)
    except BackendNoSuchKey:
        return None
    received: list[bytes] = []
    done: Deferred[None] = Deferred()

    class Collect:
        def makeConnection(self, transport: Any) -> None:
            pass

        def dataReceived(self, data: bytes) -> None:
            received.append(data)

        def connectionLost(self, reason: Failure) -> None:
            done.callback(None)

    stream.deliverBody(Collect())
    await done
    return b"".join(received)


def test_every_backend_gets_the_whole_body_once_all_started() -> None:
    clock = MemoryReactorClock()
    backends = [MemoryBackend(f"m{i}", clock) for i in range(3)]
    source, _ = body()
    fan = FanOut(source, 3)
    puts = [
        ensureDeferred(backend.put_object("k", fan.branches[i], len(PAYLOAD), {}, {}))
        for i, backend in enumerate(backends[:2])
    ]
    feed(source, end=False)
    assert fan.written == 0, "the source waits for the last replica to start"
    puts.append(ensureDeferred(backends[2].put_object("k", fan.branches[2], len(PAYLOAD), {}, {})))
    source.end_of_input()
    etag = f'"{hashlib.md5(PAYLOAD).hexdigest()}"'
    assert [outcome(put).etag for put in puts] == [etag] * 3
    for backend in backends:
        assert stored(backend, "k", clock) == PAYLOAD


def test_the_slowest_backend_paces_the_source() -> None:
    source, _ = body()
    fan = FanOut(source, 2)
    fast, slow = fan.branches
    fast_sink = PausingSink(fast)
    slow_sink = PausingSink(slow)
    fast_done = fast.startProducing(fast_sink)
    slow_done = slow.startProducing(slow_sink)
    feed(source)
    # The first chunk is held back until the next arrives; then every consumer paused.
    assert fan.written == CHUNK and source.buffered > len(PAYLOAD) - 3 * CHUNK
    fast_sink.drain()
    assert fan.written == CHUNK, "one replica still full: the source stays paused"
    slow_sink.drain()
    assert fan.written == 2 * CHUNK
    for _ in range(8):
        fast_sink.drain()
        slow_sink.drain()
    assert fast_sink.data == slow_sink.data == PAYLOAD
    assert outcome(fast_done) is None and outcome(slow_done) is None


def test_a_replica_failing_mid_body_fails_them_all_and_none_keeps_the_object() -> None:
    clock = MemoryReactorClock()
    kept = MemoryBackend("kept", clock)
    source, _ = body()
    fan = FanOut(source, 2)
    put = ensureDeferred(kept.put_object("k", fan.branches[0], len(PAYLOAD), {}, {}))
    broken = PausingSink(fan.branches[1])
    broken_done = fan.branches[1].startProducing(broken)
    feed(source, end=False)
    broken.drain()
    fan.branches[1].stopProducing()  # its connection broke
    failure = outcome(put)
    assert isinstance(failure, Failure) and failure.check(ReplicaLost)
    assert outcome(broken_done) is PENDING, "a stopped consumer's Deferred never fires"
    assert stored(kept, "k", clock) is None
    assert fan.failed and not fan.restartable()
    # The client body is abandoned: nothing more is read from it.
    assert isinstance(outcome(source.startProducing(PausingSink(source))), Failure)


def test_a_failing_body_fails_every_replica_with_its_own_error() -> None:
    clock = MemoryReactorClock()
    backends = [MemoryBackend(f"m{i}", clock) for i in range(2)]
    source, _ = body(len(PAYLOAD) + 1)  # the client sends one byte less than it declared
    fan = FanOut(source, 2)
    puts = [
        ensureDeferred(backend.put_object("k", fan.branches[i], fan.length, {}, {}))
        for i, backend in enumerate(backends)
    ]
    feed(source)
    for put in puts:
        failure = outcome(put)
        assert (
            isinstance(failure, Failure) and getattr(failure.value, "code", "") == "IncompleteBody"
        )
    for backend in backends:
        assert stored(backend, "k", clock) is None


def test_abort_before_the_body_started_leaves_the_body_for_another_try() -> None:
    clock = MemoryReactorClock()
    source, _ = body()
    fan = FanOut(source, 2)
    first = fan.branches[0].startProducing(PausingSink(fan.branches[0]))
    fan.abort(ReplicaLost("the second backend refused the connection"))
    assert isinstance(outcome(first), Failure)
    assert isinstance(
        outcome(fan.branches[1].startProducing(PausingSink(fan.branches[1]))), Failure
    )
    assert fan.restartable() and source.restartable()
    retry = FanOut(source, 1)
    backend = MemoryBackend("next", clock)
    put = ensureDeferred(backend.put_object("k", retry.branches[0], len(PAYLOAD), {}, {}))
    feed(source)
    assert outcome(put).size == len(PAYLOAD)


def test_stopping_the_source_is_abandoning_it() -> None:
    source, _ = body()
    fan = FanOut(source, 1)
    done = fan.branches[0].startProducing(PausingSink(fan.branches[0]))
    feed(source, end=False)
    fan.abort(ReplicaLost("gone"))
    assert outcome(done).check(ReplicaLost)
    failure = outcome(source.startProducing(PausingSink(source)))
    assert isinstance(failure, Failure) and failure.check(BodyAbandoned)


def test_no_branches_is_a_mistake() -> None:
    source, _ = body()
    with pytest.raises(ValueError):
        FanOut(source, 0)


def test_with_a_quorum_a_replica_failing_mid_body_is_dropped_and_the_others_finish() -> None:
    clock = MemoryReactorClock()
    kept = MemoryBackend("kept", clock)
    source, _ = body()
    fan = FanOut(source, 3, quorum=2)
    put = ensureDeferred(kept.put_object("k", fan.branches[0], len(PAYLOAD), {}, {}))
    slow = PausingSink(fan.branches[1])
    slow_done = fan.branches[1].startProducing(slow)
    broken = PausingSink(fan.branches[2])
    fan.branches[2].startProducing(broken)
    feed(source, end=False)
    broken.drain()
    fan.branches[2].stopProducing()  # its connection broke: dropped, the write goes on
    assert not fan.failed
    for _ in range(10):
        slow.drain()
    feed(source, data=b"", end=True)
    assert outcome(put) is not PENDING and not isinstance(outcome(put), Failure)
    assert stored(kept, "k", clock) == PAYLOAD
    assert slow.data == PAYLOAD and outcome(slow_done) is None
    assert len(broken.data) < len(PAYLOAD)


def test_with_a_quorum_a_replica_refused_before_the_body_does_not_hold_the_others() -> None:
    clock = MemoryReactorClock()
    kept = MemoryBackend("kept", clock)
    source, _ = body()
    fan = FanOut(source, 2, quorum=1)
    put = ensureDeferred(kept.put_object("k", fan.branches[0], len(PAYLOAD), {}, {}))
    fan.lose(fan.branches[1])  # its backend refused the connection before starting
    feed(source)
    assert stored(kept, "k", clock) == PAYLOAD
    assert not isinstance(outcome(put), Failure)
    assert isinstance(outcome(fan.branches[1].startProducing(PausingSink(None))), Failure)


def test_losing_more_replicas_than_the_quorum_allows_fails_them_all() -> None:
    clock = MemoryReactorClock()
    kept = MemoryBackend("kept", clock)
    source, _ = body()
    fan = FanOut(source, 3, quorum=2)
    put = ensureDeferred(kept.put_object("k", fan.branches[0], len(PAYLOAD), {}, {}))
    fan.lose(fan.branches[1])
    assert not fan.failed
    fan.lose(fan.branches[2])
    assert fan.failed
    failure = outcome(put)
    assert isinstance(failure, Failure) and failure.check(ReplicaLost)
