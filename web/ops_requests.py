"""What the operator views ask of a request: who is calling (a signature of a key of the
required role, or an operators' console session: `signed_caller` is the one place that decides),
an admin's JSON body with the actor the audit log names, whether the caller may act on an
operator group, and a ?limit=.

Separate from the views (web/operator_views.py, web/jackpot_views.py), which both use it.
"""
from __future__ import annotations

import json
from typing import Any

from aiohttp import web as aioweb

from streams.app import settings
from web import console
from web.http import BadRequest, problem
from web.ops_resources import redis
from web.signing import Caller, NonceStoreUnavailable, RedisNonceStore, SignatureError, Verifier

__all__ = ["READ_ROLES", "signed_caller", "admin_body", "presents_credentials", "out_of_scope", "query_limit"]

_verifier: Verifier | None = None


def verifier() -> Verifier:
    global _verifier
    if _verifier is None:
        _verifier = Verifier(settings.api_keys, RedisNonceStore(redis()))
    return _verifier


READ_ROLES = ("reader", "admin")


async def signed_caller(request, roles: tuple[str, ...], raw: bytes = b"") -> tuple[Caller | None,
                                                                                   aioweb.Response | None]:
    """(caller, None) for a request signed by a key of one of `roles`, or made with a console
    session of an account of one of them (a cookie and, for a write, its CSRF token; never for a
    signed request), else (None, error response)."""
    if console.carries_session(request):
        try:
            return await console.session_caller(request, roles), None
        except BadRequest as refusal:
            return None, problem(refusal.status, refusal.error, refusal.reason)
    try:
        caller = await verifier().verify(request.method, request.path_qs, request.headers, raw)
    except SignatureError as error:
        return None, problem(401, "unauthorized", str(error))
    except NonceStoreUnavailable as error:
        return None, problem(503, "unavailable", str(error))
    if caller.role not in roles:
        return None, problem(403, "forbidden", f"this needs the role {' or '.join(roles)}")
    return caller, None


async def admin_body(request) -> tuple[dict[str, Any] | None, aioweb.Response | None]:
    """(JSON body, None) for a request signed by an admin key, else (None, error response)."""
    raw = await request.read()
    if len(raw) > 64 * 1024:
        return None, problem(413, "too_large", "body over 64 KiB")
    caller, error = await signed_caller(request, ("admin",), raw)
    if error is not None:
        return None, error
    assert caller is not None
    try:
        body = json.loads(raw) if raw else {}
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None, problem(400, "bad_request", "body is not JSON")
    if not isinstance(body, dict):
        return None, problem(400, "bad_request", "body must be a JSON object")
    # The actor the audit log names (a key, or a console session's account) and the key id
    # (a key's, or `console:<session id>`).
    body["_operator"] = caller.account if isinstance(caller, console.SessionCaller) else caller.key_id
    body["_key_id"] = caller.key_id
    body["_group"] = caller.group
    return body, None


def presents_credentials(request) -> bool:
    """Whether a request claims to be someone (a signature or a console session): a read that
    shows more to readers than to anyone checks such a claim, and refuses a bad one."""
    return "X-Key-Id" in request.headers or console.carries_session(request)


def out_of_scope(body: dict[str, Any], operator_group: str | None) -> aioweb.Response | None:
    """403 unless the admin's key may act on this operator group ("" keys: every group; None:
    something of no single group, such as a mega jackpot, for "" keys only)."""
    group = body.get("_group", "")
    if not group or group == operator_group:
        return None
    who = "operator" if body.get("_key_id", "").startswith("console:") else "key"
    return problem(403, "forbidden", f"{who} {body['_operator']} acts only on operator group {group}")


def query_limit(request, default: int) -> int | None:
    """?limit= as an integer in [1, 1000], or None when it is not one."""
    raw = request.query.get("limit", str(default))
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 4 or not 1 <= int(raw) <= 1000:
        return None
    return int(raw)
