"""The cashout book's rules (streams.settlement), on their own: exits, force points, manual
cashouts racing autos, settlement and totals. Expected values are worked out by hand."""
from __future__ import annotations

import math

from streams import money
from streams.settlement import Book, BookBet, bet_from_placed, exit_of

G = 0.0004
FLYING_AT = 1_000_000


def t_at(multiple_x100: int) -> int:
    """When the curve reaches a multiple (independent of streams.money)."""
    t = 0
    while math.floor(100 * math.exp(G * t)) < multiple_x100:
        t += 1
    return FLYING_AT + t


def bet(bet_id: str, amount: int, auto: int | None = None, max_win_x100: int = 10**9, currency: str = "EUR") -> BookBet:
    exit_x100, mode, reason = exit_of(auto, max_win_x100)
    return BookBet(bet_id=bet_id, api_order_no=f"o-{bet_id}", user_id=f"u-{bet_id}", amount=amount,
                   currency=currency, exit_x100=exit_x100, exit_mode=mode, forced_reason=reason)


def book(*bets: BookBet, caps: dict[str, int] | None = None) -> Book:
    b = Book("t-1")
    for one in bets:
        assert b.add(one)
    b.set_header(FLYING_AT, str(G), caps or {"EUR": 10**12})
    return b


def test_autos_are_paid_in_order_up_to_the_watermark_and_at_their_exact_target():
    b = book(bet("a", 1000, 150), bet("b", 333, 200), bet("c", 500, 250))
    paid = b.advance(t_at(200))
    assert [(x.bet_id, x.multiple_x100, x.payout, x.mode) for x in paid] == [
        ("a", 150, 1500, "auto"), ("b", 200, 666, "auto")]
    assert paid[0].cashed_at == t_at(150)
    assert b.advance(t_at(200)) == []              # nothing twice
    cashed, ended, totals = b.settle(end_x100=249, aborted=False)
    assert cashed == [] and [x.bet_id for x in ended] == ["c"] and ended[0].state == "lost"
    assert totals == {"EUR": {"bets": 3, "stakes": 1833, "payouts": 2166, "refunds": 0, "house_result": -333}}


def test_settlement_pays_autos_at_or_below_the_crash_point_that_no_watermark_reached():
    b = book(bet("exact", 1000, 300), bet("above", 1000, 301), bet("manual", 1000))
    cashed, ended, totals = b.settle(end_x100=300, aborted=False)
    assert [(x.bet_id, x.multiple_x100) for x in cashed] == [("exact", 300)]
    assert {x.bet_id for x in ended} == {"above", "manual"}
    assert totals["EUR"]["payouts"] == 3000 and totals["EUR"]["house_result"] == 0


def test_a_manual_cashout_loses_to_an_auto_target_reached_earlier():
    b = book(bet("a", 1000, 150), bet("m", 1000))
    decision, cashed = b.cashout("a", t_at(180), "cmd-1")
    assert decision.status == "refused" and decision.reason == "already_cashed_out"
    assert decision.bet.multiple_x100 == 150 and [x.bet_id for x in cashed] == ["a"]
    decision, cashed = b.cashout("m", t_at(180) + 5, "cmd-2")
    expected = money.multiplier_x100(t_at(180) + 5 - FLYING_AT, G)
    assert decision.status == "accepted" and decision.bet.multiple_x100 == expected
    assert decision.bet.payout == 10 * expected and decision.bet.mode == "manual"
    # The same request again is answered the same way; another request is refused.
    again, cashed = b.cashout("m", t_at(180) + 5, "cmd-2")
    assert again.status == "accepted" and cashed == []
    other, _ = b.cashout("m", t_at(190), "cmd-3")
    assert other.reason == "already_cashed_out"


def test_max_win_forces_a_bet_out_where_its_payout_reaches_the_limit():
    placed = bet("big", 10_000, None, max_win_x100=money.max_multiple_within(10_000, 25_000))
    assert placed.exit_x100 == 250 and placed.exit_mode == "forced" and placed.forced_reason == "max_win"
    b = book(placed)
    paid = b.advance(t_at(260))
    assert [(x.multiple_x100, x.payout, x.mode, x.forced_reason) for x in paid] == [(250, 25_000, "forced", "max_win")]


