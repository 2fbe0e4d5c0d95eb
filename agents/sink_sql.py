"""The sink's writes: every domain event as idempotent rows, grouped per batch into one
statement per table (DESIGN section 14: a batch is one multi-row statement per table, not one
statement per event).

Idempotence is the rows' own: rows are inserted once on their unique keys (a
duplicate is kept as it is, any other refusal is an error),
bet rows move forward only (`WHERE status = 'placed'`), term rows only to a higher
state_version. Order inside a batch:

1. every row-creating statement, one multi-row INSERT per table (the driver's executemany turns
   `INSERT ... VALUES (...)` into multi-row statements only when the parenthesis holds nothing
   but parameters: a literal there, a 'placed' or a NULL, and it sends one statement per row);
2. the term updates in state_version order (a closed term's update must not run before its
   crash's, which it would refuse), one by one: a few per term;
3. the bet updates in the order of a bet's life (cancelled, cashed out, voided, refunded, then
   the term's remaining bets lost), each one statement for the whole batch. Statuses only move
   forward and a term's cashouts precede its settlement on its partition, so this is the same
   as applying the events one by one.
"""
from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from streams.events import (
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
)

__all__ = ["SQL", "NOT_LOGGED", "statements", "plan"]

# A row already there is kept as it is, and only that is ignored: unlike INSERT IGNORE, which
# also turns a value too long for its column, a NULL in a NOT NULL column or a bad date into
# a warning and writes a mangled row, this lets the database refuse bad data loudly.
# (The duplicate's key column is set to itself: a no-op on the existing row.)
def keep_first(column: str) -> str:
    return f" ON DUPLICATE KEY UPDATE {column} = {column}"

# Replayable from Kafka and far more numerous than the rest: not stored.
NOT_LOGGED = (TermTick, BookMark, JackpotReconciled)

SQL = {
    "event_log": "INSERT INTO event_log (event_id, type, topic, channel_id, term_id, ts, trace_id, payload)"
                 " VALUES (:event_id, :type, :topic, :channel_id, :term_id, :ts, :trace_id, :payload)"
                 + keep_first("event_id"),
    "channel": "INSERT INTO channel (channel_id, operator_group, config, config_version, created_at, updated_at)"
               " VALUES (:channel_id, :operator_group, :config, :config_version, :ts, :ts)"
               " ON DUPLICATE KEY UPDATE"
               " operator_group = IF(VALUES(config_version) > config_version, VALUES(operator_group), operator_group),"
               " config = IF(VALUES(config_version) > config_version, VALUES(config), config),"
               " updated_at = IF(VALUES(config_version) > config_version, VALUES(updated_at), updated_at),"
               " config_version = GREATEST(config_version, VALUES(config_version))",
    "chain": "INSERT INTO fairness_chain (channel_id, chain_no, length, terminator, salt, published_at)"
             " VALUES (:channel_id, :chain_no, :length, :terminator, :salt, :ts)" + keep_first("channel_id"),
    "term_created": "INSERT INTO crash_term (term_id, channel_id, seq, chain_no, chain_index, prev_hash,"
                    " state, state_version, created_at, bets_close_at, flying_at, config, updated_at)"
                    " VALUES (:term_id, :channel_id, :seq, :chain_no, :chain_index, :prev_hash, :state, :state_version,"
                    " :created_at, :bets_close_at, :flying_at, :config, :now)" + keep_first("term_id"),
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
    "term_totals": "INSERT INTO crash_term_totals (term_id, currency, bets, stakes, payouts, refunds,"
                   " house_result) VALUES (:term_id, :currency, :bets, :stakes, :payouts, :refunds, :house_result)"
                   + keep_first("term_id"),
    "bet_placed": "INSERT INTO bet (channel_id, api_order_no, bet_id, term_id, user_id, currency, amount,"
                  " auto_cashout_x100, bet_type, status, debited, received_at, updated_at)"
                  " VALUES (:channel_id, :api_order_no, :bet_id, :term_id, :user_id, :currency, :amount,"
                  " :auto_cashout_x100, :bet_type, :status, :debited, :ts, :now)" + keep_first("channel_id"),
    "bet_rejected": "INSERT INTO bet (channel_id, api_order_no, bet_id, term_id, user_id, currency, amount,"
                    " auto_cashout_x100, bet_type, status, reason, debited, received_at, updated_at)"
                    " VALUES (:channel_id, :api_order_no, :bet_id, :term_id, :user_id, :currency, :amount,"
                    " :auto_cashout_x100, :bet_type, :status, :reason, :debited, :ts, :now)"
                    + keep_first("channel_id"),
    "history": "INSERT INTO bet_status_history (event_id, bet_id, status, ts, detail)"
               " VALUES (:event_id, :bet_id, :status, :ts, :detail)" + keep_first("event_id"),
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
                            " :state, :ts, :ts) ON DUPLICATE KEY UPDATE state = VALUES(state),"
                            " applied_at = COALESCE(applied_at, VALUES(applied_at))",
    "jackpot_notice": "INSERT INTO jackpot_notice (notice_id, jackpot_id, payload, status, next_at, created_at,"
                      " updated_at) VALUES (:event_id, :jackpot_id, :payload, :status, :now, :now, :now)"
                      " ON DUPLICATE KEY UPDATE notice_id = notice_id",
    "outbox": "INSERT INTO payout_outbox (order_no, kind, channel_id, term_id, bet_id, user_id, currency,"
              " amount, meta, status, next_at, created_at, updated_at)"
              " VALUES (:order_no, :kind, :channel_id, :term_id, :bet_id, :user_id, :currency, :amount, :meta,"
              " :status, :now, :now, :now)" + keep_first("order_no"),
}

