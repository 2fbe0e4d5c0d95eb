"""Operator views of the jackpots (Faust web, on every worker; writes need an admin key):

    GET  /ops/jackpots                       every jackpot with its live value
    POST /ops/jackpots                       create {definition}: the channels of its scope feed it
    GET  /ops/jackpots/rules                 the public jackpot rules
    GET  /ops/jackpots/{id}                  definition, pending change, cycles, awards, reconciliations
                                             (winners' player ids and payouts only to a signed reader or admin)
    POST /ops/jackpots/{id}/config           change parameters from the next reset (partial definition)
    POST /ops/jackpots/{id}/status           {status: active|paused|audit, reason}
    POST /ops/jackpots/{id}/feeds            {channel_id, feed: true|false}: a channel starts or stops feeding it
    GET  /ops/jackpots/{id}/verify           check every revealed commitment
    POST /ops/jackpots/{id}/reconcile        reconcile the pool against MySQL now

Commands go to game.jackpot.command (the pool's single writer decides; the effect shows in
these views). Definitions are validated here with the same rules the pool applies
(streams.jackpots.validate), so a refusal comes back as a 400 with its reason.
"""
from __future__ import annotations

import json
import time
from typing import Any

from faust import web
from sqlalchemy import text
from ulid import ULID

from streams import audit, ids, jackpots
from streams.events import FeedJackpot
from streams.jackpot_events import ConfigureJackpot, ReconcileJackpot, SetJackpotStatus
from streams.jackpot_verify import verify_jackpot
from streams.topics import command_topic, jackpot_command_topic
from web.http import problem
from web.jackpot_api import RULES
from web.operator_views import app, fetch_all, sent
from web.ops_requests import READ_ROLES, admin_body, out_of_scope, presents_credentials, signed_caller
from web.ops_resources import db, redis

__all__ = ["channels_in_scope"]


def _now() -> int:
    return int(time.time() * 1000)


def _decode(row: dict[str, Any], *names: str) -> dict[str, Any]:
    for name in names:
        if isinstance(row.get(name), str):
            row[name] = json.loads(row[name])
    return row


async def _send(command) -> None:
    await sent(jackpot_command_topic, command.jackpot_id, command)


async def _jackpot_row(jackpot_id: str) -> dict[str, Any] | None:
    rows = await fetch_all("SELECT * FROM jackpot WHERE jackpot_id = :j", j=jackpot_id)
    return _decode(rows[0], "definition", "pending") if rows else None


async def _register(definition: dict[str, Any]) -> bool:
    """Insert the jackpot's row; False if another jackpot has this id (a repeat of the same
    creation that has not taken effect yet may go on: the pool creates a jackpot once)."""
    now = _now()
    async with db().begin() as conn:
        await conn.execute(text(
            "INSERT INTO jackpot (jackpot_id, tier, currency, trigger_kind, channel_id, operator_group, definition,"
            " status, version, created_at, updated_at) VALUES (:j, :tier, :cur, :trig, :ch, :grp, :d, 'active', 0,"
            " :now, :now) ON DUPLICATE KEY UPDATE jackpot_id = jackpot_id"),
            {"j": definition["jackpot_id"], "tier": definition["tier"], "cur": definition["currency"],
             "trig": definition["trigger"], "ch": definition["channel_id"], "grp": definition["operator_group"],
             "d": json.dumps(definition), "now": now})
        row = (await conn.execute(text("SELECT version, definition FROM jackpot WHERE jackpot_id = :j"),
                                  {"j": definition["jackpot_id"]})).one()
    return row.version == 0 and json.loads(row.definition) == definition


async def group_of(definition: dict[str, Any]) -> str | None:
    """The operator group a jackpot belongs to (None: a mega jackpot, of every group)."""
    if definition["tier"] == "shared":
        return definition["operator_group"]
    if definition["tier"] == "local":
        rows = await fetch_all("SELECT operator_group FROM channel WHERE channel_id = :c", c=definition["channel_id"])
        return rows[0]["operator_group"] if rows else None
    return None


async def _scoped_row(body: dict[str, Any], jackpot_id: str):
    """(jackpot row, None), or (None, 404 / 403 answer) for the admin's key."""
    row = await _jackpot_row(jackpot_id)
    if row is None:
        return None, problem(404, "not_found", f"no jackpot {jackpot_id}")
    refused = out_of_scope(body, await group_of(row["definition"]))
    return (None, refused) if refused is not None else (row, None)


async def channels_in_scope(definition: dict[str, Any]) -> list[str]:
    """The channels whose bets feed a jackpot of this definition (from MySQL's channel table)."""
    rows = await fetch_all("SELECT channel_id, operator_group FROM channel ORDER BY channel_id")
    return [r["channel_id"] for r in rows if jackpots.feeds(definition, r["channel_id"], r["operator_group"])]


