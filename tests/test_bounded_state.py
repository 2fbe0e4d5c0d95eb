"""Bounded state (issue 10): the pipeline's api_order_no index forgets the orders of a term once
the sink has recorded that term in MySQL, and a repeat of such an old order still gets its first
answer (from MySQL's unique key), never a second decision."""
from __future__ import annotations

import uuid

import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness import DirectCommands, now_ms, taking_bets, wait_for
from streams.events import PlaceBet

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
async def pipe(pipeline_factory):
    # Orders leave the index 1 s (instead of a minute) after their term is recorded.
    return await pipeline_factory("bounded", env={"CRASH_ORDER_KEEP_MS": "1000"})


async def pruned_orders(pipe) -> float:
    """How many orders the worker has dropped from its index (its /metrics)."""
    async with pipe.http.get(pipe.metrics_url()) as resp:
        text = await resp.text()
    return sum(sample.value for family in text_string_to_metric_families(text)
               if family.name == "crash_orders_pruned" for sample in family.samples
               if sample.name == "crash_orders_pruned_total")


async def place(pipe, channel_id: str, order: str, amount: int) -> tuple[int, dict]:
    return await pipe.api("POST", "/v1/bets", {"api_order_no": order, "channel_id": channel_id, "user_id": "alice",
                                               "amount": amount, "currency": "EUR", "auto_cashout_x100": 150})


async def test_a_repeat_of_an_order_of_a_long_closed_term_gets_its_first_answer(pipe):
    channel_id = await pipe.create_channel("old")
    await pipe.wait_gateway_channel(channel_id)
    term = await taking_bets(pipe, channel_id)
    accepted, refused = f"old-{uuid.uuid4().hex[:10]}", f"old-{uuid.uuid4().hex[:10]}"
    status, first = await place(pipe, channel_id, accepted, 500)
    assert status == 200 and first["term_id"] == term["term_id"], first
    status, first_refusal = await place(pipe, channel_id, refused, 5)          # min_bet is 10
    assert status == 409 and first_refusal["reason"] == "below_min_bet", first_refusal

    # The term ends, the sink records it, the worker forgets its orders.
    await pipe.wait_term(term["term_id"], ("closed",), 90)
    await wait_for(lambda: _at_least(pipe, 2), 60, "the orders of the closed term to be pruned")
    live = await taking_bets(pipe, channel_id)
    assert live["term_id"] != term["term_id"]

    # Repeats, while a new term takes bets: the first answers, not new bets of the new term.
    status, again = await place(pipe, channel_id, accepted, 500)
    assert status == 200, again
    assert (again["bet_id"], again["term_id"]) == (first["bet_id"], first["term_id"])
    status, again_refused = await place(pipe, channel_id, refused, 5)
    assert status == 409 and again_refused["reason"] == "below_min_bet", again_refused
    rows = await pipe.rows("SELECT bet_id, term_id, status FROM bet WHERE channel_id = :c AND api_order_no = :o",
                           c=channel_id, o=accepted)
    assert [(r["bet_id"], r["term_id"]) for r in rows] == [(first["bet_id"], first["term_id"])]


async def test_the_pipeline_refers_a_forgotten_order_back_to_mysql_instead_of_deciding_it_again(pipe):
    channel_id = await pipe.create_channel("refer")
    await pipe.wait_gateway_channel(channel_id)
    term = await taking_bets(pipe, channel_id)
    order = f"ref-{uuid.uuid4().hex[:10]}"
    claimed = now_ms()
    status, first = await place(pipe, channel_id, order, 300)
    assert status == 200, first
    before = await pruned_orders(pipe)
    await pipe.wait_term(term["term_id"], ("closed",), 90)
    await wait_for(lambda: _at_least(pipe, before + 1), 60, "the order to be pruned")
    await taking_bets(pipe, channel_id)

    # The same order sent straight to game.command, as a gateway does with a repeat it claimed
    # long ago: no second decision, but a pointer to the recorded one.
    direct = DirectCommands(pipe)
    await direct.start()
    try:
        command_id = await direct.send(PlaceBet, channel_id, now_ms(), api_order_no=order, user_id="alice",
                                       amount=300, currency="EUR", claimed_at=claimed)
        reply = await direct.reply(command_id)
        assert (reply.status, reply.reason) == ("refused", "order_in_history")
        # A new order claimed now is decided as usual (accepted, or refused by the rules if the
        # window has closed meanwhile), never referred to MySQL.
        fresh = await direct.send(PlaceBet, channel_id, now_ms(), api_order_no=f"new-{uuid.uuid4().hex[:8]}",
                                  user_id="alice", amount=300, currency="EUR", claimed_at=now_ms())
        decided = await direct.reply(fresh)
        assert decided.status == "accepted" or decided.reason in ("betting_closed", "late"), decided
    finally:
        await direct.stop()
    rows = await pipe.rows("SELECT COUNT(*) AS n FROM bet WHERE channel_id = :c AND api_order_no = :o",
                           c=channel_id, o=order)
    assert rows[0]["n"] == 1


async def _at_least(pipe, count: float) -> bool:
    return await pruned_orders(pipe) >= count
