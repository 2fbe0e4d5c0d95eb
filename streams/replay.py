"""`crash-replay --term TERM_ID`: rebuild a term's results from its events in Kafka and compare
them with what was recorded (seed section 9: 按 term_id 回放事件栈校验结果).

The term's bet stream (game.bet, the channel's partition) is fed again, in order and without
duplicates, through the same rules the Cashout Service runs (streams.settlement.Book). The
rebuilt outcome of every bet and the term's totals are compared with the recorded
BetCashedOut / TermSettled events, with the TermCrashed proof, and with MySQL (bet rows,
crash_term, crash_term_totals, payout_outbox). Every difference is reported; exit status 1
if there is any, 0 if the term replays exactly.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.partitioner import DefaultPartitioner
from sqlalchemy import text

from sql.db import make_engine
from streams import fairness
from streams.codec import DecodeError, decode
from streams.events import (
    BetCancelled,
    BetCashedOut,
    BetPlaced,
    BetsSealed,
    BookMark,
    CashoutRequested,
    TermAborted,
    TermClosed,
    TermCrashed,
    TermSettled,
)
from streams.settings import Settings, get_settings
from streams.settlement import Book, bet_from_placed

# Start reading this long before the term's creation (clock skew, late commands).
LOOKBACK_MS = 60_000


async def read_term_events(settings: Settings, topic_name: str, channel_id: str, term_id: str,
                           since_ms: int, stop_types: tuple[type, ...]) -> list[Any]:
    """The term's events on one topic, in partition order, duplicates removed."""
    topic = settings.topic(topic_name)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=None,
                                enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        partitions = sorted(consumer.partitions_for_topic(topic) or [])
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = sorted(consumer.partitions_for_topic(topic) or [])
        tp = TopicPartition(topic, DefaultPartitioner()(channel_id.encode(), partitions, partitions))
        consumer.assign([tp])
        end = (await consumer.end_offsets([tp]))[tp]
        start = (await consumer.offsets_for_times({tp: max(0, since_ms)}))[tp]
        if start is None:
            return []
        consumer.seek(tp, start.offset)
        seen: set[str] = set()
        events: list[Any] = []
        position = start.offset
        while position < end:
            for message in (await consumer.getmany(tp, timeout_ms=1000)).get(tp, []):
                position = message.offset + 1
                if (message.key or b"").decode(errors="replace") != channel_id:
                    continue
                try:
                    record = decode(message.value)
                except DecodeError:
                    continue
                if record.term_id != term_id or record.event_id in seen:
                    continue
                seen.add(record.event_id)
                events.append(record)
                if isinstance(record, stop_types):
                    return events
        return events
    finally:
        await consumer.stop()


def rebuild(events: list[Any]) -> tuple[Book, dict[str, dict[str, int]] | None]:
    """Feed the term's bet stream through the settlement rules; (book, totals or None)."""
    book = Book(events[0].term_id if events else "")
    for record in events:
        if isinstance(record, BetPlaced):
            book.add(bet_from_placed(record))
        elif isinstance(record, BetCancelled):
            book.cancel(record.bet_id)
        elif isinstance(record, BookMark):
            book.set_header(record.flying_at, record.growth_per_ms, record.caps)
            book.advance(record.mark_at)
        elif isinstance(record, CashoutRequested):
            book.cashout(record.bet_id, record.requested_at, record.command_id)
        elif isinstance(record, BetsSealed):
            book.set_header(record.flying_at, record.growth_per_ms, record.caps)
            _, _, totals = book.settle(record.end_x100, record.aborted)
            return book, totals
    return book, None


