"""Bet Service (seed: 下注/取消/幂等): places and cancels bets, forwards manual cashouts.

Decisions depend on the gateway's receive time, never on processing time (DESIGN section 5):
a bet is accepted iff it was received in its term's betting window and the limits of
DESIGN section 8 hold. The first decision on an api_order_no is final and is the answer to
every repeat. A bet received in time but reaching the pipeline after the term's bets were
sealed (grace_ms after bets_close_at) is refused as `late` rather than changing a settled book.

Manual cashouts are checked here (owner, term flying, not after the crash, not behind the
bet stream's watermark) and written on game.bet, ordered with the bets, as the cashout book's
input; the book (agents/cashout_service.py) decides and answers in the same batch.

Bounded state (issue 10): the `orders` index keeps the orders of the terms that MySQL has not
recorded yet. Each order belongs to the term whose settlement follows its events on game.bet
(`Order.group`); when the sink has written that settlement, everything before it on the
partition is in MySQL and it sends TermRecorded: CRASH_ORDER_KEEP_MS later (channel time, so
that a cancel or cashout received in time but processed late still finds its order) the orders
of that term are deleted and the channel's `history_before` moves to their newest receive time.
A repeat of an order the index no longer has is recognised by the gateway's claim time
(`PlaceBet.claimed_at`, MySQL's api_order row): claimed at or before `history_before`, it may
be a pruned order, and the answer is `order_in_history` (no decision, nothing stored), upon
which the gateway answers the first decision from MySQL's bet row (web/gateway.py). A repeat
claimed later cannot be a pruned order.
"""
from __future__ import annotations

import logging

from agents import refund_service, term_jackpot
from agents.context import CommandContext
from streams import ids, metrics, money
from streams.app import settings
from streams.events import (
    BetCancelled,
    BetPlaced,
    BetRejected,
    CancelBet,
    CashoutBet,
    CashoutRequested,
    Command,
    CommandReply,
    PlaceBet,
    TermRecorded,
)
from tables import Order, order_key, orders
from tables.memory import TableMemory

log = logging.getLogger(__name__)

BET_TYPES = ("manual", "auto")
IN_HISTORY = "order_in_history"

class OrderIndex:
    """Process memory over the (bounded) orders table, rebuilt from it after a rebalance:
    which orders a TermRecorded prunes, and each player's live bets in a term (for
    max_bets_per_user; before, a `user_bets` table entry per player, read and written with every
    bet: one more RocksDB read, JSON document and changelog message per bet, crash-bench)."""

    def __init__(self) -> None:
        self.groups: dict[str, dict[int, list[str]]] = {}         # channel -> group (term seq) -> keys
        # (channel, term) -> user -> orders, as plain tuples: the garbage collector stops tracking
        # a tuple of strings once it has seen it, a set is walked by every full collection, and a
        # term holds one per player (see streams.settlement.Bets).
        self.live: dict[tuple[str, str], dict[str, tuple[str, ...]]] = {}

    @classmethod
    def of_table(cls) -> OrderIndex:
        index = cls()
        for key, order in orders.items():
            index.add(key, order)
        log.info("orders index: %d orders of %d channels", sum(len(k) for g in index.groups.values()
                                                                for k in g.values()), len(index.groups))
        return index

    def add(self, key: str, order: Order) -> None:
        self.groups.setdefault(order.channel_id, {}).setdefault(order.group, []).append(key)
        if order.status == "placed":
            users = self.live.setdefault((order.channel_id, order.term_id), {})
            held = users.get(order.user_id, ())
            if order.api_order_no not in held:
                users[order.user_id] = (*held, order.api_order_no)

    def user_orders(self, channel_id: str, term_id: str, user_id: str) -> tuple[str, ...]:
        """The player's live orders in the term (a read: it stores nothing for a new player)."""
        return self.live.get((channel_id, term_id), {}).get(user_id, ())

    def cancelled(self, order: Order) -> None:
        users = self.live.get((order.channel_id, order.term_id), {})
        held = users.get(order.user_id)
        if held is not None:
            users[order.user_id] = tuple(no for no in held if no != order.api_order_no)

    def pruned(self, order: Order) -> None:
        self.live.pop((order.channel_id, order.term_id), None)


