"""Operator views, served by `crash-ops` (web/ops.py: a Faust process of its own, never a game
worker) (DESIGN section 1: channel config, manual start/abort, term history, fairness proofs,
payout outbox).

Public reads (GET) are open: they show only published data (configs, revealed hashes, results
without player ids). Operational reads (the payout outbox: players and amounts; the audit log)
need a signed request from a `reader` or `admin` key; writes (POST) a key with the admin role
(web.signing). An operators' console session (web/console.py: an account's login, a cookie and
a CSRF token) stands in for a signature, with the same roles and group scoping: `signed_caller`
(web/ops_requests.py, with the other checks of a request both views modules make) is the one
place that decides who is calling.
Commands go to game.command, so any worker can take them; their effect shows in the
term views (the definitive answers to players go through the gateway instead).
"""
from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from aiohttp import web as aioweb
from faust import web
from sqlalchemy import text
from ulid import ULID

from streams import audit, ids, jackpots
from streams.app import app
from streams.channels import DEFAULTS, MAX_JACKPOTS, ConfigError, validate
from streams.codec import encode
from streams.events import AbortTerm, ConfigureChannel, StartTerm
from streams.topics import command_topic
from streams.verify import verify_channel
from tables.chain_store import chain_store
from web.http import problem
from web.ops_requests import READ_ROLES, admin_body, out_of_scope, query_limit, signed_caller
from web.ops_resources import db


def now_ms() -> int:
    return int(time.time() * 1000)


async def send_command(command) -> None:
    await sent(command_topic, command.channel_id, command)


async def sent(topic, key: str, command) -> None:
    """Send a command and wait for Kafka's acknowledgement: a 202 means the command is in the log
    (Faust's send only buffers it), and it is ordered before whatever the caller does next."""
    await (await topic.send(key=key.encode(), value=encode(command)))


async def fetch_all(sql: str, **params) -> list[dict[str, Any]]:
    async with db().connect() as conn:
        result = await conn.execute(text(sql), params)
        return [dict(row._mapping) for row in result]


def _decode_json_columns(row: dict[str, Any], *names: str) -> dict[str, Any]:
    for name in names:
        if isinstance(row.get(name), str):
            row[name] = json.loads(row[name])
    return row


async def jackpots_in_scope(channel_id: str, operator_group: str) -> list[str]:
    """The jackpots a channel of this group feeds when it is created."""
    rows = await fetch_all("SELECT jackpot_id, definition FROM jackpot WHERE status <> 'paused' ORDER BY jackpot_id")
    fed = [r["jackpot_id"] for r in rows
           if jackpots.feeds(_decode_json_columns(r, "definition")["definition"], channel_id, operator_group)]
    return fed[:MAX_JACKPOTS]


async def register_channel(channel_id: str, config: dict[str, Any]) -> None:
    async with db().begin() as conn:
        await conn.execute(text(
            "INSERT INTO channel (channel_id, operator_group, config, config_version, created_at, updated_at)"
            " VALUES (:c, :g, :config, 0, :now, :now) ON DUPLICATE KEY UPDATE channel_id = channel_id"),
            {"c": channel_id, "g": config["operator_group"], "config": json.dumps(config), "now": now_ms()})


async def channel_row(channel_id: str) -> dict[str, Any] | None:
    rows = await fetch_all("SELECT * FROM channel WHERE channel_id = :c", c=channel_id)
    return _decode_json_columns(rows[0], "config") if rows else None


