"""A first throughput figure for bets (not a test: pytest does not collect it).

    ./stack infra up test && eval "$(./stack env test)" && .venv/bin/python tests/bench_bets.py [N]

Starts an isolated pipeline (one Faust worker, the gateway) on the test services and measures,
in one run, so that the figures can be compared as ratios on a noisy machine:

  1. baseline: a bare aiokafka produce -> consume of N JSON messages (Kafka's own cost here);
  2. pipeline: N PlaceBet commands published straight to game.command, until N decisions are
     back on game.reply (Bet Service decisions/s), then until N bet rows are in MySQL (sink);
  3. gateway: N signed POST /v1/bets with 64 in flight, until N definitive answers (bets/s and
     client-side latency quantiles).
"""
from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.partitioner import DefaultPartitioner

sys.path.insert(0, str(Path(__file__).parent))
from harness import Pipeline, taking_bets, wait_for  # noqa: E402
from streams.codec import decode, encode  # noqa: E402
from streams.events import PlaceBet  # noqa: E402
from streams.settings import get_settings  # noqa: E402

CONFIG = {"betting_ms": 600_000, "starting_ms": 1000, "currencies": {
    "EUR": {"min_bet": 10, "max_bet": 100_000, "max_bets_per_user": 1000, "max_win": 10**9,
            "max_payout_per_term": 10**12}}}


async def baseline(pipe: Pipeline, n: int) -> float:
    topic = pipe.topic("bench.baseline")
    from streams.admin import create_topics
    await create_topics(pipe.settings, ("bench.baseline",))
    producer = AIOKafkaProducer(bootstrap_servers=pipe.base.kafka_bootstrap, linger_ms=2)
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=pipe.base.kafka_bootstrap, group_id=None,
                                auto_offset_reset="latest")
    await producer.start()
    await consumer.start()
    await consumer.getmany(timeout_ms=500)
    started = time.perf_counter()
    for i in range(n):
        await producer.send(topic, json.dumps({"i": i, "pad": "x" * 200}).encode(), key=b"k")
    got = 0
    while got < n:
        for messages in (await consumer.getmany(timeout_ms=1000)).values():
            got += len(messages)
    elapsed = time.perf_counter() - started
    await producer.stop()
    await consumer.stop()
    return n / elapsed


async def pipeline_decisions(pipe: Pipeline, channel_id: str, n: int) -> tuple[float, float]:
    gateway_id = f"bench-{uuid.uuid4().hex[:6]}"
    reply_topic = pipe.topic("game.reply")
    consumer = AIOKafkaConsumer(bootstrap_servers=pipe.base.kafka_bootstrap, group_id=None)
    await consumer.start()
    partitions = sorted(consumer.partitions_for_topic(reply_topic) or range(pipe.settings.partitions))
    tp = TopicPartition(reply_topic, DefaultPartitioner()(gateway_id.encode(), partitions, partitions))
    consumer.assign([tp])
    await consumer.seek_to_end(tp)
    await consumer.position(tp)
    producer = AIOKafkaProducer(bootstrap_servers=pipe.base.kafka_bootstrap, linger_ms=2)
    await producer.start()
    started = time.perf_counter()
    now = int(time.time() * 1000)
    for i in range(n):
        command = PlaceBet(event_id=f"b-{uuid.uuid4().hex}", channel_id=channel_id, ts=now, gateway_id=gateway_id,
                           api_order_no=f"bench-{uuid.uuid4().hex[:20]}", user_id=f"u{i % 500}", amount=100,
                           currency="EUR", auto_cashout_x100=200)
        await producer.send(pipe.topic("game.command"), encode(command), key=channel_id.encode())
    accepted = answered = 0
    while answered < n:
        for messages in (await consumer.getmany(timeout_ms=1000)).values():
            for m in messages:
                answered += 1
                accepted += decode(m.value).status == "accepted"
    decided = time.perf_counter() - started
    assert accepted == n, f"only {accepted} of {n} accepted"

    async def stored() -> bool:
        rows = await pipe.rows("SELECT COUNT(*) AS c FROM bet WHERE channel_id = :c", c=channel_id)
        return rows[0]["c"] >= n
    await wait_for(stored, 600, "the bet rows", every=0.2)
    sunk = time.perf_counter() - started
    await producer.stop()
    await consumer.stop()
    return n / decided, n / sunk


async def gateway_bets(pipe: Pipeline, channel_id: str, n: int) -> tuple[float, list[float]]:
    semaphore = asyncio.Semaphore(64)
    latencies: list[float] = []

    async def one(i: int) -> None:
        async with semaphore:
            t0 = time.perf_counter()
            status, body = await pipe.api("POST", "/v1/bets", {
                "api_order_no": f"gw-{uuid.uuid4().hex[:20]}", "channel_id": channel_id, "user_id": f"g{i % 500}",
                "amount": 100, "currency": "EUR", "auto_cashout_x100": 200})
            latencies.append((time.perf_counter() - t0) * 1000)
            assert status == 200, body

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    return n / elapsed, [latencies[int(len(latencies) * q) - 1] for q in (0.5, 0.99)]


async def main(n: int) -> None:
    pipe = Pipeline("bench", get_settings(), Path(tempfile.mkdtemp()))
    await pipe.start(workers=1)
    try:
        base = await baseline(pipe, n)
        channel_id = await pipe.create_channel("b", **CONFIG)
        await pipe.wait_gateway_channel(channel_id)
        await taking_bets(pipe, channel_id, window_left_ms=300_000)
        decisions, sunk = await pipeline_decisions(pipe, channel_id, n)
        gateway, (p50, p99) = await gateway_bets(pipe, channel_id, min(n, 5000))
        async with pipe.http.get(pipe.metrics_url()) as resp:
            batches = [line for line in (await resp.text()).splitlines()
                       if line.startswith(("crash_batch_seconds_sum", "crash_batch_seconds_count"))]
        print(json.dumps({
            "n": n, "kafka_baseline_msgs_per_s": round(base), "pipeline_decisions_per_s": round(decisions),
            "pipeline_to_mysql_per_s": round(sunk), "gateway_bets_per_s": round(gateway),
            "gateway_latency_ms": {"p50": round(p50, 1), "p99": round(p99, 1)}, "worker_batches": batches,
            "ratios_to_baseline": {"decisions": round(decisions / base, 3), "mysql": round(sunk / base, 3),
                                   "gateway": round(gateway / base, 3)}}, indent=2))
    finally:
        await pipe.close()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 20000))