async def replay_term(settings: Settings, term_id: str) -> dict[str, Any]:
    engine = make_engine(settings.db_url, pool_size=1)
    problems: list[str] = []
    try:
        async with engine.connect() as conn:
            term = (await conn.execute(text("SELECT * FROM crash_term WHERE term_id = :t"), {"t": term_id})).first()
            if term is None:
                return {"term_id": term_id, "problems": [f"no term {term_id} in MySQL"], "bets": 0}
            term = dict(term._mapping)
            bets = {row.bet_id: dict(row._mapping) for row in await conn.execute(text(
                "SELECT * FROM bet WHERE term_id = :t AND bet_id IS NOT NULL"), {"t": term_id})}
            totals_rows = {row.currency: dict(row._mapping) for row in await conn.execute(text(
                "SELECT * FROM crash_term_totals WHERE term_id = :t"), {"t": term_id})}
            outbox = {row.order_no: dict(row._mapping) for row in await conn.execute(text(
                "SELECT order_no, amount, user_id, currency FROM payout_outbox"
                " WHERE term_id = :t AND kind = 'cashout'"),
                {"t": term_id})}
            chain = (await conn.execute(text(
                "SELECT salt, terminator FROM fairness_chain WHERE channel_id = :c AND chain_no = :n"),
                {"c": term["channel_id"], "n": term["chain_no"]})).first()
        channel_id = term["channel_id"]
        since = term["created_at"] - LOOKBACK_MS
        bet_events = await read_term_events(settings, "game.bet", channel_id, term_id, since, (TermSettled,))
        term_events = await read_term_events(settings, "game.term", channel_id, term_id, since, (TermClosed,))
    finally:
        await engine.dispose()

    book, totals = rebuild(bet_events)
    if totals is None:
        problems.append("the term's bet stream has no BetsSealed: it is not settled (yet)")
        return {"term_id": term_id, "problems": problems, "bets": len(book.bets)}

    # The end of the term: the sealed end must be the revealed, verifiable crash point.
    sealed = next(e for e in bet_events if isinstance(e, BetsSealed))
    ended = next((e for e in term_events if isinstance(e, (TermCrashed, TermAborted))), None)
    if ended is None:
        problems.append("no TermCrashed/TermAborted event on game.term")
    else:
        config = json.loads(term["config"])
        recomputed = fairness.crash_point_x100(bytes.fromhex(ended.revealed_hash), bytes.fromhex(chain.salt),
                                               config["edge_bps"], config["max_multiple_x100"])
        if recomputed != ended.crash_x100 or recomputed != term["crash_x100"]:
            problems.append(f"crash point: event {ended.crash_x100}, MySQL {term['crash_x100']}, "
                            f"recomputed from the revealed hash {recomputed}")
        if isinstance(ended, TermCrashed) and (sealed.end_x100 != ended.crash_x100 or sealed.end_at != ended.crash_at):
            problems.append(f"sealed at {sealed.end_x100}@{sealed.end_at}, "
                            f"crashed at {ended.crash_x100}@{ended.crash_at}")

    # Each bet: rebuilt outcome vs recorded event vs MySQL row.
    recorded = {e.bet_id: e for e in bet_events if isinstance(e, BetCashedOut)}
    for bet_id, bet in book.bets.items():
        event = recorded.get(bet_id)
        row = bets.get(bet_id)
        expected_status = {"cashed": "cashed_out", "lost": "lost", "voided": "voided", "cancelled": "cancelled"}[
            bet.state]
        if bet.state == "cashed":
            if event is None:
                problems.append(f"bet {bet_id}: rebuilt cashed out at {bet.multiple_x100}, no BetCashedOut event")
            elif (event.multiple_x100, event.payout, event.mode) != (bet.multiple_x100, bet.payout, bet.mode):
                problems.append(f"bet {bet_id}: rebuilt {bet.mode} {bet.multiple_x100}/{bet.payout}, "
                                f"event {event.mode} {event.multiple_x100}/{event.payout}")
            order = outbox.get(f"cashout:{bet_id}")
            if order is None or order["amount"] != bet.payout:
                problems.append(f"bet {bet_id}: payout order {order} does not pay {bet.payout}")
        elif event is not None:
            problems.append(f"bet {bet_id}: rebuilt {bet.state}, but a BetCashedOut event exists")
        if row is None:
            problems.append(f"bet {bet_id}: no row in MySQL")
            continue
        # A cancelled or voided bet becomes refunded once its refund is acknowledged.
        allowed = {expected_status, "refunded"} if bet.state in ("voided", "cancelled") else {expected_status}
        if row["status"] not in allowed:
            problems.append(f"bet {bet_id}: rebuilt {expected_status}, MySQL {row['status']}")
        elif bet.state == "cashed" and (row["cashout_x100"], row["payout"]) != (bet.multiple_x100, bet.payout):
            problems.append(f"bet {bet_id}: rebuilt {bet.multiple_x100}/{bet.payout}, "
                            f"MySQL {row['cashout_x100']}/{row['payout']}")
    for bet_id in set(bets) - set(book.bets):
        problems.append(f"bet {bet_id}: in MySQL but not on the term's bet stream")
    extra_orders = set(outbox) - {f"cashout:{b}" for b, bet in book.bets.items() if bet.state == "cashed"}
    for order_no in sorted(extra_orders):
        problems.append(f"payout order {order_no} has no rebuilt cashout")

    # Totals: rebuilt vs TermSettled vs TermClosed vs MySQL.
    settled = next((e for e in bet_events if isinstance(e, TermSettled)), None)
    closed = next((e for e in term_events if isinstance(e, TermClosed)), None)
    if settled is None or settled.totals != totals:
        problems.append(f"totals: rebuilt {totals}, TermSettled {settled.totals if settled else None}")
    if closed is None or closed.totals != totals:
        problems.append(f"totals: rebuilt {totals}, TermClosed {closed.totals if closed else None}")
    stored = {c: {k: r[k] for k in ("bets", "stakes", "payouts", "refunds", "house_result")}
              for c, r in totals_rows.items()}
    if stored != totals:
        problems.append(f"totals: rebuilt {totals}, MySQL {stored}")
    for currency, t in totals.items():
        if t["stakes"] - t["payouts"] - t["refunds"] != t["house_result"]:
            problems.append(f"{currency}: house result {t['house_result']} is not stakes - payouts - refunds")
    return {"term_id": term_id, "channel_id": channel_id, "crash_x100": term["crash_x100"],
            "bets": len(book.bets), "cashed_out": sum(b.state == "cashed" for b in book.bets.values()),
            "totals": totals, "problems": problems}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="crash-replay", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--term", required=True, help="the term id, e.g. demo-1-42")
    parser.add_argument("--json", action="store_true", help="print the JSON report")
    args = parser.parse_args(argv)
    report = asyncio.run(replay_term(get_settings(), args.term))
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        print(f"term {report['term_id']}: {report['bets']} bets rebuilt, "
              f"{report.get('cashed_out', 0)} cashed out, totals {report.get('totals')}")
        for problem in report["problems"]:
            print(f"  MISMATCH: {problem}")
        print("REPLAY MATCHES" if not report["problems"] else f"{len(report['problems'])} MISMATCH(ES)")
    return 1 if report["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
