"""An isolated deployment of the real pipeline for the benchmark, on the test profile's servers.

Like tests/harness.py (whose ideas it reuses): its own topic prefix, Faust app id (consumer group
and changelogs), RocksDB directories, ports, gateway id and crash database, so that it disturbs
nothing else on the shared broker and database; the secret stores are shared. Every process is a
real subprocess whose CPU time is read from /proc/<pid>/stat, so the benchmark can report CPU
seconds per process and per 1,000 bets.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
from sqlalchemy import text
from sqlalchemy.engine import make_url

from sql.db import make_engine
from sql.migrate import migrate
from streams.admin import changelog_topics, create_topics
from streams.settings import Settings
from web.signing import sign_headers

__all__ = ["Proc", "Deployment", "free_port", "wait_for", "cpu_seconds", "tree_cpu", "box_cpu", "box_busy",
           "infra_pids"]

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process so far (None once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def descendants(pid: int) -> list[int]:
    """The live processes under `pid` (a gateway's SO_REUSEPORT children, say), depth first."""
    found: list[int] = []
    try:
        children = [int(c) for task in Path(f"/proc/{pid}/task").iterdir()
                    for c in (task / "children").read_text().split()]
    except (FileNotFoundError, ProcessLookupError):
        return found
    for child in children:
        found += [child, *descendants(child)]
    return found


def tree_cpu(pid: int) -> tuple[tuple[int, ...], float] | None:
    """(the pids, their CPU seconds so far) of a process and its live descendants: a process
    that runs its work in children is one figure (None once the process is gone)."""
    own = cpu_seconds(pid)
    if own is None:
        return None
    pids, total = [pid], own
    for child in descendants(pid):
        cpu = cpu_seconds(child)
        if cpu is not None:
            pids.append(child)
            total += cpu
    return tuple(pids), total


def box_cpu() -> tuple[float, float]:
    """(busy, elapsed) CPU seconds of the whole machine so far, summed over its cores, from the
    first line of /proc/stat: busy is everything but idle and iowait, so it counts what no
    process figure holds (the load generator, the kernel's softirq work for loopback traffic)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    elapsed = sum(fields[:8])        # user nice system idle iowait irq softirq steal
    return (elapsed - fields[3] - fields[4]) / CLOCK_TICKS, elapsed / CLOCK_TICKS


def box_busy(before: tuple[float, float], after: tuple[float, float]) -> dict[str, float]:
    """The machine's busy CPU seconds between two box_cpu() readings, and their share of all
    its cores (1.0: every core busy the whole time)."""
    busy, elapsed = after[0] - before[0], after[1] - before[1]
    return {"busy_cpu_s": round(busy, 2), "busy_share": round(busy / elapsed, 3) if elapsed > 0 else 0.0}


def infra_pids() -> dict[str, int]:
    """The test profile's servers (shared with other users of the machine: their CPU is noisy)."""
    run = Path(os.environ.get("CRASH_VAR_DIR", REPO / "var" / "test")) / "run"
    pids = {}
    for name, file in (("kafka", "kafka.pid"), ("mariadb", "mariadbd.pid"), ("redis", "redis.pid")):
        try:
            pids[name] = int((run / file).read_text().strip())
        except (FileNotFoundError, ValueError):
            pass
    return pids


async def wait_for(check, timeout: float, what: str, every: float = 0.1) -> Any:
    """Poll `check` (async) until it returns something truthy; TimeoutError after `timeout` s."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(every)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


class Proc:
    """A subprocess in its own session (so that stop/kill reach its children too)."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name, self.args, self.env, self.log_path = name, args, env, log_path
        self.proc: subprocess.Popen | None = None

    def start(self) -> Proc:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        log.write(f"\n===== start {time.strftime('%H:%M:%S')} {' '.join(self.args)}\n".encode())
        log.flush()
        self.proc = subprocess.Popen(self.args, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=str(REPO), start_new_session=True)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

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

    async def wait(self, timeout: float) -> int:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} still running after {timeout} s")
            await asyncio.sleep(0.1)
        return self.proc.returncode

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


