"""The push gateway's WebSocket primitives (web/push.py): a text frame built once and written
as the same bytes to every socket, the clients, and the rooms that hold a channel's or a
jackpot's clients with the ops waiting for their next frame (when that frame is due); `now_ms`
is the clock frames carry as `ts`.

Apart from the gateway because none of it knows Kafka, Redis or the views: the gateway decides
what goes into a room, these say how and when it leaves.
"""
from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from aiohttp import web

__all__ = ["now_ms", "ws_text_frame", "dumps", "Client", "Room"]

FRAME_GAP_S = 0.1                # at most one frame per room every 100 ms
TICK_WAIT_S = 0.15               # while flying, other ops ride on the next tick's frame, this long at most
URGENT = frozenset({"term", "tick", "jackpot_hit"})   # ops that make a frame go at once (when allowed)


def now_ms() -> int:
    return int(time.time() * 1000)


def ws_text_frame(payload: bytes) -> bytes:
    """One unmasked, uncompressed WebSocket text frame (RFC 6455 5.2), built once per room."""
    n = len(payload)
    if n < 126:
        header = bytes((0x81, n))
    elif n < 1 << 16:
        header = bytes((0x81, 126)) + n.to_bytes(2, "big")
    else:
        header = bytes((0x81, 127)) + n.to_bytes(8, "big")
    return header + payload


def dumps(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


class Client:
    __slots__ = ("ws", "transport", "fd", "user_id", "rooms", "alive")

    def __init__(self, ws: web.WebSocketResponse, transport: asyncio.Transport, fd: int, user_id: str | None) -> None:
        self.ws, self.transport, self.fd, self.user_id = ws, transport, fd, user_id
        self.rooms: list[Room] = []
        self.alive = True


class Room:
    """The clients of one channel or one jackpot, and the ops waiting for the next frame."""
    __slots__ = ("key", "clients", "pending", "oldest_ms", "newest_ms", "last_frame", "flying", "urgent")

    def __init__(self, key: str) -> None:
        self.key = key
        self.clients: set[Client] = set()
        self.pending: dict[Any, dict[str, Any]] = {}
        self.oldest_ms: int | None = None        # Kafka time of the oldest event in `pending`
        self.newest_ms: int | None = None        # ... and of the newest
        self.last_frame = 0.0
        self.flying = False                      # the room's term is flying: ticks set the pace
        self.urgent = False                      # a state change or a tick is pending

    def due(self, now: float) -> bool:
        """Whether a frame goes now: never within 100 ms of the last one; while the term flies,
        when a tick (or a state change) is pending, so that frames keep the ticks' pace (a tick
        every 100-150 ms) and a tick never waits behind a frame a bet made go a moment earlier;
        otherwise as soon as 100 ms allow."""
        gap = now - self.last_frame
        if not self.pending or gap < FRAME_GAP_S:
            return False
        return self.urgent or not self.flying or gap >= TICK_WAIT_S

    def add(self, key: Any, op: dict[str, Any], kafka_ms: int) -> None:
        self.pending[key] = op    # coalesced: the latest wins, in the place of the first
        kind = op["k"]
        if kind in URGENT:
            self.urgent = True
            if kind == "term":
                self.flying = op["term"]["state"] == "flying"
        if self.oldest_ms is None or kafka_ms < self.oldest_ms:
            self.oldest_ms = kafka_ms
        if self.newest_ms is None or kafka_ms > self.newest_ms:
            self.newest_ms = kafka_ms
