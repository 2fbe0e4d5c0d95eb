"""Roles and scoping (DESIGN section 11), end to end: a key of one operator group acts only on that
group's channels, jackpots and data; readers read, admins write; anonymous callers see only public
data; Faust's built-in table and router views are off."""
from __future__ import annotations

import os
import uuid

import pytest

from harness import create_jackpot, now_ms

pytestmark = pytest.mark.slow

GROUP_KEYS = {"ga-game": "game@ga", "ga-admin": "admin@ga", "ga-reader": "reader@ga", "gb-game": "game@gb"}


@pytest.fixture(scope="module")
async def pipe(pipeline_factory):
    extra = ",".join(f"{key}:{uuid.uuid4().hex}:{role}" for key, role in GROUP_KEYS.items())
    pipe = await pipeline_factory("scoping", env={"CRASH_API_KEYS": f"{os.environ['CRASH_API_KEYS']},{extra}"})
    return pipe


@pytest.fixture(scope="module")
async def channels(pipe):
    a = await pipe.create_channel("a", operator_group="ga")
    b = await pipe.create_channel("b", operator_group="gb")
    await pipe.wait_gateway_channel(a)
    await pipe.wait_gateway_channel(b)
    return a, b


def bet(channel_id: str) -> dict:
    return {"api_order_no": f"sc-{uuid.uuid4().hex[:12]}", "channel_id": channel_id, "user_id": "p1",
            "amount": 100, "currency": "EUR"}


async def test_a_group_key_bets_only_on_its_groups_channels(pipe, channels):
    a, b = channels
    status, body = await pipe.signed(pipe.gateway_url, "ga-game", "POST", "/v1/bets", bet(b))
    assert status == 403 and "operator group ga" in body["reason"], body
    status, body = await pipe.signed(pipe.gateway_url, "ga-game", "POST", f"/v1/channels/{b}/bets/x-1/cancel",
                                     {"user_id": "p1"})
    assert status == 403, body
    status, body = await pipe.signed(pipe.gateway_url, "ga-game", "GET", f"/v1/channels/{b}/bets/x-1")
    assert status == 403, body
    # Its own channel: decided by the pipeline (accepted, or refused for the betting window).
    status, body = await pipe.signed(pipe.gateway_url, "ga-game", "POST", "/v1/bets", bet(a))
    assert status in (200, 409) and body.get("status") in ("accepted", "refused"), body
    status, body = await pipe.signed(pipe.gateway_url, "ga-reader", "POST", "/v1/bets", bet(a))
    assert status == 403 and "role" in body["reason"]


async def test_a_group_admin_acts_only_on_its_group(pipe, channels):
    a, b = channels
    status, body = await pipe.signed(pipe.ops_url(), "ga-admin", "POST", f"/ops/channels/{b}/abort", {"reason": "x"})
    assert status == 403 and "operator group ga" in body["reason"], body
    status, body = await pipe.signed(pipe.ops_url(), "ga-admin", "POST", f"/ops/channels/{a}/config",
                                     {"operator_group": "gb"})
    assert status == 403, body
    status, body = await pipe.signed(pipe.ops_url(), "ga-admin", "POST", "/ops/channels",
                                     {"channel_id": f"{pipe.name}-c", "config": {"operator_group": "gb"}})
    assert status == 403, body
    base = {"currency": "EUR", "seed": 100, "cap": 10**6, "trigger": "external"}
    status, body = await pipe.signed(pipe.ops_url(), "ga-admin", "POST", "/ops/jackpots", {"definition": {
        **base, "jackpot_id": f"{pipe.name}-sb", "tier": "shared", "operator_group": "gb"}})
    assert status == 403, body
    status, body = await pipe.signed(pipe.ops_url(), "ga-admin", "POST", "/ops/jackpots", {"definition": {
        **base, "jackpot_id": f"{pipe.name}-mega", "tier": "mega"}})
    assert status == 403, body                       # a mega jackpot belongs to no single group
    status, body = await pipe.signed(pipe.ops_url(), "ga-admin", "POST", "/ops/jackpots", {"definition": {
        **base, "jackpot_id": f"{pipe.name}-sa", "tier": "shared", "operator_group": "ga"}})
    assert status == 202, body
    status, body = await pipe.signed(pipe.ops_url(), "ga-admin", "POST", f"/ops/channels/{a}/start", {})
    assert status == 202, body


