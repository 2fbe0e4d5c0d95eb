"""kill -9 of the worker while a term is flying (DESIGN section 13): after a restart the term
ends at its committed crash point on its original schedule, no term is skipped or duplicated,
and the rows in MySQL are right."""
from __future__ import annotations

import uuid

import pytest

from harness import first_ms_at, now_ms, wait_for
from streams import fairness
from streams.events import TermCrashed, TermCreated
from tables.chain_store import ChainStore

pytestmark = pytest.mark.slow

GROWTH = 0.0001      # 2.5x after 9.2 s: room to kill and restart mid-flight


@pytest.fixture(scope="module")
async def pipe(pipeline_factory):
    return await pipeline_factory("recovery")


async def test_kill9_while_flying_then_restart(pipe, base_settings):
    channel_id = await pipe.create_channel("r", growth_per_ms=str(GROWTH), max_multiple_x100=100000,
                                           betting_ms=1500, starting_ms=400)
    await pipe.wait_gateway_channel(channel_id)
    store = ChainStore(base_settings.secret_db_url)   # the test peeks at the future, as only an auditor could
    chain = await store.get(channel_id, 1)
    await store.close()

    def crash_of(index: int) -> int:
        return fairness.crash_point_x100(chain.hash_at(index), chain.salt, 100, 100000)

    async def long_flight_taking_bets():
        term = await pipe.live_term(channel_id)
        if not term or term["state"] != "pre_start" or term["bets_close_at"] - now_ms() < 800:
            return None
        index = int(term["term_id"].rsplit("-", 1)[1])
        return term if crash_of(index) >= 250 else None

    term = await wait_for(long_flight_taking_bets, 120, "a term that will fly past 2.5x", every=0.05)
    crash = crash_of(int(term["term_id"].rsplit("-", 1)[1]))
    bets = {"paid": (150, "u-paid"), "exact": (crash, "u-exact"), "lost": (crash + 1, "u-lost")}
    orders = {}
    for name, (target, user) in bets.items():
        order = f"rec-{uuid.uuid4().hex[:10]}"
        status, body = await pipe.api("POST", "/v1/bets", {
            "api_order_no": order, "channel_id": channel_id, "user_id": user, "amount": 1000, "currency": "EUR",
            "auto_cashout_x100": target})
        assert status == 200 and body["term_id"] == term["term_id"], body
        orders[name] = order

    await pipe.wait_term(term["term_id"], ("flying",), 30, every=0.05)

    pipe.workers[1].kill9()
    pipe.start_worker(1)

    row = await pipe.wait_term(term["term_id"], ("closed",), 120, every=0.25)

    # Ended at its committed crash point, on its original schedule.
    assert row["crash_x100"] == crash
    assert row["flying_at"] == term["flying_at"]
    assert row["crash_at"] == term["flying_at"] + first_ms_at(crash, GROWTH)
    # The auto cashouts at or below the crash point were honoured, the one above is lost.
    outcome = {name: (await pipe.rows("SELECT status, cashout_x100, payout FROM bet WHERE api_order_no = :o",
                                      o=order))[0] for name, order in orders.items()}
    assert outcome["paid"] == {"status": "cashed_out", "cashout_x100": 150, "payout": 1500}
    assert outcome["exact"] == {"status": "cashed_out", "cashout_x100": crash, "payout": 10 * crash}
    assert outcome["lost"] == {"status": "lost", "cashout_x100": None, "payout": None}
    totals = (await pipe.rows("SELECT * FROM crash_term_totals WHERE term_id = :t", t=term["term_id"]))[0]
    assert (totals["bets"], totals["stakes"], totals["payouts"]) == (3, 3000, 1500 + 10 * crash)
    assert totals["house_result"] == 3000 - 1500 - 10 * crash

    # The channel goes on: no term skipped, none duplicated.
    await wait_for(lambda: _closed_after(pipe, channel_id, row["seq"]), 120, "a later term to close")
    terms = await pipe.terms(channel_id)
    assert [t["seq"] for t in terms] == list(range(1, len(terms) + 1))
    assert [t["chain_index"] for t in terms] == [t["seq"] for t in terms]
    created = [r for r, _, _, _ in await pipe.read_topic("game.term", key=channel_id) if isinstance(r, TermCreated)]
    by_seq: dict[int, set] = {}
    for event in created:
        by_seq.setdefault(event.seq, set()).add((event.term_id, event.created_at, event.chain_index))
    assert all(len(variants) == 1 for variants in by_seq.values()), "a term was created twice differently"
    crashed = [r for r, _, _, _ in await pipe.read_topic("game.term", key=channel_id)
               if isinstance(r, TermCrashed) and r.term_id == term["term_id"]]
    assert crashed and all(c.crash_at == row["crash_at"] and c.crash_x100 == crash for c in crashed)
    assert len(await pipe.rows("SELECT * FROM crash_term WHERE channel_id = :c AND chain_index = :i",
                               c=channel_id, i=row["chain_index"])) == 1


async def _closed_after(pipe, channel_id: str, seq: int) -> bool:
    return any(t["seq"] > seq and t["state"] == "closed" for t in await pipe.terms(channel_id))
