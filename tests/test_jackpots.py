"""Progressive jackpots end to end (real Kafka, MariaDB, Redis, worker, gateway, wallet and payout
processes): contributions from bets and REST, reconciliation, must-hit-by commitments, the term
jackpot, award atomicity and idempotence, parameter changes, pauses, bad input, kill -9.

Expected values are worked out here by hand or with independent arithmetic (hashlib, plain
integer sums), never with streams.jackpots."""
from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import uuid

import pytest
from aiohttp import web
from sqlalchemy import text

from harness import (
    BIN,
    FAST_CONFIG,
    contribute,
    create_jackpot,
    free_port,
    jackpot_view,
    next_term,
    peek_crash_points,
    taking_bets,
    wait_consumed,
    wait_for,
)
from streams.codec import decode

pytestmark = pytest.mark.slow

MICRO = 1_000_000


class WebhookReceiver:
    """The operator's webhook, as the demo's receiver: it verifies each notice's HMAC signature."""

    def __init__(self, secret: str) -> None:
        from web.signing import MemoryNonceStore, Verifier
        self.verifier = Verifier({"crash-jackpot": (secret, "webhook")}, MemoryNonceStore())
        self.notices: list[dict] = []
        self.refused: list[str] = []
        self.port = free_port()
        self.runner: web.AppRunner | None = None
        # jackpot_id -> how many of its notices to refuse first (per jackpot: another test's
        # notice arriving meanwhile must not use up this one's failures)
        self.fail_first: dict[str, int] = {}
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        from web.signing import SignatureError
        body = await request.read()
        try:
            caller = await self.verifier.verify("POST", request.path_qs, request.headers, body)
        except SignatureError as error:
            self.refused.append(str(error))
            return web.json_response({"error": "unauthorized", "reason": str(error)}, status=401)
        notice = json.loads(body)
        if self.fail_first.get(notice.get("jackpot_id"), 0) > 0:
            self.fail_first[notice["jackpot_id"]] -= 1
            return web.json_response({"error": "busy"}, status=503)
        self.notices.append({"key": request.headers["Idempotency-Key"], "key_id": caller.key_id, **notice})
        return web.json_response({"ok": True})

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/notices", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return f"http://127.0.0.1:{self.port}/notices"


@pytest.fixture(scope="module")
async def webhook(base_settings):
    assert base_settings.jackpot_webhook_secret, "./stack sets CRASH_JACKPOT_WEBHOOK_SECRET"
    receiver = WebhookReceiver(base_settings.jackpot_webhook_secret)
    receiver.url = await receiver.start()
    yield receiver
    assert receiver.runner is not None
    await receiver.runner.cleanup()


@pytest.fixture(scope="module")
async def pipe(pipeline_factory, webhook):
    pipe = await pipeline_factory("jackpots", env={"CRASH_JACKPOT_WEBHOOK_URL": webhook.url})
    await pipe.start_wallet()
    pipe.start_payout()
    return pipe


def jid(pipe, name: str) -> str:
    return f"{pipe.name}-{name}"


async def place(pipe, channel_id: str, user: str, amount: int, auto: int | None = None) -> dict:
    body = {"api_order_no": f"jp-{uuid.uuid4().hex[:16]}", "channel_id": channel_id, "user_id": user,
            "amount": amount, "currency": "EUR"}
    if auto is not None:
        body["auto_cashout_x100"] = auto
    status, answer = await pipe.api("POST", "/v1/bets", body)
    assert status == 200, answer
    return answer


async def term_feeding(pipe, channel_id: str, jackpot_ids: set[str], timeout: float = 60) -> dict:
    """The next term of the channel taking bets whose config feeds all of `jackpot_ids`."""
    async def found():
        term = await taking_bets(pipe, channel_id, window_left_ms=2000)
        rows = await pipe.rows("SELECT config FROM crash_term WHERE term_id = :t", t=term["term_id"])
        return term if rows and jackpot_ids <= set(json.loads(rows[0]["config"]).get("jackpots", [])) else None
    return await wait_for(found, timeout, f"a term of {channel_id} feeding {jackpot_ids}", every=0.2)


async def reconcile_cli(pipe, *args: str) -> subprocess.CompletedProcess:
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "crash-jackpot"), "reconcile", *args, env=pipe.env, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    return subprocess.CompletedProcess(args, proc.returncode, out.decode())


