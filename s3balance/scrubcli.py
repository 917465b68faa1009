"""``python -m s3balance.scrubcli``: scrub from the command line, beside or without the daemon.

Opens the database and the real buckets of a configuration file exactly as the daemon does
(:class:`s3balance.components.Storage`), runs :func:`s3balance.scrub.scrub`, prints the report and
exits with a status a cron job or a test can act on: 0 clean, 1 orphans, dangling rows or rows
whose bytes differ (size or ETag) found (even when the orphans were removed), 2 the scrub could
not be done (bad configuration, database or backend unreachable). The schema is never
upgraded from here: a scrub must not change the database's shape behind a running daemon.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Any

from s3balance.clirun import load_tool_config, react_to_status
from s3balance.scrub import DEFAULT_GRACE, ScrubReport, scrub

EXIT_CLEAN = 0
EXIT_FOUND = 1
EXIT_ERROR = 2


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m s3balance.scrubcli",
        description="Compare the metadata store with the real buckets: report orphans (objects "
        "no row references), dangling rows (rows whose object is missing) and mismatched rows "
        "(rows whose object has another size or ETag).",
    )
    parser.add_argument("--config", "-c", help="the daemon's YAML configuration file")
    parser.add_argument("--data-dir", help="overrides the configuration's data_dir")
    parser.add_argument(
        "--remove-orphans",
        action="store_true",
        help="delete orphans older than the grace period",
    )
    parser.add_argument(
        "--grace",
        type=float,
        default=DEFAULT_GRACE,
        help="seconds under which an orphan may be an upload in flight: reported, never removed "
        f"(default {DEFAULT_GRACE:g})",
    )
    parser.add_argument(
        "--backend",
        action="append",
        default=[],
        help="scrub only this real bucket (repeatable; default all)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run a scrub on the real reactor; the process's exit status."""
    arguments = parse_arguments(sys.argv[1:] if argv is None else argv)
    return react_to_status(lambda reactor: _run(reactor, arguments), EXIT_ERROR)


async def _run(reactor: Any, arguments: argparse.Namespace) -> int:
    from s3balance.components import Storage

    config = load_tool_config(arguments.config, arguments.data_dir)
    if config is None:
        return EXIT_ERROR
    names = {bucket.name for bucket in config.real_buckets}
    unknown = sorted(set(arguments.backend) - names)
    if unknown:
        print(f"no real bucket named {', '.join(unknown)}", file=sys.stderr)
        return EXIT_ERROR
    wanted = set(arguments.backend) or names
    if not os.path.isdir(config.data_dir):
        print(f"data directory {config.data_dir} does not exist", file=sys.stderr)
        return EXIT_ERROR

    never_upgrade = dataclasses.replace(config.database, auto_migrate=False)
    storage = Storage(
        dataclasses.replace(config, database=never_upgrade), reactor, backend_names=wanted
    )
    try:
        try:
            await storage.database.setup()
        except Exception as error:
            print(f"cannot use the database: {error}", file=sys.stderr)
            return EXIT_ERROR
        report = await scrub(
            storage.store,
            storage.backends,
            remove_orphans=arguments.remove_orphans,
            grace=arguments.grace,
        )
    finally:
        await storage.close()
    print(json.dumps(report.to_json(), indent=2) if arguments.json else report.summary())
    return exit_status(report)


def exit_status(report: ScrubReport) -> int:
    if report.errors:
        return EXIT_ERROR
    return EXIT_CLEAN if report.clean else EXIT_FOUND


if __name__ == "__main__":
    sys.exit(main())
