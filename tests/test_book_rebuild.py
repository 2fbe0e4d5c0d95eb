"""A term's cashout book rebuilt from the orders table (agents/cashout_service.py), as after a
kill -9 or a rebalance, is the book the decisions kept: the same bets in the same states, and
from there the same payouts and totals. The book has no table of its own: each bet's entry is
its order, into which a cashout writes its fields (end to end: tests/test_recovery.py)."""
from __future__ import annotations

from agents import cashout_service
from streams import money
from streams.events import BetPlaced
from streams.settlement import Book, bet_from_placed
from tables import Order, TermBook, order_key

GROWTH = "0.0004"
FLYING_AT = 1_000_000
CAPS = {"EUR": 100_000}


def placed(name: str, amount: int, auto: int | None, max_win_x100: int = 10**9) -> BetPlaced:
    return BetPlaced(event_id=f"{name}.placed", channel_id="c", term_id="t1", ts=900_000 + len(name), trace_id="",
                     bet_id=name, api_order_no=f"o-{name}", user_id=f"u-{name}", amount=amount, currency="EUR",
                     bet_type="auto" if auto else "manual", max_win_x100=max_win_x100, auto_cashout_x100=auto)


def order_of(bet: BetPlaced) -> Order:
    """The order the Bet Service stores with a BetPlaced."""
    return Order(api_order_no=bet.api_order_no, channel_id="c", user_id=bet.user_id, amount=bet.amount,
                 currency=bet.currency, bet_type=bet.bet_type, received_at=bet.ts, command_id=bet.bet_id,
                 status="placed", term_id="t1", bet_id=bet.bet_id, auto_cashout_x100=bet.auto_cashout_x100,
                 max_win_x100=bet.max_win_x100)


def at(multiple_x100: int) -> int:
    return FLYING_AT + money.ms_to_reach(multiple_x100, float(GROWTH))


def test_the_book_rebuilt_from_the_orders_is_the_book_kept_by_the_decisions(monkeypatch):
    bets = [placed("auto", 1000, 150), placed("capped", 1000, None, max_win_x100=180), placed("manual", 2000, None),
            placed("cancelled", 500, 300), placed("late", 3000, 400), placed("open", 20_000, None)]
    kept = Book("t1")
    table = {}
    for bet in bets:
        assert kept.add(bet_from_placed(bet))
        table[order_key("c", bet.api_order_no)] = order_of(bet)
    kept.cancel("cancelled")
    table[order_key("c", "o-cancelled")].status = "cancelled"
    kept.set_header(FLYING_AT, GROWTH, CAPS)
    cashed = kept.advance(at(190))
    decision, more = kept.cashout("manual", at(200), "cmd-manual")
    assert decision.status == "accepted"
    cashed += more
    for bet in cashed:
        key = order_key("c", bet.api_order_no)
        table[key] = cashout_service.record_cashout(table[key], bet)
    states = {bet_id: (b.state, b.mode, b.forced_reason) for bet_id, b in kept.bets.items()}
    assert states == {"auto": ("cashed", "auto", ""), "capped": ("cashed", "forced", "max_win"),
                      "manual": ("cashed", "manual", ""), "cancelled": ("cancelled", "", ""),
                      "late": ("open", "", ""), "open": ("open", "", "max_win")}

    table["c/o-rejected"] = Order(api_order_no="o-rejected", channel_id="c", user_id="u", amount=1, currency="EUR",
                                  bet_type="manual", received_at=1, command_id="x", status="rejected",
                                  reason="below_min_bet", term_id="t1")
    monkeypatch.setattr(cashout_service, "orders", table)
    monkeypatch.setattr(cashout_service, "term_books", {
        "t1": TermBook(term_id="t1", channel_id="c", flying_at=FLYING_AT, growth_per_ms=GROWTH, caps=CAPS),
        "t0": TermBook(term_id="t0", channel_id="c", sealed=True)})
    rebuilt = cashout_service._rebuild()
    assert list(rebuilt) == ["t1"]
    assert rebuilt["t1"].bets == kept.bets

    # From here both books pay the same: the 20,000 open stake is forced out at the term's cap.
    assert [b.bet_id for b in rebuilt["t1"].advance(at(400))] == [b.bet_id for b in kept.advance(at(400))] == ["late"]
    assert rebuilt["t1"].settle(1000, aborted=False) == kept.settle(1000, aborted=False)
    assert {b.bet_id: b.forced_reason for b in kept.bets.values() if b.state == "cashed"}["open"] == \
        "max_payout_per_term"
