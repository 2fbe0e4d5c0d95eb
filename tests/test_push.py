"""The push gateway (`crash-push`, web/push.py) and the players' sessions, end to end against the
real pipeline: what a WebSocket client receives, when, and what a session token lets a page do."""
from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import socket
import sys
import uuid

import pytest
from push_harness import PushGateway, WsClient, page_call, session_token

from harness import BIN, independent_crash_x100, next_term, now_ms, peek_crash_points, wait_for
from web import sessions
from web.signing import sign_headers

pytestmark = pytest.mark.slow

# A key of another operator group (role@group): it may not hand out sessions for our channels.
OTHER_GROUP_KEY = ("elsewhere", "elsewhere-secret-0123456789")


@pytest.fixture(scope="module")
async def pipe(pipeline_factory, base_settings):
    keys = os.environ["CRASH_API_KEYS"] + f",{OTHER_GROUP_KEY[0]}:{OTHER_GROUP_KEY[1]}:game@elsewhere"
    pipeline = await pipeline_factory("push", env={"CRASH_API_KEYS": keys})
    await pipeline.start_wallet()
    pipeline.start_payout()
    return pipeline


@pytest.fixture(scope="module")
async def push(pipe):
    gateway = PushGateway(pipe)
    await gateway.start()
    return gateway


@pytest.fixture(scope="module")
async def channel(pipe, push):
    channel_id = await pipe.create_channel("a")
    await pipe.wait_gateway_channel(channel_id)
    await push.wait_channel(channel_id)
    return channel_id


async def other_group(pipe, path: str, body: dict) -> tuple[int, dict]:
    raw = json.dumps(body).encode()
    headers = {**sign_headers(*OTHER_GROUP_KEY, "POST", path, raw), "Content-Type": "application/json"}
    assert pipe.http is not None
    async with pipe.http.post(pipe.gateway_url + path, data=raw, headers=headers) as resp:
        return resp.status, await resp.json(content_type=None)


def ws_url(push: PushGateway, channel_id: str) -> str:
    return f"ws://127.0.0.1:{push.port}/ws/channel/{channel_id}"


async def test_a_spectator_sees_terms_live_and_no_crash_point_before_the_crash(pipe, push, channel):
    client = WsClient(ws_url(push, channel))
    await client.connect()
    try:
        hello = await client.hello()
        assert hello["t"] == "hello" and hello["you"] is None
        assert hello["channel"]["config"]["growth_per_ms"] == "0.0004"
        await client.wait(lambda: len(client.ops("hist")) >= 3, 60, "three crashes")
        frames = list(client.frames)
    finally:
        await client.close()

    crashed = {op["item"]["term_id"]: op["item"]["crash_x100"] for op in client.ops("hist")}

    async def sunk() -> dict[str, dict]:
        # The sink writes MariaDB from the same events the push gateway reads, on its own consumer.
        rows = {t["term_id"]: t for t in await pipe.terms(channel)}
        return rows if all(rows.get(t, {}).get("crash_x100") is not None for t in crashed) else {}
    rows = await wait_for(sunk, 30, "the crashed terms' rows in MariaDB")
    for term_id, crash in crashed.items():
        assert rows[term_id]["crash_x100"] == crash, term_id
    # Never a crash point before the crash: not in any frame about a term still running, and
    # the first frame that holds it arrives at or after the crash time.
    first_seen: dict[str, float] = {}
    for arrived, frame in frames:
        for op in frame.get("ops", []):
            if op["k"] == "term":
                term = op["term"]
                if term["state"] in ("pre_start", "starting", "flying"):
                    assert "crash_x100" not in term and "revealed_hash" not in term, term
                elif term.get("crash_x100") is not None:
                    first_seen.setdefault(term["term_id"], arrived)
            if op["k"] == "hist":
                first_seen.setdefault(op["item"]["term_id"], arrived)
    for term_id in crashed:
        if rows[term_id]["crash_at"] is not None:
            assert first_seen[term_id] >= rows[term_id]["crash_at"], term_id
    # The states of a term arrive in order, and frames are at least 100 ms apart (the ts are
    # whole ms of the sending clock: 1 ms of rounding).
    deltas = [f for _, f in frames if f["t"] == "delta"]
    gaps = [b["ts"] - a["ts"] for a, b in zip(deltas, deltas[1:], strict=False)]
    assert gaps and min(gaps) >= 99, sorted(gaps)[:5]
    states = [op["term"]["state"] for op in client.ops("term") if op["term"]["term_id"] == next(iter(crashed))]
    assert states == sorted(states, key=["pre_start", "starting", "flying", "crashed", "closed"].index), states

    # A late client's snapshot has the history (newest first), and each proof verifies.
    late = WsClient(ws_url(push, channel))
    await late.connect()
    try:
        history = (await late.hello())["channel"]["history"]
    finally:
        await late.close()
    assert set(crashed) <= {h["term_id"] for h in history}
    seqs = [h["seq"] for h in history]
    assert seqs == sorted(seqs, reverse=True), "newest first"
    for term_id, crash in crashed.items():
        status, proof = await push.get(f"/v1/proofs/{term_id}")
        assert status == 200, proof
        assert independent_crash_x100(proof["revealed_hash"], proof["salt"], proof["edge_bps"],
                                      proof["max_multiple_x100"]) == crash
        assert hashlib.sha256(bytes.fromhex(proof["revealed_hash"])).hexdigest() == proof["prev_hash"]
    running = await pipe.live_term(channel)
    if running and running["state"] in ("pre_start", "starting", "flying"):
        status, body = await push.get(f"/v1/proofs/{running['term_id']}")
        assert status in (404, 409) and "reason" in body


