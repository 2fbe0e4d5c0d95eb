"""Terms flowing end to end (real Kafka, Faust worker, MariaDB): schedule, fairness, sink
idempotence, dead letters."""
from __future__ import annotations

import hashlib
import json
import math
import random
import re
import subprocess
import uuid

import pytest

from harness import (
    BIN,
    FAST_CONFIG,
    first_ms_at,
    independent_crash_x100,
    peek_crash_points,
    wait_consumed,
    wait_for,
)
from streams.codec import encode
from streams.events import ChainPublished
from streams.verify import verify_channel

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
async def pipe(pipeline_factory):
    return await pipeline_factory("terms")


def _config(**overrides):
    return {**FAST_CONFIG, **overrides}


async def test_two_channels_run_terms_on_their_schedule_and_verify(pipe):
    configs = {"a": _config(), "b": _config(betting_ms=1500, starting_ms=600, growth_per_ms="0.0006",
                                             cooldown_ms=500)}
    channels = {suffix: await pipe.create_channel(suffix, **config) for suffix, config in configs.items()}
    for channel_id in channels.values():
        await pipe.wait_closed_terms(channel_id, 3, timeout=120)
    for suffix, channel_id in channels.items():
        config = configs[suffix]
        growth = float(config["growth_per_ms"])
        chain = (await pipe.rows("SELECT * FROM fairness_chain WHERE channel_id = :c", c=channel_id))[0]
        terms = await pipe.terms(channel_id)
        assert [t["seq"] for t in terms] == list(range(1, len(terms) + 1)), "no term skipped or duplicated"
        assert [t["chain_index"] for t in terms] == [t["seq"] for t in terms]
        closed = [t for t in terms if t["state"] == "closed"]
        previous = None
        for term in closed:
            # The schedule fixed at creation.
            assert term["bets_close_at"] - term["created_at"] == config["betting_ms"]
            assert term["flying_at"] - term["bets_close_at"] == config["starting_ms"]
            assert term["crash_at"] == term["flying_at"] + first_ms_at(term["crash_x100"], growth)
            assert term["ended_at"] == term["crash_at"] <= term["closed_at"]
            assert term["aborted"] == 0 and term["recovered"] == 0
            # The crash point is the one committed by the chain.
            assert hashlib.sha256(bytes.fromhex(term["revealed_hash"])).hexdigest() == term["prev_hash"]
            assert term["crash_x100"] == independent_crash_x100(term["revealed_hash"], chain["salt"], 100, 2000)
            if term["seq"] == 1:
                assert term["prev_hash"] == chain["terminator"]
            if previous is not None:
                assert term["prev_hash"] == previous["revealed_hash"]
                assert term["created_at"] == previous["crash_at"] + config["cooldown_ms"]
            # Every state change is in the event log, stamped with its scheduled time.
            events = await pipe.rows("SELECT type, ts, payload FROM event_log WHERE term_id = :t ORDER BY ts, type",
                                     t=term["term_id"])
            stamped = {(e["type"], json.loads(e["payload"]).get("state")): e["ts"] for e in events}
            assert stamped[("TermCreated", "pre_start")] == term["created_at"]
            assert stamped[("TermStateChanged", "starting")] == term["bets_close_at"]
            assert stamped[("TermStateChanged", "flying")] == term["flying_at"]
            assert stamped[("TermCrashed", "crashed")] == term["crash_at"]
            assert stamped[("TermClosed", "closed")] == term["closed_at"]
            previous = term
        await _ticks_on_their_slots(pipe, channel_id, closed, growth)
        report = await verify_channel(pipe.db, channel_id)
        assert report["problems"] == [] and report["terms_ok"] >= 3, report
        cli = subprocess.run([str(BIN / "crash-verify"), "--channel", channel_id], env=pipe.env,
                             capture_output=True, text=True, timeout=60)
        assert cli.returncode == 0, cli.stdout + cli.stderr


