"""The push gateway's WebSocket side (web/push.py): a text frame built once and written as the
same bytes to every socket, the clients, the rooms that hold a channel's or a jackpot's clients
with the ops waiting for their next frame (when that frame is due), and `Rooms`, the registry of
them all, which writes each room's frame when it is due and cuts off a client that does not
read; `now_ms` is the clock frames carry as `ts`.

Apart from the gateway because none of it knows Kafka, Redis or the views: the gateway decides
what goes into a room, these say how and when it leaves.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import defaultdict
from typing import Any

from aiohttp import web
from prometheus_client import Counter, Gauge, Histogram

from web import fanout

__all__ = ["now_ms", "ws_text_frame", "dumps", "Client", "Room", "Rooms"]

log = logging.getLogger("crash.push")

FLUSH_CHECK_S = 0.005            # rooms checked this often: a frame goes as soon as Room.due allows
PING_S = 1.0                     # a frame at least every second, so that a page sees the link alive
FRAME_GAP_S = 0.1                # at most one frame per room every 100 ms
TICK_WAIT_S = 0.15               # while flying, other ops ride on the next tick's frame, this long at most
URGENT = frozenset({"term", "tick", "jackpot_hit"})   # ops that make a frame go at once (when allowed)

CLIENTS = Gauge("push_clients", "WebSocket clients connected")
FRAMES = Counter("push_frames_total", "Frames written to clients", ["kind"])
CUT = Counter("push_clients_cut_total", "Clients cut off because they did not read fast enough")
LATENCY = Histogram("push_latency_seconds", "From an event's Kafka timestamp to its frame on the sockets",
                    buckets=(.005, .01, .025, .05, .075, .1, .15, .25, .5, 1, 2.5))
BROADCAST = Histogram("push_broadcast_seconds", "Writing one frame to every client of a room",
                      buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .25))


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


class Rooms:
    """Every room of this gateway by key (`ch:<channel>`, `jp:<jackpot>`), each signed-in
    player's clients (for the `wallet` hint), and how many clients are connected: frames go out
    from here (`flush`: each room's when due), and a client that does not read is cut off."""

    def __init__(self, max_buffer: int) -> None:
        self.max_buffer = max_buffer
        self.by_key: dict[str, Room] = {}
        self.by_user: dict[str, set[Client]] = defaultdict(set)
        self.clients = 0

    async def flush_forever(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_CHECK_S)
            try:
                self.flush()
            except Exception:   # one bad frame must not stop every room
                log.exception("flush")

    def flush(self) -> None:
        now = time.monotonic()
        for room in list(self.by_key.values()):
            if not room.clients:
                room.pending.clear()
                room.oldest_ms = room.newest_ms = None
                continue
            if room.pending and not room.due(now):
                continue
            if room.pending:
                frame = {"t": "delta", "ts": now_ms(), "src": room.oldest_ms, "new": room.newest_ms,
                         "ops": list(room.pending.values())}
                room.pending.clear()
                src, room.oldest_ms, room.newest_ms, room.urgent = frame["src"], None, None, False
                self._broadcast(room, ws_text_frame(dumps(frame)), "delta")
                if src:
                    LATENCY.observe(max(0.0, (now_ms() - src) / 1000))
            elif now - room.last_frame >= PING_S:
                self._broadcast(room, ws_text_frame(dumps({"t": "ping", "ts": now_ms()})), "ping")
            else:
                continue
            room.last_frame = now

    def _broadcast(self, room: Room, frame: bytes, kind: str) -> None:
        started = time.perf_counter()
        self._write(room.clients, frame, kind)
        BROADCAST.observe(time.perf_counter() - started)

    def _write(self, clients: set[Client], frame: bytes, kind: str) -> None:
        """The frame to each client that still reads; one that does not is cut off."""
        sent, closing, slow = fanout.write_all(clients, frame, self.max_buffer)
        for client in closing:
            self.drop(client)
        for client in slow:
            CUT.inc()
            log.info("cutting off a client that does not read (%d bytes queued)",
                     client.transport.get_write_buffer_size())
            client.transport.abort()
            self.drop(client)
        FRAMES.labels(kind=kind).inc(sent)

    def to_user(self, user_id: str, message: dict[str, Any]) -> None:
        clients = self.by_user.get(user_id)
        if clients:
            self._write(clients, ws_text_frame(dumps({**message, "ts": now_ms()})), message["t"])

    def join(self, client: Client, key: str) -> None:
        """Count a new client in, in its room and its player's clients: `drop` undoes all of it."""
        room = self.by_key.get(key)
        if room is None:
            room = self.by_key[key] = Room(key)
        room.clients.add(client)
        client.rooms.append(room)
        if client.user_id is not None:
            self.by_user[client.user_id].add(client)
        self.clients += 1
        CLIENTS.set(self.clients)

    def drop(self, client: Client) -> None:
        if not client.alive:
            return
        client.alive = False
        for room in client.rooms:
            room.clients.discard(client)
        if client.user_id is not None:
            users = self.by_user.get(client.user_id)
            if users is not None:
                users.discard(client)
                if not users:
                    del self.by_user[client.user_id]
        self.clients -= 1
        CLIENTS.set(self.clients)
