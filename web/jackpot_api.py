"""The jackpot REST API (DESIGN sections 10 and 11; contract: web/jackpot.openapi.yaml).

    GET  /jackpot/rules                         the public jackpot rules (no signature)
    GET  /jackpot/{id}                          value and metadata, from Redis (any signed role)
    POST /jackpot/{id}/contribute               a contribution of another game (game, admin)
    POST /jackpot/{id}/award                    an external trigger's hit (game, admin)
    POST /jackpot/{id}/awards/{award_id}/rollback   audit-mode correction (admin)

Writes are commands to game.jackpot.command keyed by jackpot id, answered by the pool's single
writer (agents/jackpot_service.py) on game.reply: the answer is definitive (the new pool value,
or a refusal with its reason). Bad input is refused here with a 4xx and a reason and never
reaches a topic. Served by the gateway process, over its pipeline client.
"""
from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import Histogram
from sqlalchemy import text
from ulid import ULID

from streams import audit, ids, jackpots
from streams.events import JackpotReply
from streams.jackpot_events import AwardJackpot, ContributeRest, RollbackAward
from streams.topics import JACKPOT_COMMAND
from web.http import RECEIVED_AT, BadRequest, int_field, problem, read_signed_json, str_field

if TYPE_CHECKING:
    from web.gateway import Gateway

__all__ = ["add_routes", "RULES"]

MAX_BODY = 4 * 1024
WRITE_ROLES = ("game", "admin")
READ_ROLES = ("reader", "game", "admin")
API_SECONDS = Histogram("jackpot_api_seconds", "From receive to the jackpot API's answer", ["op"],
                        buckets=(.002, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5))

RULES = {
    "title": "Progressive jackpot rules",
    "rules": [
        "Every accepted bet of a channel contributes rate_bps of its stake to each active jackpot the channel "
        "feeds (its local pool, its operator group's shared pool, the mega pool); other games contribute over "
        "this API. Contributions are kept exactly, in millionths of a minor unit; displays and awards use whole "
        "minor units.",
        "must_hit_by: at each reset a hit value is drawn uniformly in [seed, cap] by a cryptographic random "
        "generator and its commitment SHA-256(\"<value>:<nonce>\") is published. The jackpot hits on the "
        "contribution that takes it to or above that value; the award is exactly the hit value, and what that "
        "contribution brought above it starts the next cycle (overflow). The value and the nonce are revealed "
        "with the hit, so anyone can check them against the commitment.",
        "external: the game reports the hit; the award is the pool's value in whole minor units at the moment "
        "the hit is processed.",
        "Hits on one jackpot are processed one at a time, in the order they reach it. The value of a hit is "
        "locked in when it is processed and the jackpot resets (seed plus overflow) in the same step, so a "
        "second hit processed after it, however close in time, receives the value after that reset, never the "
        "first hit's value.",
        "A term jackpot (a channel's local pool with a rank split) that hits during a term is shared among that "
        "term's cashed-out bets closest to the crash point (ties: the earlier bet), ranks 1 to 3 as split; the "
        "remainder of the split, and the share of a rank nobody took, go to rank 1. With no cashed-out bet the "
        "bet whose contribution triggered the hit wins it all. Contributions of a bet count once accepted, also "
        "if its term is later voided.",
        "Changes to a jackpot's parameters apply from its next reset, never during a cycle. A paused jackpot "
        "keeps its value and refuses contributions and awards.",
        "An award is paid once. A correction is a compensating entry in audit mode (the award's amount returns "
        "to the pool), never an edit or a deletion.",
    ],
}


def add_routes(app: web.Application, gateway: Gateway) -> None:
    api = JackpotApi(gateway)
    app.router.add_get("/jackpot/rules", api.rules)
    app.router.add_get("/jackpot/{jackpot_id}", api.read)
    app.router.add_post("/jackpot/{jackpot_id}/contribute", api.contribute)
    app.router.add_post("/jackpot/{jackpot_id}/award", api.award)
    app.router.add_post("/jackpot/{jackpot_id}/awards/{award_id}/rollback", api.rollback)


def _jackpot_id(request: web.Request) -> str:
    jackpot_id = request.match_info["jackpot_id"]
    if not ids.is_name(jackpot_id):
        raise BadRequest(400, "bad_request", f"jackpot id must match {ids.NAME.pattern}")
    return jackpot_id