async def _ticks_on_their_slots(pipe, channel_id: str, closed: list[dict], growth: float) -> None:
    """The flight clock's TermTicks: on the slots flying_at + k * tick_ms, the curve's multiple,
    all before the crash, none after TermCrashed on the topic, none twice."""
    events = [record for record, _, _, _ in await pipe.read_topic("game.term", key=channel_id) if record is not None]
    for term in closed:
        mine = [e for e in events if e.term_id == term["term_id"]]
        kinds = [type(e).__name__ for e in mine]
        ticks = [e for e in mine if type(e).__name__ == "TermTick"]
        flight_ms = term["crash_at"] - term["flying_at"]
        if flight_ms > 300:
            assert ticks, f"{term['term_id']} flew {flight_ms} ms without a tick"
        last_tick = max((i for i, kind in enumerate(kinds) if kind == "TermTick"), default=-1)
        assert "TermCrashed" not in kinds[:last_tick + 1], "no tick after the crash"
        slots = [t.ts for t in ticks]
        assert slots == sorted(set(slots)), "each slot once, in order"
        for tick in ticks:
            assert tick.elapsed_ms == tick.ts - term["flying_at"] and tick.elapsed_ms % 100 == 0 and tick.elapsed_ms > 0
            assert tick.ts < term["crash_at"]
            assert tick.multiple_x100 == max(100, math.floor(100 * math.exp(growth * tick.elapsed_ms)))
            assert tick.multiple_x100 < term["crash_x100"]


async def test_the_clock_ticks_a_waiting_channel_once_a_second_and_a_flight_at_every_interval(pipe):
    """Time reaches a channel as Ticks on game.command: while its term takes bets (here for 4 s)
    nothing is due before the window closes, so one a second; while it flies, one every tick
    interval (50 ms), which pays the autos due and finds the crash. The steps still happen at
    their scheduled times (the test above)."""
    config = _config(betting_ms=4000, max_multiple_x100=500)
    channel_id = await pipe.create_channel("ticks", **config)
    crash_of = await peek_crash_points(pipe, channel_id, config)
    long_flight = next(seq for seq in range(1, 100) if crash_of(seq) >= 150)     # 1 s or more in the air
    terms = await pipe.wait_closed_terms(channel_id, max(2, long_flight), timeout=240)
    ticks = [record.ts for record, _, _, _ in await pipe.read_topic("game.command", key=channel_id)
             if type(record).__name__ == "Tick"]
    for term in terms:
        waiting = [ts for ts in ticks if term["created_at"] + 100 <= ts < term["bets_close_at"] - 100]
        assert 2 <= len(waiting) <= 5, (term["term_id"], waiting)
        if term["seq"] == long_flight:
            flight_ms = term["crash_at"] - term["flying_at"]
            flight = [ts for ts in ticks if term["flying_at"] <= ts < term["crash_at"]]
            assert flight_ms >= 1000 and len(flight) >= flight_ms / 50 / 2, (term["term_id"], flight_ms, flight)


async def test_running_term_shows_no_crash_point(pipe):
    channel_id = await pipe.create_channel("secret", growth_per_ms="0.0001", max_multiple_x100=100000)

    async def flying():
        rows = [t for t in await pipe.terms(channel_id) if t["state"] == "flying"]
        return rows[0] if rows else None

    term = await wait_for(flying, 60, "a flying term")
    assert term["crash_x100"] is None and term["crash_at"] is None and term["revealed_hash"] is None
    status, body = await pipe.ops("GET", f"/ops/channels/{channel_id}/terms")
    assert status == 200
    assert all(t["crash_x100"] is None for t in body["terms"] if t["state"] in ("pre_start", "starting", "flying"))
    # Nothing about it in the changelog of the term table either (the Faust changelog topic).
    changelog = await pipe.read_topic_raw(f"crash-{pipe.name}-terms-changelog")
    for value in changelog:
        state = json.loads(value)
        if state.get("term_id") == term["term_id"] and state.get("state") in ("pre_start", "starting", "flying"):
            assert state.get("crash_x100") is None and state.get("crash_at") is None
            assert not state.get("revealed_hash")


async def _place_bets(pipe, channel_id: str, count: int) -> list[str]:
    async def taking_bets():
        term = await pipe.live_term(channel_id)
        return term if term and term["state"] == "pre_start" else None

    await pipe.wait_gateway_channel(channel_id)
    await wait_for(taking_bets, 60, "a term taking bets", every=0.05)
    orders = []
    for i in range(count):
        order = f"o-{uuid.uuid4().hex[:12]}"
        status, body = await pipe.api("POST", "/v1/bets", {
            "api_order_no": order, "channel_id": channel_id, "user_id": f"user-{i}", "amount": 1000 + i,
            "currency": "EUR", "auto_cashout_x100": 110 + 10 * i})
        if status == 200:
            orders.append(order)
    return orders