order_index = TableMemory(OrderIndex.of_table)


def _remember(ctx: CommandContext, key: str, order: Order) -> None:
    ctx.batch.staged.set(orders, key, order)
    order_index.get().add(key, order)


def _prune_group(ctx: CommandContext) -> int:
    """The term whose TermSettled comes after an order decided now (see the module docstring)."""
    term = ctx.term()
    if term is None:
        return ctx.channel.seq + 1
    return term.seq + 1 if term.book_sealed else term.seq


async def forget_recorded(ctx: CommandContext, cmd: TermRecorded) -> None:
    """The sink recorded the settlement of term `cmd.seq`: its orders go after the keep time."""
    recorded = ctx.channel.recorded or []
    if not any(seq == cmd.seq for seq, _ in recorded):
        ctx.channel.recorded = [*recorded, [cmd.seq, ctx.channel.clock]]
    await prune_due(ctx, cmd)


async def prune_due(ctx: CommandContext, cmd: object = None) -> None:
    """Prune the orders of the recorded terms whose keep time is over (run on every tick)."""
    channel = ctx.channel
    while channel.recorded and channel.recorded[0][1] + settings.order_keep_ms <= channel.clock:
        seq = channel.recorded[0][0]
        channel.recorded = channel.recorded[1:]
        _prune(ctx, seq)


def _prune(ctx: CommandContext, seq: int) -> None:
    index = order_index.get()
    groups = index.groups.get(ctx.channel_id, {})
    channel = ctx.channel
    pruned = 0
    for group in sorted(g for g in groups if g <= seq):
        for key in groups.pop(group):
            order = ctx.batch.staged.get(orders, key)
            if order is None:
                continue
            channel.history_before = max(channel.history_before, order.received_at)
            ctx.batch.staged.delete(orders, key)
            index.pruned(order)
            pruned += 1
    if pruned:
        metrics.ORDERS_PRUNED.inc(pruned)


def refuse(ctx: CommandContext, cmd: Command, reason: str, **details) -> None:
    ctx.reply(CommandReply(
        event_id=f"{cmd.event_id}.reply", channel_id=cmd.channel_id, term_id=details.pop("term_id", ""),
        ts=ctx.batch.now, trace_id=cmd.trace_id, gateway_id=cmd.gateway_id, command_id=cmd.event_id,
        status="refused", reason=reason, **details))


def _answer(ctx: CommandContext, cmd: Command, order: Order) -> None:
    """The decision recorded for an order, as the answer to `cmd`."""
    ctx.reply(CommandReply(
        event_id=f"{cmd.event_id}.reply", channel_id=cmd.channel_id, term_id=order.term_id, ts=ctx.batch.now,
        trace_id=cmd.trace_id, gateway_id=cmd.gateway_id, command_id=cmd.event_id,
        status="refused" if order.status == "rejected" else "accepted", reason=order.reason,
        api_order_no=order.api_order_no, bet_id=order.bet_id, amount=order.amount, currency=order.currency))


def _placement_refusal(ctx: CommandContext, cmd: PlaceBet) -> str:
    config = ctx.channel.config
    limits = config["currencies"].get(cmd.currency)
    if limits is None:
        return "unsupported_currency"
    if cmd.amount <= 0:
        return "invalid_amount"
    if cmd.amount < limits["min_bet"]:
        return "below_min_bet"
    if cmd.amount > limits["max_bet"]:
        return "above_max_bet"
    if cmd.bet_type not in BET_TYPES:
        return "invalid_bet_type"
    target = cmd.auto_cashout_x100
    if (target is None and cmd.bet_type == "auto") or (
            target is not None and not money.MIN_AUTO_CASHOUT_X100 <= target <= config["max_multiple_x100"]):
        return "invalid_auto_cashout"
    term = ctx.term()
    if term is None or not term.created_at <= cmd.ts < term.bets_close_at:
        return "betting_closed"
    if term.aborted:
        return "term_aborted"
    if ctx.channel.clock >= term.bets_close_at + term.config["grace_ms"]:
        return "late"
    if len(order_index.get().user_orders(cmd.channel_id, term.term_id, cmd.user_id)) >= limits["max_bets_per_user"]:
        return "max_bets_per_user"
    return ""


