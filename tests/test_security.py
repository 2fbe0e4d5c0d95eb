"""Security and faults (issue 9): replay protection that survives restarts, one identifier rule
at every door, MariaDB as the owner of api_order_no, no hangs, shedding, JSON errors, fail closed.

Against the real Kafka, MariaDB and Redis of the test profile and real processes (worker,
gateway, wallet). One test kills Redis with SIGKILL and starts it again through `./stack`
(the same Redis the other test modules use: it is back within a second and keeps its data).
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from sqlalchemy import text

from harness import DirectCommands, Pipeline, now_ms, taking_bets, wait_for
from streams.cache import redis_client
from streams.events import PlaceBet
from web.signing import MemoryNonceStore, RedisNonceStore, SignatureError, Verifier, sign_headers

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="module")
async def pipe(pipeline_factory) -> Pipeline:
    pipeline = await pipeline_factory("sec")
    await pipeline.start_wallet()
    # The gateway's seamless debits go to this pipeline's wallet (CRASH_WALLET_URL).
    return pipeline


@pytest.fixture(scope="module")
async def channels(pipe: Pipeline) -> list[str]:
    made = [await pipe.create_channel("a"), await pipe.create_channel("b")]
    for channel_id in made:
        await pipe.wait_gateway_channel(channel_id)
    return made


def bet_body(channel_id: str, order: str, user: str, amount: int = 100) -> dict[str, Any]:
    return {"api_order_no": order, "channel_id": channel_id, "user_id": user, "amount": amount, "currency": "EUR"}


async def raw_post(session: aiohttp.ClientSession, url: str, headers: dict[str, str], raw: bytes
                   ) -> tuple[int, str, bytes, dict[str, str]]:
    async with session.post(url, data=raw, headers=headers, timeout=aiohttp.ClientTimeout(total=30)) as resp:
        return resp.status, resp.content_type, await resp.read(), dict(resp.headers)


def signed_raw(pipe: Pipeline, key_id: str, path: str, body: Any) -> tuple[dict[str, str], bytes]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = sign_headers(key_id, pipe.base.api_keys[key_id][0], "POST", path, raw)
    headers["Content-Type"] = "application/json"
    return headers, raw


def kill_and_restart_redis() -> None:
    """SIGKILL the test profile's Redis (no chance to write anything more), then start it again."""
    pidfile = Path(os.environ["CRASH_VAR_DIR"]) / "run" / "redis.pid"
    pid = int(pidfile.read_text())
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.02)   # polling a dying process; bounded by the deadline
    subprocess.run([str(REPO / "stack"), "restart-redis", "test"], check=True, cwd=REPO,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)


# ---------------------------------------------------------------- finding 1: replay after a restart

async def test_captured_requests_are_refused_after_redis_is_killed_and_restarted(
        pipe: Pipeline, channels: list[str]) -> None:
    wallet = pipe.env["CRASH_WALLET_URL"]
    user = uid("u")
    admin = pipe.wallet("admin")
    await admin.set_balance(user, "EUR", 1000)
    # An attacker captures a signed set-balance (1000 -> 400) and a signed bet.
    set_headers, set_raw = signed_raw(pipe, "admin", "/admin/accounts",
                                      {"user_id": user, "currency": "EUR", "balance": 400})
    order = uid("o")
    bet_headers, bet_raw = signed_raw(pipe, "operator", "/v1/bets", bet_body(channels[0], order, uid("p")))
    async with aiohttp.ClientSession() as session:
        assert (await raw_post(session, f"{wallet}/admin/accounts", set_headers, set_raw))[0] == 200
        await admin.set_balance(user, "EUR", 700)          # the player's balance moves on
        status, _, _, _ = await raw_post(session, f"{pipe.gateway_url}/v1/bets", bet_headers, bet_raw)
        assert status in (200, 409)
        # Several pooled Redis connections in the wallet and the gateway, all stale after the kill.
        await asyncio.gather(*(admin.balance(user, "EUR") for _ in range(12)))

        kill_and_restart_redis()

        for url, headers, raw in ((f"{wallet}/admin/accounts", set_headers, set_raw),
                                  (f"{pipe.gateway_url}/v1/bets", bet_headers, bet_raw)):
            status, content_type, payload, _ = await raw_post(session, url, headers, raw)
            assert (status, content_type) == (401, "application/json"), (url, status, payload)
            assert json.loads(payload)["reason"] == "nonce already used"
    assert await admin.balance(user, "EUR") == 700
    # Finding 7: no stray 5xx from the connections the kill left stale, in either process.
    results = await asyncio.gather(*(admin.balance(user, "EUR") for _ in range(30)), return_exceptions=True)
    assert results == [700] * 30
    statuses = [(await pipe.api("POST", "/v1/bets", bet_body(channels[0], uid("o"), uid("p"))))[0]
                for _ in range(10)]
    assert all(s in (200, 409) for s in statuses), statuses
    await admin.close()


