"""Read, validate, show and update the YAML configuration file.

The format is the Go S3 Balance project's, so an existing Go file loads unchanged, plus keys marked
*ours* in ``etc/s3balance.example.yaml``.  Every key is declared once, in
:data:`s3balance.configkeys.KEYS`: this module walks that table to read a file into
:class:`~s3balance.config.Config` and to write one back; what it adds are the rules between
several keys.  Validation collects every problem before refusing, one line each naming the key
path, the value and what is allowed: a user fixing a file should not have to restart once per
typo.
"""

from __future__ import annotations

import copy
import difflib
import os
import re
from collections.abc import Callable, Mapping
from typing import Any, cast
from urllib.parse import urlsplit

import yaml

from s3balance.backends.factory import MEMORY_PATH
from s3balance.config import (
    ApiConfig,
    BalancerConfig,
    BucketConfig,
    Config,
    Credential,
    DatabaseConfig,
    JobsConfig,
    MetricsConfig,
    MultipartConfig,
    OperationLimits,
    RepairConfig,
    S3ApiConfig,
    ServerConfig,
)
from s3balance.configkeys import (
    BUCKET_NAME_RULES,
    KEYS,
    LOG_LEVELS,
    Dsn,
    Entries,
    EnvText,
    Invalid,
    Key,
    Reading,
    children,
    default,
    describe,
    find_key,
    is_valid_bucket_name,
)
from s3balance.dsn import MASK, database_url, mask_dsn_password

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

#: Default SQLite file, relative to ``data_dir`` like every relative SQLite path.
DEFAULT_SQLITE_DSN: str = default("database.dsn")

_ENV_RE = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_MISSING: Any = object()


