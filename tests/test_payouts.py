"""Money leaving the system (DESIGN sections 7 and 9), end to end: seamless-mode bot players
against the reference wallet with faults, the payout adapter, refunds, aborts and a MariaDB
restart. Afterwards every order is credited exactly once and every player's ledger adds up."""
from __future__ import annotations

import asyncio
import json
import random
import subprocess
import uuid

import pytest

from harness import (
    BALANCE,
    BIN,
    NO_FAULTS,
    REPO,
    check_house_result,
    check_ledgers,
    settle_everything,
    taking_bets,
    wait_consumed,
    wait_for,
)
from sql.db import make_engine

pytestmark = pytest.mark.slow

CHANNEL = {"betting_ms": 2000, "starting_ms": 500, "growth_per_ms": "0.0005", "grace_ms": 300,
           "currencies": {"EUR": {"min_bet": 10, "max_bet": 20_000, "max_bets_per_user": 3, "max_win": 10_000_000,
                                  "max_payout_per_term": 1_000_000_000}}}


@pytest.fixture(scope="module")
async def pipe(pipeline_factory):
    pipeline = await pipeline_factory("payouts")
    await pipeline.start_wallet()
    pipeline.start_payout()
    return pipeline


@pytest.fixture(scope="module")
async def wallet_db(base_settings):
    engine = make_engine(base_settings.wallet_db_url, pool_size=2)
    yield engine
    await engine.dispose()


async def run_bots(pipe, channel_id: str, seed: int, players: int, seconds: int) -> dict:
    report = pipe.tmp / f"bots-{seed}.json"
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "crash-bots"), "--mode", "seamless", "--players", str(players), "--rate", "25",
        "--duration", str(seconds), "--channels", channel_id, "--seed", str(seed), "--balance", str(BALANCE),
        "--refill-below", "1", "--gateway", pipe.gateway_url, "--quiet", "--report-json", str(report),
        env=pipe.env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    output, _ = await proc.communicate()
    assert proc.returncode == 0, output.decode(errors="replace")[-3000:]
    return json.loads(report.read_text())


async def test_chaos_wallet_every_order_credited_once_and_ledgers_add_up(pipe, wallet_db):
    channel_id = await pipe.create_channel("chaos", **CHANNEL)
    await pipe.wait_gateway_channel(channel_id)
    seed = random.randrange(10**6, 10**7)
    players = 12
    async with pipe.wallet() as admin:
        await admin.set_faults(**{**NO_FAULTS, "error_rate": 0.3, "timeout_rate": 0.1, "drop_rate": 0.1,
                                  "timeout_ms": 2500})
        try:
            report = await run_bots(pipe, channel_id, seed, players, seconds=35)
        finally:
            await admin.set_faults(**NO_FAULTS)
    assert report["bets"]["accepted"] > 30, report["bets"]
    await settle_everything(pipe)
    users = [f"bot-{seed}-{i}" for i in range(players)]
    flows = await check_ledgers(pipe, wallet_db, users)
    assert flows["stakes"] > 0 and flows["cashouts"] > 0
    faults = await pipe.rows("SELECT COUNT(*) AS n FROM payout_outbox WHERE retry_count > 0")
    assert faults[0]["n"] > 0, "the faults never hit a payout: the test proved nothing"
    await check_house_result(pipe, channel_id)


