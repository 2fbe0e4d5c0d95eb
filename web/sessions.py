"""Players' session tokens (DESIGN section 11): the page acts for one player, and only for them.

The operator's server, which knows its player, asks the bet API (HMAC-signed, role `game`) for a
short-lived token for one player; the page carries it on its WebSocket and on its actions. The
token is self-contained, so that any gateway or push gateway process checks it without a
look-up:

    token   = base64url(payload JSON) "." base64url(HMAC-SHA256(CRASH_SESSION_SECRET, payload part))
    payload = {"v": 1, "sub": user_id, "sid": random session id, "iat": ms, "exp": ms, "grp"?: group}

`grp` is the operator group of the key that asked for it (DESIGN section 11: a key acts only on
its group's channels and players); the page's actions are held to that group's channels.

Kinds: the same token format signs the operators' console sessions (web/console.py, kind
`console`, with their own secret CRASH_CONSOLE_SECRET, the operator's role in `rol` and the
session id kept across refreshes). The kind is the MAC's domain (`session.` or `console.`
before the payload), so a token of one kind never verifies as the other, even under one secret.

The user id comes from the token only, never from a request body, so a player cannot act as
another one; the pipeline refuses commands on a bet that is not theirs (`not_your_bet`).
`tag()` is a keyed hash of a user id: the push gateway marks each bet of a room with it, and a
player's page recognises its own bets without any frame carrying user ids.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass

from streams import ids

__all__ = ["Session", "SessionError", "issue", "verify", "tag", "bearer", "MAX_TTL_S", "KINDS"]

VERSION = 1
MAX_TTL_S = 24 * 3600
MAX_TOKEN_CHARS = 1024
CLOCK_SKEW_MS = 30_000      # a token "issued in the future" by a process whose clock is ahead


# The MAC's domain of each kind of token (a player's token is "session.", as it always was).
KINDS = {"player": b"session.", "console": b"console."}


class SessionError(Exception):
    """Why a token is refused: `error` is the code (session_expired, bad_session), `reason` the words."""

    def __init__(self, error: str, reason: str) -> None:
        super().__init__(reason)
        self.error, self.reason = error, reason


@dataclass(frozen=True)
class Session:
    user_id: str
    session_id: str
    issued_at: int
    expires_at: int
    group: str = ""            # the operator group whose channels the session may play ("" = any)
    role: str = ""             # console sessions: the operator's role (admin, reader)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: str, payload_part: str, kind: str = "player") -> bytes:
    return hmac.new(secret.encode(), KINDS[kind] + payload_part.encode(), hashlib.sha256).digest()


def issue(secret: str, user_id: str, ttl_s: int, now_ms: int | None = None, group: str = "", *,
          kind: str = "player", role: str = "", session_id: str | None = None) -> tuple[str, Session]:
    """A token for `user_id`, valid for `ttl_s` seconds (on `group`'s channels, if one is given);
    `kind`, `role` and `session_id` (a refreshed console session keeps its id) for other kinds."""
    if not ids.is_reference(user_id):
        raise ValueError(f"user_id must match {ids.REFERENCE.pattern}")
    if group and not ids.is_name(group):
        raise ValueError(f"group must match {ids.NAME.pattern}")
    if role and not ids.is_name(role):
        raise ValueError(f"role must match {ids.NAME.pattern}")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}")
    if not 1 <= ttl_s <= MAX_TTL_S:
        raise ValueError(f"ttl_s must be in [1, {MAX_TTL_S}]")
    now = now_ms if now_ms is not None else int(time.time() * 1000)
    session = Session(user_id=user_id, session_id=session_id or secrets.token_hex(8), issued_at=now,
                      expires_at=now + ttl_s * 1000, group=group, role=role)
    payload = {"v": VERSION, "sub": user_id, "sid": session.session_id, "iat": now, "exp": session.expires_at}
    if group:
        payload["grp"] = group
    if role:
        payload["rol"] = role
    part = _b64(json.dumps(payload, separators=(",", ":")).encode())
    return f"{part}.{_b64(_mac(secret, part, kind))}", session


def verify(secret: str, token: str | None, now_ms: int | None = None, *, kind: str = "player") -> Session:
    """The session a token of `kind` proves, or SessionError saying why not."""
    if not token:
        raise SessionError("no_session", "this action needs a player session (Authorization: Bearer <token>)")
    if len(token) > MAX_TOKEN_CHARS or token.count(".") != 1:
        raise SessionError("bad_session", "the session token is malformed")
    part, signature = token.split(".")
    try:
        given = _unb64(signature)
    except ValueError:
        raise SessionError("bad_session", "the session token is malformed") from None
    # The signature first: nothing of a forged token is read.
    if not hmac.compare_digest(given, _mac(secret, part, kind)):
        raise SessionError("bad_session", "the session token's signature is not valid")
    try:
        payload = json.loads(_unb64(part))
        user_id, session_id = payload["sub"], payload["sid"]
        issued_at, expires_at = payload["iat"], payload["exp"]
    except (ValueError, KeyError, TypeError):
        raise SessionError("bad_session", "the session token is malformed") from None
    group, role = payload.get("grp", ""), payload.get("rol", "")
    if (payload.get("v") != VERSION or not ids.is_reference(user_id) or not isinstance(expires_at, int)
            or not (group == "" or ids.is_name(group)) or not (role == "" or ids.is_name(role))):
        raise SessionError("bad_session", "the session token is malformed")
    now = now_ms if now_ms is not None else int(time.time() * 1000)
    if now >= expires_at:
        raise SessionError("session_expired", "the session has expired: open the game again from the casino")
    if not isinstance(issued_at, int) or issued_at > now + CLOCK_SKEW_MS:
        raise SessionError("bad_session", "the session token was issued in the future")
    return Session(user_id=user_id, session_id=str(session_id), issued_at=issued_at, expires_at=expires_at,
                   group=group, role=role)


def bearer(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def tag(secret: str, user_id: str) -> str:
    """A short keyed hash of a user id: recognisable by its owner, meaningless to anyone else."""
    return hmac.new(secret.encode(), b"tag." + user_id.encode(), hashlib.sha256).hexdigest()[:12]


# ---------------------------------------------------------------- the demo's link

async def _demo_link(user_id: str, channel_id: str, ttl_s: int, fund: int) -> str:
    """As an operator's server would: fund the player (reference wallet, demo only) and ask the
    bet API (signed, role game) for a session; the answer's page_url opens the page as them."""
    import json as _json

    import aiohttp

    from streams.settings import get_settings
    from web.signing import sign_headers
    from web.wallet_client import WalletClient
    settings = get_settings()
    game = [(k, s) for k, (s, role) in sorted(settings.api_keys.items()) if role == "game"]
    admin = [(k, s) for k, (s, role) in sorted(settings.api_keys.items()) if role == "admin"]
    if not game:
        raise SystemExit("no key with role game in CRASH_API_KEYS")
    if fund and admin:
        async with WalletClient(settings.wallet_url, *admin[0], timeout_s=5) as wallet:
            if await wallet.balance(user_id, "EUR") < fund // 10:
                await wallet.set_balance(user_id, "EUR", fund)
    body = _json.dumps({"user_id": user_id, "channel_id": channel_id, "ttl_s": ttl_s}).encode()
    url = f"http://127.0.0.1:{settings.gateway_port}/v1/sessions"
    headers = {**sign_headers(*game[0], "POST", "/v1/sessions", body), "Content-Type": "application/json"}
    async with aiohttp.ClientSession() as http:
        for _ in range(60):         # the gateway may still be loading the channels
            async with http.post(url, data=body, headers=headers) as response:
                answer = await response.json(content_type=None)
                if response.status == 200:
                    return answer["page_url"]
            await asyncio.sleep(1)
            headers = {**sign_headers(*game[0], "POST", "/v1/sessions", body), "Content-Type": "application/json"}
    raise SystemExit(f"no session from the bet API: {answer}")


def main(argv: list[str] | None = None) -> None:
    """`python -m web.sessions demo-link --user demo-player --channel demo-1`: print the page's link."""
    import argparse
    parser = argparse.ArgumentParser(prog="python -m web.sessions")
    parser.add_argument("command", choices=["demo-link"])
    parser.add_argument("--user", default="demo-player")
    parser.add_argument("--channel", default="demo-1")
    parser.add_argument("--ttl", type=int, default=12 * 3600, help="seconds the session lasts")
    parser.add_argument("--fund", type=int, default=100_000, help="EUR balance (minor units) to give the player")
    args = parser.parse_args(argv)
    print(asyncio.run(_demo_link(args.user, args.channel, args.ttl, args.fund)))


if __name__ == "__main__":
    main()
