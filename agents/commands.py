"""The single consumer of game.command: one ordered stream per channel for the Term
Orchestrator and the Bet Service, so that bets, cancels, cashout requests, operator commands
and clock ticks of a channel are decided in one order by one writer (no locks, no races).

Also the clock: every worker sends a Tick per channel it owns when the channel's schedule has a
step due, every tick interval while a term flies, and once a second otherwise (tables may only
change inside a stream event, so time reaches the orchestrator as messages).
"""
from __future__ import annotations

import asyncio
import logging
import os
import time

from agents import bet_service, cashout_service, flight_clock, term_jackpot, term_orchestrator
from agents.context import CommandContext
from streams import metrics
from streams.app import app, settings
from streams.codec import encode
from streams.events import (
    COMMAND_TOPIC_RECORDS,
    AbortTerm,
    CancelBet,
    CashoutBet,
    ConfigureChannel,
    FeedJackpot,
    Message,
    PlaceBet,
    PublishChain,
    StartTerm,
    TermJackpotHit,
    TermRecorded,
    Tick,
)
from streams.processing import Batch, dead_letter, run_batches
from streams.topics import COMMAND, command_topic
from tables import channels
from tables.chain_store import chain_store

log = logging.getLogger(__name__)

GATEWAY_COMMANDS = (PlaceBet, CancelBet, CashoutBet)

HANDLERS = {
    PlaceBet: (bet_service.place_bet,),
    CancelBet: (bet_service.cancel_bet,),
    CashoutBet: (bet_service.request_cashout,),
    StartTerm: (term_orchestrator.start_term,),
    AbortTerm: (term_orchestrator.abort_term,),
    PublishChain: (term_orchestrator.publish_chain,),
    FeedJackpot: (term_orchestrator.feed_jackpot,),
    TermJackpotHit: (term_jackpot.on_hit,),
    TermRecorded: (bet_service.forget_recorded,),
    Tick: (bet_service.prune_due,),
}


async def handle_command(record: Message, event, batch: Batch) -> None:
    key = event.message.key or b""
    if key.decode(errors="replace") != record.channel_id:
        # A wrongly keyed message would land in another channel's partition and tables.
        dead_letter(batch, event, f"key {key!r} does not match channel_id {record.channel_id!r}", "commands")
        return
    ctx = CommandContext(batch, record.channel_id, event.message.partition,
                         batch.staged.get(channels, record.channel_id), event.message.offset)
    if isinstance(record, ConfigureChannel):
        if ctx.channel_or_none is not None:
            _advance_clock(ctx, record)
        await term_orchestrator.configure_channel(ctx, record)
        if ctx.channel_or_none is not None:
            ctx.save_channel()
        return
    if ctx.channel_or_none is None:
        if isinstance(record, GATEWAY_COMMANDS):
            bet_service.refuse(ctx, record, "unknown_channel", api_order_no=record.api_order_no)
        return
    if record.ts > batch.now + settings.clock_tolerance_ms:
        if isinstance(record, GATEWAY_COMMANDS):
            metrics.BET_DECISIONS.labels(outcome="refused", reason="clock_skew").inc()
            bet_service.refuse(ctx, record, "clock_skew", api_order_no=record.api_order_no)
        return
    _advance_clock(ctx, record)
    await term_orchestrator.advance(ctx)
    for handler in HANDLERS.get(type(record), ()):
        await handler(ctx, record)
    ctx.save_channel()


def _before_batch() -> None:
    bet_service.order_index.before_batch()
    cashout_service.books.before_batch()


def _advance_clock(ctx: CommandContext, record: Message) -> None:
    # The channel's time is the newest command time seen, but never ahead of this worker's
    # clock: a command stamped slightly in the future must not end a term early.
    ctx.channel.clock = max(ctx.channel.clock, min(record.ts, ctx.batch.now))


@app.agent(command_topic)
async def command_processor(stream):
    await run_batches(stream, "commands", handle_command, expected=COMMAND_TOPIC_RECORDS, max_batch=500,
                      before_batch=_before_batch, after_batch=term_jackpot.emit_contributions,
                      after_commit=flight_clock.after_commit)


# ---------------------------------------------------------------- the clock

def owned_partitions() -> set[int]:
    topic = settings.topic(COMMAND)
    return {tp.partition for tp in app.assignor.assigned_actives() if tp.topic == topic}


