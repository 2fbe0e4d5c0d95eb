"""Bets, cashouts and settlement, end to end (gateway -> Kafka -> Faust agents -> MySQL), checked
against an independent computation from the committed crash points and the requests."""
from __future__ import annotations

import asyncio
import math
import random
import subprocess
import uuid

import pytest
from sqlalchemy import text

from harness import (
    BIN,
    FAST_CONFIG,
    DirectCommands,
    first_ms_at,
    independent_crash_x100,
    next_term,
    now_ms,
    peek_crash_points,
    sleep_until,
    taking_bets,
    wait_for,
)
from streams.events import BetCashedOut, BetPlaced, CashoutBet, CashoutRequested, PlaceBet, TermClosed
from streams.replay import replay_term

pytestmark = pytest.mark.slow

LIMITS = {"min_bet": 10, "max_bet": 100_000, "max_bets_per_user": 3, "max_win": 10_000_000,
          "max_payout_per_term": 1_000_000_000}
TWO_CURRENCIES = {"EUR": dict(LIMITS), "USD": dict(LIMITS)}


@pytest.fixture(scope="module")
async def pipe(pipeline_factory):
    return await pipeline_factory("bets")


def m_at(elapsed_ms: int, growth: float) -> int:
    """The curve, written independently of streams.money."""
    return 100 if elapsed_ms <= 0 else max(100, math.floor(100 * math.exp(growth * elapsed_ms)))


async def place(pipe, channel_id: str, user: str, amount: int, currency: str = "EUR", auto: int | None = None,
                order: str | None = None) -> tuple[int, dict]:
    body = {"api_order_no": order or f"o-{uuid.uuid4().hex[:16]}", "channel_id": channel_id, "user_id": user,
            "amount": amount, "currency": currency}
    if auto is not None:
        body["auto_cashout_x100"] = auto
    return await pipe.api("POST", "/v1/bets", body)


async def wait_state(pipe, channel_id: str, term_id: str, states: tuple[str, ...], timeout: float = 60) -> dict:
    async def reached():
        term = await pipe.live_term(channel_id)
        if term and term["term_id"] == term_id and term["state"] in states:
            return term
        rows = await pipe.rows("SELECT * FROM crash_term WHERE term_id = :t", t=term_id)
        return rows[0] if rows and rows[0]["state"] in states else None
    return await wait_for(reached, timeout, f"{term_id} to reach {states}", every=0.02)


# ------------------------------------------------------------------ many bets, exact settlement

