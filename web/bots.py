"""`crash-bots`: bot players, the demo's load generator.

N bot players (`bot-<seed>-<i>`) bet on the channels' live terms through the bet API, at an
overall rate of about R bets/s while betting windows are open (DESIGN sections 5, 8, 9):

- `seamless` mode (players on our page): `POST /v1/player/bets`, signed with the key whose role
  is `player`; the gateway debits the player's wallet first, so players are funded beforehand
  through the wallet's admin API (key with role `admin`), and their balances move as they play;
- `transfer` mode: `POST /v1/bets`, signed with the key whose role is `game`; the operator's
  platform has already debited the player.

With `--push URL` each channel is followed over the push gateway's WebSocket (`crash-push`:
a snapshot, then the term's changes as they happen), as the player's page does; without it, one
poller per channel follows `GET /v1/channels/{id}` (~every 100 ms). Either way the bots
estimate the offset of the server's clock. Manual bets cash out when the multiplier computed locally (from the term's
`flying_at` and the channel's growth) reaches the player's private target; some are too late,
which is part of the game. Answers are counted by outcome and reason; a 503 or a lost connection
is retried with the same api_order_no (the pipeline answers a repeat with its first decision).
A report line every 5 s, a JSON summary on exit (SIGINT/SIGTERM or --duration).

Here: the players and the report. The command line: web/bot_options.py; a channel's and its
term's state (bet slots, the betting window) and the random draws: web/bot_play.py; the bet API
client, its backoff and the server clock: web/bot_client.py; the counts and latencies:
web/bot_stats.py; the players' wallet balances (seamless mode): web/bot_funding.py.
"""
from __future__ import annotations

import asyncio
import itertools
import json
import logging
import random
import secrets
import signal
import sys
import time
from collections.abc import Coroutine
from typing import Any

import aiohttp
from yarl import URL

from streams import money
from streams.settings import Settings, get_settings
from web.bot_client import BetApi, Health, ServerClock, retry_delay
from web.bot_funding import BALANCE_SAMPLE, Funding
from web.bot_options import ConfigurationError, Options, key_for_role, parse_args
from web.bot_play import Channel, TermPlay, heavy_tailed_target, log_uniform_stake
from web.bot_stats import OPS, Stats
from web.wallet_client import WalletClient, WalletRejected

log = logging.getLogger("crash.bots")

POLL_S = 0.1                 # one poll per channel every ~100 ms, shared by all players
REPORT_S = 5.0
PLACER_TICK_S = 0.01         # the token bucket is refilled and spent every 10 ms
BURST_S = 0.05               # bucket size: 50 ms worth of bets (a window opening is not a flood)
AUTO_SHARE = 0.6
CANCEL_SHARE = 0.1
CANCEL_DELAY_S = (0.05, 0.3)
ENDED = frozenset({"crashed", "closed", "aborted"})
EXIT_CONFIG = 2


# ---------------------------------------------------------------- the bots

