"""The guard every streamed body passes on its way into the HTTP client, towards a backend.

It is the backend end of the rule that a failed body never reaches a backend complete
(docs/streaming.md): the last byte is held back until the body's own Deferred succeeded.  It also
checks the declared length, tells whether any byte went out (whether a write may be retried on
another backend), runs the stall watch only while the backend is the one not reading, and may
hash what passes (:mod:`s3balance.backends.uploadmd5`).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer
from twisted.python.failure import Failure
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from s3balance.backends.interface import BackendError
from s3balance.backends.uploadmd5 import RunningMD5, md5_for
from s3balance.net.stallwatch import StallWatch


class BodyLengthMismatch(BackendError):
    """The body producer wrote more or fewer bytes than the length it was given with."""


@implementer(IBodyProducer)
class GuardedBody:
    """Wraps the caller's body producer on its way into the HTTP client's connection.

    It records whether any byte was consumed (``started``, for ``body_started``), keeps the
    body's own failure (re-raised unchanged), runs the stall watch only while the connection
    has paused us (the backend is not reading), and holds back the last byte until the body's
    Deferred succeeds: if the body fails at the very end (a bad checksum found after the last
    chunk), the backend never receives the complete body and cannot store it.

    There are two hold-backs on purpose.  :class:`s3balance.web.requestbody.RequestBody` holds
    back the client's last chunk until its filters (digest, signature, aws-chunked decoding) have
    given their verdict; it guards only bodies that come from a client.  This one sits in every
    backend's put path (S3, local, memory) and guards whatever producer it is given, whatever its
    source, together with the declared length.  Neither is removed until tests show the other
    covers every case (short, long, aws-chunked length mismatch, client gone mid-body, for each
    backend).
    """

    def __init__(
        self,
        backend: str,
        inner: IBodyProducer,
        length: int,
        watch: StallWatch,
        hash_body: bool = True,
    ) -> None:
        self.length = length
        self.started = False
        self.failure: Failure | None = None
        self._backend = backend
        self._inner = inner
        self._watch = watch
        self._consumer: IConsumer | None = None
        self._done: Deferred[None] | None = None
        self._sent = 0
        self._held = b""
        #: MD5 of what went out: the ETag when a backend answers a PUT without one.
        self.md5: RunningMD5 | None = md5_for(length) if hash_body else None

    # The connection's side (we are its producer) ----------------------------------------------

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        self._consumer = consumer
        self._done = Deferred()
        done = self._done
        # The body now comes at the client's pace: not the backend's stall.
        self._watch.suspend()
        inner_done = self._inner.startProducing(_InnerConsumer(self))
        inner_done.addCallbacks(self._inner_finished, self._inner_failed)
        return done

    def pauseProducing(self) -> None:
        self._watch.resume()
        self._inner.pauseProducing()

    def resumeProducing(self) -> None:
        self._watch.suspend()
        self._inner.resumeProducing()

    def stopProducing(self) -> None:
        # The connection is gone (or aborted): our Deferred must never fire now.
        self._done = None
        self._inner.stopProducing()

    # The inner producer's side --------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self._done is None or not data:
            return
        self.started = True
        self._watch.touch()
        if self.md5 is not None:
            self.md5.update(data)
        total = self._sent + len(self._held) + len(data)
        if total > self.length:
            self._fail(
                Failure(
                    BodyLengthMismatch(
                        self._backend, f"body longer than the declared {self.length} bytes"
                    )
                )
            )
            self._inner.stopProducing()
            return
        pending = self._held + data
        if total == self.length:
            pending, self._held = pending[:-1], pending[-1:]
        else:
            self._held = b""
        if pending:
            self._sent += len(pending)
            assert self._consumer is not None
            self._consumer.write(pending)

    def _inner_finished(self, _: object) -> None:
        if self._done is None:
            return
        if self._sent + len(self._held) != self.length:
            self._fail(
                Failure(
                    BodyLengthMismatch(
                        self._backend,
                        f"body ended after {self._sent + len(self._held)} of the declared "
                        f"{self.length} bytes",
                    )
                )
            )
            return
        done, self._done = self._done, None
        if self._held:
            assert self._consumer is not None
            self._sent += len(self._held)
            self._consumer.write(self._held)
            self._held = b""
        # From here on the backend has to answer.
        self._watch.resume()
        done.callback(None)

    def _inner_failed(self, failure: Failure) -> None:
        if self._done is None:
            return  # we stopped it ourselves; the outcome is already decided
        self._fail(failure)

    def _fail(self, failure: Failure) -> None:
        if self.failure is None:
            self.failure = failure
        done, self._done = self._done, None
        if done is not None:
            done.errback(failure)


@implementer(IConsumer)
class _InnerConsumer:
    """The consumer the caller's body producer writes to: forwards to :class:`GuardedBody`."""

    def __init__(self, guard: GuardedBody) -> None:
        self._guard = guard

    def write(self, data: bytes) -> None:
        self._guard.write(data)

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass


async def drain_empty(backend: str, body: IBodyProducer, watch: StallWatch) -> None:
    """Run a body declared empty to its end; it must write nothing."""
    guard = GuardedBody(backend, body, 0, watch)
    try:
        await guard.startProducing(NullConsumer())
    finally:
        watch.stop()


@implementer(IConsumer)
class NullConsumer:
    """Where a body declared empty is run: it must write nothing."""

    def write(self, data: bytes) -> None:
        """Never called: :class:`GuardedBody` fails a body that writes past its length."""

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass
