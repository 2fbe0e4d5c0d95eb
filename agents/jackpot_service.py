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
Redis (`jackpot:<id>`, what GET /jackpot/{id} serves).
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiokafka.partitioner import DefaultPartitioner

from streams import jackpots, metrics
from streams.app import app, settings
from streams.cache import redis_client
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
    JackpotContributed,
    JackpotContributionRefused,
    JackpotCycleStarted,
    JackpotHit,
    JackpotNearCap,
    JackpotSnapshot,
    ReconcileJackpot,
    RollbackAward,
    SetJackpotStatus,
)
from streams.jackpots import MICRO, PoolMoney
from streams.processing import Batch, run_batches
from streams.topics import (
    JACKPOT_COMMAND,
    command_topic,
    jackpot_command_topic,
    jackpot_topic,
    payout_topic,
    reply_topic,
)
from tables import JackpotPool, jackpot_keys, jackpot_pools
from tables.jackpot_secrets import jackpot_secrets

log = logging.getLogger(__name__)

__all__ = ["jackpot_processor", "award_id_of", "pool_view"]


def award_id_of(jackpot_id: str, cycle: int) -> str:
    """One hit ends a cycle: the award of a cycle has a deterministic id."""
    return f"{jackpot_id}.{cycle}"


@dataclass
class Segment:
    """The contributions of one batch to one cycle of one pool."""
    cycle: int
    items: list[dict[str, Any]] = field(default_factory=list)
    total_micro: int = 0


@dataclass
class Touched:
    pool: JackpotPool
    segment: Segment | None = None
    notices: list[JackpotNearCap] = field(default_factory=list)


def _work(batch: Batch) -> dict[str, Touched]:
    return batch.work.setdefault("pools", {})


# ---------------------------------------------------------------- idempotency keys

# partition -> [(ts, key)] in insertion order, to prune `jackpot_keys`; None = rebuild.
_key_log: dict[int, deque[tuple[int, str]]] | None = None


def _forget_key_log(*args, **kwargs) -> None:
    global _key_log
    _key_log = None


app.on_partitions_assigned.connect(_forget_key_log)


def _key_log_of(partition: int) -> deque[tuple[int, str]]:
    global _key_log
    if _key_log is None:
        _key_log = {}
        for key, entry in sorted(jackpot_keys.items(), key=lambda kv: kv[1]["ts"]):
            _key_log.setdefault(entry["p"], deque()).append((entry["ts"], key))
    return _key_log.setdefault(partition, deque())


def _seen(batch: Batch, key: str) -> dict[str, Any] | None:
    return batch.staged.get(jackpot_keys, key)


def _remember(batch: Batch, partition: int, key: str, entry: dict[str, Any]) -> None:
    entry = {**entry, "ts": batch.now, "p": partition}
    batch.staged.set(jackpot_keys, key, entry)
    _key_log_of(partition).append((batch.now, key))


def _prune_keys(batch: Batch, partition: int) -> None:
    """Forget keys older than the idempotency window (under an event of their partition)."""
    horizon = batch.now - settings.jackpot_idempotency_s * 1000
    keys = _key_log_of(partition)
    while keys and keys[0][0] < horizon:
        batch.staged.delete(jackpot_keys, keys.popleft()[1])


def _digest(*parts: object) -> str:
    return hashlib.sha256("\x1f".join(map(str, parts)).encode()).hexdigest()[:32]


# ---------------------------------------------------------------- pools in a batch

def _touch(batch: Batch, pool: JackpotPool) -> Touched:
    touched = _work(batch).get(pool.jackpot_id)
    if touched is None:
        touched = _work(batch)[pool.jackpot_id] = Touched(pool)
    pool.updated_at = batch.now
    batch.staged.set(jackpot_pools, pool.jackpot_id, pool)
    return touched


def _money(pool: JackpotPool) -> PoolMoney:
    return PoolMoney(pool.value_micro, pool.reserve_micro)


