"""The Payout Adapter (`crash-payout`, agents/payout_adapter.py) against real MariaDB, Kafka and the
reference wallet, all as subprocesses: every order is credited exactly once whatever the wallet,
the adapter process or the database do (DESIGN sections 7 and 9).

Rows go straight into `payout_outbox` (what the sink would write). The module has a database of
its own holding only that table (created from the crash migration), because an adapter processes
the whole table: other tests' adapters (or a demo) on the same MariaDB would otherwise pay this
module's rows, and this module's fault-injected adapters would fail theirs. The wallet's database
is shared; order numbers and user ids are unique to each test. Every wait is a condition with a
deadline (harness.wait_for), never a fixed sleep.
"""
from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiokafka import AIOKafkaConsumer
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import bindparam, make_url, text
from sqlalchemy.ext.asyncio import AsyncEngine

from agents.payout_outbox import list_payouts, retry_payout
from harness import BIN, LOGS, Process, free_port, mysql_root, now_ms, wait_for
from sql.db import make_engine
from sql.migrate import migration_files, split_statements
from streams.admin import create_topics
from streams.codec import DecodeError, decode
from streams.events import Message, PayoutFailed, PayoutSucceeded
from streams.settings import Settings
from web.wallet_client import WalletClient

NO_FAULTS: dict[str, int | float] = {"latency_ms": 0, "latency_jitter_ms": 0, "error_rate": 0,
                                     "timeout_rate": 0, "timeout_ms": 10_000, "drop_rate": 0}
# Fast retries for tests (each test overrides what it is about); debug logs show each batch's timings.
FAST_ENV = {"CRASH_PAYOUT_POLL_MS": "50", "CRASH_PAYOUT_BACKOFF_BASE_MS": "20", "CRASH_PAYOUT_BACKOFF_CAP_MS": "200",
            "CRASH_PAYOUT_LEASE_MS": "3000", "CRASH_PAYOUT_HTTP_TIMEOUT_MS": "1500", "CRASH_LOG_LEVEL": "debug"}
MODULE_ID = uuid.uuid4().hex[:6]
LOG_DIR = LOGS / f"payout-{MODULE_ID}"


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def prefix() -> str:
    return f"t.payout-{MODULE_ID}."


@pytest.fixture(scope="module")
async def topic(base_settings: Settings, prefix: str) -> str:
    settings = Settings(kafka_bootstrap=base_settings.kafka_bootstrap, topic_prefix=prefix,
                        partitions=base_settings.partitions, replication=base_settings.replication)
    await create_topics(settings, names=("game.payout",))
    return settings.topic("game.payout")


@pytest.fixture(scope="module")
async def wallet_url(base_settings: Settings) -> AsyncIterator[str]:
    port = free_port()
    proc = Process("wallet", [str(BIN / "crash-wallet")],
                   {**os.environ, "CRASH_WALLET_HOST": "127.0.0.1", "CRASH_WALLET_PORT": str(port)},
                   LOG_DIR / "wallet.log")
    proc.start()
    url = f"http://127.0.0.1:{port}"
    try:
        async def healthy() -> bool:
            assert proc.alive, f"crash-wallet exited:\n{proc.tail()}"
            return await _http_ok(f"{url}/v1/health")

        await wait_for(healthy, 30, "crash-wallet to answer /v1/health")
        yield url
    finally:
        proc.stop()


@pytest.fixture
async def faults(wallet_url: str, base_settings: Settings) -> AsyncIterator[WalletClient]:
    """The wallet's admin client; every fault switch is reset before and after the test."""
    async with WalletClient(wallet_url, "admin", base_settings.api_keys["admin"][0]) as admin:
        await admin.set_faults(**NO_FAULTS)
        try:
            yield admin
        finally:
            await admin.set_faults(**NO_FAULTS)


@pytest.fixture(scope="module")
async def db_url(base_settings: Settings) -> AsyncIterator[str]:
    """A database of this module's own with the payout_outbox table of the crash migrations."""
    name = f"crash_payout_{MODULE_ID}"
    url = make_url(base_settings.db_url)
    grantee = f"'{url.username}'@'{url.host}'"
    ddl = next(statement for _, script in migration_files("crash") for statement in split_statements(script)
               if statement.startswith("CREATE TABLE payout_outbox"))
    await mysql_root(f"CREATE DATABASE {name} CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;"
                      f" GRANT ALL PRIVILEGES ON {name}.* TO {grantee}; USE {name}; {ddl};")
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        await mysql_root(f"REVOKE ALL PRIVILEGES ON {name}.* FROM {grantee}; DROP DATABASE IF EXISTS {name};")


