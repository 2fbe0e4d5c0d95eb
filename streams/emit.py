"""Outgoing messages of one batch, sent in order and awaited together.

Each message carries its record type in a Kafka header (streams/codec.py), so that consumers
skip what they do not read without decoding it.
"""
from __future__ import annotations

import asyncio
from typing import Any

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
        futures = [await producer.send(_name(topic), key, value, None, None, headers)
                   for topic, key, value, headers in self._pending]
        self._pending.clear()
        _send_now(producer)
        await asyncio.gather(*futures)


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
