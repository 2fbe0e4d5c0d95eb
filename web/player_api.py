"""The player page's actions on the bet API (DESIGN sections 11 and 15), mounted by web/gateway.py.

    POST /v1/sessions                                 operator's server (signed, role game): a
                                                      short-lived session token for one player
    POST /v1/page/bets                                place a bet (seamless: wallet debit first)
    POST /v1/page/bets/{channel}/{api_order_no}/cancel|cashout
    GET  /v1/page/balance?currency=EUR                the player's balance, from the wallet
    GET  /v1/page/session                             who the token is for, until when

Every /v1/page call carries `Authorization: Bearer <token>` (web/sessions.py). The user id is
the token's, never the body's, so a player acts only for themselves; the pipeline refuses a
command on somebody else's bet (`not_your_bet`). Bets take the seamless path through the very
code of POST /v1/player/bets: `place_command` checks the request, `Gateway.claim_order` the
order number, `DebitSaga.debit_and_place` debits the wallet and then places the bet.

The page is served by the push gateway, on another origin than the bet API in the demo, so
these answers carry CORS headers (CRASH_PAGE_ORIGINS), refusals included: a page that cannot
read a refusal cannot say why.
"""
from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from streams import ids
from streams.events import CancelBet, CashoutBet, Command

# web.gateway imports this module to mount it: its names are looked up when a request comes.
from web import gateway as gw
from web import sessions
from web.http import BadRequest, problem, str_field
from web.signing import CALLER, Caller
from web.wallet_client import WalletError, WalletResult, WalletUnavailable

__all__ = ["add_routes"]

MAX_PAGE_BODY = 4 * 1024
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def add_routes(app: web.Application, gateway: gw.Gateway) -> None:
    app.router.add_post("/v1/sessions", create_session)
    app.router.add_post("/v1/page/bets", _page(place))
    app.router.add_post("/v1/page/bets/{channel_id}/{api_order_no}/cancel", _page(cancel))
    app.router.add_post("/v1/page/bets/{channel_id}/{api_order_no}/cashout", _page(cashout))
    app.router.add_get("/v1/page/balance", _page(balance))
    app.router.add_get("/v1/page/session", _page(who))
    app.router.add_route("OPTIONS", "/v1/page/{tail:.*}", preflight)


# ---------------------------------------------------------------- CORS and errors

def _allowed_origin(request: web.Request) -> str | None:
    allowed = request.app[gw.KEY_GATEWAY].settings.page_origins.strip()
    if allowed == "*":
        return "*"
    origin = request.headers.get("Origin", "")
    return origin if origin in {o.strip() for o in allowed.split(",") if o.strip()} else None


