"""`crash-push`: the Push Gateway (DESIGN section 15, seed 4.7) and the player's page.

One process (any number of them side by side; they share nothing but Redis):

- follows game.term, game.bet, game.jackpot and game.payout (every partition, no consumer
  group: each process serves every channel) and keeps one TermView per channel
  (web/push_view.py), written to Redis (`<prefix>push:view:<channel>`) with the Kafka position
  it reflects;
- serves WebSocket rooms: `/ws/channel/{id}` (the channel's term, bets, history and the
  jackpots it feeds) and `/ws/jackpot/{id}` (one ticker). A client sends `{"t": "hello",
  "token"?}` first (the token in a frame, not in the URL, so it is in no access log), gets a
  snapshot, then deltas coalesced to at most one frame per room every 100 ms;
- a frame is encoded once per room and the same bytes are written to every client's socket;
  a client whose socket buffer passes CRASH_PUSH_CLIENT_BUFFER (it does not read fast enough) is cut
  off: it never holds more memory than that, and its page reconnects and gets a new snapshot;
- sends each player's page a `wallet` hint when a payout to them succeeded (game.payout), so
  the page reloads the balance from the wallet;
- serves the page (`/play/`), the verifier (`/verify/`), their files, and public JSON: the
  proof of a term (`/v1/proofs/{term_id}`) and a channel's view (`/v1/views/{channel_id}`)
  (web/push_http.py).

Frames, clients and rooms, when a room's next frame is due, and the registry of rooms and
clients that writes the frames and cuts off a slow client (`Rooms`): web/push_rooms.py.

Restart: the views come back from Redis and Kafka is replayed from the positions stored with
them (the reducers are idempotent); with nothing in Redis (the first start), configs and
recent terms come from MySQL and Kafka is replayed from LOOKBACK_MS ago, which covers any
live term. Clients reconnect by themselves (the page retries with backoff).
"""
from __future__ import annotations

import asyncio
import json
import logging
import resource
import socket
from typing import Any

from aiohttp import WSMsgType, web
from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client import Counter
from sqlalchemy import text

from sql.db import make_engine
from streams import full_gc, ids
from streams.cache import REDIS_ERRORS, redis_client
from streams.codec import DecodeError, decode
from streams.events import PayoutSucceeded
from streams.settings import Settings, get_settings
from streams.topics import BET, JACKPOT, PAYOUT, TERM
from web import push_http, sessions
from web.http import problem
from web.push_rooms import FRAMES, Client, Rooms, dumps, now_ms
from web.push_view import ChannelView, JackpotView

log = logging.getLogger("crash.push")

SAVE_S = 1.0                     # views written to Redis at most this often
HELLO_TIMEOUT_S = 5.0
MAX_CLIENTS = 20_000
LOOKBACK_MS = 15 * 60 * 1000     # first start: replay this much of Kafka (longer than any term)
VIEW_TTL_S = 7 * 24 * 3600
WS_CLOSE_SESSION = 4401
WS_CLOSE_NOT_FOUND = 4404

EVENTS = Counter("push_events_total", "Kafka events applied", ["topic"])

KEY_PUSH: web.AppKey[Push] = web.AppKey("push")

__all__ = ["make_app", "main", "Push"]


