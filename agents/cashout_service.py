"""Cashout Service (seed: 自动/手动兑现): the cashout book of each flying term.

A book's inputs are what the Bet Service and the orchestrator write on game.bet, in one order
per channel: bets, cancels, manual cashout requests, the BookMark watermark and the BetsSealed
end marker (the "stream join" of term and bet streams: the term side arrives as those markers,
ordered with the bets, so no cross-topic race can change a result). The commands agent applies
each of them here as it writes it (`CommandContext.emit_book`), in the same batch: a cashout is
decided and answered in the batch that received it, and game.bet is not decoded again to build
the book (it was, by an agent of its own, until 2026-12-02: one more batch, acknowledgement and
decode of every bet). crash-replay rebuilds a term's book from that same stream. The rules
themselves are streams.settlement.Book.

A book's bets are their orders (the `orders` table, whose entry the Bet Service writes when it
places or cancels a bet; a cashout adds its fields to it) and its header is in `term_books`;
the heaps are process memory rebuilt from the tables after a restart or rebalance. (Until
2026-12-02 the book had a table of its own, `cashout_book`: each bet cost a second changelog
write at its placement and a third, its deletion, at the settlement.)
Each cashout emits BetCashedOut (game.bet) and PayoutRequested(cashout) (game.payout) with the
deterministic order_no `cashout:<bet_id>`; the settlement emits TermSettled on game.bet (the
sink marks the rest of the term's bets lost) and hands it back to the orchestrator, which
closes the term and shares out a term jackpot that hit during it on the `podium` (the term's
best cashouts, looked up in the book at the settlement).
"""
from __future__ import annotations

import logging

from agents import refund_service
from streams import metrics
from streams.events import (
    BetCancelled,
    BetCashedOut,
    BetPlaced,
    BetsSealed,
    BetVoided,
    BookMark,
    CashoutRejected,
    CashoutRequested,
    CommandReply,
    Message,
    PayoutRequested,
    TermSettled,
)
from streams.processing import Batch
from streams.settlement import Book, BookBet, bet_from_placed, exit_of
from streams.topics import bet_topic, payout_topic, reply_topic
from tables import Order, TermBook, order_key, orders, term_books
from tables.memory import TableMemory

log = logging.getLogger(__name__)

BOOK_EVENTS = (BetPlaced, BetCancelled, CashoutRequested, BookMark, BetsSealed)


def cashout_order_no(bet_id: str) -> str:
    return f"cashout:{bet_id}"


def _bet(order: Order) -> BookBet:
    """A placed (or cancelled) order as its book's bet."""
    exit_x100, exit_mode, forced_reason = exit_of(order.auto_cashout_x100, order.max_win_x100)
    if order.cashout_mode:
        state, forced_reason = "cashed", order.forced_reason
    else:
        state = "cancelled" if order.status == "cancelled" else "open"
    return BookBet(bet_id=order.bet_id, api_order_no=order.api_order_no, user_id=order.user_id, amount=order.amount,
                   currency=order.currency, exit_x100=exit_x100, exit_mode=exit_mode, forced_reason=forced_reason,
                   state=state, multiple_x100=order.multiple_x100, payout=order.payout, mode=order.cashout_mode,
                   cashed_at=order.cashed_at, command_id=order.cashout_command_id, placed_at=order.received_at)


def record_cashout(order: Order, bet: BookBet) -> Order:
    """The order of a bet the book has just cashed out, with that cashout (what _bet reads)."""
    order.cashout_mode = bet.mode
    order.multiple_x100 = bet.multiple_x100
    order.payout = bet.payout
    order.cashed_at = bet.cashed_at
    order.forced_reason = bet.forced_reason
    order.cashout_command_id = bet.command_id
    return order


def _rebuild() -> dict[str, Book]:
    """The books of the unsettled terms of the partitions this worker owns, from the tables."""
    rebuilt: dict[str, Book] = {}
    for term_id, header in term_books.items():
        if header.sealed:
            continue
        b = rebuilt[term_id] = Book(term_id)
        if header.flying_at:
            b.set_header(header.flying_at, header.growth_per_ms, header.caps or {})
    for _, order in orders.items():
        b = rebuilt.get(order.term_id)
        if b is not None and order.status != "rejected":
            b.load(_bet(order))
    log.info("cashout books rebuilt: %d terms, %d bets", len(rebuilt), sum(len(b.bets) for b in rebuilt.values()))
    return rebuilt