# The bet updates that carry values per row, as one UPDATE joined to the batch's rows. The
# derived table is built as `SELECT :a0 AS bet_id, ... UNION ALL SELECT :a1, ...`.
JOINED_UPDATES = {
    "bet_cashed": (("bet_id", "multiple_x100", "payout", "mode", "cashed_at"),
                   "UPDATE bet b JOIN ({rows}) v ON b.bet_id = v.bet_id SET b.status = 'cashed_out',"
                   " b.cashout_x100 = v.multiple_x100, b.payout = v.payout, b.cashout_mode = v.mode,"
                   " b.cashed_at = v.cashed_at, b.updated_at = :now WHERE b.status = 'placed'"),
    "bet_refunded": (("bet_id", "amount"),
                     "UPDATE bet b JOIN ({rows}) v ON b.bet_id = v.bet_id SET b.status = 'refunded',"
                     " b.refund = v.amount, b.updated_at = :now WHERE b.status IN ('cancelled', 'voided')"),
    "order_refunded": (("channel_id", "api_order_no", "amount"),
                       "UPDATE bet b JOIN ({rows}) v ON b.channel_id = v.channel_id AND b.api_order_no = v.api_order_no"
                       " SET b.refund = v.amount, b.updated_at = :now WHERE b.status = 'rejected'"),
    "lost_history": (("term_id", "ts"),
                     "INSERT INTO bet_status_history (event_id, bet_id, status, ts)"
                     " SELECT CONCAT(b.bet_id, '.lost'), b.bet_id, 'lost', v.ts FROM bet b JOIN ({rows}) v"
                     " ON b.term_id = v.term_id WHERE b.status = 'lost'"
                     " ON DUPLICATE KEY UPDATE bet_status_history.event_id = bet_status_history.event_id"),
}
# The bet updates with one value for every row: `WHERE <key> IN (...)`.
LISTED_UPDATES = {
    "bet_cancelled": ("bet_id", "UPDATE bet SET status = 'cancelled', updated_at = :now"
                                " WHERE status = 'placed' AND bet_id IN ({keys})"),
    "bet_voided": ("bet_id", "UPDATE bet SET status = 'voided', updated_at = :now"
                             " WHERE status = 'placed' AND bet_id IN ({keys})"),
    "bets_lost": ("term_id", "UPDATE bet SET status = 'lost', updated_at = :now"
                             " WHERE status = 'placed' AND term_id IN ({keys})"),
}
BET_UPDATE_ORDER = ("bet_cancelled", "bet_cashed", "bet_voided", "bet_refunded", "order_refunded", "bets_lost",
                    "lost_history")
TERM_UPDATES = ("term_state", "term_crashed", "term_aborted", "term_closed", "jackpot_cycle_hit")

HISTORY_STATUS = {BetPlaced: "placed", BetCancelled: "cancelled", BetCashedOut: "cashed_out",
                  BetVoided: "voided", BetRefunded: "refunded"}