async def test_a_nonce_store_that_lost_its_data_refuses_what_was_signed_before(tmp_path: Path) -> None:
    """Even a Redis that comes back empty (a new node, a lost disk: here one without persistence)
    cannot reopen the window: its epoch went with the nonces, and the new epoch (its start)
    refuses anything signed before."""
    from harness import free_port
    port = free_port()

    def start_empty_redis() -> subprocess.Popen:
        return subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                 "--appendonly", "no", "--dir", str(tmp_path)], stdout=subprocess.DEVNULL)

    server = start_empty_redis()
    redis = redis_client(f"redis://127.0.0.1:{port}/0")
    try:
        await wait_for(lambda: _pings(redis), 10, "the private Redis")
        verifier = Verifier({"k": ("s" * 32, "admin")}, RedisNonceStore(redis))
        before = sign_headers("k", "s" * 32, "POST", "/x", b"{}")
        assert (await verifier.verify("POST", "/x", before, b"{}")).role == "admin"
        signed_at = int(before["X-Timestamp"])
        await wait_for(lambda: _later_than(signed_at + 1100), 5, "a second past the capture")
        server.kill()
        server.wait(10)
        server = start_empty_redis()                       # back, without its data
        await wait_for(lambda: _pings(redis), 10, "the private Redis again")
        with pytest.raises(SignatureError, match="epoch"):
            await verifier.verify("POST", "/x", before, b"{}")
        epoch = int(await redis.get("nonce:epoch"))
        await wait_for(lambda: _later_than(epoch), 5, "the new epoch")
        after = sign_headers("k", "s" * 32, "POST", "/x", b"{}")
        assert (await verifier.verify("POST", "/x", after, b"{}")).role == "admin"
        with pytest.raises(SignatureError, match="nonce already used"):
            await verifier.verify("POST", "/x", after, b"{}")
    finally:
        await redis.aclose()
        server.kill()
        server.wait(10)


async def _pings(redis) -> bool:
    try:
        return bool(await redis.ping())
    except Exception:
        return False


async def _later_than(ts_ms: int) -> bool:
    return now_ms() > ts_ms


async def test_the_key_id_is_part_of_the_signed_string() -> None:
    """A request signed by one key cannot be re-sent under another key id sharing its secret
    (another role, a fresh nonce namespace)."""
    verifier = Verifier({"game-1": ("shared" * 6, "game"), "ops-1": ("shared" * 6, "admin")}, MemoryNonceStore())
    headers = sign_headers("game-1", "shared" * 6, "POST", "/ops/channels/x/abort", b"{}")
    forged = {**headers, "X-Key-Id": "ops-1"}
    with pytest.raises(SignatureError, match="bad signature"):
        await verifier.verify("POST", "/ops/channels/x/abort", forged, b"{}")
    assert (await verifier.verify("POST", "/ops/channels/x/abort", headers, b"{}")).role == "game"


async def test_nonce_claims_that_arrive_together_share_a_round_trip_and_each_nonce_wins_once() -> None:
    """The Redis store groups the claims that arrive while one round trip runs: 300 requests at
    once, each nonce used by three of them, give exactly one winner per nonce, in fewer round
    trips than requests, and the next claim of any of them is refused."""
    redis = redis_client(os.environ["CRASH_REDIS_URL"])
    store = RedisNonceStore(redis, namespace=f"nonce-test-{uuid.uuid4().hex[:8]}")
    trips = 0
    pipeline = redis.pipeline

    def counted(*args, **kwargs):
        nonlocal trips
        trips += 1
        return pipeline(*args, **kwargs)

    redis.pipeline = counted
    try:
        signed_at = now_ms()
        nonces = [uuid.uuid4().hex for _ in range(100)]
        answers = await asyncio.gather(*(store.claim("k", n, 60, signed_at) for n in nonces * 3))
        by_nonce = {n: [a for m, a in zip(nonces * 3, answers, strict=True) if m == n] for n in nonces}
        assert all(sorted(a, key=str) == [None, "nonce already used", "nonce already used"]
                   for a in by_nonce.values()), by_nonce
        assert trips < len(answers) / 10
        assert await store.claim("k", nonces[0], 60, signed_at) == "nonce already used"
        assert await store.claim("k", uuid.uuid4().hex, 60, signed_at) is None
    finally:
        await redis.aclose()


