"""The demo's channels and its live screen (`crash-admin demo-channels`, `crash-admin watch`)."""
from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
from sqlalchemy import text

from sql.db import make_engine
from streams.settings import Settings
from web.signing import sign_headers

DEMO_CHANNELS: dict[str, dict[str, Any]] = {
    "demo-1": {"name": "Demo rocket (EUR)", "operator_group": "demo", "betting_ms": 6000, "starting_ms": 2000,
               "cooldown_ms": 2000, "growth_per_ms": "0.00008", "max_multiple_x100": 100000},
    "demo-2": {"name": "Demo turbo (EUR, USD)", "operator_group": "demo", "betting_ms": 4000, "starting_ms": 1500,
               "cooldown_ms": 1500, "growth_per_ms": "0.00015", "max_multiple_x100": 50000,
               "currencies": {code: {"min_bet": 10, "max_bet": 50_000, "max_bets_per_user": 2, "max_win": 5_000_000,
                                     "max_payout_per_term": 20_000_000} for code in ("EUR", "USD")}},
}
BOT_PLAYERS_SHOWN = ("bot-1-0", "bot-1-1", "bot-1-2")


def _admin_key(settings: Settings) -> tuple[str, str]:
    for key_id, (secret, role) in settings.api_keys.items():
        if role == "admin":
            return key_id, secret
    raise SystemExit("no admin key in CRASH_API_KEYS")


async def create_demo_channels(settings: Settings) -> int:
    key_id, secret = _admin_key(settings)
    ops = f"http://127.0.0.1:{settings.web_port}"
    async with aiohttp.ClientSession() as http:
        for channel_id, config in DEMO_CHANNELS.items():
            raw = json.dumps({"channel_id": channel_id, "config": config}).encode()
            headers = sign_headers(key_id, secret, "POST", "/ops/channels", raw)
            headers["Content-Type"] = "application/json"
            async with http.post(f"{ops}/ops/channels", data=raw, headers=headers) as resp:
                body = await resp.json(content_type=None)
                if resp.status == 202:
                    print(f"channel {channel_id} created; fairness terminator {body['fairness']['terminator']}"
                          f" salt {body['fairness']['salt']}")
                elif resp.status == 409:
                    print(f"channel {channel_id} exists")
                else:
                    print(f"channel {channel_id}: {resp.status} {body}")
                    return 1
        from streams.demo_jackpots import create_demo_jackpots
        if await create_demo_jackpots(settings, http, ops):
            return 1
        gateway = f"http://127.0.0.1:{settings.gateway_port}/v1/channels"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:     # the bots read the channels from the gateway
            async with http.get(gateway) as resp:
                known = {c["channel_id"] for c in (await resp.json())["channels"] if c.get("term")}
            if set(DEMO_CHANNELS) <= known:
                return 0
            await asyncio.sleep(0.5)
    print("the gateway does not show the demo channels' terms yet")
    return 1


async def watch(settings: Settings, every: float) -> None:
    """Every `every` seconds: each channel's newest terms, bets/s, payouts, a few balances."""
    from streams.cache import redis_client
    from streams.demo_jackpots import jackpot_line
    from web.wallet_client import WalletClient

    db = make_engine(settings.db_url, pool_size=2)
    redis = redis_client(settings.redis_url, max_connections=2)
    wallet = WalletClient.from_settings(settings)
    last = int(time.time() * 1000)
    try:
        while True:
            await asyncio.sleep(every)
            now = int(time.time() * 1000)
            async with db.connect() as conn:
                bets = (await conn.execute(text(
                    "SELECT COUNT(*) FROM bet WHERE received_at >= :a AND received_at < :b AND status <> 'rejected'"),
                    {"a": last, "b": now})).scalar_one()
                terms = (await conn.execute(text(
                    "SELECT t.channel_id, t.seq, t.state, t.crash_x100 FROM crash_term t JOIN"
                    " (SELECT channel_id, MAX(seq) AS seq FROM crash_term GROUP BY channel_id) m"
                    " ON m.channel_id = t.channel_id AND t.seq >= m.seq - 2 ORDER BY t.channel_id, t.seq"))).all()
                payouts = dict((await conn.execute(text(
                    "SELECT status, COUNT(*) FROM payout_outbox GROUP BY status"))).all())
                try:
                    jackpots = await jackpot_line(conn, redis)
                except Exception as error:        # Redis away: the screen goes on
                    jackpots = f"jackpots: {error}"
            balances = []
            for user in BOT_PLAYERS_SHOWN:
                try:
                    balances.append(f"{user}={await wallet.balance(user, 'EUR')}")
                except Exception:
                    balances.append(f"{user}=?")
            recent: dict[str, list[str]] = {}
            for row in terms:
                shown = f"#{row.seq} {row.state}" + (f" @{row.crash_x100 / 100:.2f}x" if row.crash_x100 else "")
                recent.setdefault(row.channel_id, []).append(shown)
            print(time.strftime("%H:%M:%S"),
                  f"| bets/s {bets * 1000 / max(1, now - last):.1f}",
                  "| " + " | ".join(f"{c}: {', '.join(v)}" for c, v in recent.items()),
                  f"| payouts {json.dumps(payouts)}",
                  f"| EUR balances {' '.join(balances)}", flush=True)
            print("         ", jackpots, flush=True)
            last = now
    finally:
        await redis.aclose()
        await wallet.close()
        await db.dispose()
