"""Term Orchestrator (seed: 期编排单写者): runs each channel's terms back to back.

pre_start -> starting -> flying -> crashed -> closed, or -> aborted -> closed (operator void).
The schedule is fixed when a term is created; the channel's clock (the newest command time
seen, never ahead of the wall clock) drives it, so a worker that takes a channel over after a
crash replays the same transitions at their scheduled times: a term whose crash time passed
while nobody owned it crashes at its committed point, marked `recovered`.

The crash point of a running term is derived from the secret chain (tables.chain_store) into
this process's memory only; it reaches a topic or a table only in TermCrashed/TermAborted.

The ticks of a flying term are sent by agents/flight_clock.py, on their slots. Besides game.term,
the orchestrator writes two markers on game.bet, ordered with the bets, as the cashout book's
input: BookMark (the bet stream's watermark while flying: autos are paid up to it) and
BetsSealed (the term's end, after the grace time: the book settles it, and the term is closed
with the settlement's totals in the same step).
"""
from __future__ import annotations

import logging

from agents import flight_clock, term_jackpot
from agents.context import CommandContext
from streams import fairness, metrics, money
from streams.channels import ConfigError, growth, validate
from streams.events import (
    AbortTerm,
    BetsSealed,
    BookMark,
    ChainPublished,
    ChannelConfigured,
    ConfigureChannel,
    FeedJackpot,
    PublishChain,
    StartTerm,
    TermAborted,
    TermClosed,
    TermCrashed,
    TermCreated,
    TermSettled,
    TermStateChanged,
)
from tables import ChannelState, TermState, channels, terms
from tables.chain_store import chain_store

log = logging.getLogger(__name__)

ENDED = ("crashed", "aborted", "closed")
NO_STEP = 2**62               # ChannelState.wake_at when nothing is scheduled
# A crash processed this much later than its scheduled time was settled by a takeover.
RECOVERED_AFTER_MS = 2000
# A term due while the worker was held up (a pause, a slow broker ack) keeps its scheduled
# creation time, so terms stay back to back; after a longer outage (a takeover, a restart) it
# starts "now" instead of with a betting window already spent.
MAX_CREATE_DELAY_MS = 5000

# term_id -> proof (hash, digest, crash point). Process memory only: see module docstring.
_proofs: dict[str, fairness.TermProof] = {}


async def _proof(term: TermState) -> fairness.TermProof:
    proof = _proofs.get(term.term_id)
    if proof is None:
        chain = await chain_store().get(term.channel_id, term.chain_no)
        proof = fairness.prove(chain, term.chain_index, term.config["edge_bps"], term.config["max_multiple_x100"])
        _proofs[term.term_id] = proof
    return proof


def _crash_at(term: TermState, proof: fairness.TermProof) -> int:
    return term.flying_at + money.ms_to_reach(proof.crash_x100, growth(term.config))


def _caps(config: dict) -> dict[str, int]:
    return {code: limits["max_payout_per_term"] for code, limits in config["currencies"].items()}


def _pause_after_end(config: dict) -> int:
    # Never create the next term before this one's bet stream is sealed.
    return max(config["cooldown_ms"], config["grace_ms"] + 1)


# ---------------------------------------------------------------- the schedule

async def advance(ctx: CommandContext) -> None:
    """Drive the channel's current term along its schedule up to the channel's clock, and note
    when the schedule has its next step (`ChannelState.wake_at`, read by the clock)."""
    ctx.channel.wake_at = _next_step(await _advance(ctx))


async def _advance(ctx: CommandContext) -> TermState | None:
    channel = ctx.channel
    clock = channel.clock
    term = ctx.term()
    while True:
        if term is None or (term.state in ENDED and term.book_sealed and term.next_term_at is not None
                            and clock >= term.next_term_at):
            created = _create_term(ctx, term)
            if created is None:
                return term
            term = created
            continue
        if term.state == "pre_start" and clock >= term.bets_close_at:
            _change_state(ctx, term, "starting", term.bets_close_at)
            continue
        if term.state == "starting" and clock >= term.flying_at:
            _change_state(ctx, term, "flying", term.flying_at)
            _mark(ctx, term, term.flying_at)
            continue
        if term.state == "flying":
            proof = await _proof(term)
            crash_at = _crash_at(term, proof)
            if clock >= crash_at:
                _crash(ctx, term, proof, crash_at)
                continue
            _progress(ctx, term, crash_at)
            return term
        if term.state in ("crashed", "aborted") and not term.book_sealed:
            if clock >= term.ended_at + term.config["grace_ms"]:
                await _seal(ctx, term)
                continue
        return term


