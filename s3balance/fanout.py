"""One body producer written to several consumers at once: the upload of an object's replicas.

A replicated write hands each backend a :class:`Branch` of one :class:`FanOut`.  The source (the
client's :class:`~s3balance.web.requestbody.RequestBody`, or a backend's GET stream for a copy)
starts only once every branch was started, so no branch misses a byte and nothing is buffered for
a late one.  Every byte the source writes goes to every branch's consumer at once; any branch's
consumer pausing pauses the source, and it resumes only when all of them want more, so the body
flows at the pace of the slowest backend and the client is paced by it (no copy of the body is
kept: only the chunk being written is in memory).

All or nothing: when one branch's consumer gives up (its backend connection broke), or the caller
:meth:`FanOut.abort`\\ s, the source is stopped and every other branch fails with
:class:`ReplicaLost`, so each backend aborts its upload before the last byte (the hold-back rule
of docs/streaming.md) and keeps nothing.  When the source fails, every branch fails with the
source's own error.

With a ``quorum`` below the number of branches (``write_quorum``), a branch that gives up (or that
the caller :meth:`FanOut.lose`\\ s) is only dropped while at least ``quorum`` are left: the others
go on (no longer waiting for it to start or paced by it), and only losing one more aborts all.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IConsumer
from twisted.python.failure import Failure
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

__all__ = ["Branch", "FanOut", "ReplicaLost"]


class ReplicaLost(Exception):
    """Another copy of the same write failed, so this one is abandoned too."""


@implementer(IConsumer)
class FanOut:
    """Writes ``source`` to ``count`` consumers; hand :attr:`branches` to the backends.

    :param source: produces the body once; its ``length`` is each branch's.
    :param quorum: how many branches must live on (default: all of them).
    """

    def __init__(self, source: IBodyProducer, count: int, quorum: int | None = None) -> None:
        if count < 1:
            raise ValueError("a fan-out needs at least one branch")
        self.quorum = count if quorum is None else max(1, min(quorum, count))
        self.source = source
        self.length = source.length
        self.branches = [Branch(self, index) for index in range(count)]
        #: Bytes the source wrote so far (each went to every branch).
        self.written = 0
        self._source_started = False
        self._source_paused = False
        self._failure: Failure | None = None
        self._finished = False

    # -- the source's consumer ---------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self._failure is not None or not data:
            return
        self.written += len(data)
        for branch in self.branches:
            branch.deliver(data)
            if self._failure is not None:
                return  # a consumer gave up while being written to

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        pass  # the source is known; pausing it is decided by the branches

    def unregisterProducer(self) -> None:
        pass

    # -- all or nothing ----------------------------------------------------------------------

    @property
    def failed(self) -> bool:
        return self._failure is not None

    def restartable(self) -> bool:
        """Whether another fan-out could still send the whole body (no byte went out)."""
        if self.written:
            return False
        check = getattr(self.source, "restartable", None)
        return bool(check()) if callable(check) else not self._source_started

    def abort(self, reason: BaseException) -> None:
        """Give up the write: stop the source and fail every branch still running with
        ``reason`` (the backends abort their uploads)."""
        if self._failure is not None or self._finished:
            return
        self._failure = Failure(reason)
        if self._source_started:
            self.source.stopProducing()
        for branch in self.branches:
            branch.fail(self._failure)

    def lose(self, branch: Branch) -> None:
        """``branch``'s backend failed: drop it while the quorum holds, else abort all."""
        if branch.lost or self._failure is not None or self._finished:
            return
        if sum(not b.lost for b in self.branches) - 1 < self.quorum:
            self.abort(ReplicaLost(f"replica {branch.index + 1} of {len(self.branches)} failed"))
            return
        branch.lost = True
        branch.fail(Failure(ReplicaLost(f"replica {branch.index + 1} was dropped")))
        branch.paused = False
        self._branch_started()
        self._flow_changed()

    def _branch_stopped(self, branch: Branch) -> None:
        self.lose(branch)

    def _branch_started(self) -> None:
        if self._source_started or self._failure is not None:
            return
        if not all(branch.started or branch.lost for branch in self.branches):
            return
        self._source_started = True
        done = self.source.startProducing(self)
        done.addCallbacks(self._source_done, self._source_failed)

    def _source_done(self, _: object) -> None:
        if self._failure is not None:
            return
        self._finished = True
        for branch in self.branches:
            branch.succeed()

    def _source_failed(self, failure: Failure) -> None:
        if self._failure is not None:
            return
        self._failure = failure
        for branch in self.branches:
            branch.fail(failure)

    def _flow_changed(self) -> None:
        """Pause the source iff some branch's consumer is full."""
        if not self._source_started or self._failure is not None or self._finished:
            return
        paused = any(branch.paused for branch in self.branches)
        if paused and not self._source_paused:
            self._source_paused = True
            self.source.pauseProducing()
        elif not paused and self._source_paused:
            self._source_paused = False
            self.source.resumeProducing()


@implementer(IBodyProducer)
class Branch:
    """The body as one backend sees it: an ``IBodyProducer`` of the whole length."""

    def __init__(self, fanout: FanOut, index: int) -> None:
        self.fanout = fanout
        self.index = index
        self.length = fanout.length
        self.started = False
        self.paused = False
        #: Dropped from a write with a quorum (:meth:`FanOut.lose`).
        self.lost = False
        self._consumer: IConsumer | None = None
        self._done: Deferred[None] | None = None

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        if self.fanout._failure is not None:
            return fail(self.fanout._failure)
        if self.lost:
            return fail(ReplicaLost(f"replica {self.index + 1} was dropped"))
        if self.started:
            raise RuntimeError("a replica's body cannot be started twice")
        self.started = True
        self._consumer = consumer
        done: Deferred[None] = Deferred()
        self._done = done
        self.fanout._branch_started()
        return done

    def pauseProducing(self) -> None:
        self.paused = True
        self.fanout._flow_changed()

    def resumeProducing(self) -> None:
        self.paused = False
        self.fanout._flow_changed()

    def stopProducing(self) -> None:
        """The backend gave up: its Deferred never fires, and the whole write is abandoned
        (with a quorum: this branch is dropped while enough are left)."""
        self._consumer = None
        self._done = None
        self.paused = False
        self.fanout._branch_stopped(self)

    def restartable(self) -> bool:
        return self.fanout.restartable()

    # -- called by the fan-out ---------------------------------------------------------------

    def deliver(self, data: bytes) -> None:
        if self._consumer is not None:
            self._consumer.write(data)

    def succeed(self) -> None:
        done, self._done = self._done, None
        self._consumer = None
        if done is not None:
            done.callback(None)

    def fail(self, failure: Failure) -> None:
        done, self._done = self._done, None
        self._consumer = None
        if done is not None:
            done.errback(failure)
