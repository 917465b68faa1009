"""``s3balance jobs ...`` and ``s3balance drain NAME``: jobs from the command line, through the
database (see :mod:`s3balance.cli` for why not through the admin API)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from s3balance.config import Config
from s3balance.db.records import JobRecord
from s3balance.db.store import JobStateError, MetadataStore
from s3balance.jobs import job_document

EXIT_DONE = 0
EXIT_REFUSED = 1
EXIT_ERROR = 2


async def run_jobs_command(
    store: MetadataStore, config: Config, reactor: Any, arguments: argparse.Namespace
) -> int:
    """Run ``arguments`` (a ``jobs`` or ``drain`` command); the exit status."""
    now = reactor.seconds()
    if arguments.command == "drain":
        if arguments.name not in {bucket.name for bucket in config.real_buckets}:
            print(f"no real bucket named {arguments.name}", file=sys.stderr)
            return EXIT_REFUSED
        if not arguments.undo:
            record = await store.drain_backend(arguments.name, now)
            _show([record], now, arguments.json, single=True)
            return EXIT_DONE
        undone = await store.undrain_backend(arguments.name, now)
        if undone is not None:
            _show([undone], now, arguments.json, single=True)
        elif arguments.json:
            print("null")
        return EXIT_DONE
    action, job_id = arguments.action, arguments.job
    if action == "list":
        _show(await store.list_jobs(None, 200), now, arguments.json, single=False)
        return EXIT_DONE
    if job_id is None:
        print(f"s3balance jobs {action}: which job? (give its id)", file=sys.stderr)
        return EXIT_ERROR
    try:
        if action == "show":
            found = await store.get_job(job_id)
        else:
            found = await store.control_job(job_id, action, now)
    except JobStateError as error:
        print(f"s3balance jobs {action}: {error}", file=sys.stderr)
        return EXIT_REFUSED
    if found is None:
        print(f"no job {job_id}", file=sys.stderr)
        return EXIT_REFUSED
    _show([found], now, arguments.json, single=True)
    return EXIT_DONE


def _show(records: list[JobRecord], now: float, as_json: bool, single: bool) -> None:
    documents = [job_document(record, now) for record in records]
    if as_json:
        print(json.dumps(documents[0] if single else {"jobs": documents}, indent=2))
        return
    if single:
        for name, value in documents[0].items():
            print(f"{name:>14}: {_text(name, value)}")
        return
    print(f"{'ID':>6}  {'KIND':<10} {'TARGET':<20} {'STATE':<10} {'OBJECTS':>15} {'BYTES':>21} "
          f"{'ERR':>5}  CREATED")
    for d in documents:
        objects = f"{d['objects_done']}/{_total(d['objects_done'], d['objects_left'])}"
        size = f"{d['bytes_done']}/{_total(d['bytes_done'], d['bytes_left'])}"
        print(f"{d['id']:>6}  {d['kind']:<10} {d['target']:<20} {d['state']:<10} {objects:>15} "
              f"{size:>21} {d['errors']:>5}  {_text('created', d['created'])}")


def _total(done: int, left: int | None) -> str:
    return "?" if left is None else str(done + left)


def _text(name: str, value: Any) -> str:
    if value is None:
        return "-"
    if name in ("created", "started", "finished", "updated", "claim_expires"):
        return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(value)))
    if isinstance(value, dict):
        return json.dumps(value)
    return str(value)
