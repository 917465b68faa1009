"""Every configuration key, once: its type, default, allowed values, reload rule, secrecy and doc.

:data:`KEYS` is the only place a key is defined.  Parsing and showing the file
(:mod:`s3balance.configfile`), the defaults of the dataclasses in :mod:`s3balance.config`, masking
of secrets, which keys a running daemon can take without a restart (:mod:`s3balance.admin.reload`)
and the README's table (:mod:`s3balance.configdoc`) are all read from it.  What a table cannot say,
rules between several keys (a virtual bucket has no endpoint, the metrics port is not the server
port), lives with the parser in :mod:`s3balance.configfile`.

A key's path is dotted; ``[]`` marks a list of mappings (``buckets[].weight``).  A new key needs a
restart unless declared ``live``: only keys the reload code applies may say so.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from s3balance.dsn import MASK, mask_dsn_password
from s3balance.units import format_duration, format_size, parse_duration, parse_size

__all__ = [
    "DATABASE_TYPES",
    "KEYS",
    "LOG_LEVELS",
    "REBALANCE_MODES",
    "STRATEGIES",
    "BUCKET_NAME_RULES",
    "EnvText",
    "Invalid",
    "Key",
    "default",
    "describe",
    "escape_env",
    "is_valid_bucket_name",
    "find_key",
    "live_fields",
    "restart_sections",
]

STRATEGIES = ("round-robin", "least-space", "weighted", "consistent-hash")
#: ``balancer.rebalance``: ``off``, or the mode the daemon rebalances with by itself.
REBALANCE_MODES = ("off", "spread", "pack")
DATABASE_TYPES = ("sqlite", "mysql", "postgres")
LOG_LEVELS = ("silent", "error", "warn", "info")
#: SigV4 presigned URLs cannot live longer than a week.
MAX_PRESIGN_EXPIRY = 7 * 24 * 3600.0

_T = TypeVar("_T")
_INTEGER_RE = re.compile(r"^\s*-?\d+\s*$")
_BUCKET_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
BUCKET_NAME_RULES = (
    "3-63 characters: lower-case letters, digits, dots and hyphens, starting and ending with a "
    "letter or digit, not an IP address"
)
_ENV_BOOLEANS = {"true": True, "yes": True, "on": True, "1": True,
                 "false": False, "no": False, "off": False, "0": False}  # fmt: skip


class EnvText(str):
    """Text substituted from the environment: ``port: ${PORT}`` must still give a number."""


class Invalid(Exception):
    """A value its key refuses; the message names the value and what is allowed."""


def describe(value: Any) -> str:
    """``value`` as a problem message shows it (YAML spelling, never a whole structure)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(str(value))
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


def is_valid_bucket_name(name: str) -> bool:
    """Whether S3 clients can address ``name`` as a bucket (the rules CreateBucket enforces)."""
    if not _BUCKET_NAME_RE.match(name) or ".." in name or ".-" in name or "-." in name:
        return False
    try:
        ipaddress.IPv4Address(name)
    except ValueError:
        return True
    return False


def escape_env(text: str) -> str:
    """The file form of literal text: ``${`` would otherwise be expanded when read back."""
    return text.replace("${", "$${")


@dataclass(frozen=True)
class Reading:
    """What a kind needs to know about where its value comes from."""

    #: JSON from the admin API rather than YAML: a number is not text there.
    typed: bool
    #: The key is secret: its value never appears in a message.
    secret: bool
    #: Reports a problem with one item of a list value (by index) without refusing the others.
    report_item: Callable[[int, str], None]


# --- kinds of values ---------------------------------------------------------------------------


class Kind:
    """How one type of value is read from the file, written back, and described in docs."""

    def read(self, value: Any, how: Reading) -> Any:
        """The typed value of ``value`` (the parser gives a missing key its default instead).

        :raises Invalid: the key refuses it; the key keeps its default.
        """
        raise NotImplementedError

    def required(self, value: Any) -> str | None:
        """The problem when ``value`` (read, or the default) is empty but the key must be set."""
        return None

    def write(self, value: Any) -> Any:
        """``value`` in the file's form (YAML text for durations and sizes)."""
        return value

    def mask(self, value: Any, section: Any) -> Any:
        """``value`` as shown when secrets are hidden; ``section`` is the dataclass holding it."""
        return MASK if value else value

    def allowed(self) -> str:
        """What the key takes, for the documentation."""
        raise NotImplementedError


