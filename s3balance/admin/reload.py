"""Applying a new configuration to a running daemon (``POST /api/config``, SIGHUP).

A reload is all or nothing up to the swap: every new backend object is built and the strategy
made before anything running changes, so a backend that cannot be built (a missing CA bundle...)
leaves the daemon exactly as it was.  The swap itself is synchronous (one reactor turn), so no
request ever sees half a configuration.

Backends that leave the pool (removed, or replaced by a new object because their endpoint,
credentials or location changed) are *retired*: new requests no longer reach them, but a transfer
that already holds the object keeps using it, so it is closed only after ``close_grace`` seconds
(or by :meth:`Reconfigurator.close_retired`, at shutdown).

What cannot change while listening (``server``, ``database``, ``data_dir``, ``metrics``, ``api``,
``s3api`` except ``allow_create_bucket``, ``multipart``, ``repair``, ``jobs``, and the balancer's
loop periods) is reported as needing a restart and kept as it runs; :attr:`Reconfigurator.config`
always describes what is actually in effect.  Virtual buckets dropped from the file are kept
(they may hold objects).
"""

from __future__ import annotations

import dataclasses
import signal
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.internet.defer import Deferred, DeferredLock
from twisted.internet.interfaces import IDelayedCall, IReactorFromThreads, IReactorTime

from s3balance.backends.interface import IBackend
from s3balance.config import BalancerConfig, BucketConfig, Config
from s3balance.configfile import ConfigError, load_config
from s3balance.configkeys import live_fields, restart_sections
from s3balance.logs import make_logger
from s3balance.placement import make_strategy

if TYPE_CHECKING:
    from s3balance.db.store import MetadataStore
    from s3balance.gateway import Gateway
    from s3balance.health import HealthMonitor
    from s3balance.pool import BackendPool

log = make_logger()

#: Seconds a retired backend stays open for transfers that started before the reload.
CLOSE_GRACE = 900.0

#: Fields a backend object is built from: changing one needs a new object under the same name.
CONNECTION_FIELDS = (
    "endpoint",
    "region",
    "access_key_id",
    "secret_access_key",
    "path_style",
    "use_ssl",
    "bucket",
    "path",
    "ca_bundle",
)
#: Fields the pool reads at every decision: changing them only needs the new configuration.
POOL_FIELDS = ("enabled", "weight", "max_size", "operation_limits", "zone")

#: Top-level sections read only while the daemon starts (``live`` in the key table).
RESTART_SECTIONS = restart_sections()
#: ``balancer`` fields applied live (the loop periods are fixed when the loops start).
LIVE_BALANCER_FIELDS = live_fields("balancer")
#: ``s3api`` fields applied live (the rest shape the authenticator and router, built at start).
LIVE_S3API_FIELDS = live_fields("s3api")


