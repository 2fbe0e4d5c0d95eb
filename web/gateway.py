"""Bet API gateway (server to server, HMAC-signed): the only way bets enter game.command.

Thin HTTP faces over one pipeline client (web/pipeline_client.py): every place / cancel /
cashout is checked for shape here (a bad request never reaches a topic), stamped with its
receive time and a command id, sent to game.command keyed by channel, and answered with the
pipeline's definitive decision from game.reply. A repeated api_order_no is answered by the
pipeline with the first decision. Channel configs and live terms come from
web/term_follower.py, the seamless debit-then-place saga from web/debit_saga.py. The same
process serves the jackpot API (web/jackpot_api.py).
"""
from __future__ import annotations

import ctypes
import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import time
from typing import Any

import uvloop
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from sqlalchemy import text
from ulid import ULID

from sql.db import make_engine
from streams import full_gc, ids, money
from streams.cache import redis_client
from streams.events import CancelBet, CashoutBet, Command, CommandReply, PlaceBet
from streams.settings import Settings, get_settings
from streams.topics import COMMAND
from web import jackpot_api, player_api
from web.debit_saga import DebitSaga
from web.http import RECEIVED_AT, BadRequest, int_field, problem, read_signed_json, stamp_and_guard, str_field
from web.order_claims import Claim, OrderClaims
from web.pipeline_client import PipelineClient
from web.signing import CALLER, RedisNonceStore, Verifier
from web.term_follower import TermFollower
from web.wallet_client import WalletClient, WalletError, WalletResult, WalletUnavailable

log = logging.getLogger("crash.gateway")

MAX_BODY = 16 * 1024
IN_HISTORY = "order_in_history"     # agents/bet_service.py: the order may be one it has forgotten

REQUESTS = Counter("gateway_requests_total", "Bet API requests", ["op", "status"])
SHED = Counter("gateway_shed_total", "Requests answered 503 at once: too many in flight, or the pipeline lagging")
DECISION_SECONDS = Histogram("gateway_decision_seconds", "From receive to the pipeline's definitive answer",
                             ["op"], buckets=(.005, .01, .025, .05, .075, .1, .15, .25, .5, 1, 2.5, 5))

KEY_GATEWAY: web.AppKey[Gateway] = web.AppKey("gateway")