async def test_sessions_let_a_player_act_only_for_themselves(pipe, push, channel):
    alice, bob = f"alice-{uuid.uuid4().hex[:6]}", f"bob-{uuid.uuid4().hex[:6]}"
    wallet = pipe.wallet("admin")
    await wallet.set_balance(alice, "EUR", 100_000)
    issued = await session_token(pipe, alice, channel_id=channel)
    token, bob_token = issued["token"], (await session_token(pipe, bob))["token"]
    assert issued["page_url"].endswith(f"/play/?channel={channel}#token={token}")

    # Only the operator's server (role game) gets tokens; bad input says why.
    status, body = await pipe.signed(pipe.gateway_url, "player-page", "POST", "/v1/sessions", {"user_id": alice})
    assert status == 403 and body["error"] == "forbidden"
    status, body = await pipe.api("POST", "/v1/sessions", {"user_id": "no spaces"})
    assert status == 400 and "user_id" in body["reason"]
    # A key of another operator group: no session on our channel, and its sessions cannot bet here.
    status, body = await other_group(pipe, "/v1/sessions", {"user_id": alice, "channel_id": channel})
    assert status == 403 and body["error"] == "forbidden", body
    status, body = await other_group(pipe, "/v1/sessions", {"user_id": alice})
    assert status == 200, body
    status, refused = await page_call(pipe, "POST", "/v1/page/bets", body["token"], {
        "channel_id": channel, "api_order_no": f"pg-{uuid.uuid4().hex[:10]}", "amount": 100, "currency": "EUR"})
    assert status == 403 and refused["error"] == "forbidden", refused

    # Refused tokens: none, expired, forged, for another secret.
    expired, _ = sessions.issue(pipe.base.session_secret, alice, 60, now_ms=now_ms() - 120_000)
    payload, signature = token.split(".")
    forged_payload = payload[:-2] + ("AA" if payload[-2:] != "AA" else "BB")
    for bad, error in ((None, "no_session"), (expired, "session_expired"), (f"{forged_payload}.{signature}",
                                                                             "bad_session"),
                       (sessions.issue("another-secret", alice, 60)[0], "bad_session")):
        status, body = await page_call(pipe, "GET", "/v1/page/balance?currency=EUR", bad)
        assert status == 401 and body["error"] == error and body["reason"], (bad, body)

    watcher = WsClient(ws_url(push, channel), token)
    await watcher.connect()
    forged_ws = WsClient(ws_url(push, channel), f"{forged_payload}.{signature}")
    await forged_ws.connect()
    try:
        hello = await watcher.hello()
        assert hello["you"]["user_id"] == alice and hello["you"]["tag"] == issued["tag"]
        refused = await forged_ws.hello()
        assert refused == {"t": "error", "error": "bad_session", "reason": refused["reason"]} and refused["reason"]
        await forged_ws.wait(lambda: forged_ws.closed, 10, "the forged session's socket to close")
        assert forged_ws.closed[0] == 4401

        status, body = await page_call(pipe, "GET", "/v1/page/balance?currency=EUR", token)
        assert (status, body["balance"]) == (200, 100_000)
        crash_of = await peek_crash_points(pipe, channel, {"max_multiple_x100": 2000})
        await next_term(pipe, channel, crash_of, lambda crash: crash >= 200, window_left_ms=700)
        order = f"page-{uuid.uuid4().hex[:10]}"
        status, body = await page_call(pipe, "POST", "/v1/page/bets", token, {
            "channel_id": channel, "api_order_no": order, "amount": 500, "currency": "EUR",
            "auto_cashout_x100": 150, "user_id": bob})       # a user_id in the body is ignored
        assert status == 200 and body["status"] == "accepted", body
        assert await wallet.balance(alice, "EUR") == 99_500
        # Bob cannot touch it; the pipeline says so.
        status, body = await page_call(pipe, "POST", f"/v1/page/bets/{channel}/{order}/cancel", bob_token)
        assert status == 409 and body["reason"] == "not_your_bet", body

        # The live list shows it with alice's tag and a masked name, never her id.
        bet = await watcher.wait(lambda: next((op["bet"] for op in watcher.ops("bet")
                                               if op["bet"]["bet_id"] == body.get("bet_id") or
                                               op["bet"]["tag"] == issued["tag"]), None), 10, "alice's bet")
        assert bet["amount"] == 500 and bet["name"] == alice[:2] + "***" + alice[-2:] and bet["tag"] == issued["tag"]
        cashed = await watcher.wait(lambda: next((op["bet"] for op in watcher.ops("bet")
                                                  if op["bet"]["tag"] == issued["tag"]
                                                  and op["bet"]["status"] == "cashed_out"), None), 30, "the cashout")
        assert (cashed["multiple_x100"], cashed["payout"]) == (150, 750)
        # The payout reaches the wallet, and the page is told to reload the balance.
        hint = await watcher.wait(lambda: next((f for _, f in watcher.frames if f["t"] == "wallet"), None), 60,
                                  "the wallet hint")
        assert (hint["amount"], hint["currency"], hint["kind"]) == (750, "EUR", "cashout")
        assert await wallet.balance(alice, "EUR") == 100_250
        raw = json.dumps([f for _, f in watcher.frames])
        assert alice not in raw.replace(f'"user_id": "{alice}"', ""), "a frame carried the player's id"
    finally:
        await watcher.close()
        await forged_ws.close()
        await wallet.close()