async def test_jackpot_api_keys_feed_their_groups_pools_and_read_the_mega(pipe, channels):
    shared_a = await create_jackpot(pipe, jackpot_id=f"{pipe.name}-ja", tier="shared", operator_group="ga",
                                    currency="EUR", rate_bps=100, seed=100, cap=10**6, trigger="external")
    mega = await create_jackpot(pipe, jackpot_id=f"{pipe.name}-jm", tier="mega", currency="EUR", rate_bps=100,
                                seed=100, cap=10**6, trigger="external")
    body = {"contributionId": f"c-{uuid.uuid4().hex[:8]}", "gameId": "g", "amount": 5, "currency": "EUR"}
    status, answer = await pipe.signed(pipe.gateway_url, "gb-game", "POST",
                                       f"/jackpot/{shared_a['jackpot_id']}/contribute", body)
    assert status == 403, answer
    status, answer = await pipe.signed(pipe.gateway_url, "gb-game", "POST", f"/jackpot/{mega['jackpot_id']}/contribute",
                                       body)
    assert status == 200 and answer["value"] == 105, answer          # every game may feed the mega pool
    status, answer = await pipe.signed(pipe.gateway_url, "gb-game", "POST", f"/jackpot/{mega['jackpot_id']}/award",
                                       {"playerId": "p"}, headers={"Idempotency-Key": "k1"})
    assert status == 403, answer                                      # ... but not award it
    status, answer = await pipe.signed(pipe.gateway_url, "ga-game", "POST",
                                       f"/jackpot/{shared_a['jackpot_id']}/contribute", body)
    assert status == 200, answer


async def test_readers_see_their_groups_payouts_and_anonymous_callers_only_public_data(pipe, channels):
    a, b = channels
    async with pipe.db.begin() as conn:
        from sqlalchemy import text
        for channel_id in (a, b):
            await conn.execute(text(
                "INSERT INTO payout_outbox (order_no, kind, channel_id, term_id, user_id, currency, amount, status,"
                " next_at, created_at, updated_at) VALUES (:o, 'cashout', :c, 't', 'p', 'EUR', 1, 'failed', :n, :n,"
                " :n)"), {"o": f"cashout:scope-{channel_id}", "c": channel_id, "n": now_ms()})
    status, body = await pipe.signed(pipe.ops_url(), "ga-reader", "GET", "/ops/payouts?limit=1000")
    assert status == 200 and {p["channel_id"] for p in body["payouts"]} == {a}, body
    status, body = await pipe.signed(pipe.ops_url(), "admin", "GET", "/ops/payouts?limit=1000")
    assert {a, b} <= {p["channel_id"] for p in body["payouts"]}
    status, body = await pipe.signed(pipe.ops_url(), "ga-admin", "POST", f"/ops/payouts/cashout:scope-{b}/retry", {})
    assert status == 403, body
    assert pipe.http is not None
    async with pipe.http.get(f"{pipe.ops_url()}/ops/payouts") as resp:
        assert resp.status == 401 and (await resp.json())["reason"]
    async with pipe.http.get(f"{pipe.ops_url()}/ops/channels/{a}") as resp:
        assert resp.status == 200                                      # public: config, fairness, results
    # Faust's built-in views would show bets, orders and the live books: off everywhere.
    for base in (pipe.ops_url(), pipe.metrics_url().removesuffix("/metrics")):
        for path in ("/table/orders/", "/table/term_books/", "/router/", "/graph/"):
            async with pipe.http.get(base + path) as resp:
                assert resp.status == 404, (base, path, resp.status)
