"""``s3balance``: the operator's command line (``rebuild``, ``import``, ``scrub``, ``jobs``,
``drain``).

``s3balance scrub ...`` is ``python -m s3balance.scrubcli ...``.  ``rebuild`` recreates the index
from the real buckets and ``import`` adopts foreign objects (:mod:`s3balance.rebuild`).  Both
open the database and the real buckets of a configuration file as the daemon does, and create or
upgrade the schema as the daemon would (``database.auto_migrate``): a rebuild usually starts from
an empty database.  Progress goes to stderr when it is a terminal, the summary (or ``--json``) to
stdout.  Exit status: 0 done, 1 done but some objects failed, 2 could not run, 3 interrupted
(run again to resume).

``jobs [list|show ID|pause ID|resume ID|cancel ID]`` and ``drain [--undo] NAME`` work on the
database directly, as ``rebuild`` does, rather than through a daemon's admin API: they need neither
``api.enabled`` nor a token nor a daemon's address, they work the same whichever daemons (or
workers) share the database, and a job queued while no daemon runs starts with the next one.
The daemons see the change through the database: a pause or cancel at the running job's next
heartbeat (2 s), a drain in every placement within a flush period (5 s) and its job at the next
poll (``jobs.poll_interval``).  Exit status: 0 done, 1 no such job or bucket, or a state that does
not allow the action, 2 could not run.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from s3balance.backends.interface import BackendError
from s3balance.clirun import load_tool_config, react_to_status
from s3balance.config import Config
from s3balance.errors import S3Error
from s3balance.rebuild import DEFAULT_CONCURRENCY, Checkpoint, Rebuilder

if TYPE_CHECKING:
    from s3balance.components import Storage

EXIT_DONE = 0
EXIT_FAILURES = 1
EXIT_ERROR = 2
EXIT_INTERRUPTED = 3

#: The checkpoint's file name inside the data directory.
CHECKPOINT_FILE = "rebuild-checkpoint.json"


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="s3balance", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("scrub", help="compare the index with the real buckets (see --help)",
                        add_help=False)

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--config", "-c", required=True, help="the daemon's YAML configuration")
        sub.add_argument("--data-dir", help="overrides the configuration's data_dir")
        sub.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY,
                         help=f"HEAD requests at once (default {DEFAULT_CONCURRENCY})")
        sub.add_argument("--json", action="store_true", help="print the report as JSON")

    rebuild = commands.add_parser(
        "rebuild", help="recreate the index (rows, buckets, usage) from the real buckets"
    )
    common(rebuild)
    rebuild.add_argument("--checkpoint", help=f"the checkpoint file (default "
                         f"<data_dir>/{CHECKPOINT_FILE})")
    rebuild.add_argument("--restart", action="store_true",
                         help="ignore the checkpoint of an interrupted run")
    rebuild.add_argument("--grace", type=float, default=0.0,
                         help="leave objects younger than this many seconds alone (writes in "
                         "flight, when daemons are running; default 0)")
    rebuild.add_argument("--recompute-usage", action="store_true",
                         help="at the end, set usage counters from the rows (no daemon running)")

    jobs = commands.add_parser("jobs", help="list, show, pause, resume or cancel jobs")
    jobs.add_argument("--config", "-c", required=True, help="the daemon's YAML configuration")
    jobs.add_argument("--data-dir", help="overrides the configuration's data_dir")
    jobs.add_argument("--json", action="store_true", help="print JSON")
    jobs.add_argument("action", nargs="?", default="list",
                      choices=("list", "show", "pause", "resume", "cancel"))
    jobs.add_argument("job", nargs="?", type=int, help="the job's id (all but list)")
    drain = commands.add_parser(
        "drain", help="move every object off a real bucket; it takes no new writes"
    )
    drain.add_argument("--config", "-c", required=True, help="the daemon's YAML configuration")
    drain.add_argument("--data-dir", help="overrides the configuration's data_dir")
    drain.add_argument("--json", action="store_true", help="print JSON")
    drain.add_argument("name", help="the real bucket (buckets[].name)")
    drain.add_argument("--undo", action="store_true",
                       help="give the bucket back to placement (cancels its drain if running)")

    adopt = commands.add_parser(
        "import", help="adopt objects already in a real bucket into a virtual bucket, uncopied"
    )
    common(adopt)
    adopt.add_argument("--backend", required=True, help="the real bucket (buckets[].name)")
    adopt.add_argument("--prefix", default="", help="only real keys starting with this")
    adopt.add_argument("--into", required=True, help="the virtual bucket")
    adopt.add_argument("--strip-prefix", action="store_true",
                       help="virtual keys without the prefix (default: the real key as it is)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """The console script; the process's exit status."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "scrub":
        from s3balance import scrubcli

        return scrubcli.main(argv[1:])
    arguments = parse_arguments(argv)
    return react_to_status(lambda reactor: _run(reactor, arguments), EXIT_ERROR)


