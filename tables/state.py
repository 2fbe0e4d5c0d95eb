"""The pipeline's tables: RocksDB stores with Kafka changelogs, one single-writer service each.

Each value is a record (JSON in the changelog). A table is only changed through
tables.staging.Staged, which applies a batch's writes after the batch's output events are
acknowledged by Kafka, so that a table never holds a decision whose events could be lost.
Nothing secret is ever stored here: a running term's crash point lives only in
tables.chain_store (its own database) and in the orchestrator's memory.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

from streams.app import app
from streams.records import PlainRecord


class State(PlainRecord, abstract=True, include_metadata=False, serializer="json"):
    pass


# ---------------------------------------------------------------- Term Orchestrator

class ChannelState(State):
    channel_id: str
    config: Dict[str, Any]
    config_version: int
    partition: int
    created_at: int
    chain_no: int
    chain_length: int
    chain_terminator: str
    chain_salt: str
    next_chain: Optional[Dict[str, Any]] = None    # {chain_no, length, terminator, salt}
    seq: int = 0                 # seq of the newest term
    chain_index: int = 0         # chain index of the newest term
    last_revealed: str = ""      # h of the newest revealed term: the next term's commitment
    current_term_id: str = ""
    clock: int = 0               # event time of the channel: the newest command time seen
    # The channel time of its schedule's next step (a term's state change, the seal of its bet
    # stream, the next term); 0 while a term flies: the clock Ticks at or after it (agents/commands.py).
    wake_at: int = 0
    # The newest receive time among the orders pruned from `orders` (their terms are recorded in
    # MySQL): an order first claimed at or before it may be one of them (see agents/bet_service.py).
    history_before: int = 0
    # [[term seq, channel clock when recorded], ...]: recorded terms whose orders are pruned
    # CRASH_ORDER_KEEP_MS later.
    recorded: Optional[List[List[int]]] = None


class TermState(State):
    term_id: str
    channel_id: str
    seq: int
    chain_no: int
    chain_index: int
    prev_hash: str
    salt: str                    # the chain's public salt (revealed with the hash)
    state: str                   # pre_start starting flying crashed aborted closed
    state_version: int
    config: Dict[str, Any]
    created_at: int
    bets_close_at: int
    flying_at: int
    manual_start: bool = False
    # Known only once the term has ended (crash or abort): never before.
    crash_at: Optional[int] = None
    crash_x100: Optional[int] = None
    ended_at: Optional[int] = None
    end_x100: Optional[int] = None
    revealed_hash: str = ""
    hmac_digest: str = ""
    aborted: bool = False
    aborted_from: str = ""
    abort_reason: str = ""
    abort_operator: str = ""
    recovered: bool = False
    last_bet_at: int = 0         # receive time of the newest accepted bet
    cashout_horizon: int = 0     # receive time of the newest forwarded cashout request
    last_mark: int = 0
    book_sealed: bool = False
    next_term_at: Optional[int] = None
    totals: Optional[Dict[str, Dict[str, int]]] = None
    closed_at: Optional[int] = None


channels = app.Table("channels", value_type=ChannelState, help="channel config, chain and current term")
terms = app.Table("terms", value_type=TermState, help="the terms of each channel that are not closed yet")


# "<agent>/<topic>/<partition>" -> the next offset that agent handles there (streams/positions.py).
positions = app.Table("positions", help="each agent's next offset per source partition")


# ---------------------------------------------------------------- Bet Service

class Order(State):
    """The first decision on one api_order_no of a channel, and the bet's life after it."""
    api_order_no: str
    channel_id: str
    user_id: str
    amount: int
    currency: str
    bet_type: str
    received_at: int
    command_id: str
    status: str                  # placed | cancelled | rejected
    reason: str = ""
    bet_id: str = ""
    term_id: str = ""
    auto_cashout_x100: Optional[int] = None
    max_win_x100: int = 0
    debited: bool = False
    # The term whose settlement follows this order's events on game.bet (its own term, or the
    # next one when it was decided after its term's bets were sealed): the order is pruned when
    # the sink reports that term recorded in MySQL (TermRecorded).
    group: int = 0
    # The cashout the term's book paid (agents/cashout_service.py); cashout_mode "" = not cashed
    # out. The book's entry of a bet is its order: the book is rebuilt from these fields after a
    # rebalance, and a bet costs one changelog write, not one per table.
    cashout_mode: str = ""       # auto | manual | forced
    multiple_x100: int = 0
    payout: int = 0
    cashed_at: int = 0
    forced_reason: str = ""
    cashout_command_id: str = ""


