"""Money leaving the system (DESIGN sections 7 and 9), end to end: seamless-mode bot players
against the reference wallet with faults, the payout adapter, refunds, aborts and a MariaDB
restart. Afterwards every order is credited exactly once and every player's ledger adds up."""
from __future__ import annotations

import asyncio
import json
import random
import subprocess
import uuid
from collections import defaultdict

import pytest

from harness import BIN, REPO, taking_bets, wait_consumed, wait_for
from sql.db import make_engine
from streams.events import TermClosed

pytestmark = pytest.mark.slow

BALANCE = 1_000_000_000
CHANNEL = {"betting_ms": 2000, "starting_ms": 500, "growth_per_ms": "0.0005", "grace_ms": 300,
           "currencies": {"EUR": {"min_bet": 10, "max_bet": 20_000, "max_bets_per_user": 3, "max_win": 10_000_000,
                                  "max_payout_per_term": 1_000_000_000}}}
NO_FAULTS = {"latency_ms": 0, "latency_jitter_ms": 0, "error_rate": 0, "timeout_rate": 0, "timeout_ms": 10_000,
             "drop_rate": 0}


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


async def settle_everything(pipe) -> None:
    """Wait until no debit is unresolved, every term with bets is closed and every payout acked."""
    async def quiet() -> bool:
        pending = await pipe.rows("SELECT COUNT(*) AS n FROM player_debit WHERE state IN ('pending', 'debited')")
        open_bets = await pipe.rows(
            "SELECT COUNT(*) AS n FROM bet b JOIN crash_term t ON t.term_id = b.term_id"
            " WHERE b.status = 'placed' OR t.state <> 'closed'")
        unpaid = await pipe.rows("SELECT COUNT(*) AS n FROM payout_outbox WHERE status <> 'acked'")
        refunds_due = await pipe.rows(
            "SELECT COUNT(*) AS n FROM bet WHERE (status IN ('cancelled', 'voided'))"
            " OR (status = 'rejected' AND debited = 1 AND refund IS NULL)")
        return pending[0]["n"] == open_bets[0]["n"] == unpaid[0]["n"] == refunds_due[0]["n"] == 0
    await wait_for(quiet, 240, "every debit resolved, term closed, payout acked and refund recorded", every=1)


async def check_ledgers(pipe, wallet_db, users: list[str]) -> dict[str, int]:
    """final balance = initial - stakes + cashouts + refunds, for every player, to the cent;
    every payout order credited exactly once; no debit without its bet."""
    from sqlalchemy import text
    async with wallet_db.connect() as conn:
        marks = ",".join(f"'{u}'" for u in users)
        txs = [dict(r._mapping) for r in await conn.execute(text(
            f"SELECT order_no, op, user_id, amount, status FROM wallet_tx WHERE user_id IN ({marks})"))]
        balances = {r.user_id: r.balance for r in await conn.execute(text(
            f"SELECT user_id, balance FROM wallet_account WHERE user_id IN ({marks}) AND currency = 'EUR'"))}
    debits = {t["order_no"]: t for t in txs if t["op"] == "debit" and t["status"] == "ok"}
    credits = defaultdict(list)
    for t in txs:
        if t["op"] == "credit":
            credits[t["order_no"]].append(t)
    bets = await pipe.rows(f"SELECT * FROM bet WHERE user_id IN ({marks})")
    outbox = await pipe.rows(f"SELECT order_no, amount, user_id, status FROM payout_outbox WHERE user_id IN ({marks})")
    # Every payout order credited exactly once, with its amount; no credit without an order.
    for order in outbox:
        assert order["status"] == "acked", order
        rows = credits.get(order["order_no"], [])
        assert len(rows) == 1 and rows[0]["amount"] == order["amount"] and rows[0]["status"] == "ok", (order, rows)
    assert set(credits) <= {o["order_no"] for o in outbox}
    # Every stake taken from a player belongs to a bet the pipeline decided on.
    debited_bets = {b["api_order_no"]: b for b in bets if b["debited"]}
    assert set(debits) == set(debited_bets), set(debits) ^ set(debited_bets)
    flows = {u: {"stakes": 0, "cashouts": 0, "refunds": 0} for u in users}
    for bet in debited_bets.values():
        assert debits[bet["api_order_no"]]["amount"] == bet["amount"]
        flow = flows[bet["user_id"]]
        flow["stakes"] += bet["amount"]
        flow["cashouts"] += bet["payout"] or 0
        flow["refunds"] += bet["refund"] or 0
        assert bet["status"] in ("cashed_out", "lost", "refunded", "rejected"), bet
        if bet["status"] in ("refunded", "rejected"):
            assert bet["refund"] == bet["amount"], bet
    for user in users:
        flow = flows[user]
        expected = BALANCE - flow["stakes"] + flow["cashouts"] + flow["refunds"]
        assert balances.get(user, BALANCE) == expected, (user, flow)
    return {k: sum(f[k] for f in flows.values()) for k in ("stakes", "cashouts", "refunds")}


async def check_house_result(pipe, channel_id: str) -> None:
    """The house result of all TermClosed events equals stakes minus payouts (minus the voided
    stakes refunded), computed from the bets."""
    closed = [r for r, _, _, _ in await pipe.read_topic("game.term", key=channel_id) if isinstance(r, TermClosed)]
    closed = list({c.event_id: c for c in closed}.values())
    bets = await pipe.rows(
        "SELECT b.bet_id, b.amount, b.payout, GROUP_CONCAT(h.status) AS history FROM bet b"
        " JOIN bet_status_history h ON h.bet_id = b.bet_id WHERE b.channel_id = :c"
        " GROUP BY b.bet_id, b.amount, b.payout", c=channel_id)
    stakes = payouts = voided = 0
    for bet in bets:
        history = set(bet["history"].split(","))
        if "cancelled" in history:
            continue            # a cancelled bet is no stake of its term
        stakes += bet["amount"]
        payouts += bet["payout"] or 0
        voided += bet["amount"] if "voided" in history else 0
    assert sum(t["stakes"] for c in closed for t in c.totals.values()) == stakes
    assert sum(t["payouts"] for c in closed for t in c.totals.values()) == payouts
    house = sum(t["house_result"] for c in closed for t in c.totals.values())
    assert house == stakes - payouts - voided, (house, stakes, payouts, voided)


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
