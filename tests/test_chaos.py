"""Chaos (DESIGN section 7): bots play many short terms on two channels against a faulty wallet,
while the broker, Redis and MariaDB are killed with -9 and restarted, then a worker and the
payout adapter. Afterwards every accepted bet has exactly one outcome, every credit happened
once, each player's wallet ledger is initial - stakes + payouts + refunds to the cent, the house
identity holds per channel, and a signed request captured before the faults and replayed after
them was refused. The gap in bets after each fault is printed (and written to
var/test/chaos.json).

The servers here are the `chaos` profile's own (`./stack infra up chaos`, other ports and data):
killing them cannot disturb anything else that runs on the test profile's servers.
"""
from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import time

import pytest
from sqlalchemy.engine import make_url

from harness import (
    BALANCE,
    BIN,
    LOGS,
    NO_FAULTS,
    REPO,
    Pipeline,
    check_house_result,
    check_ledgers,
    now_ms,
    settle_everything,
    wait_for,
)
from sql.db import make_engine
from streams.settings import Settings
from web.signing import sign_headers

# The payout tests' channel: short terms, fast growth.
CHANNEL = {"betting_ms": 2000, "starting_ms": 500, "growth_per_ms": "0.0005", "grace_ms": 300,
           "currencies": {"EUR": {"min_bet": 10, "max_bet": 20_000, "max_bets_per_user": 3, "max_win": 10_000_000,
                                  "max_payout_per_term": 1_000_000_000}}}

pytestmark = pytest.mark.slow

PLAYERS = 14
FAULT_EVERY_S = 13          # the next fault once the pipeline has recovered, at least this long after the last
OUTAGE_S = 3                # how long a killed server stays down


