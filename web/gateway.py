"""Bet API gateway (server to server, HMAC-signed): the only way commands enter game.command.

Every place / cancel / cashout is checked for shape here (a bad request never reaches a
topic), stamped with its receive time and a command id, sent to game.command keyed by
channel, and answered with the pipeline's definitive decision, which comes back on
game.reply (keyed by this gateway's id; each gateway reads only its own partition).
A repeated api_order_no is answered by the pipeline with the first decision.

The gateway also follows game.term to keep each channel's config and live term state in
memory (for validation and for GET /v1/channels/{id}).

Seamless mode (POST /v1/player/bets): the gateway debits the player's wallet with
order_no = api_order_no, then places the bet marked `debited`; a refused debited bet is
refunded by the Refund Service. The intent is written to MySQL (player_debit) before the
debit, and a resolver repeats debits whose answer was lost, then places those bets with their
original receive time: once money may have left the player, the pipeline always decides.
"""
from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from typing import Any

from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.partitioner import DefaultPartitioner
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from sqlalchemy import text
from ulid import ULID

from sql.db import make_engine
from streams import money
from streams.cache import redis_client
from streams.codec import DecodeError, decode, encode
from streams.events import (
    CancelBet,
    CashoutBet,
    ChannelConfigured,
    Command,
    CommandReply,
    PlaceBet,
    TermAborted,
    TermClosed,
    TermCrashed,
    TermCreated,
    TermStateChanged,
    TermTick,
)
from streams.settings import Settings, get_settings
from streams.topics import COMMAND, REPLY, TERM
from web.signing import RedisNonceStore, SignatureError, Verifier
from web.wallet_client import WalletClient, WalletError, WalletResult, WalletUnavailable

log = logging.getLogger("crash.gateway")

MAX_BODY = 16 * 1024
ORDER_NO = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
USER_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
ORDER_CLAIM_TTL_S = 30 * 24 * 3600

REQUESTS = Counter("gateway_requests_total", "Bet API requests", ["op", "status"])
DEBITS = Counter("gateway_player_debits_total", "Seamless-mode debits", ["outcome"])
DECISION_SECONDS = Histogram("gateway_decision_seconds", "From receive to the pipeline's definitive answer",
                             ["op"], buckets=(.005, .01, .025, .05, .075, .1, .15, .25, .5, 1, 2.5, 5))

KEY_SETTINGS: web.AppKey[Gateway] = web.AppKey("gateway")


class BadRequest(Exception):
    def __init__(self, status: int, error: str, reason: str) -> None:
        super().__init__(reason)
        self.status, self.error, self.reason = status, error, reason


def _problem(status: int, error: str, reason: str) -> web.Response:
    return web.json_response({"error": error, "reason": reason}, status=status)


def _int_field(body: dict[str, Any], name: str, required: bool = True) -> int | None:
    value = body.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise BadRequest(400, "bad_request", f"{name} must be an integer")
    return value


def _str_field(body: dict[str, Any], name: str, pattern: re.Pattern[str]) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not pattern.match(value):
        raise BadRequest(400, "bad_request", f"{name} must match {pattern.pattern}")
    return value


