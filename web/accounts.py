"""Operator accounts of the operators' console and the rules of their login.

An operator is a name, a password (only its scrypt hash is stored), a role (`admin` writes,
`reader` reads) and an optional operator group (then the account acts only on that group's
channels, jackpots and payouts, as a `role@group` key does). Accounts live in MariaDB
(`operator_account`, migration crash/007) and are made with `crash-admin operator add`.

What is here has no Faust in it, so that the CLI and unit tests use it without an app:

- the password hash: `hashlib.scrypt` (memory-hard, in the standard library), its parameters
  kept in the stored string (`scrypt$<log2 n>$<r>$<p>$<salt>$<hash>`), so that they can be
  raised later without invalidating existing hashes; checked in constant time;
- the account table's reads and writes;
- `FailureLimiter`: failed logins counted per key (an account name, a client address) in a
  sliding window, in Redis (shared by every crash-ops process), in bounded memory. No clock of
  its own: the caller passes the time.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from streams import ids

__all__ = ["Account", "AccountError", "FailureLimiter", "ROLES", "add_account", "check_password", "get_account",
           "hash_password", "list_accounts", "set_disabled", "MIN_PASSWORD", "MAX_PASSWORD"]

ROLES = ("admin", "reader")
MIN_PASSWORD = 12
MAX_PASSWORD = 1024          # scrypt reads all of it: a cap keeps one login's cost bounded

# scrypt: n = 2^15, r = 8 -> 32 MiB and about 0.1-0.3 s per hash on this project's 2-core
# machine; slow enough that a stolen table is expensive to guess through, fast enough to log in.
LOG2_N, R, P, DKLEN, SALT_BYTES = 15, 8, 1, 32, 16
_MAXMEM = 128 * R * (2 ** 20) + 16 * 1024 * 1024     # above 128 * r * n for n up to 2^20


class AccountError(ValueError):
    """A name, role, group or password that cannot make an account (the text says why)."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def hash_password(password: str, log2_n: int = LOG2_N) -> str:
    if not isinstance(password, str) or not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise AccountError(f"the password must have {MIN_PASSWORD} to {MAX_PASSWORD} characters")
    salt = secrets.token_bytes(SALT_BYTES)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=2 ** log2_n, r=R, p=P, dklen=DKLEN, maxmem=_MAXMEM)
    return f"scrypt${log2_n}${R}${P}${_b64(salt)}${_b64(digest)}"


def check_password(password: str, stored: str) -> bool:
    """Whether `password` has the hash `stored` (False for a malformed hash, never an error)."""
    try:
        scheme, log2_n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt" or not 10 <= int(log2_n) <= 20 or not 1 <= int(r) <= 32 or not 1 <= int(p) <= 4:
            return False
        expected = base64.b64decode(digest, validate=True)
        computed = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt, validate=True),
                                  n=2 ** int(log2_n), r=int(r), p=int(p), dklen=len(expected), maxmem=_MAXMEM)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(computed, expected)


_dummy: str | None = None


def dummy_hash() -> str:
    """A hash of no account's password: a login with an unknown name is checked against it, so
    that it takes as long as a wrong password (the answer time does not tell which names exist)."""
    global _dummy
    if _dummy is None:
        _dummy = hash_password(secrets.token_urlsafe(24))
    return _dummy


# ---------------------------------------------------------------- the account table

@dataclass(frozen=True)
class Account:
    name: str
    role: str
    group: str             # "" = every operator group
    password_hash: str
    disabled: bool
    created_at: int
    updated_at: int

    def public(self) -> dict[str, Any]:
        return {"name": self.name, "role": self.role, "group": self.group, "disabled": self.disabled,
                "created_at": self.created_at, "updated_at": self.updated_at}


def check_account_fields(name: str, role: str, group: str) -> None:
    if not ids.is_name(name):
        raise AccountError(f"the name must match {ids.NAME.pattern}")
    if role not in ROLES:
        raise AccountError(f"the role must be one of {', '.join(ROLES)}")
    if group and not ids.is_name(group):
        raise AccountError(f"the operator group must match {ids.NAME.pattern}")


def _account(row: Any) -> Account:
    return Account(name=row.name, role=row.role, group=row.operator_group, password_hash=row.password_hash,
                   disabled=bool(row.disabled), created_at=row.created_at, updated_at=row.updated_at)


