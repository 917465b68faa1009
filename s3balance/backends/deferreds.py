"""Deferred plumbing the adapters share: :class:`IBackend` methods return Deferreds, adapters
write coroutines."""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine
from typing import Any, Concatenate, ParamSpec, TypeVar

from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.python.failure import Failure

from s3balance.backends.interface import BackendUnavailable

_P = ParamSpec("_P")
_T = TypeVar("_T")
_S = TypeVar("_S")


def returns_deferred(
    method: Callable[Concatenate[_S, _P], Coroutine[Any, Any, _T]],
) -> Callable[Concatenate[_S, _P], Deferred[_T]]:
    """Make an ``async def`` method return a Deferred, as :class:`IBackend` promises; other
    coroutines of the adapter may still ``await`` it."""

    @functools.wraps(method)
    def started(self: _S, *args: _P.args, **kwargs: _P.kwargs) -> Deferred[_T]:
        return Deferred.fromCoroutine(method(self, *args, **kwargs))

    return started


def probe_within(
    backend: str, probing: Deferred[None], timeout: float, reactor: Any
) -> Deferred[None]:
    """``probing``, cancelled after ``timeout`` seconds and then failing as the backend's
    unavailability (a probe that hangs is a backend that is not serving)."""
    probing.addTimeout(timeout, reactor)

    def timed_out(failure: Failure) -> Failure:
        if failure.check(TimeoutError, CancelledError):
            return Failure(BackendUnavailable(backend, f"probe took longer than {timeout}s"))
        return failure

    return probing.addErrback(timed_out)