async def test_mariadb_restart_mid_run_loses_nothing(pipe, wallet_db):
    channel_id = await pipe.create_channel("dbdown", **CHANNEL)
    await pipe.wait_gateway_channel(channel_id)
    seed = random.randrange(10**6, 10**7)
    players = 10
    bots = asyncio.create_task(run_bots(pipe, channel_id, seed, players, seconds=30))
    await wait_for(lambda: _bets_seen(pipe, channel_id, 20), 60, "bets flowing before the restart")
    restart = await asyncio.create_subprocess_exec(str(REPO / "stack"), "restart-mariadb", "test",
                                                   stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    output, _ = await restart.communicate()
    assert restart.returncode == 0, output.decode()
    report = await bots
    assert report["bets"]["accepted"] > 0
    await settle_everything(pipe)
    await wait_consumed(pipe, ["game.bet", "game.term", "game.payout"], timeout=120)
    # Nothing lost: every bet event in Kafka reached MySQL.
    placed = {r.api_order_no for r, _, _, _ in await pipe.read_topic("game.bet", key=channel_id)
              if type(r).__name__ == "BetPlaced"}
    stored = {r["api_order_no"] for r in await pipe.rows(
        "SELECT api_order_no FROM bet WHERE channel_id = :c AND bet_id IS NOT NULL", c=channel_id)}
    assert placed == stored
    await check_ledgers(pipe, wallet_db, [f"bot-{seed}-{i}" for i in range(players)])
    await check_house_result(pipe, channel_id)


async def _bets_seen(pipe, channel_id: str, count: int) -> bool:
    rows = await pipe.rows("SELECT COUNT(*) AS n FROM bet WHERE channel_id = :c", c=channel_id)
    return rows[0]["n"] >= count


async def test_abort_refunds_every_open_stake_exactly_once(pipe, wallet_db):
    channel_id = await pipe.create_channel("abort", **{**CHANNEL, "betting_ms": 3000})
    await pipe.wait_gateway_channel(channel_id)
    users = [f"ab-{uuid.uuid4().hex[:8]}" for _ in range(4)]
    async with pipe.wallet() as admin:
        for user in users:
            await admin.set_balance(user, "EUR", BALANCE)
    term = await taking_bets(pipe, channel_id, window_left_ms=1500)
    orders = []
    for i, user in enumerate(users * 2):
        status, body = await pipe.signed(pipe.gateway_url, "player-page", "POST", "/v1/player/bets", {
            "api_order_no": f"ab-{uuid.uuid4().hex[:12]}", "channel_id": channel_id, "user_id": user,
            "amount": 1000 + i, "currency": "EUR"})
        assert status == 200 and body["term_id"] == term["term_id"], body
        orders.append(body["api_order_no"])
    status, body = await pipe.ops("POST", f"/ops/channels/{channel_id}/abort", {"reason": "test void"})
    assert status == 202, body

    async def refunded():
        rows = await pipe.rows("SELECT status, refund, amount FROM bet WHERE term_id = :t", t=term["term_id"])
        return rows if rows and all(r["status"] == "refunded" for r in rows) else None
    rows = await wait_for(refunded, 120, "every stake of the aborted term refunded")
    assert len(rows) == len(orders) and all(r["refund"] == r["amount"] for r in rows)
    row = (await pipe.rows("SELECT * FROM crash_term WHERE term_id = :t", t=term["term_id"]))[0]
    assert row["aborted"] == 1 and row["revealed_hash"] and row["abort_reason"] == "test void"
    await settle_everything(pipe)
    flows = await check_ledgers(pipe, wallet_db, users)
    assert flows["stakes"] == flows["refunds"] and flows["cashouts"] == 0
    async with pipe.wallet() as admin:
        assert [await admin.balance(u, "EUR") for u in users] == [BALANCE] * len(users)
    refunds = await pipe.rows("SELECT order_no FROM payout_outbox WHERE term_id = :t AND kind = 'refund'",
                              t=term["term_id"])
    assert len(refunds) == len(orders)
    totals = (await pipe.rows("SELECT * FROM crash_term_totals WHERE term_id = :t", t=term["term_id"]))[0]
    assert totals["refunds"] == totals["stakes"] and totals["house_result"] == 0
    assert subprocess.run([str(BIN / "crash-verify"), "--channel", channel_id, "--term", term["term_id"]],
                          env=pipe.env, capture_output=True, timeout=60).returncode == 0
