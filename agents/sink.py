"""Sink: every domain event into MariaDB, the authoritative store for reporting.

Batched (one transaction per batch of up to 1000 events) and idempotent, so re-delivery after
a crash changes nothing: event_log and outbox rows are INSERT IGNORE on their unique ids,
bet rows move forward only (`WHERE status = 'placed'`), term rows only to a higher
state_version (optimistic lock). A cashout's bet update and its payout_outbox row are in the
same transaction. The tick and watermark events are not stored (they are replayable from
Kafka and would dwarf the rest).

A database error that is about the connection (restart, failover) retries the batch until
it succeeds, holding the offsets; any other error applies the batch event by event and sends
the events that still fail to game.dlq with the reason.

Jackpots: the pool's events of one jackpot are on one game.jackpot partition, in the order the
pool's single writer made them, and this sink writes them in that order; so when it reaches a
JackpotSnapshot, MySQL holds exactly the contributions, seeds and awards the pool had at that
point, and the reconciliation (seeds + contributions - awards + compensations = pool) is exact.
An award's winner row and its payout_outbox row are written in one transaction.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from sql.db import make_engine
from streams import jackpots, metrics
from streams.app import app, settings
from streams.codec import DecodeError, decode
from streams.emit import Emitter
from streams.events import (
    BET_TOPIC_EVENTS,
    PAYOUT_TOPIC_EVENTS,
    TERM_TOPIC_EVENTS,
    BetCancelled,
    BetCashedOut,
    BetPlaced,
    BetRefunded,
    BetRejected,
    BetVoided,
    BookMark,
    ChainPublished,
    ChannelConfigured,
    Message,
    PayoutRequested,
    TermAborted,
    TermClosed,
    TermCrashed,
    TermCreated,
    TermSettled,
    TermStateChanged,
    TermTick,
)
from streams.jackpot_events import (
    JACKPOT_TOPIC_EVENTS,
    JackpotAwarded,
    JackpotAwardRolledBack,
    JackpotConfigured,
    JackpotContributed,
    JackpotCycleStarted,
    JackpotHit,
    JackpotNearCap,
    JackpotReconciled,
    JackpotSnapshot,
)
from streams.processing import Batch, dead_letter
from streams.topics import BET, JACKPOT, PAYOUT, TERM, jackpot_topic

log = logging.getLogger(__name__)

SINK_EVENTS = TERM_TOPIC_EVENTS + BET_TOPIC_EVENTS + PAYOUT_TOPIC_EVENTS + JACKPOT_TOPIC_EVENTS
NOT_LOGGED = (TermTick, BookMark, JackpotReconciled)

bet_topic_name = settings.topic(BET)
sink_topics = app.topic(settings.topic(TERM), settings.topic(BET), settings.topic(PAYOUT), settings.topic(JACKPOT),
                        key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")

SQL = {
    "event_log": "INSERT IGNORE INTO event_log (event_id, type, topic, channel_id, term_id, ts, trace_id, payload)"
                 " VALUES (:event_id, :type, :topic, :channel_id, :term_id, :ts, :trace_id, :payload)",
    "channel": "INSERT INTO channel (channel_id, operator_group, config, config_version, created_at, updated_at)"
               " VALUES (:channel_id, :operator_group, :config, :config_version, :ts, :ts)"
               " ON DUPLICATE KEY UPDATE"
               " operator_group = IF(VALUES(config_version) > config_version, VALUES(operator_group), operator_group),"
               " config = IF(VALUES(config_version) > config_version, VALUES(config), config),"
               " updated_at = IF(VALUES(config_version) > config_version, VALUES(updated_at), updated_at),"
               " config_version = GREATEST(config_version, VALUES(config_version))",
    "chain": "INSERT IGNORE INTO fairness_chain (channel_id, chain_no, length, terminator, salt, published_at)"
             " VALUES (:channel_id, :chain_no, :length, :terminator, :salt, :ts)",
    "term_created": "INSERT IGNORE INTO crash_term (term_id, channel_id, seq, chain_no, chain_index, prev_hash,"
                    " state, state_version, created_at, bets_close_at, flying_at, config, updated_at)"
                    " VALUES (:term_id, :channel_id, :seq, :chain_no, :chain_index, :prev_hash, 'pre_start', 1,"
                    " :created_at, :bets_close_at, :flying_at, :config, :now)",
    "term_state": "UPDATE crash_term SET state = :state, state_version = :state_version,"
                  " bets_close_at = :bets_close_at, flying_at = :flying_at, updated_at = :now"
                  " WHERE term_id = :term_id AND state_version < :state_version",
    "term_crashed": "UPDATE crash_term SET state = 'crashed', state_version = :state_version, crash_at = :crash_at,"
                    " ended_at = :crash_at, crash_x100 = :crash_x100, revealed_hash = :revealed_hash,"
                    " hmac_digest = :hmac_digest, recovered = :recovered, flying_at = :flying_at, updated_at = :now"
                    " WHERE term_id = :term_id AND state_version < :state_version",
    "term_aborted": "UPDATE crash_term SET state = 'aborted', state_version = :state_version, aborted = 1,"
                    " abort_reason = :reason, ended_at = :aborted_at, crash_x100 = :crash_x100,"
                    " revealed_hash = :revealed_hash, hmac_digest = :hmac_digest, updated_at = :now"
                    " WHERE term_id = :term_id AND state_version < :state_version",
    "term_closed": "UPDATE crash_term SET state = 'closed', state_version = :state_version, closed_at = :closed_at,"
                   " updated_at = :now WHERE term_id = :term_id AND state_version < :state_version",
    "term_totals": "INSERT IGNORE INTO crash_term_totals (term_id, currency, bets, stakes, payouts, refunds,"
                   " house_result) VALUES (:term_id, :currency, :bets, :stakes, :payouts, :refunds, :house_result)",
    "bet_placed": "INSERT IGNORE INTO bet (channel_id, api_order_no, bet_id, term_id, user_id, currency, amount,"
                  " auto_cashout_x100, bet_type, status, debited, received_at, updated_at)"
                  " VALUES (:channel_id, :api_order_no, :bet_id, :term_id, :user_id, :currency, :amount,"
                  " :auto_cashout_x100, :bet_type, 'placed', :debited, :ts, :now)",
    "bet_rejected": "INSERT IGNORE INTO bet (channel_id, api_order_no, bet_id, term_id, user_id, currency, amount,"
                    " auto_cashout_x100, bet_type, status, reason, debited, received_at, updated_at)"
                    " VALUES (:channel_id, :api_order_no, NULL, :term_id, :user_id, :currency, :amount,"
                    " :auto_cashout_x100, :bet_type, 'rejected', :reason, :debited, :ts, :now)",
    "bet_cancelled": "UPDATE bet SET status = 'cancelled', updated_at = :now"
                     " WHERE bet_id = :bet_id AND status = 'placed'",
    "bet_cashed": "UPDATE bet SET status = 'cashed_out', cashout_x100 = :multiple_x100, payout = :payout,"
                  " cashout_mode = :mode, cashed_at = :cashed_at, updated_at = :now"
                  " WHERE bet_id = :bet_id AND status = 'placed'",
    "bet_voided": "UPDATE bet SET status = 'voided', updated_at = :now WHERE bet_id = :bet_id AND status = 'placed'",
    "bet_refunded": "UPDATE bet SET status = 'refunded', refund = :amount, updated_at = :now"
                    " WHERE bet_id = :bet_id AND status IN ('cancelled', 'voided')",
    "order_refunded": "UPDATE bet SET refund = :amount, updated_at = :now"
                      " WHERE channel_id = :channel_id AND api_order_no = :api_order_no AND status = 'rejected'",
    "bets_lost": "UPDATE bet SET status = 'lost', updated_at = :now WHERE term_id = :term_id AND status = 'placed'",
    "lost_history": "INSERT IGNORE INTO bet_status_history (event_id, bet_id, status, ts)"
                    " SELECT CONCAT(bet_id, '.lost'), bet_id, 'lost', :ts FROM bet"
                    " WHERE term_id = :term_id AND status = 'lost'",
    "history": "INSERT IGNORE INTO bet_status_history (event_id, bet_id, status, ts, detail)"
               " VALUES (:event_id, :bet_id, :status, :ts, :detail)",
    # Jackpots: each row once by its key (ON DUPLICATE KEY: only a duplicate is ignored).
    "jackpot": "INSERT INTO jackpot (jackpot_id, tier, currency, trigger_kind, channel_id, operator_group, definition,"
               " pending, status, version, created_at, updated_at)"
               " VALUES (:jackpot_id, :tier, :currency, :trigger_kind, :scope_channel, :scope_group, :definition,"
               " :pending, :status, :version, :ts, :ts)"
               " ON DUPLICATE KEY UPDATE"
               " definition = IF(VALUES(version) > version, VALUES(definition), definition),"
               " pending = IF(VALUES(version) > version, VALUES(pending), pending),"
               " status = IF(VALUES(version) > version, VALUES(status), status),"
               " updated_at = IF(VALUES(version) > version, VALUES(updated_at), updated_at),"
               " version = GREATEST(version, VALUES(version))",
    "jackpot_cycle": "INSERT INTO jackpot_cycle (jackpot_id, cycle, seed, start_micro, commitment, definition,"
                     " started_at) VALUES (:jackpot_id, :cycle, :seed, :start_micro, :commitment, :definition, :ts)"
                     " ON DUPLICATE KEY UPDATE jackpot_id = jackpot_id",
    "jackpot_contribution": "INSERT INTO jackpot_contributions (jackpot_id, contribution_key, source, game_id, user_id,"
                            " bet_id, term_id, cycle, amount_micro, currency, ts) VALUES (:jackpot_id, :key, :source,"
                            " :game_id, :user_id, :bet_id, :term_id, :cycle, :amount_micro, :currency, :ts)"
                            " ON DUPLICATE KEY UPDATE id = id",
    "jackpot_award": "INSERT INTO jackpot_award (award_id, jackpot_id, cycle, trigger_kind, amount, currency,"
                     " overflow_micro, hit_value, nonce, commitment, ranked, channel_id, term_id, bet_id, user_id, ts)"
                     " VALUES (:award_id, :jackpot_id, :cycle, :trigger, :amount, :currency, :overflow_micro,"
                     " :hit_value, :nonce, :commitment, :ranked, :channel_id, :term_id, :bet_id, :user_id, :ts)"
                     " ON DUPLICATE KEY UPDATE award_id = award_id",
    "jackpot_cycle_hit": "UPDATE jackpot_cycle SET award_id = :award_id, hit_value = :hit_value, nonce = :nonce,"
                         " ended_at = :ts WHERE jackpot_id = :jackpot_id AND cycle = :cycle AND award_id IS NULL",
    "jackpot_winner": "INSERT INTO jackpot_award_winner (award_id, rank_no, jackpot_id, user_id, bet_id, term_id,"
                      " channel_id, currency, bonus_amount, multiple_x100, order_no, ts) VALUES (:award_id, :rank,"
                      " :jackpot_id, :user_id, :bet_id, :term_id, :channel_id, :currency, :bonus_amount,"
                      " :multiple_x100, :order_no, :ts) ON DUPLICATE KEY UPDATE award_id = award_id",
    "jackpot_compensation": "INSERT INTO jackpot_compensation (award_id, jackpot_id, amount, operator, reason, state,"
                            " requested_at, applied_at) VALUES (:award_id, :jackpot_id, :amount, :operator, :reason,"
                            " 'applied', :ts, :ts) ON DUPLICATE KEY UPDATE state = 'applied',"
                            " applied_at = COALESCE(applied_at, VALUES(applied_at))",
    "jackpot_notice": "INSERT INTO jackpot_notice (notice_id, jackpot_id, payload, status, next_at, created_at,"
                      " updated_at) VALUES (:event_id, :jackpot_id, :payload, 'ready', :now, :now, :now)"
                      " ON DUPLICATE KEY UPDATE notice_id = notice_id",
    "outbox": "INSERT IGNORE INTO payout_outbox (order_no, kind, channel_id, term_id, bet_id, user_id, currency,"
              " amount, meta, status, next_at, created_at, updated_at)"
              " VALUES (:order_no, :kind, :channel_id, :term_id, :bet_id, :user_id, :currency, :amount, :meta,"
              " 'ready', :now, :now, :now)",
}

HISTORY_STATUS = {BetPlaced: "placed", BetCancelled: "cancelled", BetCashedOut: "cashed_out",
                  BetVoided: "voided", BetRefunded: "refunded"}


def _statements(record: Message, topic: str, now: int) -> list[tuple[str, dict[str, Any]]]:
    """The idempotent writes of one event, in the order they must run."""
    data = record.asdict()
    base = {**data, "now": now}
    out: list[tuple[str, dict[str, Any]]] = []
    if not isinstance(record, NOT_LOGGED):
        out.append(("event_log", {
            "event_id": record.event_id, "type": type(record).__name__, "topic": topic,
            "channel_id": record.channel_id, "term_id": record.term_id, "ts": record.ts,
            "trace_id": record.trace_id, "payload": json.dumps(data, separators=(",", ":"))}))
    if isinstance(record, ChannelConfigured):
        out.append(("channel", {**base, "operator_group": record.config.get("operator_group", ""),
                                "config": json.dumps(record.config)}))
    elif isinstance(record, ChainPublished):
        out.append(("chain", base))
    elif isinstance(record, TermCreated):
        out.append(("term_created", {**base, "config": json.dumps(record.config)}))
    elif isinstance(record, TermStateChanged):
        out.append(("term_state", base))
    elif isinstance(record, TermCrashed):
        out.append(("term_crashed", {**base, "recovered": int(record.recovered)}))
    elif isinstance(record, TermAborted):
        out.append(("term_aborted", base))
    elif isinstance(record, TermClosed):
        out.append(("term_closed", base))
        for currency, totals in record.totals.items():
            out.append(("term_totals", {"term_id": record.term_id, "currency": currency, **totals}))
    elif isinstance(record, BetPlaced):
        out.append(("bet_placed", {**base, "debited": int(record.debited)}))
    elif isinstance(record, BetRejected):
        out.append(("bet_rejected", {**base, "debited": int(record.debited)}))
    elif isinstance(record, BetCancelled):
        out.append(("bet_cancelled", base))
    elif isinstance(record, BetCashedOut):
        out.append(("bet_cashed", base))
        out.append(("outbox", {**base, "kind": "cashout", "amount": record.payout,
                               "meta": json.dumps({"multiple_x100": record.multiple_x100, "mode": record.mode,
                                                   "stake": record.amount})}))
    elif isinstance(record, BetVoided):
        out.append(("bet_voided", base))
    elif isinstance(record, BetRefunded):
        out.append(("order_refunded" if record.cause == "rejected" else "bet_refunded", base))
    elif isinstance(record, TermSettled):
        out.append(("bets_lost", base))
        out.append(("lost_history", base))
    elif isinstance(record, PayoutRequested):
        out.append(("outbox", {**base, "meta": json.dumps(record.meta) if record.meta is not None else None}))
    elif isinstance(record, JACKPOT_TOPIC_EVENTS):
        out.extend(_jackpot_statements(record, base))
    status = HISTORY_STATUS.get(type(record))
    if status is not None:
        detail = None
        if isinstance(record, BetCashedOut):
            detail = json.dumps({"multiple_x100": record.multiple_x100, "payout": record.payout, "mode": record.mode})
        out.append(("history", {"event_id": record.event_id, "bet_id": record.bet_id, "status": status,
                                "ts": record.ts, "detail": detail}))
    return out


def _jackpot_statements(record: Message, base: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    if isinstance(record, JackpotConfigured):
        d = record.definition
        return [("jackpot", {**base, "tier": d["tier"], "currency": d["currency"], "trigger_kind": d["trigger"],
                             "scope_channel": d["channel_id"], "scope_group": d["operator_group"],
                             "definition": json.dumps(d),
                             "pending": json.dumps(record.pending) if record.pending is not None else None})]
    if isinstance(record, JackpotCycleStarted):
        return [("jackpot_cycle", {**base, "definition": json.dumps(record.definition)})]
    if isinstance(record, JackpotContributed):
        return [("jackpot_contribution", {"jackpot_id": record.jackpot_id, "cycle": record.cycle,
                                          "currency": record.currency, "bet_id": item["bet_id"] or None,
                                          "term_id": item["term_id"] or None,
                                          **{k: item[k] for k in ("key", "source", "game_id", "user_id",
                                                                  "amount_micro", "ts")}})
                for item in record.items]
    if isinstance(record, JackpotHit):
        params = {**base, "ranked": int(record.ranked)}
        return [("jackpot_award", params), ("jackpot_cycle_hit", params)]
    if isinstance(record, JackpotAwarded):
        out = [("jackpot_winner", base)]
        if record.bonus_amount > 0:
            out.append(("outbox", {**base, "kind": "bonus", "amount": record.bonus_amount,
                                   "bet_id": record.bet_id or None,
                                   "meta": json.dumps({"jackpot_id": record.jackpot_id, "award_id": record.award_id,
                                                       "rank": record.rank})}))
        return out
    if isinstance(record, JackpotAwardRolledBack):
        return [("jackpot_compensation", base)]
    if isinstance(record, JackpotNearCap):
        return [("jackpot_notice", {**base, "payload": json.dumps({**record.asdict(), "notice_id": record.event_id})})]
    return []


async def _apply(conn, statements: list[tuple[str, dict[str, Any]]]) -> None:
    """Run statements in order, grouping runs of the same statement into one executemany."""
    i = 0
    while i < len(statements):
        name = statements[i][0]
        j = i
        while j < len(statements) and statements[j][0] == name:
            j += 1
        params = [p for _, p in statements[i:j]]
        await conn.execute(text(SQL[name]), params if len(params) > 1 else params[0])
        i = j


# Statements that create rows: they run first, so that a row exists before an update of the
# same batch touches it; the rest run after, in event order (statuses only move forward, so
# this is equivalent to applying the events one by one).
ROW_CREATING = frozenset({"event_log", "channel", "chain", "term_created", "term_totals", "bet_placed",
                          "bet_rejected", "outbox", "history", "jackpot", "jackpot_cycle", "jackpot_contribution",
                          "jackpot_award", "jackpot_winner", "jackpot_compensation", "jackpot_notice"})


def _ordered(items: list[tuple[Message, str]], now: int) -> list[tuple[str, dict[str, Any]]]:
    inserts, updates = [], []
    for record, topic in items:
        for name, params in _statements(record, topic, now):
            (inserts if name in ROW_CREATING else updates).append((name, params))
    return inserts + updates


TRANSIENT = (OperationalError, InterfaceError)


async def write(engine, items: list[tuple[Message, str]]) -> list[tuple[int, str]]:
    """Write a batch; returns (index, error) of events that cannot be written at all."""
    delay = 0.2
    while True:
        try:
            async with engine.begin() as conn:
                await _apply(conn, _ordered(items, int(time.time() * 1000)))
            return []
        except TRANSIENT as error:
            metrics.SINK_RETRIES.inc()
            log.warning("sink: database unavailable (%s); retrying in %.1fs", error.__class__.__name__, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
        except DBAPIError as error:
            log.error("sink: batch refused by the database (%s); writing event by event", error)
            return await _write_one_by_one(engine, items)


async def _write_one_by_one(engine, items: list[tuple[Message, str]]) -> list[tuple[int, str]]:
    failed: list[tuple[int, str]] = []
    for index, item in enumerate(items):
        while True:
            try:
                async with engine.begin() as conn:
                    await _apply(conn, _ordered([item], int(time.time() * 1000)))
                break
            except TRANSIENT:
                await asyncio.sleep(1.0)
            except DBAPIError as error:
                failed.append((index, str(error.orig if error.orig is not None else error)[:500]))
                break
    return failed


_SUMS = text(
    "SELECT (SELECT COALESCE(SUM(seed), 0) FROM jackpot_cycle WHERE jackpot_id = :j) AS seeds,"
    " (SELECT COALESCE(SUM(amount_micro), 0) FROM jackpot_contributions WHERE jackpot_id = :j) AS contributions,"
    " (SELECT COALESCE(SUM(amount), 0) FROM jackpot_award WHERE jackpot_id = :j) AS awards,"
    " (SELECT COALESCE(SUM(amount), 0) FROM jackpot_compensation WHERE jackpot_id = :j AND state = 'applied')"
    " AS compensations")
_RECONCILED = text(
    "INSERT INTO jackpot_reconciliation (jackpot_id, request_id, seeds, contributions_micro, awards, compensations,"
    " expected_micro, pool_micro, difference_micro, ts) VALUES (:j, :r, :seeds, :contributions, :awards,"
    " :compensations, :expected, :pool, :difference, :ts) ON DUPLICATE KEY UPDATE id = id")


async def reconcile(engine, snapshot: JackpotSnapshot, batch: Batch) -> None:
    """MySQL's sums for a jackpot against the live pool of the snapshot (everything before the
    snapshot on its partition is written by now, nothing after it yet)."""
    delay = 0.2
    while True:
        try:
            async with engine.begin() as conn:
                row = (await conn.execute(_SUMS, {"j": snapshot.jackpot_id})).one()
                sums = {name: int(getattr(row, name)) for name in ("seeds", "contributions", "awards",
                                                                   "compensations")}
                expected = jackpots.expected_pool_micro(sums["seeds"], sums["contributions"], sums["awards"],
                                                        sums["compensations"])
                difference = snapshot.pool_micro - expected
                await conn.execute(_RECONCILED, {"j": snapshot.jackpot_id, "r": snapshot.request_id, **sums,
                                                 "expected": expected, "pool": snapshot.pool_micro,
                                                 "difference": difference, "ts": snapshot.ts})
            break
        except TRANSIENT:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
    metrics.JACKPOT_RECONCILED_BPS.labels(jackpot_id=snapshot.jackpot_id).set(
        jackpots.difference_bps(difference, expected))
    metrics.JACKPOT_RECONCILED_MINOR.labels(jackpot_id=snapshot.jackpot_id).set(difference / jackpots.MICRO)
    if difference:
        log.error("jackpot %s does not reconcile: pool %s, MySQL says %s (difference %s micro units)",
                  snapshot.jackpot_id, snapshot.pool_micro, expected, difference)
    batch.emit.send(jackpot_topic, snapshot.jackpot_id, JackpotReconciled(
        event_id=f"{snapshot.jackpot_id}.reconciled.{snapshot.request_id}", channel_id="", ts=snapshot.ts,
        jackpot_id=snapshot.jackpot_id,
        request_id=snapshot.request_id, expected_micro=expected, pool_micro=snapshot.pool_micro,
        difference_micro=difference))


@app.agent(sink_topics)
async def sink(stream):
    engine = make_engine(settings.db_url, pool_size=4)
    async for events in stream.take_events(1000, within=0.1):
        batch = Batch(emit=Emitter())
        items: list[tuple[Message, str]] = []
        item_events = []
        for event in events:
            try:
                record = decode(event.value, SINK_EVENTS)
            except DecodeError as error:
                # game.bet has its own consumer that dead-letters it (the Cashout Service).
                if event.message.topic != bet_topic_name:
                    dead_letter(batch, event, str(error), "sink")
                continue
            items.append((record, event.message.topic))
            item_events.append(event)
        if items:
            for index, error in await write(engine, items):
                dead_letter(batch, item_events[index], f"database refused the event: {error}", "sink")
            for record, _ in items:
                metrics.SINK_ROWS.labels(type=type(record).__name__).inc()
            for record, _ in items:
                if isinstance(record, JackpotSnapshot):
                    await reconcile(engine, record, batch)
        await batch.emit.flush()