# term_id -> Book, for the unsettled terms of the partitions this worker owns.
books = TableMemory(_rebuild)


class _Term:
    """One term's book during a batch: the in-memory Book plus its staged table rows."""

    def __init__(self, batch: Batch, term_id: str, channel_id: str) -> None:
        live = books.get()
        self.batch = batch
        self.term_id = term_id
        self.channel_id = channel_id
        self.header: TermBook | None = batch.staged.get(term_books, term_id)
        self.book = live.get(term_id)
        if self.book is None and (self.header is None or not self.header.sealed):
            self.book = live[term_id] = Book(term_id)

    @property
    def sealed(self) -> bool:
        return self.header is not None and self.header.sealed

    def save_header(self, **changes) -> None:
        if self.header is None:
            self.header = TermBook(term_id=self.term_id, channel_id=self.channel_id)
        for name, value in changes.items():
            setattr(self.header, name, value)
        self.batch.staged.set(term_books, self.term_id, self.header)

    def save_cashout(self, bet: BookBet) -> None:
        """Write a cashout into the bet's order (its placement and cancel are written there by
        the Bet Service, in the same batch)."""
        staged = self.batch.staged
        key = order_key(self.channel_id, bet.api_order_no)
        staged.set(orders, key, record_cashout(staged.get(orders, key), bet))

    def emit_cashout(self, bet: BookBet, source: Message) -> None:
        emit = self.batch.emit
        emit.send(bet_topic, self.channel_id, BetCashedOut(
            event_id=f"{bet.bet_id}.cashout", channel_id=self.channel_id, term_id=self.term_id, ts=bet.cashed_at,
            trace_id=source.trace_id or self.term_id, bet_id=bet.bet_id, api_order_no=bet.api_order_no,
            user_id=bet.user_id, amount=bet.amount, currency=bet.currency, multiple_x100=bet.multiple_x100,
            payout=bet.payout, mode=bet.mode, cashed_at=bet.cashed_at, order_no=cashout_order_no(bet.bet_id),
            forced_reason=bet.forced_reason, command_id=bet.command_id))
        emit.send(payout_topic, self.channel_id, PayoutRequested(
            event_id=f"{bet.bet_id}.payout", channel_id=self.channel_id, term_id=self.term_id, ts=bet.cashed_at,
            trace_id=source.trace_id or self.term_id, kind="cashout", order_no=cashout_order_no(bet.bet_id),
            user_id=bet.user_id, amount=bet.payout, currency=bet.currency, bet_id=bet.bet_id,
            meta={"multiple_x100": bet.multiple_x100, "mode": bet.mode, "stake": bet.amount}))
        metrics.child(metrics.CASHOUTS, bet.mode).inc()

    def cashed(self, bets: list[BookBet], source: Message) -> None:
        for bet in bets:
            self.save_cashout(bet)
            self.emit_cashout(bet, source)


def _batch_term(batch: Batch, term_id: str, channel_id: str) -> _Term:
    """The term's book for the rest of the batch: its header is read from the table once per
    batch, not once per bet (a RocksDB read and a TermBook decode for every BetPlaced)."""
    terms: dict[str, _Term] = batch.work.setdefault("books", {})
    term = terms.get(term_id)
    if term is None:
        term = terms[term_id] = _Term(batch, term_id, channel_id)
    return term


def apply(batch: Batch, record: Message) -> TermSettled | None:
    """Apply one input of a book (a BOOK_EVENTS record just written on game.bet); the
    TermSettled when `record` was the term's BetsSealed."""
    term = _batch_term(batch, record.term_id, record.channel_id)
    if term.sealed or term.book is None:
        # The term is settled: its outcome is final.
        if isinstance(record, CashoutRequested):
            _refuse(batch, record, "term_over")
        return None
    b = term.book
    if isinstance(record, BetPlaced):
        if b.add(bet_from_placed(record)) and term.header is None:
            term.save_header()
    elif isinstance(record, BetCancelled):
        b.cancel(record.bet_id)
    elif isinstance(record, BookMark):
        b.set_header(record.flying_at, record.growth_per_ms, record.caps)
        term.cashed(b.advance(record.mark_at), record)
        term.save_header(flying_at=record.flying_at, growth_per_ms=record.growth_per_ms, caps=record.caps,
                         last_mark=record.mark_at)
    elif isinstance(record, CashoutRequested):
        decision, cashed = b.cashout(record.bet_id, record.requested_at, record.command_id)
        term.cashed(cashed, record)
        if decision.status == "accepted":
            assert decision.bet is not None
            _accept(batch, record, decision.bet)
        else:
            _refuse(batch, record, decision.reason, decision.bet)
    elif isinstance(record, BetsSealed):
        return _settle(term, record)
    return None