def _next_step(term: TermState | None) -> int:
    """The channel time of the schedule's next step: 0 while the term flies (every tick pays the
    autos due and may crash it), NO_STEP when only a command can move it (no term yet: the chain
    ran out before the first). A chain that runs out after a term leaves that term's next-term
    time, already past, so the channel ticks at every interval until a chain is published."""
    if term is None:
        return NO_STEP
    if term.state == "pre_start":
        return term.bets_close_at
    if term.state == "starting":
        return term.flying_at
    if term.state == "flying":
        return 0
    if not term.book_sealed:
        return term.ended_at + term.config["grace_ms"]
    return term.next_term_at if term.next_term_at is not None else NO_STEP


def _create_term(ctx: CommandContext, previous: TermState | None) -> TermState | None:
    channel = ctx.channel
    index = channel.chain_index + 1
    prev_hash = channel.last_revealed or channel.chain_terminator
    if index > channel.chain_length:
        nxt = channel.next_chain
        if not nxt:
            metrics.CHAIN_EXHAUSTED.labels(channel=channel.channel_id).inc()
            log.error("channel %s: chain %s is used up and no next chain is published",
                      channel.channel_id, channel.chain_no)
            return None
        channel.chain_no, channel.chain_length = nxt["chain_no"], nxt["length"]
        channel.chain_terminator, channel.chain_salt = nxt["terminator"], nxt["salt"]
        channel.next_chain = None
        index, prev_hash = 1, channel.chain_terminator
    clock = channel.clock
    scheduled = previous.next_term_at if previous is not None and previous.next_term_at else clock
    created_at = scheduled if clock - scheduled <= MAX_CREATE_DELAY_MS else clock
    config = channel.config
    seq = channel.seq + 1
    term = TermState(
        term_id=f"{channel.channel_id}-{seq}", channel_id=channel.channel_id, seq=seq,
        chain_no=channel.chain_no, chain_index=index, prev_hash=prev_hash, salt=channel.chain_salt,
        state="pre_start",
        state_version=1, config=config, created_at=created_at,
        bets_close_at=created_at + config["betting_ms"],
        flying_at=created_at + config["betting_ms"] + config["starting_ms"])
    channel.seq, channel.chain_index, channel.current_term_id = seq, index, term.term_id
    ctx.save_term(term)
    if previous is not None and previous.state == "closed":
        ctx.delete_term(previous)
    ctx.emit_term(TermCreated(
        event_id=f"{term.term_id}.created", channel_id=term.channel_id, term_id=term.term_id, ts=created_at,
        trace_id=term.term_id, seq=seq, chain_no=term.chain_no, chain_index=index, prev_hash=prev_hash,
        created_at=created_at, bets_close_at=term.bets_close_at, flying_at=term.flying_at, config=config))
    metrics.TERM_TRANSITIONS.labels(state="pre_start").inc()
    return term


def _change_state(ctx: CommandContext, term: TermState, state: str, at: int) -> None:
    term.state = state
    term.state_version += 1
    ctx.save_term(term)
    ctx.emit_term(TermStateChanged(
        event_id=f"{term.term_id}.{state}", channel_id=term.channel_id, term_id=term.term_id, ts=at,
        trace_id=term.term_id, state=state, bets_close_at=term.bets_close_at, flying_at=term.flying_at,
        state_version=term.state_version, manual=term.manual_start))
    metrics.TERM_TRANSITIONS.labels(state=state).inc()
    metrics.TERM_LAG_MS.observe(max(0, ctx.batch.now - at))


def _mark(ctx: CommandContext, term: TermState, mark_at: int) -> None:
    term.last_mark = mark_at
    ctx.save_term(term)
    ctx.emit_book(BookMark(
        event_id=f"{term.term_id}.mark.{mark_at}", channel_id=term.channel_id, term_id=term.term_id,
        ts=mark_at, trace_id=term.term_id, mark_at=mark_at, flying_at=term.flying_at,
        growth_per_ms=term.config["growth_per_ms"], caps=_caps(term.config)))


def _progress(ctx: CommandContext, term: TermState, crash_at: int) -> None:
    """While flying: move the bet stream's watermark; the flight clock sends the ticks."""
    mark = min(ctx.channel.clock - term.config["grace_ms"], crash_at - 1)
    if mark > term.last_mark:
        _mark(ctx, term, mark)
    flight_clock.fly(ctx.batch, term.term_id, term.channel_id, term.flying_at, crash_at, term.config["tick_ms"],
                     growth(term.config))


def _reveal(ctx: CommandContext, term: TermState, proof: fairness.TermProof, ended_at: int, end_x100: int) -> None:
    term.ended_at, term.end_x100 = ended_at, end_x100
    term.crash_x100, term.revealed_hash, term.hmac_digest = proof.crash_x100, proof.hash_hex, proof.digest_hex
    term.next_term_at = ended_at + _pause_after_end(term.config)
    term.state_version += 1
    ctx.channel.last_revealed = proof.hash_hex
    flight_clock.land(ctx.batch, term.channel_id)
    _proofs.pop(term.term_id, None)
    ctx.save_term(term)


