"""HMAC-SHA256 request signing (DESIGN section 11): the one signing module of the project.

Used by the bet API, the operator views, the reference wallet and every client of them
(payout adapter, bots, tests: all sign through `sign_headers`). A request carries:

    X-Key-Id         which shared secret signed it
    X-Timestamp      unix time in milliseconds
    X-Nonce          8 to 64 random characters, used once per key
    X-Content-SHA256 hex SHA-256 of the exact body bytes
    X-Signature      hex HMAC-SHA256(secret, canonical)

    canonical = METHOD \n PATH?QUERY \n KEY_ID \n TIMESTAMP \n NONCE \n CONTENT_SHA256

The key id is signed too: otherwise a captured request could be re-sent under another key id
that shares its secret (another role, and a fresh nonce namespace).

Requests outside +/- 300 s are refused, comparisons are constant time, and a nonce is accepted
once: Redis SET NX with an expiry longer than the window, on a Redis that writes every change to
its append-only file before answering (see `./stack`), so a restart, kill -9 included, does not
reopen the window. If the nonce store comes back *without* its data (a new node, a lost disk),
its epoch key is gone too: the store then starts a new epoch at the moment that Redis started
and refuses every request signed before it, so that no request
signed before the loss can be replayed.
"""
from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from aiohttp import web

from web.group_commit import GroupCommit

__all__ = ["sign", "sign_headers", "body_digest", "canonical", "Verifier", "Caller", "SignatureError",
           "NonceStoreUnavailable", "RedisNonceStore", "MemoryNonceStore", "require_signature", "MAX_SKEW_MS"]

MAX_SKEW_MS = 300_000
NONCE_TTL_S = 2 * MAX_SKEW_MS // 1000 + 10

HEADER_KEY_ID = "X-Key-Id"
HEADER_TIMESTAMP = "X-Timestamp"
HEADER_NONCE = "X-Nonce"
HEADER_DIGEST = "X-Content-SHA256"
HEADER_SIGNATURE = "X-Signature"

# Shapes checked before anything is computed from a header: an over-long timestamp must not
# reach int() (Python refuses to parse more than 4300 digits: a 500), a non-ASCII signature must
# not reach hmac.compare_digest (it raises TypeError for non-ASCII text: a 500 too).
_TIMESTAMP = re.compile(r"[0-9]{1,16}")
_NONCE = re.compile(r"[A-Za-z0-9+/=_.-]{8,64}")
_HEX64 = re.compile(r"[0-9a-f]{64}")


def canonical(method: str, path_qs: str, key_id: str, timestamp: str, nonce: str, digest: str) -> bytes:
    """The exact bytes that are signed (documented in README, section APIs)."""
    return "\n".join((method.upper(), path_qs, key_id, timestamp, nonce, digest)).encode()


def body_digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def sign(secret: str, method: str, path_qs: str, key_id: str, timestamp: str, nonce: str, digest: str) -> str:
    return hmac.new(secret.encode(), canonical(method, path_qs, key_id, timestamp, nonce, digest),
                    hashlib.sha256).hexdigest()


def sign_headers(key_id: str, secret: str, method: str, path_qs: str, body: bytes = b"",
                 now_ms: int | None = None) -> dict[str, str]:
    """Headers that authenticate one request (client side)."""
    timestamp = str(now_ms if now_ms is not None else int(time.time() * 1000))
    nonce = secrets.token_hex(16)
    digest = body_digest(body)
    return {
        HEADER_KEY_ID: key_id,
        HEADER_TIMESTAMP: timestamp,
        HEADER_NONCE: nonce,
        HEADER_DIGEST: digest,
        HEADER_SIGNATURE: sign(secret, method, path_qs, key_id, timestamp, nonce, digest),
    }


class NonceStore(Protocol):
    async def claim(self, key_id: str, nonce: str, ttl_s: int, signed_at_ms: int) -> str | None:
        """None when (key_id, nonce) is claimed now for the first time, else why it is refused."""


class NonceStoreUnavailable(Exception):
    """The nonce store cannot be reached: the request can be neither accepted nor refused (503)."""