def _outbox(params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """A payout order's row: ready for the payout adapter."""
    return "outbox", {**params, "status": "ready"}


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def statements(record: Message, topic: str, raw: bytes, now: int) -> list[tuple[str, dict[str, Any]]]:
    """The idempotent writes of one event. `raw` is the message as it came: the event log stores
    it as it is (no second encoding)."""
    data = record.asdict()
    base = {**data, "now": now}
    out: list[tuple[str, dict[str, Any]]] = []
    if not isinstance(record, NOT_LOGGED):
        out.append(("event_log", {
            "event_id": record.event_id, "type": type(record).__name__, "topic": topic,
            "channel_id": record.channel_id, "term_id": record.term_id, "ts": record.ts,
            "trace_id": record.trace_id, "payload": raw.decode()}))
    if isinstance(record, ChannelConfigured):
        out.append(("channel", {**base, "operator_group": record.config.get("operator_group", ""),
                                "config": _dumps(record.config)}))
    elif isinstance(record, ChainPublished):
        out.append(("chain", base))
    elif isinstance(record, TermCreated):
        out.append(("term_created", {**base, "config": _dumps(record.config)}))
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
        out.append(("bet_placed", {**base, "status": "placed", "debited": int(record.debited)}))
    elif isinstance(record, BetRejected):
        out.append(("bet_rejected", {**base, "bet_id": None, "status": "rejected", "debited": int(record.debited)}))
    elif isinstance(record, BetCancelled):
        out.append(("bet_cancelled", base))
    elif isinstance(record, BetCashedOut):
        out.append(("bet_cashed", base))
        out.append(_outbox({**base, "kind": "cashout", "amount": record.payout,
                            "meta": _dumps({"multiple_x100": record.multiple_x100, "mode": record.mode,
                                            "stake": record.amount})}))
    elif isinstance(record, BetVoided):
        out.append(("bet_voided", base))
    elif isinstance(record, BetRefunded):
        out.append(("order_refunded" if record.cause == "rejected" else "bet_refunded", base))
    elif isinstance(record, TermSettled):
        out.append(("bets_lost", base))
        out.append(("lost_history", base))
    elif isinstance(record, PayoutRequested):
        out.append(_outbox({**base, "meta": _dumps(record.meta) if record.meta is not None else None}))
    elif isinstance(record, JACKPOT_TOPIC_EVENTS):
        out.extend(_jackpot_statements(record, base))
    status = HISTORY_STATUS.get(type(record))
    if status is not None:
        detail = None
        if isinstance(record, BetCashedOut):
            detail = _dumps({"multiple_x100": record.multiple_x100, "payout": record.payout, "mode": record.mode})
        out.append(("history", {"event_id": record.event_id, "bet_id": record.bet_id, "status": status,
                                "ts": record.ts, "detail": detail}))
    return out


def _jackpot_statements(record: Message, base: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    if isinstance(record, JackpotConfigured):
        d = record.definition
        return [("jackpot", {**base, "tier": d["tier"], "currency": d["currency"], "trigger_kind": d["trigger"],
                             "scope_channel": d["channel_id"], "scope_group": d["operator_group"],
                             "definition": _dumps(d),
                             "pending": _dumps(record.pending) if record.pending is not None else None})]
    if isinstance(record, JackpotCycleStarted):
        return [("jackpot_cycle", {**base, "definition": _dumps(record.definition)})]
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
            out.append(_outbox({**base, "kind": "bonus", "amount": record.bonus_amount,
                                "bet_id": record.bet_id or None,
                                "meta": _dumps({"jackpot_id": record.jackpot_id, "award_id": record.award_id,
                                                "rank": record.rank})}))
        return out
    if isinstance(record, JackpotAwardRolledBack):
        return [("jackpot_compensation", {**base, "state": "applied"})]
    if isinstance(record, JackpotNearCap):
        return [("jackpot_notice", {**base, "status": "ready",
                                    "payload": _dumps({**record.asdict(), "notice_id": record.event_id})})]
    return []


Statement = tuple[str, Any]          # (SQL text, parameters: a dict, or a list of dicts for executemany)


def plan(items: list[tuple[Message, str, bytes]], now: int) -> list[Statement]:
    """The batch's statements, grouped and ordered as the module docstring says."""
    inserts: dict[str, list[dict[str, Any]]] = defaultdict(list)
    terms: list[tuple[int, int, str, dict[str, Any]]] = []
    updates: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for index, (record, topic, raw) in enumerate(items):
        for name, params in statements(record, topic, raw, now):
            if name in TERM_UPDATES:
                terms.append((params.get("state_version", 0), index, name, params))
            elif name in JOINED_UPDATES or name in LISTED_UPDATES:
                updates[name].append(params)
            else:
                inserts[name].append(params)
    out: list[Statement] = [(SQL[name], rows if len(rows) > 1 else rows[0]) for name, rows in inserts.items()]
    out += [(SQL[name], params) for _, _, name, params in sorted(terms, key=lambda t: (t[0], t[1]))]
    for name in BET_UPDATE_ORDER:
        rows = updates.get(name)
        if rows:
            out.append(_grouped_update(name, rows, now))
    return out


def _grouped_update(name: str, rows: list[dict[str, Any]], now: int) -> Statement:
    params: dict[str, Any] = {"now": now}
    if name in LISTED_UPDATES:
        column, sql = LISTED_UPDATES[name]
        keys = list(dict.fromkeys(row[column] for row in rows))
        names = []
        for i, key in enumerate(keys):
            params[f"k{i}"] = key
            names.append(f":k{i}")
        return sql.format(keys=", ".join(names)), params
    columns, sql = JOINED_UPDATES[name]
    selects = []
    for i, row in enumerate(rows):
        parts = []
        for j, column in enumerate(columns):
            params[f"v{i}_{j}"] = row[column]
            parts.append(f":v{i}_{j}" + (f" AS {column}" if i == 0 else ""))
        selects.append("SELECT " + ", ".join(parts))
    return sql.format(rows=" UNION ALL ".join(selects)), params
