"""The sink writes a batch's rows as one multi-row INSERT per table: the driver (aiomysql's
executemany) only folds `INSERT ... VALUES (...)` into multi-row statements when the parenthesis
holds nothing but parameters; with a literal there ('placed', NULL) it sends one statement per
row. Until 2026-12-04 the bet rows and the payout orders went one by one: the bare writer of
crash-bench priced a bet row at ~120 µs of client CPU against ~13 µs for an event-log row."""
from __future__ import annotations

from collections.abc import AsyncIterator

import aiomysql.cursors
import pytest
from sqlalchemy import text

from agents.sink import driver_statement, write
from agents.sink_sql import SQL
from harness import migrated_database
from sql.db import make_engine
from streams.codec import encode
from streams.events import BetCashedOut, BetPlaced, BetRejected
from streams.settings import Settings


def test_every_insert_is_sent_as_one_multi_row_statement():
    inserts = {name: driver_statement(sql)[0] for name, sql in SQL.items() if sql.lstrip().startswith("INSERT")}
    assert {"bet_placed", "bet_rejected", "outbox", "event_log", "history"} <= set(inserts)
    row_by_row = [name for name, sql in inserts.items() if not aiomysql.cursors.RE_INSERT_VALUES.match(sql)]
    assert row_by_row == []


@pytest.fixture(scope="module")
async def sink_db(base_settings: Settings) -> AsyncIterator[str]:
    async with migrated_database(base_settings, "crash_sink_t") as url:
        yield url


async def test_a_batch_of_bets_is_a_few_statements_with_the_rows_they_always_had(sink_db, monkeypatch):
    executed: list[str] = []
    original = aiomysql.cursors.Cursor.execute

    async def counted(self, query, args=None):
        executed.append(query if isinstance(query, str) else query.decode())
        return await original(self, query, args)
    monkeypatch.setattr(aiomysql.cursors.Cursor, "execute", counted)

    common = {"channel_id": "ch-rows", "ts": 1_700_000_000_000, "term_id": "ch-rows:1", "currency": "EUR"}
    placed = [BetPlaced(event_id=f"p{i}", bet_id=f"b{i}", api_order_no=f"o{i}", user_id=f"u{i}", amount=100 + i,
                        bet_type="manual", max_win_x100=10**6, **common) for i in range(300)]
    rejected = [BetRejected(event_id=f"r{i}", api_order_no=f"x{i}", user_id=f"u{i}", amount=5, reason="below_min_bet",
                            **common) for i in range(50)]
    cashed = [BetCashedOut(event_id=f"c{i}", bet_id=f"b{i}", api_order_no=f"o{i}", user_id=f"u{i}", amount=100 + i,
                           multiple_x100=150, payout=(100 + i) * 150 // 100, mode="manual", cashed_at=common["ts"],
                           order_no=f"pay-{i}", **common) for i in range(20)]
    items = [(record, "game.bet", encode(record)) for record in placed + rejected + cashed]
    engine = make_engine(sink_db, no_backslash_escapes=True)
    try:
        assert await write(engine, items) == []
        inserts = [q for q in executed if q.lstrip().upper().startswith("INSERT")]
        # One statement per table (event log, bets, rejected orders, status history, payout orders),
        # not one per row: 370 events.
        assert len(inserts) <= 6, [q[:60] for q in inserts]
        async with engine.connect() as conn:
            bets = {r.api_order_no: r for r in await conn.execute(text(
                "SELECT api_order_no, bet_id, status, reason, amount FROM bet WHERE channel_id = 'ch-rows'"))}
            outbox = list(await conn.execute(text("SELECT order_no, status, amount, kind FROM payout_outbox")))
            logged = (await conn.execute(text("SELECT COUNT(*) FROM event_log"))).scalar()
    finally:
        await engine.dispose()
    assert len(bets) == 350 and logged == 370
    assert bets["o7"].status == "cashed_out" and bets["o7"].bet_id == "b7" and bets["o7"].amount == 107
    assert bets["o250"].status == "placed"
    assert bets["x3"].status == "rejected" and bets["x3"].bet_id is None and bets["x3"].reason == "below_min_bet"
    assert len(outbox) == 20 and {r.status for r in outbox} == {"ready"} and {r.kind for r in outbox} == {"cashout"}
    assert sorted(r.amount for r in outbox)[:2] == [150, 151]