class Gateway:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.gateway_id = settings.gateway_id
        self.channels: dict[str, dict[str, Any]] = {}      # channel_id -> config
        self.live: dict[str, dict[str, Any]] = {}          # channel_id -> live term state
        self.pending: dict[str, asyncio.Future[CommandReply]] = {}
        self.producer: AIOKafkaProducer | None = None
        self.reply_consumer: AIOKafkaConsumer | None = None
        self.term_consumer: AIOKafkaConsumer | None = None
        self.redis = redis_client(settings.redis_url)
        self.verifier = Verifier(settings.api_keys, RedisNonceStore(self.redis))
        self.db = make_engine(settings.db_url, pool_size=3)
        self.wallet = WalletClient.from_settings(settings)
        self._tasks: list[asyncio.Task] = []
        self._background: set[asyncio.Task] = set()

    # ---------------------------------------------------------- lifecycle

    async def start(self) -> None:
        s = self.settings
        self.producer = AIOKafkaProducer(bootstrap_servers=s.kafka_bootstrap, acks="all", linger_ms=1,
                                         enable_idempotence=True)
        await self.producer.start()
        reply_topic = s.topic(REPLY)
        self.reply_consumer = AIOKafkaConsumer(bootstrap_servers=s.kafka_bootstrap, enable_auto_commit=False,
                                               group_id=None, fetch_max_wait_ms=10)
        await self.reply_consumer.start()
        partitions = sorted(await self._partitions(reply_topic))
        own = TopicPartition(reply_topic, DefaultPartitioner()(self.gateway_id.encode(), partitions, partitions))
        self.reply_consumer.assign([own])
        await self.reply_consumer.seek_to_end(own)
        await self.reply_consumer.position(own)     # resolved before any command is sent
        await self._load_channels()
        term_topic = s.topic(TERM)
        self.term_consumer = AIOKafkaConsumer(bootstrap_servers=s.kafka_bootstrap, enable_auto_commit=False,
                                              group_id=None, fetch_max_wait_ms=50)
        await self.term_consumer.start()
        term_partitions = [TopicPartition(term_topic, p) for p in await self._partitions(term_topic)]
        self.term_consumer.assign(term_partitions)
        await self.term_consumer.seek_to_end(*term_partitions)
        self._tasks = [asyncio.create_task(self._read_replies()), asyncio.create_task(self._read_terms()),
                       asyncio.create_task(self._resolve_debits())]

    async def _partitions(self, topic: str) -> set[int]:
        assert self.producer is not None
        for _ in range(100):
            partitions = await self.producer.partitions_for(topic)
            if partitions:
                return set(partitions)
            await asyncio.sleep(0.1)
        raise RuntimeError(f"topic {topic} has no partitions (run crash-admin topics)")

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for client in (self.reply_consumer, self.term_consumer, self.producer):
            if client is not None:
                await client.stop()
        await self.redis.aclose()
        await self.wallet.close()
        await self.db.dispose()

    async def _load_channels(self) -> None:
        """Configs and the newest term of each channel, from MySQL (then live from game.term)."""
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

    async def _read_replies(self) -> None:
        assert self.reply_consumer is not None
        async for message in self.reply_consumer:
            try:
                reply = decode(message.value, (CommandReply,))
            except DecodeError:
                continue
            future = self.pending.get(reply.command_id)
            if future is not None and not future.done():
                future.set_result(reply)

    async def _read_terms(self) -> None:
        assert self.term_consumer is not None
        async for message in self.term_consumer:
            try:
                event = decode(message.value)
            except DecodeError:
                continue
            self.on_term_event(event)

    def on_term_event(self, event) -> None:
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
            live["multiple_x100"] = event.multiple_x100
        elif isinstance(event, TermCrashed):
            live.update(state="crashed", crash_x100=event.crash_x100, crash_at=event.crash_at)
        elif isinstance(event, TermAborted):
            live.update(state="aborted", aborted_at=event.aborted_at)
        elif isinstance(event, TermClosed):
            live.update(state="closed")

    # ---------------------------------------------------------- commands

    async def decide(self, command: Command, op: str) -> CommandReply:
        """Send one command and wait for the pipeline's answer."""
        assert self.producer is not None
        future: asyncio.Future[CommandReply] = asyncio.get_running_loop().create_future()
        self.pending[command.event_id] = future
        try:
            await self._send_command(command)
            with DECISION_SECONDS.labels(op=op).time():
                return await asyncio.wait_for(future, self.settings.decision_timeout_ms / 1000)
        finally:
            self.pending.pop(command.event_id, None)

    # ---------------------------------------------------------- seamless mode

    async def debit_and_place(self, command: PlaceBet) -> CommandReply | WalletResult:
        """Debit the stake, then place the bet; the wallet's refusal is returned as is."""
        now = int(time.time() * 1000)
        async with self.db.begin() as conn:
            await conn.execute(text(
                "INSERT IGNORE INTO player_debit (channel_id, api_order_no, user_id, currency, amount, command,"
                " state, received_at, updated_at) VALUES (:c, :o, :u, :cur, :a, :cmd, 'pending', :t, :now)"),
                {"c": command.channel_id, "o": command.api_order_no, "u": command.user_id, "cur": command.currency,
                 "a": command.amount, "cmd": encode(command).decode(), "t": command.ts, "now": now})
            row = (await conn.execute(text(
                "SELECT command FROM player_debit WHERE channel_id = :c AND api_order_no = :o"),
                {"c": command.channel_id, "o": command.api_order_no})).first()
        first = decode(row.command, (PlaceBet,))
        if (first.user_id, first.amount, first.currency) != (command.user_id, command.amount, command.currency):
            raise BadRequest(409, "order_no_taken", "api_order_no already used with different content")
        result = await self._debit(first)
        if not result.ok:
            return result
        return await self.decide(first, "player_place")

    async def _record_debit(self, command: PlaceBet, result: WalletResult) -> None:
        state = "debited" if result.ok else "refused"
        async with self.db.begin() as conn:
            await conn.execute(text(
                "UPDATE player_debit SET state = :s, wallet_result = :r, updated_at = :now"
                " WHERE channel_id = :c AND api_order_no = :o AND state = 'pending'"),
                {"s": state, "r": json.dumps(result.__dict__), "now": int(time.time() * 1000),
                 "c": command.channel_id, "o": command.api_order_no})

    async def _debit(self, command: PlaceBet) -> WalletResult:
        """Debit (or repeat the debit of) one bet's stake; records the outcome."""
        try:
            result = await self.wallet.debit(command.api_order_no, command.user_id, command.currency, command.amount,
                                             meta={"channel_id": command.channel_id, "kind": "stake"})
        except WalletUnavailable:
            DEBITS.labels(outcome="unknown").inc()
            raise
        DEBITS.labels(outcome=result.status).inc()
        if not result.ok:
            await self._record_debit(command, result)
        # An ok debit is not recorded here: the bet is placed at once, and a row left
        # 'pending' is resolved by repeating the (idempotent) debit.
        return result

    async def _resolve_debits(self) -> None:
        """Finish debits whose answer was lost: repeat them, then let the pipeline decide."""
        while True:
            await asyncio.sleep(1.0)
            try:
                now = int(time.time() * 1000)
                async with self.db.begin() as conn:
                    rows = (await conn.execute(text(
                        "SELECT command, state FROM player_debit WHERE state IN ('pending', 'debited')"
                        " AND updated_at < :stale ORDER BY updated_at LIMIT 100 FOR UPDATE SKIP LOCKED"),
                        {"stale": now - 5000})).all()
                    for row in rows:
                        await conn.execute(text(
                            "UPDATE player_debit SET updated_at = :now WHERE channel_id = :c AND api_order_no = :o"),
                            {"now": now, "c": json.loads(row.command)["channel_id"],
                             "o": json.loads(row.command)["api_order_no"]})
                for row in rows:
                    command = decode(row.command, (PlaceBet,))
                    if row.state == "pending" and not (await self._debit(command)).ok:
                        continue
                    await self._send_command(command)
                    async with self.db.begin() as conn:
                        await conn.execute(text(
                            "UPDATE player_debit SET state = 'placed', updated_at = :now"
                            " WHERE channel_id = :c AND api_order_no = :o"),
                            {"now": int(time.time() * 1000), "c": command.channel_id, "o": command.api_order_no})
                    log.info("resolved the debit of %s/%s: placed with its original receive time",
                             command.channel_id, command.api_order_no)
            except asyncio.CancelledError:
                raise
            except Exception as error:   # keep resolving after any failure; the rows stay
                log.warning("debit resolver: %s", error)

    def in_background(self, coroutine) -> None:
        task = asyncio.create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def mark_placed(self, command: PlaceBet) -> None:
        async with self.db.begin() as conn:
            await conn.execute(text(
                "UPDATE player_debit SET state = 'placed', updated_at = :now"
                " WHERE channel_id = :c AND api_order_no = :o"),
                {"now": int(time.time() * 1000), "c": command.channel_id, "o": command.api_order_no})

    async def _send_command(self, command: Command) -> None:
        assert self.producer is not None
        await self.producer.send_and_wait(self.settings.topic(COMMAND), encode(command),
                                          key=command.channel_id.encode())

    def channel_config(self, channel_id: str) -> dict[str, Any]:
        config = self.channels.get(channel_id)
        if config is None:
            raise BadRequest(404, "unknown_channel", f"no channel {channel_id}")
        return config

    async def claim_order(self, config: dict[str, Any], channel_id: str, api_order_no: str) -> None:
        """api_order_no is unique per operator: the first channel to use it keeps it."""
        key = f"order:{config['operator_group']}:{api_order_no}"
        if await self.redis.set(key, channel_id, nx=True, ex=ORDER_CLAIM_TTL_S):
            return
        owner = await self.redis.get(key)
        if owner is not None and owner.decode() != channel_id:
            raise BadRequest(409, "order_no_taken",
                             f"api_order_no {api_order_no} was already used on channel {owner.decode()}")

    def command_fields(self, request: web.Request, channel_id: str) -> dict[str, Any]:
        command_id = str(ULID())
        return {"event_id": command_id, "channel_id": channel_id, "ts": request["received_at"],
                "trace_id": request.headers.get("X-Trace-Id", command_id)[:64], "gateway_id": self.gateway_id}