def _set_money(pool: JackpotPool, money: PoolMoney) -> None:
    pool.value_micro, pool.reserve_micro = money.value_micro, money.reserve_micro


def _close_segment(batch: Batch, touched: Touched) -> None:
    segment, pool = touched.segment, touched.pool
    if segment is not None and segment.items:
        first = _digest(segment.items[0]["key"])[:16]      # ids fit event_log's 96 characters
        batch.emit.send(jackpot_topic, pool.jackpot_id, JackpotContributed(
            event_id=f"{pool.jackpot_id}.{segment.cycle}.c.{first}", channel_id="", ts=batch.now,
            jackpot_id=pool.jackpot_id, cycle=segment.cycle, items=segment.items, total_micro=segment.total_micro,
            value_micro=pool.value_micro, currency=pool.definition["currency"]))
    touched.segment = None
    for notice in touched.notices:
        batch.emit.send(jackpot_topic, pool.jackpot_id, notice)
    touched.notices.clear()


def _add(batch: Batch, touched: Touched, entry: dict[str, Any]) -> None:
    """Add one contribution (`entry`, with its amount_micro) to the pool and to this batch's
    segment of the pool's cycle."""
    pool = touched.pool
    segment = touched.segment
    if segment is None or segment.cycle != pool.cycle:
        _close_segment(batch, touched)
        segment = touched.segment = Segment(pool.cycle)
    money = _money(pool)
    money.add(entry["amount_micro"], pool.definition["cap"])
    _set_money(pool, money)
    segment.items.append(entry)
    segment.total_micro += entry["amount_micro"]
    pool.contributions += 1
    _check_near_cap(batch, touched, pool.definition["currency"])


async def _hit_if_reached(batch: Batch, pool: JackpotPool, winner: dict[str, Any]) -> dict[str, Any] | None:
    """After a contribution: the award it triggered ({award_id, amount, cycle}), if any.
    At most one hit per contribution: a cycle that starts at or above its hit value (a large
    overflow) hits on its next contribution."""
    if pool.definition["trigger"] != "must_hit_by":
        return None
    hit_value, nonce = await jackpot_secrets().get(pool.jackpot_id, pool.cycle)    # kept in memory
    if not jackpots.reached(_money(pool), hit_value):
        return None
    return await _hit(batch, pool, winner, hit_value, nonce)


def _counted(pool: JackpotPool, source: str, game_id: str, count: int, amount_micro: int) -> None:
    metrics.child(metrics.JACKPOT_CONTRIBUTIONS, pool.jackpot_id, source).inc(count)
    metrics.child(metrics.JACKPOT_CONTRIBUTED, pool.jackpot_id, game_id).inc(amount_micro / MICRO)


def _check_near_cap(batch: Batch, touched: Touched, currency: str) -> None:
    pool = touched.pool
    definition = pool.definition
    if pool.near_cap_sent or not jackpots.near_cap(_money(pool), definition["cap"], definition["near_cap_bps"]):
        return
    pool.near_cap_sent = True
    touched.notices.append(JackpotNearCap(
        event_id=f"{pool.jackpot_id}.{pool.cycle}.near_cap", channel_id="", ts=batch.now, jackpot_id=pool.jackpot_id,
        cycle=pool.cycle, value=jackpots.whole(pool.value_micro), cap=definition["cap"],
        share_bps=definition["near_cap_bps"], currency=currency))