@dataclass(frozen=True)
class Text(Kind):
    #: The whole problem message when the value is empty, if it must not be.
    required_message: str | None = None
    #: Applied to every value read (``s3api.domain`` is stored lower-case, without dots around).
    normalise: Callable[[str], str] | None = None
    #: An empty value means "not set": the field holds None.
    optional: bool = False

    def read(self, value: Any, how: Reading) -> Any:
        if isinstance(value, str):
            text = str(value)
        elif isinstance(value, int) and not isinstance(value, bool) and not how.typed:
            # Go's YAML decoder turns a bare number into a string field too (a numeric password).
            text = str(value)
        else:
            shown = "this value" if how.secret else describe(value)
            if isinstance(value, bool):
                hint = " (put it in quotes if you meant the word)"
            elif how.typed and isinstance(value, int | float):
                hint = " (give it as a JSON string)"
            else:
                hint = ""
            raise Invalid(f"{shown} is not text{hint}")
        if self.normalise is not None:
            text = self.normalise(text)
        if self.optional and not text:
            return None
        return text

    def required(self, value: Any) -> str | None:
        return self.required_message if self.required_message and not value else None

    def write(self, value: Any) -> Any:
        return escape_env(value)

    def allowed(self) -> str:
        return "text, not empty" if self.required_message else "text"


@dataclass(frozen=True)
class Dsn(Text):
    """The database DSN: only the password inside it is secret, so a masked one stays readable."""

    def mask(self, value: Any, section: Any) -> Any:
        return mask_dsn_password(section.type, value)

    def allowed(self) -> str:
        return "SQLAlchemy URL, Go DSN or SQLite path"


@dataclass(frozen=True)
class Boolean(Kind):
    def read(self, value: Any, how: Reading) -> Any:
        if isinstance(value, bool):
            return value
        if isinstance(value, EnvText) and value.strip().lower() in _ENV_BOOLEANS:
            return _ENV_BOOLEANS[value.strip().lower()]
        raise Invalid(f"{describe(value)} is not a boolean (use true or false)")

    def allowed(self) -> str:
        return "true or false"


@dataclass(frozen=True)
class Integer(Kind):
    minimum: int | None = None
    maximum: int | None = None
    #: Said after the range in a refusal: what a special value means (``; 0: unlimited``).
    meaning: str = ""

    def read(self, value: Any, how: Reading) -> Any:
        if isinstance(value, EnvText) and _INTEGER_RE.match(value):
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            quoted = isinstance(value, str) and _INTEGER_RE.match(value)
            hint = " (write it without quotes)" if quoted else ""
            raise Invalid(f"{describe(value)} is not a whole number{hint}")
        too_low = self.minimum is not None and value < self.minimum
        if too_low or (self.maximum is not None and value > self.maximum):
            raise Invalid(f"{value} is out of range (allowed: {self.range()}{self.meaning})")
        return value

    def range(self) -> str:
        if self.maximum is None:
            return f"{self.minimum} or more"
        if self.minimum is None:
            return f"{self.maximum} or less"
        return f"{self.minimum}..{self.maximum}"

    def allowed(self) -> str:
        if self.minimum is None and self.maximum is None:
            return "whole number"
        return f"whole number, {self.range()}{self.meaning}"


@dataclass(frozen=True)
class Workers(Integer):
    """``server.workers``: a count, or ``auto`` for one worker per core."""

    def read(self, value: Any, how: Reading) -> Any:
        if isinstance(value, str) and value.strip().lower() == "auto":
            return available_cores()
        if isinstance(value, str) and not _INTEGER_RE.match(value):
            raise Invalid(f"{describe(value)} is neither a whole number nor auto")
        return super().read(value, how)

    def allowed(self) -> str:
        return f"{self.range()}, or `auto`"