@app.page("/ops/channels")
class Channels(web.View):
    async def get(self, request):
        rows = await fetch_all("SELECT * FROM channel ORDER BY channel_id")
        return self.json({"channels": [_decode_json_columns(r, "config") for r in rows]})

    async def post(self, request):
        """Create a channel: {channel_id, config}; generates and stores its secret chain,
        publishes terminator and salt."""
        body, error = await admin_body(request)
        if error:
            return error
        channel_id = body.get("channel_id")
        if not ids.is_name(channel_id):
            return problem(400, "bad_request", f"channel_id must match {ids.NAME.pattern}")
        changes = body.get("config") or {}
        if isinstance(changes, dict) and "jackpots" not in changes:
            # A new channel feeds the active jackpots of its scope (its group's shared pools, mega).
            group = changes.get("operator_group", DEFAULTS["operator_group"])
            changes = {**changes, "jackpots": await jackpots_in_scope(channel_id, group)}
        try:
            config = validate(changes)
        except ConfigError as exc:
            return problem(400, "bad_config", str(exc))
        if (refused := out_of_scope(body, config["operator_group"])) is not None:
            return refused
        # The secret store is written before the command is sent, so it knows a channel whose
        # creation the sink has not recorded yet.
        if await channel_row(channel_id) is not None or await chain_store().exists(channel_id, 1):
            return problem(409, "exists", f"channel {channel_id} exists; change its config instead")
        await audit.append(body["_operator"], body["_key_id"], "channel.create",
                           audit.request_summary(request, body), target=channel_id)
        chain = await chain_store().create(channel_id, 1, config["chain_length"])
        public = {"chain_no": 1, "length": chain.length, "terminator": chain.terminator.hex(),
                  "salt": chain.salt.hex()}
        # The row is written before the command (config_version 0, "being created"), so that a
        # jackpot created right after it is fed by it; the pipeline's ChannelConfigured replaces it.
        await register_channel(channel_id, config)
        command = ConfigureChannel(event_id=str(ULID()), channel_id=channel_id, ts=now_ms(),
                                   config=config, operator=body["_operator"], chain=public)
        await send_command(command)
        return self.json({"channel_id": channel_id, "command_id": command.event_id, "config": config,
                          "fairness": public}, status=202)


@app.page("/ops/channels/{channel_id}")
class ChannelView(web.View):
    async def get(self, request, channel_id: str):
        row = await channel_row(channel_id)
        if row is None:
            return problem(404, "not_found", f"no channel {channel_id}")
        row["fairness"] = await fetch_all(
            "SELECT chain_no, length, terminator, salt, published_at FROM fairness_chain"
            " WHERE channel_id = :c ORDER BY chain_no", c=channel_id)
        row["terms"] = await recent_terms(channel_id, 20)
        return self.json(row)


@app.page("/ops/channels/{channel_id}/config")
class ChannelConfig(web.View):
    async def post(self, request, channel_id: str):
        """Change the config from the next term: a partial config object."""
        body, error = await admin_body(request)
        if error:
            return error
        row = await channel_row(channel_id)
        if row is None:
            if await chain_store().exists(channel_id, 1):
                return problem(409, "being_created", f"channel {channel_id} is being created; retry in a moment")
            return problem(404, "not_found", f"no channel {channel_id}")
        changes = {k: v for k, v in body.items() if not k.startswith("_")}
        try:
            config = validate(changes, row["config"])
        except ConfigError as exc:
            return problem(400, "bad_config", str(exc))
        if (refused := out_of_scope(body, row["operator_group"]) or out_of_scope(body, config["operator_group"])):
            return refused
        await audit.append(body["_operator"], body["_key_id"], "channel.config",
                           audit.request_summary(request, body), target=channel_id)
        command = ConfigureChannel(event_id=str(ULID()), channel_id=channel_id, ts=now_ms(),
                                   config=changes, operator=body["_operator"])
        await send_command(command)
        return self.json({"channel_id": channel_id, "command_id": command.event_id, "config": config,
                          "applies": "from the next term"}, status=202)


async def channel_command(view: web.View, request, channel_id: str, make) -> aioweb.Response:
    """An admin command on an existing channel: `make(body, now)` builds it (or a 4xx answer)."""
    body, error = await admin_body(request)
    if error:
        return error
    row = await channel_row(channel_id)
    if row is None:
        return problem(404, "not_found", f"no channel {channel_id}")
    if (refused := out_of_scope(body, row["operator_group"])) is not None:
        return refused
    command = make(body, now_ms())
    if isinstance(command, aioweb.Response):
        return command
    await audit.append(body["_operator"], body["_key_id"], "term.abort" if isinstance(command, AbortTerm)
                       else "term.start", audit.request_summary(request, body, command_id=command.event_id),
                       target=channel_id)
    await send_command(command)
    return view.json({"command_id": command.event_id, "received_at": command.ts}, status=202)