async def mysql_root(sql: str) -> None:
    """SQL as MariaDB's root over the local socket (as ./stack creates databases and users)."""
    socket_path = os.environ.get("CRASH_MARIADB_SOCKET")
    if not socket_path:
        raise SystemExit("crash-bench: CRASH_MARIADB_SOCKET is not set: run it as "
                         "eval \"$(./stack env test)\" && .venv/bin/crash-bench")
    proc = await asyncio.create_subprocess_exec(
        "mariadb", "--no-defaults", f"--socket={socket_path}", "-uroot", stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    output, _ = await proc.communicate(sql.encode())
    if proc.returncode:
        raise RuntimeError(f"mariadb as root failed ({proc.returncode}): {output.decode(errors='replace')}")


class Deployment:
    """One isolated pipeline: workers, gateway(s) and what else the pipeline runs, as processes."""

    def __init__(self, name: str, base: Settings, tmp: Path, extra_env: dict[str, str] | None = None) -> None:
        self.name = f"{name}-{uuid.uuid4().hex[:6]}"
        self.base, self.tmp = base, tmp
        tmp.mkdir(parents=True, exist_ok=True)
        self.prefix = f"b.{self.name}."
        self.database = "crash_b_" + self.name.replace("-", "_")
        self.db_url = make_url(base.db_url).set(database=self.database).render_as_string(hide_password=False)
        self.gateway_port = free_port()
        self.env = {
            **os.environ, "CRASH_TOPIC_PREFIX": self.prefix, "CRASH_GATEWAY_ID": f"gw-{self.name}",
            "CRASH_GATEWAY_PORT": str(self.gateway_port), "CRASH_DB_URL": self.db_url,
            "CRASH_APP_ID": f"crash-{self.name}", "CRASH_LOG_LEVEL": "warning",
            "CRASH_SESSION_TIMEOUT_MS": "10000",
            # The benchmark measures the pipeline, not the shedding bound.
            "CRASH_GATEWAY_MAX_IN_FLIGHT": "0",
            **(extra_env or {}),
        }
        self.settings = Settings(kafka_bootstrap=base.kafka_bootstrap, topic_prefix=self.prefix,
                                 app_id=self.env["CRASH_APP_ID"], partitions=base.partitions, db_url=self.db_url,
                                 api_keys=base.api_keys, secret_db_url=base.secret_db_url,
                                 wallet_db_url=base.wallet_db_url, redis_url=base.redis_url)
        self.logs = REPO / "var" / "bench" / "log" / self.name
        self.procs: dict[str, Proc] = {}
        self.worker_ports: dict[int, int] = {}
        self.ops_port = 0
        self.db = make_engine(self.db_url, pool_size=2)
        self.http: aiohttp.ClientSession | None = None

    def topic(self, name: str) -> str:
        return f"{self.prefix}{name}"

    async def open(self, extra_topics: tuple[str, ...] = ()) -> None:
        grantee = f"'{make_url(self.base.db_url).username}'@'127.0.0.1'"
        await mysql_root(f"CREATE DATABASE {self.database} CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;"
                         f" GRANT ALL PRIVILEGES ON {self.database}.* TO {grantee};")
        await migrate("crash", self.db_url)
        from streams.topics import ALL_TOPICS
        await create_topics(self.settings, ALL_TOPICS + extra_topics)
        self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64))

    def start(self, name: str, args: list[str], extra_env: dict[str, str] | None = None) -> Proc:
        proc = Proc(name, args, {**self.env, **(extra_env or {})}, self.logs / f"{name}.log").start()
        self.procs[name] = proc
        return proc

    async def start_worker(self, index: int = 1) -> Proc:
        # -l info as production runs it: at warn and above, Faust's terminal spinner turns the root
        # logger to DEBUG, and every debug call of Faust builds a log record (5 % of the worker).
        port = self.worker_ports.setdefault(index, free_port())
        proc = self.start(f"worker-{index}", [str(BIN / "crash-worker"), "worker", "-l", "info"],
                          {"CRASH_WEB_PORT": str(port), "CRASH_DATA_DIR": str(self.tmp / f"faust-{index}")})
        await self.wait_http(f"http://127.0.0.1:{port}/metrics", proc)
        return proc

    async def worker_group(self) -> tuple[str, int]:
        """The workers' consumer group: its state ("Stable" once a rebalance is over) and members."""
        from aiokafka.admin import AIOKafkaAdminClient
        admin = AIOKafkaAdminClient(bootstrap_servers=self.base.kafka_bootstrap)
        await admin.start()
        try:
            (response,) = await admin.describe_consumer_groups([self.settings.app_id])
            _error, _group, state, _protocol_type, _protocol, members, *_ = response.groups[0]
            return state, len(members)
        finally:
            await admin.close()

    async def start_ops(self) -> Proc | None:
        """The operator views' own process (crash-ops), where this tree has one; else the workers
        serve the views themselves."""
        if not (BIN / "crash-ops").exists() or not (REPO / "web" / "ops.py").exists():
            return None
        self.ops_port = free_port()
        proc = self.start("ops", [str(BIN / "crash-ops"), "worker", "-l", "info"],
                          {"CRASH_WEB_PORT": str(self.ops_port), "CRASH_DATA_DIR": str(self.tmp / "faust-ops")})
        await self.wait_http(f"http://127.0.0.1:{self.ops_port}/ops/channels", proc)
        return proc

    def start_sink(self) -> Proc | None:
        """The sink's own process (crash-sink), where this tree has one (else it is a worker agent)."""
        if not (BIN / "crash-sink").exists() or not (REPO / "agents" / "sink_sql.py").exists():
            return None
        return self.start("sink", [str(BIN / "crash-sink")], {"CRASH_SINK_METRICS_PORT": "0"})

    async def start_gateway(self) -> Proc:
        proc = self.start("gateway", [str(BIN / "crash-gateway")])
        await self.wait_http(f"{self.gateway_url}/v1/health", proc)
        return proc

    async def wait_http(self, url: str, proc: Proc | None = None, timeout: float = 90) -> None:
        """Until `url` answers 200 (a worker's web server answers 404 until its views are added)."""
        assert self.http is not None

        async def up() -> bool:
            if proc is not None and not proc.alive:
                raise RuntimeError(f"{proc.name} exited:\n{proc.tail()}")
            try:
                async with self.http.get(url, timeout=aiohttp.ClientTimeout(total=2)) as resp:
                    return resp.status == 200
            except (TimeoutError, aiohttp.ClientError):
                return False
        await wait_for(up, timeout, f"{url} to answer", every=0.2)

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    def ops_url(self) -> str:
        if self.ops_port:
            return f"http://127.0.0.1:{self.ops_port}"
        index = next(i for i, port in self.worker_ports.items() if self.procs[f"worker-{i}"].alive)
        return f"http://127.0.0.1:{self.worker_ports[index]}"

    async def signed(self, base_url: str, key_id: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        assert self.http is not None
        raw = json.dumps(body).encode() if body is not None else b""
        headers = {**sign_headers(key_id, self.base.api_keys[key_id][0], method, path, raw),
                   "Content-Type": "application/json"}
        async with self.http.request(method, base_url + path, data=raw, headers=headers,
                                     timeout=aiohttp.ClientTimeout(total=30)) as resp:
            return resp.status, await resp.json(content_type=None)

    async def ops(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        return await self.signed(self.ops_url(), "admin", method, path, body)

    async def rows(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        async with self.db.connect() as conn:
            return [dict(r._mapping) for r in await conn.execute(text(sql), params)]

    async def count(self, sql: str, **params: Any) -> int:
        return int((await self.rows(sql, **params))[0]["n"])

    async def create_channel(self, channel_id: str, config: dict[str, Any]) -> str:
        status, body = await self.ops("POST", "/ops/channels", {"channel_id": channel_id, "config": config})
        if status != 202:
            raise RuntimeError(f"channel {channel_id} not created: {status} {body}")

        async def ready() -> bool:
            if not await self.rows("SELECT 1 FROM crash_term WHERE channel_id = :c", c=channel_id):
                return False
            if "gateway" not in self.procs:
                return True
            assert self.http is not None
            async with self.http.get(f"{self.gateway_url}/v1/channels/{channel_id}") as resp:
                return resp.status == 200
        await wait_for(ready, 90, f"channel {channel_id} to run its first term", every=0.2)
        return channel_id

    async def live_term(self, channel_id: str) -> dict[str, Any] | None:
        rows = await self.rows("SELECT * FROM crash_term WHERE channel_id = :c ORDER BY seq DESC LIMIT 1",
                               c=channel_id)
        return rows[0] if rows else None

    async def close(self) -> None:
        for proc in self.procs.values():
            proc.stop()
        if self.http is not None:
            await self.http.close()
        await self.db.dispose()
        await mysql_root(f"DROP DATABASE IF EXISTS {self.database};")
        await self._delete_topics()

    async def _delete_topics(self) -> None:
        from aiokafka.admin import AIOKafkaAdminClient
        admin = AIOKafkaAdminClient(bootstrap_servers=self.base.kafka_bootstrap)
        await admin.start()
        try:
            names = [t for t in await admin.list_topics()
                     if t.startswith(self.prefix) or t in changelog_topics(self.settings)]
            if names:
                await admin.delete_topics(names)
        except Exception as error:      # leftover topics are harmless, only untidy
            print(f"crash-bench: could not delete the run's topics: {error}", file=sys.stderr)
        finally:
            await admin.close()
