"""``s3balance rebalance``: a rebalance from the command line, through the database as
``s3balance jobs`` (see :mod:`s3balance.cli` for why not through the admin API).

Without ``--dry-run`` it queues a rebalance job, which the next poll of a daemon's job runner
starts (``s3balance jobs show ID`` follows it); refused while one is queued, running or paused.
With ``--dry-run`` it builds a daemon's parts from the configuration (nothing is served),
probes the real buckets once, reads their usage, this month's operation counts and the drains,
and prints the plan a daemon would make now: what would move, and each bucket's used fraction
before and after.  Nothing moves.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

from s3balance.config import Config
from s3balance.jobs import job_document
from s3balance.rebalance import (
    KIND_NAME,
    TARGET,
    RebalanceSettings,
    active_rebalance,
    plan_rebalance,
)
from s3balance.rebalancing import MODES

if TYPE_CHECKING:
    from s3balance.components import Storage

#: Opens the database of a configuration (:func:`s3balance.cli.opened_storage`).
StorageOpener = Callable[[Config, Any], AbstractAsyncContextManager["Storage"]]

EXIT_DONE = 0
EXIT_REFUSED = 1
EXIT_ERROR = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``rebalance`` command's options."""
    parser.add_argument("--config", "-c", required=True, help="the daemon's YAML configuration")
    parser.add_argument("--data-dir", help="overrides the configuration's data_dir")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--mode", choices=MODES,
                        help="spread: even out the used fractions; pack: fill the real buckets "
                        "in configuration order (default: balancer.rebalance)")  # fmt: skip
    parser.add_argument("--threshold", type=float,
                        help="0 to 1 (default: balancer.rebalance_threshold)")
    parser.add_argument("--max-moves", type=int, default=None,
                        help="moves per plan (a job plans again until balanced)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print what would move, move nothing")


def settings_of(config: Config, arguments: argparse.Namespace) -> RebalanceSettings:
    """The rebalance asked for, with the configuration's mode and threshold as defaults.

    :raises ValueError: no mode (none given, ``balancer.rebalance`` off), or a bad value.
    """
    mode = arguments.mode or config.balancer.rebalance
    if mode not in MODES:
        raise ValueError(f"which mode? give --mode {' or '.join(MODES)} (balancer.rebalance is "
                         f"{config.balancer.rebalance})")  # fmt: skip
    threshold = arguments.threshold
    if threshold is None:
        threshold = config.balancer.rebalance_threshold
    if arguments.max_moves is None:
        return RebalanceSettings(mode, threshold)
    return RebalanceSettings(mode, threshold, arguments.max_moves)


async def run_rebalance_command(
    config: Config, reactor: Any, arguments: argparse.Namespace, opened_storage: StorageOpener
) -> int:
    """Run ``arguments`` (a ``rebalance`` command); the exit status."""
    try:
        settings = settings_of(config, arguments)
    except ValueError as error:
        print(f"s3balance rebalance: {error}", file=sys.stderr)
        return EXIT_ERROR
    if arguments.dry_run:
        return await _dry_run(config, reactor, settings, arguments.json)
    async with opened_storage(config, reactor) as storage:
        store = storage.store
        now = reactor.seconds()
        under_way = await active_rebalance(store)
        if under_way is not None:
            print(f"s3balance rebalance: rebalance job {under_way.id} is {under_way.state}: "
                  "pause, cancel or wait for it first", file=sys.stderr)  # fmt: skip
            return EXIT_REFUSED
        record = await store.create_job(KIND_NAME, TARGET, settings.to_params(), now)
    document = job_document(record, now)
    if arguments.json:
        print(json.dumps(document, indent=2))
    else:
        print(f"rebalance job {record.id} queued ({settings.mode}, threshold "
              f"{settings.threshold}); follow it: s3balance jobs show {record.id}")  # fmt: skip
    return EXIT_DONE


async def _dry_run(config: Config, reactor: Any, settings: RebalanceSettings, as_json: bool) -> int:
    from s3balance.components import Components  # a daemon's parts, none of them served

    components = Components(config, reactor)
    try:
        await components.open()
        await components.health.probe_now()
        await components.usage.refresh()
        await components.pool.flush()  # this month's counts and the drains, from the store
        planner, partial = await plan_rebalance(components.pool, components.store, settings)
    finally:
        await components.close()
    report = planner.report(partial)
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        print(describe_plan(report))
    return EXIT_DONE


def describe_plan(report: dict[str, Any]) -> str:
    """A plan (:meth:`~s3balance.rebalancing.Planner.report`) as lines for a terminal."""

    def percent(fraction: float | None) -> str:
        return "-" if fraction is None else f"{100 * fraction:5.1f}%"

    lines = [f"{'BUCKET':<20} {'CAPACITY':>10} {'BEFORE':>7} {'AFTER':>7} {'IN':>6} {'OUT':>6}  "
             "NOTE"]  # fmt: skip
    held_out = set(report["held_out"])
    for backend in report["backends"]:
        capacity = backend["capacity"]
        note = "; ".join(
            filter(None, [backend["note"], "held out of the mean" * (backend["name"] in held_out)])
        )
        lines.append(
            f"{backend['name']:<20} {approximate(capacity) if capacity else '-':>10} "
            f"{percent(backend['fraction_before']):>7} {percent(backend['fraction_after']):>7} "
            f"{backend['moves_in']:>6} {backend['moves_out']:>6}  {note}"
        )
    mean = report["mean_fraction"]
    goal = f", mean {percent(mean).strip()}" if mean is not None else ""
    lines.append(
        f"{report['mode']} (threshold {report['threshold']}{goal}): {report['moves']} moves, "
        f"{approximate(report['bytes'])}; {_outcome(report)}"
    )
    return "\n".join(lines)


def approximate(size: int) -> str:
    """``size`` bytes for a person: ``1.5 GiB``, ``700 B``."""
    value, unit = float(size), "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024 or unit == "PiB":
            break
        value /= 1024
    return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"


def _outcome(report: dict[str, Any]) -> str:
    if report["balanced_before"]:
        return "balanced already, nothing to move"
    stopped = report["stopped"]
    if stopped == "balanced":
        return "balanced once moved"
    if stopped == "capped":
        return "more would follow (a job plans again)"
    out = ", ".join(report["out_of_balance_after"])
    return f"still out of balance ({out}): nothing more can usefully move"
