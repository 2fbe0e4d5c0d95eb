"""Refund Service (seed: 退款): gives back the stake of every bet that will not be settled.

It has no agent of its own. The refund is requested where the decision that causes it is made,
in the commands agent's batch (`request`, called by the Bet Service for a cancel or a refused
debited bet and by the Cashout Service for each bet an abort voids): the PayoutRequested(refund)
leaves with the decision's own events, acknowledged together, so a kill -9 can lose neither
without the other. The Payout Adapter credits it and, with its PayoutSucceeded, writes the
bet's terminal outcome BetRefunded (streams/refunds.py has the rules of both).

Until 2026-12-02 this was an agent that read every message of game.bet and game.payout to find
the few that cause a refund, with a `refunds` table as its ledger: each worker fetched and
dispatched every bet event a second time (crash-bench --profile: ~4 % of a worker's samples in
that agent's stream alone, plus its share of the consumer thread). A deployment upgraded from
that version must first let that agent read game.bet to its end (its consumer group's lag at 0):
a refund it had not requested yet would be requested by nothing.
"""
from __future__ import annotations

from streams.events import BetCancelled, BetRejected, BetVoided
from streams.processing import Batch
from streams.refunds import is_refunded, refund_request
from streams.topics import payout_topic


def request(batch: Batch, record: BetCancelled | BetVoided | BetRejected) -> None:
    """Request the refund of a decision just emitted in `batch`, when it gives the stake back."""
    if is_refunded(record):
        batch.emit.send(payout_topic, record.channel_id, refund_request(record))
