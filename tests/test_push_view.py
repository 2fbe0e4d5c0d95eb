"""The push gateway's views (web/push_view.py) as pure reducers: worked out by hand, no services."""
from __future__ import annotations

from streams import jackpot_events as J
from streams.events import (
    BetCashedOut,
    BetPlaced,
    BetsSealed,
    ChainPublished,
    ChannelConfigured,
    TermClosed,
    TermCrashed,
    TermCreated,
    TermSettled,
    TermStateChanged,
    TermTick,
)
from web.push_view import HISTORY, SNAPSHOT_BETS, ChannelView, JackpotView, public_term

CH = "ch-1"
CONFIG = {"growth_per_ms": "0.0001", "edge_bps": 100, "max_multiple_x100": 5000, "jackpots": ["jp-1"]}


def tag(user_id: str) -> str:
    return f"t-{user_id}"


def created(seq: int) -> TermCreated:
    return TermCreated(event_id=f"{CH}-{seq}.created", channel_id=CH, term_id=f"{CH}-{seq}", ts=seq * 1000, seq=seq,
                       chain_no=1, chain_index=seq, prev_hash="ab" * 32, created_at=seq * 1000,
                       bets_close_at=seq * 1000 + 500, flying_at=seq * 1000 + 700, config=CONFIG)


def flying(seq: int) -> TermStateChanged:
    return TermStateChanged(event_id=f"{CH}-{seq}.flying", channel_id=CH, term_id=f"{CH}-{seq}", ts=1, state="flying",
                            bets_close_at=seq * 1000 + 500, flying_at=seq * 1000 + 700, state_version=3)


def crashed(seq: int, crash: int) -> TermCrashed:
    return TermCrashed(event_id=f"{CH}-{seq}.crashed", channel_id=CH, term_id=f"{CH}-{seq}", ts=2, crash_x100=crash,
                       crash_at=seq * 1000 + 900, flying_at=seq * 1000 + 700, chain_no=1, chain_index=seq,
                       revealed_hash="cd" * 32, salt="ef" * 32, hmac_digest="01" * 64, state_version=4)


def placed(seq: int, n: int, user: str = "alice-1", amount: int = 100) -> BetPlaced:
    return BetPlaced(event_id=f"b{seq}-{n}.placed", channel_id=CH, term_id=f"{CH}-{seq}", ts=3, bet_id=f"b{seq}-{n}",
                     api_order_no=f"o{n}", user_id=user, amount=amount, currency="EUR", bet_type="auto",
                     max_win_x100=5000, auto_cashout_x100=150)


def view() -> ChannelView:
    v = ChannelView(CH, tag)
    v.apply(ChannelConfigured(event_id="cfg", channel_id=CH, ts=0, config=CONFIG, config_version=1))
    v.apply(ChainPublished(event_id="chain", channel_id=CH, ts=0, chain_no=1, length=100, terminator="00" * 32,
                           salt="ef" * 32))
    return v


def test_the_crash_point_enters_with_the_crash_and_never_from_the_sealed_bets():
    v = view()
    v.apply(created(1))
    v.apply(flying(1))
    sealed = BetsSealed(event_id="s", channel_id=CH, term_id=f"{CH}-1", ts=5, end_at=1900, end_x100=321,
                        flying_at=1700, growth_per_ms="0.0001", caps={})
    assert v.apply(sealed) == []
    assert "crash_x100" not in (v.snapshot()["term"] or {})
    # Even a term dict that holds one is shown without it while running.
    assert "crash_x100" not in public_term({"state": "flying", "crash_x100": 321})
    ops = v.apply(crashed(1, 321))
    assert [op["k"] for _, op in ops] == ["term", "hist"]
    assert v.snapshot()["term"]["crash_x100"] == 321
    assert v.proofs[f"{CH}-1"]["terminator"] == "00" * 32 and v.proofs[f"{CH}-1"]["prev_hash"] == "ab" * 32


def test_every_event_applied_twice_changes_nothing():
    events = [created(1), placed(1, 1), flying(1),
              TermTick(event_id="t", channel_id=CH, term_id=f"{CH}-1", ts=4, multiple_x100=120, elapsed_ms=100),
              BetCashedOut(event_id="c", channel_id=CH, term_id=f"{CH}-1", ts=5, bet_id="b1-1", api_order_no="o1",
                           user_id="alice-1", amount=100, currency="EUR", multiple_x100=150, payout=150, mode="auto",
                           cashed_at=1, order_no="cashout:b1-1"),
              crashed(1, 200),
              TermSettled(event_id="st", channel_id=CH, term_id=f"{CH}-1", ts=6, totals={}, bets=1),
              TermClosed(event_id="cl", channel_id=CH, term_id=f"{CH}-1", ts=7, closed_at=8, totals={}, bets=1,
                         state_version=5)]
    once = view()
    for event in events:
        once.apply(event)
    twice = view()
    for event in events:
        twice.apply(event)
    for event in events:     # a restarted gateway replays from before what it saw
        assert twice.apply(event) == [], type(event).__name__
    assert twice.to_dict() == once.to_dict()
    assert once.bets["b1-1"]["status"] == "cashed_out" and once.term["state"] == "closed"
    assert [h["term_id"] for h in once.history] == [f"{CH}-1"]