class Gateway:
    """What the bet API's handlers share: the pipeline client, the term follower, the saga."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.gateway_id = settings.gateway_id
        self.pipeline = PipelineClient(settings)
        self.redis = redis_client(settings.redis_url)
        self.verifier = Verifier(settings.api_keys, RedisNonceStore(self.redis))
        # Every bet claims its api_order_no in MySQL: with 3 pooled connections, the requests in
        # flight overflowed the pool, and each overflow connection was opened (TCP, handshake,
        # auth) and closed again per request (crash-bench --profile: a third of the gateway's
        # samples in claim_order at 500 bets/s). Enough connections stay open for the load.
        self.db = make_engine(settings.db_url, pool_size=24)
        self.claims = OrderClaims(self.db)          # api_order claims, many per statement
        self.terms = TermFollower(settings, self.db)
        self.wallet = WalletClient.from_settings(settings)
        self.saga = DebitSaga(self.db, self.wallet, place=lambda c: self.decide(c, "player_place"),
                              send=lambda c: self.pipeline.send_within(COMMAND, c.channel_id, c))

    @property
    def channels(self) -> dict[str, dict[str, Any]]:
        return self.terms.channels

    async def start(self) -> None:
        await self.pipeline.start()
        await self.terms.start()
        self.saga.start()

    async def stop(self) -> None:
        await self.saga.stop()
        await self.terms.stop()
        await self.pipeline.stop()
        await self.redis.aclose()
        await self.wallet.close()
        await self.claims.close()
        await self.db.dispose()

    async def decide(self, command: Command, op: str) -> CommandReply:
        """Send one command to its channel and wait for the pipeline's answer.

        A repeated PlaceBet (claimed before, `claimed_at` set) whose first decision MySQL already
        holds is answered from it: a decision never changes, and the pipeline's index forgets
        orders once their term is recorded (issue 10, bounded state). If the pipeline answers
        `order_in_history`, MySQL holds the decision by then."""
        with DECISION_SECONDS.labels(op=op).time():
            if isinstance(command, PlaceBet) and command.claimed_at:
                recorded = await self.first_decision(command)
                if recorded is not None:
                    return recorded
            reply = await self.pipeline.decide(COMMAND, command.channel_id, command)
            if reply.reason == IN_HISTORY:
                recorded = await self.first_decision(command)
                if recorded is None:
                    raise BadRequest(503, "decision_pending", "the first decision of this api_order_no is not"
                                                              " readable yet; repeat the request")
                return recorded
            return reply

    async def first_decision(self, command: PlaceBet) -> CommandReply | None:
        """The first decision on the command's order, from MySQL's bet row (unique per channel and
        api_order_no), as the pipeline answered it; None while the sink has not written it."""
        async with self.db.connect() as conn:
            row = (await conn.execute(text(
                "SELECT bet_id, term_id, status, reason, amount, currency FROM bet"
                " WHERE channel_id = :c AND api_order_no = :o"),
                {"c": command.channel_id, "o": command.api_order_no})).first()
        if row is None:
            return None
        return CommandReply(
            event_id=f"{command.event_id}.reply", channel_id=command.channel_id, term_id=row.term_id or "",
            ts=int(time.time() * 1000), trace_id=command.trace_id, gateway_id=command.gateway_id,
            command_id=command.event_id, status="refused" if row.status == "rejected" else "accepted",
            reason=row.reason or "", api_order_no=command.api_order_no, bet_id=row.bet_id or "",
            amount=row.amount, currency=row.currency)

    def channel_config(self, channel_id: str) -> dict[str, Any]:
        config = self.channels.get(channel_id)
        if config is None:
            raise BadRequest(404, "unknown_channel", f"no channel {channel_id}")
        return config

    async def claim_order(self, config: dict[str, Any], command: PlaceBet, mode: str) -> None:
        """api_order_no is unique per operator group (DESIGN section 7), and MariaDB owns it
        (table api_order): the first claim fixes its channel and its mode, for good.

        Refused before anything else happens to the order (no debit, no command): a reuse on
        another channel, and a reuse in the other mode, e.g. a seamless debit on a number the
        pipeline already decided in transfer mode (that debit would have had no bet to refund it).
        A repeat on the same channel and mode goes on, and gets the first decision: the command
        carries the first claim's time (`claimed_at`), so that the pipeline can tell a repeat of
        an order it has forgotten (see `decide`).
        """
        group, number = config["operator_group"], command.api_order_no
        claim = Claim(group, number, command.channel_id, mode, command.user_id, command.ts)
        owner = await self.claims.claim(claim)
        if owner.is_claim(claim):
            return
        if owner.channel_id != command.channel_id:
            raise BadRequest(409, "order_no_taken",
                             f"api_order_no {number} was already used on channel {owner.channel_id}")
        if owner.mode != mode:
            raise BadRequest(409, "order_no_taken",
                             f"api_order_no {number} was already used in {owner.mode} mode; this request is"
                             f" {mode} mode (nothing was debited)")
        command.claimed_at = int(owner.claimed_at)

    def command_fields(self, request: web.Request, channel_id: str) -> dict[str, Any]:
        command_id = str(ULID())
        return {"event_id": command_id, "channel_id": channel_id, "ts": request[RECEIVED_AT],
                "trace_id": request.headers.get("X-Trace-Id", command_id)[:64], "gateway_id": self.gateway_id}


def _answer(reply: CommandReply, op: str) -> web.Response:
    body = {"status": reply.status, "api_order_no": reply.api_order_no, "bet_id": reply.bet_id or None,
            "term_id": reply.term_id or None}
    if reply.reason:
        body["reason"] = reply.reason
    if reply.amount:
        body.update(amount=reply.amount, currency=reply.currency)
    if reply.multiple_x100:
        body.update(multiple_x100=reply.multiple_x100, payout=reply.payout, mode=reply.mode)
    REQUESTS.labels(op=op, status=reply.status).inc()
    return web.json_response(body, status=200 if reply.status == "accepted" else 409)


def _count_refusal(request: web.Request, status: int) -> None:
    REQUESTS.labels(op=request.path.rsplit("/", 1)[-1], status=str(status)).inc()


async def signed_json(request: web.Request, roles: tuple[str, ...] = ("game", "admin")) -> dict[str, Any]:
    caller, body = await read_signed_json(request, request.app[KEY_GATEWAY].verifier, roles, MAX_BODY)
    request[CALLER] = caller
    return body


def scoped_config(gateway: Gateway, request: web.Request, channel_id: str) -> dict[str, Any]:
    """The channel's config, if the signed caller's key may act on it (its operator group)."""
    config = gateway.channel_config(channel_id)
    caller = request.get(CALLER)
    if caller is not None and not caller.may_act_on(config["operator_group"]):
        raise BadRequest(403, "forbidden", f"key {caller.key_id} acts only on channels of operator group "
                                           f"{caller.group}")
    return config


def place_command(gateway: Gateway, request: web.Request, body: dict[str, Any], debited: bool = False) -> PlaceBet:
    """Check a place request's shape against the channel; the limits are the pipeline's."""
    channel_id = str_field(body, "channel_id", ids.NAME)
    config = scoped_config(gateway, request, channel_id)
    api_order_no = str_field(body, "api_order_no", ids.REFERENCE)
    user_id = str_field(body, "user_id", ids.REFERENCE)
    amount = int_field(body, "amount")
    if amount is None or amount <= 0:
        raise BadRequest(400, "bad_request", "amount must be a positive integer in minor units")
    currency = body.get("currency")
    if currency not in config["currencies"]:
        raise BadRequest(400, "unsupported_currency",
                         f"channel {channel_id} takes {', '.join(sorted(config['currencies']))}")
    target = int_field(body, "auto_cashout_x100", required=False)
    if target is not None and not money.MIN_AUTO_CASHOUT_X100 <= target <= config["max_multiple_x100"]:
        raise BadRequest(400, "bad_request",
                         f"auto_cashout_x100 must be in [{money.MIN_AUTO_CASHOUT_X100}, {config['max_multiple_x100']}]")
    bet_type = body.get("bet_type", "auto" if target is not None else "manual")
    if bet_type not in ("manual", "auto") or (bet_type == "auto" and target is None):
        raise BadRequest(400, "bad_request", "bet_type is manual or auto (auto needs auto_cashout_x100)")
    return PlaceBet(**gateway.command_fields(request, channel_id), api_order_no=api_order_no, user_id=user_id,
                    amount=amount, currency=currency, auto_cashout_x100=target, bet_type=bet_type, debited=debited)


async def place_bet(request: web.Request) -> web.Response:
    gateway: Gateway = request.app[KEY_GATEWAY]
    body = await signed_json(request)
    command = place_command(gateway, request, body)
    await gateway.claim_order(gateway.channels[command.channel_id], command, "transfer")
    return _answer(await gateway.decide(command, "place"), "place")


async def place_player_bet(request: web.Request) -> web.Response:
    """Seamless mode: debit the player's wallet, then place the bet (refunded if refused)."""
    gateway: Gateway = request.app[KEY_GATEWAY]
    body = await signed_json(request, roles=("player", "game", "admin"))
    command = place_command(gateway, request, body, debited=True)
    await gateway.claim_order(gateway.channels[command.channel_id], command, "seamless")
    try:
        outcome = await gateway.saga.debit_and_place(command)
    except WalletUnavailable as error:
        return problem(503, "wallet_unavailable",
                        f"{error.reason}; repeat the request with the same api_order_no to finish it")
    except WalletError as error:
        return problem(502, "wallet_error", str(error))
    if isinstance(outcome, WalletResult):
        REQUESTS.labels(op="player_place", status="refused").inc()
        return web.json_response({"status": "refused", "api_order_no": command.api_order_no,
                                  "reason": outcome.reason or outcome.status}, status=409)
    response = _answer(outcome, "player_place")
    if outcome.status != "accepted":
        body = json.loads(response.body)
        body["refund"] = "automatic"
        return web.json_response(body, status=response.status)
    return response