def available_cores() -> int:
    """The cores this process may run on (``server.workers: auto``): the CPU affinity set where
    the platform has one (a container's cpuset), else every core.  A CPU quota is not seen."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


@dataclass(frozen=True)
class Choice(Kind):
    choices: tuple[str, ...]

    def read(self, value: Any, how: Reading) -> Any:
        text = Text().read(value, how)
        if text not in self.choices:
            close = difflib.get_close_matches(text, self.choices, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise Invalid(f"{text!r} is not one of {', '.join(self.choices)}{hint}")
        return text

    def allowed(self) -> str:
        return "one of " + ", ".join(f"`{choice}`" for choice in self.choices)


@dataclass(frozen=True)
class Switch(Choice):
    """A choice whose first value means "off": YAML reads a bare ``off`` (or ``no``, ``false``)
    as the boolean false, which is taken for it."""

    def read(self, value: Any, how: Reading) -> Any:
        if value is False:
            return self.choices[0]
        return super().read(value, how)


@dataclass(frozen=True)
class Fraction(Kind):
    """A number from 0 to 1 (``0.1`` is ten percent)."""

    def read(self, value: Any, how: Reading) -> Any:
        if isinstance(value, EnvText):
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise Invalid(f"{describe(value)} is not a number (allowed: 0 to 1, e.g. 0.1)")
        if not 0 <= value <= 1:
            raise Invalid(f"{value!r} is out of range (allowed: 0 to 1, e.g. 0.1 for 10%)")
        return float(value)

    def allowed(self) -> str:
        return "number from 0 to 1"


def _parsed(parse: Callable[[Any], _T], value: Any) -> _T:
    """``parse(value)``, its ValueError (which names the value and the syntax) as a refusal."""
    try:
        return parse(value)
    except ValueError as e:
        raise Invalid(str(e)) from None


@dataclass(frozen=True)
class Duration(Kind):
    positive: bool = False
    maximum: float | None = None
    #: Who sets the maximum, for the refusal (``S3 allows``).
    maximum_by: str = ""

    def read(self, value: Any, how: Reading) -> Any:
        seconds = _parsed(parse_duration, value)
        if self.positive and seconds <= 0:
            raise Invalid(f"{describe(value)} must be more than 0")
        if self.maximum is not None and seconds > self.maximum:
            raise Invalid(
                f"{format_duration(seconds)} is longer than {self.maximum_by} "
                f"(at most {format_duration(self.maximum)})"
            )
        return seconds

    def write(self, value: Any) -> Any:
        return format_duration(value)

    def allowed(self) -> str:
        text = "duration, more than 0" if self.positive else "duration"
        return text + (f", at most {format_duration(self.maximum)}" if self.maximum else "")


@dataclass(frozen=True)
class Size(Kind):
    #: The smallest size allowed, asked when a value is read (it may come from another layer).
    minimum: Callable[[], int] | None = None
    #: Why that minimum, for the refusal.
    minimum_because: str = ""

    def read(self, value: Any, how: Reading) -> Any:
        if value == "":
            return None
        size = _parsed(parse_size, value)
        if self.minimum is not None and size < self.minimum():
            raise Invalid(
                f"{describe(value)} is too small (allowed: {format_size(self.minimum())} or "
                f"more, {self.minimum_because})"
            )
        return size

    def write(self, value: Any) -> Any:
        return format_size(value)

    def allowed(self) -> str:
        if self.minimum is None:
            return "size"
        return f"size, at least {format_size(self.minimum())}"


@dataclass(frozen=True)
class BucketNames(Kind):
    """A list of virtual bucket names; a bad name is refused alone, the others are kept."""

    def read(self, value: Any, how: Reading) -> Any:
        if not isinstance(value, list):
            raise Invalid(f"{describe(value)} is not a list of virtual bucket names")
        names: list[str] = []
        for i, item in enumerate(value):
            if not isinstance(item, str) or not item:
                how.report_item(i, f"{describe(item)} is not a bucket name")
            elif not is_valid_bucket_name(item):
                how.report_item(i, f"{item!r} is not a valid S3 bucket name ({BUCKET_NAME_RULES})")
            else:
                names.append(str(item))
        return names

    def write(self, value: Any) -> Any:
        return list(value)

    def allowed(self) -> str:
        return "list of bucket names"


@dataclass(frozen=True)
class Entries(Kind):
    """A list of mappings, each read with the keys under ``<path>[]``."""

    #: What one entry is, for the refusal of a value that is not a list.
    what: str
    #: The key naming an entry: an update of the list (``POST /api/config``) matches entries by it.
    identity: str

    def allowed(self) -> str:
        return "list"


#: Path prefixes of the daemon's own resources, which the metrics path must not shadow.
RESERVED_PATHS = (("/api", "the admin API"), ("/web", "the web console"))


@dataclass(frozen=True)
class UrlPath(Text):
    """A path on the main listener below ``/``, clear of the daemon's own resources."""

    def read(self, value: Any, how: Reading) -> Any:
        path = super().read(value, how)
        if not path.startswith("/") or path == "/":
            raise Invalid(f"{path!r} must start with / and name a path below it, e.g. /metrics")
        if any(c.isspace() or c in "?#" for c in path) or "//" in path:
            raise Invalid(f"{path!r} is not a plain URL path (no spaces, ?, # or //)")
        for prefix, owner in RESERVED_PATHS:
            if path == prefix or path.startswith(prefix + "/"):
                raise Invalid(f"{path!r} is inside {owner} ({prefix}/...)")
        return path

    def allowed(self) -> str:
        return "URL path, not below " + " or ".join(f"`{p}`" for p, _ in RESERVED_PATHS)


