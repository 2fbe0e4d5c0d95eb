"""The jackpot records: commands on game.jackpot.command and events on game.jackpot, both keyed
by jackpot_id (one writer per jackpot: the Jackpot Service), documented in streams/EVENTS.md.

Money: contributions and pool values are integers in *micro units* (millionths of the
currency's minor unit, fields ending in `_micro`) so that `rate * stake` is always whole;
awards, seeds, caps and everything a player is paid are whole minor units.
Common fields as every record (streams/events.Message); `channel_id` is the channel a
contribution or hit came from, or "" when it came over REST.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

from streams.events import Message


class JackpotCommand(Message, abstract=True):
    jackpot_id: str
    gateway_id: str = ""         # where the answer goes (game.reply), if anyone waits for it


# ------------------------------------------------------------------ game.jackpot.command

class ConfigureJackpot(JackpotCommand):
    """Create a jackpot, or change its parameters from its next reset (a full, validated
    definition: see streams/jackpots.validate)."""
    definition: Dict[str, Any]
    create: bool = False
    operator: str = ""


class SetJackpotStatus(JackpotCommand):
    """active | paused | audit, at once (a paused or audited jackpot keeps its value)."""
    status: str
    operator: str = ""
    reason: str = ""


class ContributeBets(JackpotCommand):
    """The contributions of one batch of accepted bets of one channel. Each item:
    {bet_id, term_id, user_id, amount (the stake, minor units), currency, ts, p, o}, where
    (p, o) is the partition and offset of the PlaceBet on game.command: items of a partition
    arrive in offset order, so the pool keeps one watermark per partition to drop repeats."""
    items: List[Dict[str, Any]]


class ContributeRest(JackpotCommand):
    """A contribution of another game over REST (idempotent on contribution_id)."""
    contribution_id: str
    game_id: str
    amount: int                  # minor units, the contribution itself (not a stake)
    currency: str
    player_id: str = ""          # the player who wins if this contribution reaches the hit value
    session_id: str = ""


class AwardJackpot(JackpotCommand):
    """An external trigger's hit (seed: jackpotHit {playerId, jackpotId, sessionId})."""
    idempotency_key: str
    player_id: str
    session_id: str = ""
    caller: str = ""


class RollbackAward(JackpotCommand):
    """Admin correction in audit mode: the award's amount goes back to the pool as a
    compensating entry (its unpaid payouts were cancelled first); the award itself stays."""
    award_id: str
    amount: int
    operator: str = ""
    reason: str = ""


class ReconcileJackpot(JackpotCommand):
    """Ask for a snapshot of the live pool, reconciled against MySQL by the sink."""
    request_id: str


# ------------------------------------------------------------------ game.jackpot

class JackpotConfigured(Message):
    jackpot_id: str
    definition: Dict[str, Any]   # the definition of the running cycle
    status: str
    version: int
    pending: Optional[Dict[str, Any]] = None   # applies from the next reset
    operator: str = ""
    created: bool = False


class JackpotCycleStarted(Message):
    """A new cycle (at creation and at every reset): its seed, its starting value (seed plus
    the previous cycle's overflow) and, for must_hit_by, the commitment SHA-256(value:nonce)."""
    jackpot_id: str
    cycle: int
    seed: int
    start_micro: int
    definition: Dict[str, Any]
    commitment: str = ""


class JackpotContributed(Message):
    """The contributions one batch applied to one cycle of the pool. Each item:
    {key, source (bet|rest), game_id, user_id, bet_id, term_id, amount_micro, ts}."""
    jackpot_id: str
    cycle: int
    items: List[Dict[str, Any]]
    total_micro: int
    value_micro: int             # the pool after these contributions
    currency: str


class JackpotContributionRefused(Message):
    """A REST contribution the pool refused (paused, wrong currency...): nothing recorded."""
    jackpot_id: str
    contribution_id: str
    reason: str


class JackpotHit(Message):
    """The pool hit: its value is locked into `amount` (whole minor units) and it reset in the
    same step. must_hit_by reveals the committed value and nonce. A term jackpot's winners are
    decided when the term is settled (ranked=true), the others' at once."""
    jackpot_id: str
    award_id: str
    cycle: int
    trigger: str                 # must_hit_by | external
    amount: int
    currency: str
    overflow_micro: int          # what carried into the next cycle (above the hit value, the reserve too)
    hit_value: Optional[int] = None
    nonce: str = ""
    commitment: str = ""
    ranked: bool = False
    bet_id: str = ""             # the contribution that crossed the hit value (or the external winner)
    user_id: str = ""
    session_id: str = ""


class JackpotAwarded(Message):
    """One winner of an award (seed fields: term_id, rank, user_id, currency, bonus_amount),
    paid by PayoutRequested(bonus) with order_no `bonus:<award_id>:<rank>`."""
    jackpot_id: str
    award_id: str
    rank: int
    user_id: str
    currency: str
    bonus_amount: int
    order_no: str
    award_amount: int            # the whole award (all ranks)
    cycle: int
    bet_id: str = ""
    multiple_x100: int = 0       # the winning cashout, for a term jackpot


class JackpotNearCap(Message):
    """Once per cycle, when the pool reaches `share_bps` of its cap."""
    jackpot_id: str
    cycle: int
    value: int
    cap: int
    share_bps: int
    currency: str


class JackpotAwardRolledBack(Message):
    jackpot_id: str
    award_id: str
    amount: int
    value_micro: int
    operator: str = ""
    reason: str = ""


class JackpotSnapshot(Message):
    """The live pool at one point of its stream, for reconciliation."""
    jackpot_id: str
    request_id: str
    cycle: int
    pool_micro: int              # value + reserve: all the money the pool holds


class JackpotReconciled(Message):
    jackpot_id: str
    request_id: str
    expected_micro: int          # seeds + contributions - awards + compensations, from MySQL
    pool_micro: int
    difference_micro: int


JACKPOT_COMMAND_RECORDS = (JackpotCommand,)
JACKPOT_TOPIC_EVENTS = (JackpotConfigured, JackpotCycleStarted, JackpotContributed, JackpotContributionRefused,
                        JackpotHit, JackpotAwarded, JackpotNearCap, JackpotAwardRolledBack, JackpotSnapshot,
                        JackpotReconciled)
JACKPOT_RECORDS: tuple[type[Message], ...] = (
    ConfigureJackpot, SetJackpotStatus, ContributeBets, ContributeRest, AwardJackpot, RollbackAward,
    ReconcileJackpot, *JACKPOT_TOPIC_EVENTS)
