"""`crash-bots` (web/bots.py), the demo's load generator, as a subprocess against a real pipeline
(Faust worker + gateway on the test Kafka, MariaDB and Redis)."""
from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path
from typing import Any

import pytest
from push_harness import PushGateway

from harness import BIN, Pipeline, wait_for

pytestmark = pytest.mark.slow

# The bets' outcomes once their term is over. A cancelled bet's refund goes through the payout
# adapter and the wallet, which this test does not run: `cancelled` is its end here.
TERMINAL = {"cashed_out", "lost", "cancelled", "refunded"}


@pytest.fixture(scope="module")
async def pipe(pipeline_factory) -> Pipeline:
    return await pipeline_factory("bots")


async def run_bots(pipe: Pipeline, report: Path, *args: str, timeout: float = 120) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "crash-bots"), "--gateway", pipe.gateway_url, "--report-json", str(report), *args,
        env=pipe.env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


async def test_transfer_mode_bots_play_and_every_accepted_bet_settles(pipe: Pipeline, tmp_path: Path) -> None:
    channel_id = await pipe.create_channel("a")
    await pipe.wait_gateway_channel(channel_id)
    seed = random.randrange(10**6, 10**7)
    report_path = tmp_path / "bots.json"
    code, out, err = await run_bots(
        pipe, report_path, "--mode", "transfer", "--players", "20", "--rate", "30", "--duration", "20",
        "--channels", channel_id, "--seed", str(seed), "--record-bets", "--quiet")
    assert code == 0, f"exit {code}\n{out[-3000:]}\n{err[-3000:]}"
    report: dict[str, Any] = json.loads(report_path.read_text())
    assert json.loads(out)["bets"] == report["bets"], "the summary printed is the one written"
    print(f"\ncrash-bots transfer, 20 players, rate 30, 20 s: {report['accepted_bets_per_s']} accepted bets/s; "
          f"bets {report['bets']}, cashouts {report['cashouts']}")

    bets, cashouts, errors = report["bets"], report["cashouts"], report["errors"]
    assert bets["accepted"] > 0 and report["accepted_bets_per_s"] > 0, report
    assert cashouts["accepted"] > 0, f"no manual cashout succeeded: {cashouts}"
    assert errors["http_5xx"] == {} and errors["unexpected_4xx"] == {}, errors
    assert errors["connection"] == 0 and errors["gave_up"] == {} and errors["bot"] == 0, errors
    assert bets["failed"] == 0 and report["cancels"]["failed"] == 0 and cashouts["failed"] == 0, report
    # The bucket never lets a player exceed the limit it knows about.
    assert "max_bets_per_user" not in bets["refused_by_reason"], bets
    assert report["accepted_by_channel"] == {channel_id: bets["accepted"]}
    accepted = {order_no for channel, order_no in report["accepted_bets"] if channel == channel_id}
    assert len(accepted) == bets["accepted"] == len(report["accepted_bets"])

    # Every bet the bots were told is accepted is in MySQL, and reaches its outcome when its term closes.
    async def settled() -> dict[str, dict[str, Any]] | None:
        rows = await pipe.rows(
            "SELECT api_order_no, status, cashout_mode, user_id FROM bet WHERE channel_id = :c AND user_id LIKE :u",
            c=channel_id, u=f"bot-{seed}-%")
        by_order = {r["api_order_no"]: r for r in rows}
        done = accepted <= set(by_order) and all(by_order[o]["status"] in TERMINAL for o in accepted)
        return by_order if done else None

    rows = await wait_for(settled, 90, "the bots' accepted bets to reach a terminal status", every=0.5)
    # ... and nothing else of theirs was placed: refused bets are recorded as rejected only.
    assert {o for o, r in rows.items() if r["status"] != "rejected"} == accepted
    assert all(r["user_id"].startswith(f"bot-{seed}-") for r in rows.values())
    statuses = [rows[o]["status"] for o in accepted]
    assert statuses.count("cancelled") + statuses.count("refunded") == report["cancels"]["accepted"]
    # Each cashout the bots were told succeeded is a manual cashout in MySQL (forced ones are not theirs).
    assert sum(1 for o in accepted if rows[o]["cashout_mode"] == "manual") == cashouts["accepted"]


async def test_bots_follow_the_terms_over_the_push_gateway(pipe: Pipeline, tmp_path: Path) -> None:
    """With --push the bots watch the terms over the push gateway's WebSocket (as the page does)
    instead of polling: their manual cashouts, timed on the curve from flying_at, still land."""
    push = PushGateway(pipe)
    await push.start()
    channel_id = await pipe.create_channel("push")
    await pipe.wait_gateway_channel(channel_id)
    await push.wait_channel(channel_id)
    report_path = tmp_path / "bots-push.json"
    code, out, err = await run_bots(
        pipe, report_path, "--mode", "transfer", "--players", "10", "--rate", "20", "--duration", "15",
        "--channels", channel_id, "--push", push.url, "--quiet")
    assert code == 0, f"exit {code}\n{out[-3000:]}\n{err[-3000:]}"
    report: dict[str, Any] = json.loads(report_path.read_text())
    assert report["follow"] == f"push {push.url}"
    assert report["bets"]["accepted"] > 0 and report["cashouts"]["accepted"] > 0, report
    assert report["errors"]["poll"] == 0 and report["errors"]["http_5xx"] == {}, report["errors"]
    assert report["bets"]["failed"] == 0, report["bets"]