async def place_bet(ctx: CommandContext, cmd: PlaceBet) -> None:
    # The one identifier rule of every door (streams/ids.py): a command that did not come
    # through the gateway is held to it too, before anything is stored under its ids.
    if not (ids.is_reference(cmd.api_order_no) and ids.is_reference(cmd.user_id)):
        metrics.child(metrics.BET_DECISIONS, "rejected", "invalid_id").inc()
        return refuse(ctx, cmd, "invalid_id", api_order_no=cmd.api_order_no[:64])
    staged = ctx.batch.staged
    key = order_key(cmd.channel_id, cmd.api_order_no)
    order = staged.get(orders, key)
    if order is not None:
        metrics.child(metrics.BET_DECISIONS, "repeat", "").inc()
        _answer(ctx, cmd, order)
        return
    if cmd.claimed_at and cmd.claimed_at <= ctx.channel.history_before:
        # Maybe an order pruned with its recorded term: MySQL holds its first decision.
        metrics.child(metrics.BET_DECISIONS, "repeat", IN_HISTORY).inc()
        return refuse(ctx, cmd, IN_HISTORY, api_order_no=cmd.api_order_no)
    reason = _placement_refusal(ctx, cmd)
    term = ctx.term()
    term_id = term.term_id if term is not None and reason not in ("betting_closed",) else ""
    order = Order(
        api_order_no=cmd.api_order_no, channel_id=cmd.channel_id, user_id=cmd.user_id, amount=cmd.amount,
        currency=cmd.currency, bet_type=cmd.bet_type, received_at=cmd.ts, command_id=cmd.event_id,
        status="rejected" if reason else "placed", reason=reason, term_id=term_id,
        auto_cashout_x100=cmd.auto_cashout_x100, debited=cmd.debited, group=_prune_group(ctx))
    if reason:
        _remember(ctx, key, order)
        rejected = BetRejected(
            event_id=f"{cmd.event_id}.rejected", channel_id=cmd.channel_id, term_id=term_id, ts=cmd.ts,
            trace_id=cmd.trace_id, api_order_no=cmd.api_order_no, user_id=cmd.user_id, amount=cmd.amount,
            currency=cmd.currency, reason=reason, bet_type=cmd.bet_type,
            auto_cashout_x100=cmd.auto_cashout_x100, debited=cmd.debited)
        ctx.emit_bet(rejected)
        refund_service.request(ctx.batch, rejected)
        metrics.child(metrics.BET_DECISIONS, "rejected", reason).inc()
        _answer(ctx, cmd, order)
        return
    assert term is not None
    limits = ctx.channel.config["currencies"][cmd.currency]
    order.bet_id = cmd.event_id
    order.max_win_x100 = money.max_multiple_within(cmd.amount, limits["max_win"])
    _remember(ctx, key, order)
    term.last_bet_at = max(term.last_bet_at, cmd.ts)
    ctx.save_term(term)
    ctx.emit_book(BetPlaced(
        event_id=f"{order.bet_id}.placed", channel_id=cmd.channel_id, term_id=term.term_id, ts=cmd.ts,
        trace_id=cmd.trace_id, bet_id=order.bet_id, api_order_no=cmd.api_order_no, user_id=cmd.user_id,
        amount=cmd.amount, currency=cmd.currency, bet_type=cmd.bet_type, max_win_x100=order.max_win_x100,
        auto_cashout_x100=cmd.auto_cashout_x100, debited=cmd.debited))
    term_jackpot.feed(ctx, term, cmd, order)
    metrics.child(metrics.BET_DECISIONS, "accepted", "").inc()
    _answer(ctx, cmd, order)