@app.page("/ops/channels/{channel_id}/start")
class StartView(web.View):
    async def post(self, request, channel_id: str):
        return await channel_command(self, request, channel_id, lambda body, now: StartTerm(
            event_id=str(ULID()), channel_id=channel_id, ts=now, operator=body["_operator"]))


@app.page("/ops/channels/{channel_id}/abort")
class AbortView(web.View):
    async def post(self, request, channel_id: str):
        def make(body, now):
            reason = body.get("reason", "")
            if not isinstance(reason, str):
                return problem(400, "bad_request", "reason must be a string")
            return AbortTerm(event_id=str(ULID()), channel_id=channel_id, ts=now, operator=body["_operator"],
                             reason=reason[:255])
        return await channel_command(self, request, channel_id, make)


async def recent_terms(channel_id: str, limit: int) -> list[dict[str, Any]]:
    rows = await fetch_all(
        "SELECT term_id, seq, chain_no, chain_index, state, created_at, bets_close_at, flying_at, crash_at,"
        " ended_at, closed_at, crash_x100, revealed_hash, aborted, abort_reason, recovered FROM crash_term"
        " WHERE channel_id = :c ORDER BY seq DESC LIMIT :n", c=channel_id, n=limit)
    for row in rows:
        if row["state"] in ("pre_start", "starting", "flying"):
            row["crash_x100"] = None   # never shown before the crash (it is not stored either)
    return rows


@app.page("/ops/channels/{channel_id}/terms")
class TermsView(web.View):
    async def get(self, request, channel_id: str):
        limit = query_limit(request, 50)
        if limit is None:
            return problem(400, "bad_request", "limit must be an integer in [1, 1000]")
        return self.json({"channel_id": channel_id, "terms": await recent_terms(channel_id, limit)})


@app.page("/ops/terms/{term_id}")
class TermView(web.View):
    async def get(self, request, term_id: str):
        rows = await fetch_all("SELECT * FROM crash_term WHERE term_id = :t", t=term_id)
        if not rows:
            return problem(404, "not_found", f"no term {term_id}")
        term = _decode_json_columns(rows[0], "config")
        term["totals"] = await fetch_all(
            "SELECT currency, bets, stakes, payouts, refunds, house_result FROM crash_term_totals"
            " WHERE term_id = :t", t=term_id)
        term["bets_by_status"] = await fetch_all(
            "SELECT status, currency, COUNT(*) AS n, CAST(SUM(amount) AS SIGNED) AS stakes,"
            " CAST(SUM(COALESCE(payout, 0)) AS SIGNED) AS payouts"
            " FROM bet WHERE term_id = :t GROUP BY status, currency", t=term_id)
        return self.json(term)


# One fairness verification at a time per process (a term can need up to a chain checkpoint's
# worth of hashes): a flood of them queues here, bounded, instead of taking the CPU.
_verifying = asyncio.Semaphore(1)
VERIFY_WAIT_S = 10.0


@app.page("/ops/verify")
class VerifyView(web.View):
    async def get(self, request):
        """Fairness proof check of a channel (?channel=) or one term (&term=)."""
        channel_id = request.query.get("channel")
        if not ids.is_name(channel_id):
            return problem(400, "bad_request", f"?channel= is required and must match {ids.NAME.pattern}")
        try:
            await asyncio.wait_for(_verifying.acquire(), VERIFY_WAIT_S)
        except TimeoutError:
            return aioweb.json_response({"error": "busy", "reason": "verifications are queued; retry later"},
                                        status=503, headers={"Retry-After": "5"})
        try:
            report = await verify_channel(db(), channel_id, request.query.get("term"))
        finally:
            _verifying.release()
        return self.json(report)