class JackpotApi:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def _view(self, jackpot_id: str, caller=None, writes: bool = False) -> dict[str, Any]:
        """The jackpot's view, if the caller's key may use it: a key of an operator group reads and
        feeds that group's jackpots and the mega ones, and awards or rolls back only its own."""
        raw = await self.gateway.redis.get(jackpots.view_key(jackpot_id))
        if raw is None:
            raise BadRequest(404, "unknown_jackpot", f"no jackpot {jackpot_id}")
        view = json.loads(raw)
        if caller is not None and caller.group:
            group = view["operator_group"] if view["tier"] == "shared" else (
                self.gateway.channels.get(view["channel_id"], {}).get("operator_group") if view["tier"] == "local"
                else None)
            if group != caller.group and (writes or group is not None):
                raise BadRequest(403, "forbidden", f"key {caller.key_id} acts only on jackpots of operator group "
                                                   f"{caller.group}")
        return view

    def _command_fields(self, request: web.Request, jackpot_id: str) -> dict[str, Any]:
        command_id = str(ULID())
        return {"event_id": command_id, "channel_id": "", "ts": request[RECEIVED_AT], "jackpot_id": jackpot_id,
                "trace_id": request.headers.get("X-Trace-Id", command_id)[:64],
                "gateway_id": self.gateway.gateway_id}

    async def _decide(self, command, op: str) -> JackpotReply:
        with API_SECONDS.labels(op=op).time():
            return await self.gateway.pipeline.decide(JACKPOT_COMMAND, command.jackpot_id, command)

    async def rules(self, request: web.Request) -> web.Response:
        return web.json_response(RULES)

    async def read(self, request: web.Request) -> web.Response:
        jackpot_id = _jackpot_id(request)
        caller, _ = await read_signed_json(request, self.gateway.verifier, READ_ROLES, MAX_BODY)
        return web.json_response(await self._view(jackpot_id, caller))

    async def contribute(self, request: web.Request) -> web.Response:
        jackpot_id = _jackpot_id(request)
        caller, body = await read_signed_json(request, self.gateway.verifier, WRITE_ROLES, MAX_BODY)
        contribution_id = str_field(body, "contributionId", ids.REFERENCE)
        game_id = str_field(body, "gameId", ids.NAME)
        amount = int_field(body, "amount")
        if amount is None or not 1 <= amount <= jackpots.MAX_MONEY:
            raise BadRequest(400, "bad_request", "amount must be a positive integer in minor units")
        currency = body.get("currency")
        if not isinstance(currency, str) or not ids.CURRENCY.fullmatch(currency):
            raise BadRequest(400, "bad_request", "currency must be three capital letters")
        player_id = str_field(body, "playerId", ids.REFERENCE, required=False) or ""
        session_id = str_field(body, "sessionId", ids.REFERENCE, required=False) or ""
        view = await self._view(jackpot_id, caller)
        if currency != view["currency"]:
            raise BadRequest(400, "wrong_currency", f"jackpot {jackpot_id} is in {view['currency']}")
        if view["trigger"] == "must_hit_by" and not player_id:
            raise BadRequest(400, "bad_request", "playerId is required: a must_hit_by jackpot pays the player "
                                                 "whose contribution reaches its hit value")
        command = ContributeRest(**self._command_fields(request, jackpot_id), contribution_id=contribution_id,
                                 game_id=game_id, amount=amount, currency=currency, player_id=player_id,
                                 session_id=session_id)
        reply = await self._decide(command, "contribute")
        return self._answer(reply, contributionId=contribution_id)

    async def award(self, request: web.Request) -> web.Response:
        jackpot_id = _jackpot_id(request)
        caller, body = await read_signed_json(request, self.gateway.verifier, WRITE_ROLES, MAX_BODY)
        key = request.headers.get("Idempotency-Key")
        if not ids.is_reference(key):
            raise BadRequest(400, "bad_request", f"the Idempotency-Key header must match {ids.REFERENCE.pattern}")
        if body.get("jackpotId", jackpot_id) != jackpot_id:
            raise BadRequest(400, "bad_request", "jackpotId in the body is not the jackpot of the path")
        player_id = str_field(body, "playerId", ids.REFERENCE)
        session_id = str_field(body, "sessionId", ids.REFERENCE, required=False) or ""
        view = await self._view(jackpot_id, caller, writes=True)
        if view["trigger"] != "external":
            raise BadRequest(409, "not_external", f"jackpot {jackpot_id} hits by itself (must_hit_by)")
        command = AwardJackpot(**self._command_fields(request, jackpot_id), idempotency_key=key,
                               player_id=player_id, session_id=session_id, caller=caller.key_id)
        await audit.append(caller.key_id, caller.key_id, "jackpot.award",
                           audit.request_summary(request, body, idempotency_key=key), target=jackpot_id)
        return self._answer(await self._decide(command, "award"))

    async def rollback(self, request: web.Request) -> web.Response:
        """Cancel the award's unpaid payouts and return its amount to the pool (audit mode only)."""
        jackpot_id = _jackpot_id(request)
        caller, body = await read_signed_json(request, self.gateway.verifier, ("admin",), MAX_BODY)
        award_id = request.match_info["award_id"]
        reason = body.get("reason", "")
        if not isinstance(reason, str) or not 1 <= len(reason) <= 255:
            raise BadRequest(400, "bad_request", "reason must be a string of 1 to 255 characters")
        view = await self._view(jackpot_id, caller, writes=True)
        if view["status"] != "audit":
            raise BadRequest(409, "not_in_audit", "a rollback needs the jackpot in audit mode")
        await audit.append(caller.key_id, caller.key_id, "jackpot.rollback", audit.request_summary(request, body),
                           target=award_id)
        amount = await self._cancel_payouts(jackpot_id, award_id, caller.key_id, reason)
        command = RollbackAward(**self._command_fields(request, jackpot_id), award_id=award_id, amount=amount,
                                operator=caller.key_id, reason=reason)
        # The compensation is recorded as requested in MySQL: a lost command is sent again by
        # repeating this request (the pool applies one compensation per award).
        await self.gateway.pipeline.send(JACKPOT_COMMAND, jackpot_id, command)
        return web.json_response({"status": "requested", "jackpotId": jackpot_id, "awardId": award_id,
                                  "amount": amount}, status=202)

    async def _cancel_payouts(self, jackpot_id: str, award_id: str, operator: str, reason: str) -> int:
        """In one transaction: check that no winner of the award was paid, cancel their payouts and
        record the compensation as requested. Returns the award's amount."""
        now = int(time.time() * 1000)
        async with self.gateway.db.begin() as conn:
            award = (await conn.execute(text(
                "SELECT amount FROM jackpot_award WHERE award_id = :a AND jackpot_id = :j FOR UPDATE"),
                {"a": award_id, "j": jackpot_id})).first()
            if award is None:
                raise BadRequest(404, "unknown_award", f"no award {award_id} of jackpot {jackpot_id}")
            done = (await conn.execute(text("SELECT 1 FROM jackpot_compensation WHERE award_id = :a"),
                                       {"a": award_id})).first()
            if done is not None:
                return award.amount          # already requested: send the command again
            payouts = (await conn.execute(text(
                "SELECT o.order_no, o.status FROM jackpot_award_winner w JOIN payout_outbox o"
                " ON o.order_no = w.order_no WHERE w.award_id = :a FOR UPDATE"), {"a": award_id})).all()
            paid = [p.order_no for p in payouts if p.status not in ("failed", "ready")]
            if paid:
                raise BadRequest(409, "already_paid", f"payouts {', '.join(paid)} are sent or paid: a rollback "
                                                      "would need a clawback from the player's wallet")
            if payouts:
                await conn.execute(text(
                    "UPDATE payout_outbox o JOIN jackpot_award_winner w ON o.order_no = w.order_no"
                    " SET o.status = 'cancelled', o.last_error = :r, o.updated_at = :now"
                    " WHERE w.award_id = :a AND o.status IN ('failed', 'ready')"),
                    {"r": f"rolled back: {reason}"[:512], "now": now, "a": award_id})
            await conn.execute(text(
                "INSERT INTO jackpot_compensation (award_id, jackpot_id, amount, operator, reason, state, requested_at)"
                " VALUES (:a, :j, :amount, :op, :r, 'requested', :now)"),
                {"a": award_id, "j": jackpot_id, "amount": award.amount, "op": operator, "r": reason, "now": now})
            return award.amount

    @staticmethod
    def _answer(reply: JackpotReply, **extra: Any) -> web.Response:
        if reply.status != "accepted":
            return problem(409, "refused", reply.reason, jackpotId=reply.jackpot_id, **extra)
        body: dict[str, Any] = {"status": "accepted", "jackpotId": reply.jackpot_id, "value": reply.value,
                                "currency": reply.currency, **extra}
        if reply.award:
            body["award"] = reply.award
        if reply.repeat:
            body["repeat"] = True
        return web.json_response(body)
