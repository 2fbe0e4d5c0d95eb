"""The one way an HTTP face talks to the pipeline: send a command, wait for its answer.

Commands go to their topic keyed by what owns them (a channel on game.command, a jackpot on
game.jackpot.command); the pipeline's definitive answer comes back on game.reply, keyed by
this process's gateway id: each process reads only its own partition of game.reply (from its
end, resolved before any command is sent) and resolves the waiting request by command id.
"""
from __future__ import annotations

import asyncio
import logging
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.partitioner import DefaultPartitioner

from streams.codec import DecodeError, decode, encode
from streams.events import REPLY_RECORDS, Message
from streams.settings import Settings
from streams.topics import REPLY

log = logging.getLogger(__name__)

__all__ = ["PipelineClient"]


class PipelineClient:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.gateway_id = settings.gateway_id
        self.producer: AIOKafkaProducer | None = None
        self._replies: AIOKafkaConsumer | None = None
        self._pending: dict[str, asyncio.Future] = {}
        # When each waiting command was sent, oldest first (a dict keeps insertion order).
        self._sent_at: dict[str, float] = {}
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        s = self.settings
        # linger: fuller produce requests cost the broker and this process far less CPU per
        # command than one request per command (CRASH_PRODUCER_LINGER_MS, crash-bench).
        self.producer = AIOKafkaProducer(bootstrap_servers=s.kafka_bootstrap, acks="all",
                                         linger_ms=s.producer_linger_ms, enable_idempotence=True)
        await self.producer.start()
        reply_topic = s.topic(REPLY)
        # One partition: aiokafka sends its next fetch only once the last one's records are
        # consumed, and the broker answers a waiting fetch as soon as a reply lands, so the wait
        # bounds only the polls of an idle process. At 10 ms the two idle gateway processes cost
        # the broker ~0.04 and themselves ~0.03 of a core in empty fetches (an idle crash-bench deployment).
        self._replies = AIOKafkaConsumer(bootstrap_servers=s.kafka_bootstrap, enable_auto_commit=False,
                                         group_id=None, fetch_max_wait_ms=200)
        await self._replies.start()
        partitions = sorted(await self.partitions(reply_topic))
        own = TopicPartition(reply_topic, DefaultPartitioner()(self.gateway_id.encode(), partitions, partitions))
        self._replies.assign([own])
        await self._replies.seek_to_end(own)
        await self._replies.position(own)     # resolved before any command is sent
        self._task = asyncio.create_task(self._read_replies())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        for client in (self._replies, self.producer):
            if client is not None:
                await client.stop()

    async def partitions(self, topic: str) -> set[int]:
        assert self.producer is not None
        for _ in range(100):
            partitions = await self.producer.partitions_for(topic)
            if partitions:
                return set(partitions)
            await asyncio.sleep(0.1)
        raise RuntimeError(f"topic {topic} has no partitions (run crash-admin topics)")

    async def send(self, topic: str, key: str, record: Message) -> None:
        """Send one record to a game topic (logical name) and wait for Kafka's acknowledgement."""
        assert self.producer is not None
        await self.producer.send_and_wait(self.settings.topic(topic), encode(record), key=key.encode())

    async def decide(self, topic: str, key: str, command: Message, timeout_s: float | None = None):
        """Send a command and wait for the pipeline's answer to it: TimeoutError if none comes
        within the decision timeout, which covers the send to Kafka too.

        During a broker outage the send alone can wait for metadata or acknowledgements for
        tens of seconds (aiokafka's request timeout); the caller gets its 503 after the decision
        timeout instead. A send cut short may still be delivered later: the pipeline answers a
        repeat with the same api_order_no with the first decision, so that is harmless.
        """
        timeout = timeout_s if timeout_s is not None else self.settings.decision_timeout_ms / 1000
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._pending[command.event_id] = future
        self._sent_at[command.event_id] = time.monotonic()
        try:
            async with asyncio.timeout(timeout):
                await self.send(topic, key, command)
                return await future
        finally:
            self._pending.pop(command.event_id, None)
            self._sent_at.pop(command.event_id, None)

    def lag_s(self) -> float:
        """How long the oldest command still waiting for its decision has waited: the pipeline's
        lag as this process sees it (0 when nothing waits)."""
        oldest = next(iter(self._sent_at.values()), None)
        return 0.0 if oldest is None else time.monotonic() - oldest

    async def send_within(self, topic: str, key: str, record: Message, timeout_s: float | None = None) -> None:
        """`send`, bounded by the decision timeout (TimeoutError after it)."""
        timeout = timeout_s if timeout_s is not None else self.settings.decision_timeout_ms / 1000
        async with asyncio.timeout(timeout):
            await self.send(topic, key, record)

    async def _read_replies(self) -> None:
        assert self._replies is not None
        async for message in self._replies:
            try:
                reply = decode(message.value, REPLY_RECORDS)
            except DecodeError:
                continue
            future = self._pending.get(reply.command_id)
            if future is not None and not future.done():
                future.set_result(reply)