class Reconfigurator:
    """Applies a new configuration to one running daemon, one reload at a time, and owns the
    configuration in effect (:attr:`config`).

    The components change themselves (``BackendPool.replace``, ``HealthMonitor.reconfigure``,
    ``Gateway.reconfigure``); this class decides what changes, in which order, and keeps the
    backends the pool let go open for their grace period.

    :param config: the configuration the daemon started with.
    :param build_backend: makes a backend object for a real bucket, as the daemon made its first
        ones (same reactor, HTTP pool, data directory and stall timeout).
    :param config_path: the file a SIGHUP reloads; None when the daemon has no file.
    """

    def __init__(
        self,
        config: Config,
        *,
        pool: BackendPool,
        health: HealthMonitor,
        gateway: Gateway,
        store: MetadataStore,
        clock: IReactorTime,
        build_backend: Callable[[BucketConfig], IBackend],
        config_path: str | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self._pool = pool
        self._health = health
        self._gateway = gateway
        self._store = store
        self._clock = clock
        self._build_backend = build_backend
        #: Two interleaved reloads could retire a backend twice: one at a time.
        self._lock = DeferredLock()
        #: Backends out of the pool, waiting out their grace period: id -> (backend, its close).
        self._retired: dict[int, tuple[IBackend, IDelayedCall]] = {}

    def apply(self, new: Config, close_grace: float = CLOSE_GRACE) -> Deferred[list[str]]:
        """Make the running daemon use ``new`` (already validated by ``parse_config``).

        :returns: a Deferred firing with one human-readable line per change made or refused
            (those end with "needs a restart"); empty when nothing differs.
        :raises ConfigError: (as the Deferred's failure) a backend could not be built or the
            strategy is unknown; nothing was changed.
        """
        return self._lock.run(lambda: Deferred.fromCoroutine(self._apply(new, close_grace)))

    async def _apply(self, new: Config, close_grace: float) -> list[str]:
        old = self.config
        changes: list[str] = []
        effective = _keep_restart_only(old, new, changes)

        # -- build everything that can fail, before touching the running daemon --------------
        strategy = None
        if effective.balancer.strategy != old.balancer.strategy:
            try:
                strategy = make_strategy(effective.balancer.strategy)
            except ValueError as error:
                raise ConfigError([f"balancer.strategy: {error}"]) from error

        old_real = {b.name: b for b in old.real_buckets}
        new_real = {b.name: b for b in effective.real_buckets}
        running = self._pool.backends()
        backends: dict[str, IBackend] = {}
        built: list[IBackend] = []
        problems: list[str] = []
        for name, bucket in new_real.items():
            before = old_real.get(name)
            current = running.get(name)
            if before is not None and current is not None and not _connection_changed(
                before, bucket
            ):
                backends[name] = current
                continue
            try:
                backend = self._build_backend(bucket)
            except Exception as error:  # any failure to build refuses the whole configuration
                problems.append(f"buckets[{name}]: cannot set up the backend: {error}")
                continue
            backends[name] = backend
            built.append(backend)
        if problems:
            for backend in built:
                await backend.close()
            raise ConfigError(problems)

        # -- the swap: synchronous, so no request sees half of it -----------------------------
        for name, bucket in new_real.items():
            before = old_real.get(name)
            if before is None:
                changes.append(f"backend {name} added")
            elif _connection_changed(before, bucket):
                fields = ", ".join(_differing(before, bucket, CONNECTION_FIELDS))
                changes.append(f"backend {name} reconnected ({fields} changed)")
            if before is None:
                continue
            for field_name in _differing(before, bucket, POOL_FIELDS):
                changes.append(
                    f"backend {name}: {field_name} {_show(before, field_name)} -> "
                    f"{_show(bucket, field_name)}"
                )
        for name in old_real:
            if name not in new_real:
                changes.append(f"backend {name} removed")
        retired = self._pool.replace(backends, dict(new_real))
        if strategy is not None:
            self._pool.set_strategy(strategy)
            changes.append(f"strategy {old.balancer.strategy} -> {effective.balancer.strategy}")
        balancer = effective.balancer
        self._health.reconfigure(
            balancer.probe_timeout, balancer.unhealthy_threshold, balancer.healthy_threshold
        )
        changes += _balancer_changes(old.balancer, balancer)
        self._gateway.reconfigure(effective)
        if old.s3api.allow_create_bucket != effective.s3api.allow_create_bucket:
            changes.append(
                f"s3api.allow_create_bucket {old.s3api.allow_create_bucket} -> "
                f"{effective.s3api.allow_create_bucket}"
            )
        self.config = effective
        self._retire(retired, close_grace)

        # -- after the swap: virtual buckets named in the configuration -----------------------
        old_virtual = {b.name for b in old.virtual_buckets}
        now = self._clock.seconds()
        for bucket in effective.virtual_buckets:
            try:
                created = await self._store.create_bucket(bucket.name, now, from_config=True)
            except Exception as error:  # the rest of the reload stands; say what failed
                changes.append(f"virtual bucket {bucket.name} could not be created: {error}")
                continue
            if created:
                changes.append(f"virtual bucket {bucket.name} created")
        old_replicas = {b.name: b.replicas for b in old.virtual_buckets}
        new_replicas = {b.name: b.replicas for b in effective.virtual_buckets}
        try:  # repair looks at every object of these (even if they change back before it runs)
            await self._store.forget_changed_replicas(
                new_replicas,
                [
                    name for name in set(old_replicas) | set(new_replicas)
                    if old_replicas.get(name, 1) != new_replicas.get(name, 1)
                ],
            )  # fmt: skip
        except Exception as error:
            changes.append(f"repair could not be told about changed replicas: {error}")
        for bucket in effective.virtual_buckets:
            copies = old_replicas.get(bucket.name, 1)
            if copies != bucket.replicas:
                changes.append(
                    f"virtual bucket {bucket.name}: replicas {copies} -> {bucket.replicas} "
                    "(new writes at once; repair brings existing objects to it)"
                )
        for name in sorted(old_virtual - {b.name for b in effective.virtual_buckets}):
            changes.append(
                f"virtual bucket {name} no longer in the configuration (kept, with its objects)"
            )
        return changes

    # -- retired backends ----------------------------------------------------------------------

    def _retire(self, backends: list[IBackend], close_grace: float) -> None:
        for backend in backends:
            key = id(backend)
            if key in self._retired:
                continue
            call = self._clock.callLater(close_grace, self._close_one, key)
            self._retired[key] = (backend, call)

    def _close_one(self, key: int) -> Deferred[None]:
        backend, _ = self._retired.pop(key)
        closing: Deferred[None] = defer.maybeDeferred(backend.close)
        return closing.addErrback(lambda f: log.failure("closing a retired backend failed", f))

    def close_retired(self) -> Deferred[None]:
        """Close every retired backend now, without waiting for its grace period (at shutdown,
        after the listeners have stopped and transfers have ended)."""
        closing = []
        for key, (_, call) in list(self._retired.items()):
            if call.active():
                call.cancel()
            closing.append(self._close_one(key))
        return defer.gatherResults(closing).addCallback(lambda _: None)

    def retired_backends(self) -> list[IBackend]:
        """Backends taken out of the pool and not closed yet."""
        return [backend for backend, _ in self._retired.values()]

    # -- SIGHUP --------------------------------------------------------------------------------

    def reload_from_file(self) -> Deferred[list[str]]:
        """Read :attr:`config_path` again and apply it; problems are logged, never raised (a
        bad file leaves the daemon as it was).

        :returns: the changes made; empty when the file is invalid or there is no file.
        """
        path = self.config_path
        if path is None:
            log.warn("reload requested, but the daemon was started without a configuration file")
            return defer.succeed([])
        try:
            new = load_config(path)
        except ConfigError as error:
            for problem in error.problems:
                log.error("reload of {path} refused: {problem}", path=path, problem=problem)
            return defer.succeed([])
        except OSError as error:
            log.error("reload of {path} refused: {error}", path=path, error=error)
            return defer.succeed([])

        def applied(changes: list[str]) -> list[str]:
            if not changes:
                log.info("reloaded {path}: nothing changed", path=path)
            for change in changes:
                log.info("reloaded {path}: {change}", path=path, change=change)
            return changes

        def refused(failure: Any) -> list[str]:
            if failure.check(ConfigError):
                for problem in failure.value.problems:
                    log.error("reload of {path} refused: {problem}", path=path, problem=problem)
            else:
                log.failure("reload of {path} failed", failure, path=path)
            return []

        return self.apply(new).addCallbacks(applied, refused)

    def install_sighup(self, reactor: IReactorFromThreads) -> Callable[[], None]:
        """Reload the configuration file on SIGHUP (``systemctl reload``).

        The handler only hands the work to the reactor thread: a signal can arrive between any
        two bytecodes, and nothing of the daemon may be touched from there.

        :returns: a function that puts the previous handler back (for ``stopService`` and tests).
        """

        def handler(signum: int, frame: object) -> None:
            reactor.callFromThread(self.reload_from_file)

        previous = signal.signal(signal.SIGHUP, handler)

        def uninstall() -> None:
            signal.signal(signal.SIGHUP, previous)

        return uninstall


def _keep_restart_only(old: Config, new: Config, changes: list[str]) -> Config:
    """``new`` with everything that needs a restart put back to its running value."""
    replacements: dict[str, Any] = {}
    for section in RESTART_SECTIONS:
        if getattr(old, section) != getattr(new, section):
            changes.append(f"{section} changed: needs a restart")
            replacements[section] = getattr(old, section)
    balancer = new.balancer
    for field in dataclasses.fields(BalancerConfig):
        if field.name in LIVE_BALANCER_FIELDS:
            continue
        if getattr(old.balancer, field.name) != getattr(new.balancer, field.name):
            changes.append(f"balancer.{field.name} changed: needs a restart")
            balancer = dataclasses.replace(
                balancer, **{field.name: getattr(old.balancer, field.name)}
            )
    replacements["balancer"] = balancer
    s3api = dataclasses.replace(old.s3api)
    for field in dataclasses.fields(s3api):
        value = getattr(new.s3api, field.name)
        if field.name in LIVE_S3API_FIELDS:
            setattr(s3api, field.name, value)
        elif getattr(old.s3api, field.name) != value:
            changes.append(f"s3api.{field.name} changed: needs a restart")
    replacements["s3api"] = s3api
    return dataclasses.replace(new, **replacements)


def _connection_changed(before: BucketConfig, after: BucketConfig) -> bool:
    return bool(_differing(before, after, CONNECTION_FIELDS))


def _differing(before: BucketConfig, after: BucketConfig, names: tuple[str, ...]) -> list[str]:
    return [name for name in names if getattr(before, name) != getattr(after, name)]


def _show(bucket: BucketConfig, field_name: str) -> str:
    value = getattr(bucket, field_name)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return str(dataclasses.asdict(value))
    if field_name == "zone":
        return bucket.failure_domain  # what an unset zone means
    return "unlimited" if value is None else str(value)


def _balancer_changes(old: BalancerConfig, new: BalancerConfig) -> list[str]:
    return [
        f"balancer.{name} {getattr(old, name)} -> {getattr(new, name)}"
        for name in (
            "unhealthy_threshold",
            "healthy_threshold",
            "probe_timeout",
            "retry_attempts",
            "retry_delay",
            "rebalance",
            "rebalance_threshold",
        )
        if getattr(old, name) != getattr(new, name)
    ]