def _largest_in_memory_body() -> int:
    from s3balance.web.bodies import LARGEST_BODY  # the web layer sets it; read when checked

    return LARGEST_BODY


def _domain(text: str) -> str:
    return text.strip().strip(".").lower()


# --- the table ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Key:
    """One configuration key."""

    path: str
    kind: Kind
    #: The value when the key is absent (what the dataclass field defaults to, too).
    default: Any
    #: One line for the README.
    doc: str
    #: Applied by a running daemon on reload (SIGHUP, ``POST /api/config``); else needs a restart.
    live: bool = False
    #: Masked in ``GET /api/config`` and ``--check-config``, never shown in a problem message.
    secret: bool = False
    #: An s3balance addition the Go project's files do not have.
    ours: bool = False
    #: The README's default column, when the value alone would mislead.
    default_doc: str | None = None

    @property
    def name(self) -> str:
        """The last segment of the path: the key in its mapping and the dataclass field."""
        return self.path.rpartition(".")[2]

    @property
    def section(self) -> str:
        """The path of the mapping holding the key (``""`` for the top level)."""
        return self.path.rpartition(".")[0]

    def fresh_default(self) -> Any:
        """The default, copied when it is a list so no two configurations share one."""
        return list(self.default) if isinstance(self.default, tuple) else self.default