@pytest.fixture(scope="module")
async def db(db_url: str) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(db_url, pool_size=2)
    yield engine
    await engine.dispose()


@pytest.fixture(scope="module")
async def wallet_db(base_settings: Settings) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(base_settings.wallet_db_url, pool_size=2)
    yield engine
    await engine.dispose()


@pytest.fixture(scope="module")
async def events(base_settings: Settings, topic: str) -> AsyncIterator[EventLog]:
    log = EventLog(base_settings.kafka_bootstrap, topic)
    await log.start()
    yield log
    await log.stop()


@dataclass
class Adapter:
    proc: Process
    metrics_port: int

    async def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of `name` whose labels include `labels`."""
        async with aiohttp.ClientSession() as session, \
                session.get(f"http://127.0.0.1:{self.metrics_port}/metrics") as answer:
            body = await answer.text()
        return sum(sample.value for family in text_string_to_metric_families(body) for sample in family.samples
                   if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()))


@pytest.fixture
def adapters(wallet_url: str, prefix: str, db_url: str,
             request: pytest.FixtureRequest) -> Iterator[Callable[..., Awaitable[Adapter]]]:
    """start(name, **env) -> a running `crash-payout`; all are stopped after the test."""
    started: list[Process] = []

    async def start(name: str = "payout", **env: str) -> Adapter:
        port = free_port()
        proc = Process(name, [str(BIN / "crash-payout")],
                       {**os.environ, **FAST_ENV, "CRASH_TOPIC_PREFIX": prefix, "CRASH_WALLET_URL": wallet_url,
                        "CRASH_DB_URL": db_url, "CRASH_PAYOUT_METRICS_PORT": str(port), **env},
                       LOG_DIR / f"{request.node.name}-{name}.log")
        proc.start()
        started.append(proc)
        adapter = Adapter(proc, port)

        async def up() -> bool:
            assert proc.alive, f"crash-payout exited:\n{proc.tail()}"
            return await _http_ok(f"http://127.0.0.1:{port}/metrics")

        await wait_for(up, 30, f"{name} to serve its metrics")
        return adapter

    yield start
    for proc in started:
        proc.stop()


# ---------------------------------------------------------------- helpers

async def _http_ok(url: str) -> bool:
    try:
        async with aiohttp.ClientSession() as session, \
                session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as answer:
            return answer.status == 200
    except (TimeoutError, aiohttp.ClientError):
        return False


class EventLog:
    """Everything on the module's game.payout topic, read continuously in the background."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None,
                                         auto_offset_reset="earliest", enable_auto_commit=False)
        self.records: list[tuple[str, Message]] = []
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.consumer.start()
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while True:
            for messages in (await self.consumer.getmany(timeout_ms=200)).values():
                for message in messages:
                    try:
                        record = decode(message.value)
                    except DecodeError:
                        continue
                    self.records.append(((message.key or b"").decode(), record))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        await self.consumer.stop()

    def of(self, kind: type[Message], orders: dict[str, Any]) -> dict[str, list[tuple[str, Message]]]:
        """{order_no: [(key, event)]} of one event type, for the given orders only."""
        found: dict[str, list[tuple[str, Message]]] = {}
        for key, record in self.records:
            if isinstance(record, kind) and record.order_no in orders:
                found.setdefault(record.order_no, []).append((key, record))
        return found

    async def wait(self, kind: type[Message], orders: dict[str, Any], timeout: float = 30,
                   at_least: int | None = None) -> dict[str, list[tuple[str, Message]]]:
        wanted = len(orders) if at_least is None else at_least

        async def arrived() -> bool:
            return len(self.of(kind, orders)) >= wanted

        await wait_for(arrived, timeout, f"{wanted} {kind.__name__} events")
        return self.of(kind, orders)


@dataclass
class Order:
    user_id: str
    amount: int
    channel_id: str
    kind: str = "cashout"


@dataclass
class Orders:
    """The outbox rows of one test: order_no -> what it pays."""
    run: str = field(default_factory=lambda: uuid.uuid4().hex[:10])
    items: dict[str, Order] = field(default_factory=dict)

    def users(self) -> set[str]:
        return {order.user_id for order in self.items.values()}

    def expected_balances(self) -> dict[str, int]:
        totals: Counter[str] = Counter()
        for order in self.items.values():
            totals[order.user_id] += order.amount
        return dict(totals)