def _crash(ctx: CommandContext, term: TermState, proof: fairness.TermProof, crash_at: int) -> None:
    term.state, term.crash_at = "crashed", crash_at
    term.recovered = ctx.batch.now - crash_at > RECOVERED_AFTER_MS
    _reveal(ctx, term, proof, crash_at, proof.crash_x100)
    ctx.emit_term(TermCrashed(
        event_id=f"{term.term_id}.crashed", channel_id=term.channel_id, term_id=term.term_id, ts=crash_at,
        trace_id=term.term_id, crash_x100=proof.crash_x100, crash_at=crash_at, flying_at=term.flying_at,
        chain_no=term.chain_no, chain_index=term.chain_index, revealed_hash=proof.hash_hex,
        salt=term.salt, hmac_digest=proof.digest_hex, state_version=term.state_version,
        recovered=term.recovered))
    metrics.TERM_TRANSITIONS.labels(state="crashed").inc()
    metrics.TERM_LAG_MS.observe(max(0, ctx.batch.now - crash_at))
    if term.recovered:
        metrics.TERMS_RECOVERED.inc()
        log.warning("term %s crashed at its committed time %s, processed %s ms late (recovered)",
                    term.term_id, crash_at, ctx.batch.now - crash_at)


async def _seal(ctx: CommandContext, term: TermState) -> None:
    term.book_sealed = True
    ctx.save_term(term)
    settled = ctx.emit_book(BetsSealed(
        event_id=f"{term.term_id}.sealed", channel_id=term.channel_id, term_id=term.term_id, ts=ctx.channel.clock,
        trace_id=term.term_id, end_at=term.ended_at, end_x100=term.end_x100, flying_at=term.flying_at,
        growth_per_ms=term.config["growth_per_ms"], caps=_caps(term.config), aborted=term.aborted))
    if settled is not None:
        close_term(ctx, settled)
        await term_jackpot.on_settled(ctx, settled)


# ---------------------------------------------------------------- commands

async def start_term(ctx: CommandContext, cmd: StartTerm) -> None:
    """Operator manual start: the receive time becomes bets_close_at (never before an
    accepted bet's receive time: a decision already taken stands)."""
    term = ctx.term()
    if term is None or term.state != "pre_start" or cmd.ts >= term.bets_close_at:
        log.info("start of %s ignored: no term is taking bets at %s", ctx.channel.channel_id, cmd.ts)
        return
    close = max(cmd.ts, term.last_bet_at + 1, term.created_at)
    if close < term.bets_close_at:
        term.bets_close_at = close
        term.flying_at = close + term.config["starting_ms"]
        term.manual_start = True
        ctx.save_term(term)
    await advance(ctx)


async def abort_term(ctx: CommandContext, cmd: AbortTerm) -> None:
    """Operator abort: the term is void from the abort time on; its hash is revealed; the
    cashout book voids its open bets at the seal and the Refund Service refunds them."""
    term = ctx.term()
    if term is None or term.state not in ("pre_start", "starting", "flying"):
        log.info("abort of %s ignored: no running term", ctx.channel.channel_id)
        return
    proof = await _proof(term)
    # Never before a command already decided for this term.
    aborted_at = max(cmd.ts, term.last_bet_at + 1, term.cashout_horizon + 1,
                     term.last_mark + 1 if term.state == "flying" else 0)
    end_x100 = 0
    if term.state == "flying":
        if aborted_at >= _crash_at(term, proof):
            log.info("abort of %s ignored: it crashes first", term.term_id)
            return
        end_x100 = money.multiplier_x100(aborted_at - 1 - term.flying_at, growth(term.config))
    term.aborted, term.aborted_from = True, term.state
    term.abort_reason, term.abort_operator = cmd.reason[:255], cmd.operator[:64]
    term.state = "aborted"
    _reveal(ctx, term, proof, aborted_at, end_x100)
    ctx.emit_term(TermAborted(
        event_id=f"{term.term_id}.aborted", channel_id=term.channel_id, term_id=term.term_id, ts=aborted_at,
        trace_id=cmd.trace_id or term.term_id, aborted_at=aborted_at, from_state=term.aborted_from,
        chain_no=term.chain_no, chain_index=term.chain_index, revealed_hash=proof.hash_hex,
        salt=term.salt, hmac_digest=proof.digest_hex, crash_x100=proof.crash_x100, state_version=term.state_version,
        operator=term.abort_operator, reason=term.abort_reason))
    metrics.TERM_TRANSITIONS.labels(state="aborted").inc()


