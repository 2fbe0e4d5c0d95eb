"""Jackpot Service (seeds 003 and 000 section 4.6): the progressive pools, one writer per jackpot.

It consumes game.jackpot.command, keyed by jackpot_id, so every command of one pool is decided
in one order by one worker: definitions and status from the operator views, the contributions
of accepted bets (re-partitioned here from each channel's command stream, one ContributeBets per
jackpot per batch of bets), contributions and external hits from other games over REST,
audit-mode rollbacks, reconciliation requests. The rules are streams/jackpots.py.

Per batch, each touched pool is updated once (one staged table write) and its contributions
leave as one JackpotContributed per cycle; a hit splits the batch at the crossing contribution:
the value is locked in and the pool resets in the same step (a second hit is processed after
it and gets the post-reset value). Awards: JackpotHit, then JackpotAwarded and
PayoutRequested(bonus) for a pool that pays the hitting player; a term jackpot's hit goes to
its channel (TermJackpotHit on game.command), which shares it out on the term's podium
(agents/term_jackpot.py).

Idempotence: bet contributions carry their PlaceBet's (partition, offset) on game.command and
the pool keeps a watermark per partition; REST contribution ids and award idempotency keys are
kept in `jackpot_keys` for CRASH_JACKPOT_IDEMPOTENCY_S; award ids are `<jackpot>.<cycle>` (one
hit per cycle), so a batch processed again yields the same events, ids and order numbers.

The hit value of a must_hit_by cycle lives in tables.jackpot_secrets and this process's memory
until the hit reveals it. After each committed batch, the touched pools' views are written to
Redis (`jackpot:<id>`, what GET /jackpot/{id} serves; agents/pool_views.py). A batch's pools and
idempotency keys are kept by agents/jackpot_batch.py.
"""
from __future__ import annotations

import logging
import time
from typing import Any

from agents import jackpot_batch
from agents.pool_views import owned_pools, publish_views
from streams import jackpots, metrics
from streams.app import app, settings
from streams.codec import encode
from streams.events import JackpotReply, PayoutRequested, TermJackpotHit
from streams.jackpot_events import (
    JACKPOT_COMMAND_RECORDS,
    AwardJackpot,
    ConfigureJackpot,
    ContributeBets,
    ContributeRest,
    JackpotAwarded,
    JackpotAwardRolledBack,
    JackpotCommand,
    JackpotConfigured,
    JackpotContributionRefused,
    JackpotCycleStarted,
    JackpotHit,
    JackpotSnapshot,
    ReconcileJackpot,
    RollbackAward,
    SetJackpotStatus,
)
from streams.jackpots import MICRO
from streams.processing import Batch, run_batches
from streams.topics import (
    command_topic,
    jackpot_command_topic,
    jackpot_topic,
    payout_topic,
    reply_topic,
)
from tables import JackpotPool, jackpot_pools
from tables.jackpot_secrets import jackpot_secrets

log = logging.getLogger(__name__)

__all__ = ["jackpot_processor", "award_id_of"]


def award_id_of(jackpot_id: str, cycle: int) -> str:
    """One hit ends a cycle: the award of a cycle has a deterministic id."""
    return f"{jackpot_id}.{cycle}"


# ---------------------------------------------------------------- hits and cycles

async def _hit_if_reached(batch: Batch, pool: JackpotPool, winner: dict[str, Any]) -> dict[str, Any] | None:
    """After a contribution: the award it triggered ({award_id, amount, cycle}), if any.
    At most one hit per contribution: a cycle that starts at or above its hit value (a large
    overflow) hits on its next contribution."""
    if pool.definition["trigger"] != "must_hit_by":
        return None
    hit_value, nonce = await jackpot_secrets().get(pool.jackpot_id, pool.cycle)    # kept in memory
    if not jackpots.reached(jackpot_batch.money_of(pool), hit_value):
        return None
    return await _hit(batch, pool, winner, hit_value, nonce)


def _counted(pool: JackpotPool, source: str, game_id: str, count: int, amount_micro: int) -> None:
    metrics.child(metrics.JACKPOT_CONTRIBUTIONS, pool.jackpot_id, source).inc(count)
    metrics.child(metrics.JACKPOT_CONTRIBUTED, pool.jackpot_id, game_id).inc(amount_micro / MICRO)