# ---------------------------------------------------------------- findings 4 and 5: ids and ownership

async def test_an_order_number_reused_on_another_channel_is_refused_even_if_redis_forgets(
        pipe: Pipeline, channels: list[str]) -> None:
    order, user = uid("o"), uid("p")
    first = await pipe.api("POST", "/v1/bets", bet_body(channels[0], order, user))
    assert first[0] in (200, 409), first
    # Whatever Redis holds is a cache: losing it must not hand the number to another channel.
    redis = redis_client(os.environ["CRASH_REDIS_URL"])
    await redis.delete(*[key async for key in redis.scan_iter(f"order:*:{order}")] or ["-"])
    await redis.aclose()
    status, body = await pipe.api("POST", "/v1/bets", bet_body(channels[1], order, user))
    assert (status, body["reason"]) == (409, f"api_order_no {order} was already used on channel {channels[0]}")
    owner = await pipe.rows("SELECT channel_id, mode FROM api_order WHERE api_order_no = :o", o=order)
    assert owner == [{"channel_id": channels[0], "mode": "transfer"}]


async def test_a_seamless_debit_on_an_order_decided_in_transfer_mode_is_refused_before_any_debit(
        pipe: Pipeline, channels: list[str]) -> None:
    order, user = uid("o"), uid("p")
    admin = pipe.wallet("admin")
    await admin.set_balance(user, "EUR", 5000)
    await taking_bets(pipe, channels[0])
    status, body = await pipe.api("POST", "/v1/bets", bet_body(channels[0], order, user, 1000))
    assert (status, body["status"]) == (200, "accepted"), body
    # The same number again, now as a seamless bet: it would be debited and never refunded.
    status, body = await pipe.signed(pipe.gateway_url, "player-page", "POST", "/v1/player/bets",
                                     bet_body(channels[0], order, user, 1000))
    assert (status, body["error"]) == (409, "order_no_taken"), body
    assert "transfer mode" in body["reason"]
    assert await admin.balance(user, "EUR") == 5000
    await admin.close()


async def test_every_door_refuses_an_identifier_with_a_newline_or_a_colon(
        pipe: Pipeline, channels: list[str]) -> None:
    for bad in ("o-1\n", "cashout:x", "-lead", "o 1", "é"):
        status, body = await pipe.api("POST", "/v1/bets", bet_body(channels[0], bad, "p-1"))
        assert (status, body["error"]) == (400, "bad_request"), (bad, body)
        status, body = await pipe.api("POST", "/v1/bets", bet_body(channels[0], uid("o"), bad))
        assert (status, body["error"]) == (400, "bad_request"), (bad, body)
    # The wallet: the same rule for user ids and callers' order numbers...
    async with pipe.wallet("admin") as wallet:
        from web.wallet_client import WalletRejected
        for bad in ("u-1\n", "-u", "u:1"):
            with pytest.raises(WalletRejected):
                await wallet.credit(uid("o"), bad, "EUR", 1)
        with pytest.raises(WalletRejected):
            await wallet.debit("o-1\n", "u-1", "EUR", 1)
        # ...and the pipeline's own payout numbers are taken.
        user = uid("u")
        for number in (f"cashout:{uid('b')}", f"refund:{channels[0]}:{uid('o')}", f"bonus:{uid('aw')}:2"):
            assert (await wallet.credit(number, user, "EUR", 1)).ok, number
    # The pipeline: a command that did not come through the gateway is held to the rule too.
    direct = DirectCommands(pipe)
    await direct.start()
    try:
        term = await taking_bets(pipe, channels[0])
        command_id = await direct.send(PlaceBet, channels[0], now_ms(), api_order_no="o-2\n", user_id="p-1",
                                       amount=100, currency="EUR", bet_type="manual")
        reply = await direct.reply(command_id)
        assert (reply.status, reply.reason) == ("refused", "invalid_id")
        assert await pipe.rows("SELECT 1 FROM bet WHERE api_order_no = :o", o="o-2\n") == []
        assert term
    finally:
        await direct.stop()


