"""The cashout book of one term and its settlement rules (DESIGN sections 5 and 8).

One pure, deterministic state machine, fed the term's bet stream in order (bets, cancels,
watermarks, manual cashout requests, the seal). The Cashout Service runs it live and the
`replay` tool runs it again from Kafka; both must reach the same results.

- Each bet has an exit: its auto target, or lower, the multiple at which its payout reaches the
  channel's max win (then mode `forced`). Open bets sit in a heap by exit, per currency, so a
  watermark pays every due exit in O(log n) each, without scanning the book.
- Force point (max payout per term and currency): with S the open stake and P the payouts made,
  the potential payout at multiple x is P + S * x // 100. The largest x it may reach is
  x_f = ((cap - P + 1) * 100 - 1) // S; when the multiple passes x_f before the next exit,
  every open bet of that currency is cashed out at x_f. The crash point never changes.
- Manual cashout at receive time t: first everything due up to m(t) is paid (an auto target
  reached earlier wins), then the bet is paid m(t - flying_at).
- Settlement at the end (crash point, or the multiple reached at an abort): exits at or below
  it are paid even if no watermark reached them; the rest is lost (crash) or voided (abort).
"""
from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator, MutableMapping
from dataclasses import dataclass, field
from typing import NamedTuple

from streams import money

NO_EXIT = 1 << 62


class BookBet(NamedTuple):
    """One bet of the book, replaced (not changed) when it is cashed, cancelled or ends."""
    bet_id: str
    api_order_no: str
    user_id: str
    amount: int
    currency: str
    exit_x100: int
    exit_mode: str                  # auto | forced
    forced_reason: str = ""         # max_win when the exit is the max-win cap
    state: str = "open"             # open | cashed | cancelled | lost | voided
    multiple_x100: int = 0
    payout: int = 0
    mode: str = ""                  # auto | manual | forced
    cashed_at: int = 0
    command_id: str = ""
    placed_at: int = 0              # receive time of the bet (ties of the term jackpot's ranking)


class Bets(MutableMapping[str, BookBet]):
    """A book's bets by id, each stored as a plain tuple of its fields.

    The garbage collector's full collection walks every object it tracks, field by field, with
    the worker's loop stopped; CPython stops tracking a plain tuple of strings and integers once
    a collection has seen it (not a NamedTuple: exact tuples only). A flying term's bets were
    most of a worker's tracked objects (76,000 BookBets of ~95,000 in a gc probe during
    crash-bench --quick --only sustained,gateway; each full collection 133-186 ms)."""
    __slots__ = ("_rows",)

    def __init__(self) -> None:
        self._rows: dict[str, tuple] = {}

    def __getitem__(self, bet_id: str) -> BookBet:
        return BookBet._make(self._rows[bet_id])

    def __setitem__(self, bet_id: str, bet: tuple) -> None:
        self._rows[bet_id] = tuple(bet)

    def __delitem__(self, bet_id: str) -> None:
        del self._rows[bet_id]

    def __contains__(self, bet_id: object) -> bool:
        return bet_id in self._rows

    def __iter__(self) -> Iterator[str]:
        return iter(self._rows)

    def __len__(self) -> int:
        return len(self._rows)

    def values(self) -> list[BookBet]:             # type: ignore[override]  (a list: one pass, no lookups)
        return list(map(BookBet._make, self._rows.values()))

    def rows(self) -> Iterable[tuple[str, tuple]]:
        """(bet_id, stored tuple) pairs, read with the field positions below: no BookBet made."""
        return self._rows.items()

    def row(self, bet_id: str) -> tuple:
        return self._rows[bet_id]


_BET_ID, _AMOUNT, _CURRENCY, _EXIT_MODE, _FORCED_REASON, _STATE, _PAYOUT, _COMMAND_ID = (
    BookBet._fields.index(name)
    for name in ("bet_id", "amount", "currency", "exit_mode", "forced_reason", "state", "payout", "command_id"))
# What a cashout sets, contiguous in BookBet: `_cash` builds the new row with two slices.
_CASHOUT = slice(BookBet._fields.index("forced_reason"), BookBet._fields.index("command_id") + 1)
assert BookBet._fields[_CASHOUT] == ("forced_reason", "state", "multiple_x100", "payout", "mode", "cashed_at",
                                     "command_id")