class Bots:
    def __init__(self, opts: Options, settings: Settings) -> None:
        self.opts = opts
        self.settings = settings
        self.seamless = opts.mode == "seamless"
        if self.seamless:
            self.key = key_for_role(settings.api_keys, "player", "player-page")
            self.admin_key = key_for_role(settings.api_keys, "admin", "admin")
        else:
            self.key = key_for_role(settings.api_keys, "game", "operator")
        self.rng = random.Random(opts.seed)
        self.run_id = secrets.token_hex(4)      # order numbers stay unique when a seed is reused
        self.players = [f"bot-{opts.seed}-{i}" for i in range(opts.players)]
        self.stats = Stats()
        self.health = Health()
        self.clock = ServerClock()
        self.channels: dict[str, Channel] = {}
        self.stop = asyncio.Event()
        self.fatal: str | None = None
        self.tasks: set[asyncio.Task] = set()          # bets, cancels, cashouts, refills
        self.background: list[asyncio.Task] = []       # pollers, discovery, placer, reporter
        self.placing = 0
        self.orders = 0
        self._currency: dict[tuple[int, str], str] = {}
        self.load_started: float | None = None
        self.load_ended: float | None = None
        self.started = time.monotonic()
        self.api: BetApi
        self.funding: Funding | None = None            # seamless mode

    # ------------------------------------------------------------ running

    def request_stop(self) -> None:
        if not self.stop.is_set():
            log.info("stopping: letting requests in flight finish (up to %.0f s)", self.opts.drain)
        self.stop.set()

    def spawn(self, coro: Coroutine[Any, Any, None], background: bool = False) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        if background:
            self.background.append(task)
        else:
            self.tasks.add(task)
        task.add_done_callback(self._task_done)   # a failing task must not die silently
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.stats.bot_errors += 1
            log.error("bot task failed", exc_info=task.exception())

    async def run(self) -> dict[str, Any]:
        connector = aiohttp.TCPConnector(limit=self.opts.connections)
        timeout_s = self.settings.decision_timeout_ms / 1000 + 10   # the gateway answers 503 before that
        async with aiohttp.ClientSession(connector=connector) as session:
            self.api = BetApi(session, self.opts.gateway, self.key, self.stats, self.health, timeout_s)
            if self.seamless:
                wallet = WalletClient(self.opts.wallet, *self.admin_key, timeout_s=5.0, session=session)
                self.funding = Funding(wallet, self.players, self.opts.balance, self.opts.refill_below, self.stats)
            log.info("%d players, %s bets/s, %s mode, key %s, gateway %s", len(self.players), self.opts.rate,
                     self.opts.mode, self.key[0], self.opts.gateway)
            self.spawn(self.discover(), background=True)
            self.spawn(self.place_loop(), background=True)
            if not self.opts.quiet:
                self.spawn(self.report_loop(), background=True)
            try:
                await asyncio.wait_for(self.stop.wait(), self.opts.duration)
            except TimeoutError:
                pass
            self.stop.set()
            self.load_ended = time.monotonic()
            if self.tasks:
                _, pending = await asyncio.wait(set(self.tasks), timeout=self.opts.drain)
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
            for task in self.background:
                task.cancel()
            await asyncio.gather(*self.background, return_exceptions=True)
            balances = await self.funding.sample_balances(self._currency) \
                if self.funding is not None and self.fatal is None else None
        return self.summary(balances)

    # ------------------------------------------------------------ channels

    async def discover(self) -> None:
        """Follow the requested channels, or every channel the gateway knows (new ones too)."""
        if self.opts.channels:
            for channel_id in self.opts.channels:
                self.add_channel(channel_id)
            return
        waiting_logged = False
        while not self.stop.is_set():
            try:
                status, data = await self.api.get("/v1/channels")
            except (aiohttp.ClientError, TimeoutError) as error:
                self.stats.poll_errors += 1
                log.warning("GET /v1/channels: %s: %s", type(error).__name__, error)
                await asyncio.sleep(self.health.failed())
                continue
            self.health.ok()
            ids = [c["channel_id"] for c in (data or {}).get("channels", []) if isinstance(c, dict)] \
                if status == 200 else []
            for channel_id in ids:
                self.add_channel(channel_id)
            if not self.channels and not waiting_logged:
                log.info("waiting for the gateway to know a channel (GET /v1/channels: HTTP %d)", status)
                waiting_logged = True
            await asyncio.sleep(1.0 if not self.channels else 10.0)

    def add_channel(self, channel_id: str) -> None:
        if channel_id in self.channels:
            return
        channel = Channel(channel_id)
        self.channels[channel_id] = channel
        log.info("following channel %s", channel_id)
        self.spawn(self.follow_push(channel) if self.opts.push else self.follow(channel), background=True)

    async def follow(self, channel: Channel) -> None:
        """The channel's one poller: config, live term and the server's clock, every ~100 ms."""
        path = f"/v1/channels/{channel.id}"
        missing_logged = False
        while True:
            started = time.monotonic()
            sent_ms = time.time() * 1000
            try:
                status, data = await self.api.get(path)
            except (aiohttp.ClientError, TimeoutError):
                self.stats.poll_errors += 1
                await asyncio.sleep(self.health.failed())
                continue
            self.health.ok()
            if status == 200 and isinstance(data, dict):
                if isinstance(data.get("server_time"), int):
                    self.clock.sample(sent_ms, time.time() * 1000, data["server_time"])
                self.on_channel_state(channel, data)
            else:
                if not missing_logged:
                    log.warning("GET %s: HTTP %d %s (retrying every second)", path, status, data)
                    missing_logged = True
                await asyncio.sleep(1.0)
                continue
            await asyncio.sleep(max(0.0, POLL_S - (time.monotonic() - started)))

    async def follow_push(self, channel: Channel) -> None:
        """The channel over the push gateway's WebSocket: the snapshot, then its deltas; the
        server time of each frame bounds the clock offset (it was sent before it arrived)."""
        url = URL(self.opts.push.replace("http", "ws", 1) + f"/ws/channel/{channel.id}")
        for attempt in itertools.count():
            try:
                async with self.api.session.ws_connect(url, heartbeat=20, max_msg_size=0) as ws:
                    await ws.send_str('{"t":"hello"}')
                    async for message in ws:
                        if message.type != aiohttp.WSMsgType.TEXT:
                            break
                        self.on_push_frame(channel, json.loads(message.data))
            except (aiohttp.ClientError, TimeoutError, ValueError) as error:
                if attempt < 3 or attempt % 20 == 0:
                    log.warning("push %s: %s: %s", url, type(error).__name__, error)
            self.stats.poll_errors += 1
            channel.term = None            # nothing is known until the next snapshot
            await asyncio.sleep(retry_delay(min(attempt + 1, 5)))

    def on_push_frame(self, channel: Channel, frame: dict[str, Any]) -> None:
        if isinstance(frame.get("ts"), int):
            self.clock.sample_one_way(frame["ts"], time.time() * 1000)
        if frame.get("t") == "hello":
            view = frame.get("channel") or {}
            self.on_channel_state(channel, {"config": view.get("config"), "term": view.get("term")})
        elif frame.get("t") == "delta":
            for op in frame.get("ops", []):
                if op.get("k") == "term":
                    self.on_channel_state(channel, {"config": channel.config, "term": op["term"]})
                elif op.get("k") == "config":
                    self.on_channel_state(channel, {"config": op["config"], "term": channel.term})
        elif frame.get("t") == "error":
            log.warning("push gateway refused channel %s: %s", channel.id, frame.get("reason"))

    def on_channel_state(self, channel: Channel, data: dict[str, Any]) -> None:
        config = data.get("config")
        if isinstance(config, dict) and config != channel.config:
            channel.config = config
            if self.seamless:
                self.fund_channel(channel)
            else:
                channel.funded = True
        term = data.get("term")
        channel.term = term if isinstance(term, dict) and term.get("term_id") else None
        if (channel.term is not None and channel.config is not None
                and (channel.play is None or channel.play.term_id != channel.term["term_id"])):
            config = channel.config
            limits = [config["currencies"][self.currency_of(i, channel)]["max_bets_per_user"]
                      for i in range(len(self.players))]
            channel.play = TermPlay(channel.term["term_id"], config, limits)

    def currency_of(self, player: int, channel: Channel) -> str:
        """The currency a player uses on a channel: a stable random choice among the channel's."""
        assert channel.config is not None
        currencies = sorted(channel.config["currencies"])
        current = self._currency.get((player, channel.id))
        if current not in currencies:
            current = random.Random(f"{self.opts.seed}/{player}/{channel.id}").choice(currencies)
            self._currency[(player, channel.id)] = current
        return current

    # ------------------------------------------------------------ wallet (seamless mode)

    def fund_channel(self, channel: Channel) -> None:
        channel.funded = False
        if channel.funding is not None and not channel.funding.done():
            channel.funding.cancel()
        channel.funding = self.spawn(self._fund_channel(channel), background=True)

    async def _fund_channel(self, channel: Channel) -> None:
        """Before betting on a channel: every player holds at least the threshold in its currency."""
        assert self.funding is not None
        pairs = {(i, self.currency_of(i, channel)) for i in range(len(self.players))}
        try:
            checked = await self.funding.fund(pairs)
        except WalletRejected as error:
            self.fatal = f"the wallet refuses the bots' admin key: {error}"
            log.error("%s", self.fatal)
            self.request_stop()
            return
        channel.funded = True
        if checked:
            log.info("channel %s: %d player accounts checked, %d funded to %d", channel.id, checked,
                     self.stats.funded, self.opts.balance)

    # ------------------------------------------------------------ betting

    async def place_loop(self) -> None:
        """A token bucket at --rate over all channels whose betting window is open."""
        rate = self.opts.rate
        capacity = max(1.0, rate * BURST_S)
        max_placing = self.opts.connections * 4
        tokens, last = 0.0, time.monotonic()
        while not self.stop.is_set():
            now = time.monotonic()
            tokens = min(capacity, tokens + (now - last) * rate)
            last = now
            if self.load_started is None and any(c.funded and c.play for c in self.channels.values()):
                self.load_started = now     # the load period starts when bots can first bet
            if tokens >= 1 and not self.health.down and self.placing < max_placing:
                server_now = self.clock.now_ms()
                open_channels = [c for c in self.channels.values() if c.betting_open(server_now)]
                while tokens >= 1 and open_channels:
                    k = self.rng.randrange(len(open_channels))
                    channel = open_channels[k]
                    assert channel.play is not None
                    player = channel.play.take(self.rng)
                    if player is None:   # every player is at max_bets_per_user here: place what is allowed
                        open_channels[k] = open_channels[-1]
                        open_channels.pop()
                        continue
                    tokens -= 1
                    self.placing += 1
                    self.spawn(self.bet(channel, channel.play, player))
            await asyncio.sleep(PLACER_TICK_S)

    def next_order_no(self) -> str:
        self.orders += 1
        return f"bot-{self.opts.seed}-{self.run_id}-{self.orders}"

    async def bet(self, channel: Channel, play: TermPlay, player: int) -> None:
        """One bet: place it; maybe cancel it; if manual, cash out at the player's private target."""
        config = play.config
        currency = self.currency_of(player, channel)
        limits = config["currencies"][currency]
        user_id = self.players[player]
        api_order_no = self.next_order_no()
        body: dict[str, Any] = {"channel_id": channel.id, "api_order_no": api_order_no, "user_id": user_id,
                                "amount": log_uniform_stake(self.rng, limits["min_bet"], limits["max_bet"]),
                                "currency": currency}
        target = heavy_tailed_target(self.rng, config["max_multiple_x100"])
        manual = self.rng.random() >= AUTO_SHARE
        if manual:
            body["bet_type"] = "manual"
        else:
            body.update(bet_type="auto", auto_cashout_x100=target)
        cancel = self.rng.random() < CANCEL_SHARE
        try:
            answer = await self.api.command("place", "/v1/player/bets" if self.seamless else "/v1/bets", body)
        finally:
            self.placing -= 1
        if answer is None or not answer.accepted:
            play.release(player)
            if answer is not None and answer.reason == "insufficient_funds" and self.funding is not None:
                self.spawn(self.funding.refill(player, currency))
            return
        self.stats.accepted_by_channel[channel.id] += 1
        self.stats.staked[currency] += body["amount"]
        if self.opts.record_bets:
            self.stats.accepted_bets.append((channel.id, api_order_no))
        bet_path = f"/v1/channels/{channel.id}/bets/{api_order_no}"
        if cancel:
            await asyncio.sleep(self.rng.uniform(*CANCEL_DELAY_S))
            answer = await self.api.command("cancel", f"{bet_path}/cancel", {"user_id": user_id})
            if answer is not None and answer.accepted:
                play.release(player)
                return
        if manual:
            await self.cash_out_at(channel, play, bet_path, user_id, currency, target)

    async def cash_out_at(self, channel: Channel, play: TermPlay, bet_path: str, user_id: str, currency: str,
                          target_x100: int) -> None:
        """Watch the local curve and cash out when it reaches the target (if the term is still flying)."""
        due_ms = money.ms_to_reach(target_x100, play.growth)
        while True:
            term = channel.term_view(play.term_id)
            if term is None:
                self.stats.missed_cashouts["term_over"] += 1
                return
            if term.get("state") in ENDED:
                self.stats.missed_cashouts[str(term["state"])] += 1
                return
            # flying_at is re-read every time: a manual start shifts the schedule.
            wait_ms = term["flying_at"] + due_ms - self.clock.now_ms()
            if wait_ms <= 0:
                break
            await asyncio.sleep(min(wait_ms / 1000, POLL_S))
        answer = await self.api.command("cashout", f"{bet_path}/cashout", {"user_id": user_id})
        if answer is not None and answer.accepted and isinstance(answer.body.get("payout"), int):
            self.stats.cashout_payout[currency] += answer.body["payout"]

    # ------------------------------------------------------------ reporting

    async def report_loop(self) -> None:
        while True:
            await asyncio.sleep(REPORT_S)
            balances = await self.funding.sample_balances(self._currency) if self.funding is not None else None
            print(self.report_line(balances), flush=True)

    def report_line(self, balances: dict[str, Any] | None) -> str:
        window, seconds = self.stats.new_window()
        place, cashout = self.stats.total["place"], self.stats.total["cashout"]
        reasons = ", ".join(f"{r} {n}" for r, n in place.refused.most_common(3))
        latency = window["place"].latency
        p50, p99 = latency.quantile(0.5), latency.quantile(0.99)
        parts = [
            f"bets {place.sent} sent, {place.accepted} accepted, {sum(place.refused.values())} refused"
            + (f" ({reasons})" if reasons else "") + (f", {place.failed} failed" if place.failed else ""),
            f"{window['place'].accepted / max(seconds, 1e-9):.1f} accepted/s",
            f"cashouts {cashout.accepted} ok, {sum(cashout.refused.values())} refused",
            "decision p50 " + ("-" if p50 is None else f"{p50:.1f} ms")
            + " p99 " + ("-" if p99 is None else f"{p99:.1f} ms"),
        ]
        errors = sum(self.stats.http_5xx.values()) + sum(self.stats.unexpected_4xx.values())
        if errors or self.stats.connection_errors:
            parts.append(f"errors {errors} HTTP, {self.stats.connection_errors} connection")
        if balances is not None:
            sums = balances.get("sum_by_currency")
            parts.append("balances " + (", ".join(f"{c} {v:,}" for c, v in sorted(sums.items())) if sums
                                        else str(balances.get("error"))) + f" ({BALANCE_SAMPLE} players)")
        return f"[{time.strftime('%H:%M:%S')}] " + " | ".join(parts)

    def summary(self, balances: dict[str, Any] | None) -> dict[str, Any]:
        s = self.stats
        end = self.load_ended or time.monotonic()
        load_s = end - self.load_started if self.load_started is not None else 0.0
        place = s.total["place"]
        summary: dict[str, Any] = {
            "mode": self.opts.mode, "gateway": self.opts.gateway, "key_id": self.key[0],
            "follow": f"push {self.opts.push}" if self.opts.push else "poll",
            "players": len(self.players), "rate": self.opts.rate, "seed": self.opts.seed, "run_id": self.run_id,
            "player_prefix": f"bot-{self.opts.seed}-", "channels": sorted(self.channels),
            "elapsed_s": round(time.monotonic() - self.started, 3), "load_s": round(load_s, 3),
            # The demo's first "bets/s sustained" figure: accepted bets over the whole load period.
            "accepted_bets_per_s": round(place.accepted / load_s, 2) if load_s > 0 else 0.0,
            "bets": s.total["place"].as_dict(), "cancels": s.total["cancel"].as_dict(),
            "cashouts": {**s.total["cashout"].as_dict(), "missed": dict(s.missed_cashouts),
                         "payout_by_currency": dict(s.cashout_payout)},
            "accepted_by_channel": dict(s.accepted_by_channel), "staked_by_currency": dict(s.staked),
            "latency_ms": {op: s.total[op].latency.summary() for op in OPS},
            "errors": {"http_5xx": dict(s.http_5xx), "unexpected_4xx": dict(s.unexpected_4xx),
                       "connection": s.connection_errors, "gave_up": dict(s.gave_up), "poll": s.poll_errors,
                       "bot": s.bot_errors},
            "clock_offset_ms": round(self.clock.offset_ms, 1),
        }
        if self.seamless:
            summary["funding"] = {"balance": self.opts.balance, "refill_below": self.opts.refill_below,
                                  "funded": s.funded, "refills": s.refills}
            summary["balances"] = balances
        if self.fatal:
            summary["fatal"] = self.fatal
        return summary


async def _run(opts: Options, settings: Settings) -> tuple[dict[str, Any], Bots]:
    bots = Bots(opts, settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, bots.request_stop)
    return await bots.run(), bots


def main(argv: list[str] | None = None) -> None:
    settings = get_settings()
    opts = parse_args(argv, settings)
    logging.basicConfig(level=settings.log_level.upper(), format="[%(asctime)s] [%(levelname)s] %(name)s: %(message)s",
                        stream=sys.stderr)
    try:
        summary, bots = asyncio.run(_run(opts, settings))
    except ConfigurationError as error:
        print(f"crash-bots: {error}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    if opts.report_json:
        full = dict(summary)
        if opts.record_bets:
            full["accepted_bets"] = [list(bet) for bet in bots.stats.accepted_bets]
        with open(opts.report_json, "w") as out:
            json.dump(full, out, indent=2, sort_keys=True)
    print(json.dumps(summary, indent=2, sort_keys=True), flush=True)
    if bots.fatal:
        print(f"crash-bots: {bots.fatal}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)


if __name__ == "__main__":  # pragma: no cover
    main()