async def test_the_debit_resolver_is_not_stopped_by_a_row_it_cannot_finish(pipe: Pipeline) -> None:
    from streams.codec import encode
    from web.debit_saga import DebitSaga
    from web.wallet_client import WalletClient

    good_user = uid("u")
    admin = pipe.wallet("admin")
    await admin.set_balance(good_user, "EUR", 500)
    long_ago = now_ms() - 60_000

    def command(order: str, user: str) -> PlaceBet:
        return PlaceBet(event_id=uid("cmd"), channel_id="resolver-ch", ts=long_ago, gateway_id="gw-x",
                        api_order_no=order, user_id=user, amount=100, currency="EUR", bet_type="manual",
                        debited=True)

    # A row the wallet will never take (an id from before the one rule), older than a good one.
    rows = [command(uid("o"), "bad user"), command(uid("o"), good_user)]
    async with pipe.db.begin() as conn:
        for age, cmd in enumerate(rows):
            await conn.execute(text(
                "INSERT INTO player_debit (channel_id, api_order_no, user_id, currency, amount, command, state,"
                " received_at, updated_at) VALUES (:c, :o, :u, 'EUR', 100, :cmd, 'pending', :t, :t)"),
                {"c": cmd.channel_id, "o": cmd.api_order_no, "u": cmd.user_id, "cmd": encode(cmd).decode(),
                 "t": long_ago + age})
    sent: list[PlaceBet] = []

    async def send(cmd: PlaceBet) -> None:
        sent.append(cmd)

    async def place(cmd: PlaceBet):
        raise AssertionError("the resolver only sends")

    settings = pipe.settings
    wallet = WalletClient(pipe.env["CRASH_WALLET_URL"], settings.wallet_key_id, settings.wallet_key_secret,
                          timeout_s=5)
    saga = DebitSaga(pipe.db, wallet, place=place, send=send)
    for _ in range(2):    # the bad row comes first every time: the good one must not wait behind it
        try:
            await saga.resolve_once()
        except Exception:
            pass
    await wallet.close()
    assert [c.api_order_no for c in sent] == [rows[1].api_order_no]
    assert await admin.balance(good_user, "EUR") == 400
    states = {r["api_order_no"]: r["state"] for r in await pipe.rows(
        "SELECT api_order_no, state FROM player_debit WHERE channel_id = 'resolver-ch'")}
    assert states[rows[1].api_order_no] == "placed"
    assert states[rows[0].api_order_no] != "placed"
    await admin.close()


# ---------------------------------------------------------------- finding 6: hangs and shedding

async def test_the_decision_timeout_covers_the_send_to_kafka(pipe: Pipeline) -> None:
    """A send Kafka cannot take (here: a topic the broker does not have, so aiokafka waits for its
    metadata as during an outage) ends with TimeoutError at the decision timeout, not 40 s later."""
    from web.pipeline_client import PipelineClient

    client = PipelineClient(pipe.settings)
    await client.start()
    try:
        command = PlaceBet(event_id=uid("cmd"), channel_id="x", ts=now_ms(), gateway_id="gw-x", api_order_no="o",
                           user_id="u", amount=1, currency="EUR", bet_type="manual")
        task = asyncio.create_task(client.decide("no.such.topic", "x", command, timeout_s=0.5))
        done, _ = await asyncio.wait({task}, timeout=5)
        assert task in done, "decide() was still waiting 5 s after a 0.5 s decision timeout"
        assert isinstance(task.exception(), TimeoutError)
    finally:
        await client.stop()


async def test_past_its_in_flight_bound_the_gateway_sheds_and_a_repeat_gets_the_decision(
        pipe: Pipeline, channels: list[str]) -> None:
    from harness import free_port
    port = free_port()
    gateway = pipe.start_service("gateway-shed", "crash-gateway", {
        "CRASH_GATEWAY_PORT": str(port), "CRASH_GATEWAY_ID": f"gw-shed-{pipe.name}",
        "CRASH_GATEWAY_MAX_IN_FLIGHT": "3"})
    url = f"http://127.0.0.1:{port}"
    try:
        await pipe.wait_http(f"{url}/v1/health")
        await pipe.wait_gateway_channel(channels[1])
        await taking_bets(pipe, channels[1], window_left_ms=900)
        orders = [uid("o") for _ in range(40)]
        answers = await asyncio.gather(*(pipe.signed(url, "operator", "POST", "/v1/bets",
                                                     bet_body(channels[1], o, uid("p"))) for o in orders))
        shed = [o for o, (status, body) in zip(orders, answers, strict=True) if status == 503]
        assert shed, "40 concurrent bets against a bound of 3 in flight: none was shed"
        for status, body in answers:
            assert status in (200, 409, 503), (status, body)
            if status == 503 and body["error"] != "pipeline_lagging":     # (a loaded machine may lag too)
                assert body == {"error": "overloaded", "reason": "over 3 requests in flight; retry shortly"}
        # A repeat with the same api_order_no gets the decision (accepted, or refused as late).
        decided = dict(zip(orders, answers, strict=True))
        for order in shed:
            status, body = await pipe.signed(url, "operator", "POST", "/v1/bets",
                                             bet_body(channels[1], order, uid("p")))
            assert status in (200, 409) and body["status"] in ("accepted", "refused"), body
            decided[order] = (status, body)
        accepted = {o for o, (status, body) in decided.items() if status == 200}

        async def recorded() -> bool:
            rows = await pipe.rows("SELECT api_order_no FROM bet WHERE channel_id = :c AND status <> 'rejected'",
                                   c=channels[1])
            return accepted <= {r["api_order_no"] for r in rows}
        await wait_for(recorded, 60, "every accepted bet in MySQL")
    finally:
        gateway.stop()