async def insert_orders(db: AsyncEngine, count: int, users: int = 10, orders: Orders | None = None,
                        kind: str = "cashout", amount: Callable[[int], int] | None = None) -> Orders:
    """`count` ready outbox rows, as the sink writes them."""
    orders = orders or Orders()
    now, rows = now_ms(), []
    start = len(orders.items)
    for i in range(start, start + count):
        bet_id = f"{orders.run}-{i}"
        order_no = f"{kind}:{bet_id}"
        order = Order(f"pa{orders.run}u{i % users}", amount(i) if amount else 100 + (i * 37) % 9_000,
                      f"pa-{orders.run}-ch{i % 3}", kind)
        orders.items[order_no] = order
        rows.append({"order_no": order_no, "kind": kind, "channel_id": order.channel_id,
                     "term_id": f"{order.channel_id}-1", "bet_id": bet_id, "user_id": order.user_id,
                     "currency": "EUR", "amount": order.amount,
                     "meta": json.dumps({"stake": 100, "multiple_x100": 150}), "now": now})
    async with db.begin() as conn:
        await conn.execute(text(
            "INSERT INTO payout_outbox (order_no, kind, channel_id, term_id, bet_id, user_id, currency, amount,"
            " meta, status, next_at, created_at, updated_at) VALUES (:order_no, :kind, :channel_id, :term_id,"
            " :bet_id, :user_id, :currency, :amount, :meta, 'ready', :now, :now, :now)"), rows)
    return orders


async def outbox(db: AsyncEngine, orders: Orders | dict[str, Any]) -> dict[str, dict[str, Any]]:
    names = list(orders.items if isinstance(orders, Orders) else orders)
    query = text("SELECT * FROM payout_outbox WHERE order_no IN :orders").bindparams(
        bindparam("orders", expanding=True))
    async with db.connect() as conn:
        return {row.order_no: dict(row._mapping) for row in await conn.execute(query, {"orders": names})}


async def wait_status(db: AsyncEngine, orders: Orders, status: str, timeout: float) -> dict[str, dict[str, Any]]:
    async def done() -> dict[str, dict[str, Any]] | None:
        rows = await outbox(db, orders)
        states = Counter(row["status"] for row in rows.values())
        return rows if states[status] == len(orders.items) else None

    try:
        return await wait_for(done, timeout, f"{len(orders.items)} rows {status}", every=0.2)
    except AssertionError:
        states = Counter(row["status"] for row in (await outbox(db, orders)).values())
        raise AssertionError(f"not all {status} within {timeout}s: {dict(states)}") from None


async def journal(wallet_db: AsyncEngine, orders: Orders) -> dict[str, list[dict[str, Any]]]:
    query = text("SELECT * FROM wallet_tx WHERE order_no IN :orders").bindparams(bindparam("orders", expanding=True))
    found: dict[str, list[dict[str, Any]]] = {}
    async with wallet_db.connect() as conn:
        for row in await conn.execute(query, {"orders": list(orders.items)}):
            found.setdefault(row.order_no, []).append(dict(row._mapping))
    return found


async def balances(wallet_db: AsyncEngine, users: set[str]) -> dict[str, int]:
    query = text("SELECT user_id, balance FROM wallet_account WHERE currency = 'EUR' AND user_id IN :users"
                 ).bindparams(bindparam("users", expanding=True))
    async with wallet_db.connect() as conn:
        return {row.user_id: int(row.balance) for row in await conn.execute(query, {"users": sorted(users)})}


async def assert_paid_once(wallet_db: AsyncEngine, orders: Orders) -> None:
    """Each order has exactly one credit journal row of its amount; every balance is the sum."""
    rows = await journal(wallet_db, orders)
    assert set(rows) == set(orders.items), f"{len(set(orders.items) - set(rows))} orders not credited"
    twice = {order_no: len(entries) for order_no, entries in rows.items() if len(entries) != 1}
    assert not twice, f"credited more than once: {twice}"
    for order_no, (entry,) in rows.items():
        order = orders.items[order_no]
        assert (entry["op"], entry["status"], entry["user_id"], entry["currency"], entry["amount"], entry["kind"]) == \
            ("credit", "ok", order.user_id, "EUR", order.amount, order.kind)
    assert await balances(wallet_db, orders.users()) == orders.expected_balances()


