"""What a phase of the benchmark watches while it runs: followers of the pipeline's Kafka topics
(jackpot contributions, a channel's ticks), what the pipeline has written so far (messages per
topic, rows per table) and the conditions it waits for (rows in MySQL, a term
in a state, a jackpot answering, a quiet machine).

Separate from the phases (runs.py), which only start, wait for and read them.
"""
from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from streams.bench.deploy import Deployment, box_busy, box_cpu

__all__ = ["JackpotCounter", "TickFollower", "at_least", "pre_start", "newer_term", "in_state", "jackpot_live",
           "quiet_machine", "QUIET_SHARE", "QUIET_TIMEOUT_S", "traffic", "per_bet"]

# A latency step (a gateway or contribute step; the cashout and ticks terms' take-off) starts once
# the machine has been at most this busy (share of all its cores) for a second, or after
# QUIET_TIMEOUT_S: the settlement of the sustained phase's 35,000-bet term and
# the sink's catching up took 0.9 of the box into the next phase's first steps (2026-12-04).
QUIET_SHARE = 0.35
QUIET_TIMEOUT_S = 60.0


async def quiet_machine(share: float = QUIET_SHARE, timeout_s: float = QUIET_TIMEOUT_S,
                        interval_s: float = 1.0) -> float:
    """Wait until the machine's last `interval_s` was at most `share` busy (or `timeout_s` has
    passed), so that a step measures its own load and not what an earlier phase left running;
    the busy share of that last interval."""
    deadline = time.monotonic() + timeout_s
    while True:
        before = box_cpu()
        await asyncio.sleep(interval_s)
        busy = box_busy(before, box_cpu())["busy_share"]
        if busy <= share or time.monotonic() >= deadline:
            return busy


async def at_least(dep: Deployment, sql: str, params: dict[str, Any], expected: int) -> bool:
    return await dep.count(sql, **params) >= expected


async def pre_start(dep: Deployment, channel: str) -> dict[str, Any] | None:
    term = await dep.live_term(channel)
    return term if term and term["state"] == "pre_start" else None


async def newer_term(dep: Deployment, channel: str, seq: int) -> bool:
    term = await dep.live_term(channel)
    return bool(term and term["seq"] > seq and term["state"] == "pre_start")


async def in_state(dep: Deployment, term_id: str, state: str) -> dict[str, Any] | None:
    rows = await dep.rows("SELECT * FROM crash_term WHERE term_id = :t", t=term_id)
    return rows[0] if rows and rows[0]["state"] == state else None


async def jackpot_live(dep: Deployment, jackpot_id: str) -> bool:
    status, _ = await dep.signed(dep.gateway_url, "reader", "GET", f"/jackpot/{jackpot_id}")
    return status == 200


class JackpotCounter:
    """Counts JackpotContributed items on game.jackpot (the pipeline's contributions)."""

    def __init__(self, dep: Deployment) -> None:
        self.dep = dep
        self.items = 0
        self.task: asyncio.Task | None = None
        self.consumer = None

    async def start(self) -> None:
        from aiokafka import AIOKafkaConsumer, TopicPartition
        topic = self.dep.topic("game.jackpot")
        self.consumer = AIOKafkaConsumer(bootstrap_servers=self.dep.base.kafka_bootstrap, group_id=None,
                                         enable_auto_commit=False)
        await self.consumer.start()
        tps = [TopicPartition(topic, p) for p in range(self.dep.base.partitions)]
        self.consumer.assign(tps)
        await self.consumer.seek_to_end(*tps)
        for tp in tps:
            await self.consumer.position(tp)
        self.task = asyncio.create_task(self._count())

    async def _count(self) -> None:
        assert self.consumer is not None
        while True:
            for messages in (await self.consumer.getmany(timeout_ms=200)).values():
                for m in messages:
                    if b'"JackpotContributed"' in m.value:
                        self.items += len(json.loads(m.value)["items"])

    async def stop(self, linger_s: float = 5) -> int:
        await asyncio.sleep(linger_s)          # the last batches' contributions
        assert self.task is not None and self.consumer is not None
        self.task.cancel()
        await self.consumer.stop()
        return self.items


