"""Turn the ``database.dsn`` a user wrote into a SQLAlchemy URL.

Go S3 Balance files carry GORM DSNs (``user:pass@tcp(host:3306)/db?parseTime=True`` for MySQL,
libpq ``host=... user=...`` for PostgreSQL, a bare path for SQLite); people coming from Python write
SQLAlchemy URLs.  Both must work, and a password full of ``@:/%`` must survive, so every URL is
built with :meth:`sqlalchemy.engine.URL.create` rather than by pasting strings.
"""

from __future__ import annotations

import os
import re
from urllib.parse import parse_qsl

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

__all__ = ["database_url", "mask_dsn_password", "MASK"]

#: What a hidden secret looks like in ``config_to_dict`` output.
MASK = "***"

_DRIVERS = {"sqlite": "sqlite", "mysql": "mysql+pymysql", "postgres": "postgresql+psycopg2"}
_BACKEND_OF_TYPE = {"sqlite": "sqlite", "mysql": "mysql", "postgres": "postgresql"}
#: URL schemes people write, mapped to SQLAlchemy backend names.
_SCHEME_BACKENDS = {
    "sqlite": "sqlite",
    "mysql": "mysql",
    "mariadb": "mysql",
    "postgres": "postgresql",
    "postgresql": "postgresql",
}
_URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")

#: Go MySQL DSN: ``[user[:password]@][net[(addr)]]/dbname[?params]``.  The greedy user part
#: takes the last ``@`` that still leaves a well-formed remainder, so passwords may hold ``@``.
_GO_MYSQL_RE = re.compile(
    r"^(?:(?P<userinfo>.*)@)?(?:(?P<net>[A-Za-z0-9]+)(?:\((?P<addr>[^()]*)\))?)?"
    r"/(?P<db>[^/?]*)(?:\?(?P<params>.*))?$",
    re.DOTALL,
)
#: Go MySQL parameters PyMySQL understands under the same name; the rest (parseTime, loc,
#: timeout...) only steer the Go driver and are dropped.
_MYSQL_KEPT_PARAMS = ("charset", "collation")

#: libpq connection keywords psycopg2 passes through; other keys (GORM's ``TimeZone``) are
#: server run-time parameters and go into ``options``.
_LIBPQ_KEYWORDS = frozenset(
    {
        "sslmode", "sslrootcert", "sslcert", "sslkey", "sslcrl", "sslpassword", "sslcompression",
        "connect_timeout", "application_name", "fallback_application_name", "options",
        "target_session_attrs", "keepalives", "keepalives_idle", "keepalives_interval",
        "keepalives_count", "client_encoding", "passfile", "service", "gssencmode",
        "channel_binding", "hostaddr", "krbsrvname", "requiressl",
    }
)  # fmt: skip
_PG_PAIR_RE = re.compile(
    r"\s*(?P<key>[A-Za-z_][A-Za-z0-9_]*)\s*=\s*"
    r"(?:'(?P<single>(?:[^'\\]|\\.)*)'|\"(?P<double>(?:[^\"\\]|\\.)*)\""
    r"|(?P<unterminated>['\"].*)|(?P<bare>[^\s'\"]*))",
    re.DOTALL,
)


def database_url(db_type: str, dsn: str, data_dir: str) -> str:
    """The SQLAlchemy URL for a ``database`` section.

    :param db_type: ``sqlite``, ``mysql`` or ``postgres``.
    :param dsn: a SQLAlchemy URL, a Go DSN, or for SQLite a file path (or ``:memory:``).
    :param data_dir: what a relative SQLite path is relative to.
    :raises ValueError: the type is unknown, the DSN is malformed, or it is for another database.
    """
    if db_type not in _DRIVERS:
        raise ValueError(f"unknown database type {db_type!r} (allowed: sqlite, mysql, postgres)")
    text = dsn.strip()
    if not text:
        raise ValueError(f"an empty dsn is not usable for database type {db_type!r}")
    if _URL_RE.match(text):
        return _from_url(db_type, text)
    if db_type == "sqlite":
        return _from_sqlite_path(text, data_dir)
    if db_type == "mysql":
        return _from_go_mysql(text)
    return _from_libpq(text)


def mask_dsn_password(db_type: str, dsn: str) -> str:
    """``dsn`` in its own syntax with any password replaced by :data:`MASK`.

    Text that does not parse is returned unchanged: it cannot have loaded, so nothing is exposed
    that the user did not just type.
    """
    text = dsn.strip()
    if _URL_RE.match(text):
        try:
            url = make_url(text)
        except ArgumentError:
            return dsn
        if url.password is None or url.password == "":
            return dsn
        return url.render_as_string(hide_password=True)
    if db_type == "mysql":
        match = _GO_MYSQL_RE.match(text)
        if match is None or match.group("userinfo") is None:
            return dsn
        user, colon, _password = match.group("userinfo").partition(":")
        if not colon:
            return dsn
        return f"{user}:{MASK}@" + text[match.end("userinfo") + 1 :]
    if db_type == "postgres":

        def hide(pair: re.Match[str]) -> str:
            if pair.group("key") != "password":
                return pair.group(0)
            return pair.group(0)[: pair.end("key") - pair.start()] + f"={MASK}"

        leading = text[: len(text) - len(text.lstrip())]
        return leading + _PG_PAIR_RE.sub(hide, text)
    return dsn


