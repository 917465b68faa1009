"""``twistd s3balance``: command-line options and the service they build.

Everything a bad configuration can break is checked in :meth:`Options.postOptions`, before any
port is bound or any file written, so a wrong file makes twistd exit non-zero with one line per
problem.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.interfaces import IReactorCore
from twisted.python import usage

from s3balance.config import Config
from s3balance.configfile import ConfigError, default_config, load_config
from s3balance.heap import steady_heap
from s3balance.logs import (
    LEVELS,
    LOG_FILE_SIZE,
    LOG_FILES_KEPT,
    set_level,
    use_capped_log_file,
    use_stdout_log,
)
from s3balance.units import format_size, parse_size
from s3balance.worker import parse_adopted

DEFAULT_CONFIG_PATH = os.path.join("etc", "s3balance.yaml")


class Options(usage.Options):
    """Options of ``twistd s3balance``, in the manner of ``twistd web``."""

    synopsis = "[options]"
    longdesc = (
        "Serve an S3 API whose virtual buckets are spread over many real buckets. "
        f"Without --config, {DEFAULT_CONFIG_PATH} is used when it exists, else an embedded "
        "default (SQLite and two local directories under ./data)."
    )
    optParameters = [
        ["config", "c", None, "The YAML configuration file."],
        ["data-dir", None, None, "Overrides the configuration's data_dir."],
        ["log-level", None, "info", f"One of {', '.join(LEVELS)}; warn silences the access log."],
        ["log-max-size", None, format_size(LOG_FILE_SIZE),
         "With twistd --logfile (or as a daemon): rotate the log file at this size."],
        ["log-max-files", None, str(LOG_FILES_KEPT),
         "With twistd --logfile (or as a daemon): rotated log files kept (the oldest go)."],
        ["adopt", None, None, "Internal (server.workers): sockets from the supervisor."],
    ]
    optFlags = [
        ["check-config", None, "Validate the configuration, print it (secrets masked) and exit."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []

    def opt_listen(self, endpoint: str) -> None:
        """An endpoint to listen on (repeatable), e.g. tcp:8080:interface=127.0.0.1;
        overrides server.host/port."""
        self["listen"].append(endpoint)

    opt_l = opt_listen

    def postOptions(self) -> None:
        if self["log-level"] not in LEVELS:
            raise usage.UsageError(
                f"--log-level: {self['log-level']!r} is not a level; use one of {', '.join(LEVELS)}"
            )
        self._cap_log_file()
        if self["adopt"]:
            try:
                parse_adopted(self["adopt"])
            except ValueError as e:
                raise usage.UsageError(f"--adopt: {e}") from None
        path = self["config"]
        if path is None and os.path.exists(DEFAULT_CONFIG_PATH):
            path = DEFAULT_CONFIG_PATH
        try:
            if path is None:
                loaded = default_config(self["data-dir"] or "data")
            else:
                loaded = load_config(path)
        except ConfigError as e:
            raise usage.UsageError(f"invalid configuration {path}:\n{e}") from None
        except OSError as e:
            raise usage.UsageError(f"cannot read configuration {path}: {e.strerror}") from None
        if self["data-dir"]:
            loaded.data_dir = self["data-dir"]
        self["config_path"] = path
        self["loaded"] = loaded
        if not self["listen"]:
            server = loaded.server
            host = server.host.replace(":", "\\:")
            self["listen"] = [f"tcp:{server.port}:interface={host}"]
        if self["check-config"]:
            import yaml

            from s3balance.configfile import config_to_dict

            print(yaml.safe_dump(config_to_dict(loaded, mask_secrets=True), sort_keys=False))
            raise SystemExit(0)

    def _cap_log_file(self) -> None:
        """twistd rotates its log file at 1 MB and keeps every old file: junk traffic fills
        the disk.  When twistd logs to a file, give it a log observer that keeps
        ``--log-max-files`` files of ``--log-max-size``; logging to stdout (``twistd -n``
        without ``--logfile``, as the systemd unit and the container image run) is not rotated.
        Both write through :class:`s3balance.logs.BatchedTextLog` (access lines in batches).
        """
        try:
            max_size = parse_size(self["log-max-size"])
        except ValueError as e:
            raise usage.UsageError(f"--log-max-size: {e}") from None
        max_files_text = str(self["log-max-files"])
        if not max_files_text.isdigit() or not 1 <= int(max_files_text) <= 1000:
            raise usage.UsageError(
                f"--log-max-files: {max_files_text!r} is not a number of files (allowed: 1..1000)"
            )
        if max_size < 1024:
            raise usage.UsageError(
                f"--log-max-size: {self['log-max-size']!r} is too small (allowed: 1KB or more)"
            )
        twistd = getattr(self, "parent", None)
        if twistd is None or twistd.get("logger") or twistd.get("syslog"):
            return  # not under twistd, or the user chose where logs go
        logfile = twistd.get("logfile") or ""
        if logfile == "-" or (not logfile and twistd.get("nodaemon")):
            twistd["logger"] = use_stdout_log()
            return
        path = os.path.abspath(logfile or "twistd.log")
        twistd["logger"] = use_capped_log_file(path, max_size, int(max_files_text))


def makeService(options: Options | dict[str, Any], reactor: Any = None) -> MultiService:
    """Build the whole daemon; twistd starts it, tests may too (with their own reactor)."""
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    assert IReactorCore.providedBy(reactor)
    from s3balance.app import S3BalanceService

    config: Config = options["loaded"]
    set_level(options.get("log-level", "info"))
    adopt = options.get("adopt")
    if not adopt and config.server.workers > 1:
        prepare_database(config)
        return make_supervisor(options, reactor)  # type: ignore[return-value]
    steady_heap()  # see s3balance/heap.py: large transfers otherwise churn the heap
    if not adopt:  # a worker's supervisor checked the schema already
        prepare_database(config)
    return S3BalanceService(
        config,
        reactor=reactor,
        listen=list(options["listen"]),
        config_path=options.get("config_path"),
        **({"adopted": parse_adopted(adopt)} if adopt else {}),
    )


def make_supervisor(options: Options | dict[str, Any], reactor: Any) -> Any:
    """``server.workers`` above 1: bind here, then hand the sockets to worker processes."""
    from s3balance.supervisor import ListenError, Supervisor, bind_tcp

    config: Config = options["loaded"]
    count = config.server.workers
    try:
        listeners = [("s3", bind_tcp(d, count)) for d in options["listen"]]
        if config.metrics.enabled and config.metrics.port:
            host = config.server.host.replace(":", "\\:")
            description = f"tcp:{config.metrics.port}:interface={host}"
            listeners.append(("metrics", bind_tcp(description, count)))
    except ListenError as e:
        raise SystemExit(f"s3balance: {e}") from None
    arguments = ["--log-level", options.get("log-level", "info")]
    if options.get("config_path"):
        arguments += ["--config", os.path.abspath(options["config_path"])]
    if options.get("data-dir"):
        arguments += ["--data-dir", os.path.abspath(options["data-dir"])]
    return Supervisor(config, reactor, listeners, arguments)


def prepare_database(config: Config) -> None:
    """Check (or, with ``auto_migrate``, upgrade) the schema before twistd forks or binds.

    Done synchronously, before the reactor runs, so a refused schema ends the process with a
    non-zero status and one clear line instead of a daemon that runs without a usable database.
    """
    from s3balance.db import engine as db_engine
    from s3balance.db import migrate
    from s3balance.dsn import database_url

    os.makedirs(config.data_dir, exist_ok=True)
    url = database_url(config.database.type, config.database.dsn, config.data_dir)
    engine = db_engine.create_engine(url, config.database)
    try:
        # In a child process: the daemon then never imports Alembic (about 10 MiB for its life).
        migrate.check_or_upgrade(engine, config.database.auto_migrate, in_child=True)
    except migrate.SchemaOutdated as e:
        raise SystemExit(f"s3balance: {e}") from None
    except Exception as e:  # an unreachable server, bad credentials...
        raise SystemExit(f"s3balance: cannot use the database: {e}") from None
    finally:
        engine.dispose()
