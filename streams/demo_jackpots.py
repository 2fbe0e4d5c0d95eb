"""The demo's jackpots: a term jackpot per demo channel, a shared pool for the operator group
`demo` and a mega pool; a second game (a slot machine) that feeds the shared and mega pools over
the jackpot REST API; the webhook receiver that prints near-cap notices; the live screen's line.

The parameters are chosen so that, with the demo's bots (about 15 bets/s of about 100 EUR on
average), the local pools hit every minute or two, the shared one every few minutes and the mega
one every ten minutes or so.
"""
from __future__ import annotations

import asyncio
import json
import random
import time
from typing import Any

import aiohttp
from aiohttp import web
from sqlalchemy import text
from ulid import ULID

from streams.settings import Settings
from web.signing import MemoryNonceStore, SignatureError, Verifier, sign_headers

__all__ = ["DEMO_JACKPOTS", "create_demo_jackpots", "run_demo_game", "run_webhook_receiver", "jackpot_line"]

SPLIT = [5000, 3000, 2000]
DEMO_JACKPOTS: list[dict[str, Any]] = [
    {"jackpot_id": "demo-1-local", "name": "Rocket term jackpot", "tier": "local", "channel_id": "demo-1",
     "currency": "EUR", "rate_bps": 10, "seed": 5_000, "cap": 25_000, "trigger": "must_hit_by",
     "rank_split_bps": SPLIT},
    {"jackpot_id": "demo-2-local", "name": "Turbo term jackpot", "tier": "local", "channel_id": "demo-2",
     "currency": "EUR", "rate_bps": 10, "seed": 3_000, "cap": 15_000, "trigger": "must_hit_by",
     "rank_split_bps": SPLIT},
    {"jackpot_id": "demo-shared", "name": "Demo group jackpot", "tier": "shared", "operator_group": "demo",
     "currency": "EUR", "rate_bps": 5, "seed": 20_000, "cap": 60_000, "trigger": "must_hit_by"},
    {"jackpot_id": "demo-mega", "name": "Mega jackpot", "tier": "mega", "currency": "EUR", "rate_bps": 2,
     "seed": 100_000, "cap": 200_000, "trigger": "must_hit_by"},
]
GAME_FEEDS = ("demo-shared", "demo-mega")     # the slot machine's pools
DEMO_CHANNELS_OF = {"shared": ("demo-1", "demo-2"), "mega": ("demo-1", "demo-2")}
GAME_CONTRIBUTION_BPS = 200                   # the slot machine gives 2 % of each spin to each pool


def _key(settings: Settings, role: str) -> tuple[str, str]:
    for key_id, (secret, key_role) in settings.api_keys.items():
        if key_role == role:
            return key_id, secret
    raise SystemExit(f"no {role} key in CRASH_API_KEYS")