def _from_url(db_type: str, text: str) -> str:
    try:
        url = make_url(text)
    except ArgumentError as e:
        raise ValueError(f"{_hide(text)!r} is not a database URL ({e})") from None
    backend, _, driver = url.drivername.partition("+")
    wanted = _BACKEND_OF_TYPE[db_type]
    if _SCHEME_BACKENDS.get(backend) != wanted:
        raise ValueError(f"{_hide(text)!r} is a {backend!r} URL but database.type is {db_type!r}")
    if not driver:
        url = url.set(drivername=_DRIVERS[db_type])
    elif backend == "postgres":
        url = url.set(drivername=f"postgresql+{driver}")
    return url.render_as_string(hide_password=False)


def _from_sqlite_path(text: str, data_dir: str) -> str:
    path, _, query = text.partition("?")
    path = path.removeprefix("file:")
    params = dict(parse_qsl(query))
    if path in ("", ":memory:") or params.get("mode") == "memory":
        return "sqlite://"
    path = os.path.expanduser(path)
    if not os.path.isabs(path):
        path = os.path.join(data_dir, path)
    return URL.create("sqlite", database=path).render_as_string(hide_password=False)


def _from_go_mysql(text: str) -> str:
    match = _GO_MYSQL_RE.match(text)
    if match is None:
        raise ValueError(
            f"{_hide(text)!r} is neither a URL (mysql://user:pass@host/db) nor a Go MySQL DSN "
            "(user:pass@tcp(host:3306)/db)"
        )
    username = password = None
    if match.group("userinfo") is not None:
        username, colon, pw = match.group("userinfo").partition(":")
        password = pw if colon else None
    net = match.group("net") or "tcp"
    addr = match.group("addr")
    host: str | None = None
    port: int | None = None
    query: dict[str, str] = {}
    if net == "unix":
        if not addr:
            raise ValueError(
                f"{_hide(text)!r}: unix() needs a socket path, e.g. unix(/run/mysqld.sock)"
            )
        query["unix_socket"] = addr
    elif net in ("tcp", "tcp6"):
        host, port = _split_host_port(addr or "127.0.0.1:3306", 3306, text)
    else:
        raise ValueError(f"{_hide(text)!r}: network {net!r} is not supported (use tcp or unix)")
    for key, value in parse_qsl(match.group("params") or "", keep_blank_values=True):
        if key in _MYSQL_KEPT_PARAMS:
            # Go lets charset list fallbacks ("utf8mb4,utf8"); PyMySQL takes one.
            query[key] = value.split(",")[0]
    database = match.group("db") or None
    url = URL.create(
        "mysql+pymysql",
        username=username or None,
        password=password,
        host=host,
        port=port,
        database=database,
        query=query,
    )
    return url.render_as_string(hide_password=False)


def _split_host_port(addr: str, default_port: int, text: str) -> tuple[str, int]:
    if addr.startswith("["):
        host, bracket, rest = addr[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"{_hide(text)!r}: {addr!r} is not host:port")
        port_text = rest[1:]
    elif addr.count(":") == 1:
        host, _, port_text = addr.partition(":")
    else:
        host, port_text = addr, ""
    if not host:
        raise ValueError(f"{_hide(text)!r}: {addr!r} has no host")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"{_hide(text)!r}: port {port_text!r} is not a number in 1..65535")
    return host, int(port_text)


def _parse_libpq(text: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    position = 0
    while position < len(text):
        if text[position:].strip() == "":
            break
        match = _PG_PAIR_RE.match(text, position)
        if match is None:
            raise ValueError(
                f"{_hide(text)!r} is neither a URL (postgresql://user:pass@host/db) nor a "
                "key=value DSN (host=... user=... password=... dbname=...)"
            )
        if match.group("unterminated") is not None:
            raise ValueError(
                f"{_hide(text)!r}: the quoted value of {match.group('key')} has no closing quote"
            )
        raw = match.group("single")
        if raw is None:
            raw = match.group("double")
        if raw is None:
            value = match.group("bare")
        else:
            value = re.sub(r"\\(.)", r"\1", raw, flags=re.DOTALL)
        pairs[match.group("key")] = value
        position = match.end()
        if position < len(text) and not text[position].isspace():
            raise ValueError(f"{_hide(text)!r}: expected a space after {match.group('key')}=...")
    return pairs


def _from_libpq(text: str) -> str:
    pairs = _parse_libpq(text)
    if not pairs:
        raise ValueError(f"{_hide(text)!r} has no key=value pairs")
    host = pairs.pop("host", None) or None
    port_text = pairs.pop("port", None) or None
    query: dict[str, str] = {}
    port: int | None = None
    if host is not None and (host.startswith("/") or "," in host):
        # A socket directory or a multi-host list: psycopg2 takes these only as a parameter.
        query["host"] = host
        host = None
    if port_text is not None:
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise ValueError(f"{_hide(text)!r}: port {port_text!r} is not a number in 1..65535")
        if host is None and "host" in query:
            query["port"] = port_text
        else:
            port = int(port_text)
    username = pairs.pop("user", None) or None
    password = pairs.pop("password", None)
    database = pairs.pop("dbname", None) or None
    runtime: list[str] = []
    for key, value in pairs.items():
        if key in _LIBPQ_KEYWORDS:
            query[key] = value
        else:
            runtime.append(f"-c {key}={value}")
    if runtime:
        query["options"] = " ".join(filter(None, [query.get("options", ""), *runtime]))
    url = URL.create(
        "postgresql+psycopg2",
        username=username,
        password=password if password else None,
        host=host,
        port=port,
        database=database,
        query=query,
    )
    return url.render_as_string(hide_password=False)


def _hide(text: str) -> str:
    """Error messages quote the DSN; they must not quote its password."""
    for db_type in ("postgres", "mysql"):
        masked = mask_dsn_password(db_type, text)
        if masked != text:
            return masked
    return text