async def _play_term(pipe, channel_id: str, growth: float, rng: random.Random) -> dict:
    """One term: ~40 bets (two currencies, autos, manuals, cancels, manual cashouts)."""
    term = await taking_bets(pipe, channel_id, window_left_ms=1800)
    bets: dict[str, dict] = {}
    semaphore = asyncio.Semaphore(10)

    async def one(i: int) -> None:
        user = f"player-{i % 15}"
        amount = rng.randint(10, 5000)
        currency = rng.choice(["EUR", "USD"])
        auto = rng.randint(101, 400) if rng.random() < 0.5 else None
        order = f"o-{uuid.uuid4().hex[:16]}"
        async with semaphore:
            status, body = await place(pipe, channel_id, user, amount, currency, auto, order)
        bets[order] = {"user": user, "amount": amount, "currency": currency, "auto": auto, "status": status,
                       "answer": body, "cancel": None, "cashout": None}

    await asyncio.gather(*(one(i) for i in range(40)))
    accepted = [o for o, b in bets.items() if b["status"] == 200]
    assert len(accepted) >= 30, [b["answer"].get("reason") for b in bets.values() if b["status"] != 200]
    assert all(bets[o]["answer"]["term_id"] == term["term_id"] for o in accepted), (
        term, now_ms(), sorted({bets[o]["answer"]["term_id"] for o in accepted}))
    for order in rng.sample(accepted, 4):
        bets[order]["cancel"] = await pipe.api("POST", f"/v1/channels/{channel_id}/bets/{order}/cancel",
                                               {"user_id": bets[order]["user"]})
    flying = await wait_state(pipe, channel_id, term["term_id"], ("flying", "crashed", "closed"))
    manual = [o for o in accepted if bets[o]["auto"] is None and bets[o]["cancel"] is None]

    async def cash_out(order: str, delay_s: float) -> None:
        await asyncio.sleep(delay_s)   # players click at random moments of the flight
        sent = now_ms()
        answer = await pipe.api("POST", f"/v1/channels/{channel_id}/bets/{order}/cashout",
                                {"user_id": bets[order]["user"]})
        bets[order]["cashout"] = (sent, now_ms(), answer)

    await asyncio.gather(*(cash_out(o, rng.uniform(0, 2.0)) for o in manual[: len(manual) * 2 // 3]))
    row = await pipe.wait_term(term["term_id"], ("closed",), 90)
    assert row["flying_at"] == flying["flying_at"]
    return {"term": row, "bets": bets}


async def test_many_bets_on_two_channels_settle_exactly(pipe):
    rng = random.Random(20261121)
    growth = {"m1": 0.0004, "m2": 0.0006}
    channels = {s: await pipe.create_channel(s, betting_ms=3000, growth_per_ms=str(g), currencies=TWO_CURRENCIES)
                for s, g in growth.items()}
    for channel_id in channels.values():
        await pipe.wait_gateway_channel(channel_id)

    async def play(suffix: str) -> list[dict]:
        return [await _play_term(pipe, channels[suffix], growth[suffix], rng) for _ in range(3)]

    played = dict(zip(channels, await asyncio.gather(*(play(s) for s in channels)), strict=True))
    requests = {}
    for channel_id in channels.values():
        for record, _, _, _ in await pipe.read_topic("game.bet", key=channel_id):
            if isinstance(record, CashoutRequested):
                requests[record.api_order_no] = record.requested_at
    closed_events = {r.term_id: r for r, _, _, _ in await pipe.read_topic("game.term")
                     if isinstance(r, TermClosed)}

    settled_bets = 0
    for suffix, terms in played.items():
        g = growth[suffix]
        chain = (await pipe.rows("SELECT salt FROM fairness_chain WHERE channel_id = :c", c=channels[suffix]))[0]
        for played_term in terms:
            term, bets = played_term["term"], played_term["bets"]
            crash = term["crash_x100"]
            assert crash == independent_crash_x100(term["revealed_hash"], chain["salt"], 100, 2000)
            assert term["crash_at"] == term["flying_at"] + first_ms_at(crash, g)
            expected_totals: dict[str, dict[str, int]] = {}
            rows = {r["api_order_no"]: r for r in await pipe.rows("SELECT * FROM bet WHERE term_id = :t",
                                                                   t=term["term_id"])}
            outbox = {r["order_no"]: r for r in await pipe.rows(
                "SELECT * FROM payout_outbox WHERE term_id = :t AND kind = 'cashout'", t=term["term_id"])}
            for order, bet in bets.items():
                if bet["status"] != 200:
                    continue
                row = rows[order]
                if bet["cancel"] is not None and bet["cancel"][0] == 200:
                    assert row["status"] == "cancelled", row
                    continue
                expected = ("lost", None)
                if bet["auto"] is not None and bet["auto"] <= crash:
                    expected = ("cashed_out", bet["auto"])
                if bet["cashout"] is not None:
                    sent, answered, (status, answer) = bet["cashout"]
                    if status == 200:
                        t = requests[order]
                        assert sent - 5 <= t <= answered + 5
                        assert t < term["crash_at"]
                        expected = ("cashed_out", m_at(t - term["flying_at"], g))
                        assert answer["multiple_x100"] == expected[1] and answer["mode"] == "manual"
                    else:
                        assert answer["reason"] in ("crashed", "late", "term_over"), answer
                        assert answered >= term["crash_at"] - 5
                status, multiple = expected
                payout = bet["amount"] * multiple // 100 if multiple else None
                assert (row["status"], row["cashout_x100"], row["payout"]) == (status, multiple, payout), (order, row)
                if payout:
                    assert outbox[f"cashout:{row['bet_id']}"]["amount"] == payout
                t = expected_totals.setdefault(bet["currency"], {"bets": 0, "stakes": 0, "payouts": 0,
                                                                  "refunds": 0})
                t["bets"] += 1
                t["stakes"] += bet["amount"]
                t["payouts"] += payout or 0
                settled_bets += 1
            for t in expected_totals.values():
                t["house_result"] = t["stakes"] - t["payouts"]
            assert len(outbox) == sum(1 for r in rows.values() if r["status"] == "cashed_out")
            stored = {r["currency"]: {k: r[k] for k in ("bets", "stakes", "payouts", "refunds", "house_result")}
                      for r in await pipe.rows("SELECT * FROM crash_term_totals WHERE term_id = :t",
                                               t=term["term_id"])}
            assert stored == expected_totals
            assert closed_events[term["term_id"]].totals == expected_totals
            report = await replay_term(pipe.settings, term["term_id"])
            assert report["problems"] == [], report
    assert settled_bets >= 150

    # The replay tool catches a record that does not match the events: tamper with one cashout.
    # (any played term with a cashout: a term may crash before every target and manual cashout)
    term_ids = tuple(entry["term"]["term_id"] for entries in played.values() for entry in entries)
    victim = (await pipe.rows("SELECT bet_id, term_id, payout FROM bet WHERE term_id IN :t AND status = 'cashed_out'"
                              " ORDER BY term_id LIMIT 1", t=term_ids))[0]
    term_id = victim["term_id"]
    async with pipe.db.begin() as conn:
        await conn.execute(text("UPDATE bet SET payout = payout + 1 WHERE bet_id = :b"), {"b": victim["bet_id"]})
    report = await replay_term(pipe.settings, term_id)
    assert any(victim["bet_id"] in problem for problem in report["problems"]), report
    cli = subprocess.run([str(BIN / "crash-replay"), "--term", term_id], env=pipe.env, capture_output=True,
                         text=True, timeout=120)
    assert cli.returncode == 1 and "MISMATCH" in cli.stdout, cli.stdout + cli.stderr


# ------------------------------------------------------------------ idempotency, timing rules

async def test_same_place_request_five_times_at_once_is_one_bet(pipe):
    channel_id = await pipe.create_channel("idem")
    await pipe.wait_gateway_channel(channel_id)
    await taking_bets(pipe, channel_id, window_left_ms=700)
    order = f"idem-{uuid.uuid4().hex[:12]}"
    answers = await asyncio.gather(*(place(pipe, channel_id, "solo", 777, order=order) for _ in range(5)))
    assert {status for status, _ in answers} == {200}
    assert len({(a["bet_id"], a["term_id"], a["status"]) for _, a in answers}) == 1

    async def one_row():
        rows = await pipe.rows("SELECT * FROM bet WHERE api_order_no = :o", o=order)
        return rows if rows else None
    rows = await wait_for(one_row, 30, "the bet row")
    assert len(rows) == 1 and rows[0]["amount"] == 777
    placed = [r for r, _, _, _ in await pipe.read_topic("game.bet", key=channel_id)
              if isinstance(r, BetPlaced) and r.api_order_no == order]
    assert len({p.event_id for p in placed}) == 1
    # A later repeat, even with another amount, gets the first decision.
    status, again = await place(pipe, channel_id, "solo", 999, order=order)
    assert status == 200 and again["bet_id"] == answers[0][1]["bet_id"] and again["amount"] == 777


@pytest.fixture(scope="module")
async def direct(pipe):
    client = DirectCommands(pipe)
    await client.start()
    yield client
    await client.stop()


SLOW_SEAL = {"grace_ms": 1000, "starting_ms": 1500}   # a second after each deadline to send late commands


async def test_late_bet_refused_and_cancel_only_before_the_window_closes(pipe, direct):
    channel_id = await pipe.create_channel("late", **SLOW_SEAL)
    await pipe.wait_gateway_channel(channel_id)
    term = await taking_bets(pipe, channel_id, window_left_ms=900)
    close = term["bets_close_at"]
    status, placed = await place(pipe, channel_id, "early", 500)
    assert status == 200
    await sleep_until(close + 50)
    # Received 1 ms before the close (arriving a little later, within the grace): accepted.
    in_time = await direct.send(PlaceBet, channel_id, close - 1, api_order_no=f"in-{uuid.uuid4().hex[:10]}",
                                user_id="edge", amount=100, currency="EUR")
    at_close = await direct.send(PlaceBet, channel_id, close, api_order_no=f"at-{uuid.uuid4().hex[:10]}",
                                 user_id="edge", amount=100, currency="EUR")
    assert (await direct.reply(in_time)).status == "accepted"
    refused = await direct.reply(at_close)
    assert (refused.status, refused.reason) == ("refused", "betting_closed")
    # Received after the close through the gateway: refused.
    status, late = await place(pipe, channel_id, "late", 100)
    assert status == 409 and late["reason"] == "betting_closed"
    # Cancel after pre_start: refused, the bet stands.
    await wait_state(pipe, channel_id, term["term_id"], ("starting", "flying", "crashed", "closed"))
    status, cancel = await pipe.api("POST", f"/v1/channels/{channel_id}/bets/{placed['api_order_no']}/cancel",
                                    {"user_id": "early"})
    assert status == 409 and cancel["reason"] == "betting_closed"
    # Received in time but reaching the pipeline after the bets were sealed: refused as late.
    await sleep_until(close + 1300)   # past the seal (grace 1000 ms)
    too_late = await direct.send(PlaceBet, channel_id, close - 1, api_order_no=f"tl-{uuid.uuid4().hex[:10]}",
                                 user_id="edge2", amount=100, currency="EUR")
    assert (await direct.reply(too_late)).reason == "late"
    await pipe.wait_term(term["term_id"], ("closed",), 90)
    rows = {r["api_order_no"]: r["status"] for r in await pipe.rows(
        "SELECT api_order_no, status FROM bet WHERE channel_id = :c", c=channel_id)}
    assert rows[placed["api_order_no"]] in ("lost", "cashed_out")


async def test_cashout_at_the_crash_time_and_auto_at_the_crash_point(pipe, direct):
    config = {**FAST_CONFIG, **SLOW_SEAL}
    channel_id = await pipe.create_channel("edge", **SLOW_SEAL)
    await pipe.wait_gateway_channel(channel_id)
    crash_of = await peek_crash_points(pipe, channel_id, config)
    term, crash = await next_term(pipe, channel_id, crash_of, lambda c: 130 <= c <= 1000, window_left_ms=700)
    orders = {}
    for name, auto in (("before", None), ("at", None), ("after", None), ("auto_exact", crash),
                       ("auto_above", crash + 1)):
        status, body = await place(pipe, channel_id, f"u-{name}", 1000, auto=auto)
        assert status == 200, body
        orders[name] = body["api_order_no"]
    crash_at = term["flying_at"] + first_ms_at(crash, float(config["growth_per_ms"]))
    await sleep_until(crash_at + 30)
    sent = {name: await direct.send(CashoutBet, channel_id, ts, api_order_no=orders[name], user_id=f"u-{name}")
            for name, ts in (("before", crash_at - 1), ("at", crash_at), ("after", crash_at + 1))}
    before, at, after = [await direct.reply(sent[n]) for n in ("before", "at", "after")]
    assert before.status == "accepted" and before.multiple_x100 == m_at(crash_at - 1 - term["flying_at"], 0.0004)
    assert before.multiple_x100 < crash and before.payout == 10 * before.multiple_x100
    assert (at.status, at.reason) == ("refused", "crashed")
    assert (after.status, after.reason) == ("refused", "crashed")
    row = await pipe.wait_term(term["term_id"], ("closed",), 90)
    assert (row["crash_x100"], row["crash_at"]) == (crash, crash_at)
    outcome = {name: (await pipe.rows("SELECT status, cashout_x100 FROM bet WHERE api_order_no = :o", o=o))[0]
               for name, o in orders.items()}
    assert outcome["before"] == {"status": "cashed_out", "cashout_x100": before.multiple_x100}
    assert outcome["at"]["status"] == outcome["after"]["status"] == "lost"
    assert outcome["auto_exact"] == {"status": "cashed_out", "cashout_x100": crash}
    assert outcome["auto_above"] == {"status": "lost", "cashout_x100": None}


# ------------------------------------------------------------------ risk limits

async def test_force_point_caps_the_term_payout_without_moving_the_crash(pipe):
    caps = {"EUR": {"min_bet": 10, "max_bet": 10_000, "max_bets_per_user": 3, "max_win": 50_000,
                    "max_payout_per_term": 50_000}}
    config = {**FAST_CONFIG, "currencies": caps}
    channel_id = await pipe.create_channel("force", currencies=caps, betting_ms=2500)
    await pipe.wait_gateway_channel(channel_id)
    crash_of = await peek_crash_points(pipe, channel_id, config)
    term, crash = await next_term(pipe, channel_id, crash_of, lambda c: c >= 300, window_left_ms=1500)
    placed = []
    for i in range(10):
        status, body = await place(pipe, channel_id, f"f-{i // 3}", 2000)
        assert status == 200, body
        placed.append(body["api_order_no"])
    status, auto = await place(pipe, channel_id, "f-auto", 2000, auto=150)
    assert status == 200, auto
    row = await pipe.wait_term(term["term_id"], ("closed",), 90)
    assert row["crash_x100"] == crash        # the force point never moves the crash point
    # Independently: the auto at 1.50x pays 3000 first; then 20000 open stake may reach
    # x with 3000 + 20000 * x // 100 <= 50000, i.e. x <= 235.
    force_at = max(x for x in range(100, 1000) if 3000 + 20000 * x // 100 <= 50_000)
    assert force_at == 235
    rows = {r["api_order_no"]: r for r in await pipe.rows("SELECT * FROM bet WHERE term_id = :t", t=term["term_id"])}
    assert {(rows[o]["status"], rows[o]["cashout_x100"], rows[o]["cashout_mode"]) for o in placed} == {
        ("cashed_out", force_at, "forced")}
    assert (rows[auto["api_order_no"]]["cashout_x100"], rows[auto["api_order_no"]]["cashout_mode"]) == (150, "auto")
    forced = [r for r, _, _, _ in await pipe.read_topic("game.bet", key=channel_id)
              if isinstance(r, BetCashedOut) and r.term_id == term["term_id"] and r.mode == "forced"]
    assert {f.forced_reason for f in forced} == {"max_payout_per_term"} and len({f.bet_id for f in forced}) == 10
    assert len({f.cashed_at for f in forced}) == 1
    totals = (await pipe.rows("SELECT * FROM crash_term_totals WHERE term_id = :t", t=term["term_id"]))[0]
    assert totals["payouts"] == 3000 + 10 * 4700 <= 50_000
    assert totals["house_result"] == totals["stakes"] - totals["payouts"] == 22_000 - 50_000


async def test_bad_requests_get_a_reason_and_never_reach_the_pipeline(pipe):
    channel_id = await pipe.create_channel("bad")
    await pipe.wait_gateway_channel(channel_id)
    cases = [
        ({"channel_id": "no-such-channel"}, 404, "unknown_channel"),
        ({"currency": "XXX"}, 400, "unsupported_currency"),
        ({"amount": -5}, 400, "bad_request"),
        ({"amount": 10.5}, 400, "bad_request"),
        ({"amount": "100"}, 400, "bad_request"),
        ({"amount": True}, 400, "bad_request"),
        ({"auto_cashout_x100": 100}, 400, "bad_request"),
        ({"api_order_no": "has spaces"}, 400, "bad_request"),
    ]
    orders = []
    for change, status_expected, error in cases:
        order = f"bad-{uuid.uuid4().hex[:10]}"
        orders.append(order)
        body = {"api_order_no": order, "channel_id": channel_id, "user_id": "u", "amount": 100, "currency": "EUR",
                **change}
        status, answer = await pipe.api("POST", "/v1/bets", body)
        assert (status, answer["error"]) == (status_expected, error), (change, answer)
        assert answer["reason"]
    # Oversize body and a bad signature.
    assert (await _raw_post(pipe, b"{" + b" " * 20000 + b"}"))[0] == 413
    assert (await _raw_post(pipe, b"{}", signature="0" * 64))[0] == 401
    commands = [r for r, _, _, _ in await pipe.read_topic("game.command", key=channel_id)
                if isinstance(r, PlaceBet) and r.api_order_no in orders]
    assert commands == []


async def _raw_post(pipe, raw: bytes, signature: str | None = None) -> tuple[int, object]:
    from web.signing import sign_headers
    headers = sign_headers("operator", pipe.base.api_keys["operator"][0], "POST", "/v1/bets", raw)
    if signature is not None:
        headers["X-Signature"] = signature
    async with pipe.http.post(pipe.gateway_url + "/v1/bets", data=raw, headers=headers) as resp:
        return resp.status, await resp.text()


async def test_max_bets_per_user_and_cancel_frees_nothing_twice(pipe):
    channel_id = await pipe.create_channel("limits")
    await pipe.wait_gateway_channel(channel_id)
    await taking_bets(pipe, channel_id, window_left_ms=900)
    answers = [await place(pipe, channel_id, "greedy", 100) for _ in range(4)]
    assert [s for s, _ in answers] == [200, 200, 200, 409]
    assert answers[3][1]["reason"] == "max_bets_per_user"
    status, cancel = await pipe.api("POST", f"/v1/channels/{channel_id}/bets/{answers[0][1]['api_order_no']}/cancel",
                                    {"user_id": "greedy"})
    assert status == 200
    status, again = await pipe.api("POST", f"/v1/channels/{channel_id}/bets/{answers[0][1]['api_order_no']}/cancel",
                                   {"user_id": "greedy"})
    assert status == 200 and again["bet_id"] == cancel["bet_id"]       # idempotent
    status, other = await pipe.api("POST", f"/v1/channels/{channel_id}/bets/{answers[1][1]['api_order_no']}/cancel",
                                   {"user_id": "someone-else"})
    assert status == 409 and other["reason"] == "not_your_bet"
    assert (await place(pipe, channel_id, "greedy", 100))[0] == 200     # the cancelled one freed a slot
