"""The game topics (DESIGN section 3). All keyed by channel_id, with the same partition count,
so that one worker owns every topic partition (and table) of a channel; the two jackpot topics
are keyed by jackpot_id (a shared or mega pool spans channels: its contributions are
re-partitioned onto game.jackpot.command, where the pool has one writer)."""
from __future__ import annotations

from streams.app import app, settings

COMMAND = "game.command"
TERM = "game.term"
BET = "game.bet"
PAYOUT = "game.payout"
JACKPOT = "game.jackpot"             # keyed by jackpot_id: the Jackpot Service's events
JACKPOT_COMMAND = "game.jackpot.command"  # keyed by jackpot_id: contributions, awards, admin
REPLY = "game.reply"       # keyed by gateway_id: the pipeline's answers to gateway commands
DLQ = "game.dlq"

ALL_TOPICS = (COMMAND, TERM, BET, PAYOUT, JACKPOT, JACKPOT_COMMAND, REPLY, DLQ)


def _topic(name: str):
    return app.topic(settings.topic(name), key_type=bytes, value_type=bytes,
                     key_serializer="raw", value_serializer="raw",
                     partitions=settings.partitions)


command_topic = _topic(COMMAND)
term_topic = _topic(TERM)
bet_topic = _topic(BET)
payout_topic = _topic(PAYOUT)
jackpot_topic = _topic(JACKPOT)
jackpot_command_topic = _topic(JACKPOT_COMMAND)
reply_topic = _topic(REPLY)
dlq_topic = _topic(DLQ)
