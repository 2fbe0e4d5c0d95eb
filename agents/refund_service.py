"""Refund Service (seed: 退款): gives back the stake of every bet that will not be settled.

A cancelled bet, an open bet of an aborted term (BetVoided, from the Cashout Service at the
term's seal) and a bet refused after its stake was debited (BetRejected with debited=true)
each produce one PayoutRequested(refund) with the deterministic order_no `refund:<bet_id>`
(`refund:<channel>:<api_order_no>` for a refused order, which has no bet id). The Payout
Adapter credits it; when its PayoutSucceeded arrives, BetRefunded records the bet's terminal
outcome. The refund ledger (table `refunds`) makes both steps happen once per order.
"""
from __future__ import annotations

from streams.app import app, settings
from streams.events import (
    BET_TOPIC_EVENTS,
    PAYOUT_TOPIC_EVENTS,
    BetCancelled,
    BetRefunded,
    BetRejected,
    BetVoided,
    Message,
    PayoutRequested,
    PayoutSucceeded,
)
from streams.processing import Batch, run_batches
from streams.topics import BET, PAYOUT, bet_topic, payout_topic
from tables import RefundEntry, refunds

refund_inputs = app.topic(settings.topic(BET), settings.topic(PAYOUT), key_type=bytes, value_type=bytes,
                          key_serializer="raw", value_serializer="raw")


def refund_order_no(record: BetCancelled | BetVoided | BetRejected) -> str:
    if isinstance(record, BetRejected):
        return f"refund:{record.channel_id}:{record.api_order_no}"
    return f"refund:{record.bet_id}"


async def handle(record: Message, event, batch: Batch) -> None:
    if isinstance(record, (BetCancelled, BetVoided)) or (isinstance(record, BetRejected) and record.debited):
        _request(record, batch)
    elif isinstance(record, PayoutSucceeded) and record.kind == "refund":
        _refunded(record, batch)


def _request(record: BetCancelled | BetVoided | BetRejected, batch: Batch) -> None:
    order_no = refund_order_no(record)
    if batch.staged.get(refunds, order_no) is not None:
        return
    cause = {BetCancelled: "cancelled", BetVoided: "voided", BetRejected: "rejected"}[type(record)]
    bet_id = getattr(record, "bet_id", "")
    entry = RefundEntry(order_no=order_no, bet_id=bet_id, api_order_no=record.api_order_no, user_id=record.user_id,
                        amount=record.amount, currency=record.currency, cause=cause, term_id=record.term_id)
    batch.staged.set(refunds, order_no, entry)
    batch.emit.send(payout_topic, record.channel_id, PayoutRequested(
        event_id=f"{order_no}.requested", channel_id=record.channel_id, term_id=record.term_id, ts=record.ts,
        trace_id=record.trace_id, kind="refund", order_no=order_no, user_id=record.user_id, amount=record.amount,
        currency=record.currency, bet_id=bet_id,
        meta={"cause": cause, "api_order_no": record.api_order_no}))


def _refunded(record: PayoutSucceeded, batch: Batch) -> None:
    entry = batch.staged.get(refunds, record.order_no)
    if entry is None or entry.state == "refunded":
        return
    entry.state = "refunded"
    batch.staged.set(refunds, record.order_no, entry)
    batch.emit.send(bet_topic, record.channel_id, BetRefunded(
        event_id=f"{record.order_no}.refunded", channel_id=record.channel_id, term_id=entry.term_id, ts=record.ts,
        trace_id=record.trace_id, bet_id=entry.bet_id, api_order_no=entry.api_order_no, user_id=entry.user_id,
        amount=entry.amount, currency=entry.currency, order_no=record.order_no, cause=entry.cause))


@app.agent(refund_inputs)
async def refund_processor(stream):
    # Undecodable game.bet and game.payout messages are dead-lettered by the sink (it reads every
    # type of both); here they are skipped.
    await run_batches(stream, "refund", handle, expected=BET_TOPIC_EVENTS + PAYOUT_TOPIC_EVENTS,
                      dead_letters=False, reads=(BetCancelled, BetVoided, BetRejected, PayoutSucceeded))
