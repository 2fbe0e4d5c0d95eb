"""The benchmark's baselines, each its own process (`python -m streams.bench.bare ...`):

- `kafka`: the bare aiokafka consume -> produce loop on the same broker: N JSON messages are put
  on an input topic first, then one process reads them in batches, parses each, produces a JSON
  answer per message and waits for the acknowledgements, as a pipeline hop does with nothing
  else (no tables, no Faust). The headline ratio is against this. It also measures the
  production of the input alone, and the broker's CPU in both parts: what a message costs to
  produce and to consume, on the client and on the broker.
- `mysql`: the sink's rows of a bet written through bare aiomysql (no Kafka, no SQLAlchemy):
  what a row of each table costs the client and MariaDB.
- `http`: a bare aiohttp server doing the jackpot API's request checks and nothing else: the same
  HMAC verification with the nonce claimed in the same Redis, the JSON body parsed, a JSON answer.
  The contribute endpoint's figures are read against it.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from typing import Any

__all__ = ["main"]

# The rows a bet writes (agents/sink_sql.py: statement -> table), the contribution one per pool
# fed: the mysql baseline fills copies of these tables.
BET_TABLES = {"event_log": "event_log", "bet_placed": "bet", "history": "bet_status_history",
              "jackpot_contribution": "jackpot_contributions"}
POOLS = 3


def _own_cpu() -> float:
    return sum(os.times()[:2])


def _server_cpu(server: str):
    """What reads a test-profile server's CPU seconds so far (None: its pid file is not there)."""
    from streams.bench.deploy import cpu_seconds, infra_pids
    pid = infra_pids().get(server)
    return lambda: cpu_seconds(pid) if pid else None


def _delta(after: float | None, before: float | None) -> float | None:
    return None if after is None or before is None else after - before


