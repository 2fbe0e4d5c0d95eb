"""WebSocket fan-out benchmark of one push gateway process (DESIGN section 14: 10,000 clients,
push p99 <= 100 ms). Not a test: run it by hand on a quiet machine, against a profile's Kafka
(`./stack infra up test` or the demo's), and read what it prints:

    eval "$(./stack env test)"; .venv/bin/python tests/bench_push.py --clients 10000 --seconds 30

It starts one `crash-push` on topics of its own (a fresh prefix), publishes a flying term the way
the orchestrator does (a clock every 50 ms, a TermTick once 100 ms have passed) plus a stream of bets (BetPlaced, then
BetCashedOut), connects N WebSocket clients (light raw-socket clients, so that the clients are not what is
measured: `--procs` processes of silent ones reading in bulk once a second, and one process of
measuring ones that read at once), and measures, for every frame each
client receives, the push latency: arrival time minus the Kafka timestamp of the oldest event
the frame carries (`src`). Everything runs on this one machine: the numbers include the clients'
own CPU and Kafka's.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import math
import os
import re
import resource
import secrets
import signal
import subprocess
import sys
import time
from array import array
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

SRC = re.compile(rb'"src":(\d+),"new":(\d+)')


def now_ms() -> int:
    return int(time.time() * 1000)


def quantile(values: list[int] | array, q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


# ---------------------------------------------------------------- client processes

class Silent(asyncio.Protocol):
    """Most clients: read in bulk once a second (DRAIN_S), drop what came (counting bytes) and
    answer pings. The push gateway writes every frame to them as to any client (the kernel's
    receive buffer takes a second of frames, ~20 KB, far below its size, so no write of the
    gateway falls short); only the clients' own CPU is saved, which on this shared machine would
    otherwise be most of a core taken from the gateway being measured (a browser's reading
    happens on the player's device)."""

    def __init__(self, path: str, counters: dict[str, int], connected: asyncio.Event) -> None:
        self.path, self.counters, self.connected = path, counters, connected
        self.upgraded = False

    connection_made = None   # set below: the same handshake as Client

    def data_received(self, data: bytes) -> None:
        if not self.upgraded and b"\r\n\r\n" in data:
            self.upgraded = True
            self.connected.set()
            self.counters["connected"] += 1
            SLEEPERS.append(self.transport)
        self.counters["bytes"] += len(data)
        if b"\x89\x00" in data:           # an empty ping (JSON text never holds a 0 byte)
            self.transport.write(b"\x8a\x80\0\0\0\0")
        if self.upgraded:
            self.transport.pause_reading()


DRAIN_S = 1.0
SLEEPERS: list[asyncio.Transport] = []


async def drain_forever(slices: int = 10) -> None:
    """Lets every silent client read what a second brought, once a second, a tenth of them at a time."""
    turn = 0
    while True:
        await asyncio.sleep(DRAIN_S / slices)
        for transport in SLEEPERS[turn::slices]:
            if not transport.is_closing():
                transport.resume_reading()
        turn = (turn + 1) % slices

    def connection_lost(self, exc: Exception | None) -> None:
        self.counters["lost"] += 1


class Client(asyncio.Protocol):
    """A measuring client: splits frames and reads `src`/`new`, a few microseconds a frame."""

    def __init__(self, path: str, latencies: tuple[array, array], counters: dict[str, int],
                 connected: asyncio.Event) -> None:
        self.path, self.counters, self.connected = path, counters, connected
        self.oldest, self.newest = latencies
        self.buffer = b""
        self.upgraded = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        key = base64.b64encode(secrets.token_bytes(16)).decode()
        transport.write((f"GET {self.path} HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        hello = b'{"t":"hello"}'
        transport.write(bytes((0x81, 0x80 | len(hello))) + b"\0\0\0\0" + hello)  # zero mask key

    def data_received(self, data: bytes) -> None:
        arrived = now_ms()
        buffer = self.buffer + data
        if not self.upgraded:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                self.buffer = buffer
                return
            self.upgraded = True
            self.connected.set()
            self.counters["connected"] += 1
            buffer = buffer[end + 4:]
        at, end = 0, len(buffer)
        while end - at >= 2:                 # an offset, not slices: a lagging client gets big chunks
            opcode, length, start = buffer[at] & 0x0F, buffer[at + 1] & 0x7F, at + 2
            if length == 126:
                if end - at < 4:
                    break
                length, start = int.from_bytes(buffer[at + 2:at + 4], "big"), at + 4
            elif length == 127:
                if end - at < 10:
                    break
                length, start = int.from_bytes(buffer[at + 2:at + 10], "big"), at + 10
            if end < start + length:
                break
            at = start + length
            if opcode == 0x9:                # ping: answer, or the server closes us after 30 s
                payload = buffer[start:at]
                self.transport.write(bytes((0x8A, 0x80 | len(payload))) + b"\0\0\0\0" + payload)
                continue
            self.counters["frames"] += 1
            if buffer.startswith(b'{"t":"delta"', start):
                found = SRC.search(buffer, start, min(at, start + 100))
                if found:
                    self.oldest.append(arrived - int(found.group(1)))
                    self.newest.append(arrived - int(found.group(2)))
        self.buffer = buffer[at:]

    def connection_lost(self, exc: Exception | None) -> None:
        self.counters["lost"] += 1


Silent.connection_made = Client.connection_made


async def run_clients(port: int, count: int, channel: str, seconds: float, out: str, measuring: bool) -> None:
    loop = asyncio.get_running_loop()
    latencies = (array("i"), array("i"))
    counters = {"connected": 0, "frames": 0, "lost": 0, "failed": 0, "bytes": 0, "measuring": 0}
    slots = asyncio.Semaphore(200)
    path = f"/ws/channel/{channel}"

    async def one(i: int) -> None:
        async with slots:
            connected = asyncio.Event()
            counters["measuring"] += measuring
            try:
                await loop.create_connection(
                    (lambda: Client(path, latencies, counters, connected)) if measuring
                    else (lambda: Silent(path, counters, connected)), "127.0.0.1", port)
                await asyncio.wait_for(connected.wait(), 30)
            except (OSError, TimeoutError):
                counters["failed"] += 1

    started = time.monotonic()
    drainer = asyncio.create_task(drain_forever())
    await asyncio.gather(*(one(i) for i in range(count)))
    connect_s = time.monotonic() - started
    # Measure once every client of every process is in: the driver says go on stdin.
    print("connected", flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)
    for values in latencies:
        del values[:]
    counters["frames"] = counters["bytes"] = 0
    await asyncio.sleep(seconds)
    drainer.cancel()
    Path(out).write_text(json.dumps({"counters": counters, "connect_s": connect_s, "oldest": list(latencies[0]),
                                     "newest": list(latencies[1])}))


# ---------------------------------------------------------------- the driver

async def publish(settings, channel: str, stop: asyncio.Event, bets_per_s: float) -> int:
    """A flying term as the orchestrator sends it, and bets as the Bet and Cashout Services do."""
    from aiokafka import AIOKafkaProducer

    from streams.codec import encode
    from streams.events import BetCashedOut, BetPlaced, ChannelConfigured, TermCreated, TermStateChanged, TermTick
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=0)
    await producer.start()
    term_topic, bet_topic = settings.topic("game.term"), settings.topic("game.bet")

    async def send(topic: str, record) -> None:
        await producer.send(topic, encode(record), key=channel.encode())

    config = {"growth_per_ms": "0.00001", "max_multiple_x100": 100000, "edge_bps": 100, "jackpots": [],
              "currencies": {"EUR": {"min_bet": 10, "max_bet": 100000, "max_bets_per_user": 3, "max_win": 10**7,
                                     "max_payout_per_term": 10**9}}}
    start = now_ms()
    term_id = f"{channel}-1"
    base = {"channel_id": channel, "term_id": term_id}
    await send(term_topic, ChannelConfigured(event_id=f"{channel}.cfg", ts=start, config=config, config_version=1,
                                             channel_id=channel))
    await send(term_topic, TermCreated(event_id=f"{term_id}.created", ts=start, seq=1, chain_no=1, chain_index=1,
                                       prev_hash="0" * 64, created_at=start, bets_close_at=start + 1,
                                       flying_at=start + 2, config=config, **base))
    await send(term_topic, TermStateChanged(event_id=f"{term_id}.flying", ts=start + 2, state="flying",
                                            bets_close_at=start + 1, flying_at=start + 2, state_version=3, **base))
    sent, n, last_tick = 0, 0, -1000
    next_tick = time.monotonic()
    bet_every = 1 / bets_per_s if bets_per_s > 0 else None
    next_bet = time.monotonic()
    while not stop.is_set():
        now = time.monotonic()
        if now >= next_tick:
            # As the orchestrator: a clock every 50 ms, a tick once 100 ms have passed since the
            # last one (so 100-150 ms apart).
            next_tick += 0.05
            elapsed = now_ms() - start
            if elapsed - last_tick >= 100:
                last_tick = elapsed
                await send(term_topic, TermTick(event_id=f"{term_id}.t{elapsed}", ts=now_ms(), elapsed_ms=elapsed,
                                                multiple_x100=100 + elapsed // 1000, **base))
                sent += 1
        while bet_every is not None and now >= next_bet:
            n += 1
            bet = {"bet_id": f"b{n}", "api_order_no": f"o{n}", "user_id": f"player-{n % 997}", "amount": 100 + n % 900,
                   "currency": "EUR"}
            await send(bet_topic, BetPlaced(event_id=f"b{n}.placed", ts=now_ms(), bet_type="manual",
                                            max_win_x100=100000, **bet, **base))
            if n > 20:
                m = n - 20
                await send(bet_topic, BetCashedOut(
                    event_id=f"b{m}.cashout", ts=now_ms(), bet_id=f"b{m}", api_order_no=f"o{m}",
                    user_id=f"player-{m % 997}", amount=100, currency="EUR", multiple_x100=150, payout=150,
                    mode="manual", cashed_at=now_ms(), order_no=f"cashout:b{m}", **base))
            next_bet += bet_every
            sent += 2
        await asyncio.sleep(max(0.0, min(next_tick, next_bet if bet_every else next_tick) - time.monotonic()))
    await producer.stop()
    return sent


async def drive(args: argparse.Namespace) -> None:
    import aiohttp

    from harness import free_port
    from streams.admin import create_topics
    from streams.settings import get_settings
    settings = get_settings()
    prefix = f"bench.{secrets.token_hex(3)}."
    from dataclasses import replace
    settings = replace(settings, topic_prefix=prefix)
    await create_topics(settings, names=("game.term", "game.bet", "game.payout", "game.jackpot"))
    port = free_port()
    env = {**os.environ, "CRASH_TOPIC_PREFIX": prefix, "CRASH_PUSH_PORT": str(port), "CRASH_LOG_LEVEL": "warning"}
    log = open(REPO / "var" / f"bench-push-{prefix.strip('.')}.log", "ab")
    push = subprocess.Popen([str(Path(sys.executable).parent / "crash-push")], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    channel = "bench-1"
    stop = asyncio.Event()
    publisher = asyncio.create_task(publish(settings, channel, stop, args.bets_per_s))
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(300):
                try:
                    async with http.get(f"http://127.0.0.1:{port}/v1/views/{channel}") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        # The measuring clients in a process of their own: a process of silent clients draining
        # its sockets must not delay the frames being timed.
        measuring = max(1, args.clients // args.measure_every)
        silent = args.clients - measuring
        share = [measuring] + [silent // args.procs + (1 if i < silent % args.procs else 0) for i in range(args.procs)]
        outs = [REPO / "var" / f"bench-push-{prefix.strip('.')}-{i}.json" for i in range(len(share))]
        procs = [await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--client-mode", "--port", str(port), "--clients", str(n),
            "--seconds", str(args.seconds), "--out", str(out), "--channel", channel,
            *(["--measuring"] if i == 0 else []), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
            for i, (n, out) in enumerate(zip(share, outs, strict=True))]
        for proc in procs:
            assert proc.stdout is not None
            await proc.stdout.readline()
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
            await proc.stdin.drain()
        cpu_before = _cpu_s(push.pid)
        wall_before = time.monotonic()
        await asyncio.gather(*(p.wait() for p in procs))
        push_cpu = (_cpu_s(push.pid) - cpu_before) / (time.monotonic() - wall_before)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
                text = await resp.text()
                server_side = _histogram(text, "push_latency_seconds")
                broadcast = _histogram(text, "push_broadcast_seconds")
                full_gcs = re.findall(r"^gc_full_pause_seconds_(count|sum) ([\d.e+]+)$", text, re.M)
    finally:
        stop.set()
        sent = await publisher
        push.send_signal(signal.SIGTERM)
        push.wait(30)
    results = [json.loads(out.read_text()) for out in outs]
    oldest = [v for r in results for v in r["oldest"]]
    newest = [v for r in results for v in r["newest"]]
    counters = {k: sum(r["counters"][k] for r in results) for k in results[0]["counters"]}
    print(f"command: {' '.join(sys.argv)}")
    print(f"clients: {counters['connected']} connected ({counters['failed']} failed, {counters['lost']} lost), "
          f"connected within {max(r['connect_s'] for r in results):.1f} s, "
          f"{args.procs} processes of silent clients and one of measuring clients")
    print(f"events: {sent} published ({args.bets_per_s:g} bets/s with cashouts, a tick every 100-150 ms)")
    print(f"{counters['measuring']} measuring clients received {counters['frames']} frames in {args.seconds:g} s; "
          f"all clients {counters['bytes'] / args.seconds / 1e6:.1f} MB/s; push gateway CPU {push_cpu:.0%} of one core")
    for name, values in (("newest", newest), ("oldest", oldest)):
        print(f"push latency, Kafka timestamp of the {name} event of a frame -> the frame at the client, "
              f"{len(values)} frames: p50 {quantile(values, .5):.0f} ms, p99 {quantile(values, .99):.0f} ms, "
              f"max {max(values) if values else float('nan'):.0f} ms")
    print("server side (push_latency_seconds: Kafka timestamp of the oldest event -> written to the sockets): "
          + ", ".join(f"p{round(q * 100)} <= {server_side(q) * 1000:.0f} ms" for q in (0.5, 0.99)))
    print(f"writing one frame to all {counters['connected']} clients: p50 <= {broadcast(0.5) * 1000:g} ms, "
          f"p99 <= {broadcast(0.99) * 1000:g} ms, mean {broadcast.mean() * 1000:.1f} ms (push_broadcast_seconds)")
    gcs = dict(full_gcs)
    print(f"full garbage collections of the push gateway (streams/full_gc.py): {float(gcs.get('count', 0)):.0f}, "
          f"{float(gcs.get('sum', 0)) * 1000:.0f} ms in all, since it started")
    print(f"load average while it ran: {os.getloadavg()[0]:.1f} ({os.cpu_count()} cores)")
    for out in outs:
        out.unlink(missing_ok=True)


def _histogram(text: str, name: str):
    """A quantile function (the upper bound of its bucket) over a Prometheus histogram."""
    buckets = sorted((float(le), float(v)) for le, v in re.findall(
        rf'^{name}_bucket{{le="([^"]+)"}} ([\d.e+]+)$', text, re.M))

    sums = re.findall(rf"^{name}_(sum|count) ([\d.e+]+)$", text, re.M)

    def quantile_of(q: float) -> float:
        total = buckets[-1][1] if buckets else 0
        for le, count in buckets:
            if total and count >= q * total:
                return le
        return float("nan")
    totals = {k: float(v) for k, v in sums}
    quantile_of.mean = lambda: totals.get("sum", 0) / totals["count"] if totals.get("count") else float("nan")
    return quantile_of


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--procs", type=int, default=2, help="client processes of silent clients")
    parser.add_argument("--bets-per-s", type=float, default=50)
    parser.add_argument("--measure-every", type=int, default=20,
                        help="one client in this many parses its frames and measures (in a process of its own); "
                             "the others drop them")
    parser.add_argument("--measuring", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--client-mode", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--channel", default="bench-1", help=argparse.SUPPRESS)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.client_mode:
        asyncio.run(run_clients(args.port, args.clients, args.channel, args.seconds, args.out, args.measuring))
    else:
        asyncio.run(drive(args))


if __name__ == "__main__":
    main()