async def _live_views(jackpot_ids: list[str]) -> dict[str, Any]:
    if not jackpot_ids:
        return {}
    raw = await redis().mget([jackpots.view_key(j) for j in jackpot_ids])
    return {j: json.loads(v) for j, v in zip(jackpot_ids, raw, strict=True) if v is not None}


@app.page("/ops/jackpots")
class Jackpots(web.View):
    async def get(self, request):
        rows = [_decode(r, "definition", "pending")
                for r in await fetch_all("SELECT * FROM jackpot ORDER BY jackpot_id")]
        live = await _live_views([r["jackpot_id"] for r in rows])
        for row in rows:
            row["live"] = live.get(row["jackpot_id"])
        return self.json({"jackpots": rows})

    async def post(self, request):
        body, error = await admin_body(request)
        if error:
            return error
        try:
            definition = jackpots.validate(body.get("definition") or {})
        except jackpots.DefinitionError as exc:
            return problem(400, "bad_definition", str(exc))
        jackpot_id = definition["jackpot_id"]
        if (refused := out_of_scope(body, await group_of(definition))) is not None:
            return refused
        await audit.append(body["_operator"], body["_key_id"], "jackpot.create",
                           audit.request_summary(request, body), target=jackpot_id)
        # The row is written before the command (version 0, "being created"), so that a channel
        # created right after it already feeds it; the pool's JackpotConfigured replaces it.
        if not await _register(definition):
            return problem(409, "exists", f"jackpot {jackpot_id} exists; change its parameters instead")
        await _send(ConfigureJackpot(event_id=str(ULID()), channel_id="", ts=_now(), jackpot_id=jackpot_id,
                                     definition=definition, create=True, operator=body["_operator"]))
        fed = await channels_in_scope(definition)
        for channel_id in fed:
            await sent(command_topic, channel_id, FeedJackpot(
                event_id=str(ULID()), channel_id=channel_id, ts=_now(), jackpot_id=jackpot_id,
                operator=body["_operator"]))
        return self.json({"jackpot_id": jackpot_id, "definition": definition, "fed_by": fed,
                          "feeding": "from each channel's next term"}, status=202)


@app.page("/ops/jackpots/rules")
class Rules(web.View):
    async def get(self, request):
        return self.json(RULES)


@app.page("/ops/jackpots/{jackpot_id}")
class JackpotView(web.View):
    async def get(self, request, jackpot_id: str):
        row = await _jackpot_row(jackpot_id)
        if row is None:
            return problem(404, "not_found", f"no jackpot {jackpot_id}")
        row["live"] = (await _live_views([jackpot_id])).get(jackpot_id)
        row["cycles"] = [_decode(r, "definition") for r in await fetch_all(
            "SELECT cycle, seed, start_micro, commitment, started_at, award_id, hit_value, nonce, ended_at"
            " FROM jackpot_cycle WHERE jackpot_id = :j ORDER BY cycle DESC LIMIT 20", j=jackpot_id)]
        awards = await fetch_all("SELECT * FROM jackpot_award WHERE jackpot_id = :j ORDER BY ts DESC LIMIT 20",
                                 j=jackpot_id)
        winners = await fetch_all(
            "SELECT w.*, o.status AS payout_status FROM jackpot_award_winner w LEFT JOIN payout_outbox o"
            " ON o.order_no = w.order_no WHERE w.jackpot_id = :j ORDER BY w.ts DESC, w.rank_no LIMIT 100",
            j=jackpot_id)
        signed = presents_credentials(request)      # a signature or a console session
        if signed:
            caller, error = await signed_caller(request, READ_ROLES)
            if error is not None:
                return error
            assert caller is not None
            group = await group_of(row["definition"])
            signed = not caller.group or caller.group == group     # another group's winners stay hidden
        for award in awards:
            award["winners"] = [w for w in winners if w["award_id"] == award["award_id"]]
            if not signed:      # anonymous: the results, not who won them
                award["user_id"] = award["bet_id"] = None
                award["winners"] = [{"rank_no": w["rank_no"], "bonus_amount": w["bonus_amount"],
                                     "multiple_x100": w["multiple_x100"]} for w in award["winners"]]
        row["awards"] = awards
        row["compensations"] = await fetch_all(
            "SELECT * FROM jackpot_compensation WHERE jackpot_id = :j ORDER BY requested_at DESC", j=jackpot_id)
        row["reconciliations"] = await fetch_all(
            "SELECT * FROM jackpot_reconciliation WHERE jackpot_id = :j ORDER BY id DESC LIMIT 10", j=jackpot_id)
        return self.json(row)