KEYS: tuple[Key, ...] = (
    # server: read when the listener starts; everything needs a restart.
    Key("server.host", Text("must not be empty (use 0.0.0.0 for every interface)"), "0.0.0.0",
        "address to listen on (the embedded default, without a file, uses `127.0.0.1`)"),
    Key("server.port", Integer(1, 65535), 8080, "port to listen on"),
    Key("server.read_timeout", Duration(), 30.0,
        "a request body that sends nothing for this long is failed with `RequestTimeout`"),
    Key("server.write_timeout", Duration(), 30.0,
        "stall limit of a response to a client and of a transfer with a backend"),
    Key("server.idle_timeout", Duration(), 60.0,
        "keep-alive connections idle longer than this are closed"),
    Key("server.shutdown_grace", Duration(), 30.0,
        "at SIGTERM, how long transfers in flight may take to finish", ours=True),
    Key("server.zero_copy", Boolean(), True,
        "downloads from 4 MiB on between plain-TCP connections are moved by the kernel (Linux "
        "`splice`); `false` relays every byte through the daemon", ours=True),
    Key("server.workers", Workers(1, 256, "; or auto for one per core"), 1,
        "worker processes serving the same port; `auto`: one per core (see \"Workers\")",
        ours=True),
    Key("server.header_timeout", Duration(positive=True), 10.0,
        "a request's headers must be complete this long after its first byte, else `400 "
        "RequestTimeout` and the connection closes (slowloris)", ours=True),
    Key("server.body_timeout", Duration(positive=True), 30.0,
        "a body read into memory (DeleteObjects, CompleteMultipartUpload, ACL and other XML) "
        "must be complete this long after its headers, else `400 RequestTimeout`", ours=True),
    Key("server.max_connections", Integer(1, 1_000_000), 1000,
        "client connections open at once; one more is answered `503 SlowDown` and closed (keep "
        "it well below `ulimit -n`: every transfer also holds a backend connection)", ours=True),
    Key("server.body_memory", Size(_largest_in_memory_body,
                                   "the largest request body read into memory"), 32 << 20,
        "memory all request bodies read into memory may hold together; a body that does not "
        "fit now is answered `503 SlowDown`", ours=True),
    Key("server.delete_grace", Duration(), None,
        "how long replaced or deleted bytes stay for GETs of other daemons or workers sharing "
        "the database", default_doc="`0s` (SQLite, one worker), else `60s`", ours=True),
    # database: the engine and its pool are built once.
    Key("database.type", Choice(DATABASE_TYPES), "sqlite",
        "`mysql` covers MariaDB too"),
    Key("database.dsn", Dsn(), "s3balance.db",
        "a SQLAlchemy URL, a Go DSN, or a SQLite file path relative to `data_dir` (see below); "
        "only its password is masked", secret=True,
        default_doc="`s3balance.db` (SQLite only)"),
    Key("database.max_open_conns", Integer(0, None, "; 0: no limit"), 25,
        "size of the database thread pool and connection pool"),
    Key("database.max_idle_conns", Integer(0), 25,
        "connections kept open while no transaction uses them; fewer than `max_open_conns` "
        "makes busy moments close and reopen the rest (each new one costs a handshake)"),
    Key("database.conn_max_lifetime", Duration(), 300.0,
        "connections older than this are recycled"),
    Key("database.log_level", Choice(LOG_LEVELS), "warn", "SQL logging; `info` logs statements"),
    Key("database.auto_migrate", Boolean(), True,
        "upgrade the schema at start; with `false` an old schema refuses to start"),
    # buckets: the reload swaps backends and pool settings in place.
    Key("buckets", Entries("buckets", "name"), (),
        "real buckets (`virtual: false`) and the virtual buckets clients see (`virtual: true`)",
        live=True),
    Key("buckets[].name", Text("every bucket needs a name"), "",
        "unique; for a real bucket also its name on the service unless `bucket` is set", live=True),
    Key("buckets[].endpoint", Text(), "",
        "`https://host:port` of an S3 service; empty: AWS S3 in `region`", default_doc="AWS",
        live=True),
    Key("buckets[].region", Text(), "us-east-1", "signing region", live=True),
    Key("buckets[].access_key_id", Text(), "", "access key for the service", live=True),
    Key("buckets[].secret_access_key", Text(), "", "its secret", secret=True, live=True),
    Key("buckets[].max_size", Size(), None, "bytes s3balance may place there",
        default_doc="unlimited", live=True),
    Key("buckets[].weight", Integer(0, None, "; 0: never chosen by weighted"), 1,
        "share for the `weighted` and `consistent-hash` strategies", live=True),
    Key("buckets[].enabled", Boolean(), True,
        "a disabled bucket takes no new writes and serves no reads", live=True),
    Key("buckets[].path_style", Boolean(), False,
        "path-style (`endpoint/bucket/key`) instead of virtual-host addressing to the service",
        live=True),
    Key("buckets[].virtual", Boolean(), False,
        "a name clients see, without storage settings of its own", live=True),
    Key("buckets[].use_ssl", Boolean(), True, "scheme for an endpoint written without one",
        live=True),
    Key("buckets[].operation_limits.type_a", Integer(0, None, "; 0: unlimited"), 0,
        "monthly budget of class A operations (PUT, COPY, POST, LIST)", live=True),
    Key("buckets[].operation_limits.type_b", Integer(0, None, "; 0: unlimited"), 0,
        "monthly budget of class B operations (GET, HEAD)", live=True),
    Key("buckets[].bucket", Text(optional=True), None, "the bucket's name on the service",
        default_doc="= name", live=True, ours=True),
    Key("buckets[].path", Text(optional=True), None,
        "a local directory instead of an endpoint, relative to `data_dir`; `:memory:` keeps "
        "objects in memory (tests, dry runs; one worker)", live=True, ours=True),
    Key("buckets[].ca_bundle", Text(optional=True), None,
        "PEM file of CAs for a private endpoint's certificate", live=True, ours=True),
    Key("buckets[].replicas", Integer(1, 16), 1,
        "virtual buckets: copies of each new object, on that many distinct real buckets "
        "(distinct zones where there are enough); on reload, repair brings existing objects "
        "to the new count (see \"Replicas\")", live=True, ours=True),
    Key("buckets[].write_quorum", Integer(0, 16, "; 0: every copy"), 0,
        "virtual buckets with `replicas`: an object is visible once this many copies are "
        "stored; repair makes the others (see \"Replicas\")", live=True, ours=True,
        default_doc="0 (every copy)"),
    Key("buckets[].zone", Text(optional=True), None,
        "real buckets: the failure domain; replicas of one object go to distinct zones first",
        default_doc="the endpoint's host; a local directory is its own", live=True, ours=True),
    # balancer: the loop periods are fixed when the loops start.
    Key("balancer.strategy", Choice(STRATEGIES), "least-space", "how a real bucket is chosen",
        live=True),
    Key("balancer.health_check_period", Duration(positive=True), 30.0,
        "how often each real bucket is probed"),
    Key("balancer.update_stats_period", Duration(positive=True), 60.0,
        "how often used space and object counts are refreshed"),
    Key("balancer.retry_attempts", Integer(0), 3,
        "writes refused before any body byte was sent are retried on the next choice", live=True),
    Key("balancer.retry_delay", Duration(), 1.0, "pause between those attempts", live=True),
    Key("balancer.unhealthy_threshold", Integer(1), 3,
        "failed probes in a row before a bucket is taken out", live=True, ours=True),
    Key("balancer.healthy_threshold", Integer(1), 2,
        "good probes in a row before it is used again", live=True, ours=True),
    Key("balancer.probe_timeout", Duration(positive=True), 5.0, "how long one probe may take",
        live=True, ours=True),
    Key("balancer.rebalance", Switch(REBALANCE_MODES), "off",
        "`spread` or `pack`: the daemon starts a rebalance by itself when the backends are out "
        "of balance (moving data costs egress; see \"Rebalance\")", live=True, ours=True),
    Key("balancer.rebalance_threshold", Fraction(), 0.1,
        "how far from balanced the backends may be: spread, in fraction of capacity from the "
        "mean; pack, below full", live=True, ours=True),
    Key("balancer.rebalance_interval", Duration(positive=True), 3600.0,
        "how often the daemon checks the balance when `rebalance` is on", ours=True),
    # metrics: served by resources built at start.
    Key("metrics.enabled", Boolean(), True, "serve Prometheus metrics"),
    Key("metrics.path", UrlPath(), "/metrics",
        "where on the main listener; its first segment must not be a virtual bucket's name"),
    Key("metrics.port", Integer(0, 65535, "; 0: serve on the main listener"), 0,
        "also serve the metrics path on this port of its own (on `server.host`; the "
        "`server.*_timeout` deadlines apply, and at most 32 connections at once)"),
    Key("metrics.token", Text(), "",
        "when set, scrapes must send `Authorization: Bearer <token>`", secret=True),
    # s3api: the authenticator and router are built at start.
    Key("s3api.access_key", Text(), "", "the client key pair's access key"),
    Key("s3api.secret_key", Text(), "", "and its secret", secret=True),
    Key("s3api.virtual_host", Boolean(), False,
        "`Host: <bucket>.<domain>` selects the bucket (needs `domain`)"),
    Key("s3api.proxy_mode", Boolean(), True,
        "`false`: GET answers 302 to a presigned URL of the backend"),
    Key("s3api.auth_required", Boolean(), False, "verify SigV4/SigV2 signatures"),
    Key("s3api.host", Text(), "", "Host used for signature verification behind a reverse proxy"),
    Key("s3api.domain", Text(normalise=_domain), "",
        "base domain of virtual-host addressing", ours=True),
    Key("s3api.credentials", Entries("key pairs", "access_key"), (), "more client key pairs",
        ours=True),
    Key("s3api.credentials[].access_key", Text("is required in every credentials entry"), "",
        "unique among all key pairs", ours=True),
    Key("s3api.credentials[].secret_key", Text("is required in every credentials entry"), "",
        "its secret", secret=True, ours=True),
    Key("s3api.credentials[].buckets", BucketNames(), (),
        "virtual buckets this key may use; empty: all", ours=True),
    Key("s3api.credentials[].read_only", Boolean(), False, "this key may only read", ours=True),
    Key("s3api.presign_expiry", Duration(True, MAX_PRESIGN_EXPIRY, "S3 allows"), 300.0,
        "lifetime of redirect-mode presigned URLs", ours=True),
    Key("s3api.allow_create_bucket", Boolean(), True,
        "clients may create virtual buckets with CreateBucket", live=True, ours=True),
    Key("s3api.region", Text("must not be empty (e.g. us-east-1)"), "us-east-1",
        "region reported by GetBucketLocation and expected in signatures' scope", ours=True),
    # api
    Key("api.enabled", Boolean(), False, "serve the admin API and web console"),
    Key("api.token", Text(), "", "bearer token the admin API requires (set it when enabled)",
        secret=True),
    # multipart: the cleanup loop starts with the daemon.
    Key("multipart.expiry", Duration(positive=True), 7 * 24 * 3600.0,
        "abandoned multipart uploads older than this are aborted", ours=True),
    Key("multipart.cleanup_period", Duration(positive=True), 3600.0,
        "how often that cleanup runs", ours=True),
    # repair: the repair loop starts with the daemon (see s3balance.repair).
    Key("repair.interval", Duration(positive=True), 300.0,
        "how often repair looks for objects with too few or too many copies", ours=True),
    Key("repair.after", Duration(), 3600.0,
        "a copy on a backend unhealthy for longer than this is re-created elsewhere", ours=True),
    Key("repair.max_concurrency", Integer(1, 1000), 2, "objects repaired at once", ours=True),
    Key("repair.verify_batch", Integer(1, 1_000_000), 1000,
        "objects of each replicated bucket whose copies each pass checks on each backend (a "
        "listing slice), so every copy is checked every ceil(objects / this) passes; a backend "
        "back from unavailable has all its copies checked at once", ours=True),
    Key("repair.max_bytes_per_second", Size(), None,
        "bytes repair copies per second, all objects together; empty: no limit", ours=True,
        default_doc="no limit"),
    # jobs: drains and other resumable background work (see s3balance.jobs).
    Key("jobs.max_concurrency", Integer(1, 1000), 4,
        "objects all jobs of a daemon move at once", ours=True),
    Key("jobs.max_bytes_per_second", Size(), None,
        "bytes all jobs of a daemon copy per second together; empty: no limit", ours=True,
        default_doc="no limit"),
    Key("jobs.lease", Duration(positive=True), 60.0,
        "a running job's claim lasts this long unless its daemon's heartbeat renews it; another "
        "daemon takes over a job whose daemon died after this", ours=True),
    Key("jobs.poll_interval", Duration(positive=True), 5.0,
        "how often a daemon looks for queued jobs (those submitted to it start at once)",
        ours=True),
    Key("data_dir", Text("must not be empty"), "data",
        "where relative SQLite paths and local backends live", ours=True),
)  # fmt: skip