async def _hit(batch: Batch, pool: JackpotPool, winner: dict[str, Any], hit_value: int | None,
               nonce: str) -> dict[str, Any]:
    """Lock the value in and reset the pool, in this one step; then award or hand to the term."""
    touched = jackpot_batch.touch(batch, pool)
    definition = pool.definition
    trigger = definition["trigger"]
    award_amount, overflow = jackpots.lock_in(jackpot_batch.money_of(pool), trigger, hit_value)
    award_id = award_id_of(pool.jackpot_id, pool.cycle)
    ranked = bool(definition.get("rank_split_bps")) and winner.get("source") == "bet"
    currency = definition["currency"]
    ended_cycle = pool.cycle
    pool.value_micro -= award_amount * MICRO           # what stays is the overflow
    jackpot_batch.close_segment(batch, touched)
    batch.emit.send(jackpot_topic, pool.jackpot_id, JackpotHit(
        event_id=f"{award_id}.hit", channel_id=winner.get("channel_id", ""), term_id=winner.get("term_id", ""),
        ts=batch.now, trace_id=award_id, jackpot_id=pool.jackpot_id, award_id=award_id, cycle=ended_cycle,
        trigger=trigger, amount=award_amount, currency=currency, overflow_micro=overflow + pool.reserve_micro,
        hit_value=hit_value, nonce=nonce, commitment=pool.commitment, ranked=ranked,
        bet_id=winner.get("bet_id", ""), user_id=winner["user_id"], session_id=winner.get("session_id", "")))
    pool.awards += 1
    pool.last_hit = {"award_id": award_id, "amount": award_amount, "cycle": ended_cycle, "at": batch.now,
                     "ranked": ranked, "winners": []}
    metrics.JACKPOT_AWARDS.labels(jackpot_id=pool.jackpot_id, trigger=trigger).inc()
    await _start_cycle(batch, pool, ended_cycle + 1)
    if ranked:
        batch.emit.send(command_topic, winner["channel_id"], TermJackpotHit(
            event_id=f"{award_id}.term_hit", channel_id=winner["channel_id"], term_id=winner["term_id"],
            ts=batch.now, trace_id=award_id, jackpot_id=pool.jackpot_id, award_id=award_id, cycle=ended_cycle,
            amount=award_amount, currency=currency, rank_split_bps=list(definition["rank_split_bps"]),
            bet_id=winner["bet_id"], user_id=winner["user_id"]))
    else:
        emit_award(batch, pool.jackpot_id, award_id, ended_cycle, award_amount, currency,
                   [(1, winner, award_amount)])
        pool.last_hit["winners"] = [{"rank": 1, "user_id": winner["user_id"], "bonus_amount": award_amount}]
    log.info("jackpot %s hit: award %s of %s %s (%s)", pool.jackpot_id, award_id, award_amount, currency, trigger)
    return {"award_id": award_id, "amount": award_amount, "cycle": ended_cycle}


def emit_award(batch: Batch, jackpot_id: str, award_id: str, cycle: int, award_amount: int, currency: str,
               winners: list[tuple[int, dict[str, Any], int]]) -> None:
    """JackpotAwarded and PayoutRequested(bonus) for each winner (also used by the term jackpot)."""
    for rank, winner, bonus in winners:
        order_no = jackpots.bonus_order_no(award_id, rank)
        channel_id = winner.get("channel_id", "")
        common = {"channel_id": channel_id, "term_id": winner.get("term_id", ""), "ts": batch.now,
                  "trace_id": award_id}
        batch.emit.send(jackpot_topic, jackpot_id, JackpotAwarded(
            event_id=f"{award_id}.rank{rank}.awarded", **common, jackpot_id=jackpot_id, award_id=award_id,
            rank=rank, user_id=winner["user_id"], currency=currency, bonus_amount=bonus, order_no=order_no,
            award_amount=award_amount, cycle=cycle, bet_id=winner.get("bet_id", ""),
            multiple_x100=winner.get("multiple_x100", 0)))
        if bonus > 0:
            batch.emit.send(payout_topic, channel_id or jackpot_id, PayoutRequested(
                event_id=f"{award_id}.rank{rank}.payout", **common, kind="bonus", order_no=order_no,
                user_id=winner["user_id"], amount=bonus, currency=currency, bet_id=winner.get("bet_id", ""),
                meta={"jackpot_id": jackpot_id, "award_id": award_id, "rank": rank}))