async def _bet_command(request: web.Request, kind: type[Command], op: str) -> web.Response:
    gateway: Gateway = request.app[KEY_GATEWAY]
    # The player page acts for its players too (seamless mode); the pipeline checks that the
    # user owns the bet.
    body = await signed_json(request, roles=("game", "player", "admin"))
    channel_id = request.match_info["channel_id"]
    scoped_config(gateway, request, channel_id)
    api_order_no = request.match_info["api_order_no"]
    if not ids.is_reference(api_order_no):
        raise BadRequest(400, "bad_request", f"api_order_no must match {ids.REFERENCE.pattern}")
    user_id = str_field(body, "user_id", ids.REFERENCE)
    command = kind(**gateway.command_fields(request, channel_id), api_order_no=api_order_no, user_id=user_id)
    return _answer(await gateway.decide(command, op), op)


async def cancel_bet(request: web.Request) -> web.Response:
    return await _bet_command(request, CancelBet, "cancel")


async def cashout_bet(request: web.Request) -> web.Response:
    return await _bet_command(request, CashoutBet, "cashout")


async def read_bet(request: web.Request) -> web.Response:
    gateway: Gateway = request.app[KEY_GATEWAY]
    await signed_json(request, roles=("game", "admin", "reader"))
    channel_id, api_order_no = request.match_info["channel_id"], request.match_info["api_order_no"]
    scoped_config(gateway, request, channel_id)
    async with gateway.db.connect() as conn:
        row = (await conn.execute(text("SELECT * FROM bet WHERE channel_id = :c AND api_order_no = :o"),
                                  {"c": channel_id, "o": api_order_no})).first()
        if row is None:
            raise BadRequest(404, "not_found", f"no bet {api_order_no} on channel {channel_id} (yet)")
        bet = dict(row._mapping)
        history = await conn.execute(text(
            "SELECT status, ts, detail FROM bet_status_history WHERE bet_id = :b ORDER BY ts, status"),
            {"b": bet["bet_id"]})
        bet["history"] = [{"status": h.status, "ts": h.ts, "detail": json.loads(h.detail) if h.detail else None}
                          for h in history]
    bet["debited"] = bool(bet["debited"])
    return web.json_response(bet)