def _cors(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
    origin = _allowed_origin(request)
    if origin is not None:
        response.headers["Access-Control-Allow-Origin"] = origin
        if origin != "*":
            response.headers["Vary"] = "Origin"
    return response


async def preflight(request: web.Request) -> web.Response:
    response = web.Response(status=204, headers={
        "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
        "Access-Control-Allow-Headers": "Authorization, Content-Type, X-Trace-Id",
        "Access-Control-Max-Age": "600"})
    _cors(request, response)
    return response


def _page(handler: Callable[[web.Request, sessions.Session], Awaitable[web.StreamResponse]]) -> Handler:
    """A page action: the session first, then the handler; every answer with CORS headers."""
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            session = sessions.verify(request.app[gw.KEY_GATEWAY].settings.session_secret,
                                      sessions.bearer(request.headers.get("Authorization")))
            # The session stands for the key that asked for it: the same operator group scope.
            request[CALLER] = Caller(key_id=f"session:{session.session_id}", role="player", group=session.group)
            response = await handler(request, session)
        except sessions.SessionError as error:
            gw.REQUESTS.labels(op="page_session", status="401").inc()
            response = problem(401, error.error, error.reason)
        except BadRequest as error:
            response = problem(error.status, error.error, error.reason)
        except TimeoutError:
            response = problem(503, "decision_timeout", "no decision in time; press again to get it")
        return _cors(request, response)

    wrapped.__name__ = handler.__name__
    return wrapped


async def _json_body(request: web.Request) -> dict[str, Any]:
    if request.content_length is not None and request.content_length > MAX_PAGE_BODY:
        raise BadRequest(413, "too_large", f"body over {MAX_PAGE_BODY} bytes")
    raw = await request.content.read(MAX_PAGE_BODY + 1)
    if len(raw) > MAX_PAGE_BODY:
        raise BadRequest(413, "too_large", f"body over {MAX_PAGE_BODY} bytes")
    try:
        body = json.loads(raw) if raw else {}
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise BadRequest(400, "bad_request", "body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadRequest(400, "bad_request", "body must be a JSON object")
    return body


# ---------------------------------------------------------------- sessions

async def create_session(request: web.Request) -> web.Response:
    """The operator's server asks for a token for one of its players: {user_id, ttl_s?, channel_id?}."""
    gateway: gw.Gateway = request.app[gw.KEY_GATEWAY]
    body = await gw.signed_json(request, roles=("game", "admin"))
    caller = request[CALLER]
    user_id = str_field(body, "user_id", ids.REFERENCE)
    ttl_s = body.get("ttl_s", gateway.settings.session_ttl_s)
    if not isinstance(ttl_s, int) or isinstance(ttl_s, bool) or not 60 <= ttl_s <= sessions.MAX_TTL_S:
        raise BadRequest(400, "bad_request", f"ttl_s must be an integer in [60, {sessions.MAX_TTL_S}]")
    channel_id = str_field(body, "channel_id", ids.NAME, required=False)
    if channel_id is not None:
        gw.scoped_config(gateway, request, channel_id)   # 404 unknown, 403 another group's channel
    token, session = sessions.issue(gateway.settings.session_secret, user_id, ttl_s, group=caller.group)
    # The token goes in the fragment: browsers never send it to a server or in a Referer.
    query = f"?channel={channel_id}" if channel_id else ""
    return web.json_response({
        "token": token, "user_id": user_id, "session_id": session.session_id, "expires_at": session.expires_at,
        "tag": sessions.tag(gateway.settings.session_secret, user_id),
        "page_url": f"{gateway.settings.page_url.rstrip('/')}/play/{query}#token={token}"})


async def who(request: web.Request, session: sessions.Session) -> web.Response:
    gateway: gw.Gateway = request.app[gw.KEY_GATEWAY]
    return web.json_response({"user_id": session.user_id, "session_id": session.session_id,
                              "expires_at": session.expires_at, "group": session.group or None,
                              "tag": sessions.tag(gateway.settings.session_secret, session.user_id)})


# ---------------------------------------------------------------- bets

async def place(request: web.Request, session: sessions.Session) -> web.Response:
    """Seamless mode, as POST /v1/player/bets: debit the wallet, then place (refunded if refused)."""
    gateway: gw.Gateway = request.app[gw.KEY_GATEWAY]
    body = await _json_body(request)
    body["user_id"] = session.user_id
    command = gw.place_command(gateway, request, body, debited=True)
    await gateway.claim_order(gateway.channels[command.channel_id], command, "seamless")
    try:
        outcome = await gateway.saga.debit_and_place(command)
    except WalletUnavailable as error:
        return problem(503, "wallet_unavailable", f"{error.reason}; press again to finish the bet")
    except WalletError as error:
        return problem(502, "wallet_error", str(error))
    if isinstance(outcome, WalletResult):
        gw.REQUESTS.labels(op="page_place", status="refused").inc()
        return web.json_response({"status": "refused", "api_order_no": command.api_order_no,
                                  "reason": outcome.reason or outcome.status}, status=409)
    response = gw._answer(outcome, "page_place")
    if outcome.status != "accepted":
        answer = json.loads(response.body)
        answer["refund"] = "automatic"
        return web.json_response(answer, status=response.status)
    return response


async def _bet_command(request: web.Request, session: sessions.Session, kind: type[Command], op: str
                       ) -> web.Response:
    gateway: gw.Gateway = request.app[gw.KEY_GATEWAY]
    channel_id = request.match_info["channel_id"]
    gw.scoped_config(gateway, request, channel_id)
    api_order_no = request.match_info["api_order_no"]
    if not ids.is_reference(api_order_no):
        raise BadRequest(400, "bad_request", f"api_order_no must match {ids.REFERENCE.pattern}")
    command = kind(**gateway.command_fields(request, channel_id), api_order_no=api_order_no, user_id=session.user_id)
    return gw._answer(await gateway.decide(command, op), op)


async def cancel(request: web.Request, session: sessions.Session) -> web.Response:
    return await _bet_command(request, session, CancelBet, "page_cancel")


async def cashout(request: web.Request, session: sessions.Session) -> web.Response:
    return await _bet_command(request, session, CashoutBet, "page_cashout")


async def balance(request: web.Request, session: sessions.Session) -> web.Response:
    gateway: gw.Gateway = request.app[gw.KEY_GATEWAY]
    currency = request.query.get("currency", "")
    if not ids.CURRENCY.fullmatch(currency):
        raise BadRequest(400, "bad_request", "currency must be three capital letters (?currency=EUR)")
    try:
        value = await gateway.wallet.balance(session.user_id, currency)
    except WalletError as error:
        return problem(503, "wallet_unavailable", f"the wallet did not answer: {error}")
    return web.json_response({"user_id": session.user_id, "currency": currency, "balance": value})
