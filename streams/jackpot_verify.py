"""The jackpot verifier and reconciliation: library and the `crash-jackpot` CLI.

    crash-jackpot list                     every jackpot with its cycle and last reconciliation
    crash-jackpot verify [--jackpot ID]    check every revealed must_hit_by commitment
    crash-jackpot reconcile [--jackpot ID] snapshot every pool now and reconcile it against MySQL

Verification reads only what the project publishes in MySQL (`jackpot_cycle`: the commitment
published at each reset, the value and nonce revealed at the hit; `jackpot_award`): for every
ended must_hit_by cycle, SHA-256("<hit_value>:<nonce>") must equal the commitment, the value must
lie in [seed, cap] of that cycle's definition, and the award must be exactly the hit value
(streams.jackpots.verify_hit). By hand, in a few lines:

    import hashlib
    assert hashlib.sha256(f"{hit_value}:{nonce}".encode()).hexdigest() == commitment

Reconciliation (DESIGN section 10): the pool answers a ReconcileJackpot with a snapshot of its
value at that point of its stream; the sink, which writes that stream in order, compares it with
seeds + contributions - awards + compensations from MySQL and records the result in
`jackpot_reconciliation` (and the jackpot_reconciliation_difference_* metrics). The pipeline does
it every CRASH_JACKPOT_RECONCILE_INTERVAL_S (an hour); this command asks for it now and waits.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from streams import jackpots

__all__ = ["verify_jackpot", "request_reconciliation", "reconciliations", "main"]


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str | bytes) else value


async def verify_jackpot(engine: AsyncEngine, jackpot_id: str) -> dict[str, Any]:
    """{jackpot_id, checked, failures: [{cycle, problems}], cycles: [...]} for one jackpot."""
    async with engine.connect() as conn:
        rows = (await conn.execute(text(
            "SELECT c.cycle, c.seed, c.commitment, c.definition, c.hit_value, c.nonce, c.award_id, a.amount"
            " FROM jackpot_cycle c LEFT JOIN jackpot_award a ON a.award_id = c.award_id"
            " WHERE c.jackpot_id = :j ORDER BY c.cycle"), {"j": jackpot_id})).all()
    cycles, failures, checked = [], [], 0
    for row in rows:
        definition = _json(row.definition)
        entry = {"cycle": row.cycle, "commitment": row.commitment, "seed": row.seed, "cap": definition["cap"],
                 "hit_value": row.hit_value, "nonce": row.nonce, "award_id": row.award_id, "award": row.amount}
        if definition["trigger"] == "must_hit_by" and row.award_id is not None:
            checked += 1
            if row.amount is None or row.hit_value is None or not row.nonce:
                problems = ["the hit did not reveal its value and nonce"]
            else:
                problems = jackpots.verify_hit(row.commitment, row.hit_value, row.nonce, row.seed,
                                               definition["cap"], row.amount)
            entry["verified"] = not problems
            if problems:
                failures.append({"cycle": row.cycle, "problems": problems})
        cycles.append(entry)
    return {"jackpot_id": jackpot_id, "checked": checked, "failures": failures, "cycles": cycles}


async def request_reconciliation(producer, settings, jackpot_id: str, request_id: str) -> None:
    """Ask one pool for a snapshot (an aiokafka producer; the sink does the rest)."""
    from streams.codec import encode
    from streams.jackpot_events import ReconcileJackpot
    from streams.topics import JACKPOT_COMMAND
    command = ReconcileJackpot(event_id=f"{jackpot_id}.reconcile.{request_id}", channel_id="",
                               ts=int(time.time() * 1000), jackpot_id=jackpot_id, request_id=request_id)
    await producer.send_and_wait(settings.topic(JACKPOT_COMMAND), encode(command), key=jackpot_id.encode())


async def reconciliations(engine: AsyncEngine, request_id: str) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        rows = await conn.execute(text(
            "SELECT * FROM jackpot_reconciliation WHERE request_id = :r ORDER BY jackpot_id"), {"r": request_id})
        return [dict(r._mapping) for r in rows]


async def _jackpot_ids(engine: AsyncEngine, only: str | None) -> list[str]:
    async with engine.connect() as conn:
        ids = [r.jackpot_id for r in await conn.execute(text("SELECT jackpot_id FROM jackpot ORDER BY jackpot_id"))]
    return [j for j in ids if only is None or j == only]


async def _run(args: argparse.Namespace) -> int:
    from aiokafka import AIOKafkaProducer
    from ulid import ULID

    from sql.db import make_engine
    from streams.settings import get_settings

    settings = get_settings()
    engine = make_engine(settings.db_url, pool_size=2)
    try:
        ids = await _jackpot_ids(engine, args.jackpot)
        if args.jackpot and not ids:
            print(f"no jackpot {args.jackpot}", file=sys.stderr)
            return 2
        if args.command == "list":
            async with engine.connect() as conn:
                for row in await conn.execute(text(
                        "SELECT j.jackpot_id, j.tier, j.currency, j.status, MAX(c.cycle) AS cycle FROM jackpot j"
                        " LEFT JOIN jackpot_cycle c ON c.jackpot_id = j.jackpot_id GROUP BY j.jackpot_id")):
                    print(f"{row.jackpot_id:24} {row.tier:7} {row.currency} {row.status:7} cycle {row.cycle}")
            return 0
        if args.command == "verify":
            bad = 0
            for jackpot_id in ids:
                report = await verify_jackpot(engine, jackpot_id)
                bad += len(report["failures"])
                print(f"{jackpot_id}: {report['checked']} revealed commitments checked, "
                      f"{len(report['failures'])} failed")
                for failure in report["failures"]:
                    print(f"  cycle {failure['cycle']}: {'; '.join(failure['problems'])}")
            return 1 if bad else 0
        request_id = f"cli-{ULID()}"
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
        await producer.start()
        try:
            for jackpot_id in ids:
                await request_reconciliation(producer, settings, jackpot_id, request_id)
        finally:
            await producer.stop()
        deadline = time.monotonic() + args.timeout
        rows: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            rows = await reconciliations(engine, request_id)
            if len(rows) >= len(ids):
                break
            await asyncio.sleep(0.2)
        different = 0
        for row in rows:
            bps = jackpots.difference_bps(row["difference_micro"], row["expected_micro"])
            different += row["difference_micro"] != 0
            print(f"{row['jackpot_id']}: pool {row['pool_micro']} expected {row['expected_micro']} "
                  f"(micro units) difference {row['difference_micro']} ({bps} bps)")
        missing = set(ids) - {r["jackpot_id"] for r in rows}
        for jackpot_id in sorted(missing):
            print(f"{jackpot_id}: no answer within {args.timeout:.0f} s")
        return 1 if different or missing else 0
    finally:
        await engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="crash-jackpot", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("list", "verify", "reconcile"))
    parser.add_argument("--jackpot", help="only this jackpot id")
    parser.add_argument("--timeout", type=float, default=60.0, help="reconcile: seconds to wait for the answers")
    return asyncio.run(_run(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