class ConfigError(Exception):
    """A configuration that cannot be used, with every reason found."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))

    def __str__(self) -> str:
        return "\n".join(self.problems)


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
    top = _read_section(problems, "", "", expanded, typed, None)
    if problems:
        raise ConfigError(problems)
    return cast(Config, _build(top))


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
    return EnvText(result) if substituted else result


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


# --- reading, key by key from the table --------------------------------------------------------


#: The dataclass each mapping of the file becomes, by its path in :data:`KEYS`.
_CLASSES: dict[str, type] = {
    "": Config,
    "server": ServerConfig,
    "database": DatabaseConfig,
    "buckets[]": BucketConfig,
    "buckets[].operation_limits": OperationLimits,
    "balancer": BalancerConfig,
    "metrics": MetricsConfig,
    "s3api": S3ApiConfig,
    "s3api.credentials[]": Credential,
    "api": ApiConfig,
    "multipart": MultipartConfig,
    "repair": RepairConfig,
    "jobs": JobsConfig,
}


class _Section:
    """One mapping of the file as it is read: its typed values so far and where it is.

    :param where: the path problems name (``buckets[2]``); ``table_path`` is the same mapping
        in :data:`KEYS` (``buckets[]``).
    """

    def __init__(
        self, problems: list[str], where: str, table_path: str, value: Any, typed: bool,
        parent: _Section | None,
    ) -> None:  # fmt: skip
        self.problems = problems
        self.where = where
        self.table_path = table_path
        #: Text keys take strings only (see :func:`parse_config`).
        self.typed = typed
        #: The mapping holding this one: rules between keys look up there.
        self.parent = parent
        self.data: dict[Any, Any] = {}
        #: Typed values by field name, defaults included.
        self.values: dict[str, Any] = {}
        #: Keys whose value was refused (they hold the default; rules on them would be noise).
        self.failed: set[str] = set()
        #: The value was there but not a mapping (its keys' problems would only be noise).
        self.malformed = value is not None and not isinstance(value, dict)
        known = children(table_path)
        if value is None:
            return
        if not isinstance(value, dict):
            self.report_at(
                where or "the file",
                f"{describe(value)} is not a mapping (expected keys: {', '.join(known)})",
            )
            return
        self.data = value
        for name in value:
            if name not in known:
                close = difflib.get_close_matches(str(name), known, n=1, cutoff=0.6)
                hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(known)}"
                self.report_at(_join(where, name), f"unknown key ({hint})")

    def __getitem__(self, name: str) -> Any:
        return self.values[name]

    def report_at(self, where: str, message: str) -> None:
        self.problems.append(f"{where}: {message}")

    def report(self, name: str, message: str) -> None:
        self.report_at(_join(self.where, name), message)

    def refuse(self, name: str, message: str, value: Any) -> None:
        """Report ``name`` and let it hold ``value`` instead."""
        self.report(name, message)
        self.failed.add(name)
        self.values[name] = value

    def given(self, name: str) -> bool:
        return self.data.get(name) is not None

    def read(self, k: Key) -> None:
        """Read the value of one key of this mapping, or its default."""
        raw = self.data.get(k.name)
        self.values[k.name] = k.fresh_default()
        if raw is not None:
            where = _join(self.where, k.name)
            how = Reading(self.typed, k.secret,
                          lambda i, message: self.report_at(f"{where}[{i}]", message))  # fmt: skip
            try:
                self.values[k.name] = k.kind.read(raw, how)
            except Invalid as e:
                self.refuse(k.name, str(e), k.fresh_default())
        missing = k.kind.required(self.values[k.name])
        if missing:  # also after a refusal, when the default is no value either
            self.refuse(k.name, missing, k.fresh_default())

    def read_entries(self, k: Key) -> list[Any]:
        """The entries of a list key, each read as a mapping and checked by its rules."""
        assert isinstance(k.kind, Entries)
        raw = self.data.get(k.name)
        where = _join(self.where, k.name)
        items: list[Any] = []
        if raw is not None and not isinstance(raw, list):
            self.report_at(where, f"{describe(raw)} is not a list of {k.kind.what}")
            self.failed.add(k.name)
        elif raw is not None:
            items = raw
        entries: list[Any] = []
        seen: dict[str, str] = {}
        entry_rule = _ENTRY_RULES.get(k.path)
        for i, item in enumerate(items):
            entry = _read_section(
                self.problems, f"{where}[{i}]", k.path + "[]", item, self.typed, self
            )
            if entry_rule is None or entry_rule(entry, seen):
                entries.append(_build(entry))
        list_rule = _LIST_RULES.get(k.path)
        if list_rule is not None:
            list_rule(self, items)
        return entries


def _read_section(
    problems: list[str], where: str, table_path: str, value: Any, typed: bool,
    parent: _Section | None,
) -> _Section:  # fmt: skip
    """Read one mapping: its own keys first (rules of nested mappings may need them), then
    its nested mappings and lists, then the rules between its keys."""
    section = _Section(problems, where, table_path, value, typed, parent)
    nested: list[str] = []
    for name in children(table_path):
        k = find_key(_join(table_path, name))
        if k is None or isinstance(k.kind, Entries):
            nested.append(name)
        else:
            section.read(k)
    for name in nested:
        path = _join(table_path, name)
        k = find_key(path)
        if k is not None:
            section.values[name] = section.read_entries(k)
        else:
            inner = _read_section(
                problems, _join(where, name), path, section.data.get(name), typed, section
            )
            section.values[name] = _build(inner)
    rule = _SECTION_RULES.get(table_path)
    if rule is not None:
        rule(section)
    return section


def _build(section: _Section) -> Any:
    return _CLASSES[section.table_path](**section.values)


# --- rules between keys ------------------------------------------------------------------------


def _database(s: _Section) -> None:
    db_type = s["type"]
    if not s.given("dsn") and db_type != "sqlite":
        s.refuse("dsn", f"is required when database.type is {db_type!r}", "")
        return
    if "dsn" in s.failed or "type" in s.failed:
        return
    assert s.parent is not None
    try:
        database_url(db_type, s["dsn"], s.parent["data_dir"])
    except ValueError as e:
        s.report("dsn", str(e))


#: Fields a virtual bucket must leave empty: it names what clients see, it stores nothing itself.
VIRTUAL_FORBIDDEN = (
    "endpoint",
    "path",
    "bucket",
    "ca_bundle",
    "access_key_id",
    "secret_access_key",
    "zone",
)


def _bucket(s: _Section, seen: dict[str, str]) -> bool:
    """Checks one ``buckets`` entry; False drops it (no name, or a name already used)."""
    name = s["name"]
    if s["virtual"]:
        if name and "name" not in s.failed and not is_valid_bucket_name(name):
            s.report("name", f"{name!r} is not a valid S3 bucket name ({BUCKET_NAME_RULES})")
        for field_name in VIRTUAL_FORBIDDEN:
            if s[field_name]:
                secret = find_key(f"buckets[].{field_name}")
                shown = "a secret" if secret and secret.secret else repr(s[field_name])
                s.report(
                    field_name,
                    f"{shown} is not allowed on a virtual bucket (virtual: true only names "
                    "what clients see; storage settings belong on real buckets)",
                )
    else:
        if s.given("replicas") and s["replicas"] != 1:
            s.report(
                "replicas",
                f"{s['replicas']} is a virtual bucket's setting (how many real buckets hold "
                "each of its objects); a real bucket holds one copy",
            )
        endpoint, path = s["endpoint"], s["path"]
        if endpoint and path:
            s.report(
                "path",
                f"{path!r} and endpoint {endpoint!r} are both set: a real bucket is "
                "either an S3 endpoint or a local directory",
            )
        if path == MEMORY_PATH and s.parent is not None and s.parent["server"].workers > 1:
            s.report("path", f"{path!r} keeps objects in one process: needs server.workers: 1")
        if endpoint:
            try:
                s.values["endpoint"] = normalise_endpoint(endpoint, s["use_ssl"])
            except ValueError as e:
                s.report("endpoint", str(e))
    if not name:
        return False
    if name in seen:
        s.report("name", f"{name!r} is already used by {seen[name]}")
        return False
    seen[name] = s.where
    return True


def _buckets(top: _Section, items: list[Any]) -> None:
    real = [item for item in items if isinstance(item, dict) and item.get("virtual") is not True]
    if not real and "buckets" not in top.failed and not top.malformed:
        top.report(
            "buckets",
            "no real bucket is configured (add an entry with virtual: false and an "
            "endpoint or a path; virtual buckets only name what clients see)",
        )


def _replicas(top: _Section) -> None:
    """A virtual bucket's ``replicas`` needs as many enabled real buckets: with fewer, every
    write to it would be refused."""
    real = [b for b in top["buckets"] if not b.virtual and b.enabled]
    raw = top.data.get("buckets")
    for bucket in top["buckets"]:
        if not bucket.virtual or bucket.replicas <= max(1, len(real)):
            continue
        index = next(
            (i for i, item in enumerate(raw or [])
             if isinstance(item, dict) and item.get("name") == bucket.name),
            None,
        )  # fmt: skip
        where = f"buckets[{index}].replicas" if index is not None else "buckets"
        top.report_at(
            where,
            f"{bucket.replicas} copies need {bucket.replicas} enabled real buckets, but only "
            f"{len(real)} {'is' if len(real) == 1 else 'are'} enabled",
        )


def _metrics(s: _Section) -> None:
    assert s.parent is not None
    path = s["path"]
    if "path" not in s.failed:
        first = path.split("/")[1]
        if first in {b.name for b in s.parent["buckets"] if b.virtual}:
            s.report(
                "path",
                f"{path!r} would hide virtual bucket {first!r} from S3 clients; choose a "
                "path whose first segment is not a bucket name",
            )
    port = s["port"]
    if port and port == s.parent["server"].port:
        s.refuse(
            "port",
            f"{port} is also server.port; use 0 to serve metrics on the main listener",
            port,
        )


def _credential(s: _Section, seen: dict[str, str]) -> bool:
    """Checks one ``s3api.credentials`` entry: its access key is not used twice."""
    assert s.parent is not None
    access_key = s["access_key"]
    main = s.parent["access_key"]
    used_by = "s3api.access_key" if access_key and access_key == main else seen.get(access_key)
    if used_by:
        s.report("access_key", f"{access_key!r} is already used by {used_by}")
    elif access_key:
        seen[access_key] = f"{s.where}.access_key"
    return True


def _s3api(s: _Section) -> None:
    access_key, secret_key = s["access_key"], s["secret_key"]
    if access_key and not secret_key:
        s.report("secret_key", "is empty but s3api.access_key is set (a key pair needs both)")
    if secret_key and not access_key:
        s.report("access_key", "is empty but s3api.secret_key is set (a key pair needs both)")
    if s["auth_required"] and not (access_key and secret_key) and not s["credentials"]:
        s.report(
            "auth_required",
            "true needs a key pair: set s3api.access_key and s3api.secret_key, or add "
            "s3api.credentials",
        )
    if s["virtual_host"] and not s["domain"]:
        s.report(
            "virtual_host",
            "true needs s3api.domain (ours): the base domain clients use as "
            "<bucket>.<domain>, e.g. domain: s3.example.com",
        )


def _api(s: _Section) -> None:
    if s["enabled"] and not s["token"]:
        s.report(
            "token",
            "must be set when api.enabled is true (otherwise anyone could reconfigure "
            "the balancer)",
        )


_SECTION_RULES: dict[str, Callable[[_Section], None]] = {
    "": _replicas,
    "database": _database,
    "metrics": _metrics,
    "s3api": _s3api,
    "api": _api,
}
#: Rules run on each entry of a list as it is read; they say whether to keep it.
_ENTRY_RULES: dict[str, Callable[[_Section, dict[str, str]], bool]] = {
    "buckets": _bucket,
    "s3api.credentials": _credential,
}
#: Rules run on a list once its entries are read, given the mapping holding it and its items.
_LIST_RULES: dict[str, Callable[[_Section, list[Any]], None]] = {"buckets": _buckets}


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
    return _write(config, "", mask_secrets)


def _write(obj: Any, table_path: str, mask_secrets: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in children(table_path):
        path = _join(table_path, name)
        value = getattr(obj, name)
        k = find_key(path)
        if k is None:
            out[name] = _write(value, path, mask_secrets)
        elif isinstance(k.kind, Entries):
            out[name] = [_write(entry, path + "[]", mask_secrets) for entry in value]
        elif value is not None:
            shown = k.kind.mask(value, obj) if k.secret and mask_secrets else value
            out[name] = k.kind.write(shown)
    return out


#: Lists merged entry by entry, and the key that identifies an entry.
_NAMED_LISTS = {k.path: k.kind.identity for k in KEYS if isinstance(k.kind, Entries)}


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
        raise ConfigError([f"the update: {describe(partial)} is not a mapping"])
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
        elif _is_dsn(key_path) and isinstance(current, str) and isinstance(value, str):
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
        problems.append(f"{path}: {describe(partial)} is not a list")
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


def _is_dsn(path: str) -> bool:
    """A DSN sent back masked keeps its password (only the password is masked)."""
    k = find_key(path)
    return k is not None and isinstance(k.kind, Dsn)