async def _start_cycle(batch: Batch, pool: JackpotPool, cycle: int) -> None:
    """A new cycle: the pending definition (if any) applies now; it starts with its seed plus
    what the pool still holds (the hit's overflow and the reserve); must_hit_by commits a new
    hit value."""
    if pool.pending is not None:
        pool.definition, pool.pending = pool.pending, None
    definition = pool.definition
    money = jackpots.start_of_cycle(definition["seed"], pool.value_micro, pool.reserve_micro, definition["cap"])
    jackpot_batch.set_money(pool, money)
    pool.cycle = cycle
    pool.near_cap_sent = False
    pool.commitment = ""
    if definition["trigger"] == "must_hit_by":
        hit_value, nonce = await jackpot_secrets().draw(pool.jackpot_id, cycle, definition["seed"], definition["cap"])
        pool.commitment = jackpots.commitment(hit_value, nonce)
    batch.emit.send(jackpot_topic, pool.jackpot_id, JackpotCycleStarted(
        event_id=f"{pool.jackpot_id}.{cycle}.started", channel_id="", ts=batch.now, jackpot_id=pool.jackpot_id,
        cycle=cycle, seed=definition["seed"], start_micro=money.total_micro, definition=definition,
        commitment=pool.commitment))
    touched = jackpot_batch.touch(batch, pool)
    jackpot_batch.check_near_cap(batch, touched, definition["currency"])


# ---------------------------------------------------------------- commands

def _reply(batch: Batch, command: JackpotCommand, pool: JackpotPool | None, status: str, reason: str = "",
           award: dict[str, Any] | None = None, repeat: bool = False) -> dict[str, Any]:
    reply = JackpotReply(
        event_id=f"{command.event_id}.reply", channel_id="", ts=batch.now, trace_id=command.trace_id,
        gateway_id=command.gateway_id, command_id=command.event_id, status=status, jackpot_id=command.jackpot_id,
        reason=reason, value=jackpots.whole(pool.value_micro) if pool is not None else 0,
        currency=pool.definition["currency"] if pool is not None else "", award=award, repeat=repeat)
    if command.gateway_id:
        batch.emit.send(reply_topic, command.gateway_id, reply)
    return reply.asdict()


def _answer_again(batch: Batch, command: JackpotCommand, stored: dict[str, Any]) -> None:
    if command.gateway_id:
        fields = {**stored, "event_id": f"{command.event_id}.reply", "command_id": command.event_id,
                  "gateway_id": command.gateway_id, "ts": batch.now, "repeat": True}
        batch.emit.send(reply_topic, command.gateway_id, JackpotReply(**fields))


async def configure(batch: Batch, command: ConfigureJackpot, pool: JackpotPool | None) -> None:
    try:
        definition = jackpots.validate(command.definition, None if pool is None else
                                       (pool.pending or pool.definition))
    except jackpots.DefinitionError as error:
        log.error("jackpot %s: definition refused: %s", command.jackpot_id, error)
        return
    if pool is None:
        if not command.create:
            log.error("jackpot %s: change of an unknown jackpot ignored", command.jackpot_id)
            return
        pool = JackpotPool(jackpot_id=command.jackpot_id, definition=definition, status="active", version=1,
                           cycle=0, value_micro=0, watermarks={}, compensated=[])
        jackpot_batch.touch(batch, pool)
        await _start_cycle(batch, pool, 1)
    elif command.create:
        log.info("jackpot %s exists: creation ignored", command.jackpot_id)
        return
    else:
        pool.pending = definition
        pool.version += 1
        jackpot_batch.touch(batch, pool)
    _configured(batch, pool, command.operator, created=pool.version == 1)


def _configured(batch: Batch, pool: JackpotPool, operator: str, created: bool = False) -> None:
    batch.emit.send(jackpot_topic, pool.jackpot_id, JackpotConfigured(
        event_id=f"{pool.jackpot_id}.v{pool.version}", channel_id="", ts=batch.now, jackpot_id=pool.jackpot_id,
        definition=pool.definition, status=pool.status, version=pool.version, pending=pool.pending,
        operator=operator, created=created))


def set_status(batch: Batch, command: SetJackpotStatus, pool: JackpotPool) -> None:
    if command.status not in jackpots.STATUSES or command.status == pool.status:
        return
    pool.status = command.status
    pool.version += 1
    jackpot_batch.touch(batch, pool)
    _configured(batch, pool, command.operator)