@app.page("/ops/payouts")
class PayoutsView(web.View):
    async def get(self, request):
        """The payout outbox (players and amounts: reader or admin): ?status=failed &limit="""
        from agents.payout_outbox import list_payouts
        caller, error = await signed_caller(request, READ_ROLES)
        if error is not None:
            return error
        assert caller is not None
        limit = query_limit(request, 100)
        if limit is None:
            return problem(400, "bad_request", "limit must be an integer in [1, 1000]")
        try:
            rows = await list_payouts(db(), request.query.get("status"), limit, operator_group=caller.group)
        except ValueError as error:
            return problem(400, "bad_request", str(error))
        return self.json({"payouts": rows})


@app.page("/ops/payouts/{order_no}/retry")
class PayoutRetryView(web.View):
    async def post(self, request, order_no: str):
        """Send a failed payout again (the wallet is idempotent on order_no: never paid twice)."""
        from agents.payout_outbox import retry_payout
        body, error = await admin_body(request)
        if error:
            return error
        if body["_group"]:
            owners = await fetch_all("SELECT c.operator_group FROM payout_outbox o JOIN channel c"
                                     " ON c.channel_id = o.channel_id WHERE o.order_no = :o", o=order_no)
            if (refused := out_of_scope(body, owners[0]["operator_group"] if owners else None)) is not None:
                return refused
        await audit.append(body["_operator"], body["_key_id"], "payout.retry", audit.request_summary(request, body),
                           target=order_no)
        if not await retry_payout(db(), order_no):
            return problem(409, "not_failed", f"payout {order_no} is not in status failed")
        return self.json({"order_no": order_no, "status": "ready"}, status=202)




# ---------------------------------------------------------------- the audit log

@app.page("/ops/audit")
class AuditLogView(web.View):
    async def get(self, request):
        """The latest rows of the audit log (?limit=, older ones with ?before=<seq>), each with its
        chain check (reader or admin of every group: the log spans all of them)."""
        caller, error = await signed_caller(request, READ_ROLES)
        if error is not None:
            return error
        assert caller is not None
        if caller.group:
            return problem(403, "forbidden", f"the audit log spans every operator group; {caller.key_id} acts only"
                                             f" on operator group {caller.group}")
        limit = query_limit(request, 100)
        if limit is None:
            return problem(400, "bad_request", "limit must be an integer in [1, 1000]")
        before_raw = request.query.get("before")
        if before_raw is not None and not (before_raw.isascii() and before_raw.isdigit() and len(before_raw) <= 18):
            return problem(400, "bad_request", "before must be a row number (seq)")
        before = int(before_raw) if before_raw is not None else None
        fetched = [audit.AuditRow(**row) for row in reversed(await fetch_all(
            "SELECT seq, ts, actor, key_id, action, target, request, prev_hash, row_hash FROM audit_log"
            " WHERE (:b IS NULL OR seq < :b) ORDER BY seq DESC LIMIT :n", b=before, n=limit + 1))]
        previous, rows = (fetched[0], fetched[1:]) if len(fetched) > limit else (None, fetched)
        heads = await fetch_all("SELECT last_seq, last_hash FROM audit_head WHERE id = 1")
        at_end = before is None or (bool(heads) and before > heads[0]["last_seq"])
        head = (heads[0]["last_seq"], heads[0]["last_hash"]) if heads and at_end else None
        problems = audit.chain_breaks(rows, previous, head)
        shown = []
        for row in reversed(rows):                       # newest first
            try:
                summary = json.loads(row.request)
            except ValueError:
                summary = row.request
            shown.append({"seq": row.seq, "ts": row.ts, "actor": row.actor, "key_id": row.key_id,
                          "action": row.action, "target": row.target, "request": summary,
                          "prev_hash": row.prev_hash, "row_hash": row.row_hash, "ok": row.seq not in problems,
                          "problems": problems.get(row.seq, [])})
        return self.json({
            "rows": shown,
            "chain": {"first_seq": rows[0].seq if rows else None, "last_seq": rows[-1].seq if rows else None,
                      "head_seq": heads[0]["last_seq"] if heads else None, "intact": not problems,
                      "problems": [p for seq in sorted(problems) for p in problems[seq]],
                      "checked": "each row's hash, its link to the row before it" + (" and the head" if head else "")
                                 + "; crash-audit verify checks the whole chain and its WORM copies"},
            "next_before": rows[0].seq if previous is not None else None})