def _settle(term: _Term, sealed: BetsSealed) -> TermSettled:
    b = term.book
    assert b is not None
    b.set_header(sealed.flying_at, sealed.growth_per_ms, sealed.caps)
    cashed, ended, totals = b.settle(sealed.end_x100, sealed.aborted)
    term.cashed(cashed, sealed)
    emit = term.batch.emit
    for bet in ended:
        if bet.state == "voided":
            voided = BetVoided(
                event_id=f"{bet.bet_id}.voided", channel_id=term.channel_id, term_id=term.term_id, ts=sealed.end_at,
                trace_id=term.term_id, bet_id=bet.bet_id, api_order_no=bet.api_order_no, user_id=bet.user_id,
                amount=bet.amount, currency=bet.currency)
            emit.send(bet_topic, term.channel_id, voided)
            refund_service.request(term.batch, voided)
    bets = sum(t["bets"] for t in totals.values())
    podium = {currency: [{"bet_id": bet.bet_id, "user_id": bet.user_id, "amount": bet.amount,
                          "multiple_x100": bet.multiple_x100} for bet in ranked]
              for currency, ranked in b.podium().items()}
    settled = TermSettled(event_id=f"{term.term_id}.settled", channel_id=term.channel_id, term_id=term.term_id,
                          ts=max(sealed.ts, sealed.end_at), trace_id=term.term_id, totals=totals, bets=bets,
                          aborted=sealed.aborted, podium=podium)
    emit.send(bet_topic, term.channel_id, settled)
    term.save_header(sealed=True, totals=totals, bets=bets)
    books.get().pop(term.term_id, None)
    metrics.TERMS_SETTLED.labels(outcome="aborted" if sealed.aborted else "crashed").inc()
    return settled


def _accept(batch: Batch, request: CashoutRequested, bet: BookBet) -> None:
    if request.gateway_id:
        batch.emit.send(reply_topic, request.gateway_id, CommandReply(
            event_id=f"{request.command_id}.reply", channel_id=request.channel_id, term_id=request.term_id,
            ts=batch.now, trace_id=request.trace_id, gateway_id=request.gateway_id, command_id=request.command_id,
            status="accepted", api_order_no=bet.api_order_no, bet_id=bet.bet_id, amount=bet.amount,
            currency=bet.currency, multiple_x100=bet.multiple_x100, payout=bet.payout, mode=bet.mode))


def _refuse(batch: Batch, request: CashoutRequested, reason: str, bet: BookBet | None = None) -> None:
    metrics.CASHOUT_REFUSALS.labels(reason=reason).inc()
    batch.emit.send(bet_topic, request.channel_id, CashoutRejected(
        event_id=f"{request.command_id}.refused", channel_id=request.channel_id, term_id=request.term_id,
        ts=request.requested_at, trace_id=request.trace_id, bet_id=request.bet_id,
        api_order_no=request.api_order_no, user_id=request.user_id, reason=reason,
        requested_at=request.requested_at, command_id=request.command_id))
    if request.gateway_id:
        details = {}
        if bet is not None and bet.state == "cashed":
            # Tell the player how the bet did end (e.g. its auto target was reached first).
            details = {"multiple_x100": bet.multiple_x100, "payout": bet.payout, "mode": bet.mode}
        batch.emit.send(reply_topic, request.gateway_id, CommandReply(
            event_id=f"{request.command_id}.reply", channel_id=request.channel_id, term_id=request.term_id,
            ts=batch.now, trace_id=request.trace_id, gateway_id=request.gateway_id, command_id=request.command_id,
            status="refused", reason=reason, api_order_no=request.api_order_no, bet_id=request.bet_id, **details))