async def configure_channel(ctx: CommandContext, cmd: ConfigureChannel) -> None:
    channel = ctx.channel_or_none
    try:
        config = validate(cmd.config, channel.config if channel is not None else None)
    except ConfigError as error:
        log.error("config of %s refused: %s", cmd.channel_id, error)
        return
    if channel is None:
        chain = cmd.chain or {}
        if not chain.get("terminator") or not chain.get("salt"):
            log.error("channel %s not created: no fairness chain in the command", cmd.channel_id)
            return
        channel = ChannelState(
            channel_id=cmd.channel_id, config=config, config_version=1, partition=ctx.partition,
            created_at=cmd.ts, chain_no=chain["chain_no"], chain_length=chain["length"],
            chain_terminator=chain["terminator"], chain_salt=chain["salt"],
            clock=ctx.batch.now)   # the first term starts when the channel is set up here
        ctx.set_channel(channel)
        ctx.emit_term(ChainPublished(
            event_id=f"{cmd.channel_id}.chain.{channel.chain_no}", channel_id=cmd.channel_id, ts=cmd.ts,
            trace_id=cmd.trace_id, chain_no=channel.chain_no, length=channel.chain_length,
            terminator=channel.chain_terminator, salt=channel.chain_salt))
    else:
        channel.config = config
        channel.config_version += 1
    ctx.emit_term(ChannelConfigured(
        event_id=f"{cmd.channel_id}.config.{channel.config_version}", channel_id=cmd.channel_id, ts=cmd.ts,
        trace_id=cmd.trace_id, config=config, config_version=channel.config_version,
        created=channel.config_version == 1))
    await advance(ctx)


async def feed_jackpot(ctx: CommandContext, cmd: FeedJackpot) -> None:
    """The channel's bets start or stop feeding a jackpot (a config change: from the next term)."""
    channel = ctx.channel
    current = list(channel.config.get("jackpots") or [])
    wanted = sorted({*current, cmd.jackpot_id}) if cmd.feed else [j for j in current if j != cmd.jackpot_id]
    if wanted == current:
        return
    try:
        channel.config = validate({"jackpots": wanted}, channel.config)
    except ConfigError as error:
        log.error("jackpot %s not fed by %s: %s", cmd.jackpot_id, channel.channel_id, error)
        return
    channel.config_version += 1
    ctx.emit_term(ChannelConfigured(
        event_id=f"{cmd.channel_id}.config.{channel.config_version}", channel_id=cmd.channel_id, ts=cmd.ts,
        trace_id=cmd.trace_id, config=channel.config, config_version=channel.config_version))


async def publish_chain(ctx: CommandContext, cmd: PublishChain) -> None:
    channel = ctx.channel
    if cmd.chain_no != channel.chain_no + 1 or channel.next_chain is not None:
        return
    channel.next_chain = {"chain_no": cmd.chain_no, "length": cmd.length,
                          "terminator": cmd.terminator, "salt": cmd.salt}
    ctx.emit_term(ChainPublished(
        event_id=f"{channel.channel_id}.chain.{cmd.chain_no}", channel_id=channel.channel_id, ts=cmd.ts,
        trace_id=cmd.trace_id, chain_no=cmd.chain_no, length=cmd.length, terminator=cmd.terminator,
        salt=cmd.salt))
    await advance(ctx)


def close_term(ctx: CommandContext, settled: TermSettled) -> None:
    """The cashout book settled the term: close it with its totals."""
    term = ctx.staged_term(settled.term_id)
    if term is None or term.state == "closed":
        return
    term.state = "closed"
    term.state_version += 1
    term.totals = settled.totals
    term.closed_at = max(settled.ts, term.ended_at or 0)
    ctx.emit_term(TermClosed(
        event_id=f"{term.term_id}.closed", channel_id=term.channel_id, term_id=term.term_id, ts=term.closed_at,
        trace_id=term.term_id, closed_at=term.closed_at, totals=settled.totals, bets=settled.bets,
        state_version=term.state_version, aborted=term.aborted))
    metrics.TERM_TRANSITIONS.labels(state="closed").inc()
    if term.term_id == ctx.channel.current_term_id:
        ctx.save_term(term)
    else:
        ctx.delete_term(term)


def chain_needs_renewal(channel: ChannelState) -> bool:
    """Time to publish the next chain: a tenth of the current one (at least one term) left."""
    left = channel.chain_length - channel.chain_index
    return channel.next_chain is None and left <= max(1, channel.chain_length // 10)


__all__ = ["advance", "start_term", "abort_term", "configure_channel", "feed_jackpot", "publish_chain",
           "chain_needs_renewal", "channels", "terms"]