async def _snapshot(pipe, channel_id: str, term_ids: list[str]) -> dict:
    marks = ",".join(f"'{t}'" for t in term_ids)
    return {
        "terms": await pipe.rows(f"SELECT * FROM crash_term WHERE term_id IN ({marks}) ORDER BY term_id"),
        "totals": await pipe.rows(f"SELECT * FROM crash_term_totals WHERE term_id IN ({marks})"
                                  " ORDER BY term_id, currency"),
        "events": await pipe.rows(f"SELECT event_id FROM event_log WHERE term_id IN ({marks}) ORDER BY event_id"),
        "bets": await pipe.rows(f"SELECT * FROM bet WHERE term_id IN ({marks}) ORDER BY api_order_no"),
        "history": await pipe.rows(f"SELECT h.* FROM bet_status_history h JOIN bet b ON b.bet_id = h.bet_id"
                                   f" WHERE b.term_id IN ({marks}) ORDER BY h.event_id"),
        "outbox": await pipe.rows(f"SELECT order_no, kind, amount, user_id, currency FROM payout_outbox"
                                  f" WHERE term_id IN ({marks}) ORDER BY order_no"),
    }


async def test_duplicate_delivery_leaves_the_database_unchanged(pipe):
    channel_id = await pipe.create_channel("dup")
    placed = await _place_bets(pipe, channel_id, 6)
    assert placed, "no bet accepted"

    async def bets_term_closed():
        rows = await pipe.rows("SELECT t.state FROM bet b JOIN crash_term t ON t.term_id = b.term_id"
                               " WHERE b.channel_id = :c AND b.api_order_no = :o", c=channel_id, o=placed[0])
        return rows and rows[0]["state"] == "closed"

    await wait_for(bets_term_closed, 90, "the term of the bets to close")
    closed = [t["term_id"] for t in await pipe.terms(channel_id) if t["state"] == "closed"]
    await wait_consumed(pipe, ["game.term", "game.bet", "game.payout"])
    before = await _snapshot(pipe, channel_id, closed)
    assert before["bets"] and before["events"]

    replayed = 0
    for topic in ("game.term", "game.bet", "game.payout"):
        messages = [(record, raw) for record, raw, _, _ in await pipe.read_topic(topic, key=channel_id)
                    if record is not None and record.term_id in closed]
        shuffled = messages[:]
        random.Random(7).shuffle(shuffled)
        for _, raw in messages + shuffled:      # once more in order, once more out of order
            await pipe.publish(topic, channel_id, raw)
            replayed += 1
    assert replayed > 20
    await wait_consumed(pipe, ["game.term", "game.bet", "game.payout"])
    after = await _snapshot(pipe, channel_id, closed)
    assert after == before


async def test_bad_messages_go_to_the_dead_letter_topic_and_the_agents_go_on(pipe):
    channel_id = await pipe.create_channel("dlq")
    await pipe.wait_closed_terms(channel_id, 1, 60)
    tag = uuid.uuid4().hex[:8]
    bad = [
        ("game.command", b"this is not json " + tag.encode()),
        ("game.command", json.dumps({"type": "NoSuchCommand", "tag": tag}).encode()),
        ("game.command", json.dumps({"type": "PlaceBet", "event_id": f"x-{tag}", "channel_id": channel_id,
                                     "ts": 1}).encode()),                       # fields missing
        ("game.command", json.dumps({"type": "PlaceBet", "event_id": f"y-{tag}", "channel_id": channel_id,
                                     "ts": 1, "api_order_no": "o", "user_id": "u", "amount": "100",
                                     "currency": "EUR"}).encode()),             # amount is a string
        ("game.bet", b"\xff\xfe garbage " + tag.encode()),
        ("game.term", b"[1, 2, 3] " + tag.encode()),
    ]
    for topic, value in bad:
        await pipe.publish(topic, channel_id, value)

    async def dead_letters():
        letters = [r for r, _, _, _ in await pipe.read_topic("game.dlq") if r is not None and r.offset >= 0]
        mine = [r for r in letters if tag.encode() in _value(r) or tag in r.error or f"-{tag}" in _value(r).decode(
            errors="replace")]
        return mine if len(mine) >= len(bad) else None

    letters = await wait_for(dead_letters, 60, "the dead letters")
    assert {letter.source_topic for letter in letters} == {pipe.topic(t) for t in ("game.command", "game.bet",
                                                                                      "game.term")}
    assert all(letter.error for letter in letters)
    reasons = " ".join(letter.error for letter in letters)
    assert "not JSON" in reasons and "unknown type" in reasons and "missing" in reasons and "wrong type" in reasons
    # The channel keeps running and taking bets after the garbage.
    seen = len(await pipe.terms(channel_id))
    assert await _place_bets(pipe, channel_id, 1)
    await wait_for(lambda: _more_closed(pipe, channel_id, seen), 60, "a later term to close")


