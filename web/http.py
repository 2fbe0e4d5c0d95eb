"""What every HTTP face of the game shares: JSON errors with a reason, signed JSON bodies,
field checks, the receive-time stamp.

A handler raises BadRequest (or lets a TimeoutError through); the middleware turns it into
`{"error": ..., "reason": ...}` with the status, so that every refusal says why.
"""
from __future__ import annotations

import json
import re
import time
from typing import Any

from aiohttp import web

from web.signing import Caller, SignatureError, Verifier

__all__ = ["BadRequest", "problem", "int_field", "str_field", "read_signed_json", "stamp_and_guard"]


class BadRequest(Exception):
    def __init__(self, status: int, error: str, reason: str) -> None:
        super().__init__(reason)
        self.status, self.error, self.reason = status, error, reason


def problem(status: int, error: str, reason: str, **extra: Any) -> web.Response:
    return web.json_response({"error": error, "reason": reason, **extra}, status=status)


def int_field(body: dict[str, Any], name: str, required: bool = True) -> int | None:
    value = body.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise BadRequest(400, "bad_request", f"{name} must be an integer")
    return value


def str_field(body: dict[str, Any], name: str, pattern: re.Pattern[str], required: bool = True) -> str | None:
    value = body.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise BadRequest(400, "bad_request", f"{name} must match {pattern.pattern}")
    return value


async def read_signed_json(request: web.Request, verifier: Verifier, roles: tuple[str, ...],
                           max_body: int) -> tuple[Caller, dict[str, Any]]:
    """The verified caller and the JSON object body of a signed request (4xx otherwise)."""
    if request.content_length is not None and request.content_length > max_body:
        raise BadRequest(413, "too_large", f"body over {max_body} bytes")
    raw = await request.read()
    try:
        caller = await verifier.verify(request.method, request.path_qs, request.headers, raw)
    except SignatureError as error:
        raise BadRequest(401, "unauthorized", str(error)) from None
    if caller.role not in roles:
        raise BadRequest(403, "forbidden", f"role {caller.role!r} may not call this endpoint")
    try:
        body = json.loads(raw) if raw else {}
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise BadRequest(400, "bad_request", "body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadRequest(400, "bad_request", "body must be a JSON object")
    return caller, body


def stamp_and_guard(max_body: int, count_refusal=None):
    """Middleware: the receive time first (it decides bets), then uniform JSON errors."""

    @web.middleware
    async def middleware(request: web.Request, handler):
        request["received_at"] = int(time.time() * 1000)
        try:
            return await handler(request)
        except BadRequest as error:
            if count_refusal is not None:
                count_refusal(request, error.status)
            return problem(error.status, error.error, error.reason)
        except web.HTTPRequestEntityTooLarge:
            return problem(413, "too_large", f"body over {max_body} bytes")
        except TimeoutError:
            return problem(503, "decision_timeout",
                           "no decision in time; repeat the request with the same id to get it")
        except web.HTTPException as error:
            return problem(error.status, "http_error", error.reason or "")

    return middleware
