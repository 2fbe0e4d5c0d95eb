"""Every message on the game topics, as Faust records: the public event contract.

Wire format: one JSON object per Kafka message, UTF-8, with a "type" member naming the record
(see streams/codec.py), readable by any Kafka client. Times are unix milliseconds (UTC),
money is integer minor units, multiples are integer hundredths (250 = 2.50x).
The contract is documented field by field in streams/EVENTS.md; keep the two in step.

Every message carries event_id, channel_id, ts, term_id and trace_id. Ids of derived events
are deterministic (the cause's id plus a suffix) so that a re-processed input yields the same id
and every consumer can de-duplicate.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

from streams.records import PlainRecord


class Message(PlainRecord, abstract=True, include_metadata=False):
    event_id: str
    channel_id: str
    ts: int
    term_id: str = ""
    trace_id: str = ""


# ------------------------------------------------------------------ game.command
# Commands are stamped by the gateway (or an operator view, or a worker's clock) with their
# receive time in `ts`; `event_id` is the command id (ULID); replies go to `gateway_id`.

class Command(Message, abstract=True):
    gateway_id: str = ""


class PlaceBet(Command):
    api_order_no: str
    user_id: str
    amount: int
    currency: str
    auto_cashout_x100: Optional[int] = None
    bet_type: str = "manual"
    # Seamless mode: the gateway debited the player's wallet (order_no = api_order_no)
    # before placing; a refusal must then be refunded.
    debited: bool = False
    # When MySQL's api_order table first saw this api_order_no (the gateway's claim); 0 = this
    # command's own receive time. An order claimed long ago may have been pruned from the
    # pipeline's index: the pipeline then answers `order_in_history` and the gateway answers
    # the first decision from MySQL.
    claimed_at: int = 0


class CancelBet(Command):
    api_order_no: str
    user_id: str


class CashoutBet(Command):
    api_order_no: str
    user_id: str


class StartTerm(Command):
    """Operator manual start: the receive time becomes bets_close_at."""
    operator: str = ""


class AbortTerm(Command):
    """Operator abort: the term is void, every open bet refunded."""
    operator: str = ""
    reason: str = ""


class ConfigureChannel(Command):
    """Create a channel (with its first chain) or change its config from the next term."""
    config: Dict[str, Any]
    operator: str = ""
    # Only when creating: the public half of chain 1 {chain_no, length, terminator, salt}.
    chain: Optional[Dict[str, Any]] = None


class PublishChain(Command):
    """A new fairness chain for the channel, used when the current one runs out."""
    chain_no: int
    length: int
    terminator: str
    salt: str


class Tick(Command):
    """The clock: a worker sends one per owned channel every tick interval."""


class FeedJackpot(Command):
    """The channel's bets start (feed=true) or stop feeding a jackpot, from the next term."""
    jackpot_id: str
    feed: bool = True
    operator: str = ""


class TermRecorded(Command):
    """The sink wrote a term's settlement (and so every event of its orders before it) to MySQL:
    the pipeline may forget those orders."""
    seq: int


class TermJackpotHit(Command):
    """A term jackpot of the channel hit on a contribution of one of its terms' bets: the
    Jackpot Service locked `amount` in; the winners are ranked once the term is settled."""
    jackpot_id: str
    award_id: str
    cycle: int
    amount: int
    currency: str
    rank_split_bps: List[int]
    bet_id: str                 # the bet whose contribution crossed (wins if nobody cashed out)
    user_id: str


# ------------------------------------------------------------------ game.term

class ChannelConfigured(Message):
    config: Dict[str, Any]
    config_version: int
    created: bool = False


class ChainPublished(Message):
    chain_no: int
    length: int
    terminator: str
    salt: str


class TermCreated(Message):
    seq: int
    chain_no: int
    chain_index: int
    prev_hash: str          # h_{k-1}: the commitment the revealed h_k must hash to
    created_at: int
    bets_close_at: int
    flying_at: int
    config: Dict[str, Any]  # the channel config this term runs with
    state_version: int = 1
    state: str = "pre_start"


class TermStateChanged(Message):
    state: str              # starting | flying
    bets_close_at: int
    flying_at: int
    state_version: int
    manual: bool = False


class TermTick(Message):
    multiple_x100: int
    elapsed_ms: int


class TermCrashed(Message):
    crash_x100: int
    crash_at: int
    flying_at: int
    chain_no: int
    chain_index: int
    revealed_hash: str      # h_k
    salt: str
    hmac_digest: str        # HMAC-SHA512(salt, h_k hex), hex
    state_version: int
    recovered: bool = False  # settled by a worker that took over after the crash time
    state: str = "crashed"


class TermAborted(Message):
    aborted_at: int
    from_state: str
    chain_no: int
    chain_index: int
    revealed_hash: str
    salt: str
    hmac_digest: str
    crash_x100: int
    state_version: int
    operator: str = ""
    reason: str = ""
    state: str = "aborted"


class TermClosed(Message):
    closed_at: int
    totals: Dict[str, Dict[str, int]]   # currency -> bets, stakes, payouts, refunds, house_result
    bets: int
    state_version: int
    aborted: bool = False
    state: str = "closed"


# ------------------------------------------------------------------ game.bet

class BetPlaced(Message):
    bet_id: str
    api_order_no: str
    user_id: str
    amount: int
    currency: str
    bet_type: str
    max_win_x100: int            # the multiple at which the max win per bet forces a cashout
    auto_cashout_x100: Optional[int] = None
    debited: bool = False


class BetRejected(Message):
    api_order_no: str
    user_id: str
    amount: int
    currency: str
    reason: str
    bet_type: str = "manual"
    auto_cashout_x100: Optional[int] = None
    debited: bool = False