async def list_channels(request: web.Request) -> web.Response:
    gateway: Gateway = request.app[KEY_GATEWAY]
    return web.json_response({"channels": [
        {"channel_id": cid, "config": config, "term": gateway.terms.live.get(cid)}
        for cid, config in sorted(gateway.channels.items())]})


async def channel_state(request: web.Request) -> web.Response:
    gateway: Gateway = request.app[KEY_GATEWAY]
    channel_id = request.match_info["channel_id"]
    config = gateway.channel_config(channel_id)
    return web.json_response({"channel_id": channel_id, "config": config, "term": gateway.terms.live.get(channel_id),
                              "server_time": int(time.time() * 1000)})


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def metrics(request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


def make_app(settings: Settings | None = None) -> web.Application:
    settings = settings or get_settings()
    gateway = Gateway(settings)
    app = web.Application(client_max_size=MAX_BODY, middlewares=[stamp_and_guard(
        MAX_BODY, _count_refusal, max_in_flight=settings.gateway_max_in_flight, on_shed=lambda _: SHED.inc(),
        lag_s=gateway.pipeline.lag_s, max_lag_s=settings.gateway_max_lag_ms / 1000)])
    app[KEY_GATEWAY] = gateway

    async def lifecycle(app: web.Application):
        await gateway.start()
        yield
        await gateway.stop()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_post("/v1/bets", place_bet)
    app.router.add_post("/v1/player/bets", place_player_bet)
    app.router.add_post("/v1/channels/{channel_id}/bets/{api_order_no}/cancel", cancel_bet)
    app.router.add_post("/v1/channels/{channel_id}/bets/{api_order_no}/cashout", cashout_bet)
    app.router.add_get("/v1/channels/{channel_id}/bets/{api_order_no}", read_bet)
    app.router.add_get("/v1/channels", list_channels)
    app.router.add_get("/v1/channels/{channel_id}", channel_state)
    app.router.add_get("/v1/health", health)
    app.router.add_get("/metrics", metrics)
    jackpot_api.add_routes(app, gateway)
    player_api.add_routes(app, gateway)     # player sessions and the page's actions
    return app


def main() -> None:
    settings = get_settings()
    logging.basicConfig(level=settings.log_level.upper(), format="[%(asctime)s] [%(levelname)s] %(name)s: %(message)s")
    uvloop.install()        # cheaper sockets and callbacks per request (issue 10)
    processes = settings.gateway_processes
    if processes > 1 and "CRASH_GATEWAY_CHILD" not in os.environ:
        # The first process starts the others on the same port (SO_REUSEPORT: the kernel spreads
        # the connections); each has a gateway id of its own, so its answers come back to it.
        children = [_start_child(settings, n) for n in range(1, processes)]
        settings = dataclasses.replace(settings, gateway_id=f"{settings.gateway_id}-0")
        app = make_app(settings)
        full_gc.freeze_startup()
        try:
            web.run_app(app, host=settings.gateway_host, port=settings.gateway_port, access_log=None,
                        reuse_port=True)
        finally:
            for child in children:
                child.terminate()
            for child in children:
                child.wait(30)
        return
    app = make_app(settings)
    full_gc.freeze_startup()
    web.run_app(app, host=settings.gateway_host, port=settings.gateway_port, access_log=None,
                reuse_port=processes > 1)


def _start_child(settings: Settings, n: int) -> subprocess.Popen:
    def die_with_parent() -> None:      # a child outliving a killed parent would hold the port
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)     # PR_SET_PDEATHSIG
    env = {**os.environ, "CRASH_GATEWAY_CHILD": str(n), "CRASH_GATEWAY_ID": f"{settings.gateway_id}-{n}"}
    # Not `-m web.gateway`: the module would be imported twice (as __main__ and by web.player_api)
    # and register its metrics twice.
    return subprocess.Popen([sys.executable, "-c", "from web.gateway import main; main()"], env=env,
                            preexec_fn=die_with_parent)