async def contributions(pipe, jackpot_id: str) -> list[dict]:
    return await pipe.rows("SELECT * FROM jackpot_contributions WHERE jackpot_id = :j ORDER BY id", j=jackpot_id)


async def hit_events(pipe, jackpot_id: str) -> list:
    return [r for r, *_ in await pipe.read_topic("game.jackpot", key=jackpot_id)
            if r is not None and type(r).__name__ == "JackpotHit"]


async def secret(base_settings, jackpot_id: str, cycle: int) -> tuple[int, str]:
    """The committed hit value of a cycle, read from the secret store as only an auditor could."""
    from sql.db import make_engine
    engine = make_engine(base_settings.secret_db_url, pool_size=1)
    try:
        async with engine.connect() as conn:
            row = (await conn.execute(text("SELECT hit_value, nonce FROM jackpot_secret WHERE jackpot_id = :j"
                                           " AND cycle = :c"), {"j": jackpot_id, "c": cycle})).one()
        return row.hit_value, row.nonce
    finally:
        await engine.dispose()


# ------------------------------------------------------------------ contributions reconcile exactly

async def test_bets_on_two_channels_and_rest_contributions_reconcile_exactly(pipe):
    group = f"{pipe.name}-g"
    channel_a = await pipe.create_channel("a", operator_group=group, betting_ms=3000)
    local = jid(pipe, "local-a")
    shared = jid(pipe, "shared")
    mega = jid(pipe, "mega")
    # Never hit in this test: caps far above what it contributes.
    await create_jackpot(pipe, jackpot_id=local, tier="local", channel_id=channel_a, currency="EUR", rate_bps=150,
                         seed=5_000, cap=10**9, trigger="must_hit_by")
    await create_jackpot(pipe, jackpot_id=shared, tier="shared", operator_group=group, currency="EUR", rate_bps=33,
                         seed=10_000, cap=10**9, trigger="external")
    await create_jackpot(pipe, jackpot_id=mega, tier="mega", currency="EUR", rate_bps=7, seed=100_000, cap=10**10,
                         trigger="external")
    # A channel created after the jackpots feeds those of its scope from its first term.
    channel_b = await pipe.create_channel("b", operator_group=group, betting_ms=3000)
    await pipe.wait_gateway_channel(channel_a)
    await pipe.wait_gateway_channel(channel_b)
    feeds = {channel_a: {local, shared, mega}, channel_b: {shared, mega}}
    rates = {local: 150, shared: 33, mega: 7}
    seeds = {local: 5_000, shared: 10_000, mega: 100_000}
    expected_micro = {j: seeds[j] * MICRO for j in rates}
    expected_rows = {j: 0 for j in rates}
    stakes = [1, 7, 13, 99, 1234, 5001, 77_777, 3]          # rate * stake rarely whole cents
    for round_no in range(3):
        for channel_id, jackpot_ids in feeds.items():
            term = await term_feeding(pipe, channel_id, jackpot_ids)
            for i, stake in enumerate(stakes):
                stake = max(10, stake + round_no)                   # min_bet 10
                answer = await place(pipe, channel_id, f"p{i}", stake)
                assert answer["term_id"] == term["term_id"]
                for j in jackpot_ids:
                    expected_micro[j] += stake * rates[j] * 100    # stake * rate / 10000 minor units
                    expected_rows[j] += 1
    rest_ids = [f"rest-{uuid.uuid4().hex[:10]}" for _ in range(5)]
    for i, contribution_id in enumerate(rest_ids):
        status, body = await contribute(pipe, shared, 250 + i, contribution_id)
        assert status == 200 and body["status"] == "accepted", body
        expected_micro[shared] += (250 + i) * MICRO
        expected_rows[shared] += 1

    async def all_recorded():
        counts = {j: len(await contributions(pipe, j)) for j in rates}
        return counts == expected_rows
    await wait_for(all_recorded, 90, "every contribution in MySQL")

    # Duplicate delivery: every contribution command again, and every REST contribution again.
    for record, raw, *_ in await pipe.read_topic("game.jackpot.command"):
        if record is not None and type(record).__name__ == "ContributeBets":
            await pipe.publish("game.jackpot.command", record.jackpot_id, raw)
    for i, contribution_id in enumerate(rest_ids):
        status, body = await contribute(pipe, shared, 250 + i, contribution_id)
        assert status == 200 and body["repeat"] is True, body
    status, body = await contribute(pipe, shared, 999, rest_ids[0])     # same id, other content
    assert status == 409 and body["reason"] == "contribution_id_reused", body
    await wait_consumed(pipe, ["game.jackpot.command"])

    for j in rates:
        rows = await contributions(pipe, j)
        assert len(rows) == expected_rows[j] == len({r["contribution_key"] for r in rows})
        assert sum(r["amount_micro"] for r in rows) == expected_micro[j] - seeds[j] * MICRO
        await wait_for(lambda j=j: _value_is(pipe, j, expected_micro[j] // MICRO), 30, f"the view of {j}")
    result = await reconcile_cli(pipe)
    assert result.returncode == 0, result.stdout
    for j in rates:
        rows = await pipe.rows("SELECT * FROM jackpot_reconciliation WHERE jackpot_id = :j ORDER BY id DESC", j=j)
        assert rows[0]["difference_micro"] == 0 and rows[0]["pool_micro"] == expected_micro[j], rows[0]


# ------------------------------------------------------------------ must_hit_by

async def test_must_hit_by_hits_at_the_committed_value_and_the_overflow_carries(pipe, base_settings):
    jackpot_id = jid(pipe, "mystery")
    first = await create_jackpot(pipe, jackpot_id=jackpot_id, tier="mega", currency="EUR", rate_bps=100,
                                 seed=1_000, cap=1_500, trigger="must_hit_by")
    assert first["value"] == 1_000 and len(first["commitment"]) == 64
    hit_value, nonce = await secret(base_settings, jackpot_id, 1)
    assert hashlib.sha256(f"{hit_value}:{nonce}".encode()).hexdigest() == first["commitment"]
    # Contributions of 100 up to the one that reaches the hit value; the last one crosses it.
    value = 1_000
    while value + 100 < hit_value:
        status, body = await contribute(pipe, jackpot_id, 100, playerId="nobody")
        assert status == 200 and "award" not in body, body
        value += 100
    # Before the hit, the committed value's nonce is on no topic and in no changelog.
    for topic in ("game.jackpot", "game.jackpot.command", "game.payout", "game.reply"):
        assert not any(nonce.encode() in raw for _, raw, *_ in await pipe.read_topic(topic)), topic
    for table in ("jackpot_pools", "jackpot_keys"):
        assert not any(nonce.encode() in v for v in await pipe.read_topic_raw(f"crash-{pipe.name}-{table}-changelog"))
    status, body = await contribute(pipe, jackpot_id, 100 + 37, playerId="lucky")
    assert status == 200 and body["award"]["amount"] == hit_value, body
    overflow = value + 137 - hit_value
    # The view follows the pool's committed state (written right after the answer).
    second = await wait_for(lambda: _cycle_is(pipe, jackpot_id, 2), 30, "the view of cycle 2")
    assert second["value"] == 1_000 + overflow and second["commitment"] != first["commitment"]
    [hit] = await hit_events(pipe, jackpot_id)
    assert (hit.hit_value, hit.nonce, hit.commitment, hit.amount, hit.user_id) == (
        hit_value, nonce, first["commitment"], hit_value, "lucky")
    assert hit.overflow_micro == overflow * MICRO
    # The winner is paid the hit value, once, through the outbox.
    row = await wait_for(lambda: pipe.rows("SELECT * FROM payout_outbox WHERE order_no = :o AND status = 'acked'",
                                           o=f"bonus:{hit.award_id}:1"), 60, "the bonus payout acked")
    assert (row[0]["user_id"], row[0]["amount"], row[0]["kind"]) == ("lucky", hit_value, "bonus")
    # The verifier checks the revealed commitment (and would report a forged one).
    proc = subprocess.run([str(BIN / "crash-jackpot"), "verify", "--jackpot", jackpot_id], env=pipe.env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "1 revealed commitments checked, 0 failed" in proc.stdout, proc.stdout
    status, report = await pipe.ops("GET", f"/ops/jackpots/{jackpot_id}/verify")
    assert status == 200 and report["checked"] == 1 and report["failures"] == []
    async with pipe.db.begin() as conn:
        await conn.execute(text("UPDATE jackpot_cycle SET hit_value = hit_value + 1 WHERE jackpot_id = :j"
                                " AND cycle = 1"), {"j": jackpot_id})
    proc = subprocess.run([str(BIN / "crash-jackpot"), "verify", "--jackpot", jackpot_id], env=pipe.env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "not the published commitment" in proc.stdout, proc.stdout


# ------------------------------------------------------------------ the term jackpot

async def test_term_jackpot_pays_the_podium_and_without_cashouts_the_triggering_bet(pipe, base_settings):
    # A betting window long enough for the trigger bet, its hit and the four other bets.
    config = {**FAST_CONFIG, "growth_per_ms": "0.0004", "betting_ms": 5000}
    channel_id = await pipe.create_channel("term", betting_ms=5000)
    await pipe.wait_gateway_channel(channel_id)
    jackpot_id = jid(pipe, "term")
    # Seed 10000 and cap 10001: the first contribution of a cycle reaches the hit value. The
    # change queued at once applies from the first reset: later cycles never hit in this test.
    await create_jackpot(pipe, jackpot_id=jackpot_id, tier="local", channel_id=channel_id, currency="EUR",
                         rate_bps=10_000, seed=10_000, cap=10_001, trigger="must_hit_by",
                         rank_split_bps=[5000, 3000, 2000])
    status, body = await pipe.ops("POST", f"/ops/jackpots/{jackpot_id}/config", {"cap": 10**9})
    assert status == 202, body
    crash_of = await peek_crash_points(pipe, channel_id, config)

    async def feeding_term_with(wanted):
        async def found():
            term, crash = await next_term(pipe, channel_id, crash_of, wanted, window_left_ms=4000)
            rows = await pipe.rows("SELECT config FROM crash_term WHERE term_id = :t", t=term["term_id"])
            ok = rows and jackpot_id in json.loads(rows[0]["config"]).get("jackpots", [])
            return (term, crash) if ok else None
        return await wait_for(found, 120, "a term feeding the term jackpot", every=0.1)

    term, crash = await feeding_term_with(lambda c: c >= 300)
    trigger = await place(pipe, channel_id, "trigger", 500)                   # manual, never cashed out
    await wait_for(lambda: hit_events(pipe, jackpot_id), 30, "the hit")
    a = await place(pipe, channel_id, "a", 100, auto=250)
    b = await place(pipe, channel_id, "b", 100, auto=200)
    c = await place(pipe, channel_id, "c", 100, auto=200)                     # ties with b: b was earlier
    await place(pipe, channel_id, "d", 100, auto=110)
    assert {x["term_id"] for x in (trigger, a, b, c)} == {term["term_id"]}
    [hit] = await hit_events(pipe, jackpot_id)
    assert hit.term_id == term["term_id"] and hit.user_id == "trigger" and hit.ranked
    amount = hit.amount
    assert amount in (10_000, 10_001)
    # By hand: 50/30/20 rounded down, the remainder to rank 1.
    shares = [amount * 5000 // 10_000, amount * 3000 // 10_000, amount * 2000 // 10_000]
    shares[0] += amount - sum(shares)
    await pipe.wait_term(term["term_id"], ("closed",), 90)

    async def winners_of(award_id):
        return await pipe.rows("SELECT rank_no, user_id, bonus_amount, order_no FROM jackpot_award_winner"
                               " WHERE award_id = :a ORDER BY rank_no", a=award_id)
    rows = await wait_for(lambda: winners_of(hit.award_id), 60, "the winners")
    assert [(r["rank_no"], r["user_id"], r["bonus_amount"]) for r in rows] == [
        (1, "a", shares[0]), (2, "b", shares[1]), (3, "c", shares[2])]
    for row in rows:
        paid = await wait_for(lambda o=row["order_no"]: pipe.rows(
            "SELECT amount FROM payout_outbox WHERE order_no = :o AND status = 'acked'", o=o), 60, "a bonus paid")
        assert paid[0]["amount"] == row["bonus_amount"]

    # No cashout in the term: the bet whose contribution triggered the hit takes it all.
    status, body = await pipe.ops("POST", f"/ops/jackpots/{jackpot_id}/config", {"seed": 10_000, "cap": 10_001})
    assert status == 202, body
    # The cap change is pending until the next reset, which only a hit brings: force one over REST.
    status, body = await contribute(pipe, jackpot_id, 10**9, playerId="rest-player")
    assert status == 200 and body["award"], body
    term, crash = await feeding_term_with(lambda c: c <= 400)
    await place(pipe, channel_id, "lonely", 50)                                # no auto, nobody cashes out
    hits = await wait_for(lambda: _hits_of_term(pipe, jackpot_id, term["term_id"]), 30, "the hit of the term")
    await pipe.wait_term(term["term_id"], ("closed",), 90)
    rows = await wait_for(lambda: winners_of(hits[0].award_id), 60, "the winner")
    assert [(r["rank_no"], r["user_id"], r["bonus_amount"]) for r in rows] == [(1, "lonely", hits[0].amount)]


async def _hits_of_term(pipe, jackpot_id: str, term_id: str) -> list:
    return [h for h in await hit_events(pipe, jackpot_id) if h.term_id == term_id]


# ------------------------------------------------------------------ award atomicity and idempotence

async def test_near_simultaneous_hits_and_five_identical_awards(pipe):
    jackpot_id = jid(pipe, "external")
    await create_jackpot(pipe, jackpot_id=jackpot_id, tier="mega", currency="EUR", rate_bps=100, seed=2_000,
                         cap=10**9, trigger="external")
    status, body = await contribute(pipe, jackpot_id, 8_000)
    assert status == 200 and body["value"] == 10_000, body

    async def award(key: str, player: str):
        return await pipe.signed(pipe.gateway_url, "operator", "POST", f"/jackpot/{jackpot_id}/award",
                                 {"playerId": player, "jackpotId": jackpot_id, "sessionId": "s-1"},
                                 headers={"Idempotency-Key": key})

    first, second = await asyncio.gather(award("k-first", "p1"), award("k-second", "p2"))
    amounts = sorted([first[1]["award"]["amount"], second[1]["award"]["amount"]], reverse=True)
    # One of them is processed first and takes the locked value; the other gets the pool as reset.
    assert amounts == [10_000, 2_000], (first, second)
    answers = await asyncio.gather(*(award("k-five", "p3") for _ in range(5)))
    assert {a[0] for a in answers} == {200}
    assert len({a[1]["award"]["award_id"] for a in answers}) == 1
    award_id = answers[0][1]["award"]["award_id"]
    rows = await wait_for(lambda: pipe.rows("SELECT * FROM payout_outbox WHERE order_no LIKE :o AND status = 'acked'",
                                            o=f"bonus:{award_id}:%"), 60, "the payout")
    assert len(rows) == 1 and rows[0]["user_id"] == "p3"
    assert len(await pipe.rows("SELECT * FROM jackpot_award WHERE award_id = :a", a=award_id)) == 1


# ------------------------------------------------------------------ parameters and pauses

async def test_a_change_applies_at_the_next_reset_and_a_paused_pool_refuses_and_keeps(pipe):
    channel_id = await pipe.create_channel("params", betting_ms=3000)
    await pipe.wait_gateway_channel(channel_id)
    jackpot_id = jid(pipe, "params")
    await create_jackpot(pipe, jackpot_id=jackpot_id, tier="local", channel_id=channel_id, currency="EUR",
                         rate_bps=100, seed=1_000, cap=10**9, trigger="external")
    status, body = await pipe.ops("POST", f"/ops/jackpots/{jackpot_id}/config", {"rate_bps": 1_000, "seed": 3_000})
    assert status == 202 and body["applies"] == "from the next reset", body
    await term_feeding(pipe, channel_id, {jackpot_id})
    await place(pipe, channel_id, "u1", 10_000)                      # the old rate: 100 bps -> 100
    view = await wait_for(lambda: _value_is(pipe, jackpot_id, 1_100), 30, "the old rate applied")
    assert view["pending"]["rate_bps"] == 1_000 and view["rate_bps"] == 100
    status, body = await pipe.signed(pipe.gateway_url, "operator", "POST", f"/jackpot/{jackpot_id}/award",
                                     {"playerId": "winner", "jackpotId": jackpot_id}, headers={"Idempotency-Key": "r1"})
    assert status == 200 and body["award"]["amount"] == 1_100 and body["value"] == 3_000, body
    await wait_for(lambda: _cycle_is(pipe, jackpot_id, 2), 30, "the reset")
    await place(pipe, channel_id, "u2", 10_000)                      # the new rate: 1000 bps -> 1000
    await wait_for(lambda: _value_is(pipe, jackpot_id, 4_000), 30, "the new rate applied")

    status, body = await pipe.ops("POST", f"/ops/jackpots/{jackpot_id}/status", {"status": "paused", "reason": "t"})
    assert status == 202, body
    await wait_for(lambda: _status_is(pipe, jackpot_id, "paused"), 30, "paused")
    before = len(await contributions(pipe, jackpot_id))
    status, body = await contribute(pipe, jackpot_id, 500)
    assert status == 409 and body["reason"] == "paused", body
    await place(pipe, channel_id, "u3", 10_000)
    await wait_consumed(pipe, ["game.command", "game.jackpot.command"])
    assert (await jackpot_view(pipe, jackpot_id))["value"] == 4_000
    assert len(await contributions(pipe, jackpot_id)) == before
    status, body = await pipe.ops("POST", f"/ops/jackpots/{jackpot_id}/status", {"status": "active"})
    await wait_for(lambda: _status_is(pipe, jackpot_id, "active"), 30, "active again")
    status, body = await contribute(pipe, jackpot_id, 500)
    assert status == 200 and body["value"] == 4_500, body


async def _value_is(pipe, jackpot_id: str, value: int):
    view = await jackpot_view(pipe, jackpot_id)
    return view if view and view["value"] == value else None


async def _cycle_is(pipe, jackpot_id: str, cycle: int):
    view = await jackpot_view(pipe, jackpot_id)
    return view if view and view["cycle"] == cycle else None


async def _status_is(pipe, jackpot_id: str, status: str):
    view = await jackpot_view(pipe, jackpot_id)
    return view if view and view["status"] == status else None


# ------------------------------------------------------------------ near-cap notices, audit rollback

async def test_near_cap_notice_once_per_cycle_signed_and_retried(pipe, webhook):
    jackpot_id = jid(pipe, "nearcap")
    await create_jackpot(pipe, jackpot_id=jackpot_id, tier="mega", currency="EUR", rate_bps=100, seed=1_000,
                         cap=2_000, trigger="external")
    webhook.fail_first[jackpot_id] = 2                         # the webhook is down at first: retried
    assert (await contribute(pipe, jackpot_id, 500))[0] == 200    # 75 % of the cap
    assert (await contribute(pipe, jackpot_id, 100))[0] == 200    # 80 %: the notice
    assert (await contribute(pipe, jackpot_id, 100))[0] == 200    # still near: no second notice

    async def notices(count: int):
        mine = [n for n in webhook.notices if n["jackpot_id"] == jackpot_id]
        return mine if len(mine) >= count else None
    [notice] = await wait_for(lambda: notices(1), 60, "the near-cap notice")
    assert (notice["cycle"], notice["value"], notice["cap"], notice["share_bps"]) == (1, 1_600, 2_000, 8_000)
    assert notice["key"] == notice["notice_id"] and notice["key_id"] == "crash-jackpot"

    async def recorded():
        # The notifier records the delivery after the webhook has answered it.
        rows = await pipe.rows("SELECT status, retry_count FROM jackpot_notice WHERE notice_id = :n", n=notice["key"])
        return rows if rows and rows[0]["status"] in ("delivered", "failed") else None
    assert await wait_for(recorded, 30, "the delivery recorded") == [{"status": "delivered", "retry_count": 3}]
    status, body = await pipe.signed(pipe.gateway_url, "operator", "POST", f"/jackpot/{jackpot_id}/award",
                                     {"playerId": "nc"}, headers={"Idempotency-Key": "nc-1"})
    assert status == 200 and body["award"]["amount"] == 1_700
    assert (await contribute(pipe, jackpot_id, 600))[0] == 200    # cycle 2 at 80 % again
    second = (await wait_for(lambda: notices(2), 60, "the second cycle's notice"))[1]
    assert second["cycle"] == 2 and webhook.refused == []     # every notice carried a valid signature


async def test_audit_mode_rollback_is_a_compensating_entry_for_an_unpaid_award(pipe):
    jackpot_id = jid(pipe, "audit")
    await create_jackpot(pipe, jackpot_id=jackpot_id, tier="mega", currency="EUR", rate_bps=100, seed=1_000,
                         cap=10**9, trigger="external")
    assert (await contribute(pipe, jackpot_id, 4_000))[0] == 200
    # The player's wallet refuses this award's payout (its order number is taken): it fails.
    award_id, order_no = f"{jackpot_id}.1", f"bonus:{jackpot_id}.1:1"
    async with pipe.wallet() as wallet:
        assert (await wallet.credit(order_no, "someone-else", "EUR", 1)).ok
    status, body = await pipe.signed(pipe.gateway_url, "operator", "POST", f"/jackpot/{jackpot_id}/award",
                                     {"playerId": "closed-account"}, headers={"Idempotency-Key": "a-1"})
    assert status == 200 and body["award"] == {"award_id": award_id, "amount": 5_000, "cycle": 1}
    await wait_for(lambda: pipe.rows("SELECT 1 FROM payout_outbox WHERE order_no = :o AND status = 'failed'",
                                     o=order_no), 60, "the payout failed")
    path = f"/jackpot/{jackpot_id}/awards/{award_id}/rollback"
    status, body = await pipe.signed(pipe.gateway_url, "admin", "POST", path, {"reason": "account closed"})
    assert status == 409 and body["error"] == "not_in_audit", body
    status, body = await pipe.ops("POST", f"/ops/jackpots/{jackpot_id}/status", {"status": "audit"})
    await wait_for(lambda: _status_is(pipe, jackpot_id, "audit"), 30, "audit mode")
    status, body = await pipe.signed(pipe.gateway_url, "operator", "POST", path, {"reason": "x"})
    assert status == 403                                          # the game may not roll back
    status, body = await pipe.signed(pipe.gateway_url, "admin", "POST", path, {"reason": "account closed"})
    assert status == 202 and body["amount"] == 5_000, body
    await wait_for(lambda: _value_is(pipe, jackpot_id, 6_000), 30, "the amount back in the pool")
    status, body = await pipe.signed(pipe.gateway_url, "admin", "POST", path, {"reason": "again"})
    assert status == 202                                          # repeated: applied once
    status, body = await pipe.ops("POST", f"/ops/payouts/{order_no}/retry")
    assert status == 409                                          # cancelled, not failed: never paid
    rows = await wait_for(lambda: pipe.rows("SELECT state FROM jackpot_compensation WHERE award_id = :a"
                                            " AND state = 'applied'", a=award_id), 30, "the compensation")
    assert len(rows) == 1
    assert (await pipe.rows("SELECT status FROM payout_outbox WHERE order_no = :o", o=order_no)) == [
        {"status": "cancelled"}]
    assert len(await pipe.rows("SELECT * FROM jackpot_award WHERE award_id = :a", a=award_id)) == 1
    await wait_consumed(pipe, ["game.jackpot.command"])
    assert (await jackpot_view(pipe, jackpot_id))["value"] == 6_000
    result = await reconcile_cli(pipe, "--jackpot", jackpot_id)
    assert result.returncode == 0, result.stdout


# ------------------------------------------------------------------ bad input and tampering

async def test_bad_input_is_refused_with_a_reason_and_records_nothing(pipe):
    jackpot_id = jid(pipe, "strict")
    await create_jackpot(pipe, jackpot_id=jackpot_id, tier="mega", currency="EUR", rate_bps=100, seed=1_000,
                         cap=10**9, trigger="external")
    path = f"/jackpot/{jackpot_id}/contribute"
    good = {"contributionId": "c-1", "gameId": "slots-1", "amount": 100, "currency": "EUR"}
    cases = [
        ({**good, "amount": -5}, "operator", 400, "amount"),
        ({**good, "amount": 2.5}, "operator", 400, "amount"),
        ({**good, "amount": "100"}, "operator", 400, "amount"),
        ({**good, "currency": "USD"}, "operator", 400, "EUR"),
        ({**good, "contributionId": "bad id\n"}, "operator", 400, "contributionId"),
        (good, "reader", 403, "role"),
        (good, "player-page", 403, "role"),
    ]
    for body, key, status, reason in cases:
        got, answer = await pipe.signed(pipe.gateway_url, key, "POST", path, body)
        assert got == status and reason in answer["reason"], (body, key, got, answer)
    got, answer = await pipe.signed(pipe.gateway_url, "operator", "POST", f"/jackpot/{jid(pipe, 'nope')}/contribute",
                                    good)
    assert got == 404 and "no jackpot" in answer["reason"]
    got, answer = await pipe.signed(pipe.gateway_url, "operator", "POST", path, {**good, "gameId": "x" * 5000})
    assert got == 413 and answer["reason"], answer
    assert pipe.http is not None
    async with pipe.http.post(pipe.gateway_url + path, json=good) as resp:     # unsigned
        assert resp.status == 401 and "missing header" in (await resp.json())["reason"]
    assert await contributions(pipe, jackpot_id) == []
    assert (await jackpot_view(pipe, jackpot_id))["value"] == 1_000

    # A tampered contribution row is reported by the reconciliation.
    status, body = await contribute(pipe, jackpot_id, 100)
    assert status == 200
    await wait_for(lambda: contributions(pipe, jackpot_id), 30, "the contribution row")
    async with pipe.db.begin() as conn:
        await conn.execute(text("UPDATE jackpot_contributions SET amount_micro = amount_micro + 1"
                                " WHERE jackpot_id = :j"), {"j": jackpot_id})
    result = await reconcile_cli(pipe, "--jackpot", jackpot_id)
    assert result.returncode == 1 and "difference -1 " in result.stdout, result.stdout


# ------------------------------------------------------------------ kill -9 in the middle of awards

async def test_kill9_during_awards_pays_each_award_once_and_the_pool_reconciles(pipe):
    jackpot_id = jid(pipe, "crashy")
    await create_jackpot(pipe, jackpot_id=jackpot_id, tier="mega", currency="EUR", rate_bps=100, seed=100,
                         cap=10**9, trigger="external")
    keys = [f"award-{i}" for i in range(12)]

    def requests_of(i: int, key: str):
        return (lambda: contribute(pipe, jackpot_id, 1_000 + i, f"kc-{i}"),
                lambda: pipe.signed(pipe.gateway_url, "operator", "POST", f"/jackpot/{jackpot_id}/award",
                                    {"playerId": f"k{i}", "jackpotId": jackpot_id}, headers={"Idempotency-Key": key}))

    async def until_answered(request):
        """As a caller whose answer was lost: the same request again until a definitive answer."""
        async def answered():
            try:
                status, body = await request()
            except Exception:
                return None
            return (status, body) if status in (200, 409) else None
        return await wait_for(answered, 120, "a definitive answer", every=0.5)

    first_round = asyncio.gather(*(req() for i, key in enumerate(keys) for req in requests_of(i, key)),
                                 return_exceptions=True)
    await wait_for(lambda: pipe.rows("SELECT 1 FROM jackpot_award WHERE jackpot_id = :j", j=jackpot_id), 60,
                   "a first award")
    pipe.workers[1].kill9()
    await first_round
    pipe.start_worker(1)
    answers = await asyncio.gather(*(until_answered(req) for i, key in enumerate(keys) for req in requests_of(i, key)))
    awards = {body["award"]["award_id"] for status, body in answers[1::2] if status == 200}
    assert len(awards) == len(keys), answers
    rows = await wait_for(lambda: _acked_bonuses(pipe, jackpot_id, len(keys)), 120, "every award paid")
    assert len({r["order_no"] for r in rows}) == len(keys)
    assert len(await contributions(pipe, jackpot_id)) == len(keys)
    result = await reconcile_cli(pipe, "--jackpot", jackpot_id)
    assert result.returncode == 0, result.stdout


async def _acked_bonuses(pipe, jackpot_id: str, count: int):
    rows = await pipe.rows("SELECT o.order_no, o.status FROM jackpot_award_winner w JOIN payout_outbox o"
                           " ON o.order_no = w.order_no WHERE w.jackpot_id = :j", j=jackpot_id)
    return rows if len(rows) == count and all(r["status"] == "acked" for r in rows) else None


def test_every_record_on_the_jackpot_topics_decodes():
    """The jackpot records are part of the one codec (a record the codec cannot read would be a dead letter)."""
    from streams.codec import RECORDS
    from streams.jackpot_events import JACKPOT_RECORDS
    assert all(cls.__name__ in RECORDS for cls in JACKPOT_RECORDS)
    assert decode(b'{"type":"JackpotSnapshot","event_id":"e","channel_id":"","ts":1,"jackpot_id":"j",'
                  b'"request_id":"r","cycle":1,"pool_micro":5}').pool_micro == 5
