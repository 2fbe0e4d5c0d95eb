"""The refund rules (seed: 退款), pure: which bets get their stake back, under which order number,
and the two events of a refund. No I/O; the Refund Service (agents/refund_service.py) and the
Payout Adapter (agents/payout_adapter.py) use them.

A cancelled bet, an open bet of an aborted term (BetVoided, at the term's seal) and a bet refused
after its stake was debited (BetRejected with debited=true) each get one PayoutRequested(refund)
with a deterministic order_no: `refund:<bet_id>`, or `refund:<channel>:<api_order_no>` for a
refused order, which has no bet id. The outbox and the wallet refuse a second credit for it.
When the wallet has credited it, BetRefunded records the bet's terminal outcome.
"""
from __future__ import annotations

from typing import Any

from streams.events import (
    BetCancelled,
    BetRefunded,
    BetRejected,
    BetVoided,
    Message,
    PayoutRequested,
    PayoutSucceeded,
)

CAUSES = {BetCancelled: "cancelled", BetVoided: "voided", BetRejected: "rejected"}


def is_refunded(record: Message) -> bool:
    """Does this decision give the stake back?"""
    return isinstance(record, (BetCancelled, BetVoided)) or (isinstance(record, BetRejected) and record.debited)


def refund_order_no(record: BetCancelled | BetVoided | BetRejected) -> str:
    if isinstance(record, BetRejected):
        return f"refund:{record.channel_id}:{record.api_order_no}"
    return f"refund:{record.bet_id}"


def refund_request(record: BetCancelled | BetVoided | BetRejected) -> PayoutRequested:
    """The PayoutRequested(refund) of a decision that `is_refunded`; its meta carries what the
    refund's BetRefunded needs (the cause and the order) through the outbox."""
    order_no = refund_order_no(record)
    cause = CAUSES[type(record)]
    return PayoutRequested(
        event_id=f"{order_no}.requested", channel_id=record.channel_id, term_id=record.term_id, ts=record.ts,
        trace_id=record.trace_id, kind="refund", order_no=order_no, user_id=record.user_id, amount=record.amount,
        currency=record.currency, bet_id=getattr(record, "bet_id", ""),
        meta={"cause": cause, "api_order_no": record.api_order_no})


def refunded(paid: PayoutSucceeded, meta: dict[str, Any] | None, event_id: str) -> BetRefunded:
    """The BetRefunded of a refund the wallet has credited: its PayoutSucceeded plus the outbox
    row's meta (`event_id`: `<order_no>.refunded`, hashed by the Payout Adapter when too long
    for the event log)."""
    meta = meta or {}
    return BetRefunded(
        event_id=event_id, channel_id=paid.channel_id, term_id=paid.term_id, ts=paid.ts, trace_id=paid.trace_id,
        bet_id=paid.bet_id, api_order_no=str(meta.get("api_order_no", "")), user_id=paid.user_id,
        amount=paid.amount, currency=paid.currency, order_no=paid.order_no, cause=str(meta.get("cause", "")))
