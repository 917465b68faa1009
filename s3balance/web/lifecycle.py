"""One way to run a request's work and finish the request, shared by the S3 front
(:class:`~s3balance.web.resource.S3Resource`) and the admin API
(:class:`~s3balance.admin.api.AdminResource`).

The work is a coroutine; its result goes to the resource's ``answer``, its failure to the
resource's ``fail``, each of which writes a whole response and finishes it.  What neither has to
think about is decided here, once:

- the response is over already (a handler that streamed and finished it, or a client that went
  away): the result is dropped, and a failure is only logged;
- the work failed after the status line went out: no error document can follow it, so the
  connection is aborted (the only honest signal left) unless the response was finished;
- ``answer`` or ``fail`` itself raised: logged, and the connection aborted rather than left
  without an answer.

So a request is finished exactly once, by ``answer``, ``fail`` or a handler that streamed.  The
work is deliberately not cancelled when the client goes away: cancelling a Deferred does not stop
a database transaction already running in its thread, and abandoning a write between a backend's
confirmation and its commit (or a reconfiguration halfway) would leave state disagreeing.  A
client that leaves stops backend work through the data instead (an upload's body fails, a
download's relay stops the backend stream).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from twisted.internet import defer
from twisted.python.failure import Failure
from twisted.web.server import NOT_DONE_YET, Request

from s3balance.logs import make_logger

__all__ = ["abort", "is_over", "serve"]

log = make_logger()

T = TypeVar("T")


def is_over(request: Request) -> bool:
    """Whether nothing more can be written: finished, or the client went away."""
    return bool(request.finished or getattr(request, "disconnected", False))


def abort(request: Request) -> None:
    """Break the connection of a response that cannot be completed (unless it was finished)."""
    channel = getattr(request, "channel", None)
    if not request.finished and channel is not None:
        channel.forceAbortClient()


def serve(
    request: Request,
    work: Coroutine[Any, Any, T],
    answer: Callable[[T], None],
    fail: Callable[[Failure], None],
    describe: Callable[[], str],
) -> Any:
    """Run ``work`` for ``request`` and finish it once (see the module docstring).

    :param answer: writes the work's result and finishes the request.
    :param fail: writes the failure's error response and finishes the request.
    :param describe: names the request in log lines (called only when something is logged).
    :returns: ``NOT_DONE_YET``, for ``render``.
    """
    done = defer.ensureDeferred(work)
    done.addCallbacks(
        lambda result: _answered(request, result, answer),
        lambda failure: _failed(request, failure, fail, describe),
    )
    done.addErrback(_last_resort, request, describe)
    return NOT_DONE_YET


def _answered(request: Request, result: T, answer: Callable[[T], None]) -> None:
    if not is_over(request):
        answer(result)


def _failed(
    request: Request,
    failure: Failure,
    fail: Callable[[Failure], None],
    describe: Callable[[], str],
) -> None:
    if request.startedWriting or request.finished:
        log.info("{request} ended after its answer began: {error}",
                 request=describe(), error=failure.getErrorMessage())  # fmt: skip
        abort(request)
        return
    if getattr(request, "disconnected", False):
        log.info("{request}: the client went away ({error})",
                 request=describe(), error=failure.getErrorMessage())  # fmt: skip
        return
    fail(failure)


def _last_resort(failure: Failure, request: Request, describe: Callable[[], str]) -> None:
    log.failure("answering {request} failed", failure, request=describe())
    abort(request)