async def test_a_row_the_database_refuses_is_a_dead_letter_not_a_mangled_row(pipe):
    """The sink inserts each row once by its key: only a duplicate is ignored. A value too long
    for its column (here a 65-character terminator) is refused and dead-lettered, not truncated
    into a row that looks right (as INSERT IGNORE would)."""
    tag = uuid.uuid4().hex[:8]
    channel_id = f"{pipe.name}-long-{tag}"
    bad = ChainPublished(event_id=f"chain.{channel_id}.1", channel_id=channel_id, ts=1, chain_no=1, length=10,
                         terminator="a" * 65, salt="b" * 64)
    good = ChainPublished(event_id=f"chain.{channel_id}.2", channel_id=channel_id, ts=2, chain_no=2, length=10,
                          terminator="c" * 64, salt="d" * 64)
    for record in (bad, good, good):                # the good one twice: a duplicate is no error
        await pipe.publish("game.term", channel_id, encode(record))

    async def dead_letter():
        letters = [r for r, _, _, _ in await pipe.read_topic("game.dlq") if r is not None]
        return [r for r in letters if r.consumer == "sink" and channel_id in r.channel_id]

    letters = await wait_for(dead_letter, 60, "the refused row's dead letter")
    await wait_consumed(pipe, ["game.term"])
    assert len(letters) == 1 and "too long" in letters[0].error, letters
    rows = await pipe.rows("SELECT chain_no, terminator FROM fairness_chain WHERE channel_id = :c", c=channel_id)
    assert [(r["chain_no"], r["terminator"]) for r in rows] == [(2, "c" * 64)]


async def test_text_with_quotes_and_backslashes_is_stored_exactly(pipe):
    """The sink's connections escape strings by the quote alone (NO_BACKSLASH_ESCAPES, sql/db.py):
    a value with quotes, backslashes, percent signs and a newline is stored as it was sent."""
    tag = uuid.uuid4().hex[:8]
    channel_id = f"{pipe.name}-text-{tag}"
    trace = "it's \\ a \\' \"q\" 100% %s\n\\0 ok"
    record = ChainPublished(event_id=f"chain.{channel_id}.1", channel_id=channel_id, ts=1, chain_no=1, length=10,
                            terminator="c" * 64, salt="d" * 64, trace_id=trace)
    await pipe.publish("game.term", channel_id, encode(record))

    async def stored():
        return await pipe.rows("SELECT trace_id, payload FROM event_log WHERE event_id = :e", e=record.event_id)

    rows = await wait_for(stored, 60, "the event's row")
    assert rows[0]["trace_id"] == trace
    assert json.loads(rows[0]["payload"])["trace_id"] == trace


def _value(letter) -> bytes:
    import base64
    return base64.b64decode(letter.value_b64)


async def _more_closed(pipe, channel_id: str, seen: int) -> bool:
    terms = await pipe.terms(channel_id)
    return any(t["seq"] > seen and t["state"] == "closed" for t in terms)


def test_harness_crash_time_matches_the_curve():
    # The independent curve used above: 2.00x at g = 0.00006 is reached after 11553 ms.
    assert first_ms_at(200, 0.00006) == 11553
    assert first_ms_at(100, 0.0004) == 0


async def test_admin_creates_every_table_changelog_compacted_before_any_worker(pipe):
    """`crash-admin topics` creates the changelogs itself: a worker creating them can see them with
    0 partitions in its first metadata and then fail its first table write (PartitionsMismatch)."""
    import dataclasses

    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    from streams.admin import changelog_topics, create_topics

    # This module's worker found its changelogs made: it created none of them itself.
    worker_log = pipe.workers[1].log_path.read_text(errors="replace")
    assert not re.findall(r"Topic '[^']*-changelog' created", worker_log)

    settings = dataclasses.replace(pipe.settings, app_id=f"no-worker-{uuid.uuid4().hex[:6]}")
    names = changelog_topics(settings)
    assert {n.removeprefix(settings.app_id + "-").removesuffix("-changelog") for n in names} >= {
        "channels", "terms", "orders", "positions", "term_books"}
    assert set(names) <= set(await create_topics(settings))
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics(names)
        assert {t["topic"]: len(t["partitions"]) for t in described} == {n: settings.partitions for n in names}
        configs = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, n) for n in names])
        policies = {resource[3]: dict((entry[0], entry[1]) for entry in resource[4])["cleanup.policy"]
                    for response in configs for resource in response.resources}
        assert policies == {n: "compact" for n in names}
        await admin.delete_topics(names)
    finally:
        await admin.close()