async def _hit(batch: Batch, pool: JackpotPool, winner: dict[str, Any], hit_value: int | None,
               nonce: str) -> dict[str, Any]:
    """Lock the value in and reset the pool, in this one step; then award or hand to the term."""
    touched = _touch(batch, pool)
    definition = pool.definition
    trigger = definition["trigger"]
    award_amount, overflow = jackpots.lock_in(_money(pool), trigger, hit_value)
    award_id = award_id_of(pool.jackpot_id, pool.cycle)
    ranked = bool(definition.get("rank_split_bps")) and winner.get("source") == "bet"
    currency = definition["currency"]
    ended_cycle = pool.cycle
    pool.value_micro -= award_amount * MICRO           # what stays is the overflow
    _close_segment(batch, touched)
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
    _set_money(pool, money)
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
    touched = _touch(batch, pool)
    _check_near_cap(batch, touched, definition["currency"])


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
        _touch(batch, pool)
        await _start_cycle(batch, pool, 1)
    elif command.create:
        log.info("jackpot %s exists: creation ignored", command.jackpot_id)
        return
    else:
        pool.pending = definition
        pool.version += 1
        _touch(batch, pool)
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
    _touch(batch, pool)
    _configured(batch, pool, command.operator)


async def contribute_bets(batch: Batch, command: ContributeBets, pool: JackpotPool) -> None:
    """A channel's accepted bets of one batch. The pool is staged and the counters counted once
    per command, not per bet: this loop runs for every accepted bet. A hit starts a new cycle,
    perhaps with a new definition, which the command's later bets follow."""
    watermarks = pool.watermarks if pool.watermarks is not None else {}
    pool.watermarks = watermarks
    touched: Touched | None = None
    latency = metrics.child(metrics.JACKPOT_LATENCY, "bet")
    count = total_micro = 0
    for item in command.items:
        partition = str(item["p"])
        if item["o"] < watermarks.get(partition, 0):
            continue                                  # delivered again: applied already
        watermarks[partition] = item["o"] + 1
        if touched is None:
            touched = _touch(batch, pool)
        definition = pool.definition
        reason = "paused" if pool.status != "active" else (
            "currency" if item["currency"] != definition["currency"] else "")
        if reason:
            metrics.JACKPOT_REFUSED.labels(jackpot_id=pool.jackpot_id, reason=reason).inc()
            continue
        amount_micro = jackpots.contribution_micro(item["amount"], definition["rate_bps"])
        _add(batch, touched, {
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
    content = _digest(command.game_id, command.amount, command.currency, command.player_id)
    seen = _seen(batch, key)
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
    _add(batch, _touch(batch, pool), {
        "key": f"rest:{command.contribution_id}", "source": "rest", "game_id": command.game_id,
        "user_id": command.player_id, "bet_id": "", "term_id": "", "ts": command.ts, "amount_micro": amount_micro})
    _counted(pool, "rest", command.game_id, 1, amount_micro)
    metrics.child(metrics.JACKPOT_LATENCY, "rest").observe(max(0, batch.now - command.ts) / 1000)
    award = await _hit_if_reached(batch, pool, {"source": "rest", "user_id": command.player_id,
                                                "session_id": command.session_id})
    reply = _reply(batch, command, pool, "accepted", award=award)
    _remember(batch, partition, key, {"content": content, "reply": _stored(reply)})


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
    content = _digest(command.player_id, command.session_id)
    seen = _seen(batch, key)
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
    _remember(batch, partition, key, {"content": content, "reply": _stored(reply)})


def rollback(batch: Batch, command: RollbackAward, pool: JackpotPool) -> None:
    compensated = pool.compensated if pool.compensated is not None else []
    if command.award_id in compensated:
        return
    if pool.status != "audit":
        log.error("jackpot %s: rollback of %s refused: not in audit mode", pool.jackpot_id, command.award_id)
        return
    pool.compensated = [*compensated, command.award_id]
    money = _money(pool)
    money.add(command.amount * MICRO, pool.definition["cap"])
    _set_money(pool, money)
    _touch(batch, pool)
    batch.emit.send(jackpot_topic, pool.jackpot_id, JackpotAwardRolledBack(
        event_id=f"{command.award_id}.rolled_back", channel_id="", ts=batch.now, trace_id=command.trace_id,
        jackpot_id=pool.jackpot_id, award_id=command.award_id, amount=command.amount,
        value_micro=pool.value_micro, operator=command.operator, reason=command.reason))


def snapshot(batch: Batch, command: ReconcileJackpot, pool: JackpotPool) -> None:
    _close_segment(batch, _touch(batch, pool))      # the snapshot follows every contribution before it
    batch.emit.send(jackpot_topic, pool.jackpot_id, JackpotSnapshot(
        event_id=f"{pool.jackpot_id}.snapshot.{command.request_id}", channel_id="", ts=batch.now,
        jackpot_id=pool.jackpot_id, request_id=command.request_id, cycle=pool.cycle,
        pool_micro=_money(pool).total_micro))


async def handle(record: JackpotCommand, event, batch: Batch) -> None:
    key = (event.message.key or b"").decode(errors="replace")
    partition = event.message.partition
    _prune_keys(batch, partition)
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
    for touched in _work(batch).values():
        _close_segment(batch, touched)


# ---------------------------------------------------------------- views

def pool_view(pool: JackpotPool) -> dict[str, Any]:
    """What GET /jackpot/{id}, the push gateway and the ticker show: never above the true pool."""
    definition = pool.definition
    return {
        "jackpot_id": pool.jackpot_id, "name": definition["name"], "tier": definition["tier"],
        "currency": definition["currency"], "status": pool.status, "trigger": definition["trigger"],
        "channel_id": definition["channel_id"], "operator_group": definition["operator_group"],
        "seed": definition["seed"], "cap": definition["cap"], "rate_bps": definition["rate_bps"],
        "near_cap_bps": definition["near_cap_bps"], "rank_split_bps": definition["rank_split_bps"],
        "value": jackpots.whole(pool.value_micro), "cycle": pool.cycle, "commitment": pool.commitment,
        "near_cap": pool.near_cap_sent, "pending": pool.pending, "last_hit": pool.last_hit,
        "version": pool.version, "updated_at": pool.updated_at,
    }


_redis = None


async def publish_views(pools: list[JackpotPool]) -> None:
    """Write the pools' views to Redis; a Redis outage only delays the views (logged)."""
    global _redis
    if not pools:
        return
    for pool in pools:
        metrics.JACKPOT_VALUE.labels(jackpot_id=pool.jackpot_id, currency=pool.definition["currency"]).set(
            jackpots.whole(pool.value_micro))
    try:
        if _redis is None:
            _redis = redis_client(settings.redis_url, max_connections=4)
        async with _redis.pipeline(transaction=False) as pipe:
            for pool in pools:
                pipe.set(jackpots.view_key(pool.jackpot_id), json.dumps(pool_view(pool), separators=(",", ":")))
            await pipe.execute()
    except Exception as error:       # a view, not the state: the next batch or refresh writes it again
        metrics.JACKPOT_VIEW_ERRORS.inc()
        log.warning("jackpot views not written to Redis: %s", error)


async def after_commit(batch: Batch) -> None:
    await publish_views([t.pool for t in _work(batch).values()])


def owned_pools() -> list[JackpotPool]:
    topic = settings.topic(JACKPOT_COMMAND)
    owned = {tp.partition for tp in app.assignor.assigned_actives() if tp.topic == topic}
    return [pool for _, pool in jackpot_pools.items() if _partition_of(pool.jackpot_id) in owned]


def _partition_of(jackpot_id: str) -> int:
    partitions = list(range(settings.partitions))
    return DefaultPartitioner()(jackpot_id.encode(), partitions, partitions)


def _clear_value_gauges(*args, **kwargs) -> None:
    metrics.JACKPOT_VALUE.clear()


app.on_partitions_revoked.connect(_clear_value_gauges)


@app.timer(interval=10.0)
async def refresh_views() -> None:
    """Every owned pool's view again (heals a Redis restart; shows paused pools' values)."""
    await publish_views(owned_pools())


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
