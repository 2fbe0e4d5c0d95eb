"""Property tests (Hypothesis) of the money and settlement rules: streams/money.py and the
cashout book of streams/settlement.py, against brute-force references written out here.

Pure functions, no services: these run in a few seconds.
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams import money
from streams.settlement import Book, BookBet, exit_of

PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
GROWTHS = ("0.00006", "0.0004", "0.002")

amounts = st.integers(min_value=1, max_value=10**9)
multiples = st.integers(min_value=100, max_value=1_000_000)


# ---------------------------------------------------------------- money

@PROPERTY
@given(amount=st.integers(min_value=0, max_value=10**30), multiple=multiples)
def test_payout_is_the_exact_floor_of_amount_times_multiple_in_integers(amount: int, multiple: int) -> None:
    # Far beyond 2^53, where a float would already be off by whole units.
    result = money.payout(amount, multiple)
    assert type(result) is int
    assert result == (Fraction(amount) * multiple / 100).__floor__()
    assert money.payout(amount, 100) == amount


@PROPERTY
@given(amount=amounts, a=multiples, b=multiples)
def test_payout_never_falls_as_the_multiple_rises(amount: int, a: int, b: int) -> None:
    low, high = sorted((a, b))
    assert money.payout(amount, low) <= money.payout(amount, high)


@PROPERTY
@given(amount=amounts, max_payout=st.integers(min_value=0, max_value=10**12))
def test_max_multiple_within_is_the_highest_multiple_that_stays_within_the_cap(amount: int, max_payout: int) -> None:
    x = money.max_multiple_within(amount, max_payout)
    assert type(x) is int
    assert money.payout(amount, x) <= max_payout < money.payout(amount, x + 1)


@PROPERTY
@given(multiple=st.integers(min_value=100, max_value=50_000), growth=st.sampled_from(GROWTHS))
def test_ms_to_reach_is_the_first_millisecond_at_the_multiple(multiple: int, growth: str) -> None:
    g = float(growth)
    t = money.ms_to_reach(multiple, g)
    assert money.multiplier_x100(t, g) >= multiple
    assert t == 0 or money.multiplier_x100(t - 1, g) < multiple


@PROPERTY
@given(t=st.integers(min_value=-5, max_value=200_000), growth=st.sampled_from(GROWTHS))
def test_the_curve_is_integer_hundredths_and_never_falls(t: int, growth: str) -> None:
    g = float(growth)
    now, later = money.multiplier_x100(t, g), money.multiplier_x100(t + 1, g)
    assert type(now) is int and 100 <= now <= later


# ---------------------------------------------------------------- the book against a brute force

@dataclass
class Bet:
    amount: int
    currency: str
    auto: int | None
    max_win_x100: int


@dataclass
class Outcome:
    state: str = "open"
    multiple: int = 0
    mode: str = ""
    payout: int = 0


def reference(bets: list[Bet], caps: dict[str, int], end: int, manual: dict[int, int]) -> list[Outcome]:
    """Step the multiple one hundredth at a time from 1.00x to the crash point `end`.

    At each multiple x, per currency: if the open stake could not reach x within the cap
    (paid + stake * x // 100 > cap), every open bet is forced out at x - 1 (at least 1.00x), the
    last multiple the cap allows; otherwise the bets whose exit is x are paid at x. A manual
    cashout at multiple m is paid after everything due up to m. At the end, open bets are lost.
    """
    out = [Outcome() for _ in bets]
    manual_at: dict[int, list[int]] = {}
    for index, m in manual.items():
        manual_at.setdefault(m, []).append(index)

    def pay(i: int, x: int, mode: str) -> None:
        out[i] = Outcome("cashed", x, mode, bets[i].amount * x // 100)

    for x in range(100, end + 1):
        for currency, cap in [(c, caps.get(c)) for c in sorted({b.currency for b in bets})]:
            open_ = [i for i, b in enumerate(bets) if b.currency == currency and out[i].state == "open"]
            stake = sum(bets[i].amount for i in open_)
            paid = sum(o.payout for o, b in zip(out, bets, strict=True) if b.currency == currency)
            if not open_:
                continue
            if cap is not None and paid + stake * x // 100 > cap:
                for i in open_:
                    pay(i, max(x - 1, 100), "forced")
                continue
            for i in open_:
                exit_x100, exit_mode, _ = exit_of(bets[i].auto, bets[i].max_win_x100)
                if exit_x100 == x:
                    pay(i, x, exit_mode)
        for i in sorted(manual_at.get(x, [])):
            if out[i].state == "open":
                pay(i, x, "manual")
    for o in out:
        if o.state == "open":
            o.state = "lost"
    return out


bet_strategy = st.builds(
    Bet, amount=st.integers(min_value=1, max_value=5000), currency=st.sampled_from(("EUR", "USD")),
    auto=st.one_of(st.none(), st.integers(min_value=101, max_value=900)),
    max_win_x100=st.integers(min_value=101, max_value=1200))


@st.composite
def terms(draw):
    bets = draw(st.lists(bet_strategy, min_size=1, max_size=12))
    caps = {c: draw(st.integers(min_value=1, max_value=40_000)) for c in ("EUR", "USD") if draw(st.booleans())}
    growth = draw(st.sampled_from(GROWTHS))
    end = draw(st.integers(min_value=100, max_value=1000))
    crash_at = money.ms_to_reach(end, float(growth))
    # Manual cashouts: some bets, each at a receive time before the crash.
    manual_times = {i: draw(st.integers(min_value=0, max_value=max(crash_at - 1, 0)))
                    for i in range(len(bets)) if crash_at > 0 and draw(st.integers(0, 3)) == 0}
    # Watermarks the bet stream may carry in between (they must change nothing).
    marks = sorted(draw(st.lists(st.integers(min_value=0, max_value=max(crash_at - 1, 0)), max_size=6)))
    return bets, caps, growth, end, manual_times, marks


def run_book(bets: list[Bet], caps: dict[str, int], growth: str, end: int, manual_times: dict[int, int],
             marks: list[int]) -> list[BookBet]:
    book = Book("t-1")
    book.set_header(0, growth, caps)
    for i, bet in enumerate(bets):
        exit_x100, exit_mode, reason = exit_of(bet.auto, bet.max_win_x100)
        book.add(BookBet(bet_id=f"b{i}", api_order_no=f"o{i}", user_id="u", amount=bet.amount, currency=bet.currency,
                         exit_x100=exit_x100, exit_mode=exit_mode, forced_reason=reason))
    events = [(t, 1, i) for i, t in manual_times.items()] + [(t, 0, -1) for t in marks]
    for t, kind, i in sorted(events):
        if kind == 0:
            book.advance(t)
        else:
            book.cashout(f"b{i}", t, f"cmd-{i}")
    book.settle(end, aborted=False)
    return [book.bets[f"b{i}"] for i in range(len(bets))]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(terms())
def test_the_book_decides_as_the_brute_force_reference(term) -> None:
    bets, caps, growth, end, manual_times, marks = term
    manual = {i: money.multiplier_x100(t, float(growth)) for i, t in manual_times.items()}
    expected = reference(bets, caps, end, manual)
    got = run_book(bets, caps, growth, end, manual_times, marks)
    assert [(b.state, b.multiple_x100, b.mode, b.payout) for b in got] == \
        [(o.state, o.multiple, o.mode, o.payout) for o in expected]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(terms())
def test_totals_balance_to_the_cent_and_the_cap_holds_above_one_x(term) -> None:
    bets, caps, growth, end, manual_times, marks = term
    book = Book("t-1")
    book.set_header(0, growth, caps)
    for i, bet in enumerate(bets):
        exit_x100, exit_mode, reason = exit_of(bet.auto, bet.max_win_x100)
        book.add(BookBet(bet_id=f"b{i}", api_order_no=f"o{i}", user_id="u", amount=bet.amount, currency=bet.currency,
                         exit_x100=exit_x100, exit_mode=exit_mode, forced_reason=reason))
    for i, t in sorted(manual_times.items(), key=lambda item: item[1]):
        book.cashout(f"b{i}", t, f"cmd-{i}")
    _, _, totals = book.settle(end, aborted=False)
    for currency, total in totals.items():
        mine = [b for b in book.bets.values() if b.currency == currency]
        assert all(type(v) is int for v in total.values())
        assert total["stakes"] == sum(b.amount for b in mine)
        assert total["payouts"] == sum(b.payout for b in mine if b.state == "cashed")
        assert total["house_result"] == total["stakes"] - total["payouts"] - total["refunds"]
        cap = caps.get(currency)
        at_one = all(b.multiple_x100 == 100 for b in mine if b.mode == "forced"
                     and b.forced_reason == "max_payout_per_term")
        if cap is not None and not at_one:
            # The force point keeps the term's payouts within its cap (unless even 1.00x passes it).
            assert total["payouts"] <= cap


@settings(max_examples=150, deadline=None)
@given(terms())
def test_an_abort_voids_what_is_open_and_refunds_exactly_the_stakes(term) -> None:
    bets, caps, growth, end, manual_times, marks = term
    book = Book("t-1")
    book.set_header(0, growth, caps)
    for i, bet in enumerate(bets):
        exit_x100, exit_mode, reason = exit_of(bet.auto, bet.max_win_x100)
        book.add(BookBet(bet_id=f"b{i}", api_order_no=f"o{i}", user_id="u", amount=bet.amount, currency=bet.currency,
                         exit_x100=exit_x100, exit_mode=exit_mode, forced_reason=reason))
    _, ended, totals = book.settle(end, aborted=True)
    assert all(b.state == "voided" for b in ended)
    for currency, total in totals.items():
        voided = sum(b.amount for b in book.bets.values() if b.currency == currency and b.state == "voided")
        assert total["refunds"] == voided
        assert total["house_result"] == total["stakes"] - total["payouts"] - voided