def stack(*args: str, timeout: float = 240) -> str:
    done = subprocess.run([str(REPO / "stack"), *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def profile_env(profile: str) -> dict[str, str]:
    env = {}
    for line in stack("env", profile).splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        env[name] = subprocess.run(["bash", "-c", f"printf %s {value}"], capture_output=True, text=True).stdout
    return env


def settings_with(env: dict[str, str]) -> Settings:
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        return Settings()
    finally:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="module")
async def chaos(tmp_path_factory):
    stack("infra", "up", "chaos", timeout=600)
    env = profile_env("chaos")
    base = settings_with(env)
    pipe = Pipeline("chaos", base, tmp_path_factory.mktemp("chaos"), env=env)
    try:
        await pipe.start(workers=2)
        await pipe.start_wallet()
        pipe.start_payout()
        yield pipe, base
    finally:
        await pipe.close()
        stack("infra", "down", "chaos", timeout=300)


async def accepted_after(pipe, channel_ids: list[str], since_ms: int) -> int | None:
    rows = await pipe.rows("SELECT MIN(received_at) AS t FROM bet WHERE status <> 'rejected' AND received_at > :s"
                           " AND channel_id IN :c", s=since_ms, c=tuple(channel_ids))
    return rows[0]["t"]


async def keep_workers_alive(pipe) -> list[str]:
    """What an orchestrator does: a worker that exited (its watchdog, or a broker it lost) is started
    again. Returns the workers it restarted."""
    restarted = []
    for index, proc in pipe.workers.items():
        if not proc.alive:
            pipe.start_worker(index)
            restarted.append(f"worker-{index}")
    return restarted


async def test_kill_broker_redis_mariadb_worker_and_payouts_while_bots_play(chaos):
    pipe, base = chaos
    channels = [await pipe.create_channel(suffix, **CHANNEL) for suffix in ("c1", "c2")]
    for channel_id in channels:
        await pipe.wait_gateway_channel(channel_id)
    seed = random.randrange(10**6, 10**7)
    report = pipe.tmp / "bots.json"
    async with pipe.wallet() as admin:
        await admin.set_faults(**{**NO_FAULTS, "error_rate": 0.2, "timeout_rate": 0.05, "drop_rate": 0.05,
                                  "timeout_ms": 2000})
    bots = await asyncio.create_subprocess_exec(
        str(BIN / "crash-bots"), "--mode", "seamless", "--players", str(PLAYERS), "--rate", "20",
        "--channels", ",".join(channels), "--seed", str(seed),
        "--balance", str(BALANCE), "--refill-below", "1", "--gateway", pipe.gateway_url, "--quiet",
        "--report-json", str(report), env=pipe.env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        started = now_ms()
        await wait_for(lambda: accepted_after(pipe, channels, started), 90, "the bots' first accepted bet")

        # A signed bet captured now, to be replayed after every restart.
        key_id, secret = "operator", pipe.api_keys["operator"][0]
        captured = json.dumps({"api_order_no": f"replay-{seed}", "channel_id": channels[0], "user_id": "replayer",
                               "amount": 100, "currency": "EUR"}).encode()
        captured_headers = {**sign_headers(key_id, secret, "POST", "/v1/bets", captured),
                            "Content-Type": "application/json"}
        assert pipe.http is not None
        async with pipe.http.post(pipe.gateway_url + "/v1/bets", data=captured, headers=captured_headers) as resp:
            assert resp.status in (200, 409, 503), await resp.text()      # its nonce is claimed: it was verified

        faults = [("kafka", "server"), ("redis", "server"), ("mariadb", "server"), ("worker-2", "process"),
                  ("payout", "process")]
        gaps: dict[str, float] = {}
        restarts: list[str] = []
        last_fault = time.monotonic()
        for name, kind in faults:
            await asyncio.sleep(max(0.0, FAULT_EVERY_S - (time.monotonic() - last_fault)))   # the bots play meanwhile
            last_fault = time.monotonic()
            at = now_ms()
            if kind == "server":
                stack("kill", name, "chaos")
                await asyncio.sleep(OUTAGE_S)               # the outage itself: the server stays down this long
                stack("infra", "up", "chaos", timeout=300)
            elif name == "worker-2":
                pipe.workers[2].kill9()
                pipe.start_worker(2)
            else:
                pipe.others["payout"].kill9()
                pipe.start_payout()
            since = at + (OUTAGE_S * 1000 if kind == "server" else 0)

            async def back_again(since=since) -> int | None:
                restarts.extend(await keep_workers_alive(pipe))    # the orchestrator watches all along
                return await accepted_after(pipe, channels, since)

            try:
                back = await wait_for(back_again, 180, f"bets accepted again after the {name} fault", every=0.25)
            except AssertionError as error:
                raise AssertionError(f"{error}\n{pipe.logs(lines=15)}") from None
            gaps[name] = round((back - at) / 1000, 1)
            restarts.extend(await keep_workers_alive(pipe))
            # The captured request, again: refused, whatever restarted. (A 503 is the gateway shedding
            # while requests sent before the fault are still awaited, before it reads any request: it
            # says to retry, and so the replay does.)
            async def replayed() -> tuple[int, dict] | None:
                url = pipe.gateway_url + "/v1/bets"
                async with pipe.http.post(url, data=captured, headers=captured_headers) as resp:
                    body = await resp.json(content_type=None)
                    return None if resp.status == 503 else (resp.status, body)

            status, body = await wait_for(replayed, 60, "the replayed request read, not shed", every=0.5)
            assert status == 401 and ("nonce" in body["reason"] or "epoch" in body["reason"]), (name, body)

        # The bots play until every fault is over and the game is back (then a last stretch of play).
        await asyncio.sleep(FAULT_EVERY_S)
        bots.send_signal(signal.SIGTERM)
        output, _ = await asyncio.wait_for(bots.communicate(), 120)
        assert bots.returncode == 0, output.decode(errors="replace")[-3000:]
    finally:
        if bots.returncode is None:      # the test failed while they played: they must not outlive it
            bots.kill()
            await bots.wait()
    bot_report = json.loads(report.read_text())
    assert bot_report["bets"]["accepted"] > 50, bot_report["bets"]
    async with pipe.wallet() as admin:
        await admin.set_faults(**NO_FAULTS)
    restarts.extend(await keep_workers_alive(pipe))
    await settle_everything(pipe)

    wallet_db = make_engine(make_url(base.wallet_db_url).render_as_string(hide_password=False), pool_size=2)
    try:
        users = [f"bot-{seed}-{i}" for i in range(PLAYERS)]
        flows = await check_ledgers(pipe, wallet_db, users)
    finally:
        await wallet_db.dispose()
    assert flows["stakes"] > 0 and flows["cashouts"] > 0
    for channel_id in channels:
        await check_house_result(pipe, channel_id)
    # Exactly one outcome per accepted bet: each bet's history ends once.
    rows = await pipe.rows(
        "SELECT b.bet_id, b.status, SUM(h.status IN ('cashed_out', 'lost', 'refunded')) AS endings FROM bet b"
        " LEFT JOIN bet_status_history h ON h.bet_id = b.bet_id WHERE b.bet_id IS NOT NULL GROUP BY b.bet_id, b.status")
    assert rows and all(r["status"] in ("cashed_out", "lost", "refunded") for r in rows)
    assert all(r["endings"] <= 1 for r in rows), [r for r in rows if r["endings"] > 1][:5]
    replays = await pipe.rows("SELECT COUNT(*) AS n FROM api_order WHERE api_order_no = :o", o=f"replay-{seed}")
    assert replays[0]["n"] <= 1
    summary = {"gaps_s": gaps, "restarted_after_faults": restarts, "bets": bot_report["bets"]}
    (LOGS.parent.parent / "chaos.json").write_text(json.dumps(summary, indent=2))
    print("\nchaos: seconds without an accepted bet after each fault:", json.dumps(gaps),
          "| restarted:", restarts, "| bets:", bot_report["bets"].get("accepted"))