_BY_PATH = {k.path: k for k in KEYS}


def find_key(path: str) -> Key | None:
    """The key at ``path`` (``server.port``, ``buckets[].weight``); None for a mapping."""
    return _BY_PATH.get(path)


def default(path: str) -> Any:
    """The default of the key at ``path``, for the dataclasses of :mod:`s3balance.config`."""
    return _BY_PATH[path].default


def child_name(section: str, path: str) -> str | None:
    """The name directly under ``section`` that ``path`` lies in or is, or None if outside.

    ``child_name("", "buckets[].weight") == "buckets"``.
    """
    if section:
        if not path.startswith(section + "."):
            return None
        path = path[len(section) + 1 :]
    return path.split(".", 1)[0].removesuffix("[]")


def children(section: str) -> tuple[str, ...]:
    """The names a mapping at ``section`` may hold, in the file's order."""
    names: dict[str, None] = {}
    for k in KEYS:
        name = child_name(section, k.path)
        if name is not None:
            names.setdefault(name, None)
    return tuple(names)


def keys_under(section: str) -> tuple[Key, ...]:
    """Every key below ``section``, at any depth (the mapping's own list key excluded)."""
    return tuple(
        k for k in KEYS
        if k.path == section or k.path.startswith((section + ".", section + "[]."))
    )  # fmt: skip


def restart_sections() -> tuple[str, ...]:
    """Top-level names of which nothing can change while the daemon runs."""
    return tuple(name for name in children("") if not any(k.live for k in keys_under(name)))


def live_fields(section: str) -> tuple[str, ...]:
    """The keys directly in ``section`` a running daemon applies on reload."""
    return tuple(k.name for k in KEYS if k.section == section and k.live)
