"""Outgoing messages of one batch, sent in order and awaited together."""
from __future__ import annotations

import asyncio
from typing import Any

from streams.codec import encode
from streams.events import Message


class Emitter:
    def __init__(self) -> None:
        self._pending: list[tuple[Any, bytes, bytes]] = []

    def send(self, topic, key: str, record: Message) -> None:
        self._pending.append((topic, key.encode(), encode(record)))

    def send_raw(self, topic, key: bytes, value: bytes) -> None:
        self._pending.append((topic, key, value))

    async def flush(self) -> None:
        """Send everything in order and wait for Kafka's acknowledgement of all of it."""
        if not self._pending:
            return
        futures = [await topic.send(key=key, value=value) for topic, key, value in self._pending]
        self._pending.clear()
        await asyncio.gather(*futures)