class BetCancelled(Message):
    bet_id: str
    api_order_no: str
    user_id: str
    amount: int
    currency: str
    debited: bool = False


class CashoutRequested(Message):
    """A manual cashout the Bet Service validated, for the Cashout Service to decide."""
    bet_id: str
    api_order_no: str
    user_id: str
    requested_at: int
    command_id: str
    gateway_id: str = ""


class BookMark(Message):
    """Watermark of the bet stream of a flying term: every command received before `mark_at`
    is already on the bet stream. Auto cashouts and force points are paid up to it."""
    mark_at: int
    flying_at: int
    growth_per_ms: str
    caps: Dict[str, int]        # currency -> max payout per term


class BetsSealed(Message):
    """The last event of a term on the bet stream: its end is known, settle it."""
    end_at: int
    end_x100: int               # the crash point, or the multiple reached at an abort
    flying_at: int
    growth_per_ms: str
    caps: Dict[str, int]
    aborted: bool = False


class BetCashedOut(Message):
    bet_id: str
    api_order_no: str
    user_id: str
    amount: int
    currency: str
    multiple_x100: int
    payout: int
    mode: str                   # auto | manual | forced
    cashed_at: int              # when the multiplier reached multiple_x100 (or the request time)
    order_no: str               # the payout order (deterministic)
    forced_reason: str = ""     # max_win | max_payout_per_term
    command_id: str = ""


class CashoutRejected(Message):
    bet_id: str
    api_order_no: str
    user_id: str
    reason: str
    requested_at: int
    command_id: str = ""


class BetVoided(Message):
    """An open bet of an aborted term: its stake is refunded (Refund Service)."""
    bet_id: str
    api_order_no: str
    user_id: str
    amount: int
    currency: str


class BetRefunded(Message):
    bet_id: str
    api_order_no: str
    user_id: str
    amount: int
    currency: str
    order_no: str
    cause: str                  # cancelled | voided | rejected


class TermSettled(Message):
    """Settlement of a term by the Cashout Service; also sent to game.command so that the
    orchestrator closes the term with these totals (and a term jackpot is ranked on `podium`)."""
    totals: Dict[str, Dict[str, int]]
    bets: int
    aborted: bool = False
    # currency -> the term's best cashouts, closest to the crash point first (ties: the
    # earlier bet): [{bet_id, user_id, amount, multiple_x100}, ...], at most three.
    podium: Optional[Dict[str, List[Dict[str, Any]]]] = None


# ------------------------------------------------------------------ game.payout

class PayoutRequested(Message):
    kind: str                   # cashout | refund | bonus
    order_no: str
    user_id: str
    amount: int
    currency: str
    bet_id: str = ""
    meta: Optional[Dict[str, Any]] = None


class PayoutSucceeded(Message):
    kind: str
    order_no: str
    user_id: str
    amount: int
    currency: str
    bet_id: str = ""
    receipt: Optional[Dict[str, Any]] = None


class PayoutFailed(Message):
    kind: str
    order_no: str
    reason: str
    retry_count: int
    user_id: str = ""
    amount: int = 0
    currency: str = ""
    bet_id: str = ""


# ------------------------------------------------------------------ game.reply, game.dlq

class CommandReply(Message):
    """The pipeline's definitive answer to one gateway command."""
    gateway_id: str
    command_id: str
    status: str                 # accepted | refused
    reason: str = ""
    api_order_no: str = ""
    bet_id: str = ""
    amount: int = 0
    currency: str = ""
    multiple_x100: int = 0
    payout: int = 0
    mode: str = ""


class JackpotReply(Message):
    """The Jackpot Service's answer to a REST contribution or award."""
    gateway_id: str
    command_id: str
    status: str                 # accepted | refused
    jackpot_id: str
    reason: str = ""
    value: int = 0              # the pool after the command, whole minor units
    currency: str = ""
    award: Optional[Dict[str, Any]] = None   # {award_id, amount, cycle} when it hit or awarded
    repeat: bool = False        # the answer recorded for an earlier identical request


class DeadLetter(Message):
    source_topic: str
    partition: int
    offset: int
    error: str
    consumer: str
    key_b64: str = ""
    value_b64: str = ""


# What each topic may carry (anything else on it is a dead letter).
COMMAND_TOPIC_RECORDS = (Command,)
TERM_TOPIC_EVENTS = (ChannelConfigured, ChainPublished, TermCreated, TermStateChanged, TermTick, TermCrashed,
                     TermAborted, TermClosed)
BET_TOPIC_EVENTS = (BetPlaced, BetRejected, BetCancelled, CashoutRequested, BookMark, BetsSealed, BetCashedOut,
                    CashoutRejected, BetVoided, BetRefunded, TermSettled)
PAYOUT_TOPIC_EVENTS = (PayoutRequested, PayoutSucceeded, PayoutFailed)

REPLY_RECORDS = (CommandReply, JackpotReply)

ALL_RECORDS: tuple[type[Message], ...] = (
    PlaceBet, CancelBet, CashoutBet, StartTerm, AbortTerm, ConfigureChannel, PublishChain, Tick,
    FeedJackpot, TermJackpotHit, TermRecorded,
    ChannelConfigured, ChainPublished, TermCreated, TermStateChanged, TermTick, TermCrashed,
    TermAborted, TermClosed,
    BetPlaced, BetRejected, BetCancelled, CashoutRequested, BookMark, BetsSealed, BetCashedOut,
    CashoutRejected, BetVoided, BetRefunded, TermSettled,
    PayoutRequested, PayoutSucceeded, PayoutFailed,
    CommandReply, JackpotReply, DeadLetter,
)