def test_a_bet_seen_before_its_term_is_kept_and_frames_name_no_player():
    v = view()
    assert v.apply(placed(1, 1, user="bob-77")) == []            # game.bet read before game.term
    ops = v.apply(created(1))
    bet = next(op["bet"] for _, op in ops if op["k"] == "bet")
    assert bet == {"bet_id": "b1-1", "term_id": f"{CH}-1", "name": "bo***77", "tag": "t-bob-77", "amount": 100,
                   "currency": "EUR", "auto": True, "status": "open"}


def test_history_keeps_the_last_fifty_newest_first_and_settled_bets_are_lost():
    v = view()
    for seq in range(1, HISTORY + 6):
        v.apply(created(seq))
        v.apply(placed(seq, 1))
        v.apply(flying(seq))
        v.apply(crashed(seq, 100 + seq))
        ops = v.apply(TermSettled(event_id=f"st{seq}", channel_id=CH, term_id=f"{CH}-{seq}", ts=6, totals={}, bets=1))
        assert [op["k"] for _, op in ops] == ["settled"] and v.bets[f"b{seq}-1"]["status"] == "lost"
    assert len(v.history) == HISTORY and v.history[0]["seq"] == HISTORY + 5 and v.history[-1]["seq"] == 6
    assert set(v.proofs) == {h["term_id"] for h in v.history}


def test_a_snapshot_of_a_huge_round_holds_the_largest_bets_and_the_clients_own():
    v = view()
    v.apply(created(1))
    for n in range(SNAPSHOT_BETS + 100):
        v.apply(placed(1, n, user=f"p{n}", amount=1000 + n))
    v.apply(placed(1, 99_999, user="me", amount=1))
    snapshot = v.snapshot(tag("me"))
    assert snapshot["bets_count"] == SNAPSHOT_BETS + 101
    assert len(snapshot["bets"]) == SNAPSHOT_BETS + 1 and snapshot["bets"][-1]["tag"] == "t-me"
    assert min(b["amount"] for b in snapshot["bets"][:-1]) == 1100


def test_a_jackpot_ticker_never_goes_back_and_masks_its_winners():
    j = JackpotView("jp-1", tag)
    j.load({"jackpot_id": "jp-1", "name": "Pot", "currency": "EUR", "cycle": 3, "value": 5_000, "cap": 10_000,
            "last_hit": {"award_id": "a2", "amount": 9_000, "cycle": 2, "at": 1,
                         "winners": [{"rank": 1, "user_id": "winner-9", "bonus_amount": 9_000}]}})
    assert j.public()["last_hit"]["winners"] == [{"rank": 1, "name": "wi***-9", "tag": "t-winner-9",
                                                  "bonus_amount": 9_000}]
    common = {"channel_id": "", "term_id": "", "jackpot_id": "jp-1"}
    old = J.JackpotContributed(event_id="k1", ts=1, cycle=3, items=[], total_micro=0, value_micro=4_000_000_000,
                               currency="EUR", **common)
    assert j.apply(old) == [] and j.public()["value"] == 5_000          # replayed from before the view
    new = J.JackpotContributed(event_id="k2", ts=2, cycle=3, items=[], total_micro=0, value_micro=6_000_999_999,
                               currency="EUR", **common)
    assert j.apply(new)[0][1]["jackpot"]["value"] == 6_000              # floored: never above the pool
    stale_hit = J.JackpotHit(event_id="h1", ts=1, award_id="a1", cycle=1, trigger="must_hit_by", amount=7_000,
                             currency="EUR", overflow_micro=0, **common)
    assert j.apply(stale_hit) == [] and j.public()["last_hit"]["award_id"] == "a2", "an older hit replaces none"
    hit = J.JackpotHit(event_id="h3", ts=3, award_id="a3", cycle=3, trigger="must_hit_by", amount=6_000,
                       currency="EUR", overflow_micro=0, **common)
    assert [op["k"] for _, op in j.apply(hit)] == ["jackpot", "jackpot_hit"]
    assert j.apply(hit) == []