def _answer(reply: CommandReply, op: str) -> web.Response:
    body = {"status": reply.status, "api_order_no": reply.api_order_no, "bet_id": reply.bet_id or None,
            "term_id": reply.term_id or None}
    if reply.reason:
        body["reason"] = reply.reason
    if reply.amount:
        body.update(amount=reply.amount, currency=reply.currency)
    if reply.multiple_x100:
        body.update(multiple_x100=reply.multiple_x100, payout=reply.payout, mode=reply.mode)
    REQUESTS.labels(op=op, status=reply.status).inc()
    return web.json_response(body, status=200 if reply.status == "accepted" else 409)


@web.middleware
async def stamp_and_guard(request: web.Request, handler):
    """Receive time first (it decides bets), then uniform JSON errors for everything."""
    request["received_at"] = int(time.time() * 1000)
    try:
        return await handler(request)
    except BadRequest as error:
        REQUESTS.labels(op=request.path.rsplit("/", 1)[-1], status=str(error.status)).inc()
        return _problem(error.status, error.error, error.reason)
    except web.HTTPRequestEntityTooLarge:
        return _problem(413, "too_large", f"body over {MAX_BODY} bytes")
    except TimeoutError:
        return _problem(503, "decision_timeout",
                        "no decision in time; repeat the request with the same api_order_no to get it")
    except web.HTTPException as error:
        return _problem(error.status, "http_error", error.reason or "")