def _now_ms() -> int:
    return int(time.time() * 1000)


class RedisNonceStore:
    """Nonces in Redis, one key per (key id, nonce) with an expiry, plus the store's epoch.

    Claims are grouped (`web/group_commit.py`): those that arrive while one round trip runs go
    together in the next one, a pipeline of a SET NX per nonce and one GET of the epoch. One round
    trip per request was 17.6 % of a gateway's samples at 500 signed bets/s (crash-bench
    --profile)."""

    MAX_CLAIMS = 500      # per round trip

    def __init__(self, redis, namespace: str = "nonce") -> None:  # redis.asyncio.Redis
        self._redis = redis
        self._namespace = namespace
        self._epoch_key = f"{namespace}:epoch"
        self._group: GroupCommit[tuple[str, int], tuple[bool, bytes | None]] = GroupCommit(
            self._claim_batch, self.MAX_CLAIMS)

    async def _new_epoch(self) -> int:
        """When the data was lost at the latest: Redis's start (to the second: its uptime is whole
        seconds). Everything signed since then has had its nonce claimed in this Redis. (Not this
        process's start: a verifier made lazily, at its first request, would refuse that request.)"""
        seconds, _micros = await self._redis.time()
        uptime_s = int((await self._redis.info("server"))["uptime_in_seconds"])
        return (seconds - uptime_s) * 1000

    async def claim(self, key_id: str, nonce: str, ttl_s: int, signed_at_ms: int) -> str | None:
        from streams.cache import REDIS_ERRORS

        fresh, epoch = await self._group.submit((f"{self._namespace}:{key_id}:{nonce}", ttl_s))
        try:
            if epoch is None:
                # No epoch: this store is new or lost its data (and with it, maybe, the nonces
                # of requests signed before). A new epoch starts; the first writer wins.
                await self._redis.set(self._epoch_key, str(await self._new_epoch()).encode(), nx=True)
                epoch = await self._redis.get(self._epoch_key)
        except REDIS_ERRORS as error:
            raise NonceStoreUnavailable(f"nonce store unavailable: {error}") from error
        if epoch is not None and signed_at_ms < int(epoch):
            return "signed before the nonce store's current epoch (it restarted without its data); sign it again"
        return None if fresh else "nonce already used"

    async def _claim_batch(self, claims: list[tuple[str, int]]) -> list[tuple[bool, bytes | None]]:
        """(claimed now, the epoch) per claim; NonceStoreUnavailable fails the whole batch."""
        from streams.cache import REDIS_ERRORS

        try:
            pipe = self._redis.pipeline(transaction=False)
            for key, ttl_s in claims:
                pipe.set(key, b"1", nx=True, ex=ttl_s)
            pipe.get(self._epoch_key)
            *fresh, epoch = await pipe.execute()
        except REDIS_ERRORS as error:
            raise NonceStoreUnavailable(f"nonce store unavailable: {error}") from error
        return [(bool(claimed), epoch) for claimed in fresh]


class MemoryNonceStore:
    """For unit tests and single-process tools; production uses RedisNonceStore.

    Its epoch is its creation: a restarted process forgets its nonces, so it refuses what was
    signed before it started.
    """

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str], float] = {}
        self.epoch_ms = _now_ms()

    async def claim(self, key_id: str, nonce: str, ttl_s: int, signed_at_ms: int) -> str | None:
        if signed_at_ms < self.epoch_ms:
            return "signed before the nonce store's current epoch (it restarted without its data); sign it again"
        now = time.monotonic()
        self._seen = {k: exp for k, exp in self._seen.items() if exp > now}
        if (key_id, nonce) in self._seen:
            return "nonce already used"
        self._seen[(key_id, nonce)] = now + ttl_s
        return None


class SignatureError(Exception):
    """Why a request's signature is refused (the text goes into the 401 answer)."""


@dataclass(frozen=True)
class Caller:
    key_id: str
    role: str
    # The operator group the key belongs to ("" for a key of the platform itself): such a key
    # acts only on that group's channels, players, jackpots and data (DESIGN section 11).
    group: str = ""

    def may_act_on(self, operator_group: str) -> bool:
        return not self.group or self.group == operator_group