@app.page("/ops/jackpots/{jackpot_id}/config")
class JackpotConfig(web.View):
    async def post(self, request, jackpot_id: str):
        """Change parameters: applies from the next reset (never mid-cycle)."""
        body, error = await admin_body(request)
        if error:
            return error
        row, error = await _scoped_row(body, jackpot_id)
        if error:
            return error
        changes = {k: v for k, v in body.items() if not k.startswith("_")}
        not_changeable = set(changes) - set(jackpots.CHANGEABLE)
        if not_changeable:
            return problem(400, "bad_definition", f"cannot change: {', '.join(sorted(not_changeable))}")
        try:
            definition = jackpots.validate(changes, row["pending"] or row["definition"])
        except jackpots.DefinitionError as exc:
            return problem(400, "bad_definition", str(exc))
        await audit.append(body["_operator"], body["_key_id"], "jackpot.config",
                           audit.request_summary(request, body), target=jackpot_id)
        await _send(ConfigureJackpot(event_id=str(ULID()), channel_id="", ts=_now(), jackpot_id=jackpot_id,
                                     definition=definition, operator=body["_operator"]))
        return self.json({"jackpot_id": jackpot_id, "pending": definition, "applies": "from the next reset"},
                         status=202)


@app.page("/ops/jackpots/{jackpot_id}/status")
class JackpotStatus(web.View):
    async def post(self, request, jackpot_id: str):
        body, error = await admin_body(request)
        if error:
            return error
        status, reason = body.get("status"), body.get("reason", "")
        if status not in jackpots.STATUSES:
            return problem(400, "bad_request", f"status must be one of {', '.join(jackpots.STATUSES)}")
        if not isinstance(reason, str) or len(reason) > 255:
            return problem(400, "bad_request", "reason must be a string of at most 255 characters")
        _, error = await _scoped_row(body, jackpot_id)
        if error:
            return error
        await audit.append(body["_operator"], body["_key_id"], f"jackpot.{status}",
                           audit.request_summary(request, body), target=jackpot_id)
        await _send(SetJackpotStatus(event_id=str(ULID()), channel_id="", ts=_now(), jackpot_id=jackpot_id,
                                     status=status, operator=body["_operator"], reason=reason))
        return self.json({"jackpot_id": jackpot_id, "status": status}, status=202)


@app.page("/ops/jackpots/{jackpot_id}/feeds")
class JackpotFeeds(web.View):
    async def post(self, request, jackpot_id: str):
        """A channel of the jackpot's scope starts (or stops) feeding it, from its next term."""
        body, error = await admin_body(request)
        if error:
            return error
        row, error = await _scoped_row(body, jackpot_id)
        if error:
            return error
        channel_id, feed = body.get("channel_id"), body.get("feed", True)
        if not isinstance(feed, bool):
            return problem(400, "bad_request", "feed must be true or false")
        if channel_id not in await channels_in_scope(row["definition"]):
            return problem(400, "out_of_scope", f"channel {channel_id} is not in the scope of jackpot {jackpot_id}")
        await audit.append(body["_operator"], body["_key_id"], "jackpot.feed", audit.request_summary(request, body),
                           target=jackpot_id)
        await sent(command_topic, channel_id, FeedJackpot(
            event_id=str(ULID()), channel_id=channel_id, ts=_now(), jackpot_id=jackpot_id, feed=feed,
            operator=body["_operator"]))
        return self.json({"jackpot_id": jackpot_id, "channel_id": channel_id, "feed": feed,
                          "applies": "from the channel's next term"}, status=202)


@app.page("/ops/jackpots/{jackpot_id}/verify")
class JackpotVerify(web.View):
    async def get(self, request, jackpot_id: str):
        if not ids.is_name(jackpot_id) or await _jackpot_row(jackpot_id) is None:
            return problem(404, "not_found", f"no jackpot {jackpot_id}")
        return self.json(await verify_jackpot(db(), jackpot_id))


@app.page("/ops/jackpots/{jackpot_id}/reconcile")
class JackpotReconcile(web.View):
    async def post(self, request, jackpot_id: str):
        body, error = await admin_body(request)
        if error:
            return error
        _, error = await _scoped_row(body, jackpot_id)
        if error:
            return error
        request_id = f"ops-{ULID()}"
        await audit.append(body["_operator"], body["_key_id"], "jackpot.reconcile",
                           audit.request_summary(request, body, request_id=request_id), target=jackpot_id)
        await _send(ReconcileJackpot(event_id=f"{jackpot_id}.reconcile.{request_id}", channel_id="", ts=_now(),
                                     jackpot_id=jackpot_id, request_id=request_id))
        return self.json({"jackpot_id": jackpot_id, "request_id": request_id,
                          "result": f"GET /ops/jackpots/{jackpot_id} (reconciliations)"}, status=202)
