"""What the tests of data-moving jobs (drain, rebalance) check after a job: that it ended, that
every object reads back whole from each copy, and that nothing was left behind."""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor, task

from s3balance.db.records import JobRecord, ObjectRecord
from s3balance.reads import ReadRequest
from s3balance.scrub import ScrubReport, scrub
from test.support.bodies import collect
from test.support.daemon import Daemon

#: Seconds between two looks at a job's state.
POLL = 0.05


async def job_finished(daemon: Daemon, job_id: int, seconds: float) -> JobRecord:
    """The job once it is no longer queued or running (bounded wait).

    :raises AssertionError: it still runs after ``seconds``.
    """
    record = None
    for _ in range(int(seconds / POLL)):
        record = await daemon.store.get_job(job_id)
        assert record is not None
        if record.state not in ("queued", "running"):
            return record
        await task.deferLater(reactor, POLL, lambda: None)  # type: ignore[arg-type]
    raise AssertionError(f"job {job_id} still {record and record.state} after {seconds}s")


async def assert_reads_back(daemon: Daemon, bucket: str, key: str, data: bytes) -> ObjectRecord:
    """``key`` reads back as ``data`` from each copy, with the content type (``text/x-k``) and
    metadata (``m``: the key) the job tests write, and through the gateway; its row."""
    record = await daemon.store.get_object(bucket, key)
    assert record is not None, key
    for location in record.locations:
        backend = daemon.backends[location.backend]
        assert await collect(await backend.get_object(location.real_key)) == data, location
        info = await backend.head_object(location.real_key)
        assert info.headers.get("content-type") == "text/x-k", location
        assert info.metadata.get("m") == key, location
    plan = await daemon.gateway.read(bucket, key, ReadRequest(with_body=True))
    async with plan:
        assert plan.stream is not None
        assert await collect(plan.stream) == data, key
    return record


async def scrubbed(daemon: Daemon) -> ScrubReport:
    """What scrub finds (without removing anything); it must find no error."""
    found = await scrub(daemon.store, daemon.backends, remove_orphans=False, grace=0)
    assert found.errors == []
    return found


def orphans_of(report: ScrubReport) -> list[Any]:
    """The bytes on the backends that no row names."""
    return [orphan for b in report.backends.values() for orphan in b.orphans]