class Push:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.secret = settings.session_secret
        self.max_buffer = settings.push_client_buffer
        self.prefix = f"{settings.topic_prefix}push:"
        self.redis = redis_client(settings.redis_url)
        self.db = make_engine(settings.db_url, pool_size=2)
        self.views: dict[str, ChannelView] = {}
        self.jackpots: dict[str, JackpotView] = {}
        self.view_partition: dict[str, int] = {}
        self.positions: dict[tuple[str, int], int] = {}     # (logical topic, partition) -> next offset
        self.saved: dict[str, tuple[int, ...]] = {}          # channel -> positions at its last save
        self.dirty: set[str] = set()
        self.rooms = Rooms(self.max_buffer)
        self.ready = asyncio.Event()
        self.consumer: AIOKafkaConsumer | None = None
        self.topics = {settings.topic(t): t for t in (TERM, BET, PAYOUT, JACKPOT)}
        self.tasks: list[asyncio.Task] = []

    def tag(self, user_id: str) -> str:
        return sessions.tag(self.secret, user_id)

    # ------------------------------------------------------------ start and stop

    async def start(self) -> None:
        await self._load_views()
        self.consumer = AIOKafkaConsumer(bootstrap_servers=self.settings.kafka_bootstrap, group_id=None,
                                         enable_auto_commit=False, auto_offset_reset="earliest",
                                         fetch_max_wait_ms=20, max_partition_fetch_bytes=4 * 1024 * 1024)
        await self.consumer.start()
        partitions = []
        for physical in self.topics:
            partitions += [TopicPartition(physical, p) for p in sorted(await self._partitions(physical))]
        self.consumer.assign(partitions)
        ends = await self.consumer.end_offsets(partitions)
        await self._seek(partitions)
        self.tasks = [asyncio.create_task(self._follow(ends)), asyncio.create_task(self.rooms.flush_forever()),
                      asyncio.create_task(self._save_forever())]

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self._save()
        if self.consumer is not None:
            await self.consumer.stop()
        await self.redis.aclose()
        await self.db.dispose()

    async def _partitions(self, topic: str) -> set[int]:
        assert self.consumer is not None
        for _ in range(100):
            found = self.consumer.partitions_for_topic(topic)
            if found:
                return found
            await self.consumer._client.force_metadata_update()
            await asyncio.sleep(0.1)
        raise RuntimeError(f"topic {topic} has no partitions (run crash-admin topics)")

    async def _load_views(self) -> None:
        """Views from Redis; on a first start (Redis empty) configs and history from MySQL."""
        names = await self.redis.smembers(self.prefix + "channels")
        for name in sorted(n.decode() for n in names):
            raw = await self.redis.get(self.prefix + "view:" + name)
            if raw is None:
                continue
            data = json.loads(raw)
            self.views[name] = ChannelView.from_dict(data, self.tag)
            if data.get("partition") is not None:
                self.view_partition[name] = data["partition"]
                for topic, offset in (data.get("pos") or {}).items():
                    key = (topic, data["partition"])
                    self.positions[key] = min(self.positions.get(key, offset), offset)
        raw = await self.redis.get(self.prefix + "jackpot-pos")
        for partition, offset in (json.loads(raw) if raw else {}).items():
            self.positions[(JACKPOT, int(partition))] = offset
        if self.views:
            log.info("%d channel views from Redis", len(self.views))
        else:
            await self._bootstrap_from_mysql()

    async def _bootstrap_from_mysql(self) -> None:
        try:
            async with self.db.connect() as conn:
                for row in await conn.execute(text("SELECT channel_id, config, config_version FROM channel")):
                    view = self.view(row.channel_id)
                    view.config, view.config_version = json.loads(row.config), row.config_version
                for row in await conn.execute(text(
                        "SELECT channel_id, chain_no, length, terminator, salt FROM fairness_chain")):
                    self.view(row.channel_id).chains[str(row.chain_no)] = {
                        "terminator": row.terminator, "salt": row.salt, "length": row.length}
                for channel_id, view in self.views.items():
                    rows = (await conn.execute(text(
                        "SELECT * FROM crash_term WHERE channel_id = :c AND revealed_hash IS NOT NULL"
                        " ORDER BY seq DESC LIMIT 50"), {"c": channel_id})).all()
                    for row in rows:
                        proof = push_http.proof_of_row(row._mapping, view.chains)
                        view.history.append({"term_id": row.term_id, "seq": row.seq, "crash_x100": row.crash_x100,
                                             "at": row.crash_at or row.ended_at, "aborted": bool(row.aborted)})
                        view.proofs[row.term_id] = proof
        except Exception as error:   # the database is optional for the live view: Kafka has it
            log.warning("no bootstrap from MySQL (%s); views come from Kafka only", error)
        log.info("first start: %d channels from MySQL, Kafka replayed from %d s ago", len(self.views),
                 LOOKBACK_MS // 1000)

    async def _seek(self, partitions: list[TopicPartition]) -> None:
        assert self.consumer is not None
        unknown = [tp for tp in partitions if (self.topics[tp.topic], tp.partition) not in self.positions]
        by_time = await self.consumer.offsets_for_times({tp: now_ms() - LOOKBACK_MS for tp in unknown}) \
            if unknown else {}
        ends = await self.consumer.end_offsets(partitions)
        for tp in partitions:
            stored = self.positions.get((self.topics[tp.topic], tp.partition))
            if stored is None:
                found = by_time.get(tp)
                stored = found.offset if found is not None else ends[tp]
            self.consumer.seek(tp, stored)
            self.positions[(self.topics[tp.topic], tp.partition)] = stored

    # ------------------------------------------------------------ Kafka

    def view(self, channel_id: str) -> ChannelView:
        view = self.views.get(channel_id)
        if view is None:
            view = self.views[channel_id] = ChannelView(channel_id, self.tag)
        return view

    def jackpot(self, jackpot_id: str) -> JackpotView:
        jackpot = self.jackpots.get(jackpot_id)
        if jackpot is None:
            jackpot = self.jackpots[jackpot_id] = JackpotView(jackpot_id, self.tag)
        return jackpot

    async def _follow(self, ends: dict[TopicPartition, int]) -> None:
        assert self.consumer is not None
        behind = {tp for tp, end in ends.items() if end > self.positions[(self.topics[tp.topic], tp.partition)]}
        if not behind:
            self.ready.set()
        while True:
            try:
                batches = await self.consumer.getmany(timeout_ms=100, max_records=5000)
            except Exception as error:   # the broker restarting: aiokafka reconnects; keep going
                log.warning("kafka: %s", error)
                await asyncio.sleep(0.5)
                continue
            for tp, messages in batches.items():
                topic = self.topics[tp.topic]
                for message in messages:
                    self._apply(topic, message)
                    self.positions[(topic, tp.partition)] = message.offset + 1
                EVENTS.labels(topic=topic).inc(len(messages))
                if tp in behind and self.positions[(topic, tp.partition)] >= ends[tp]:
                    behind.discard(tp)
            if behind:
                continue
            if not self.ready.is_set():
                await self._load_jackpots()
                log.info("caught up with Kafka: %d channels, %d jackpots", len(self.views), len(self.jackpots))
                self.ready.set()
            await asyncio.sleep(0)

    def _apply(self, topic: str, message: Any) -> None:
        try:
            event = decode(message.value)
        except DecodeError:
            return
        if topic == PAYOUT:
            if isinstance(event, PayoutSucceeded):
                self.rooms.to_user(event.user_id, {"t": "wallet", "kind": event.kind, "amount": event.amount,
                                                   "currency": event.currency})
            return
        if topic == JACKPOT:
            jackpot_id = getattr(event, "jackpot_id", None)
            if not isinstance(jackpot_id, str):
                return
            ops = self.jackpot(jackpot_id).apply(event)
            if ops:
                self._jackpot_ops(jackpot_id, ops, message.timestamp)
            return
        view = self.view(event.channel_id)
        self.view_partition[event.channel_id] = message.partition
        ops = view.apply(event)
        if not ops:
            return
        self.dirty.add(event.channel_id)
        room = self.rooms.by_key.get("ch:" + event.channel_id)
        if room is not None:
            for key, op in ops:
                room.add(key, op, message.timestamp)
        if ops[0][0] == "config":
            for jackpot_id in view.jackpot_ids:
                if jackpot_id not in self.jackpots and self.ready.is_set():
                    asyncio.create_task(self._load_jackpot(jackpot_id))

    def _jackpot_ops(self, jackpot_id: str, ops: list[tuple[Any, dict[str, Any]]], kafka_ms: int) -> None:
        rooms = [self.rooms.by_key.get("jp:" + jackpot_id)]
        rooms += [self.rooms.by_key.get("ch:" + cid)
                  for cid, view in self.views.items() if jackpot_id in view.jackpot_ids]
        for room in rooms:
            if room is not None:
                for key, op in ops:
                    room.add(key, op, kafka_ms)

    async def _load_jackpots(self) -> None:
        wanted = {j for view in self.views.values() for j in view.jackpot_ids} | set(self.jackpots)
        await asyncio.gather(*(self._load_jackpot(j) for j in sorted(wanted)))

    async def _load_jackpot(self, jackpot_id: str) -> None:
        """The Jackpot Service's Redis view of a pool (its snapshot); events keep it current."""
        try:
            raw = await self.redis.get(f"jackpot:{jackpot_id}")
        except REDIS_ERRORS as error:
            log.warning("jackpot %s view: %s", jackpot_id, error)
            return
        jackpot = self.jackpot(jackpot_id)
        if raw is not None:
            jackpot.load(json.loads(raw))
            self._jackpot_ops(jackpot_id, [(("jp", jackpot_id), {"k": "jackpot", "jackpot": jackpot.public()})],
                              now_ms())

    # ------------------------------------------------------------ Redis

    async def _save_forever(self) -> None:
        while True:
            await asyncio.sleep(SAVE_S)
            try:
                await self._save()
            except REDIS_ERRORS as error:   # the next round writes them; the live view is in memory
                log.warning("saving views: %s", error)

    def _channel_positions(self, channel_id: str) -> dict[str, int] | None:
        partition = self.view_partition.get(channel_id)
        if partition is None:
            return None
        return {t: self.positions[(t, partition)] for t in (TERM, BET, PAYOUT) if (t, partition) in self.positions}

    async def _save(self) -> None:
        """Each view with the Kafka positions it reflects, once they moved (restart point)."""
        pipe = self.redis.pipeline(transaction=False)
        count = 0
        for channel_id, view in self.views.items():
            pos = self._channel_positions(channel_id)
            mark = tuple(sorted(pos.values())) if pos else ()
            if channel_id not in self.dirty and self.saved.get(channel_id) == mark:
                continue
            data = view.to_dict()
            data.update(pos=pos, partition=self.view_partition.get(channel_id), saved_at=now_ms())
            pipe.set(self.prefix + "view:" + channel_id, dumps(data), ex=VIEW_TTL_S)
            pipe.sadd(self.prefix + "channels", channel_id)
            self.saved[channel_id] = mark
            count += 1
        self.dirty.clear()
        jackpot_pos = {str(p): o for (t, p), o in self.positions.items() if t == JACKPOT}
        if jackpot_pos:
            pipe.set(self.prefix + "jackpot-pos", dumps(jackpot_pos), ex=VIEW_TTL_S)
            count += 1
        if count:
            await pipe.execute()

    # ------------------------------------------------------------ WebSocket

    async def ws_channel(self, request: web.Request) -> web.StreamResponse:
        channel_id = request.match_info["channel_id"]
        if not ids.is_name(channel_id):
            return problem(400, "bad_request", f"channel id must match {ids.NAME.pattern}")
        return await self._serve(request, "ch:" + channel_id, channel_id=channel_id)

    async def ws_jackpot(self, request: web.Request) -> web.StreamResponse:
        jackpot_id = request.match_info["jackpot_id"]
        if not ids.is_name(jackpot_id):
            return problem(400, "bad_request", f"jackpot id must match {ids.NAME.pattern}")
        return await self._serve(request, "jp:" + jackpot_id, jackpot_id=jackpot_id)

    async def _serve(self, request: web.Request, room_key: str, channel_id: str | None = None,
                     jackpot_id: str | None = None) -> web.StreamResponse:
        ws = web.WebSocketResponse(compress=False, max_msg_size=8 * 1024, heartbeat=30)
        if not ws.can_prepare(request).ok:
            return problem(400, "websocket_expected", "this is a WebSocket endpoint")
        if self.rooms.clients >= MAX_CLIENTS:
            return problem(503, "too_many_clients", "this push gateway is full; try another")
        await ws.prepare(request)
        transport = request.transport
        if transport is None:
            return ws
        sock = transport.get_extra_info("socket")
        if sock is None:
            return ws
        # The kernel's send buffer is per client memory too: fixed, not auto-tuned up to MBs.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, max(4096, self.max_buffer))
        session: sessions.Session | None = None
        try:
            first = await asyncio.wait_for(ws.receive(), HELLO_TIMEOUT_S)
            hello = json.loads(first.data) if first.type == WSMsgType.TEXT else None
            if not isinstance(hello, dict) or hello.get("t") != "hello":
                await _close(ws, 4400, "bad_request", 'the first message must be {"t": "hello", "token"?: ...}')
                return ws
            if hello.get("token"):
                session = sessions.verify(self.secret, str(hello["token"]))
            await asyncio.wait_for(self.ready.wait(), 30)
        except (TimeoutError, ValueError):
            await _close(ws, 4400, "bad_request", "no hello in time")
            return ws
        except sessions.SessionError as error:
            await _close(ws, WS_CLOSE_SESSION, error.error, error.reason)
            return ws
        if channel_id is not None and channel_id not in self.views:
            await _close(ws, WS_CLOSE_NOT_FOUND, "unknown_channel", f"no channel {channel_id}")
            return ws
        if jackpot_id is not None and jackpot_id not in self.jackpots:
            await self._load_jackpot(jackpot_id)
            if not self.jackpot(jackpot_id).known:
                self.jackpots.pop(jackpot_id, None)
                await _close(ws, WS_CLOSE_NOT_FOUND, "unknown_jackpot", f"no jackpot {jackpot_id}")
                return ws
        # The snapshot and the join in one step (no await between them): every op after the
        # snapshot reaches this client in a later frame; ops it already holds are idempotent.
        you = None if session is None else {"user_id": session.user_id, "tag": self.tag(session.user_id),
                                            "expires_at": session.expires_at}
        snapshot: dict[str, Any] = {"t": "hello", "ts": now_ms(), "you": you}
        if channel_id is not None:
            view = self.views[channel_id]
            snapshot["channel"] = view.snapshot(you["tag"] if you else None)
            snapshot["jackpots"] = {j: self.jackpot(j).public() for j in view.jackpot_ids}
        else:
            snapshot["jackpots"] = {jackpot_id: self.jackpot(jackpot_id).public()}
        client = Client(ws, transport, sock.fileno(), session.user_id if session else None)
        self.rooms.join(client, room_key)
        try:
            await ws.send_str(dumps(snapshot).decode())
            FRAMES.labels(kind="hello").inc()
            async for message in ws:   # nothing is expected from the client: read until it goes
                if message.type in (WSMsgType.ERROR, WSMsgType.CLOSE):
                    break
        except (ConnectionError, RuntimeError):
            pass
        finally:
            self.rooms.drop(client)
        return ws


async def _close(ws: web.WebSocketResponse, code: int, error: str, reason: str) -> None:
    """Say why in a frame (a browser does not see an HTTP refusal of a WebSocket), then close."""
    try:
        await ws.send_str(json.dumps({"t": "error", "error": error, "reason": reason}))
        await ws.close(code=code, message=error.encode()[:120])
    except (ConnectionError, RuntimeError):
        pass


# ---------------------------------------------------------------- the app

def make_app(settings: Settings | None = None) -> web.Application:
    settings = settings or get_settings()
    app = web.Application(client_max_size=16 * 1024)
    push = Push(settings)
    app[KEY_PUSH] = push

    async def lifecycle(app: web.Application):
        await push.start()
        yield
        await push.stop()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_get("/ws/channel/{channel_id}", push.ws_channel)
    app.router.add_get("/ws/jackpot/{jackpot_id}", push.ws_jackpot)
    push_http.add_routes(app, push)     # the page, the verifier, proofs, views, health, metrics
    return app


def main() -> None:
    settings = get_settings()
    # One file descriptor per client: take what the system allows (10,000 clients and more).
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    logging.basicConfig(level=settings.log_level.upper(), format="[%(asctime)s] [%(levelname)s] %(name)s: %(message)s")
    # A restarted gateway's clients all come back at once: a backlog for them, not aiohttp's 128.
    full_gc.install()
    web.run_app(make_app(settings), host=settings.push_host, port=settings.push_port,
                access_log=None, reuse_port=True, backlog=4096)

