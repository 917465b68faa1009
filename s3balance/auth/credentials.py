"""Who may sign requests, and what each key may touch.

Built once from ``s3api`` config; the authenticator asks it for secrets, the front asks the
resulting :class:`Identity` whether an operation on a virtual bucket is allowed.
"""

from __future__ import annotations

from dataclasses import dataclass

from s3balance.config import S3ApiConfig


@dataclass(frozen=True)
class Identity:
    """The verified signer of a request.

    :param access_key: the key the request was signed with.
    :param buckets: virtual buckets this key may use; empty means all of them.
    :param read_only: whether the key is limited to reads.
    """

    access_key: str
    buckets: frozenset[str] = frozenset()
    read_only: bool = False

    def may_access(self, bucket: str, write: bool) -> bool:
        """Whether this key may perform a read (or write) on ``bucket``.

        ``bucket`` empty means the service itself (ListBuckets, which the front filters with
        ``may_access(name, False)`` per bucket): readable by any key, writable by none that is
        read-only.
        """
        if write and self.read_only:
            return False
        if not bucket:
            return True
        return not self.buckets or bucket in self.buckets


@dataclass(frozen=True)
class _Entry:
    secret: str
    identity: Identity


class KeyRing:
    """Access keys with their secrets and scopes."""

    def __init__(self, entries: dict[str, tuple[str, Identity]] | None = None) -> None:
        self._entries: dict[str, _Entry] = {
            key: _Entry(secret, identity) for key, (secret, identity) in (entries or {}).items()
        }

    @classmethod
    def from_config(cls, s3api: S3ApiConfig) -> KeyRing:
        """The main ``access_key``/``secret_key`` pair (full access) plus each ``credentials`` one.

        :raises ValueError: an access key listed twice with different secrets or scopes, or a key
            without a secret.
        """
        ring = cls()
        if s3api.access_key:
            ring.add(s3api.access_key, s3api.secret_key, Identity(s3api.access_key))
        for cred in s3api.credentials:
            identity = Identity(cred.access_key, frozenset(cred.buckets), cred.read_only)
            ring.add(cred.access_key, cred.secret_key, identity)
        return ring

    def add(self, access_key: str, secret: str, identity: Identity) -> None:
        """Register a key; re-adding the identical key is harmless, a conflicting one is not.

        :raises ValueError: see :meth:`from_config`.
        """
        if not access_key or not secret:
            raise ValueError(f"access key {access_key!r} needs both a key id and a secret")
        entry = _Entry(secret, identity)
        existing = self._entries.get(access_key)
        if existing is not None and existing != entry:
            raise ValueError(f"access key {access_key!r} is configured twice differently")
        self._entries[access_key] = entry

    def secret_for(self, access_key: str) -> str | None:
        entry = self._entries.get(access_key)
        return entry.secret if entry else None

    def identity_for(self, access_key: str) -> Identity | None:
        entry = self._entries.get(access_key)
        return entry.identity if entry else None

    def __len__(self) -> int:
        return len(self._entries)