# Where a request's verified caller is kept once its signature (or session) checked out.
CALLER = web.RequestKey("caller", Caller)


class Verifier:
    """Checks signed requests against a key table {key_id: (secret, role)}; a role may name the
    key's operator group as `role@group`."""

    def __init__(self, keys: Mapping[str, tuple[str, str]], nonces: NonceStore,
                 max_skew_ms: int = MAX_SKEW_MS) -> None:
        self._keys = dict(keys)
        self._nonces = nonces
        self._max_skew_ms = max_skew_ms

    async def verify(self, method: str, path_qs: str, headers: Mapping[str, str], body: bytes,
                     now_ms: int | None = None) -> Caller:
        """The caller of a well-signed, fresh, first-seen request; SignatureError otherwise
        (NonceStoreUnavailable when the nonce cannot be claimed)."""
        try:
            key_id = headers[HEADER_KEY_ID]
            timestamp = headers[HEADER_TIMESTAMP]
            nonce = headers[HEADER_NONCE]
            digest = headers[HEADER_DIGEST]
            signature = headers[HEADER_SIGNATURE]
        except KeyError as missing:
            raise SignatureError(f"missing header {missing.args[0]}") from None
        entry = self._keys.get(key_id)
        if entry is None:
            raise SignatureError("unknown key id")
        secret, role = entry
        if not _TIMESTAMP.fullmatch(timestamp):
            raise SignatureError("timestamp must be unix milliseconds (1 to 16 digits)")
        now = now_ms if now_ms is not None else _now_ms()
        signed_at = int(timestamp)
        if abs(now - signed_at) > self._max_skew_ms:
            raise SignatureError("timestamp outside the allowed window of 300 s")
        if not _NONCE.fullmatch(nonce):
            raise SignatureError("nonce must be 8 to 64 characters of A-Z a-z 0-9 + / = _ . -")
        if not _HEX64.fullmatch(digest) or not hmac.compare_digest(digest, body_digest(body)):
            raise SignatureError("body digest does not match the body")
        expected = sign(secret, method, path_qs, key_id, timestamp, nonce, digest)
        if not _HEX64.fullmatch(signature) or not hmac.compare_digest(expected, signature):
            raise SignatureError("bad signature")
        # Claim the nonce last, so that a forged request cannot burn a legitimate nonce.
        refusal = await self._nonces.claim(key_id, nonce, NONCE_TTL_S, signed_at)
        if refusal:
            raise SignatureError(refusal)
        role, _, group = role.partition("@")       # "role@group": a key of one operator group
        return Caller(key_id=key_id, role=role, group=group)


def require_signature(verifier: Verifier, roles: Iterable[str] | None = None,
                      ) -> Callable[[Callable[[web.Request], Awaitable[web.StreamResponse]]],
                                    Callable[[web.Request], Awaitable[web.StreamResponse]]]:
    """aiohttp handler decorator: 401 on a bad signature, 403 on a role not allowed, 503 when
    the nonce store is down.

    The verified caller is stored as request[CALLER].
    """
    allowed = frozenset(roles) if roles is not None else None

    def decorate(handler):
        async def wrapped(request: web.Request) -> web.StreamResponse:
            body = await request.read()
            try:
                caller = await verifier.verify(request.method, request.path_qs, request.headers, body)
            except SignatureError as error:
                return web.json_response({"error": "unauthorized", "reason": str(error)}, status=401)
            except NonceStoreUnavailable as error:
                return web.json_response({"error": "unavailable", "reason": str(error)}, status=503,
                                         headers={"Retry-After": "1"})
            if allowed is not None and caller.role not in allowed:
                return web.json_response(
                    {"error": "forbidden", "reason": f"role {caller.role!r} may not call this endpoint"},
                    status=403)
            request[CALLER] = caller
            return await handler(request)

        wrapped.__name__ = getattr(handler, "__name__", "wrapped")
        wrapped.__doc__ = handler.__doc__
        return wrapped

    return decorate
