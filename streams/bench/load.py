"""Load generators, each run as its own process (`python -m streams.bench.load ...`) so that the
load's CPU is not counted as the pipeline's and does not share its event loop.

- `http`: signed POSTs sent OPEN-LOOP: request i is due at start + i / rate whatever happened to
  the earlier ones; its latency runs from that due time to the definitive answer, so a server that
  falls behind is charged for the queue it builds (no coordinated omission). Requests are signed
  before the clock starts and written as raw bytes on a pool of keep-alive connections (a new
  connection when every open one is busy): a few microseconds per request, where an aiohttp
  client would cost more CPU than the gateway it measures.
- `kafka`: PlaceBet commands published straight to game.command (as a gateway would stamp them),
  at most `window` unanswered at once, for a duration; the answers are read from game.reply.

Each writes a JSON result file: counts by outcome, latencies (ms), and the accepted orders, so
that the benchmark can check that every accepted bet reached MySQL.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import uuid
from typing import Any

from web.signing import sign_headers

__all__ = ["main"]


# ---------------------------------------------------------------- open-loop HTTP

class Conn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection carrying one request at a time."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        head_end = self.buffer.find(b"\r\n\r\n")
        if head_end < 0 or self.waiter is None:
            return
        head = bytes(self.buffer[:head_end]).lower()
        at = head.find(b"content-length:")
        length = int(head[at + 15:head.find(b"\r\n", at) if head.find(b"\r\n", at) > 0 else None]) if at >= 0 else 0
        if len(self.buffer) < head_end + 4 + length:
            return
        status = int(head[9:12])
        body = bytes(self.buffer[head_end + 4:head_end + 4 + length])
        del self.buffer[:head_end + 4 + length]
        waiter, self.waiter = self.waiter, None
        if not waiter.done():
            waiter.set_result((status, body))

    def connection_lost(self, exc) -> None:
        self.pool.drop(self)
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection lost"))

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        return await self.waiter


class Pool:
    def __init__(self, host: str, port: int, max_conns: int) -> None:
        self.host, self.port, self.max_conns = host, port, max_conns
        self.idle: list[Conn] = []
        self.all: set[Conn] = set()
        self.freed = asyncio.Event()

    def drop(self, conn: Conn) -> None:
        self.all.discard(conn)
        if conn in self.idle:
            self.idle.remove(conn)

    async def get(self) -> Conn:
        while True:
            if self.idle:
                return self.idle.pop()
            if len(self.all) < self.max_conns:
                loop = asyncio.get_running_loop()
                conn = Conn(self)
                self.all.add(conn)
                try:
                    await loop.create_connection(lambda c=conn: c, self.host, self.port)
                except OSError:
                    self.all.discard(conn)
                    raise
                return conn
            self.freed.clear()
            await self.freed.wait()

    def put(self, conn: Conn) -> None:
        if conn in self.all:
            self.idle.append(conn)
            self.freed.set()


def _raw_request(host: str, port: int, path: str, key_id: str, secret: str, body: dict[str, Any],
                 now_ms: int) -> bytes:
    data = json.dumps(body, separators=(",", ":")).encode()
    headers = sign_headers(key_id, secret, "POST", path, data, now_ms=now_ms)
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", "Content-Type: application/json",
             f"Content-Length: {len(data)}", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


def _requests(args: argparse.Namespace, key_id: str, secret: str, count: int) -> list[tuple[bytes, str]]:
    """(raw request, its reference) for every request of the run, signed now."""
    now = int(time.time() * 1000)
    tag = uuid.uuid4().hex[:8]
    out = []
    orders = json.loads(open(args.orders).read()) if args.orders else []
    for i in range(count):
        if args.kind == "bet":
            ref = f"{args.tag}-{tag}-{i}"
            body = {"api_order_no": ref, "channel_id": args.channel, "user_id": f"u{i % args.users}",
                    "amount": 100 + i % 900, "currency": "EUR", "auto_cashout_x100": args.auto}
            path = "/v1/bets"
        elif args.kind == "cashout":
            ref, user = orders[i % len(orders)]
            body = {"user_id": user}
            path = f"/v1/channels/{args.channel}/bets/{ref}/cashout"
        else:   # contribute
            ref = f"{args.tag}-{tag}-{i}"
            body = {"contributionId": ref, "gameId": "bench-slots", "amount": 100 + i % 900, "currency": "EUR",
                    "playerId": f"p{i % args.users}"}
            path = args.path or f"/jackpot/{args.jackpot}/contribute"
        out.append((_raw_request(args.host, args.port, path, key_id, secret, body, now), ref))
    return out


async def run_http(args: argparse.Namespace) -> dict[str, Any]:
    from streams.settings import get_settings
    secret = get_settings().api_keys[args.key_id][0]
    count = max(1, int(args.rate * args.seconds))
    requests = _requests(args, args.key_id, secret, count)
    pool = Pool(args.host, args.port, args.max_conns)
    latencies: list[float] = []
    outcomes: dict[str, int] = {}
    accepted: list[str] = []
    answers: dict[str, int] = {}
    tasks: set[asyncio.Task] = set()
    # A fixed pool of keep-alive connections, opened before the clock starts, as an operator's
    # server keeps one: a request finding them all busy waits for one (its latency runs from its
    # due time all the same). Opening connections under load instead overflows the server's
    # accept backlog, and SYN retransmits (1 s, 3 s) would be measured, not the gateway.
    warm = [await pool.get() for _ in range(args.max_conns)]
    for conn in warm:
        pool.put(conn)

    async def one(raw: bytes, ref: str, due: float) -> None:
        try:
            conn = await pool.get()
            status, body = await conn.request(raw)
            pool.put(conn)
        except (OSError, ConnectionError) as error:
            outcomes[f"error:{type(error).__name__}"] = outcomes.get(f"error:{type(error).__name__}", 0) + 1
            latencies.append((time.perf_counter() - due) * 1000)
            return
        latencies.append((time.perf_counter() - due) * 1000)
        key = str(status)
        if status in (200, 409):
            try:
                answer = json.loads(body)
                key = f"{status}:{answer.get('status') or answer.get('error')}:{answer.get('reason', '')}"
            except ValueError:
                pass
        elif status >= 400:
            try:
                key = f"{status}:{json.loads(body).get('error')}"
            except ValueError:
                pass
        outcomes[key] = outcomes.get(key, 0) + 1
        if status == 200:
            accepted.append([args.channel, ref])
        answers[ref] = status

    started = time.perf_counter()
    interval = 1.0 / args.rate
    for i, (raw, ref) in enumerate(requests):
        due = started + i * interval
        delay = due - time.perf_counter()
        if delay > 0.0005:
            await asyncio.sleep(delay)
        elif i % 16 == 0:
            await asyncio.sleep(0)          # behind schedule: still let the answers in
        task = asyncio.create_task(one(raw, ref, due))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    sent_s = time.perf_counter() - started
    if tasks:
        await asyncio.wait(tasks, timeout=args.drain_s)
    elapsed = time.perf_counter() - started
    return {"kind": args.kind, "offered_per_s": args.rate, "sent": count, "send_s": sent_s, "elapsed_s": elapsed,
            "answered": len(latencies), "unanswered": count - len(latencies), "outcomes": outcomes,
            "latencies_ms": latencies, "accepted": accepted, "connections": len(pool.all)}


# ---------------------------------------------------------------- straight to game.command

async def run_kafka(args: argparse.Namespace) -> dict[str, Any]:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
    from aiokafka.partitioner import DefaultPartitioner

    from streams.codec import encode
    from streams.events import PlaceBet
    from streams.settings import get_settings
    settings = get_settings()
    gateway_id = f"bench-{uuid.uuid4().hex[:8]}"
    reply_topic = settings.topic("game.reply")
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=None, enable_auto_commit=False,
                                fetch_max_wait_ms=20)
    await consumer.start()
    partitions = sorted(consumer.partitions_for_topic(reply_topic) or range(settings.partitions))
    tp = TopicPartition(reply_topic, DefaultPartitioner()(gateway_id.encode(), partitions, partitions))
    consumer.assign([tp])
    await consumer.seek_to_end(tp)
    await consumer.position(tp)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=5, acks="all",
                                max_batch_size=256 * 1024)
    await producer.start()
    channels = args.channel.split(",")
    topic = settings.topic("game.command")
    sent_at: dict[str, tuple[float, str]] = {}
    outcomes: dict[str, int] = {}
    accepted: list[str] = []
    latencies: list[float] = []
    timeline: list[tuple[float, int]] = []        # (seconds since start, answers so far)
    window = asyncio.Semaphore(args.window)
    done = asyncio.Event()
    stop_at = time.perf_counter() + args.seconds
    started = time.perf_counter()
    answered = 0

    async def read_replies() -> None:
        nonlocal answered
        while not done.is_set() or sent_at:
            batches = await consumer.getmany(timeout_ms=200, max_records=5000)
            now = time.perf_counter()
            for messages in batches.values():
                for m in messages:
                    reply = json.loads(m.value)
                    entry = sent_at.pop(reply.get("command_id", ""), None)
                    if entry is None:
                        continue
                    answered += 1
                    window.release()
                    latencies.append((now - entry[0]) * 1000)
                    key = reply["status"] + (f":{reply['reason']}" if reply.get("reason") else "")
                    outcomes[key] = outcomes.get(key, 0) + 1
                    if reply["status"] == "accepted":
                        accepted.append(entry[1:])
            timeline.append((now - started, answered))
            if done.is_set() and time.perf_counter() > stop_at + args.drain_s:
                break

    reader = asyncio.create_task(read_replies())
    i = 0
    tag = uuid.uuid4().hex[:8]
    while time.perf_counter() < stop_at and (not args.count or i < args.count):
        await window.acquire()
        channel = channels[i % len(channels)]
        order = f"{args.tag}-{tag}-{i}"
        command = PlaceBet(event_id=f"c-{tag}-{i}", channel_id=channel, ts=int(time.time() * 1000),
                           gateway_id=gateway_id, api_order_no=order, user_id=f"u{i % args.users}",
                           amount=100 + i % 900, currency="EUR", auto_cashout_x100=_auto(args, i),
                           bet_type="auto" if args.auto else "manual")
        sent_at[command.event_id] = (time.perf_counter(), channel, order, command.user_id)
        await producer.send(topic, encode(command), key=channel.encode())
        i += 1
    await producer.flush()
    done.set()
    await reader
    await producer.stop()
    await consumer.stop()
    return {"kind": "kafka", "sent": i, "answered": answered, "unanswered": len(sent_at), "outcomes": outcomes,
            "latencies_ms": latencies, "accepted": accepted, "timeline": timeline,
            "elapsed_s": time.perf_counter() - started}


def _auto(args: argparse.Namespace, i: int) -> int | None:
    """The i-th bet's auto target: `--auto`, or spread over [101, --auto] with --spread."""
    if args.auto is None or not args.spread or args.auto <= 101:
        return args.auto
    return 101 + (i * 7919) % (args.auto - 100)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m streams.bench.load")
    parser.add_argument("mode", choices=("http", "kafka"))
    parser.add_argument("--out", required=True)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rate", type=float, default=1000)
    parser.add_argument("--kind", choices=("bet", "cashout", "contribute"), default="bet")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--path", default="")
    parser.add_argument("--channel", default="")
    parser.add_argument("--jackpot", default="")
    parser.add_argument("--orders", default="", help="JSON file of [api_order_no, user_id] to cash out")
    parser.add_argument("--key-id", default="operator")
    parser.add_argument("--users", type=int, default=5000)
    parser.add_argument("--auto", type=int, default=None)
    parser.add_argument("--spread", action="store_true", help="kafka: auto targets spread up to --auto")
    parser.add_argument("--tag", default="bench")
    parser.add_argument("--window", type=int, default=4000)
    parser.add_argument("--count", type=int, default=0, help="kafka: stop after this many commands")
    parser.add_argument("--max-conns", type=int, default=256, help="http: keep-alive connections (opened first)")
    parser.add_argument("--drain-s", type=float, default=15)
    parser.add_argument("--uvloop", action="store_true")
    args = parser.parse_args(argv)
    if args.uvloop:
        import uvloop
        uvloop.install()
    # Ready: the benchmark starts its CPU clocks when this line appears.
    result = asyncio.run(run_http(args) if args.mode == "http" else run_kafka(args))
    result["cpu_s"] = sum(os.times()[:2])
    with open(args.out, "w") as out:
        json.dump(result, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