async def contribute_bets(batch: Batch, command: ContributeBets, pool: JackpotPool) -> None:
    """A channel's accepted bets of one batch. The pool is staged and the counters counted once
    per command, not per bet: this loop runs for every accepted bet. A hit starts a new cycle,
    perhaps with a new definition, which the command's later bets follow."""
    watermarks = pool.watermarks if pool.watermarks is not None else {}
    pool.watermarks = watermarks
    touched: jackpot_batch.Touched | None = None
    latency = metrics.child(metrics.JACKPOT_LATENCY, "bet")
    count = total_micro = 0
    for item in command.items:
        partition = str(item["p"])
        if item["o"] < watermarks.get(partition, 0):
            continue                                  # delivered again: applied already
        watermarks[partition] = item["o"] + 1
        if touched is None:
            touched = jackpot_batch.touch(batch, pool)
        definition = pool.definition
        reason = "paused" if pool.status != "active" else (
            "currency" if item["currency"] != definition["currency"] else "")
        if reason:
            metrics.JACKPOT_REFUSED.labels(jackpot_id=pool.jackpot_id, reason=reason).inc()
            continue
        amount_micro = jackpots.contribution_micro(item["amount"], definition["rate_bps"])
        jackpot_batch.add(batch, touched, {
            "key": f"bet:{item['bet_id']}", "source": "bet", "game_id": command.channel_id,
            "user_id": item["user_id"], "bet_id": item["bet_id"], "term_id": item["term_id"], "ts": item["ts"],
            "amount_micro": amount_micro})
        count += 1
        total_micro += amount_micro
        latency.observe(max(0, batch.now - item["ts"]) / 1000)
        await _hit_if_reached(batch, pool, {"source": "bet", "channel_id": command.channel_id,
                                            "term_id": item["term_id"], "bet_id": item["bet_id"],
                                            "user_id": item["user_id"]})
    if count:
        _counted(pool, "bet", command.channel_id, count, total_micro)


async def contribute_rest(batch: Batch, command: ContributeRest, pool: JackpotPool | None, partition: int) -> None:
    key = f"{command.jackpot_id}/contribution:{command.contribution_id}"
    content = jackpot_batch.digest(command.game_id, command.amount, command.currency, command.player_id)
    seen = jackpot_batch.seen(batch, key)
    if seen is not None:
        if seen["content"] != content:
            _reply(batch, command, pool, "refused", "contribution_id_reused")
        else:
            _answer_again(batch, command, seen["reply"])
        return
    reason = _refusal(pool, command.currency)
    if reason:
        _reply(batch, command, pool, "refused", reason)
        batch.emit.send(jackpot_topic, command.jackpot_id, JackpotContributionRefused(
            event_id=f"{command.event_id}.refused", channel_id="", ts=batch.now, trace_id=command.trace_id,
            jackpot_id=command.jackpot_id, contribution_id=command.contribution_id, reason=reason))
        metrics.JACKPOT_REFUSED.labels(jackpot_id=command.jackpot_id, reason=reason).inc()
        return
    assert pool is not None
    if pool.definition["trigger"] == "must_hit_by" and not command.player_id:
        _reply(batch, command, pool, "refused", "player_required")
        return
    amount_micro = command.amount * MICRO
    jackpot_batch.add(batch, jackpot_batch.touch(batch, pool), {
        "key": f"rest:{command.contribution_id}", "source": "rest", "game_id": command.game_id,
        "user_id": command.player_id, "bet_id": "", "term_id": "", "ts": command.ts, "amount_micro": amount_micro})
    _counted(pool, "rest", command.game_id, 1, amount_micro)
    metrics.child(metrics.JACKPOT_LATENCY, "rest").observe(max(0, batch.now - command.ts) / 1000)
    award = await _hit_if_reached(batch, pool, {"source": "rest", "user_id": command.player_id,
                                                "session_id": command.session_id})
    reply = _reply(batch, command, pool, "accepted", award=award)
    jackpot_batch.remember(batch, partition, key, {"content": content, "reply": _stored(reply)})


def _stored(reply: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in reply.items() if k not in ("event_id", "command_id", "gateway_id", "ts")}


def _refusal(pool: JackpotPool | None, currency: str) -> str:
    if pool is None:
        return "unknown_jackpot"
    if pool.status != "active":
        return pool.status          # paused | audit
    if currency != pool.definition["currency"]:
        return "wrong_currency"
    return ""


async def award_external(batch: Batch, command: AwardJackpot, pool: JackpotPool | None, partition: int) -> None:
    key = f"{command.jackpot_id}/award:{command.idempotency_key}"
    content = jackpot_batch.digest(command.player_id, command.session_id)
    seen = jackpot_batch.seen(batch, key)
    if seen is not None:
        if seen["content"] != content:
            _reply(batch, command, pool, "refused", "idempotency_key_reused")
        else:
            _answer_again(batch, command, seen["reply"])
        return
    reason = _refusal(pool, pool.definition["currency"] if pool is not None else "")
    if not reason and pool is not None and pool.definition["trigger"] != "external":
        reason = "not_external"
    if not reason and pool is not None and jackpots.whole(pool.value_micro) <= 0:
        reason = "empty"
    if reason:
        _reply(batch, command, pool, "refused", reason)
        return
    assert pool is not None
    winner = {"source": "rest", "user_id": command.player_id, "session_id": command.session_id}
    award = await _hit(batch, pool, winner, None, "")
    reply = _reply(batch, command, pool, "accepted", award=award)
    jackpot_batch.remember(batch, partition, key, {"content": content, "reply": _stored(reply)})


