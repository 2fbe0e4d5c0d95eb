"""The sink survives a commit the group refuses (it rebalanced while the batch was written: a
broker restart does that): it goes on consuming instead of exiting with the game's records
unwritten from then on. The batch is read again by the partition's owner; its rows are
idempotent (tests/test_terms.py replays whole topics into the sink)."""
from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError

from agents.sink import Sink
from streams.settings import Settings


class RebalancingConsumer:
    """Two fetched batches; the first commit is refused as after a rebalance."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        tp = TopicPartition("t.game.bet", 0)
        self.batches = [{tp: ["m1"]}, {tp: ["m2"]}]
        self.commits = 0

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[Any]]:
        if not self.batches:
            self.sink.stopping.set()
            return {}
        return self.batches.pop(0)

    async def commit(self) -> None:
        self.commits += 1
        if self.commits == 1:
            raise CommitFailedError("the group has already rebalanced")


async def test_a_refused_commit_does_not_stop_the_sink(monkeypatch) -> None:
    sink = Sink(Settings())
    handled: list[list[str]] = []

    async def handle(messages: list[str]) -> None:
        handled.append(messages)
    monkeypatch.setattr(sink, "handle", handle)
    consumer = sink.consumer = RebalancingConsumer(sink)        # type: ignore[assignment]
    try:
        await asyncio.wait_for(sink.run(), 10)
    finally:
        await sink.engine.dispose()
    assert handled == [["m1"], ["m2"]] and consumer.commits == 2