def test_the_force_point_caps_the_term_payout_and_takes_every_open_bet():
    # Open stake 20000; cap 50000; an auto at 1.50x on 2000 pays 3000 first.
    bets = [bet(f"m{i}", 2000) for i in range(10)] + [bet("auto", 2000, 150)]
    b = book(*bets, caps={"EUR": 50_000})
    paid = b.advance(t_at(300))
    assert paid[0].bet_id == "auto" and paid[0].multiple_x100 == 150
    forced = paid[1:]
    assert len(forced) == 10 and {(x.multiple_x100, x.mode, x.forced_reason) for x in forced} == {
        (235, "forced", "max_payout_per_term")}
    assert sum(x.payout for x in paid) == 50_000
    assert len({x.cashed_at for x in forced}) == 1 and forced[0].cashed_at == t_at(235)


def test_no_force_when_the_crash_comes_first_and_other_currencies_are_apart():
    b = book(bet("eur", 20_000), bet("usd", 20_000, currency="USD"), caps={"EUR": 50_000, "USD": 10**9})
    assert b.advance(t_at(240)) == []              # 20000 * 2.40 = 48000 <= 50000
    cashed, ended, totals = b.settle(end_x100=245, aborted=False)
    assert cashed == [] and {x.bet_id for x in ended} == {"eur", "usd"}
    b2 = book(bet("eur", 20_000), bet("usd", 20_000, currency="USD"), caps={"EUR": 50_000, "USD": 10**9})
    cashed, _, _ = b2.settle(end_x100=400, aborted=False)
    assert [(x.bet_id, x.multiple_x100) for x in cashed] == [("eur", 250)]   # only EUR passed its cap


def test_abort_voids_open_bets_and_keeps_paid_ones():
    b = book(bet("paid", 1000, 120), bet("open", 1000, 500))
    b.advance(t_at(130))
    cashed, ended, totals = b.settle(end_x100=140, aborted=True)
    assert [x.state for x in ended] == ["voided"]
    assert totals == {"EUR": {"bets": 2, "stakes": 2000, "payouts": 1200, "refunds": 1000, "house_result": -200}}


def test_cancelled_bets_count_nowhere_and_rebuilding_gives_the_same_book():
    b = book(bet("keep", 1000, 150), bet("gone", 5000, 150))
    assert b.cancel("gone").state == "cancelled" and b.cancel("gone") is None
    b.advance(t_at(160))
    rebuilt = Book("t-1")
    for one in b.bets.values():
        rebuilt.load(BookBet(**one._asdict()))
    rebuilt.set_header(FLYING_AT, str(G), {"EUR": 10**12})
    assert rebuilt.settle(100, False)[2] == b.settle(100, False)[2] == {
        "EUR": {"bets": 1, "stakes": 1000, "payouts": 1500, "refunds": 0, "house_result": -500}}


def test_bet_from_placed_reads_the_event():
    class Placed:
        bet_id, api_order_no, user_id, amount, currency = "b", "o", "u", 100, "EUR"
        auto_cashout_x100, max_win_x100, ts = 180, 150, 1_700
    made = bet_from_placed(Placed)
    assert (made.exit_x100, made.exit_mode, made.forced_reason) == (150, "forced", "max_win")
    assert made.placed_at == 1_700


def test_the_podium_is_the_best_cashouts_per_currency_ties_to_the_earlier_bet():
    bets = [bet("late-tie", 100, 200), bet("early-tie", 100, 200), bet("best", 100, 250), bet("low", 100, 110),
            bet("lost", 100, 400), bet("usd", 100, 120, currency="USD")]
    bets = [one._replace(placed_at=1_000 - i) for i, one in enumerate(bets)]   # later in the list, received earlier
    bets[0], bets[1] = bets[0]._replace(placed_at=20), bets[1]._replace(placed_at=10)
    b = book(*bets, caps={"EUR": 10**12, "USD": 10**12})
    b.settle(end_x100=300, aborted=False)
    podium = b.podium()
    assert [x.bet_id for x in podium["EUR"]] == ["best", "early-tie", "late-tie"]
    assert [x.bet_id for x in podium["USD"]] == ["usd"]
    assert Book("empty").podium() == {}
