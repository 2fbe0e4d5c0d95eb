"""Bet Service (seed: 下注/取消/幂等): places and cancels bets, forwards manual cashouts.

Decisions depend on the gateway's receive time, never on processing time (DESIGN section 5):
a bet is accepted iff it was received in its term's betting window and the limits of
DESIGN section 8 hold. The first decision on an api_order_no is final and is the answer to
every repeat. A bet received in time but reaching the pipeline after the term's bets were
sealed (grace_ms after bets_close_at) is refused as `late` rather than changing a settled book.

Manual cashouts are checked here (owner, term flying, not after the crash, not behind the
bet stream's watermark) and forwarded on game.bet, ordered with the bets, to the Cashout
Service, which decides and answers.
"""
from __future__ import annotations

from agents import term_jackpot
from agents.context import CommandContext
from streams import ids, metrics, money
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
)
from tables import Order, orders, user_bets

BET_TYPES = ("manual", "auto")


def order_key(channel_id: str, api_order_no: str) -> str:
    return f"{channel_id}/{api_order_no}"


def _user_orders(ctx: CommandContext, user_id: str, term_id: str) -> list[str]:
    """The user's live bets in the term (one entry per user and channel, reset by a new term)."""
    entry = ctx.batch.staged.get(user_bets, f"{ctx.channel_id}/{user_id}")
    return list(entry["orders"]) if entry and entry["term_id"] == term_id else []


def _set_user_orders(ctx: CommandContext, user_id: str, term_id: str, placed: list[str]) -> None:
    ctx.batch.staged.set(user_bets, f"{ctx.channel_id}/{user_id}", {"term_id": term_id, "orders": placed})


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
    if len(_user_orders(ctx, cmd.user_id, term.term_id)) >= limits["max_bets_per_user"]:
        return "max_bets_per_user"
    return ""


async def place_bet(ctx: CommandContext, cmd: PlaceBet) -> None:
    # The one identifier rule of every door (streams/ids.py): a command that did not come
    # through the gateway is held to it too, before anything is stored under its ids.
    if not (ids.is_reference(cmd.api_order_no) and ids.is_reference(cmd.user_id)):
        metrics.BET_DECISIONS.labels(outcome="rejected", reason="invalid_id").inc()
        return refuse(ctx, cmd, "invalid_id", api_order_no=cmd.api_order_no[:64])
    staged = ctx.batch.staged
    key = order_key(cmd.channel_id, cmd.api_order_no)
    order = staged.get(orders, key)
    if order is not None:
        metrics.BET_DECISIONS.labels(outcome="repeat", reason="").inc()
        _answer(ctx, cmd, order)
        return
    reason = _placement_refusal(ctx, cmd)
    term = ctx.term()
    term_id = term.term_id if term is not None and reason not in ("betting_closed",) else ""
    order = Order(
        api_order_no=cmd.api_order_no, channel_id=cmd.channel_id, user_id=cmd.user_id, amount=cmd.amount,
        currency=cmd.currency, bet_type=cmd.bet_type, received_at=cmd.ts, command_id=cmd.event_id,
        status="rejected" if reason else "placed", reason=reason, term_id=term_id,
        auto_cashout_x100=cmd.auto_cashout_x100, debited=cmd.debited)
    if reason:
        staged.set(orders, key, order)
        ctx.emit_bet(BetRejected(
            event_id=f"{cmd.event_id}.rejected", channel_id=cmd.channel_id, term_id=term_id, ts=cmd.ts,
            trace_id=cmd.trace_id, api_order_no=cmd.api_order_no, user_id=cmd.user_id, amount=cmd.amount,
            currency=cmd.currency, reason=reason, bet_type=cmd.bet_type,
            auto_cashout_x100=cmd.auto_cashout_x100, debited=cmd.debited))
        metrics.BET_DECISIONS.labels(outcome="rejected", reason=reason).inc()
        _answer(ctx, cmd, order)
        return
    assert term is not None
    limits = ctx.channel.config["currencies"][cmd.currency]
    order.bet_id = cmd.event_id
    order.max_win_x100 = money.max_multiple_within(cmd.amount, limits["max_win"])
    _set_user_orders(ctx, cmd.user_id, term.term_id, _user_orders(ctx, cmd.user_id, term.term_id) + [cmd.api_order_no])
    staged.set(orders, key, order)
    term.last_bet_at = max(term.last_bet_at, cmd.ts)
    ctx.save_term(term)
    ctx.emit_bet(BetPlaced(
        event_id=f"{order.bet_id}.placed", channel_id=cmd.channel_id, term_id=term.term_id, ts=cmd.ts,
        trace_id=cmd.trace_id, bet_id=order.bet_id, api_order_no=cmd.api_order_no, user_id=cmd.user_id,
        amount=cmd.amount, currency=cmd.currency, bet_type=cmd.bet_type, max_win_x100=order.max_win_x100,
        auto_cashout_x100=cmd.auto_cashout_x100, debited=cmd.debited))
    term_jackpot.feed(ctx, term, cmd, order)
    metrics.BET_DECISIONS.labels(outcome="accepted", reason="").inc()
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
    _set_user_orders(ctx, order.user_id, term.term_id,
                     [n for n in _user_orders(ctx, order.user_id, term.term_id) if n != order.api_order_no])
    ctx.emit_bet(BetCancelled(
        event_id=f"{order.bet_id}.cancelled", channel_id=cmd.channel_id, term_id=order.term_id, ts=cmd.ts,
        trace_id=cmd.trace_id, bet_id=order.bet_id, api_order_no=order.api_order_no, user_id=order.user_id,
        amount=order.amount, currency=order.currency, debited=order.debited))
    metrics.BET_DECISIONS.labels(outcome="cancelled", reason="").inc()
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
    ctx.emit_bet(CashoutRequested(
        event_id=f"{cmd.event_id}.request", channel_id=cmd.channel_id, term_id=term.term_id, ts=t,
        trace_id=cmd.trace_id, bet_id=order.bet_id, api_order_no=order.api_order_no, user_id=order.user_id,
        requested_at=t, command_id=cmd.event_id, gateway_id=cmd.gateway_id))