async def test_while_the_pipeline_lags_the_gateway_sheds_and_a_repeat_gets_the_decision(
        pipe: Pipeline, channels: list[str]) -> None:
    """The workers paused (SIGSTOP, shorter than the session timeout: no rebalance): the commands
    sent meanwhile wait unconsumed. Once the oldest has waited past the lag bound, a new write is
    503 pipeline_lagging with Retry-After before its nonce is claimed; reads are still served;
    after the workers resume, the waiting bet is decided and the shed one, repeated, too."""
    from harness import free_port
    port = free_port()
    gateway = pipe.start_service("gateway-lag", "crash-gateway", {
        "CRASH_GATEWAY_PORT": str(port), "CRASH_GATEWAY_ID": f"gw-lag-{pipe.name}",
        "CRASH_GATEWAY_MAX_LAG_MS": "500", "CRASH_DECISION_TIMEOUT_MS": "8000"})
    url = f"http://127.0.0.1:{port}"
    paused = False
    try:
        await pipe.wait_http(f"{url}/v1/health")
        await pipe.wait_gateway_channel(channels[1])
        await taking_bets(pipe, channels[1], window_left_ms=900)
        for worker in pipe.workers.values():
            os.killpg(worker.proc.pid, signal.SIGSTOP)
        paused = True
        waiting_order, shed_order = uid("o"), uid("o")
        waiting = asyncio.create_task(pipe.signed(url, "operator", "POST", "/v1/bets",
                                                  bet_body(channels[1], waiting_order, uid("p"))))
        await asyncio.sleep(0.8)        # the waiting bet's decision is now older than the 0.5 s bound
        assert not waiting.done()
        raw = json.dumps(bet_body(channels[1], shed_order, uid("p"))).encode()
        headers, _ = signed_raw(pipe, "operator", "/v1/bets", raw)
        async with aiohttp.ClientSession() as session:
            status, _, payload, answer_headers = await raw_post(session, f"{url}/v1/bets", headers, raw)
            assert (status, answer_headers.get("Retry-After")) == (503, "1"), payload
            assert json.loads(payload)["error"] == "pipeline_lagging", payload
            async with session.get(f"{url}/v1/channels") as resp:
                assert resp.status == 200                       # reads are not shed
            for worker in pipe.workers.values():
                os.killpg(worker.proc.pid, signal.SIGCONT)
            paused = False
            status, body = await asyncio.wait_for(waiting, 30)
            assert status in (200, 409) and body["status"] in ("accepted", "refused"), body
            # The shed request was refused before its nonce was claimed: the very same request
            # (same signature and nonce) is served once the pipeline has caught up.
            status, _, payload, _ = await raw_post(session, f"{url}/v1/bets", headers, raw)
            assert status in (200, 409) and json.loads(payload)["status"] in ("accepted", "refused"), payload
    finally:
        if paused:
            for worker in pipe.workers.values():
                os.killpg(worker.proc.pid, signal.SIGCONT)
        gateway.stop()


# ---------------------------------------------------------------- finding 7: JSON errors

MALFORMED_BODIES = [
    (b'{"amount": 1, "x": "\xff\xfe"}', "not valid JSON"),
    (b"[" * 50_00 + b"]" * 50_00, "not valid JSON"),
    (b'{"amount": ' + b"9" * 5000 + b"}", "not valid JSON"),
    (b'{"amount": NaN}', "not valid JSON"),
]