async def test_a_client_that_does_not_read_is_cut_off_and_the_others_go_on(pipe, channel):
    small = PushGateway(pipe, "push-small", buffer_bytes=2048)
    await small.start()
    good = WsClient(ws_url(small, channel))
    await good.connect()
    await good.hello()
    # A client that says hello and then never reads, with a tiny receive buffer.
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    slow.connect(("127.0.0.1", small.port))
    slow.sendall((f"GET /ws/channel/{channel} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    hello = b'{"t":"hello"}'
    slow.sendall(bytes((0x81, 0x80 | len(hello))) + b"\0\0\0\0" + hello)   # masked with a zero key
    bots = await asyncio.create_subprocess_exec(
        str(BIN / "crash-bots"), "--mode", "transfer", "--players", "30", "--rate", "80", "--duration", "90",
        "--channels", channel, "--gateway", pipe.gateway_url, "--quiet", env=pipe.env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    try:
        async def cut() -> bool:
            assert pipe.http is not None
            async with pipe.http.get(f"{small.url}/metrics") as resp:
                found = re.search(r"^push_clients_cut_total ([\d.]+)", await resp.text(), re.M)
            return bool(found and float(found.group(1)) >= 1)
        await wait_for(cut, 90, "the slow client to be cut off", every=0.5)
        before = len(good.frames)
        await good.wait(lambda: len(good.frames) > before + 5, 10, "frames for the client that reads")
        assert good.closed is None
        status, health = await small.get("/v1/health")
        assert status == 200 and health["clients"] == 1
    finally:
        if bots.returncode is None:
            bots.terminate()
        await bots.wait()
        slow.close()
        await good.close()
        if small.proc is not None:
            small.proc.stop()


async def test_a_killed_push_gateway_comes_back_with_its_views_and_clients_reconnect(pipe, push, channel):
    before = WsClient(ws_url(push, channel))
    await before.connect()
    await before.hello()
    await before.wait(lambda: len(before.ops("hist")) >= 1, 30, "a crash")
    seen = [op["item"]["term_id"] for op in before.ops("hist")]
    assert push.proc is not None
    push.proc.kill9()
    await before.wait(lambda: before.closed, 10, "the socket to close")
    await before.close()
    push.proc.start()
    await push.wait_ready()
    after = WsClient(ws_url(push, channel))
    await after.connect()
    try:
        hello = await after.hello()
        history = [h["term_id"] for h in hello["channel"]["history"]]
        assert set(seen) <= set(history), (seen, history)
        assert len(history) == len(set(history)), "a replayed crash was counted twice"
        live = await pipe.live_term(channel)
        assert hello["channel"]["term"]["term_id"] in (live["term_id"], history[0]), (hello["channel"]["term"], live)
        await after.wait(lambda: any(op["term"]["state"] == "pre_start" for op in after.ops("term")), 30,
                         "the next term")
    finally:
        await after.close()
    assert "channel views from Redis" in push.proc.tail(200)


async def test_a_jackpot_room_shows_the_pool_and_follows_its_contributions(pipe, push):
    from harness import contribute, create_jackpot
    jackpot_id = f"jp-room-{uuid.uuid4().hex[:6]}"
    await create_jackpot(pipe, jackpot_id=jackpot_id, name="Room pot", tier="mega", currency="EUR", rate_bps=100,
                         seed=5_000, cap=10**9, trigger="external")
    client = WsClient(f"ws://127.0.0.1:{push.port}/ws/jackpot/{jackpot_id}")
    await client.connect()
    unknown = WsClient(f"ws://127.0.0.1:{push.port}/ws/jackpot/no-such-pot")
    await unknown.connect()
    try:
        hello = await client.hello()
        assert hello["jackpots"][jackpot_id]["value"] == 5_000 and hello["jackpots"][jackpot_id]["name"] == "Room pot"
        status, body = await contribute(pipe, jackpot_id, 1_234)
        assert status == 200, body
        view = await client.wait(lambda: next((op["jackpot"] for op in client.ops("jackpot")
                                               if op["jackpot"]["value"] == 6_234), None), 20, "the contribution")
        assert view["currency"] == "EUR" and view["cap"] == 10**9
        assert (await unknown.hello())["error"] == "unknown_jackpot"
    finally:
        await client.close()
        await unknown.close()


async def test_the_demo_link_opens_the_page_as_a_funded_player(pipe, push, channel):
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "web.sessions", "demo-link", "--user", "demo-tester", "--channel", channel,
        "--fund", "50000", env=pipe.env, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode == 0, err.decode()
    link = out.decode().strip()
    # The page's address is the gateway's CRASH_PAGE_URL (the demo's http://127.0.0.1:8082).
    assert re.fullmatch(rf"http://127\.0\.0\.1:\d+/play/\?channel={channel}#token=[\w.-]+", link), link
    token = link.split("#token=", 1)[1]
    assert sessions.verify(pipe.base.session_secret, token).user_id == "demo-tester"
    status, body = await page_call(pipe, "GET", "/v1/page/balance?currency=EUR", token)
    assert (status, body["balance"]) == (200, 50_000)