async def _signed(http: aiohttp.ClientSession, base: str, key: tuple[str, str], method: str, path: str,
                  body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    raw = json.dumps(body).encode() if body is not None else b""
    all_headers = {**sign_headers(key[0], key[1], method, path, raw), "Content-Type": "application/json",
                   **(headers or {})}
    async with http.request(method, base + path, data=raw, headers=all_headers) as resp:
        return resp.status, await resp.json(content_type=None)


async def create_demo_jackpots(settings: Settings, http: aiohttp.ClientSession, ops: str) -> int:
    admin = _key(settings, "admin")
    for definition in DEMO_JACKPOTS:
        status, body = await _signed(http, ops, admin, "POST", "/ops/jackpots", {"definition": definition})
        if status == 202:
            print(f"jackpot {definition['jackpot_id']} created, fed by {', '.join(body['fed_by'])}")
        elif status == 409:
            print(f"jackpot {definition['jackpot_id']} exists")
        else:
            print(f"jackpot {definition['jackpot_id']}: {status} {body}")
            return 1
        # Every demo channel of its scope feeds it (a no-op where it does already).
        for channel_id in DEMO_CHANNELS_OF.get(definition["tier"], ()) or (definition.get("channel_id"),):
            status, body = await _signed(http, ops, admin, "POST", f"/ops/jackpots/{definition['jackpot_id']}/feeds",
                                         {"channel_id": channel_id})
            if status != 202:
                print(f"jackpot {definition['jackpot_id']} not fed by {channel_id}: {status} {body}")
                return 1
    return 0


async def run_demo_game(settings: Settings, spins_per_s: float = 4.0) -> None:
    """A slot machine: every spin stakes 0.10-20.00 EUR and gives 2 % of it to each of its pools."""
    game = _key(settings, "game")
    gateway = f"http://127.0.0.1:{settings.gateway_port}"
    rng = random.Random()
    async with aiohttp.ClientSession() as http:
        while True:
            await asyncio.sleep(rng.expovariate(spins_per_s))
            stake = int(10 * 200 ** rng.random())
            player = f"slots-player-{rng.randrange(20)}"
            for jackpot_id in GAME_FEEDS:
                amount = max(1, stake * GAME_CONTRIBUTION_BPS // 10_000)
                body = {"contributionId": f"spin-{ULID()}", "gameId": "demo-slots", "amount": amount,
                        "currency": "EUR", "playerId": player, "sessionId": "demo"}
                try:
                    status, answer = await _signed(http, gateway, game, "POST", f"/jackpot/{jackpot_id}/contribute",
                                                   body)
                except (aiohttp.ClientError, TimeoutError) as error:
                    print(f"{time.strftime('%H:%M:%S')} {jackpot_id}: {error}", flush=True)
                    await asyncio.sleep(1.0)
                    continue
                if status == 200 and answer.get("award"):
                    print(f"{time.strftime('%H:%M:%S')} {player} won {jackpot_id}: "
                          f"{answer['award']['amount'] / 100:.2f} EUR", flush=True)
                elif status not in (200, 404):
                    print(f"{time.strftime('%H:%M:%S')} {jackpot_id}: {status} {answer}", flush=True)


async def run_webhook_receiver(settings: Settings, port: int) -> None:
    """Prints each near-cap notice once (by notice id), after checking its HMAC signature."""
    verifier = Verifier({"crash-jackpot": (settings.jackpot_webhook_secret, "webhook")}, MemoryNonceStore())
    seen: set[str] = set()

    async def notice(request: web.Request) -> web.Response:
        body = await request.read()
        try:
            await verifier.verify(request.method, request.path_qs, request.headers, body)
        except SignatureError as error:
            return web.json_response({"error": "unauthorized", "reason": str(error)}, status=401)
        data = json.loads(body)
        if data["notice_id"] not in seen:
            seen.add(data["notice_id"])
            print(f"{time.strftime('%H:%M:%S')} NEAR CAP: jackpot {data['jackpot_id']} cycle {data['cycle']} is at "
                  f"{data['value'] / 100:.2f} of {data['cap'] / 100:.2f} {data['currency']}", flush=True)
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/notices", notice)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print(f"webhook receiver on http://127.0.0.1:{port}/notices", flush=True)
    await asyncio.Event().wait()


async def jackpot_line(conn, redis) -> str:
    """The live screen's jackpot line: each pool's value and cycle, its hits and the last winners."""
    ids = [r.jackpot_id for r in await conn.execute(text("SELECT jackpot_id FROM jackpot ORDER BY jackpot_id"))]
    if not ids:
        return "jackpots: none"
    views = dict(zip(ids, await redis.mget([f"jackpot:{j}" for j in ids]), strict=True))
    hits = {r.jackpot_id: r for r in await conn.execute(text(
        "SELECT a.jackpot_id, COUNT(*) AS n, MAX(a.ts) AS last_ts,"
        " SUBSTRING_INDEX(GROUP_CONCAT(a.amount ORDER BY a.ts DESC), ',', 1) AS last_amount"
        " FROM jackpot_award a GROUP BY a.jackpot_id"))}
    parts = []
    for jackpot_id in ids:
        view = json.loads(views[jackpot_id]) if views[jackpot_id] else None
        shown = f"{jackpot_id} {view['value'] / 100:.2f}" if view else f"{jackpot_id} ?"
        hit = hits.get(jackpot_id)
        if hit is not None:
            shown += f" ({hit.n} hits, last {int(hit.last_amount) / 100:.2f})"
        parts.append(shown)
    return "jackpots (EUR): " + " | ".join(parts)