async def cancel_bet(ctx: CommandContext, cmd: CancelBet) -> None:
    staged = ctx.batch.staged
    key = order_key(cmd.channel_id, cmd.api_order_no)
    order = staged.get(orders, key)
    if order is None or order.status == "rejected":
        return refuse(ctx, cmd, "unknown_bet", api_order_no=cmd.api_order_no)
    if order.user_id != cmd.user_id:
        return refuse(ctx, cmd, "not_your_bet", api_order_no=cmd.api_order_no)
    if order.status == "cancelled":
        return _answer(ctx, cmd, order)
    term = ctx.staged_term(order.term_id)
    if term is None or term.state != "pre_start" or cmd.ts >= term.bets_close_at:
        return refuse(ctx, cmd, "betting_closed", api_order_no=cmd.api_order_no, bet_id=order.bet_id)
    if ctx.channel.clock >= term.bets_close_at + term.config["grace_ms"]:
        return refuse(ctx, cmd, "late", api_order_no=cmd.api_order_no, bet_id=order.bet_id)
    order.status = "cancelled"
    staged.set(orders, key, order)
    order_index.get().cancelled(order)
    cancelled = BetCancelled(
        event_id=f"{order.bet_id}.cancelled", channel_id=cmd.channel_id, term_id=order.term_id, ts=cmd.ts,
        trace_id=cmd.trace_id, bet_id=order.bet_id, api_order_no=order.api_order_no, user_id=order.user_id,
        amount=order.amount, currency=order.currency, debited=order.debited)
    ctx.emit_book(cancelled)
    refund_service.request(ctx.batch, cancelled)
    metrics.child(metrics.BET_DECISIONS, "cancelled", "").inc()
    _answer(ctx, cmd, order)


async def request_cashout(ctx: CommandContext, cmd: CashoutBet) -> None:
    order = ctx.batch.staged.get(orders, order_key(cmd.channel_id, cmd.api_order_no))
    if order is None or order.status == "rejected":
        return refuse(ctx, cmd, "unknown_bet", api_order_no=cmd.api_order_no)
    if order.user_id != cmd.user_id:
        return refuse(ctx, cmd, "not_your_bet", api_order_no=cmd.api_order_no)
    details = {"api_order_no": order.api_order_no, "bet_id": order.bet_id, "term_id": order.term_id}
    if order.status == "cancelled":
        return refuse(ctx, cmd, "cancelled", **details)
    term = ctx.staged_term(order.term_id)
    if term is None:
        return refuse(ctx, cmd, "term_over", **details)
    # A receive time ahead of this worker's clock (clock skew within the tolerance) counts as
    # "now": a cashout can never be paid a multiple the curve has not reached yet.
    t = min(cmd.ts, ctx.batch.now)
    if t < term.flying_at or term.state in ("pre_start", "starting"):
        return refuse(ctx, cmd, "not_flying", **details)
    if term.aborted and t >= (term.ended_at or 0):
        return refuse(ctx, cmd, "term_aborted", **details)
    if term.crash_at is not None and t >= term.crash_at:
        return refuse(ctx, cmd, "crashed", **details)
    if term.book_sealed or t < term.last_mark:
        return refuse(ctx, cmd, "late", **details)
    term.cashout_horizon = max(term.cashout_horizon, t)
    ctx.save_term(term)
    ctx.emit_book(CashoutRequested(
        event_id=f"{cmd.event_id}.request", channel_id=cmd.channel_id, term_id=term.term_id, ts=t,
        trace_id=cmd.trace_id, bet_id=order.bet_id, api_order_no=order.api_order_no, user_id=order.user_id,
        requested_at=t, command_id=cmd.event_id, gateway_id=cmd.gateway_id))
