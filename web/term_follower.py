"""Each channel's config and live term, as an HTTP face needs them: loaded from MySQL at start,
then kept up to date from game.term (read from its end by a consumer of its own, no group).

The live term never holds a crash point before TermCrashed reveals it.
"""
from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from streams.codec import DecodeError, decode
from streams.events import (
    ChannelConfigured,
    Message,
    TermAborted,
    TermClosed,
    TermCrashed,
    TermCreated,
    TermStateChanged,
    TermTick,
)
from streams.settings import Settings
from streams.topics import TERM

__all__ = ["TermFollower"]


class TermFollower:
    def __init__(self, settings: Settings, db: AsyncEngine) -> None:
        self.settings = settings
        self.db = db
        self.channels: dict[str, dict[str, Any]] = {}      # channel_id -> config
        self.live: dict[str, dict[str, Any]] = {}          # channel_id -> live term state
        self.listeners: list[Callable[[Message], None]] = []
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        await self._load()
        topic = self.settings.topic(TERM)
        self._consumer = AIOKafkaConsumer(bootstrap_servers=self.settings.kafka_bootstrap, enable_auto_commit=False,
                                          group_id=None, fetch_max_wait_ms=50)
        await self._consumer.start()
        partitions = [TopicPartition(topic, p) for p in sorted(self._consumer.partitions_for_topic(topic) or
                                                               await self._partitions(topic))]
        self._consumer.assign(partitions)
        await self._consumer.seek_to_end(*partitions)
        self._task = asyncio.create_task(self._follow())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._consumer is not None:
            await self._consumer.stop()

    async def _partitions(self, topic: str) -> set[int]:
        assert self._consumer is not None
        for _ in range(100):
            await self._consumer._client.force_metadata_update()
            partitions = self._consumer.partitions_for_topic(topic)
            if partitions:
                return partitions
            await asyncio.sleep(0.1)
        raise RuntimeError(f"topic {topic} has no partitions (run crash-admin topics)")

    async def _load(self) -> None:
        """Configs and the newest term of each channel, from MySQL."""
        async with self.db.connect() as conn:
            for row in await conn.execute(text("SELECT channel_id, config FROM channel")):
                self.channels[row.channel_id] = json.loads(row.config)
            rows = await conn.execute(text(
                "SELECT t.* FROM crash_term t JOIN (SELECT channel_id, MAX(seq) AS seq FROM crash_term"
                " GROUP BY channel_id) m ON t.channel_id = m.channel_id AND t.seq = m.seq"))
            for row in rows:
                self.live[row.channel_id] = {
                    "term_id": row.term_id, "state": row.state, "created_at": row.created_at,
                    "bets_close_at": row.bets_close_at, "flying_at": row.flying_at,
                    "crash_x100": row.crash_x100 if row.state not in ("pre_start", "starting", "flying") else None}

    async def _follow(self) -> None:
        assert self._consumer is not None
        async for message in self._consumer:
            try:
                event = decode(message.value)
            except DecodeError:
                continue
            self.apply(event)
            for listener in self.listeners:
                listener(event)

    def apply(self, event: Message) -> None:
        cid = event.channel_id
        if isinstance(event, ChannelConfigured):
            self.channels[cid] = event.config
            return
        if isinstance(event, TermCreated):
            self.live[cid] = {"term_id": event.term_id, "state": "pre_start", "created_at": event.created_at,
                              "bets_close_at": event.bets_close_at, "flying_at": event.flying_at,
                              "crash_x100": None, "multiple_x100": 100}
            return
        live = self.live.get(cid)
        if live is None or live.get("term_id") != event.term_id:
            return
        if isinstance(event, TermStateChanged):
            live.update(state=event.state, bets_close_at=event.bets_close_at, flying_at=event.flying_at)
        elif isinstance(event, TermTick):
            # The flight clock sends ticks apart from the term's events: one can arrive after
            # the crash, or twice around a rebalance; the multiple shown only grows in flight.
            if live.get("state") == "flying" and event.multiple_x100 > live.get("multiple_x100", 100):
                live["multiple_x100"] = event.multiple_x100
        elif isinstance(event, TermCrashed):
            live.update(state="crashed", crash_x100=event.crash_x100, crash_at=event.crash_at)
        elif isinstance(event, TermAborted):
            live.update(state="aborted", aborted_at=event.aborted_at)
        elif isinstance(event, TermClosed):
            live.update(state="closed")
