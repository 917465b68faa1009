"""Read, validate, show and update the YAML configuration file.

The format is the Go S3 Balance project's, so an existing Go file loads unchanged, plus keys marked
*ours* in ``etc/s3balance.example.yaml``.  Validation collects every problem before refusing, one
line each naming the key path, the value and what is allowed: a user fixing a file should not
have to restart once per typo.
"""

from __future__ import annotations

import copy
import difflib
import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import fields
from typing import Any, TypeVar
from urllib.parse import urlsplit

import yaml

from s3balance.backends.factory import memory_bucket_problems
from s3balance.config import (
    DATABASE_TYPES,
    STRATEGIES,
    ApiConfig,
    BalancerConfig,
    BucketConfig,
    Config,
    Credential,
    DatabaseConfig,
    MetricsConfig,
    MultipartConfig,
    OperationLimits,
    S3ApiConfig,
    ServerConfig,
)
from s3balance.dsn import MASK, database_url, mask_dsn_password
from s3balance.units import format_duration, format_size, parse_duration, parse_size
from s3balance.web.bodies import LARGEST_BODY

__all__ = [
    "ConfigError",
    "load_config",
    "parse_config",
    "default_config",
    "config_to_dict",
    "merge_config",
    "is_valid_bucket_name",
    "normalise_endpoint",
    "LOG_LEVELS",
]

LOG_LEVELS = ("silent", "error", "warn", "info")
#: SigV4 presigned URLs cannot live longer than a week.
MAX_PRESIGN_EXPIRY = 7 * 24 * 3600.0
#: Default SQLite file, relative to ``data_dir`` like every relative SQLite path.
DEFAULT_SQLITE_DSN = "s3balance.db"
#: The admin API lives under this prefix; the metrics path must not shadow it.
ADMIN_API_PREFIX = "/api"
#: The web console lives under this prefix (with the admin API); nor may the metrics path.
WEB_CONSOLE_PREFIX = "/web"

_BUCKET_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_ENV_RE = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_INTEGER_RE = re.compile(r"^\s*-?\d+\s*$")
_MISSING: Any = object()
_T = TypeVar("_T")


class ConfigError(Exception):
    """A configuration that cannot be used, with every reason found."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))

    def __str__(self) -> str:
        return "\n".join(self.problems)


def is_valid_bucket_name(name: str) -> bool:
    """Whether S3 clients can address ``name`` as a bucket (the rules CreateBucket enforces)."""
    if not _BUCKET_NAME_RE.match(name) or ".." in name or ".-" in name or "-." in name:
        return False
    try:
        ipaddress.IPv4Address(name)
    except ValueError:
        return True
    return False


BUCKET_NAME_RULES = (
    "3-63 characters: lower-case letters, digits, dots and hyphens, starting and ending with a "
    "letter or digit, not an IP address"
)


# --- loading -----------------------------------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys silently; a second ``server:`` block is a mistake."""


def _construct_mapping_once(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue  # keys written next to a "<<: *anchor" may override the anchor's
        key = loader.construct_object(key_node, deep=True)
        try:
            first = seen.get(key)
            seen.setdefault(key, key_node.start_mark.line)
        except TypeError:  # an unhashable key: PyYAML itself will refuse it
            continue
        if first is not None:
            raise yaml.constructor.ConstructorError(
                "while reading a mapping",
                node.start_mark,
                f"found key {key!r} again (first on line {first + 1})",
                key_node.start_mark,
            )
    return loader.construct_mapping(node, deep=True)


_StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping_once,  # type: ignore[arg-type]
)


def load_config(path: str, environ: Mapping[str, str] = os.environ) -> Config:
    """Read and validate the file at ``path``.

    :raises OSError: the file cannot be read.
    :raises ConfigError: it is not YAML, or not a valid configuration.
    """
    with open(path, encoding="utf-8") as stream:
        try:
            data = yaml.load(stream, Loader=_StrictLoader)  # a SafeLoader subclass
        except yaml.YAMLError as e:
            raise ConfigError([f"{path}: not valid YAML: {e}".replace("\n", " ")]) from None
    return parse_config(data, environ)