def rollback(batch: Batch, command: RollbackAward, pool: JackpotPool) -> None:
    compensated = pool.compensated if pool.compensated is not None else []
    if command.award_id in compensated:
        return
    if pool.status != "audit":
        log.error("jackpot %s: rollback of %s refused: not in audit mode", pool.jackpot_id, command.award_id)
        return
    pool.compensated = [*compensated, command.award_id]
    money = jackpot_batch.money_of(pool)
    money.add(command.amount * MICRO, pool.definition["cap"])
    jackpot_batch.set_money(pool, money)
    jackpot_batch.touch(batch, pool)
    batch.emit.send(jackpot_topic, pool.jackpot_id, JackpotAwardRolledBack(
        event_id=f"{command.award_id}.rolled_back", channel_id="", ts=batch.now, trace_id=command.trace_id,
        jackpot_id=pool.jackpot_id, award_id=command.award_id, amount=command.amount,
        value_micro=pool.value_micro, operator=command.operator, reason=command.reason))


def snapshot(batch: Batch, command: ReconcileJackpot, pool: JackpotPool) -> None:
    touched = jackpot_batch.touch(batch, pool)
    jackpot_batch.close_segment(batch, touched)      # the snapshot follows every contribution before it
    batch.emit.send(jackpot_topic, pool.jackpot_id, JackpotSnapshot(
        event_id=f"{pool.jackpot_id}.snapshot.{command.request_id}", channel_id="", ts=batch.now,
        jackpot_id=pool.jackpot_id, request_id=command.request_id, cycle=pool.cycle,
        pool_micro=jackpot_batch.money_of(pool).total_micro))


async def handle(record: JackpotCommand, event, batch: Batch) -> None:
    key = (event.message.key or b"").decode(errors="replace")
    partition = event.message.partition
    jackpot_batch.prune_keys(batch, partition)
    if key != record.jackpot_id:
        log.error("command %s keyed %r for jackpot %r: ignored", record.event_id, key, record.jackpot_id)
        return
    pool: JackpotPool | None = batch.staged.get(jackpot_pools, record.jackpot_id)
    if isinstance(record, ConfigureJackpot):
        await configure(batch, record, pool)
    elif isinstance(record, ContributeRest):
        await contribute_rest(batch, record, pool, partition)
    elif isinstance(record, AwardJackpot):
        await award_external(batch, record, pool, partition)
    elif pool is None:
        log.warning("command %s for unknown jackpot %s ignored", type(record).__name__, record.jackpot_id)
    elif isinstance(record, SetJackpotStatus):
        set_status(batch, record, pool)
    elif isinstance(record, ContributeBets):
        await contribute_bets(batch, record, pool)
    elif isinstance(record, RollbackAward):
        rollback(batch, record, pool)
    elif isinstance(record, ReconcileJackpot):
        snapshot(batch, record, pool)


async def finish_batch(batch: Batch) -> None:
    for touched in jackpot_batch.work(batch).values():
        jackpot_batch.close_segment(batch, touched)


async def after_commit(batch: Batch) -> None:
    await publish_views([t.pool for t in jackpot_batch.work(batch).values()])


@app.timer(interval=float(settings.jackpot_reconcile_interval_s))
async def hourly_reconciliation() -> None:
    """Ask every owned pool for a snapshot: the sink reconciles it against MySQL."""
    request_id = f"scheduled-{int(time.time())}"
    for pool in owned_pools():
        await jackpot_command_topic.send(key=pool.jackpot_id.encode(), value=encode(ReconcileJackpot(
            event_id=f"{pool.jackpot_id}.reconcile.{request_id}", channel_id="", ts=int(time.time() * 1000),
            jackpot_id=pool.jackpot_id, request_id=request_id)))


@app.agent(jackpot_command_topic)
async def jackpot_processor(stream):
    await run_batches(stream, "jackpot", handle, expected=JACKPOT_COMMAND_RECORDS, max_batch=500,
                      after_batch=finish_batch, after_commit=after_commit)