class TickFollower:
    """Receive times of a channel's TermTick events (its game.term partition, read from its end)."""

    def __init__(self, dep: Deployment, channel: str) -> None:
        self.dep, self.channel = dep, channel
        self.seen: list[tuple[float, int, str]] = []
        self.task: asyncio.Task | None = None
        self.consumer = None

    async def start(self) -> None:
        from aiokafka import AIOKafkaConsumer, TopicPartition
        from aiokafka.partitioner import DefaultPartitioner
        topic = self.dep.topic("game.term")
        partitions = list(range(self.dep.base.partitions))
        tp = TopicPartition(topic, DefaultPartitioner()(self.channel.encode(), partitions, partitions))
        self.consumer = AIOKafkaConsumer(bootstrap_servers=self.dep.base.kafka_bootstrap, group_id=None,
                                         enable_auto_commit=False, fetch_max_wait_ms=5)
        await self.consumer.start()
        self.consumer.assign([tp])
        await self.consumer.seek_to_end(tp)
        await self.consumer.position(tp)
        self.task = asyncio.create_task(self._follow())

    async def _follow(self) -> None:
        assert self.consumer is not None
        async for m in self.consumer:
            if b'"TermTick"' in m.value:
                data = json.loads(m.value)
                if data["channel_id"] == self.channel:
                    self.seen.append((time.time() * 1000, data["ts"], data["term_id"]))

    async def stop(self, term_id: str) -> list[tuple[float, int]]:
        assert self.task is not None and self.consumer is not None
        self.task.cancel()
        await self.consumer.stop()
        return [(recv, ts) for recv, ts, t in self.seen if t == term_id]


async def traffic(dep: Deployment) -> dict[str, dict[str, int]]:
    """What the deployment has written so far: messages per topic (its own topics and its tables'
    changelogs; end offsets summed over partitions: the pipeline produces without transactions,
    so an offset is a message) and rows per table of its database."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    from streams.admin import changelog_topics
    # The admin client for the partitions: a consumer knows those of its own subscriptions only.
    admin = AIOKafkaAdminClient(bootstrap_servers=dep.base.kafka_bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=dep.base.kafka_bootstrap, group_id=None, enable_auto_commit=False)
    await admin.start()
    await consumer.start()
    try:
        changelogs = set(changelog_topics(dep.settings))
        names = [t for t in await admin.list_topics() if t.startswith(dep.prefix) or t in changelogs]
        partitions = [TopicPartition(t["topic"], p["partition"])
                      for t in (await admin.describe_topics(names) if names else []) for p in t["partitions"]]
        ends = await consumer.end_offsets(partitions) if partitions else {}
    finally:
        await consumer.stop()
        await admin.close()
    messages: dict[str, int] = {}
    for tp, end in ends.items():
        topic = tp.topic.removeprefix(dep.prefix).removeprefix(f"{dep.settings.app_id}-")
        messages[topic] = messages.get(topic, 0) + end
    tables = await dep.rows("SELECT table_name AS name FROM information_schema.tables"
                            " WHERE table_schema = :db AND table_type = 'BASE TABLE'", db=dep.database)
    rows = {t["name"]: await dep.count(f"SELECT COUNT(*) AS n FROM `{t['name']}`") for t in tables}
    return {"kafka_messages": messages, "mysql_rows": rows}


def per_bet(before: dict[str, dict[str, int]], after: dict[str, dict[str, int]], bets: int) -> dict[str, Any]:
    """Messages and rows written per bet between two traffic() readings, the parts that moved."""
    out: dict[str, Any] = {"bets": bets}
    for kind in ("kafka_messages", "mysql_rows"):
        grown = {k: round((v - before[kind].get(k, 0)) / max(1, bets), 3) for k, v in after[kind].items()
                 if v > before[kind].get(k, 0)}
        out[kind] = dict(sorted(grown.items(), key=lambda kv: -kv[1]))
        out[f"{kind}_total"] = round(sum(grown.values()), 3)
    return out