def parse_config(
    data: Any, environ: Mapping[str, str] = os.environ, *, typed: bool = False
) -> Config:
    """Validate already-loaded YAML data, expanding ``${VAR}`` and ``${VAR:-default}`` first.

    :param typed: the data comes from a format whose values carry their type (the admin API's
        JSON): a text key then takes only a string.  YAML files keep Go's leniency, where a bare
        number is also text (``secret_key: 12345``); in JSON a number where text belongs is a
        client's mistake, refused like any other wrong type.
    :raises ConfigError: listing every problem found.
    """
    problems: list[str] = []
    expanded = _expand(data, "", environ, problems)
    config = _Reader(problems, typed).config(expanded)
    if problems:
        raise ConfigError(problems)
    return config


class _EnvText(str):
    """Text substituted from the environment: ``port: ${PORT}`` must still give a number."""


def _expand(value: Any, path: str, environ: Mapping[str, str], problems: list[str]) -> Any:
    if isinstance(value, dict):
        return {k: _expand(v, _join(path, k), environ, problems) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, f"{path}[{i}]", environ, problems) for i, v in enumerate(value)]
    if not isinstance(value, str) or "$" not in value:
        return value
    substituted = False

    def substitute(match: re.Match[str]) -> str:
        nonlocal substituted
        if match.group(0) == "$${":
            return "${"
        substituted = True
        name, default = match.group(1), match.group(2)
        if name in environ:
            return environ[name]
        if default is not None:
            return default
        problems.append(
            f"{path}: environment variable {name} is not set "
            f"(set it, or write ${{{name}:-default}})"
        )
        return ""

    result = _ENV_RE.sub(substitute, value)
    return _EnvText(result) if substituted else result


def _escape_env(text: str) -> str:
    """Inverse of :func:`_expand` for literal text, so ``${`` in a value survives a round trip."""
    return text.replace("${", "$${")


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _describe(value: Any) -> str:
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


# --- validation --------------------------------------------------------------------------------


class _Section:
    """One mapping of the file: hands out typed values and reports what is wrong with them."""

    def __init__(
        self, problems: list[str], path: str, value: Any, known: tuple[str, ...],
        typed: bool = False,
    ) -> None:  # fmt: skip
        self.problems = problems
        self.path = path
        #: Text keys take strings only (see :func:`parse_config`).
        self.typed = typed
        self.data: dict[Any, Any] = {}
        #: The value was there but not a mapping (its keys' problems would only be noise).
        self.malformed = value is not None and not isinstance(value, dict)
        if value is None:
            return
        if not isinstance(value, dict):
            where = path or "the file"
            self.report_at(
                where, f"{_describe(value)} is not a mapping (expected keys: {', '.join(known)})"
            )
            return
        self.data = value
        for key in value:
            if key not in known:
                close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
                hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(known)}"
                self.report_at(_join(path, key), f"unknown key ({hint})")

    def report_at(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}")

    def report(self, key: str, message: str) -> None:
        self.report_at(_join(self.path, key), message)

    def given(self, key: str) -> bool:
        return self.data.get(key) is not None

    def raw(self, key: str) -> Any:
        return self.data.get(key)

    def text(self, key: str, default: str, *, secret: bool = False) -> str:
        value = self.data.get(key)
        if value is None:
            return default
        if isinstance(value, str):
            return str(value)
        if isinstance(value, int) and not isinstance(value, bool) and not self.typed:
            # Go's YAML decoder turns a bare number into a string field too (a numeric password).
            return str(value)
        shown = "this value" if secret else _describe(value)
        if isinstance(value, bool):
            hint = " (put it in quotes if you meant the word)"
        elif self.typed and isinstance(value, int | float):
            hint = " (give it as a JSON string)"
        else:
            hint = ""
        self.report(key, f"{shown} is not text{hint}")
        return default

    def optional_text(self, key: str) -> str | None:
        return self.text(key, "") or None

    def boolean(self, key: str, default: bool) -> bool:
        value = self.data.get(key)
        if value is None:
            return default
        if isinstance(value, bool):
            return value
        if isinstance(value, _EnvText) and value.strip().lower() in _ENV_BOOLEANS:
            return _ENV_BOOLEANS[value.strip().lower()]
        self.report(key, f"{_describe(value)} is not a boolean (use true or false)")
        return default

    def integer(
        self, key: str, default: int, minimum: int | None = None, maximum: int | None = None,
        meaning: str = "",
    ) -> int:  # fmt: skip
        value = self.data.get(key)
        if value is None:
            return default
        if isinstance(value, _EnvText) and _INTEGER_RE.match(value):
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            quoted = isinstance(value, str) and _INTEGER_RE.match(value)
            hint = " (write it without quotes)" if quoted else ""
            self.report(key, f"{_describe(value)} is not a whole number{hint}")
            return default
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            if maximum is None:
                allowed = f"{minimum} or more"
            elif minimum is None:
                allowed = f"{maximum} or less"
            else:
                allowed = f"{minimum}..{maximum}"
            self.report(key, f"{value} is out of range (allowed: {allowed}{meaning})")
            return default
        return value

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.text(key, default)
        if value not in choices:
            close = difflib.get_close_matches(value, choices, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            self.report(key, f"{value!r} is not one of {', '.join(choices)}{hint}")
            return default
        return value

    def duration(self, key: str, default: float, *, positive: bool = False) -> float:
        value = self.data.get(key)
        if value is None:
            return default
        try:
            seconds = parse_duration(value)
        except ValueError as e:
            self.report(key, str(e))
            return default
        if positive and seconds <= 0:
            self.report(key, f"{_describe(value)} must be more than 0")
            return default
        return seconds

    def size(self, key: str) -> int | None:
        value = self.data.get(key)
        if value is None or value == "":
            return None
        try:
            return parse_size(value)
        except ValueError as e:
            self.report(key, str(e))
            return None

    def section(self, key: str, known: tuple[str, ...]) -> _Section:
        return _Section(
            self.problems, _join(self.path, key), self.data.get(key), known, self.typed
        )

    def items(self, key: str, what: str) -> list[tuple[str, Any]]:
        """The entries of a list value, each with its path (``buckets[2]``)."""
        value = self.data.get(key)
        if value is None:
            return []
        path = _join(self.path, key)
        if not isinstance(value, list):
            self.report_at(path, f"{_describe(value)} is not a list of {what}")
            return []
        return [(f"{path}[{i}]", item) for i, item in enumerate(value)]


_ENV_BOOLEANS = {"true": True, "yes": True, "on": True, "1": True,
                 "false": False, "no": False, "off": False, "0": False}  # fmt: skip


def _keys(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls))