def owned_channels() -> list[tuple[str, object]]:
    partitions = owned_partitions()
    if not partitions:
        return []
    return [(channel_id, state) for channel_id, state in channels.items() if state.partition in partitions]


# Watchdog: channel -> (its clock as last seen in the table, when that value was first seen).
# The clock moves with every processed tick; if it stands still for STALL_AFTER_S while this
# worker keeps sending ticks, the channel's command stream is not being consumed (a consumer
# wedged after a rebalance): the worker exits so that it is restarted and the partitions are
# assigned again, instead of silently freezing the channel. Only time during which the broker
# acknowledges the ticks counts: through a broker outage nothing is consumed by anyone, a
# restart would not help, and every worker would otherwise exit at the same moment.
STALL_AFTER_S = 60.0
BROKER_SILENT_S = 5.0       # no tick acknowledged for this long: the broker is away, not the consumer
_progress: dict[str, tuple[int, float]] = {}
_last_ack = {"at": time.monotonic()}


def _tick_acknowledged(sent: asyncio.Future) -> None:
    if not sent.cancelled() and sent.exception() is None:
        _last_ack["at"] = time.monotonic()


def _forget_progress(*args, **kwargs) -> None:
    _progress.clear()


app.on_partitions_assigned.connect(_forget_progress)


def _check_progress(channel_id: str, clock: int) -> None:
    now = time.monotonic()
    seen = _progress.get(channel_id)
    broker_away = now - _last_ack["at"] > BROKER_SILENT_S
    if seen is None or seen[0] != clock or broker_away or chain_store().waiting_since is not None:
        _progress[channel_id] = (clock, now)
        return
    if now - seen[1] > STALL_AFTER_S:
        metrics.COMMAND_STALLS.inc()
        log.critical("channel %s: no command processed for %.0f s although ticks are sent; the consumer is "
                     "stuck, exiting so that the worker is restarted", channel_id, now - seen[1])
        logging.shutdown()
        os._exit(75)


# A channel Ticks at every interval while its term flies and once its schedule's next step is
# due (ChannelState.wake_at), so a step is taken at the first interval at or after its time, as
# when every interval ticked; otherwise once a second (order pruning, the watchdog's progress).
# An idle channel's 20 Ticks a second cost a worker ~0.03-0.08 s of CPU a second (a Tick is a
# command with its batch, its changelog writes and its fetch; a probe with 0, 1 and 5 idle
# channels), which every channel taking bets in a long window paid for nothing.
HEARTBEAT_MS = 1000
_last_tick: dict[str, int] = {}


@app.timer(interval=settings.tick_interval_ms / 1000)
async def clock_ticks() -> None:
    now = int(time.time() * 1000)
    for channel_id, state in owned_channels():
        if now >= state.wake_at or now - _last_tick.get(channel_id, 0) >= HEARTBEAT_MS:
            _last_tick[channel_id] = now
            tick = Tick(event_id=f"tick.{channel_id}.{now}", channel_id=channel_id, ts=now)
            sent = await command_topic.send(key=channel_id.encode(), value=encode(tick))
            sent.add_done_callback(_tick_acknowledged)
        _check_progress(channel_id, state.clock)


_renewing: set[tuple[str, int]] = set()


@app.timer(interval=5.0)
async def chain_keeper() -> None:
    """Publish each owned channel's next fairness chain before the current one runs out."""
    for channel_id, state in owned_channels():
        if not term_orchestrator.chain_needs_renewal(state):
            continue
        chain_no = state.chain_no + 1
        if (channel_id, chain_no) in _renewing:
            continue
        _renewing.add((channel_id, chain_no))
        try:
            chain = await chain_store().create(channel_id, chain_no, state.config["chain_length"])
            now = int(time.time() * 1000)
            command = PublishChain(
                event_id=f"chain.{channel_id}.{chain_no}", channel_id=channel_id, ts=now,
                chain_no=chain_no, length=chain.length, terminator=chain.terminator.hex(), salt=chain.salt.hex())
            await command_topic.send(key=channel_id.encode(), value=encode(command))
            log.info("channel %s: chain %s published (terminator %s)", channel_id, chain_no, chain.terminator.hex())
        except Exception:
            log.exception("channel %s: could not publish chain %s; will retry", channel_id, chain_no)
            _renewing.discard((channel_id, chain_no))
