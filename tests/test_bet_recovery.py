"""kill -9 of the worker while a term with more than 1,000 open bets is flying: after the restart
every bet has exactly one outcome, the outbox one row per cashout, the totals are exact and
`replay` agrees with MySQL."""
from __future__ import annotations

import asyncio
import random
import uuid

import pytest

from harness import LEFT_PRE_START, first_ms_at, peek_crash_points, sleep_until, taking_bets
from streams.events import BetCashedOut, TermClosed
from streams.replay import replay_term

pytestmark = pytest.mark.slow

GROWTH = 0.0001
CONFIG = {"betting_ms": 60000, "starting_ms": 1000, "growth_per_ms": str(GROWTH), "max_multiple_x100": 100000,
          "currencies": {"EUR": {"min_bet": 10, "max_bet": 10_000, "max_bets_per_user": 5, "max_win": 100_000_000,
                                 "max_payout_per_term": 10_000_000_000}}}


@pytest.fixture(scope="module")
async def pipe(pipeline_factory):
    return await pipeline_factory("betkill")


async def test_kill9_with_a_thousand_open_bets_in_flight(pipe):
    channel_id = await pipe.create_channel("k", **CONFIG)
    await pipe.wait_gateway_channel(channel_id)
    crash_of = await peek_crash_points(pipe, channel_id, CONFIG)
    # A term that flies past 3x (voiding the others keeps the wait short), with a long window
    # for the bets; the operator starts it once they are placed.
    while True:
        term = await taking_bets(pipe, channel_id, window_left_ms=50_000)
        crash = crash_of(int(term["term_id"].rsplit("-", 1)[1]))
        if crash >= 300:
            break
        status, _ = await pipe.ops("POST", f"/ops/channels/{channel_id}/abort", {"reason": "not this one"})
        assert status == 202
        await pipe.wait_term(term["term_id"], LEFT_PRE_START, 30)
    rng = random.Random(1000)
    semaphore = asyncio.Semaphore(48)
    bets: dict[str, tuple[int, int]] = {}

    async def place(i: int) -> None:
        order = f"k-{uuid.uuid4().hex[:14]}"
        amount, target = rng.randint(10, 10_000), rng.randint(101, 600)
        async with semaphore:
            status, body = await pipe.api("POST", "/v1/bets", {
                "api_order_no": order, "channel_id": channel_id, "user_id": f"p{i % 300}", "amount": amount,
                "currency": "EUR", "auto_cashout_x100": target})
        if status == 200:
            assert body["term_id"] == term["term_id"], body
            bets[order] = (amount, target)

    await asyncio.gather(*(place(i) for i in range(1100)))
    assert len(bets) >= 1000, f"only {len(bets)} bets accepted"
    status, _ = await pipe.ops("POST", f"/ops/channels/{channel_id}/start")
    assert status == 202
    flying = await pipe.wait_term(term["term_id"], ("flying",), 30, every=0.05)
    term = {**term, "flying_at": flying["flying_at"]}

    # Some autos are paid in flight, then the worker dies; the rest is settled after the restart.
    await sleep_until(term["flying_at"] + first_ms_at(150, GROWTH) + 300)
    paid_before = await pipe.rows("SELECT COUNT(*) AS n FROM bet WHERE term_id = :t AND status = 'cashed_out'",
                                  t=term["term_id"])
    pipe.workers[1].kill9()
    pipe.start_worker(1)

    row = await pipe.wait_term(term["term_id"], ("closed",), 180, every=0.5)
    assert row["crash_x100"] == crash
    assert row["crash_at"] == term["flying_at"] + first_ms_at(crash, GROWTH)

    rows = {r["api_order_no"]: r for r in await pipe.rows("SELECT * FROM bet WHERE term_id = :t", t=term["term_id"])}
    assert set(rows) == set(bets)
    expected_payouts = 0
    for order, (amount, target) in bets.items():
        r = rows[order]
        if target <= crash:
            payout = amount * target // 100
            expected_payouts += payout
            assert (r["status"], r["cashout_x100"], r["payout"], r["cashout_mode"]) == (
                "cashed_out", target, payout, "auto"), r
        else:
            assert (r["status"], r["cashout_x100"], r["payout"]) == ("lost", None, None), r
    cashed = {r["bet_id"]: r for r in rows.values() if r["status"] == "cashed_out"}
    outbox = await pipe.rows("SELECT order_no, amount FROM payout_outbox WHERE term_id = :t", t=term["term_id"])
    assert sorted(o["order_no"] for o in outbox) == sorted(f"cashout:{b}" for b in cashed)
    assert all(o["amount"] == cashed[o["order_no"].split(":", 1)[1]]["payout"] for o in outbox)
    terminal = await pipe.rows(
        "SELECT h.bet_id, COUNT(*) AS n FROM bet_status_history h JOIN bet b ON b.bet_id = h.bet_id"
        " WHERE b.term_id = :t AND h.status IN ('cashed_out', 'lost') GROUP BY h.bet_id", t=term["term_id"])
    assert len(terminal) == len(bets) and {t["n"] for t in terminal} == {1}

    stakes = sum(amount for amount, _ in bets.values())
    totals = (await pipe.rows("SELECT * FROM crash_term_totals WHERE term_id = :t", t=term["term_id"]))[0]
    assert (totals["bets"], totals["stakes"], totals["payouts"], totals["house_result"]) == (
        len(bets), stakes, expected_payouts, stakes - expected_payouts)
    events = await pipe.read_topic("game.bet", key=channel_id)
    cashouts: dict[str, set] = {}
    for record, _, _, _ in events:
        if isinstance(record, BetCashedOut) and record.term_id == term["term_id"]:
            cashouts.setdefault(record.bet_id, set()).add((record.event_id, record.multiple_x100, record.payout))
    assert set(cashouts) == set(cashed) and all(len(v) == 1 for v in cashouts.values())
    closed_events = {r.event_id: r for r, _, _, _ in await pipe.read_topic("game.term", key=channel_id)
                     if isinstance(r, TermClosed) and r.term_id == term["term_id"]}
    assert len(closed_events) == 1 and next(iter(closed_events.values())).totals["EUR"]["payouts"] == expected_payouts

    report = await replay_term(pipe.settings, term["term_id"])
    assert report["problems"] == [] and report["bets"] == len(bets), report
    assert paid_before[0]["n"] < len(cashed)   # part of the book was settled after the restart