def exit_of(auto_cashout_x100: int | None, max_win_x100: int) -> tuple[int, str, str]:
    """(exit multiple, exit mode, forced reason) of a new bet."""
    auto = auto_cashout_x100 if auto_cashout_x100 is not None else NO_EXIT
    if auto <= max_win_x100:
        return auto, "auto", ""
    return max_win_x100, "forced", "max_win"


def bet_from_placed(placed) -> BookBet:
    """The book entry of a BetPlaced event."""
    exit_x100, exit_mode, reason = exit_of(placed.auto_cashout_x100, placed.max_win_x100)
    return BookBet(bet_id=placed.bet_id, api_order_no=placed.api_order_no, user_id=placed.user_id,
                   amount=placed.amount, currency=placed.currency, exit_x100=exit_x100, exit_mode=exit_mode,
                   forced_reason=reason, placed_at=placed.ts)


@dataclass
class Header:
    flying_at: int
    growth_per_ms: float
    caps: dict[str, int]


@dataclass
class Decision:
    """The answer to a manual cashout request."""
    status: str                     # accepted | refused
    reason: str = ""
    bet: BookBet | None = None


@dataclass
class Book:
    term_id: str
    header: Header | None = None
    bets: Bets = field(default_factory=Bets)
    _heaps: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    _open_stake: dict[str, int] = field(default_factory=dict)
    _paid: dict[str, int] = field(default_factory=dict)

    # ---------------------------------------------------------- building the book

    def set_header(self, flying_at: int, growth_per_ms: str, caps: dict[str, int]) -> None:
        if self.header is None:
            self.header = Header(flying_at, float(growth_per_ms), dict(caps))

    def load(self, bet: BookBet) -> None:
        """Put a bet back as it was (rebuilding the book from its table)."""
        self.bets[bet.bet_id] = bet
        if bet.state == "open":
            heapq.heappush(self._heaps.setdefault(bet.currency, []), (bet.exit_x100, bet.bet_id))
            self._open_stake[bet.currency] = self._open_stake.get(bet.currency, 0) + bet.amount
        elif bet.state == "cashed":
            self._paid[bet.currency] = self._paid.get(bet.currency, 0) + bet.payout

    def add(self, bet: BookBet) -> bool:
        if bet.bet_id in self.bets:
            return False
        self.load(bet)
        return True

    def cancel(self, bet_id: str) -> BookBet | None:
        bet = self.bets.get(bet_id)
        if bet is None or bet.state != "open":
            return None
        bet = bet._replace(state="cancelled")
        self.bets[bet_id] = bet
        self._open_stake[bet.currency] -= bet.amount
        return bet

    # ---------------------------------------------------------- paying

    def _time_of(self, multiple_x100: int) -> int:
        assert self.header is not None
        return self.header.flying_at + money.ms_to_reach(multiple_x100, self.header.growth_per_ms)

    def _cash(self, bet: tuple, multiple_x100: int, mode: str, at: int, reason: str = "",
              command_id: str = "") -> BookBet:
        """The bet (a BookBet or its stored tuple) cashed out: it replaces the open one."""
        amount, currency = bet[_AMOUNT], bet[_CURRENCY]
        payout = money.payout(amount, multiple_x100)
        row = (*bet[:_CASHOUT.start], reason if mode == "forced" else "", "cashed", multiple_x100, payout, mode, at,
               command_id or bet[_COMMAND_ID], *bet[_CASHOUT.stop:])
        self.bets[row[_BET_ID]] = row              # tuple() of a plain tuple is that tuple: no copy
        self._open_stake[currency] -= amount
        self._paid[currency] = self._paid.get(currency, 0) + payout
        return BookBet._make(row)

    def _run(self, multiple_x100: int) -> list[BookBet]:
        """Pay every exit at or below `multiple_x100` and every force point below it."""
        assert self.header is not None
        cashed: list[BookBet] = []
        for currency, heap in self._heaps.items():
            cap = self.header.caps.get(currency)
            while True:
                while heap and self.bets.row(heap[0][1])[_STATE] != "open":
                    heapq.heappop(heap)
                stake = self._open_stake.get(currency, 0)
                if stake <= 0 or not heap:
                    break
                next_exit = heap[0][0]
                force_at = None if cap is None else ((cap - self._paid.get(currency, 0) + 1) * 100 - 1) // stake
                if next_exit <= multiple_x100 and (force_at is None or next_exit <= force_at):
                    at = self._time_of(next_exit)
                    while heap and heap[0][0] == next_exit:
                        row = self.bets.row(heapq.heappop(heap)[1])
                        if row[_STATE] == "open":
                            cashed.append(self._cash(row, next_exit, row[_EXIT_MODE], at, row[_FORCED_REASON]))
                    continue
                if force_at is not None and force_at < multiple_x100:
                    force_at = max(force_at, money.MIN_MULTIPLE_X100)
                    at = self._time_of(force_at)
                    for _, bet_id in sorted(heap):
                        row = self.bets.row(bet_id)
                        if row[_STATE] == "open":
                            cashed.append(self._cash(row, force_at, "forced", at, "max_payout_per_term"))
                    heap.clear()
                break
        return cashed

    def advance(self, mark_at: int) -> list[BookBet]:
        """The bet stream is complete up to `mark_at` (< the end): pay what is due by then."""
        if self.header is None:
            return []
        return self._run(money.multiplier_x100(mark_at - self.header.flying_at, self.header.growth_per_ms))

    def cashout(self, bet_id: str, requested_at: int, command_id: str) -> tuple[Decision, list[BookBet]]:
        """A manual cashout received at `requested_at` (before the end, checked upstream)."""
        bet = self.bets.get(bet_id)
        if bet is None:
            return Decision("refused", "unknown_bet"), []
        if bet.state == "cashed":
            if bet.command_id == command_id:
                return Decision("accepted", bet=bet), []           # the same request again
            return Decision("refused", "already_cashed_out", bet), []
        if bet.state != "open":
            return Decision("refused", bet.state, bet), []
        if self.header is None or requested_at < self.header.flying_at:
            return Decision("refused", "not_flying", bet), []
        cashed = self.advance(requested_at)
        bet = self.bets[bet_id]                     # as the watermark left it
        if bet.state == "cashed":
            return Decision("refused", "already_cashed_out", bet), cashed
        multiple = money.multiplier_x100(requested_at - self.header.flying_at, self.header.growth_per_ms)
        bet = self._cash(bet, multiple, "manual", requested_at, command_id=command_id)
        cashed.append(bet)
        return Decision("accepted", bet=bet), cashed

    def settle(self, end_x100: int, aborted: bool) -> tuple[list[BookBet], list[BookBet], dict[str, dict[str, int]]]:
        """(bets cashed now, bets lost or voided, totals per currency)."""
        cashed = self._run_to_end(end_x100)
        ended: list[BookBet] = []
        for bet_id in [bet_id for bet_id, row in self.bets.rows() if row[_STATE] == "open"]:
            bet = self.bets[bet_id]._replace(state="voided" if aborted else "lost")
            self.bets[bet_id] = bet
            self._open_stake[bet.currency] -= bet.amount
            ended.append(bet)
        return cashed, ended, self.totals()

    def _run_to_end(self, end_x100: int) -> list[BookBet]:
        if self.header is None or end_x100 < money.MIN_MULTIPLE_X100:
            return []
        # Exits exactly at the end are paid ("auto cashout exactly at the crash point is paid"),
        # a force point only below it.
        return self._run(end_x100)

    def podium(self, places: int = 3) -> dict[str, list[BookBet]]:
        """Per currency, the cashed-out bets closest to the end (crash point): the highest
        cashout multiples first, ties to the earlier bet (receive time, then bet id)."""
        ranked = sorted((b for b in self.bets.values() if b.state == "cashed"),
                        key=lambda b: (-b.multiple_x100, b.placed_at, b.bet_id))
        podium: dict[str, list[BookBet]] = {}
        for bet in ranked:
            places_of = podium.setdefault(bet.currency, [])
            if len(places_of) < places:
                places_of.append(bet)
        return podium

    def totals(self) -> dict[str, dict[str, int]]:
        totals: dict[str, dict[str, int]] = {}
        for _, row in self.bets.rows():               # every bet of the term: no BookBet made
            state, amount = row[_STATE], row[_AMOUNT]
            if state == "cancelled":
                continue
            t = totals.setdefault(row[_CURRENCY], {"bets": 0, "stakes": 0, "payouts": 0, "refunds": 0})
            t["bets"] += 1
            t["stakes"] += amount
            if state == "cashed":
                t["payouts"] += row[_PAYOUT]
            elif state == "voided":
                t["refunds"] += amount
        for t in totals.values():
            t["house_result"] = t["stakes"] - t["payouts"] - t["refunds"]
        return totals