@pytest.mark.parametrize("raw, reason", MALFORMED_BODIES)
async def test_malformed_bodies_get_a_json_400_with_a_reason(pipe: Pipeline, raw: bytes, reason: str) -> None:
    async with aiohttp.ClientSession() as session:
        for url, key in ((f"{pipe.gateway_url}/v1/bets", "operator"),
                         (f"{pipe.env['CRASH_WALLET_URL']}/v1/credit", "admin")):
            path = "/" + url.split("/", 3)[3]
            headers, _ = signed_raw(pipe, key, path, raw)
            status, content_type, payload, _ = await raw_post(session, url, headers, raw)
            assert (status, content_type) == (400, "application/json"), (url, status, payload[:200])
            assert reason in json.loads(payload)["reason"]


@pytest.mark.parametrize("header, value", [
    ("X-Timestamp", "9" * 5000), ("X-Timestamp", "１２３"), ("X-Signature", "é" * 64), ("X-Nonce", "n" * 5000),
    ("X-Content-SHA256", "ü" * 64),
])
async def test_malformed_signature_headers_get_a_json_401(pipe: Pipeline, header: str, value: str) -> None:
    async with aiohttp.ClientSession() as session:
        for url, key in ((f"{pipe.gateway_url}/v1/bets", "operator"),
                         (f"{pipe.env['CRASH_WALLET_URL']}/v1/credit", "admin")):
            path = "/" + url.split("/", 3)[3]
            headers, raw = signed_raw(pipe, key, path, {"amount": 1})
            headers[header] = value
            encoded = {k: v.encode().decode("latin-1") for k, v in headers.items()}
            status, content_type, payload, _ = await raw_post(session, url, encoded, raw)
            assert (status, content_type) == (401, "application/json"), (url, header, status, payload[:200])
            assert json.loads(payload)["error"] == "unauthorized"


async def test_the_wallet_answers_503_json_while_redis_or_mariadb_is_down(pipe: Pipeline) -> None:
    """A wallet whose Redis (or database) is unreachable says so, in JSON, with Retry-After."""
    from aiohttp.test_utils import TestClient, TestServer

    from harness import free_port
    from sql.db import make_engine
    from streams.settings import get_settings
    from web.wallet import WalletService

    settings = get_settings()
    dead = f"127.0.0.1:{free_port()}"
    for engine_url, redis_url, error in (
            (settings.wallet_db_url, f"redis://{dead}/0", "unavailable"),
            (f"mysql+aiomysql://apisys:x@{dead}/apisys", settings.redis_url, "database_unavailable")):
        service = WalletService(settings, make_engine(engine_url, pool_size=1), redis_client(redis_url))
        app = web.Application(middlewares=[service.middleware])
        service.routes(app)
        async with TestClient(TestServer(app)) as client:
            raw = json.dumps({"order_no": uid("o"), "user_id": "u-1", "currency": "EUR", "amount": 1}).encode()
            headers = sign_headers(settings.wallet_key_id, settings.wallet_key_secret, "POST", "/v1/credit", raw)
            resp = await client.post("/v1/credit", data=raw, headers=headers)
            body = await resp.json()
            assert (resp.status, body["error"], resp.headers.get("Retry-After")) == (503, error, "1"), body
        await service.engine.dispose()
        await service.redis.aclose()


# ---------------------------------------------------------------- deliverable 8: fail closed

def _start(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "crash-wallet")], env=env, capture_output=True, text=True, timeout=30,
                          cwd=REPO)


async def test_a_production_profile_refuses_development_secrets_and_missing_ones(base_settings) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRASH_")}
    env.update(CRASH_PROFILE="production", CRASH_WALLET_PORT="1")      # port 1: never bound if it starts
    # A development default of a secret...
    result = _start({**env, "CRASH_API_KEYS": "admin:dev-admin-secret:admin",
                     "CRASH_WALLET_DB_URL": os.environ["CRASH_WALLET_DB_URL"]})
    assert result.returncode != 0
    assert "refuses to start" in result.stderr and "admin" in result.stderr, result.stderr[-2000:]
    # ...and a secret variable that is missing (no default is used in production).
    strong = {"CRASH_API_KEYS": os.environ["CRASH_API_KEYS"],
              "CRASH_WALLET_KEY_SECRET": os.environ["CRASH_WALLET_KEY_SECRET"],
              "CRASH_SESSION_SECRET": "s" * 32}
    result = _start({**env, **strong})
    assert result.returncode != 0
    assert "CRASH_WALLET_DB_URL is not set" in result.stderr, result.stderr[-2000:]