async def get_account(engine: AsyncEngine, name: str) -> Account | None:
    if not ids.is_name(name):
        return None
    async with engine.connect() as conn:
        row = (await conn.execute(text("SELECT * FROM operator_account WHERE name = :n"), {"n": name})).first()
    return _account(row) if row is not None else None


async def list_accounts(engine: AsyncEngine) -> list[Account]:
    async with engine.connect() as conn:
        return [_account(row) for row in await conn.execute(text("SELECT * FROM operator_account ORDER BY name"))]


async def add_account(engine: AsyncEngine, name: str, role: str, group: str, password_hash: str,
                      replace: bool = False) -> str:
    """Create the account ("added"), or with `replace` set its role, group and password and
    enable it ("replaced"); an existing name without `replace` is an AccountError."""
    check_account_fields(name, role, group)
    now = int(time.time() * 1000)
    async with engine.begin() as conn:
        exists = (await conn.execute(text("SELECT 1 FROM operator_account WHERE name = :n FOR UPDATE"),
                                     {"n": name})).first() is not None
        if exists and not replace:
            raise AccountError(f"operator {name} exists (--replace sets a new password, role and group)")
        if exists:
            await conn.execute(text(
                "UPDATE operator_account SET role = :r, operator_group = :g, password_hash = :h, disabled = 0,"
                " updated_at = :now WHERE name = :n"), {"n": name, "r": role, "g": group, "h": password_hash,
                                                         "now": now})
            return "replaced"
        await conn.execute(text(
            "INSERT INTO operator_account (name, role, operator_group, password_hash, disabled, created_at, updated_at)"
            " VALUES (:n, :r, :g, :h, 0, :now, :now)"), {"n": name, "r": role, "g": group, "h": password_hash,
                                                         "now": now})
    return "added"


async def set_disabled(engine: AsyncEngine, name: str, disabled: bool) -> bool:
    """Disable (or enable) an account; False if there is none. A disabled account cannot log in,
    and its open sessions end at their next refresh (web/console.py: within a minute)."""
    async with engine.begin() as conn:
        result = await conn.execute(text(
            "UPDATE operator_account SET disabled = :d, updated_at = :now WHERE name = :n"),
            {"n": name, "d": int(disabled), "now": int(time.time() * 1000)})
        return result.rowcount == 1


# ---------------------------------------------------------------- failed logins

class FailureLimiter:
    """At most `limit` failures per key within `window_ms`; then the key is refused until its
    oldest counted failure leaves the window.

    The failures live in Redis (a sorted set of failure times per key, under `prefix`), so that
    every crash-ops process counts the same ones: with N replicas behind the ingress, a limit
    kept per process would let an attacker try N times as often, and a restart would forget a
    lock. Memory is bounded: a key keeps its newest `limit` failures and expires with its window.
    Keys should not be secrets (a name may be a password typed in the wrong field): the caller
    passes a keyed tag of them. The caller passes the time, in ms.
    """

    def __init__(self, store: Redis, prefix: str, limit: int, window_ms: int) -> None:
        if limit < 1 or window_ms < 1:
            raise ValueError("limit and window_ms must be positive")
        self.store, self.prefix, self.limit, self.window_ms = store, prefix, limit, window_ms

    async def retry_after_ms(self, key: str, now_ms: int) -> int:
        """0 when `key` may try now, else how long until it may."""
        name = self.prefix + key
        async with self.store.pipeline(transaction=True) as pipe:
            pipe.zremrangebyscore(name, "-inf", now_ms - self.window_ms)
            pipe.zrange(name, 0, 0, withscores=True)
            pipe.zcard(name)
            _, oldest, count = await pipe.execute()
        if count < self.limit:
            return 0
        return int(oldest[0][1]) + self.window_ms - now_ms

    async def fail(self, key: str, now_ms: int) -> bool:
        """Count a failure; True when this failure is the one that locks the key (one caller
        sees it, however many processes fail the key at once: the steps are one transaction)."""
        name = self.prefix + key
        async with self.store.pipeline(transaction=True) as pipe:
            pipe.zremrangebyscore(name, "-inf", now_ms - self.window_ms)
            pipe.zadd(name, {f"{now_ms}.{secrets.token_hex(4)}": now_ms})
            pipe.zremrangebyrank(name, 0, -self.limit - 1)     # only the newest `limit`
            pipe.zcard(name)
            pipe.pexpire(name, self.window_ms)
            _, _, trimmed, count, _ = await pipe.execute()
        return count == self.limit and not trimmed

    async def clear(self, key: str) -> None:
        await self.store.delete(self.prefix + key)