@asynccontextmanager
async def opened_storage(config: Config, reactor: Any) -> AsyncIterator[Storage]:
    """The database (schema checked or upgraded as the daemon would) and every real bucket, from
    the composition root; closed on the way out."""
    from s3balance.components import Storage  # the daemon's parts: only when they are used

    storage = Storage(config, reactor)
    try:
        await storage.database.setup()
        yield storage
    finally:
        await storage.close()


class _Progress:
    """A one-line progress display on stderr, when it is a terminal."""

    def __init__(self) -> None:
        self.enabled = sys.stderr.isatty()
        self.shown = False
        self.last = 0.0

    def __call__(self, backend: str, done: int, total: int) -> None:
        now = time.monotonic()
        if self.enabled and (done == total or now - self.last >= 0.1):
            self.last = now
            percent = 100 * done // total if total else 100
            sys.stderr.write(f"\r{backend}: {done}/{total} keys ({percent}%)\x1b[K")
            sys.stderr.flush()
            self.shown = True

    def end(self) -> None:
        if self.shown:
            sys.stderr.write("\n")


def _load(arguments: argparse.Namespace) -> Config | None:
    config = load_tool_config(arguments.config, arguments.data_dir)
    if config is not None:
        os.makedirs(config.data_dir, exist_ok=True)
    return config


async def _run(reactor: Any, arguments: argparse.Namespace) -> int:
    config = _load(arguments)
    if config is None:
        return EXIT_ERROR
    if arguments.command in ("jobs", "drain"):
        from s3balance.jobcli import run_jobs_command

        try:
            async with opened_storage(config, reactor) as storage:
                return await run_jobs_command(storage.store, config, reactor, arguments)
        except Exception as error:  # the database unreachable, a refused schema...
            print(f"s3balance {arguments.command}: cannot run: {error}", file=sys.stderr)
            return EXIT_ERROR
    if arguments.command == "import" and arguments.backend not in {
        bucket.name for bucket in config.real_buckets
    }:
        print(f"no real bucket named {arguments.backend}", file=sys.stderr)
        return EXIT_ERROR
    stop = [False]

    def interrupted(*_: Any) -> None:
        stop[0] = True

    previous = signal.signal(signal.SIGINT, interrupted)
    progress = _Progress()
    try:
        async with opened_storage(config, reactor) as storage:
            rebuilder = Rebuilder(
                storage.store, storage.backends, reactor, arguments.concurrency, progress,
                lambda: stop[0],
            )
            if arguments.command == "rebuild":
                report: Any = await _rebuild(rebuilder, config, arguments)
            else:
                report = await rebuilder.import_objects(
                    arguments.backend, arguments.prefix, arguments.into, arguments.strip_prefix
                )
    except (BackendError, S3Error) as error:
        progress.end()
        print(f"s3balance {arguments.command}: {error}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as error:  # the database unreachable, a refused schema...
        progress.end()
        print(f"s3balance {arguments.command}: cannot run: {error}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        signal.signal(signal.SIGINT, previous)
    progress.end()
    print(json.dumps(report.to_json(), indent=2) if arguments.json else report.summary())
    if report.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_FAILURES if report.failures else EXIT_DONE


async def _rebuild(rebuilder: Rebuilder, config: Config, arguments: argparse.Namespace) -> Any:
    path = arguments.checkpoint or os.path.join(config.data_dir, CHECKPOINT_FILE)
    checkpoint = Checkpoint(path)
    if arguments.restart:
        checkpoint.remove()
    report = await rebuilder.rebuild(
        checkpoint, [bucket.name for bucket in config.virtual_buckets], arguments.grace
    )
    if arguments.recompute_usage and not report.interrupted:
        await rebuilder.rows.recompute_usage()
    return report


if __name__ == "__main__":
    sys.exit(main())