def order_key(channel_id: str, api_order_no: str) -> str:
    return f"{channel_id}/{api_order_no}"


# Bounded: the orders of terms the sink has not yet recorded in MySQL (older repeats are answered
# from MySQL's unique key, agents/bet_service.py), so its size, its changelog and a rebalance's
# recovery follow the live terms, not the history.
orders = app.Table("orders", value_type=Order, help="api_order_no index: first decision per order")


# ---------------------------------------------------------------- Cashout Service
# A book's bets are their orders (above); each term's book has a header here.

class TermBook(State):
    term_id: str
    channel_id: str
    flying_at: int = 0
    growth_per_ms: str = ""
    caps: Optional[Dict[str, int]] = None
    last_mark: int = 0
    sealed: bool = False
    totals: Optional[Dict[str, Dict[str, int]]] = None
    bets: int = 0


term_books = app.Table("term_books", value_type=TermBook, help="header and settlement of each term's book")


# ---------------------------------------------------------------- Jackpot Service (keyed by jackpot_id)

class JackpotPool(State):
    """One jackpot: its definition, its money (micro units) and its cycle. The committed hit
    value of a must_hit_by cycle is NOT here (tables.jackpot_secrets): only its commitment."""
    jackpot_id: str
    definition: Dict[str, Any]   # the running cycle's definition
    status: str                  # active | paused | audit
    version: int                 # grows with every definition or status change
    cycle: int
    value_micro: int
    reserve_micro: int = 0       # contributions above the cap, for the next cycle
    commitment: str = ""
    pending: Optional[Dict[str, Any]] = None   # the definition from the next reset on
    near_cap_sent: bool = False
    # game.command partition -> next offset: bet contributions arrive in offset order.
    watermarks: Optional[Dict[str, int]] = None
    contributions: int = 0
    awards: int = 0
    compensated: Optional[List[str]] = None    # award ids whose rollback was applied
    last_hit: Optional[Dict[str, Any]] = None  # for the view: {award_id, amount, cycle, at, winners}
    updated_at: int = 0


jackpot_pools = app.Table("jackpot_pools", value_type=JackpotPool, help="the pools, one writer per jackpot_id")
# "<jackpot_id>/<kind>:<key>" -> {"ts", "reply"}: REST contribution ids and award idempotency
# keys seen within CRASH_JACKPOT_IDEMPOTENCY_S (older repeats are refused by MySQL's unique keys).
jackpot_keys = app.Table("jackpot_keys", help="idempotency keys of REST contributions and awards")


# ---------------------------------------------------------------- term jackpots (keyed by term_id)

class TermJackpot(State):
    """A term's podium (once settled) and the term-jackpot hits waiting for it."""
    term_id: str
    channel_id: str
    podium: Optional[Dict[str, List[Dict[str, Any]]]] = None   # None until the term is settled
    hits: Optional[List[Dict[str, Any]]] = None                # TermJackpotHit fields, not yet awarded
    awarded: Optional[List[str]] = None                        # award ids already shared out


term_jackpots = app.Table("term_jackpots", value_type=TermJackpot, help="podiums and pending hits per term")

__all__: List[str] = [
    "State", "ChannelState", "TermState", "Order", "order_key", "TermBook",
    "JackpotPool", "TermJackpot",
    "positions", "channels", "terms", "orders", "term_books",
    "jackpot_pools", "jackpot_keys", "term_jackpots",
]