def assert_events_once(found: dict[str, list[tuple[str, Message]]], orders: Orders, kind: type[Message]) -> None:
    suffix = "succeeded" if kind is PayoutSucceeded else "failed"
    assert set(found) == set(orders.items)
    for order_no, entries in found.items():
        assert len(entries) == 1, f"{order_no}: {len(entries)} {kind.__name__} events"
        key, event = entries[0]
        order = orders.items[order_no]
        assert key == event.channel_id == order.channel_id
        assert event.event_id == f"{order_no}.{suffix}" and event.trace_id == order_no
        assert (event.user_id, event.amount, event.currency, event.kind) == (order.user_id, order.amount, "EUR",
                                                                             order.kind)


class TcpProxy:
    """A TCP forwarder in front of MariaDB that the test can take away and bring back: from the
    adapter's side, the database goes down (connections cut, new ones refused) and comes back."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                sink.transport.abort()
                self._writers.discard(sink)

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


# ---------------------------------------------------------------- tests

async def test_happy_path_pays_every_order_once(db: AsyncEngine, wallet_db: AsyncEngine, events: EventLog,
                                                faults: WalletClient, adapters) -> None:
    adapter = await adapters()
    started = time.monotonic()
    orders = await insert_orders(db, 300, users=20)
    rows = await wait_status(db, orders, "acked", 60)
    elapsed = time.monotonic() - started
    print(f"\n300 payouts acked in {elapsed:.2f} s ({300 / elapsed:.0f} credits/s)")
    await assert_paid_once(wallet_db, orders)
    for order_no, row in rows.items():
        receipt = json.loads(row["receipt"])
        assert receipt["order_no"] == order_no and receipt["status"] == "ok" and receipt["tx_id"]
        assert (row["retry_count"], row["leased_until"], row["last_error"]) == (0, None, None)
    found = await events.wait(PayoutSucceeded, orders.items)
    assert_events_once(found, orders, PayoutSucceeded)
    for order_no, [(_, event)] in found.items():
        assert event.receipt == json.loads(rows[order_no]["receipt"])
        assert event.bet_id == order_no.split(":", 1)[1] and event.term_id == f"{orders.items[order_no].channel_id}-1"
    assert not events.of(PayoutFailed, orders.items)
    # The module's database holds only this module's rows: the counters are exact.
    assert await adapter.metric("crash_payouts_total", kind="cashout", outcome="acked") == 300
    assert await adapter.metric("crash_payout_attempts_total", outcome="ok") == 300
    assert await adapter.metric("crash_payout_latency_seconds_count") == 300
    assert await adapter.metric("crash_payouts_failed") == 0


async def test_flaky_wallet_still_pays_every_order_exactly_once(
        db: AsyncEngine, wallet_db: AsyncEngine, events: EventLog, faults: WalletClient, adapters) -> None:
    # Answers later than the client waits (timeout_ms > CRASH_PAYOUT_HTTP_TIMEOUT_MS) are still
    # applied by the wallet, as are dropped ones: only order_no idempotence keeps them single.
    await faults.set_faults(error_rate=0.3, timeout_rate=0.1, timeout_ms=1500, drop_rate=0.1)
    # Small batches: many wallet calls, so that every kind of fault is drawn many times.
    adapter = await adapters(CRASH_PAYOUT_HTTP_TIMEOUT_MS="1000", CRASH_PAYOUT_BATCH="10",
                             CRASH_PAYOUT_MAX_TRIES="100", CRASH_PAYOUT_LEASE_MS="4000")
    orders = await insert_orders(db, 500, users=25)
    rows = await wait_status(db, orders, "acked", 180)
    await assert_paid_once(wallet_db, orders)
    assert any(row["retry_count"] > 0 and row["last_error"] for row in rows.values())
    assert await adapter.metric("crash_payout_attempts_total", outcome="unavailable") > 0
    assert_events_once(await events.wait(PayoutSucceeded, orders.items), orders, PayoutSucceeded)
    assert not events.of(PayoutFailed, orders.items)


async def test_kill9_mid_batch_then_restart(db: AsyncEngine, wallet_db: AsyncEngine, events: EventLog,
                                            faults: WalletClient, adapters) -> None:
    # Each wallet call takes a second, so there is always a batch in flight to kill.
    await faults.set_faults(latency_ms=1000)
    env = {"CRASH_PAYOUT_BATCH": "50", "CRASH_PAYOUT_LEASE_MS": "2500", "CRASH_PAYOUT_HTTP_TIMEOUT_MS": "2000"}
    first = await adapters("payout-1", **env)
    orders = await insert_orders(db, 300, users=15)

    async def in_flight() -> bool:
        # Some rows paid, and a batch leased long enough ago that its request is at the wallet.
        rows = (await outbox(db, orders)).values()
        acked = sum(row["status"] == "acked" for row in rows)
        return acked >= 50 and any(row["status"] == "sent" and row["updated_at"] < now_ms() - 600 for row in rows)

    await wait_for(in_flight, 60, "a batch in flight after the first ones were paid", every=0.05)
    first.proc.kill9()
    stranded = {order_no for order_no, row in (await outbox(db, orders)).items() if row["status"] == "sent"}
    assert stranded
    await adapters("payout-2", **env)
    rows = await wait_status(db, orders, "acked", 90)
    await assert_paid_once(wallet_db, orders)
    # The killed batch reached the wallet, which applied it; the new owner's resend replayed it.
    assert any(json.loads(rows[order_no]["receipt"])["replayed"] for order_no in stranded)
    # An event may be lost when the kill falls between the commit and the send (the outbox still
    # says acked), never duplicated.
    found = await events.wait(PayoutSucceeded, orders.items, at_least=len(orders.items) - 50)
    assert all(len(entries) == 1 for entries in found.values())


async def test_two_adapters_share_the_outbox(db: AsyncEngine, wallet_db: AsyncEngine, events: EventLog,
                                             faults: WalletClient, adapters) -> None:
    await faults.set_faults(latency_ms=100, latency_jitter_ms=50)
    env = {"CRASH_PAYOUT_BATCH": "50", "CRASH_PAYOUT_POLL_MS": "20"}
    one, two = await adapters("payout-a", **env), await adapters("payout-b", **env)
    orders = await insert_orders(db, 600, users=30)
    await wait_status(db, orders, "acked", 90)
    await assert_paid_once(wallet_db, orders)
    assert_events_once(await events.wait(PayoutSucceeded, orders.items), orders, PayoutSucceeded)
    shares = [await adapter.metric("crash_payouts_total", outcome="acked") for adapter in (one, two)]
    assert all(share > 0 for share in shares), f"one adapter did all the work: {shares}"
    assert sum(shares) == 600  # each row recorded by one of them


async def test_max_tries_then_operator_retry(db: AsyncEngine, wallet_db: AsyncEngine, events: EventLog,
                                             faults: WalletClient, adapters) -> None:
    await faults.set_faults(error_rate=1)
    adapter = await adapters(CRASH_PAYOUT_MAX_TRIES="3", CRASH_PAYOUT_BACKOFF_CAP_MS="100")
    orders = await insert_orders(db, 5, users=2)
    rows = await wait_status(db, orders, "failed", 30)
    for row in rows.values():
        assert row["retry_count"] == 3 and row["leased_until"] is None
        assert row["last_error"].startswith("gave up after 3 tries") and "HTTP 503" in row["last_error"]
    assert not await journal(wallet_db, orders)  # a 503 of the reference wallet applied nothing
    failed = await events.wait(PayoutFailed, orders.items)
    assert_events_once(failed, orders, PayoutFailed)
    assert all(event.retry_count == 3 and event.reason == rows[o]["last_error"] for o, [(_, event)] in failed.items())

    async def gauge() -> float:
        return await adapter.metric("crash_payouts_failed")

    await wait_for(gauge, 15, "the failed-payouts gauge to be above 0")
    listed = {row["order_no"]: row for row in await list_payouts(db, "failed", limit=1000)}
    assert set(orders.items) <= set(listed)
    assert all(row["status"] == "failed" and row["meta"] == {"stake": 100, "multiple_x100": 150}
               for order_no, row in listed.items() if order_no in orders.items)
    with pytest.raises(ValueError):
        await list_payouts(db, "nonsense")

    await faults.set_faults(error_rate=0)
    for order_no in orders.items:
        assert await retry_payout(db, order_no) is True
    assert await retry_payout(db, f"cashout:{orders.run}-nothing") is False
    rows = await wait_status(db, orders, "acked", 30)
    assert all(row["last_error"].startswith("gave up after 3 tries") for row in rows.values())  # kept for the record
    await assert_paid_once(wallet_db, orders)
    assert_events_once(await events.wait(PayoutSucceeded, orders.items), orders, PayoutSucceeded)
    assert await retry_payout(db, next(iter(orders.items))) is False  # acked is not failed
    assert (await list_payouts(db, "acked", limit=5))[0]["receipt"]["status"] == "ok"


async def test_wallet_conflict_fails_the_order_at_once(db: AsyncEngine, wallet_db: AsyncEngine, events: EventLog,
                                                       wallet_url: str, base_settings: Settings,
                                                       faults: WalletClient, adapters) -> None:
    orders = Orders()
    order_no = f"cashout:{orders.run}-0"
    # The same order_no already used with another amount: the wallet answers `conflict`.
    async with WalletClient(wallet_url, base_settings.wallet_key_id, base_settings.wallet_key_secret) as game:
        assert (await game.credit(order_no, f"pa{orders.run}u0", "EUR", 1)).ok
    await adapters()
    await insert_orders(db, 1, orders=orders, amount=lambda _: 500)
    row = (await wait_status(db, orders, "failed", 30))[order_no]
    assert row["retry_count"] == 0 and row["last_error"].startswith("conflict: ")
    [(_, event)] = (await events.wait(PayoutFailed, orders.items))[order_no]
    assert event.reason == row["last_error"] and event.event_id == f"{order_no}.failed"
    assert [entry["amount"] for entry in (await journal(wallet_db, orders))[order_no]] == [1]


async def test_sigterm_finishes_the_batch_in_flight(db: AsyncEngine, wallet_db: AsyncEngine,
                                                    faults: WalletClient, adapters) -> None:
    await faults.set_faults(latency_ms=1500)
    adapter = await adapters(CRASH_PAYOUT_HTTP_TIMEOUT_MS="4000", CRASH_PAYOUT_LEASE_MS="10000")
    orders = await insert_orders(db, 20, users=3)

    async def sent() -> bool:
        rows = (await outbox(db, orders)).values()
        return len(rows) == 20 and all(row["status"] == "sent" for row in rows)

    await wait_for(sent, 30, "the batch to be leased", every=0.05)
    adapter.proc.stop()  # SIGTERM, then waits for the exit
    assert adapter.proc.proc is not None and adapter.proc.proc.returncode == 0, adapter.proc.tail()
    # Not left `sent` for a lease to expire: the answer was recorded before the exit.
    assert {row["status"] for row in (await outbox(db, orders)).values()} == {"acked"}
    await assert_paid_once(wallet_db, orders)


async def test_database_outage_is_survived(db: AsyncEngine, wallet_db: AsyncEngine, db_url: str,
                                           faults: WalletClient, adapters) -> None:
    url = make_url(db_url)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 3306)
    await proxy.start()
    try:
        proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        adapter = await adapters(CRASH_DB_URL=proxied)
        orders = await insert_orders(db, 50, users=5)
        await wait_status(db, orders, "acked", 30)

        await proxy.stop()  # the database "goes away": connections cut, new ones refused
        more = await insert_orders(db, 100, users=5, orders=Orders(run=orders.run + "b"))

        async def complaining() -> bool:  # a few retries: the outage lasts a while
            return adapter.proc.tail(50).count("database unavailable") >= 6

        await wait_for(complaining, 30, "the adapter to retry through the outage")
        assert adapter.proc.alive
        assert {row["status"] for row in (await outbox(db, more)).values()} == {"ready"}

        await proxy.start()
        await wait_status(db, more, "acked", 60)
        await assert_paid_once(wallet_db, orders)
        await assert_paid_once(wallet_db, more)
        # In a thread: the proxy runs on this event loop and must keep serving while it exits.
        await asyncio.to_thread(adapter.proc.stop)
        assert adapter.proc.proc is not None and adapter.proc.proc.returncode == 0, adapter.proc.tail()
    finally:
        await proxy.stop()


async def test_payouts_go_on_while_kafka_is_unreachable(db: AsyncEngine, wallet_db: AsyncEngine,
                                                        faults: WalletClient, adapters) -> None:
    # Money does not wait for the events: they stay pending (and would follow once Kafka is back).
    adapter = await adapters(CRASH_KAFKA_BOOTSTRAP=f"127.0.0.1:{free_port()}")
    orders = await insert_orders(db, 30, users=3)
    await wait_status(db, orders, "acked", 30)
    await assert_paid_once(wallet_db, orders)

    async def complaining() -> bool:
        return "Kafka unavailable" in adapter.proc.tail(50)

    await wait_for(complaining, 30, "the adapter to report Kafka unavailable")
    await asyncio.to_thread(adapter.proc.stop)
    assert adapter.proc.proc is not None and adapter.proc.proc.returncode == 0, adapter.proc.tail()
    assert "events not sent" in adapter.proc.tail(20)