TOP_KEYS = _keys(Config)
BUCKET_KEYS = _keys(BucketConfig)
CREDENTIAL_KEYS = _keys(Credential)
#: Fields a virtual bucket must leave empty: it names what clients see, it stores nothing itself.
VIRTUAL_FORBIDDEN = (
    "endpoint",
    "path",
    "bucket",
    "ca_bundle",
    "access_key_id",
    "secret_access_key",
)


class _Reader:
    """Builds a :class:`Config` from expanded data, appending every problem to ``problems``."""

    def __init__(self, problems: list[str], typed: bool = False) -> None:
        self.problems = problems
        self.typed = typed

    def report(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}")

    def config(self, data: Any) -> Config:
        top = _Section(self.problems, "", data, TOP_KEYS, self.typed)
        data_dir = top.text("data_dir", Config().data_dir)
        if not data_dir:
            top.report("data_dir", "must not be empty")
            data_dir = Config().data_dir
        server = self.server(top.section("server", _keys(ServerConfig)))
        database = self.database(top.section("database", _keys(DatabaseConfig)), data_dir)
        buckets = self.buckets(top)
        self.problems += memory_bucket_problems(server.workers, buckets)
        balancer = self.balancer(top.section("balancer", _keys(BalancerConfig)))
        api = self.api(top.section("api", _keys(ApiConfig)))
        metrics = self.metrics(top.section("metrics", _keys(MetricsConfig)), server, buckets)
        s3api = self.s3api(top.section("s3api", _keys(S3ApiConfig)))
        multipart = self.multipart(top.section("multipart", _keys(MultipartConfig)))
        return Config(
            server=server,
            database=database,
            buckets=buckets,
            balancer=balancer,
            metrics=metrics,
            s3api=s3api,
            api=api,
            multipart=multipart,
            data_dir=data_dir,
        )

    def server(self, s: _Section) -> ServerConfig:
        d = ServerConfig()
        host = s.text("host", d.host)
        if not host:
            s.report("host", "must not be empty (use 0.0.0.0 for every interface)")
            host = d.host
        return ServerConfig(
            host=host,
            port=s.integer("port", d.port, 1, 65535),
            read_timeout=s.duration("read_timeout", d.read_timeout),
            write_timeout=s.duration("write_timeout", d.write_timeout),
            idle_timeout=s.duration("idle_timeout", d.idle_timeout),
            shutdown_grace=s.duration("shutdown_grace", d.shutdown_grace),
            zero_copy=s.boolean("zero_copy", d.zero_copy),
            header_timeout=s.duration("header_timeout", d.header_timeout, positive=True),
            body_timeout=s.duration("body_timeout", d.body_timeout, positive=True),
            max_connections=s.integer("max_connections", d.max_connections, 1, 1_000_000),
            body_memory=self.body_memory(s, d.body_memory),
            delete_grace=(
                s.duration("delete_grace", 0.0) if s.given("delete_grace") else None
            ),
            workers=self.workers(s, d.workers),
        )

    def body_memory(self, s: _Section, default: int) -> int:
        """``server.body_memory``: at least the largest body one request may buffer."""
        value = s.size("body_memory")
        if value is None:
            return default
        if value < LARGEST_BODY:
            s.report(
                "body_memory",
                f"{_describe(s.raw('body_memory'))} is too small (allowed: "
                f"{format_size(LARGEST_BODY)} or more, the largest request body read into memory)",
            )
            return default
        return value

    def workers(self, s: _Section, default: int) -> int:
        """``server.workers``: a count, or ``auto`` for one worker per core."""
        value = s.raw("workers")
        if isinstance(value, str) and value.strip().lower() == "auto":
            return available_cores()
        if isinstance(value, str) and not _INTEGER_RE.match(value):
            s.report("workers", f"{_describe(value)} is neither a whole number nor auto")
            return default
        return s.integer("workers", default, 1, 256, "; or auto for one per core")

    def database(self, s: _Section, data_dir: str) -> DatabaseConfig:
        d = DatabaseConfig()
        db_type = s.choice("type", d.type, DATABASE_TYPES)
        dsn = s.text("dsn", "", secret=True)
        if not s.given("dsn"):
            if db_type == "sqlite":
                dsn = DEFAULT_SQLITE_DSN
            else:
                s.report("dsn", f"is required when database.type is {db_type!r}")
        if dsn or s.given("dsn"):
            try:
                database_url(db_type, dsn, data_dir)
            except ValueError as e:
                s.report("dsn", str(e))
        return DatabaseConfig(
            type=db_type,
            dsn=dsn,
            max_open_conns=s.integer("max_open_conns", d.max_open_conns, 0, None, "; 0: no limit"),
            max_idle_conns=s.integer("max_idle_conns", d.max_idle_conns, 0),
            conn_max_lifetime=s.duration("conn_max_lifetime", d.conn_max_lifetime),
            log_level=s.choice("log_level", d.log_level, LOG_LEVELS),
            auto_migrate=s.boolean("auto_migrate", d.auto_migrate),
        )

    def buckets(self, top: _Section) -> list[BucketConfig]:
        entries = top.items("buckets", "buckets")
        result: list[BucketConfig] = []
        first_use: dict[str, str] = {}
        looks_real = 0
        for path, item in entries:
            bucket = self.bucket(_Section(self.problems, path, item, BUCKET_KEYS, self.typed))
            if isinstance(item, dict) and item.get("virtual") is not True:
                looks_real += 1
            if bucket is None:
                continue
            if bucket.name in first_use:
                self.report(
                    f"{path}.name", f"{bucket.name!r} is already used by {first_use[bucket.name]}"
                )
                continue
            first_use[bucket.name] = path
            result.append(bucket)
        malformed = top.given("buckets") and not isinstance(top.raw("buckets"), list)
        if looks_real == 0 and not malformed and not top.malformed:
            self.report(
                "buckets",
                "no real bucket is configured (add an entry with virtual: false and an "
                "endpoint or a path; virtual buckets only name what clients see)",
            )
        return result

    def bucket(self, s: _Section) -> BucketConfig | None:
        d = BucketConfig(name="")
        name = s.text("name", "")
        if not name:
            s.report("name", "every bucket needs a name")
        virtual = s.boolean("virtual", d.virtual)
        use_ssl = s.boolean("use_ssl", d.use_ssl)
        limits = s.section("operation_limits", _keys(OperationLimits))
        operation_limits = OperationLimits(
            type_a=limits.integer("type_a", 0, 0, None, "; 0: unlimited"),
            type_b=limits.integer("type_b", 0, 0, None, "; 0: unlimited"),
        )
        endpoint_text = s.text("endpoint", d.endpoint)
        path = s.optional_text("path")
        real_name = s.optional_text("bucket")
        access_key_id = s.text("access_key_id", d.access_key_id)
        secret_access_key = s.text("secret_access_key", d.secret_access_key, secret=True)
        ca_bundle = s.optional_text("ca_bundle")
        endpoint = endpoint_text
        if virtual:
            if name and not is_valid_bucket_name(name):
                s.report("name", f"{name!r} is not a valid S3 bucket name ({BUCKET_NAME_RULES})")
            present = {
                "endpoint": endpoint_text,
                "path": path,
                "bucket": real_name,
                "ca_bundle": ca_bundle,
                "access_key_id": access_key_id,
                "secret_access_key": secret_access_key,
            }
            for key in VIRTUAL_FORBIDDEN:
                if present[key]:
                    shown = "a secret" if key == "secret_access_key" else repr(present[key])
                    s.report(
                        key,
                        f"{shown} is not allowed on a virtual bucket (virtual: true only names "
                        "what clients see; storage settings belong on real buckets)",
                    )
        else:
            if endpoint_text and path:
                s.report(
                    "path",
                    f"{path!r} and endpoint {endpoint_text!r} are both set: a real bucket is "
                    "either an S3 endpoint or a local directory",
                )
            if endpoint_text:
                try:
                    endpoint = normalise_endpoint(endpoint_text, use_ssl)
                except ValueError as e:
                    s.report("endpoint", str(e))
        bucket = BucketConfig(
            name=name,
            endpoint=endpoint,
            region=s.text("region", d.region),
            access_key_id=access_key_id,
            secret_access_key=secret_access_key,
            max_size=s.size("max_size"),
            weight=s.integer("weight", d.weight, 0, None, "; 0: never chosen by weighted"),
            enabled=s.boolean("enabled", d.enabled),
            path_style=s.boolean("path_style", d.path_style),
            virtual=virtual,
            use_ssl=use_ssl,
            operation_limits=operation_limits,
            bucket=real_name,
            path=path,
            ca_bundle=ca_bundle,
        )
        return bucket if name else None

    def balancer(self, s: _Section) -> BalancerConfig:
        d = BalancerConfig()
        return BalancerConfig(
            strategy=s.choice("strategy", d.strategy, STRATEGIES),
            health_check_period=s.duration("health_check_period", d.health_check_period,
                                           positive=True),
            update_stats_period=s.duration("update_stats_period", d.update_stats_period,
                                           positive=True),
            retry_attempts=s.integer("retry_attempts", d.retry_attempts, 0),
            retry_delay=s.duration("retry_delay", d.retry_delay),
            unhealthy_threshold=s.integer("unhealthy_threshold", d.unhealthy_threshold, 1),
            healthy_threshold=s.integer("healthy_threshold", d.healthy_threshold, 1),
            probe_timeout=s.duration("probe_timeout", d.probe_timeout, positive=True),
        )  # fmt: skip

    def metrics(
        self, s: _Section, server: ServerConfig, buckets: list[BucketConfig]
    ) -> MetricsConfig:
        d = MetricsConfig()
        path = s.text("path", d.path)
        if not path.startswith("/") or path == "/":
            s.report("path", f"{path!r} must start with / and name a path below it, e.g. /metrics")
        elif any(c.isspace() or c in "?#" for c in path) or "//" in path:
            s.report("path", f"{path!r} is not a plain URL path (no spaces, ?, # or //)")
        else:
            first = path.split("/")[1]
            virtual = {b.name for b in buckets if b.virtual}
            if first in virtual:
                s.report(
                    "path",
                    f"{path!r} would hide virtual bucket {first!r} from S3 clients; choose a "
                    "path whose first segment is not a bucket name",
                )
            if path == ADMIN_API_PREFIX or path.startswith(ADMIN_API_PREFIX + "/"):
                s.report("path", f"{path!r} is inside the admin API ({ADMIN_API_PREFIX}/...)")
            if path == WEB_CONSOLE_PREFIX or path.startswith(WEB_CONSOLE_PREFIX + "/"):
                s.report("path", f"{path!r} is inside the web console ({WEB_CONSOLE_PREFIX}/...)")
        port = s.integer("port", d.port, 0, 65535, "; 0: serve on the main listener")
        if port and port == server.port:
            s.report(
                "port",
                f"{port} is also server.port; use 0 to serve metrics on the main listener",
            )
        return MetricsConfig(
            enabled=s.boolean("enabled", d.enabled),
            path=path,
            port=port,
            token=s.text("token", d.token, secret=True),
        )

    def credential(self, s: _Section) -> Credential:
        access_key = s.text("access_key", "")
        secret_key = s.text("secret_key", "", secret=True)
        for key, value in (("access_key", access_key), ("secret_key", secret_key)):
            if not value:
                s.report(key, "is required in every credentials entry")
        names: list[str] = []
        for path, item in s.items("buckets", "virtual bucket names"):
            if not isinstance(item, str) or not item:
                self.report(path, f"{_describe(item)} is not a bucket name")
            elif not is_valid_bucket_name(item):
                self.report(path, f"{item!r} is not a valid S3 bucket name ({BUCKET_NAME_RULES})")
            else:
                names.append(str(item))
        return Credential(
            access_key=access_key,
            secret_key=secret_key,
            buckets=names,
            read_only=s.boolean("read_only", False),
        )

    def s3api(self, s: _Section) -> S3ApiConfig:
        d = S3ApiConfig()
        access_key = s.text("access_key", d.access_key)
        secret_key = s.text("secret_key", d.secret_key, secret=True)
        if access_key and not secret_key:
            s.report("secret_key", "is empty but s3api.access_key is set (a key pair needs both)")
        if secret_key and not access_key:
            s.report("access_key", "is empty but s3api.secret_key is set (a key pair needs both)")
        credentials: list[Credential] = []
        first_use: dict[str, str] = {}
        if access_key:
            first_use[access_key] = "s3api.access_key"
        for path, item in s.items("credentials", "key pairs"):
            credential = self.credential(
                _Section(self.problems, path, item, CREDENTIAL_KEYS, self.typed)
            )
            if credential.access_key in first_use:
                self.report(
                    f"{path}.access_key",
                    f"{credential.access_key!r} is already used by "
                    f"{first_use[credential.access_key]}",
                )
            elif credential.access_key:
                first_use[credential.access_key] = f"{path}.access_key"
            credentials.append(credential)
        auth_required = s.boolean("auth_required", d.auth_required)
        if auth_required and not (access_key and secret_key) and not credentials:
            s.report(
                "auth_required",
                "true needs a key pair: set s3api.access_key and s3api.secret_key, or add "
                "s3api.credentials",
            )
        virtual_host = s.boolean("virtual_host", d.virtual_host)
        domain = s.text("domain", d.domain).strip().strip(".").lower()
        if virtual_host and not domain:
            s.report(
                "virtual_host",
                "true needs s3api.domain (ours): the base domain clients use as "
                "<bucket>.<domain>, e.g. domain: s3.example.com",
            )
        presign_expiry = s.duration("presign_expiry", d.presign_expiry, positive=True)
        if presign_expiry > MAX_PRESIGN_EXPIRY:
            s.report(
                "presign_expiry",
                f"{format_duration(presign_expiry)} is longer than S3 allows (at most 168h)",
            )
            presign_expiry = d.presign_expiry
        region = s.text("region", d.region)
        if not region:
            s.report("region", "must not be empty (e.g. us-east-1)")
            region = d.region
        return S3ApiConfig(
            access_key=access_key,
            secret_key=secret_key,
            virtual_host=virtual_host,
            proxy_mode=s.boolean("proxy_mode", d.proxy_mode),
            auth_required=auth_required,
            host=s.text("host", d.host),
            domain=domain,
            credentials=credentials,
            presign_expiry=presign_expiry,
            allow_create_bucket=s.boolean("allow_create_bucket", d.allow_create_bucket),
            region=region,
        )

    def api(self, s: _Section) -> ApiConfig:
        d = ApiConfig()
        enabled = s.boolean("enabled", d.enabled)
        token = s.text("token", d.token, secret=True)
        if enabled and not token:
            s.report(
                "token",
                "must be set when api.enabled is true (otherwise anyone could reconfigure "
                "the balancer)",
            )
        return ApiConfig(enabled=enabled, token=token)

    def multipart(self, s: _Section) -> MultipartConfig:
        d = MultipartConfig()
        return MultipartConfig(
            expiry=s.duration("expiry", d.expiry, positive=True),
            cleanup_period=s.duration("cleanup_period", d.cleanup_period, positive=True),
        )


