"""Sink (`crash-sink`): every domain event into MariaDB, the authoritative store for reporting.

Its own process (DESIGN section 14), not an agent of the workers: a slow database then slows
only this process, never the event loop that decides bets and drives the clock (in a worker, a
sink whose queue was full held back the delivery of every other topic, commands included).
Any number of sinks may run: they share the consumer group `<CRASH_APP_ID>-sink`, and Kafka
gives each its partitions of game.term, game.bet, game.payout and game.jackpot.

Per batch (up to BATCH_MAX messages; the broker holds a fetch until BATCH_MIN_BYTES have come
or BATCH_WAIT_MS have passed, so that a batch is not a handful of events at moderate rates:
each batch is a transaction, a redo-log flush and an offset commit): decode, plan the
writes (agents/sink_sql.py: one multi-row statement per table), run them in one transaction,
then commit the batch's offsets. A kill -9 at any point redoes at most the uncommitted batch,
and every write is idempotent. A cashout's bet update and its payout_outbox row are in one
transaction, as are an award's winner row and its outbox row. Once a term's settlement
(TermSettled, after every other event of its bets on the partition) is committed, the sink sends
TermRecorded to game.command: the pipeline may then forget the term's orders (bounded state).

A database error about the connection (restart, failover) retries the batch until it succeeds,
holding the offsets; any other error writes the batch event by event and sends the events that
still fail to game.dlq with the reason. Messages whose `type` header names an event the sink
does not store (ticks, watermarks) are skipped without being decoded.

Jackpots: the pool's events of one jackpot are on one game.jackpot partition, in the order the
pool's single writer made them, and this sink writes them in that order; a batch is cut after
each JackpotSnapshot, so that when the sink reconciles the snapshot, MySQL holds exactly what the
pool had at that point: seeds + contributions - awards + compensations = pool, exactly.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import operator
import signal
import time
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaConnectionError, KafkaTimeoutError
from prometheus_client import start_http_server
from sqlalchemy import text
from sqlalchemy.dialects.mysql.aiomysql import dialect as aiomysql_dialect
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from agents.sink_sql import NOT_LOGGED, plan
from sql.db import make_engine
from streams import jackpots, metrics
from streams.codec import TYPE_HEADER, DecodeError, decode, encode, header_type, type_header
from streams.events import (
    BET_TOPIC_EVENTS,
    PAYOUT_TOPIC_EVENTS,
    TERM_TOPIC_EVENTS,
    DeadLetter,
    Message,
    TermRecorded,
    TermSettled,
)
from streams.jackpot_events import JACKPOT_TOPIC_EVENTS, JackpotReconciled, JackpotSnapshot
from streams.settings import Settings, get_settings
from streams.topics import BET, COMMAND, DLQ, JACKPOT, PAYOUT, TERM

log = logging.getLogger("crash.sink")

__all__ = ["Sink", "write", "main", "driver_statement"]

SINK_EVENTS = TERM_TOPIC_EVENTS + BET_TOPIC_EVENTS + PAYOUT_TOPIC_EVENTS + JACKPOT_TOPIC_EVENTS
SKIPPED_TYPES = frozenset(cls.__name__.encode() for cls in NOT_LOGGED if cls is not JackpotReconciled)
BATCH_MAX = 2000
BATCH_WAIT_MS = 50
# Without a minimum the broker answered each fetch as soon as anything came: at 800 bets/s
# through the gateway, batches of a few events, and a third more of the sink's CPU per bet
# (crash-bench --quick --only gateway --rates 800: 0.24 s per 1,000 bets against 0.16-0.17).
BATCH_MIN_BYTES = 128 * 1024
TRANSIENT = (OperationalError, InterfaceError)
_DIALECT = aiomysql_dialect()

Item = tuple[Message, str, bytes]


def _now_ms() -> int:
    return int(time.time() * 1000)


async def _run(conn, statements) -> None:
    # Straight to the driver, compiled once per distinct statement, each row's values as a
    # tuple: SQLAlchemy's own execution processes every row's parameters in Python
    # (construct_params, _init_compiled), about a tenth of the sink's samples for batches of
    # thousands of rows (crash-bench --profile). The statements are plain text with untyped
    # binds, so there is nothing for it to process.
    for sql, params in statements:
        driver_sql, values = driver_statement(sql)
        rows = [values(row) for row in params] if isinstance(params, list) else values(params)
        await conn.exec_driver_sql(driver_sql, rows)


@functools.lru_cache(maxsize=256)
def driver_statement(sql: str) -> tuple[str, Callable[[dict[str, Any]], tuple]]:
    """The statement in the driver's positional style, and what picks a row's values for it."""
    compiled = text(sql).compile(dialect=_DIALECT)
    names = list(compiled.positiontup or [])
    if len(names) > 1:
        return compiled.string, operator.itemgetter(*names)
    return compiled.string, lambda row: tuple(row[name] for name in names)


async def write(engine, items: list[Item]) -> list[tuple[int, str]]:
    """Write a batch in one transaction; returns (index, error) of events that cannot be written."""
    delay = 0.2
    while True:
        try:
            async with engine.begin() as conn:
                await _run(conn, plan(items, _now_ms()))
            return []
        except TRANSIENT as error:
            metrics.SINK_RETRIES.inc()
            log.warning("database unavailable (%s); retrying in %.1fs", error.__class__.__name__, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
        except DBAPIError as error:
            log.error("batch refused by the database (%s); writing event by event", str(error)[:300])
            return await _write_one_by_one(engine, items)


async def _write_one_by_one(engine, items: list[Item]) -> list[tuple[int, str]]:
    failed: list[tuple[int, str]] = []
    for index, item in enumerate(items):
        while True:
            try:
                async with engine.begin() as conn:
                    await _run(conn, plan([item], _now_ms()))
                break
            except TRANSIENT:
                await asyncio.sleep(1.0)
            except DBAPIError as error:
                failed.append((index, str(error.orig if error.orig is not None else error)[:500]))
                break
    return failed


_SUMS = text(
    "SELECT (SELECT COALESCE(SUM(seed), 0) FROM jackpot_cycle WHERE jackpot_id = :j) AS seeds,"
    " (SELECT COALESCE(SUM(amount_micro), 0) FROM jackpot_contributions WHERE jackpot_id = :j) AS contributions,"
    " (SELECT COALESCE(SUM(amount), 0) FROM jackpot_award WHERE jackpot_id = :j) AS awards,"
    " (SELECT COALESCE(SUM(amount), 0) FROM jackpot_compensation WHERE jackpot_id = :j AND state = 'applied')"
    " AS compensations")
_RECONCILED = text(
    "INSERT INTO jackpot_reconciliation (jackpot_id, request_id, seeds, contributions_micro, awards, compensations,"
    " expected_micro, pool_micro, difference_micro, ts) VALUES (:j, :r, :seeds, :contributions, :awards,"
    " :compensations, :expected, :pool, :difference, :ts) ON DUPLICATE KEY UPDATE id = id")


async def reconcile(engine, snapshot: JackpotSnapshot) -> JackpotReconciled:
    """MySQL's sums for a jackpot against the live pool of the snapshot (everything before the
    snapshot on its partition is written by now, nothing after it yet)."""
    delay = 0.2
    while True:
        try:
            async with engine.begin() as conn:
                row = (await conn.execute(_SUMS, {"j": snapshot.jackpot_id})).one()
                sums = {name: int(getattr(row, name)) for name in ("seeds", "contributions", "awards",
                                                                   "compensations")}
                expected = jackpots.expected_pool_micro(sums["seeds"], sums["contributions"], sums["awards"],
                                                        sums["compensations"])
                difference = snapshot.pool_micro - expected
                await conn.execute(_RECONCILED, {"j": snapshot.jackpot_id, "r": snapshot.request_id, **sums,
                                                 "expected": expected, "pool": snapshot.pool_micro,
                                                 "difference": difference, "ts": snapshot.ts})
            break
        except TRANSIENT:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
    metrics.JACKPOT_RECONCILED_BPS.labels(jackpot_id=snapshot.jackpot_id).set(
        jackpots.difference_bps(difference, expected))
    metrics.JACKPOT_RECONCILED_MINOR.labels(jackpot_id=snapshot.jackpot_id).set(difference / jackpots.MICRO)
    if difference:
        log.error("jackpot %s does not reconcile: pool %s, MySQL says %s (difference %s micro units)",
                  snapshot.jackpot_id, snapshot.pool_micro, expected, difference)
    return JackpotReconciled(
        event_id=f"{snapshot.jackpot_id}.reconciled.{snapshot.request_id}", channel_id="", ts=snapshot.ts,
        jackpot_id=snapshot.jackpot_id, request_id=snapshot.request_id, expected_micro=expected,
        pool_micro=snapshot.pool_micro, difference_micro=difference)


class Sink:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topics = {settings.topic(name): name for name in (TERM, BET, PAYOUT, JACKPOT)}
        # The sink binds text and numbers only (the payload is the message's JSON as text).
        self.engine = make_engine(settings.db_url, pool_size=2, no_backslash_escapes=True)
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self.stopping = asyncio.Event()

    async def start(self) -> None:
        s = self.settings
        self.producer = AIOKafkaProducer(bootstrap_servers=s.kafka_bootstrap, acks="all",
                                         linger_ms=s.producer_linger_ms)
        await self.producer.start()
        self.consumer = AIOKafkaConsumer(
            *self.topics, bootstrap_servers=s.kafka_bootstrap, group_id=f"{s.app_id}-sink",
            enable_auto_commit=False, auto_offset_reset="earliest", fetch_max_wait_ms=BATCH_WAIT_MS,
            fetch_min_bytes=BATCH_MIN_BYTES,
            max_partition_fetch_bytes=4 * 1024 * 1024, session_timeout_ms=s.session_timeout_ms,
            heartbeat_interval_ms=1000)
        await self.consumer.start()

    async def stop(self) -> None:
        for client in (self.consumer, self.producer):
            if client is not None:
                await client.stop()
        await self.engine.dispose()

    async def run(self) -> None:
        assert self.consumer is not None
        while not self.stopping.is_set():
            batches = await self.consumer.getmany(timeout_ms=200, max_records=BATCH_MAX)
            messages = [m for tp in sorted(batches, key=lambda tp: (tp.topic, tp.partition)) for m in batches[tp]]
            if messages:
                await self.handle(messages)
                await self.commit()

    async def commit(self) -> None:
        """Commit the positions of a written batch. A commit refused because the group rebalanced
        meanwhile (a broker restart, another sink joining) is no error: the rows are written,
        and whoever owns those partitions now reads the batch again and writes nothing twice."""
        assert self.consumer is not None
        try:
            await self.consumer.commit()
        except (CommitFailedError, IllegalStateError, KafkaConnectionError, KafkaTimeoutError) as error:
            log.warning("offsets not committed (%s); the batch is written and will be read again",
                        error.__class__.__name__)

    async def handle(self, messages: list[Any]) -> None:
        """Write one fetched batch, cut after each JackpotSnapshot (see the module docstring)."""
        assert self.producer is not None
        pending: list[tuple[Item, Any]] = []
        sends = []
        for message in messages:
            kind = header_type(message.headers)
            if kind in SKIPPED_TYPES:
                continue
            name = self.topics[message.topic]
            try:
                record = decode(message.value, SINK_EVENTS)
            except DecodeError as error:
                sends.append(await self._dead_letter(message, str(error)))
                continue
            if isinstance(record, NOT_LOGGED) and not isinstance(record, JackpotReconciled):
                continue
            pending.append(((record, name, message.value), message))
            if isinstance(record, JackpotSnapshot):
                sends += await self._flush(pending)
                reconciled = await reconcile(self.engine, record)
                sends.append(await self.producer.send(
                    self.settings.topic(JACKPOT), encode(reconciled), key=record.jackpot_id.encode(),
                    headers=[(TYPE_HEADER, b"JackpotReconciled")]))
                pending = []
        sends += await self._flush(pending)
        if sends:
            await asyncio.gather(*sends)

    async def _flush(self, pending: list[tuple[Item, Any]]) -> list:
        if not pending:
            return []
        items = [item for item, _ in pending]
        sends = [await self._dead_letter(pending[index][1], f"database refused the event: {error}")
                 for index, error in await write(self.engine, items)]
        for record, _, _ in items:
            metrics.SINK_ROWS.labels(type=type(record).__name__).inc()
            if isinstance(record, TermSettled):
                sends.append(await self._recorded(record))
        return sends

    async def _recorded(self, settled: TermSettled):
        """Tell the channel that its term is in MySQL (its orders' index may forget it)."""
        assert self.producer is not None
        seq = int(settled.term_id.rsplit("-", 1)[1])
        command = TermRecorded(event_id=f"{settled.term_id}.recorded", channel_id=settled.channel_id,
                               term_id=settled.term_id, ts=_now_ms(), trace_id=settled.term_id, seq=seq)
        return await self.producer.send(self.settings.topic(COMMAND), encode(command),
                                        key=settled.channel_id.encode(), headers=type_header(command))

    async def _dead_letter(self, message: Any, error: str):
        import base64
        assert self.producer is not None
        key = message.key or b""
        letter = DeadLetter(
            event_id=f"dlq.{message.topic}.{message.partition}.{message.offset}",
            channel_id=key.decode(errors="replace")[:64], ts=_now_ms(), source_topic=message.topic,
            partition=message.partition, offset=message.offset, error=error[:1000], consumer="sink",
            key_b64=base64.b64encode(key).decode(), value_b64=base64.b64encode(message.value or b"").decode())
        metrics.DEAD_LETTERS.labels(consumer="sink", topic=message.topic).inc()
        log.warning("dead letter from %s[%s]@%s: %s", message.topic, message.partition, message.offset, error)
        return await self.producer.send(self.settings.topic(DLQ), encode(letter), key=key,
                                        headers=[(TYPE_HEADER, b"DeadLetter")])


async def serve(settings: Settings) -> int:
    sink = Sink(settings)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, sink.stopping.set)
    if settings.sink_metrics_port:
        start_http_server(settings.sink_metrics_port, addr=settings.web_host)
    await sink.start()
    try:
        await sink.run()
    finally:
        await sink.stop()
    return 0


def main() -> int:
    settings = get_settings()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    try:
        import uvloop
        uvloop.install()
    except ImportError:         # uvloop is an optimisation, not a requirement
        pass
    return asyncio.run(serve(settings))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