async def kafka_loop(n: int, out: str) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    from streams.admin import create_topics
    from streams.settings import get_settings
    settings = get_settings()
    await create_topics(settings, ("bench.in", "bench.out"))
    source, sink = settings.topic("bench.in"), settings.topic("bench.out")
    # The same linger as the pipeline's producers, so that the ratio compares like with like.
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=settings.producer_linger_ms,
                                acks="all")
    await producer.start()
    broker = _server_cpu("kafka")
    produce0, broker0 = _own_cpu(), broker()
    payload = {"type": "PlaceBet", "event_id": "", "channel_id": "bench-1", "ts": 0, "api_order_no": "",
               "user_id": "u1", "amount": 100, "currency": "EUR", "auto_cashout_x100": 200, "gateway_id": "gw-bench"}
    for i in range(n):
        payload["event_id"] = payload["api_order_no"] = f"o-{i}"
        payload["ts"] = int(time.time() * 1000)
        await producer.send(source, json.dumps(payload).encode(), key=f"k{i % 8}".encode())
    await producer.flush()
    produced = {"cpu_s": _own_cpu() - produce0, "broker_cpu_s": _delta(broker(), broker0)}
    consumer = AIOKafkaConsumer(source, bootstrap_servers=settings.kafka_bootstrap, group_id=None,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    cpu0, broker0, got, started = _own_cpu(), broker(), 0, None
    while got < n:
        batches = await consumer.getmany(timeout_ms=1000, max_records=1000)
        if started is None and batches:
            started = time.perf_counter()
        futures = []
        for messages in batches.values():
            for m in messages:
                data = json.loads(m.value)
                answer = {"type": "CommandReply", "command_id": data["event_id"], "status": "accepted",
                          "channel_id": data["channel_id"], "ts": data["ts"]}
                futures.append(await producer.send(sink, json.dumps(answer).encode(), key=m.key))
                got += 1
        if futures:
            await asyncio.gather(*futures)
    elapsed = time.perf_counter() - (started or time.perf_counter())
    result = {"messages": n, "elapsed_s": elapsed, "per_s": n / elapsed if elapsed else 0,
              "cpu_s": _own_cpu() - cpu0, "broker_cpu_s": _delta(broker(), broker0), "produce_only": produced}
    await consumer.stop()
    await producer.stop()
    with open(out, "w") as f:
        json.dump(result, f)


async def mysql_rows(n: int, batch: int, db_url: str, out: str) -> None:
    """N bets' rows as the sink writes them (a bet's event-log row, its row, its first status,
    its contribution to each of POOLS jackpots), one multi-row INSERT per `batch` bets and
    table in a transaction, straight through aiomysql into empty copies of the tables: what
    MariaDB and its driver cost per row of each table with nothing else. Each table is written
    in its own pass, so that each has its own price."""
    from agents.sink import driver_statement
    from agents.sink_sql import SQL, statements
    from sql.db import make_engine
    from streams.codec import encode
    from streams.events import BetPlaced
    from streams.jackpot_events import JackpotContributed
    # The sink's own session (its SQL mode, so the same cheap escaping of strings, and its
    # isolation), then its aiomysql connection used bare.
    engine = make_engine(db_url, pool_size=1, no_backslash_escapes=True)
    session = await engine.connect()
    conn = (await session.get_raw_connection()).driver_connection
    cursor = await conn.cursor()
    for table in BET_TABLES.values():
        await cursor.execute(f"DROP TABLE IF EXISTS bare_{table}")
        await cursor.execute(f"CREATE TABLE bare_{table} LIKE {table}")
    now = int(time.time() * 1000)
    rows: dict[str, list[tuple]] = {name: [] for name in BET_TABLES}

    def add(record: Any, topic: str) -> None:
        for name, params in statements(record, topic, encode(record), now):
            if name in rows:
                rows[name].append(driver_statement(SQL[name])[1](params))
    for i in range(n):
        bet = BetPlaced(event_id=f"e-{i:012d}", channel_id="bench-1", ts=now, term_id="t-bare", bet_id=f"b-{i:012d}",
                        api_order_no=f"o-{i:012d}", user_id=f"u{i % 50_000}", amount=100, currency="EUR",
                        bet_type="auto", max_win_x100=10**8, auto_cashout_x100=200, debited=False)
        add(bet, "game.bet")
    for pool in range(POOLS):
        for first in range(0, n, batch):
            items = [{"key": f"bet:b-{i:012d}", "source": "bet", "game_id": "bench-1", "user_id": f"u{i % 50_000}",
                      "bet_id": f"b-{i:012d}", "term_id": "t-bare", "amount_micro": 10_000, "ts": now}
                     for i in range(first, min(n, first + batch))]
            add(JackpotContributed(event_id=f"jc-{pool}-{first}", channel_id="bench-1", ts=now,
                                   jackpot_id=f"bare-{pool}", cycle=1, items=items, total_micro=10_000 * len(items),
                                   value_micro=0, currency="EUR"), "game.jackpot")
    server = _server_cpu("mariadb")
    tables: dict[str, Any] = {}
    for name, table in BET_TABLES.items():
        sql = driver_statement(SQL[name])[0].replace(f"INSERT INTO {table} ", f"INSERT INTO bare_{table} ", 1)
        per_transaction = batch * (POOLS if name == "jackpot_contribution" else 1)
        cpu0, server0, started = _own_cpu(), server(), time.perf_counter()
        for first in range(0, len(rows[name]), per_transaction):
            await cursor.executemany(sql, rows[name][first:first + per_transaction])
            await conn.commit()
        tables[table] = {"rows": len(rows[name]), "elapsed_s": time.perf_counter() - started,
                         "cpu_s": _own_cpu() - cpu0, "server_cpu_s": _delta(server(), server0)}
    for table in BET_TABLES.values():
        await cursor.execute(f"DROP TABLE bare_{table}")
    await cursor.close()
    await session.close()
    await engine.dispose()
    with open(out, "w") as f:
        json.dump({"bets": n, "batch": batch, "tables": tables}, f)


def http_server(port: int) -> None:
    from aiohttp import web

    from streams.cache import redis_client
    from streams.settings import get_settings
    from web.http import parse_json_object
    from web.signing import RedisNonceStore, SignatureError, Verifier
    settings = get_settings()
    verifier_key: web.AppKey[Verifier] = web.AppKey("verifier")

    async def contribute(request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            await request.app[verifier_key].verify(request.method, request.path_qs, request.headers, raw)
        except SignatureError as error:
            return web.json_response({"error": "unauthorized", "reason": str(error)}, status=401)
        body = parse_json_object(raw)
        return web.json_response({"status": "accepted", "jackpotId": request.match_info["jackpot_id"],
                                  "contributionId": body.get("contributionId")})

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def lifecycle(app: web.Application):
        redis = redis_client(settings.redis_url)
        app[verifier_key] = Verifier(settings.api_keys, RedisNonceStore(redis))
        yield
        await redis.aclose()

    app = web.Application()
    app.cleanup_ctx.append(lifecycle)
    app.router.add_post("/jackpot/{jackpot_id}/contribute", contribute)
    app.router.add_get("/v1/health", health)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m streams.bench.bare")
    parser.add_argument("mode", choices=("kafka", "mysql", "http"))
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1000, help="mysql: bets per transaction")
    parser.add_argument("--db-url", default="", help="mysql: the database to write copies of the tables in")
    parser.add_argument("--out", default="")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    if args.mode == "kafka":
        asyncio.run(kafka_loop(args.n, args.out))
    elif args.mode == "mysql":
        asyncio.run(mysql_rows(args.n, args.batch, args.db_url, args.out))
    else:
        http_server(args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
