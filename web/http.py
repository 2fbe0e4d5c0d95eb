"""What every HTTP face of the game shares: JSON errors with a reason, signed JSON bodies,
field checks, the receive-time stamp, load shedding.

A handler raises BadRequest (or lets a TimeoutError, a database or a Redis error through); the
middleware turns it into `{"error": ..., "reason": ...}` with the status, so that every refusal
says why and no answer is ever a plain-text 500: a dependency that is down is a 503 with
Retry-After (the request can be repeated as it is), a bug is a JSON 500 (and logged).
"""
from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from streams.cache import REDIS_ERRORS
from web.signing import Caller, NonceStoreUnavailable, SignatureError, Verifier

__all__ = ["BadRequest", "problem", "int_field", "str_field", "parse_json_object", "read_signed_json",
           "stamp_and_guard"]

log = logging.getLogger(__name__)

# Requests that are never shed: probes and metrics must answer when the gateway is busiest.
_NEVER_SHED = ("/v1/health", "/metrics")
# When the gateway took the request (ms): the `ts` of the command it becomes.
RECEIVED_AT = web.RequestKey("received_at", int)


class BadRequest(Exception):
    def __init__(self, status: int, error: str, reason: str) -> None:
        super().__init__(reason)
        self.status, self.error, self.reason = status, error, reason


def problem(status: int, error: str, reason: str, headers: dict[str, str] | None = None,
            **extra: Any) -> web.Response:
    return web.json_response({"error": error, "reason": reason, **extra}, status=status, headers=headers)


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


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse_json_object(raw: bytes, what: str = "body") -> dict[str, Any]:
    """A JSON object from raw bytes, or BadRequest(400) saying what is wrong with them.

    Refused with a reason rather than failing: invalid UTF-8, nesting deeper than the parser's
    recursion limit, integers longer than Python parses (4300 digits), NaN and Infinity.
    """
    if not raw:
        return {}
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest(400, "bad_request", f"{what} is not valid JSON (not UTF-8)") from None
    try:
        body = json.loads(text, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as error:   # JSONDecodeError, over-long integers
        raise BadRequest(400, "bad_request", f"{what} is not valid JSON: {str(error)[:120]}") from None
    if not isinstance(body, dict):
        raise BadRequest(400, "bad_request", f"{what} must be a JSON object")
    return body


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
    except NonceStoreUnavailable as error:
        raise BadRequest(503, "unavailable", str(error)) from None
    if caller.role not in roles:
        raise BadRequest(403, "forbidden", f"role {caller.role!r} may not call this endpoint")
    return caller, parse_json_object(raw)


class InFlight:
    """How many sheddable requests are being served now, against a bound."""

    def __init__(self, bound: int | None) -> None:
        self.bound = bound
        self.now = 0

    def full(self) -> bool:
        return self.bound is not None and self.bound > 0 and self.now >= self.bound


def stamp_and_guard(max_body: int, count_refusal: Callable[[web.Request, int], None] | None = None,
                    max_in_flight: int | None = None, on_shed: Callable[[web.Request], None] | None = None,
                    lag_s: Callable[[], float] | None = None, max_lag_s: float = 0.0):
    """Middleware: the receive time first (it decides bets), then shedding, then uniform JSON errors.

    Shedding: when `max_in_flight` writes are already being served, or the pipeline lags (`lag_s()`,
    the age of the oldest decision awaited, is over `max_lag_s`), a new write is answered 503 with
    Retry-After at once, before its body is read or its nonce claimed, so the caller may send the
    very same request again; the requests already accepted keep their latency instead of all of
    them queueing behind a backlog. A repeat with the same api_order_no gets the decision.
    """
    in_flight = InFlight(max_in_flight)

    def shed_reason() -> tuple[str, str] | None:
        if in_flight.full():
            return "overloaded", f"over {in_flight.bound} requests in flight; retry shortly"
        if lag_s is not None and max_lag_s > 0 and (lag := lag_s()) > max_lag_s:
            return "pipeline_lagging", f"the pipeline is {lag:.1f} s behind (bound {max_lag_s:g} s); retry shortly"
        return None

    @web.middleware
    async def middleware(request: web.Request, handler):
        request[RECEIVED_AT] = int(time.time() * 1000)
        sheddable = request.method != "GET" and request.path not in _NEVER_SHED
        shed = shed_reason() if sheddable else None
        if shed is not None:
            if on_shed is not None:
                on_shed(request)
            return problem(503, *shed, headers={"Retry-After": "1"})
        if sheddable:
            in_flight.now += 1
        try:
            return await handler(request)
        except BadRequest as error:
            if count_refusal is not None:
                count_refusal(request, error.status)
            headers = {"Retry-After": "1"} if error.status == 503 else None
            return problem(error.status, error.error, error.reason, headers=headers)
        except web.HTTPRequestEntityTooLarge:
            return problem(413, "too_large", f"body over {max_body} bytes")
        except TimeoutError:
            return problem(503, "decision_timeout",
                           "no decision in time (the pipeline or Kafka is slow or unreachable); repeat the request"
                           " with the same id to get it", headers={"Retry-After": "1"})
        except web.HTTPException as error:
            return problem(error.status, "http_error", error.reason or "")
        except (DBAPIError, PoolTimeout) as error:
            log.warning("%s %s: database unavailable: %s", request.method, request.path, str(error)[:200])
            return problem(503, "database_unavailable", "the database cannot be reached; repeat the request",
                           headers={"Retry-After": "1"})
        except REDIS_ERRORS as error:
            log.warning("%s %s: Redis unavailable: %s", request.method, request.path, error)
            return problem(503, "redis_unavailable", "Redis cannot be reached; repeat the request",
                           headers={"Retry-After": "1"})
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s %s failed", request.method, request.path)
            return problem(500, "internal", "internal error (logged)")
        finally:
            if sheddable:
                in_flight.now -= 1

    middleware.in_flight = in_flight  # type: ignore[attr-defined]  (for metrics and tests)
    return middleware
