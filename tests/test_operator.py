"""Operator views end to end: manual start, config changes from the next term, chain renewal,
signed writes, and the views an operator reads."""
from __future__ import annotations

import hashlib
import uuid

import pytest

from harness import LEFT_PRE_START, taking_bets, wait_for
from streams.verify import verify_channel

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
async def pipe(pipeline_factory):
    return await pipeline_factory("operator")


async def place(pipe, channel_id: str, user: str) -> tuple[int, dict]:
    return await pipe.api("POST", "/v1/bets", {"api_order_no": f"op-{uuid.uuid4().hex[:14]}",
                                               "channel_id": channel_id, "user_id": user, "amount": 100,
                                               "currency": "EUR"})


async def test_manual_start_closes_the_window_at_its_receive_time(pipe):
    channel_id = await pipe.create_channel("start", betting_ms=20_000)   # a window nobody would wait out
    await pipe.wait_gateway_channel(channel_id)
    term = await taking_bets(pipe, channel_id, window_left_ms=10_000)
    status, before = await place(pipe, channel_id, "before")
    assert status == 200
    status, started = await pipe.ops("POST", f"/ops/channels/{channel_id}/start")
    assert status == 202
    received = started["received_at"]

    row = await pipe.wait_term(term["term_id"], LEFT_PRE_START, 30)
    assert row["bets_close_at"] == received < term["bets_close_at"]
    assert row["flying_at"] == received + 400
    status, after = await place(pipe, channel_id, "after")
    assert status == 409 and after["reason"] == "betting_closed"
    events = await pipe.rows("SELECT payload FROM event_log WHERE term_id = :t AND type = 'TermStateChanged'",
                             t=term["term_id"])
    assert any('"manual":true' in e["payload"].replace(" ", "") for e in events)
    closed = await pipe.wait_term(term["term_id"], ("closed",), 60)
    bet = (await pipe.rows("SELECT status FROM bet WHERE api_order_no = :o", o=before["api_order_no"]))[0]
    assert bet["status"] == "lost" and closed["crash_x100"] >= 100   # a decision taken before the start stands


async def test_config_change_applies_from_the_next_term(pipe):
    channel_id = await pipe.create_channel("config", betting_ms=1500)
    await pipe.wait_gateway_channel(channel_id)
    term = await taking_bets(pipe, channel_id, window_left_ms=200)
    status, body = await pipe.ops("POST", f"/ops/channels/{channel_id}/config", {"betting_ms": 2500})
    assert status == 202 and body["config"]["betting_ms"] == 2500
    status, bad = await pipe.ops("POST", f"/ops/channels/{channel_id}/config", {"grace_ms": 5000})
    assert status == 400 and "grace_ms" in bad["reason"]
    status, bad = await pipe.ops("POST", f"/ops/channels/{channel_id}/config", {"chain_length": 5})
    assert status == 400

    async def later_terms():
        rows = [t for t in await pipe.terms(channel_id) if t["seq"] > term_seq]
        return rows if len(rows) >= 2 else None
    term_seq = int(term["term_id"].rsplit("-", 1)[1])
    rows = await wait_for(later_terms, 60, "two later terms")
    this = (await pipe.rows("SELECT * FROM crash_term WHERE term_id = :t", t=term["term_id"]))[0]
    assert this["bets_close_at"] - this["created_at"] == 1500          # the running term keeps its config
    assert {t["bets_close_at"] - t["created_at"] for t in rows[1:]} == {2500}
    stored = (await pipe.rows("SELECT config_version, config FROM channel WHERE channel_id = :c", c=channel_id))[0]
    assert stored["config_version"] == 2


async def test_a_new_chain_is_published_before_the_old_one_runs_out(pipe):
    channel_id = await pipe.create_channel("chains", chain_length=3, betting_ms=600, starting_ms=300,
                                           growth_per_ms="0.002", cooldown_ms=200)

    async def second_chain_used():
        rows = [t for t in await pipe.terms(channel_id) if t["chain_no"] == 2 and t["state"] == "closed"]
        return rows if len(rows) >= 2 else None
    await wait_for(second_chain_used, 120, "terms on the second chain")
    terms = await pipe.terms(channel_id)
    chains = {c["chain_no"]: c for c in await pipe.rows("SELECT * FROM fairness_chain WHERE channel_id = :c",
                                                          c=channel_id)}
    assert set(chains) >= {1, 2} and chains[1]["terminator"] != chains[2]["terminator"]
    first_of_2 = next(t for t in terms if t["chain_no"] == 2)
    assert first_of_2["chain_index"] == 1 and first_of_2["prev_hash"] == chains[2]["terminator"]
    assert [t["seq"] for t in terms] == list(range(1, len(terms) + 1))
    assert [(t["chain_no"], t["chain_index"]) for t in terms[:4]] == [(1, 1), (1, 2), (1, 3), (2, 1)]
    for t in terms:
        if t["revealed_hash"]:
            assert hashlib.sha256(bytes.fromhex(t["revealed_hash"])).hexdigest() == t["prev_hash"]
    report = await verify_channel(pipe.db, channel_id)
    assert report["problems"] == [] and report["terms_ok"] >= 5


async def test_operator_writes_need_an_admin_signature(pipe):
    channel_id = await pipe.create_channel("auth")
    # Signed with the operator's (game role) key: forbidden.
    status, body = await pipe.signed(pipe.ops_url(), "operator", "POST", f"/ops/channels/{channel_id}/abort", {})
    assert status == 403 and body["error"] == "forbidden"
    # Not signed at all: unauthorized.
    async with pipe.http.post(f"{pipe.ops_url()}/ops/channels/{channel_id}/abort", json={}) as resp:
        assert resp.status == 401
    status, body = await pipe.ops("POST", "/ops/channels", {"channel_id": "bad id!", "config": {}})
    assert status == 400
    status, body = await pipe.ops("POST", "/ops/channels", {"channel_id": channel_id, "config": {}})
    assert status == 409
    status, body = await pipe.ops("GET", f"/ops/channels/{channel_id}")
    assert status == 200 and body["fairness"][0]["terminator"] and len(body["fairness"][0]["salt"]) == 64
