"""End-to-end harness: an isolated deployment of the real pipeline per test module.

Each Pipeline has its own topic prefix, Faust app id (consumer group, changelogs), RocksDB
directories, ports and gateway id, on the shared test Kafka, MariaDB and Redis that
`./stack test` starts; channel ids are unique per pipeline, so MySQL rows never mix.
Each pipeline also gets a crash database of its own (an outbox shared by two pipelines'
payout adapters would mix their payouts); the secret chain store and the wallet are shared.
Workers, gateway, wallet and payout adapter are real subprocesses (so they can be killed -9).
Nothing here sleeps and hopes: `wait_for` polls a condition until a deadline.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from sqlalchemy import text
from sqlalchemy.engine import make_url

from sql.db import make_engine
from sql.migrate import migrate
from streams.admin import create_topics
from streams.codec import DecodeError, decode
from streams.events import TermClosed
from streams.settings import Settings
from web.signing import sign_headers

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
LOGS = REPO / "var" / "test" / "log" / "pipelines"

# Short terms for tests: ~1.2 s betting, 0.4 s starting, flights of 0-7.5 s (cap 20x).
# Term states once the betting phase is over (a manual start, the schedule, or an abort).
LEFT_PRE_START = ("starting", "flying", "crashed", "closed", "aborted")

FAST_CONFIG: dict[str, Any] = {
    "betting_ms": 1200, "starting_ms": 400, "cooldown_ms": 300, "growth_per_ms": "0.0004",
    "grace_ms": 150, "max_multiple_x100": 2000, "chain_length": 1000,
    "currencies": {"EUR": {"min_bet": 10, "max_bet": 100_000, "max_bets_per_user": 3,
                           "max_win": 1_000_000, "max_payout_per_term": 100_000_000}},
}


async def mysql_root(sql: str, socket_path: str | None = None) -> None:
    """SQL as MariaDB's root over the local socket (as ./stack creates databases and users)."""
    socket_path = socket_path or os.environ.get("CRASH_MARIADB_SOCKET")
    if not socket_path:
        raise RuntimeError("CRASH_MARIADB_SOCKET is not set: run the tests with ./stack test")
    proc = await asyncio.create_subprocess_exec(
        "mariadb", "--no-defaults", f"--socket={socket_path}", "-uroot", stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    output, _ = await proc.communicate(sql.encode())
    if proc.returncode:
        raise RuntimeError(f"mariadb as root failed ({proc.returncode}): {output.decode(errors='replace')}")


@contextlib.asynccontextmanager
async def migrated_database(settings: Settings, prefix: str) -> AsyncIterator[str]:
    """A fresh database with the crash migrations applied, its URL for the tests' user; dropped after."""
    database = f"{prefix}_{uuid.uuid4().hex[:8]}"
    grantee = f"'{make_url(settings.db_url).username}'@'127.0.0.1'"
    await mysql_root(f"CREATE DATABASE {database} CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;"
                     f" GRANT ALL PRIVILEGES ON {database}.* TO {grantee};")
    url = make_url(settings.db_url).set(database=database).render_as_string(hide_password=False)
    try:
        await migrate("crash", url)
        yield url
    finally:
        await mysql_root(f"DROP DATABASE IF EXISTS {database};")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def now_ms() -> int:
    return int(time.time() * 1000)


def first_ms_at(multiple_x100: int, growth_per_ms: float) -> int:
    """Independent of streams.money: the first whole ms at which floor(100 e^(g t)) >= multiple."""
    t = 0
    if multiple_x100 > 100:
        t = max(0, int(math.log(multiple_x100 / 100) / growth_per_ms) - 5)
    while math.floor(100 * math.exp(growth_per_ms * t)) < multiple_x100:
        t += 1
    return t


async def wait_for(check: Callable[[], Awaitable[Any]], timeout: float, what: str, every: float = 0.1) -> Any:
    """Poll `check` until it returns something truthy; fail with `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


class Process:
    def __init__(self, name: str, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name, self.args, self.env, self.log_path = name, args, env, log_path
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        log.write(f"\n===== start {time.strftime('%H:%M:%S')} {' '.join(self.args)}\n".encode())
        log.flush()
        self.proc = subprocess.Popen(self.args, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=str(REPO), start_new_session=True)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        if self.alive:
            assert self.proc is not None
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 20) -> None:
        if not self.alive:
            return
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


class Pipeline:
    def __init__(self, name: str, base: Settings, tmp: Path, env: dict[str, str] | None = None) -> None:
        self.name = f"{name}-{uuid.uuid4().hex[:6]}"
        self.base = base
        self.tmp = tmp
        self.prefix = f"t.{self.name}."
        self.env = {
            **os.environ,
            **(env or {}),          # another profile's servers (the chaos test's)
            "CRASH_TOPIC_PREFIX": self.prefix,
            "CRASH_GATEWAY_ID": f"gw-{self.name}",
            "CRASH_GATEWAY_PORT": str(free_port()),
            "CRASH_WALLET_PORT": str(free_port()),
            "CRASH_SESSION_TIMEOUT_MS": "6000",
            "CRASH_TICK_INTERVAL_MS": "50",
            # Lag shedding stays on, with more room than production's 2 s: a loaded 2-core test
            # machine's decisions can take that long without any backlog (its own test sets 0.5 s).
            "CRASH_GATEWAY_MAX_LAG_MS": "4000",
            "CRASH_LOG_LEVEL": "info",
        }
        self.env["CRASH_WALLET_URL"] = f"http://127.0.0.1:{self.env['CRASH_WALLET_PORT']}"
        self.database = "crash_t_" + self.name.replace("-", "_")
        self.db_url = make_url(base.db_url).set(database=self.database).render_as_string(hide_password=False)
        self.env["CRASH_DB_URL"] = self.db_url
        # app_id too: the admin names the table changelogs it creates after it.
        self.settings = Settings(kafka_bootstrap=base.kafka_bootstrap, topic_prefix=self.prefix,
                                 app_id=f"crash-{self.name}", partitions=base.partitions, db_url=self.db_url,
                                 api_keys=base.api_keys, secret_db_url=base.secret_db_url,
                                 wallet_db_url=base.wallet_db_url, redis_url=base.redis_url)
        self.env["CRASH_APP_ID"] = self.settings.app_id
        self.workers: dict[int, Process] = {}
        self.worker_ports: dict[int, int] = {}
        self.others: dict[str, Process] = {}
        self.db = make_engine(self.db_url, pool_size=3)
        self.http: aiohttp.ClientSession | None = None
        self.producer: AIOKafkaProducer | None = None

    # ---------------------------------------------------------- processes

    def _log(self, name: str) -> Path:
        return LOGS / self.name / f"{name}.log"

    async def open(self) -> None:
        grantee = f"'{make_url(self.base.db_url).username}'@'127.0.0.1'"
        await mysql_root(f"CREATE DATABASE {self.database} CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;"
                         f" GRANT ALL PRIVILEGES ON {self.database}.* TO {grantee};",
                         self.env.get("CRASH_MARIADB_SOCKET"))
        await migrate("crash", self.db_url)
        await create_topics(self.settings)
        self.http = aiohttp.ClientSession()
        self.producer = AIOKafkaProducer(bootstrap_servers=self.base.kafka_bootstrap)
        await self.producer.start()

    def start_worker(self, index: int = 1) -> Process:
        port = self.worker_ports.setdefault(index, free_port())
        env = {**self.env, "CRASH_WEB_PORT": str(port), "CRASH_DATA_DIR": str(self.tmp / f"faust-{index}")}
        proc = Process(f"worker-{index}", [str(BIN / "crash-worker"), "worker", "-l", "info"], env,
                       self._log(f"worker-{index}"))
        proc.start()
        self.workers[index] = proc
        return proc

    def start_service(self, name: str, command: str, extra_env: dict[str, str] | None = None) -> Process:
        proc = Process(name, [str(BIN / command)], {**self.env, **(extra_env or {})}, self._log(name))
        proc.start()
        self.others[name] = proc
        return proc

    async def wait_http(self, url: str, timeout: float = 60) -> None:
        assert self.http is not None

        async def up() -> bool:
            try:
                async with self.http.get(url, timeout=aiohttp.ClientTimeout(total=2)) as resp:
                    return resp.status < 500
            except (TimeoutError, aiohttp.ClientError):
                return False

        await wait_for(up, timeout, f"{url} to answer")

    def start_ops(self) -> Process:
        """The operator views' process (crash-ops)."""
        port = self.worker_ports.setdefault(0, free_port())
        proc = Process("ops", [str(BIN / "crash-ops"), "worker", "-l", "info"],
                       {**self.env, "CRASH_WEB_PORT": str(port), "CRASH_DATA_DIR": str(self.tmp / "faust-ops")},
                       self._log("ops"))
        proc.start()
        self.others["ops"] = proc
        return proc

    async def start(self, workers: int = 1, gateway: bool = True) -> None:
        await self.open()
        for index in range(1, workers + 1):
            self.start_worker(index)
        self.start_sink()
        self.start_ops()
        for index in range(1, workers + 1):
            await self.wait_http(f"http://127.0.0.1:{self.worker_ports[index]}/metrics")
        await self.wait_http(f"{self.ops_url()}/ops/channels")
        if gateway:
            self.start_service("gateway", "crash-gateway")
            await self.wait_http(f"{self.gateway_url}/v1/health")

    def start_sink(self, name: str = "sink") -> Process:
        """The sink's own process (crash-sink): events into this pipeline's MySQL."""
        return self.start_service(name, "crash-sink", {"CRASH_SINK_METRICS_PORT": "0"})

    async def start_wallet(self) -> None:
        self.start_service("wallet", "crash-wallet")
        await self.wait_http(f"{self.env['CRASH_WALLET_URL']}/v1/health")

    def start_payout(self, name: str = "payout") -> Process:
        return self.start_service(name, "crash-payout", {
            "CRASH_PAYOUT_METRICS_PORT": str(free_port()), "CRASH_PAYOUT_BACKOFF_BASE_MS": "50",
            "CRASH_PAYOUT_BACKOFF_CAP_MS": "1000", "CRASH_PAYOUT_LEASE_MS": "3000",
            "CRASH_PAYOUT_HTTP_TIMEOUT_MS": "1000", "CRASH_PAYOUT_MAX_TRIES": "1000"})

    def wallet(self, key_id: str = "admin"):
        from web.wallet_client import WalletClient
        return WalletClient(self.env["CRASH_WALLET_URL"], key_id, self.base.api_keys[key_id][0], timeout_s=5)

    async def close(self) -> None:
        for proc in [*self.others.values(), *self.workers.values()]:
            proc.stop()
        if self.producer is not None:
            await self.producer.stop()
        if self.http is not None:
            await self.http.close()
        await self.db.dispose()
        await mysql_root(f"DROP DATABASE IF EXISTS {self.database};", self.env.get("CRASH_MARIADB_SOCKET"))
        await self.delete_topics()

    async def delete_topics(self) -> None:
        """This pipeline's topics and changelogs: the shared broker stays small over a whole suite
        (25 pipelines of ~20 topics of 8 partitions each would be 4,000 partitions otherwise)."""
        from aiokafka.admin import AIOKafkaAdminClient
        admin = AIOKafkaAdminClient(bootstrap_servers=self.base.kafka_bootstrap)
        try:
            await admin.start()
            mine = [t for t in await admin.list_topics()
                    if t.startswith(self.prefix) or t.startswith(f"{self.settings.app_id}-")]
            if mine:
                await admin.delete_topics(mine)
        except Exception as error:      # a broker a test left down: nothing to clean there
            print(f"topics of {self.name} not deleted: {error}")
        finally:
            await admin.close()

    def logs(self, lines: int = 40) -> str:
        return "\n".join(f"--- {p.name} ({p.log_path}, {'running' if p.alive else 'exited'})\n{p.tail(lines)}"
                         for p in [*self.workers.values(), *self.others.values()])

    @property
    def api_keys(self) -> dict[str, tuple[str, str]]:
        """The keys this pipeline's processes accept (a test may give it keys of its own)."""
        from streams.settings import _parse_keys
        return _parse_keys(self.env["CRASH_API_KEYS"])

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.env['CRASH_GATEWAY_PORT']}"

    def ops_url(self) -> str:
        """The operator views (crash-ops)."""
        return f"http://127.0.0.1:{self.worker_ports[0]}"

    def metrics_url(self, index: int = 1) -> str:
        """A worker's web server: /metrics only."""
        return f"http://127.0.0.1:{self.worker_ports[index]}/metrics"

    # ---------------------------------------------------------- HTTP

    async def signed(self, base_url: str, key_id: str, method: str, path: str,
                     body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        assert self.http is not None
        raw = json.dumps(body).encode() if body is not None else b""
        headers = {**sign_headers(key_id, self.api_keys[key_id][0], method, path, raw), **(headers or {})}
        headers["Content-Type"] = "application/json"
        async with self.http.request(method, base_url + path, data=raw, headers=headers,
                                     timeout=aiohttp.ClientTimeout(total=30)) as resp:
            try:
                return resp.status, await resp.json(content_type=None)
            except json.JSONDecodeError:
                return resp.status, await resp.text()

    async def ops(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        return await self.signed(self.ops_url(), "admin", method, path, body)

    async def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        return await self.signed(self.gateway_url, "operator", method, path, body)

    async def create_channel(self, suffix: str, **overrides: Any) -> str:
        channel_id = f"{self.name}-{suffix}"
        config = {**FAST_CONFIG, **overrides}
        status, body = await self.ops("POST", "/ops/channels", {"channel_id": channel_id, "config": config})
        assert status == 202, (status, body)

        async def recorded() -> bool:
            # config_version 0 is the row the creating view writes; 1 is the pipeline's creation.
            return bool(await self.rows("SELECT 1 FROM channel WHERE channel_id = :c AND config_version > 0",
                                        c=channel_id))
        await wait_for(recorded, 60, f"channel {channel_id} in MySQL")
        return channel_id

    async def wait_gateway_channel(self, channel_id: str, timeout: float = 60) -> None:
        async def known() -> bool:
            assert self.http is not None
            async with self.http.get(f"{self.gateway_url}/v1/channels/{channel_id}") as resp:
                return resp.status == 200
        await wait_for(known, timeout, f"the gateway to know channel {channel_id}")

    async def live_term(self, channel_id: str) -> dict[str, Any] | None:
        assert self.http is not None
        async with self.http.get(f"{self.gateway_url}/v1/channels/{channel_id}") as resp:
            return (await resp.json()).get("term") if resp.status == 200 else None

    # ---------------------------------------------------------- MySQL

    async def rows(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        async with self.db.connect() as conn:
            return [dict(r._mapping) for r in await conn.execute(text(sql), params)]

    async def terms(self, channel_id: str) -> list[dict[str, Any]]:
        return await self.rows("SELECT * FROM crash_term WHERE channel_id = :c ORDER BY seq", c=channel_id)

    async def wait_term(self, term_id: str, states: tuple[str, ...], timeout: float, every: float = 0.2
                        ) -> dict[str, Any]:
        """The term's MySQL row once its state is one of `states`."""
        async def reached() -> dict[str, Any] | None:
            rows = await self.rows("SELECT * FROM crash_term WHERE term_id = :t", t=term_id)
            return rows[0] if rows and rows[0]["state"] in states else None
        return await wait_for(reached, timeout, f"{term_id} to reach {'/'.join(states)}", every=every)

    async def wait_closed_terms(self, channel_id: str, count: int, timeout: float) -> list[dict[str, Any]]:
        async def closed() -> list[dict[str, Any]]:
            rows = [t for t in await self.terms(channel_id) if t["state"] == "closed"]
            return rows if len(rows) >= count else []
        return await wait_for(closed, timeout, f"{count} closed terms on {channel_id}", every=0.25)

    # ---------------------------------------------------------- Kafka

    def topic(self, name: str) -> str:
        return f"{self.prefix}{name}"

    async def read_topic(self, name: str, key: str | None = None) -> list[tuple[Any, bytes, int, int]]:
        """Everything on a topic now: [(decoded record or None, raw value, partition, offset)]."""
        # earliest: a fresh assignment must not start at the end (a fetch from there could
        # race the seek to the beginning and end the read early).
        consumer = AIOKafkaConsumer(bootstrap_servers=self.base.kafka_bootstrap, enable_auto_commit=False,
                                    group_id=None, auto_offset_reset="earliest")
        await consumer.start()
        try:
            topic = self.topic(name)
            partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or
                          await self._partitions(consumer, topic)]
            consumer.assign(partitions)
            ends = await consumer.end_offsets(partitions)
            await consumer.seek_to_beginning(*partitions)
            out: list[tuple[Any, bytes, int, int]] = []
            remaining = {tp for tp in partitions if ends[tp] > 0}
            while remaining:
                batches = await consumer.getmany(timeout_ms=500)
                for tp, messages in batches.items():
                    for m in messages:
                        if key is None or (m.key or b"").decode() == key:
                            try:
                                record = decode(m.value)
                            except DecodeError:
                                record = None
                            out.append((record, m.value, m.partition, m.offset))
                        if m.offset >= ends[tp] - 1:
                            remaining.discard(tp)
            return out
        finally:
            await consumer.stop()

    async def read_topic_raw(self, topic: str) -> list[bytes]:
        """Every value now on a physical topic (no prefix added), e.g. a Faust changelog."""
        # earliest: a fresh assignment must not start at the end (a fetch from there could
        # race the seek to the beginning and end the read early).
        consumer = AIOKafkaConsumer(bootstrap_servers=self.base.kafka_bootstrap, enable_auto_commit=False,
                                    group_id=None, auto_offset_reset="earliest")
        await consumer.start()
        try:
            partitions = [TopicPartition(topic, p) for p in await self._partitions(consumer, topic)]
            consumer.assign(partitions)
            ends = await consumer.end_offsets(partitions)
            await consumer.seek_to_beginning(*partitions)
            values: list[bytes] = []
            remaining = {tp for tp in partitions if ends[tp] > 0}
            while remaining:
                for tp, messages in (await consumer.getmany(timeout_ms=500)).items():
                    for m in messages:
                        if m.value is not None:
                            values.append(m.value)
                        if m.offset >= ends[tp] - 1:
                            remaining.discard(tp)
            return values
        finally:
            await consumer.stop()

    @staticmethod
    async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
        await consumer._client.force_metadata_update()
        return consumer.partitions_for_topic(topic) or set()

    async def publish(self, name: str, key: str, value: bytes) -> None:
        assert self.producer is not None
        await self.producer.send_and_wait(self.topic(name), value, key=key.encode())


def independent_crash_x100(hash_hex: str, salt_hex: str, edge_bps: int, max_multiple_x100: int) -> int:
    """DESIGN section 6 written out again, without streams.fairness."""
    import hashlib
    import hmac
    digest = hmac.new(bytes.fromhex(salt_hex), hash_hex.encode("ascii"), hashlib.sha512).hexdigest()
    r = int(digest[:13], 16)
    crash = (10000 - edge_bps) * 2**52 // ((2**52 - r) * 100)
    return min(max(crash, 100), max_multiple_x100)


async def committed_offsets(bootstrap: str, group: str) -> dict[Any, int]:
    from aiokafka.admin import AIOKafkaAdminClient
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
        return {tp: meta.offset for tp, meta in offsets.items()}
    finally:
        await admin.close()


async def end_offsets(bootstrap: str, topics: list[str]) -> dict[Any, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        partitions = [TopicPartition(t, p) for t in topics for p in (consumer.partitions_for_topic(t) or
                                                                   await Pipeline._partitions(consumer, t))]
        return await consumer.end_offsets(partitions)
    finally:
        await consumer.stop()


async def wait_consumed(pipeline: Pipeline, names: list[str], timeout: float = 60) -> None:
    """Wait until every consumer of `names` has committed past everything now on them: the
    workers' Faust group and the sink's group (`<app id>-sink`, its own process); a partition
    counts once each group that reads it has a committed offset at its end."""
    ends = await end_offsets(pipeline.base.kafka_bootstrap, [pipeline.topic(n) for n in names])
    groups = [pipeline.env["CRASH_APP_ID"], pipeline.env["CRASH_APP_ID"] + "-sink"]

    async def caught_up() -> bool:
        offsets = [await committed_offsets(pipeline.base.kafka_bootstrap, group) for group in groups]
        for tp, end in ends.items():
            seen = [committed[tp] for committed in offsets if tp in committed]
            if end > 0 and (not seen or min(seen) < end):
                return False
        return True

    await wait_for(caught_up, timeout, f"the workers and the sink to consume {names}", every=0.5)


class DirectCommands:
    """Commands published straight to game.command with chosen receive times (as a gateway
    would stamp them), and their replies read from game.reply: for exact timing tests."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.gateway_id = f"direct-{uuid.uuid4().hex[:8]}"
        self.consumer: AIOKafkaConsumer | None = None
        self.replies: dict[str, Any] = {}

    async def start(self) -> None:
        from aiokafka.partitioner import DefaultPartitioner
        topic = self.pipeline.topic("game.reply")
        self.consumer = AIOKafkaConsumer(bootstrap_servers=self.pipeline.base.kafka_bootstrap, group_id=None,
                                         enable_auto_commit=False)
        await self.consumer.start()
        partitions = sorted(await Pipeline._partitions(self.consumer, topic))
        tp = TopicPartition(topic, DefaultPartitioner()(self.gateway_id.encode(), partitions, partitions))
        self.consumer.assign([tp])
        await self.consumer.seek_to_end(tp)
        await self.consumer.position(tp)

    async def stop(self) -> None:
        if self.consumer is not None:
            await self.consumer.stop()

    async def send(self, command_type: type, channel_id: str, ts: int, **fields: Any) -> str:
        from streams.codec import encode
        command_id = f"cmd-{uuid.uuid4().hex}"
        command = command_type(event_id=command_id, channel_id=channel_id, ts=ts, gateway_id=self.gateway_id,
                               **fields)
        await self.pipeline.publish("game.command", channel_id, encode(command))
        return command_id

    async def reply(self, command_id: str, timeout: float = 30) -> Any:
        assert self.consumer is not None

        async def arrived() -> Any:
            await self.read_replies()
            return self.replies.get(command_id)

        return await wait_for(arrived, timeout, f"the reply to {command_id}", every=0)

    async def read_replies(self, timeout_ms: int = 100) -> None:
        """The replies that arrived (one fetch) into `self.replies`, by command id."""
        assert self.consumer is not None
        for messages in (await self.consumer.getmany(timeout_ms=timeout_ms, max_records=10_000)).values():
            for m in messages:
                try:
                    record = decode(m.value)
                except DecodeError:
                    continue
                self.replies[record.command_id] = record


async def peek_crash_points(pipeline: Pipeline, channel_id: str, config: dict[str, Any]):
    """The committed crash point of every chain index, read from the secret store as an auditor
    with the secret grant could (tests only: nothing else outside the orchestrator does this)."""
    from streams import fairness
    from tables.chain_store import ChainStore
    store = ChainStore(pipeline.base.secret_db_url)
    chain = await store.get(channel_id, 1)
    await store.close()

    def crash_of(index: int) -> int:
        return fairness.crash_point_x100(chain.hash_at(index), chain.salt, config.get("edge_bps", 100),
                                         config["max_multiple_x100"])
    return crash_of


async def next_term(pipeline: Pipeline, channel_id: str, crash_of, wanted: Callable[[int], bool],
                    window_left_ms: int = 800, timeout: float = 180) -> tuple[dict[str, Any], int]:
    """Wait for a term taking bets, with `window_left_ms` of its window left, whose committed
    crash point satisfies `wanted`; returns (live term, crash point)."""
    async def found():
        term = await pipeline.live_term(channel_id)
        if not term or term["state"] != "pre_start" or term["bets_close_at"] - now_ms() < window_left_ms:
            return None
        crash = crash_of(int(term["term_id"].rsplit("-", 1)[1]))
        return (term, crash) if wanted(crash) else None
    return await wait_for(found, timeout, f"a term of {channel_id} with a suitable crash point", every=0.05)


async def sleep_until(ts_ms: int) -> None:
    """Wait for a point in time (for commands that must be received after a deadline)."""
    await asyncio.sleep(max(0.0, (ts_ms - now_ms()) / 1000))


async def taking_bets(pipeline: Pipeline, channel_id: str, window_left_ms: int = 800,
                      timeout: float = 90) -> dict[str, Any]:
    """The next term of the channel with at least `window_left_ms` of its betting window left."""
    async def found():
        term = await pipeline.live_term(channel_id)
        ok = term and term["state"] == "pre_start" and term["bets_close_at"] - now_ms() >= window_left_ms
        return term if ok else None
    return await wait_for(found, timeout, f"a term of {channel_id} taking bets", every=0.03)


# ---------------------------------------------------------------- jackpots

async def create_jackpot(pipe: Pipeline, **definition: Any) -> dict[str, Any]:
    """Create a jackpot through the operator view; returns its first view (from Redis)."""
    status, body = await pipe.ops("POST", "/ops/jackpots", {"definition": definition})
    assert status == 202, (status, body)
    return await wait_for(lambda: jackpot_view(pipe, definition["jackpot_id"]), 60,
                          f"jackpot {definition['jackpot_id']} to be live")


async def jackpot_view(pipe: Pipeline, jackpot_id: str) -> dict[str, Any] | None:
    """GET /jackpot/{id} (signed by the reader key): the pool's view, or None while unknown."""
    status, body = await pipe.signed(pipe.gateway_url, "reader", "GET", f"/jackpot/{jackpot_id}")
    return body if status == 200 else None


async def contribute(pipe: Pipeline, jackpot_id: str, amount: int, contribution_id: str | None = None,
                     key_id: str = "operator", **extra: Any) -> tuple[int, Any]:
    body = {"contributionId": contribution_id or f"c-{uuid.uuid4().hex[:16]}", "gameId": "slots-1",
            "amount": amount, "currency": "EUR", **extra}
    return await pipe.signed(pipe.gateway_url, key_id, "POST", f"/jackpot/{jackpot_id}/contribute", body)


# ---------------------------------------------------------------- money checks (payouts, chaos)

BALANCE = 1_000_000_000
NO_FAULTS = {"latency_ms": 0, "latency_jitter_ms": 0, "error_rate": 0, "timeout_rate": 0, "timeout_ms": 10_000,
             "drop_rate": 0}


class Pending(dict):
    """What is still pending (false, so that wait_for goes on; shown when it gives up)."""

    def __bool__(self) -> bool:
        return False


async def settle_everything(pipe, timeout: float = 240) -> None:
    """Wait until no debit is unresolved, every term with bets is closed and every payout acked."""
    async def quiet() -> bool | Pending:
        left = {
            "debits": await pipe.rows(
                "SELECT channel_id, api_order_no, state FROM player_debit WHERE state IN ('pending', 'debited')"),
            "open_bets": await pipe.rows(
                "SELECT b.api_order_no, b.status, t.term_id, t.state FROM bet b JOIN crash_term t"
                " ON t.term_id = b.term_id WHERE b.status = 'placed' OR t.state <> 'closed'"),
            "unpaid": await pipe.rows(
                "SELECT order_no, status, retry_count, last_error FROM payout_outbox WHERE status <> 'acked'"),
            "refunds_due": await pipe.rows(
                "SELECT api_order_no, status, debited, refund FROM bet WHERE (status IN ('cancelled', 'voided'))"
                " OR (status = 'rejected' AND debited = 1 AND refund IS NULL)"),
        }
        return not any(left.values()) or Pending({k: v[:5] for k, v in left.items() if v})
    await wait_for(quiet, timeout, "every debit resolved, term closed, payout acked and refund recorded", every=1)


async def check_ledgers(pipe, wallet_db, users: list[str]) -> dict[str, int]:
    """final balance = initial - stakes + cashouts + refunds, for every player, to the cent;
    every payout order credited exactly once; no debit without its bet."""
    async with wallet_db.connect() as conn:
        marks = ",".join(f"'{u}'" for u in users)
        txs = [dict(r._mapping) for r in await conn.execute(text(
            f"SELECT order_no, op, user_id, amount, status FROM wallet_tx WHERE user_id IN ({marks})"))]
        balances = {r.user_id: r.balance for r in await conn.execute(text(
            f"SELECT user_id, balance FROM wallet_account WHERE user_id IN ({marks}) AND currency = 'EUR'"))}
    debits = {t["order_no"]: t for t in txs if t["op"] == "debit" and t["status"] == "ok"}
    credits = defaultdict(list)
    for t in txs:
        if t["op"] == "credit":
            credits[t["order_no"]].append(t)
    bets = await pipe.rows(f"SELECT * FROM bet WHERE user_id IN ({marks})")
    outbox = await pipe.rows(f"SELECT order_no, amount, user_id, status FROM payout_outbox WHERE user_id IN ({marks})")
    # Every payout order credited exactly once, with its amount; no credit without an order.
    for order in outbox:
        assert order["status"] == "acked", order
        rows = credits.get(order["order_no"], [])
        assert len(rows) == 1 and rows[0]["amount"] == order["amount"] and rows[0]["status"] == "ok", (order, rows)
    assert set(credits) <= {o["order_no"] for o in outbox}
    # Every stake taken from a player belongs to a bet the pipeline decided on.
    debited_bets = {b["api_order_no"]: b for b in bets if b["debited"]}
    assert set(debits) == set(debited_bets), set(debits) ^ set(debited_bets)
    flows = {u: {"stakes": 0, "cashouts": 0, "refunds": 0} for u in users}
    for bet in debited_bets.values():
        assert debits[bet["api_order_no"]]["amount"] == bet["amount"]
        flow = flows[bet["user_id"]]
        flow["stakes"] += bet["amount"]
        flow["cashouts"] += bet["payout"] or 0
        flow["refunds"] += bet["refund"] or 0
        assert bet["status"] in ("cashed_out", "lost", "refunded", "rejected"), bet
        if bet["status"] in ("refunded", "rejected"):
            assert bet["refund"] == bet["amount"], bet
    for user in users:
        flow = flows[user]
        expected = BALANCE - flow["stakes"] + flow["cashouts"] + flow["refunds"]
        assert balances.get(user, BALANCE) == expected, (
            user, flow, "balance", balances.get(user, BALANCE), "expected", expected,
            "wallet", sorted((t["order_no"], t["op"], t["amount"], t["status"]) for t in txs if t["user_id"] == user),
            "bets", sorted((b["api_order_no"], b["status"], b["amount"], b["payout"], b["refund"], b["debited"])
                           for b in bets if b["user_id"] == user))
    return {k: sum(f[k] for f in flows.values()) for k in ("stakes", "cashouts", "refunds")}


async def check_house_result(pipe, channel_id: str) -> None:
    """The house result of all TermClosed events equals stakes minus payouts (minus the voided
    stakes refunded), computed from the bets. A difference names the terms it comes from."""
    closed = [r for r, _, _, _ in await pipe.read_topic("game.term", key=channel_id) if isinstance(r, TermClosed)]
    closed = list({c.event_id: c for c in closed}.values())
    bets = await pipe.rows(
        "SELECT b.bet_id, b.term_id, b.status, b.amount, b.payout, GROUP_CONCAT(h.status) AS history FROM bet b"
        " LEFT JOIN bet_status_history h ON h.bet_id = b.bet_id WHERE b.channel_id = :c AND b.bet_id IS NOT NULL"
        " GROUP BY b.bet_id, b.term_id, b.status, b.amount, b.payout", c=channel_id)
    by_term: dict[str, list[int]] = {}
    for bet in bets:
        history = set((bet["history"] or "").split(","))
        if "cancelled" in history:
            continue            # a cancelled bet is no stake of its term
        row = by_term.setdefault(bet["term_id"], [0, 0, 0])
        row[0] += bet["amount"]
        row[1] += bet["payout"] or 0
        row[2] += bet["amount"] if "voided" in history else 0
    events: dict[str, list[int]] = {}
    for c in closed:
        row = events.setdefault(c.term_id, [0, 0, 0])
        row[0] += sum(t["stakes"] for t in c.totals.values())
        row[1] += sum(t["payouts"] for t in c.totals.values())
        row[2] += sum(t["house_result"] for t in c.totals.values())
    differing = {}
    for term_id in sorted(set(by_term) | set(events)):
        stakes, payouts, voided = by_term.get(term_id, [0, 0, 0])
        if events.get(term_id, [0, 0, 0]) != [stakes, payouts, stakes - payouts - voided]:
            differing[term_id] = {
                "closed_events": [(c.event_id, c.state, c.aborted, c.totals) for c in closed if c.term_id == term_id],
                "bets": [(b["bet_id"], b["status"], b["amount"], b["payout"], b["history"])
                         for b in bets if b["term_id"] == term_id]}
    if differing:
        terms = await pipe.read_topic("game.term", key=channel_id)
        for term_id, detail in differing.items():
            detail["term_events"] = [(type(r).__name__, r.event_id) for r, _, _, _ in terms
                                     if r is not None and getattr(r, "term_id", None) == term_id]
    assert not differing, ("TermClosed totals differ from the bets in MySQL", differing)