async def signed_json(request: web.Request, roles: tuple[str, ...] = ("game", "admin")) -> dict[str, Any]:
    gateway: Gateway = request.app[KEY_SETTINGS]
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise BadRequest(413, "too_large", f"body over {MAX_BODY} bytes")
    raw = await request.read()
    try:
        caller = await gateway.verifier.verify(request.method, request.path_qs, request.headers, raw)
    except SignatureError as error:
        raise BadRequest(401, "unauthorized", str(error)) from None
    if caller.role not in roles:
        raise BadRequest(403, "forbidden", f"role {caller.role!r} may not call this endpoint")
    try:
        body = json.loads(raw) if raw else {}
    except json.JSONDecodeError:
        raise BadRequest(400, "bad_request", "body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadRequest(400, "bad_request", "body must be a JSON object")
    return body


def place_command(gateway: Gateway, request: web.Request, body: dict[str, Any], debited: bool = False) -> PlaceBet:
    """Check a place request's shape against the channel; the limits are the pipeline's."""
    channel_id = _str_field(body, "channel_id", ORDER_NO)
    config = gateway.channel_config(channel_id)
    api_order_no = _str_field(body, "api_order_no", ORDER_NO)
    user_id = _str_field(body, "user_id", USER_ID)
    amount = _int_field(body, "amount")
    if amount is None or amount <= 0:
        raise BadRequest(400, "bad_request", "amount must be a positive integer in minor units")
    currency = body.get("currency")
    if currency not in config["currencies"]:
        raise BadRequest(400, "unsupported_currency",
                         f"channel {channel_id} takes {', '.join(sorted(config['currencies']))}")
    target = _int_field(body, "auto_cashout_x100", required=False)
    if target is not None and not money.MIN_AUTO_CASHOUT_X100 <= target <= config["max_multiple_x100"]:
        raise BadRequest(400, "bad_request",
                         f"auto_cashout_x100 must be in [{money.MIN_AUTO_CASHOUT_X100}, {config['max_multiple_x100']}]")
    bet_type = body.get("bet_type", "auto" if target is not None else "manual")
    if bet_type not in ("manual", "auto") or (bet_type == "auto" and target is None):
        raise BadRequest(400, "bad_request", "bet_type is manual or auto (auto needs auto_cashout_x100)")
    return PlaceBet(**gateway.command_fields(request, channel_id), api_order_no=api_order_no, user_id=user_id,
                    amount=amount, currency=currency, auto_cashout_x100=target, bet_type=bet_type, debited=debited)


async def place_bet(request: web.Request) -> web.Response:
    gateway: Gateway = request.app[KEY_SETTINGS]
    body = await signed_json(request)
    command = place_command(gateway, request, body)
    await gateway.claim_order(gateway.channels[command.channel_id], command.channel_id, command.api_order_no)
    return _answer(await gateway.decide(command, "place"), "place")


async def place_player_bet(request: web.Request) -> web.Response:
    """Seamless mode: debit the player's wallet, then place the bet (refunded if refused)."""
    gateway: Gateway = request.app[KEY_SETTINGS]
    body = await signed_json(request, roles=("player", "game", "admin"))
    command = place_command(gateway, request, body, debited=True)
    await gateway.claim_order(gateway.channels[command.channel_id], command.channel_id, command.api_order_no)
    try:
        outcome = await gateway.debit_and_place(command)
    except WalletUnavailable as error:
        return _problem(503, "wallet_unavailable",
                        f"{error.reason}; repeat the request with the same api_order_no to finish it")
    except WalletError as error:
        return _problem(502, "wallet_error", str(error))
    if isinstance(outcome, WalletResult):
        REQUESTS.labels(op="player_place", status="refused").inc()
        return web.json_response({"status": "refused", "api_order_no": command.api_order_no,
                                  "reason": outcome.reason or outcome.status}, status=409)
    gateway.in_background(gateway.mark_placed(command))   # bookkeeping, off the answer's path
    response = _answer(outcome, "player_place")
    if outcome.status != "accepted":
        body = json.loads(response.body)
        body["refund"] = "automatic"
        return web.json_response(body, status=response.status)
    return response


async def _bet_command(request: web.Request, kind: type[Command], op: str) -> web.Response:
    gateway: Gateway = request.app[KEY_SETTINGS]
    # The player page acts for its players too (seamless mode); the pipeline checks that the
    # user owns the bet.
    body = await signed_json(request, roles=("game", "player", "admin"))
    channel_id = request.match_info["channel_id"]
    gateway.channel_config(channel_id)
    api_order_no = request.match_info["api_order_no"]
    if not ORDER_NO.match(api_order_no):
        raise BadRequest(400, "bad_request", f"api_order_no must match {ORDER_NO.pattern}")
    user_id = _str_field(body, "user_id", USER_ID)
    command = kind(**gateway.command_fields(request, channel_id), api_order_no=api_order_no, user_id=user_id)
    return _answer(await gateway.decide(command, op), op)


async def cancel_bet(request: web.Request) -> web.Response:
    return await _bet_command(request, CancelBet, "cancel")


async def cashout_bet(request: web.Request) -> web.Response:
    return await _bet_command(request, CashoutBet, "cashout")


async def read_bet(request: web.Request) -> web.Response:
    gateway: Gateway = request.app[KEY_SETTINGS]
    await signed_json(request, roles=("game", "admin", "reader"))
    channel_id, api_order_no = request.match_info["channel_id"], request.match_info["api_order_no"]
    async with gateway.db.connect() as conn:
        row = (await conn.execute(text("SELECT * FROM bet WHERE channel_id = :c AND api_order_no = :o"),
                                  {"c": channel_id, "o": api_order_no})).first()
        if row is None:
            raise BadRequest(404, "not_found", f"no bet {api_order_no} on channel {channel_id} (yet)")
        bet = dict(row._mapping)
        history = await conn.execute(text(
            "SELECT status, ts, detail FROM bet_status_history WHERE bet_id = :b ORDER BY ts, status"),
            {"b": bet["bet_id"]})
        bet["history"] = [{"status": h.status, "ts": h.ts, "detail": json.loads(h.detail) if h.detail else None}
                          for h in history]
    bet["debited"] = bool(bet["debited"])
    return web.json_response(bet)


async def list_channels(request: web.Request) -> web.Response:
    gateway: Gateway = request.app[KEY_SETTINGS]
    return web.json_response({"channels": [
        {"channel_id": cid, "config": config, "term": gateway.live.get(cid)}
        for cid, config in sorted(gateway.channels.items())]})


async def channel_state(request: web.Request) -> web.Response:
    gateway: Gateway = request.app[KEY_SETTINGS]
    channel_id = request.match_info["channel_id"]
    config = gateway.channel_config(channel_id)
    return web.json_response({"channel_id": channel_id, "config": config, "term": gateway.live.get(channel_id),
                              "server_time": int(time.time() * 1000)})


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def metrics(request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


def make_app(settings: Settings | None = None) -> web.Application:
    settings = settings or get_settings()
    app = web.Application(client_max_size=MAX_BODY, middlewares=[stamp_and_guard])
    gateway = Gateway(settings)
    app[KEY_SETTINGS] = gateway

    async def lifecycle(app: web.Application):
        await gateway.start()
        yield
        await gateway.stop()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_post("/v1/bets", place_bet)
    app.router.add_post("/v1/player/bets", place_player_bet)
    app.router.add_post("/v1/channels/{channel_id}/bets/{api_order_no}/cancel", cancel_bet)
    app.router.add_post("/v1/channels/{channel_id}/bets/{api_order_no}/cashout", cashout_bet)
    app.router.add_get("/v1/channels/{channel_id}/bets/{api_order_no}", read_bet)
    app.router.add_get("/v1/channels", list_channels)
    app.router.add_get("/v1/channels/{channel_id}", channel_state)
    app.router.add_get("/v1/health", health)
    app.router.add_get("/metrics", metrics)
    return app


def main() -> None:
    settings = get_settings()
    logging.basicConfig(level=settings.log_level.upper(), format="[%(asctime)s] [%(levelname)s] %(name)s: %(message)s")
    web.run_app(make_app(settings), host=settings.gateway_host, port=settings.gateway_port, access_log=None)
