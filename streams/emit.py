"""Outgoing messages of one batch, sent in order and awaited together.

Each message carries its record type in a Kafka header (streams/codec.py), so that consumers
skip what they do not read without decoding it.
"""
from __future__ import annotations

import asyncio
from typing import Any

from aiokafka.structs import TopicPartition

from streams.app import app
from streams.codec import encode, type_header
from streams.events import Message


class Emitter:
    def __init__(self) -> None:
        self._pending: list[tuple[Any, bytes, bytes, list[tuple[str, bytes]] | None]] = []

    def send(self, topic, key: str, record: Message) -> None:
        self._pending.append((topic, key.encode(), encode(record), type_header(record)))

    @property
    def pending(self) -> bool:
        return bool(self._pending)

    def send_raw(self, topic, key: bytes, value: bytes, headers: list[tuple[str, bytes]] | None = None) -> None:
        self._pending.append((topic, key, value, headers))

    async def flush(self) -> None:
        """Send everything in order and wait for Kafka's acknowledgement of all of it.

        Straight to the app's producer (the same aiokafka producer Faust flushes before it
        commits offsets), not through Faust's Topic.send: its per-message futures, callbacks and
        buffer were about a tenth of a worker's samples (crash-bench --profile), and nothing
        here uses them — the batch awaits its acknowledgements itself."""
        if not self._pending:
            return
        producer = await app.maybe_start_producer()
        futures = [await append(producer, _name(topic), key, value, headers)
                   for topic, key, value, headers in self._pending]
        self._pending.clear()
        _send_now(producer)
        await asyncio.gather(*futures)


# (topic, key) -> its partition: the keys are channel, gateway and jackpot ids, a few hundred.
_partitions: dict[tuple[str, bytes], TopicPartition] = {}
_PARTITIONS_KEPT = 100_000


async def append(producer, topic: str, key: bytes, value: bytes | None,
                 headers: list[tuple[str, bytes]] | None = None, partition: int | None = None) -> asyncio.Future:
    """Append one message to the app's aiokafka producer (the record batches it sends), and the
    future of its acknowledgement.

    This is what aiokafka's own `send` does after its checks, without them on every message:
    Faust's send wrapper (its sensors), aiokafka's metadata wait, serialisation and murmur2
    partitioning were about half of the cost of a send, ~5 % of a worker's samples
    (crash-bench --profile). A key's partition is computed once, by aiokafka's own partitioner
    (the same one Faust's topics use, so co-partitioning holds); partition counts never change
    under a running pipeline (every game topic has the same count, streams/admin.py)."""
    aio = producer._ensure_producer()
    if partition is None:
        tp = _partitions.get((topic, key))
        if tp is None:
            await aio.client._wait_on_metadata(topic)
            if len(_partitions) >= _PARTITIONS_KEPT:
                _partitions.clear()
            tp = _partitions[(topic, key)] = TopicPartition(topic, aio._partition(topic, None, key, value, key, value))
    else:
        tp = TopicPartition(topic, partition)
    return await aio._message_accumulator.add_message(tp, key, value, aio._request_timeout_ms / 1000,
                                                      headers=headers or [])


def _send_now(producer) -> None:
    """Let the producer send what it holds at once instead of after its linger.

    The linger lets messages sent one by one share a produce request; a batch's output is all
    appended by now, and waiting the linger out only delays the batch's acknowledgement, which
    the answers and the next batch wait for. This is aiokafka's own `flush_for_commit` (close the
    open record batches, wake the sender) without its wait for every batch of every agent."""
    accumulator = producer._ensure_producer()._message_accumulator
    for batches in accumulator._batches.values():
        for batch in batches:
            batch._builder.close()
    if not accumulator._waiter_future.done():
        accumulator._waiter_future.set_result(None)


def _name(topic) -> str:
    return topic.get_topic_name()
