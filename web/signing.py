"""HMAC-SHA256 request signing (DESIGN section 11): the one signing module of the project.

Used by the bet API, the operator views, the reference wallet and every client of them
(payout adapter, bots, tests). A request carries:

    X-Key-Id         which shared secret signed it
    X-Timestamp      unix time in milliseconds
    X-Nonce          random, used once per key (Redis SET NX with expiry)
    X-Content-SHA256 hex SHA-256 of the exact body bytes
    X-Signature      hex HMAC-SHA256(secret, canonical)

    canonical = METHOD \n PATH?QUERY \n TIMESTAMP \n NONCE \n CONTENT_SHA256

Requests outside +/- 300 s are refused, a nonce is accepted once, comparisons are constant time.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from aiohttp import web

MAX_SKEW_MS = 300_000
NONCE_TTL_S = 2 * MAX_SKEW_MS // 1000 + 10

HEADER_KEY_ID = "X-Key-Id"
HEADER_TIMESTAMP = "X-Timestamp"
HEADER_NONCE = "X-Nonce"
HEADER_DIGEST = "X-Content-SHA256"
HEADER_SIGNATURE = "X-Signature"


def _canonical(method: str, path_qs: str, timestamp: str, nonce: str, digest: str) -> bytes:
    return "\n".join((method.upper(), path_qs, timestamp, nonce, digest)).encode()


def body_digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def sign(secret: str, method: str, path_qs: str, timestamp: str, nonce: str, digest: str) -> str:
    return hmac.new(secret.encode(), _canonical(method, path_qs, timestamp, nonce, digest),
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
        HEADER_SIGNATURE: sign(secret, method, path_qs, timestamp, nonce, digest),
    }


class NonceStore(Protocol):
    async def claim(self, key_id: str, nonce: str, ttl_s: int) -> bool:
        """True the first time (key_id, nonce) is seen within ttl_s."""


class RedisNonceStore:
    def __init__(self, redis, namespace: str = "nonce") -> None:  # redis.asyncio.Redis
        self._redis = redis
        self._namespace = namespace

    async def claim(self, key_id: str, nonce: str, ttl_s: int) -> bool:
        return bool(await self._redis.set(f"{self._namespace}:{key_id}:{nonce}", b"1", nx=True, ex=ttl_s))


class MemoryNonceStore:
    """For unit tests and single-process tools; production uses RedisNonceStore."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str], float] = {}

    async def claim(self, key_id: str, nonce: str, ttl_s: int) -> bool:
        now = time.monotonic()
        self._seen = {k: exp for k, exp in self._seen.items() if exp > now}
        if (key_id, nonce) in self._seen:
            return False
        self._seen[(key_id, nonce)] = now + ttl_s
        return True


class SignatureError(Exception):
    """Why a request's signature is refused (the text goes into the 401 answer)."""


@dataclass(frozen=True)
class Caller:
    key_id: str
    role: str


class Verifier:
    """Checks signed requests against a key table {key_id: (secret, role)}."""

    def __init__(self, keys: Mapping[str, tuple[str, str]], nonces: NonceStore,
                 max_skew_ms: int = MAX_SKEW_MS) -> None:
        self._keys = dict(keys)
        self._nonces = nonces
        self._max_skew_ms = max_skew_ms

    async def verify(self, method: str, path_qs: str, headers: Mapping[str, str], body: bytes,
                     now_ms: int | None = None) -> Caller:
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
        if not timestamp.isdigit():
            raise SignatureError("timestamp must be unix milliseconds")
        now = now_ms if now_ms is not None else int(time.time() * 1000)
        if abs(now - int(timestamp)) > self._max_skew_ms:
            raise SignatureError("timestamp outside the allowed window of 300 s")
        if not 8 <= len(nonce) <= 64:
            raise SignatureError("nonce must be 8 to 64 characters")
        if not hmac.compare_digest(digest, body_digest(body)):
            raise SignatureError("body digest does not match the body")
        expected = sign(secret, method, path_qs, timestamp, nonce, digest)
        if not hmac.compare_digest(expected, signature):
            raise SignatureError("bad signature")
        # Claim the nonce last, so that a forged request cannot burn a legitimate nonce.
        if not await self._nonces.claim(key_id, nonce, NONCE_TTL_S):
            raise SignatureError("nonce already used")
        return Caller(key_id=key_id, role=role)


def require_signature(verifier: Verifier, roles: Iterable[str] | None = None,
                      ) -> Callable[[Callable[[web.Request], Awaitable[web.StreamResponse]]],
                                    Callable[[web.Request], Awaitable[web.StreamResponse]]]:
    """aiohttp handler decorator: 401 on a bad signature, 403 on a role not allowed.

    The verified caller is stored as request["caller"].
    """
    allowed = frozenset(roles) if roles is not None else None

    def decorate(handler):
        async def wrapped(request: web.Request) -> web.StreamResponse:
            body = await request.read()
            try:
                caller = await verifier.verify(request.method, request.path_qs, request.headers, body)
            except SignatureError as error:
                return web.json_response({"error": "unauthorized", "reason": str(error)}, status=401)
            if allowed is not None and caller.role not in allowed:
                return web.json_response(
                    {"error": "forbidden", "reason": f"role {caller.role!r} may not call this endpoint"},
                    status=403)
            request["caller"] = caller
            return await handler(request)

        wrapped.__name__ = getattr(handler, "__name__", "wrapped")
        wrapped.__doc__ = handler.__doc__
        return wrapped

    return decorate