def available_cores() -> int:
    """The cores this process may run on (``server.workers: auto``): the CPU affinity set where
    the platform has one (a container's cpuset), else every core.  A CPU quota is not seen."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def normalise_endpoint(text: str, use_ssl: bool) -> str:
    """``text`` as an ``http(s)://host[:port][/path]`` URL.

    Go files may give a bare ``host:port`` and let ``use_ssl`` pick the scheme.

    :raises ValueError: not an http(s) URL or host.
    """
    original = text
    text = text.strip()
    if "://" not in text:
        text = ("https://" if use_ssl else "http://") + text
    problem = f"{original!r} is not an http(s) URL or host:port (e.g. http://127.0.0.1:9000)"
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise ValueError(problem) from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(problem)
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"{original!r}: an endpoint has no query, fragment or user part")
    if port == 0:
        raise ValueError(problem)
    return f"{scheme}://{parts.netloc}{parts.path.rstrip('/')}"


# --- defaults, display, update -----------------------------------------------------------------


def default_config(data_dir: str = "data") -> Config:
    """What runs without a file: SQLite and two local directories under ``data_dir``, no auth."""
    return Config(
        server=ServerConfig(host="127.0.0.1", port=8080),
        database=DatabaseConfig(type="sqlite", dsn=DEFAULT_SQLITE_DSN),
        buckets=[
            BucketConfig(name=name, path=os.path.join("backends", name))
            for name in ("local-1", "local-2")
        ],
        s3api=S3ApiConfig(auth_required=False, proxy_mode=True, allow_create_bucket=True),
        api=ApiConfig(enabled=False),
        data_dir=data_dir,
    )


def config_to_dict(config: Config, mask_secrets: bool = True) -> dict[str, Any]:
    """``config`` in the file's own format, ready for ``yaml.safe_dump``.

    ``parse_config(config_to_dict(c, mask_secrets=False)) == c``.  With ``mask_secrets`` every
    non-empty secret (and a password inside the DSN) reads ``"***"``, which
    :func:`merge_config` takes to mean "keep the current value".
    """

    def secret(value: str) -> str:
        return MASK if mask_secrets and value else _escape_env(value)

    def text(value: str) -> str:
        return _escape_env(value)

    c = config
    db = c.database
    dsn = mask_dsn_password(db.type, db.dsn) if mask_secrets else db.dsn
    return {
        "server": {
            "host": text(c.server.host),
            "port": c.server.port,
            "read_timeout": format_duration(c.server.read_timeout),
            "write_timeout": format_duration(c.server.write_timeout),
            "idle_timeout": format_duration(c.server.idle_timeout),
            "shutdown_grace": format_duration(c.server.shutdown_grace),
            "zero_copy": c.server.zero_copy,
            "workers": c.server.workers,
            "header_timeout": format_duration(c.server.header_timeout),
            "body_timeout": format_duration(c.server.body_timeout),
            "max_connections": c.server.max_connections,
            "body_memory": format_size(c.server.body_memory),
            **(
                {"delete_grace": format_duration(c.server.delete_grace)}
                if c.server.delete_grace is not None
                else {}
            ),
        },
        "database": {
            "type": db.type,
            "dsn": text(dsn),
            "max_open_conns": db.max_open_conns,
            "max_idle_conns": db.max_idle_conns,
            "conn_max_lifetime": format_duration(db.conn_max_lifetime),
            "log_level": db.log_level,
            "auto_migrate": db.auto_migrate,
        },
        "buckets": [_bucket_to_dict(b, secret, text) for b in c.buckets],
        "balancer": {
            "strategy": c.balancer.strategy,
            "health_check_period": format_duration(c.balancer.health_check_period),
            "update_stats_period": format_duration(c.balancer.update_stats_period),
            "retry_attempts": c.balancer.retry_attempts,
            "retry_delay": format_duration(c.balancer.retry_delay),
            "unhealthy_threshold": c.balancer.unhealthy_threshold,
            "healthy_threshold": c.balancer.healthy_threshold,
            "probe_timeout": format_duration(c.balancer.probe_timeout),
        },
        "metrics": {
            "enabled": c.metrics.enabled,
            "path": text(c.metrics.path),
            "port": c.metrics.port,
            "token": secret(c.metrics.token),
        },
        "s3api": {
            "access_key": text(c.s3api.access_key),
            "secret_key": secret(c.s3api.secret_key),
            "virtual_host": c.s3api.virtual_host,
            "proxy_mode": c.s3api.proxy_mode,
            "auth_required": c.s3api.auth_required,
            "host": text(c.s3api.host),
            "domain": text(c.s3api.domain),
            "credentials": [
                {
                    "access_key": text(cred.access_key),
                    "secret_key": secret(cred.secret_key),
                    "buckets": list(cred.buckets),
                    "read_only": cred.read_only,
                }
                for cred in c.s3api.credentials
            ],
            "presign_expiry": format_duration(c.s3api.presign_expiry),
            "allow_create_bucket": c.s3api.allow_create_bucket,
            "region": text(c.s3api.region),
        },
        "api": {"enabled": c.api.enabled, "token": secret(c.api.token)},
        "multipart": {
            "expiry": format_duration(c.multipart.expiry),
            "cleanup_period": format_duration(c.multipart.cleanup_period),
        },
        "data_dir": text(c.data_dir),
    }


def _bucket_to_dict(
    b: BucketConfig, secret: Callable[[str], str], text: Callable[[str], str]
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": text(b.name),
        "endpoint": text(b.endpoint),
        "region": text(b.region),
        "access_key_id": text(b.access_key_id),
        "secret_access_key": secret(b.secret_access_key),
    }
    if b.max_size is not None:
        out["max_size"] = format_size(b.max_size)
    out.update(
        weight=b.weight,
        enabled=b.enabled,
        use_ssl=b.use_ssl,
        path_style=b.path_style,
        virtual=b.virtual,
        operation_limits={"type_a": b.operation_limits.type_a,
                          "type_b": b.operation_limits.type_b},
    )  # fmt: skip
    for key in ("bucket", "path", "ca_bundle"):
        value = getattr(b, key)
        if value is not None:
            out[key] = text(value)
    return out


#: Lists merged entry by entry, and the key that identifies an entry.
_NAMED_LISTS = {"buckets": "name", "s3api.credentials": "access_key"}


def merge_config(base: dict[str, Any], partial: dict[str, Any]) -> dict[str, Any]:
    """``base`` (``config_to_dict`` output) updated by ``partial``; neither is modified.

    Mappings merge key by key.  In ``buckets`` (by ``name``) and ``s3api.credentials`` (by
    ``access_key``) an entry updates the entry of the same name, a new name is added, and
    ``{"name": x, "remove": true}`` removes one.  ``"***"`` keeps the current secret.  The result
    still needs :func:`parse_config`.

    :raises ConfigError: a removal or ``"***"`` refers to nothing, or an entry has no name.
    """
    problems: list[str] = []
    if not isinstance(partial, dict):
        raise ConfigError([f"the update: {_describe(partial)} is not a mapping"])
    merged = _merge_mapping(copy.deepcopy(base), partial, "", problems)
    if problems:
        raise ConfigError(problems)
    return merged


def _merge_mapping(
    base: dict[str, Any], partial: dict[str, Any], path: str, problems: list[str]
) -> dict[str, Any]:
    for key, value in partial.items():
        key_path = _join(path, key)
        current = base.get(key, _MISSING)
        if value == MASK:
            if current is _MISSING or current in ("", None):
                problems.append(f"{key_path}: '***' keeps the current secret, but there is none")
            continue
        if key_path in _NAMED_LISTS:
            base[key] = _merge_named_list(
                current if isinstance(current, list) else [], value, key_path,
                _NAMED_LISTS[key_path], problems,
            )  # fmt: skip
        elif isinstance(value, dict) and isinstance(current, dict):
            base[key] = _merge_mapping(current, value, key_path, problems)
        elif key_path == "database.dsn" and isinstance(current, str) and isinstance(value, str):
            db_type = str(partial.get("type", base.get("type", "")))
            masked = mask_dsn_password(db_type, current)
            base[key] = current if value == masked and masked != current else value
        else:
            base[key] = copy.deepcopy(value)
    return base


def _merge_named_list(
    current: list[Any], partial: Any, path: str, id_key: str, problems: list[str]
) -> list[Any]:
    if not isinstance(partial, list):
        problems.append(f"{path}: {_describe(partial)} is not a list")
        return current
    result = list(current)

    def position(name: Any) -> int | None:
        for i, entry in enumerate(result):
            if isinstance(entry, dict) and entry.get(id_key) == name:
                return i
        return None

    for i, entry in enumerate(partial):
        entry_path = f"{path}[{i}]"
        if not isinstance(entry, dict) or not entry.get(id_key):
            problems.append(f"{entry_path}: every entry needs a {id_key} to say which it updates")
            continue
        name = entry[id_key]
        at = position(name)
        changes = {k: v for k, v in entry.items() if k != "remove"}
        if entry.get("remove") is True:
            if at is None:
                problems.append(f"{entry_path}: cannot remove {name!r}: there is no such entry")
            else:
                del result[at]
            continue
        if at is None:
            result.append(_merge_mapping({}, changes, entry_path, problems))
        else:
            result[at] = _merge_mapping(result[at], changes, entry_path, problems)
    return result
