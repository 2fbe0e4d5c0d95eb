"""The channel's side of the Jackpot Service (seed 000 section 4.6), run by the command agent
(one writer per channel, agents/commands.py):

- feeding: every accepted bet contributes to each jackpot its term's config lists; the batch's
  contributions leave as one ContributeBets per jackpot on game.jackpot.command (keyed by
  jackpot id: the re-partition), each item carrying its PlaceBet's partition and offset so that
  the pool drops a repeat;
- the term jackpot: when a channel's local pool with a rank split hits on a contribution of one
  of its terms' bets, the pool sends TermJackpotHit here; once the term is settled (TermSettled
  carries its podium, looked up in the cashout book), the award is split among the podium's
  ranks (streams.jackpots.split_award) or, with nobody cashed out, goes to the bet whose
  contribution crossed. One JackpotAwarded per rank and one PayoutRequested(bonus) per winner,
  with order_no `bonus:<award_id>:<rank>`, from the deterministic award id: never paid twice.

The podium of a term is kept (table `term_jackpots`) for the last PODIUM_KEEP terms of the
channel, for a hit that is processed after its term was settled.
"""
from __future__ import annotations

import logging
from typing import Any

from agents.context import CommandContext
from agents.jackpot_service import emit_award
from streams import jackpots
from streams.events import PlaceBet, TermJackpotHit, TermSettled
from streams.jackpot_events import ContributeBets
from streams.processing import Batch
from streams.topics import jackpot_command_topic
from tables import Order, TermJackpot, TermState, term_jackpots

log = logging.getLogger(__name__)

__all__ = ["feed", "emit_contributions", "on_hit", "on_settled", "PODIUM_KEEP"]

PODIUM_KEEP = 1000


# ---------------------------------------------------------------- feeding the pools

def feed(ctx: CommandContext, term: TermState, cmd: PlaceBet, order: Order) -> None:
    """Queue an accepted bet's contribution to each jackpot its term feeds."""
    jackpot_ids = term.config.get("jackpots") or ()
    if not jackpot_ids:
        return
    item = {"bet_id": order.bet_id, "term_id": term.term_id, "user_id": order.user_id, "amount": order.amount,
            "currency": order.currency, "ts": cmd.ts, "p": ctx.partition, "o": ctx.offset}
    queued = ctx.batch.work.setdefault("contributions", {})
    for jackpot_id in jackpot_ids:
        queued.setdefault((ctx.channel_id, jackpot_id), []).append(item)


async def emit_contributions(batch: Batch) -> None:
    """After a batch of commands: one ContributeBets per (channel, jackpot)."""
    for (channel_id, jackpot_id), items in batch.work.get("contributions", {}).items():
        first = items[0]
        batch.emit.send(jackpot_command_topic, jackpot_id, ContributeBets(
            event_id=f"{first['bet_id']}.jp.{jackpot_id}", channel_id=channel_id, ts=batch.now,
            trace_id=first["bet_id"], jackpot_id=jackpot_id, items=items))


# ---------------------------------------------------------------- the term jackpot

def _entry(ctx: CommandContext, term_id: str) -> TermJackpot:
    entry = ctx.batch.staged.get(term_jackpots, term_id)
    return entry if entry is not None else TermJackpot(term_id=term_id, channel_id=ctx.channel_id)


def _seq(term_id: str) -> int:
    return int(term_id.rsplit("-", 1)[1])


async def on_hit(ctx: CommandContext, hit: TermJackpotHit) -> None:
    entry = _entry(ctx, hit.term_id)
    if hit.award_id in (entry.awarded or ()) or any(h["award_id"] == hit.award_id for h in entry.hits or ()):
        return                                          # delivered again
    fields = hit.asdict()
    if entry.podium is None and _seq(hit.term_id) <= ctx.channel.seq - PODIUM_KEEP:
        # Its podium is no longer kept (a hit this late means an outage of hours): the bet
        # that crossed wins, as with an empty podium.
        log.error("term jackpot hit %s for %s came after its podium was dropped", hit.award_id, hit.term_id)
        entry.podium = {}
    if entry.podium is None:
        entry.hits = [*(entry.hits or ()), fields]     # shared out when the term is settled
    else:
        _share_out(ctx, entry, fields)
    ctx.batch.staged.set(term_jackpots, hit.term_id, entry)


async def on_settled(ctx: CommandContext, settled: TermSettled) -> None:
    entry = _entry(ctx, settled.term_id)
    if entry.podium is not None:
        return                                          # delivered again
    entry.podium = settled.podium or {}
    for hit in entry.hits or ():
        _share_out(ctx, entry, hit)
    entry.hits = []
    ctx.batch.staged.set(term_jackpots, settled.term_id, entry)
    old = f"{ctx.channel_id}-{_seq(settled.term_id) - PODIUM_KEEP}"
    if ctx.batch.staged.get(term_jackpots, old) is not None:
        ctx.batch.staged.delete(term_jackpots, old)


def _share_out(ctx: CommandContext, entry: TermJackpot, hit: dict[str, Any]) -> None:
    assert entry.podium is not None
    podium = [{**bet, "channel_id": ctx.channel_id, "term_id": entry.term_id}
              for bet in entry.podium.get(hit["currency"], ())]
    trigger = {"channel_id": ctx.channel_id, "term_id": entry.term_id, "bet_id": hit["bet_id"],
               "user_id": hit["user_id"]}
    winners = jackpots.split_award(hit["amount"], hit["rank_split_bps"], podium, trigger)
    emit_award(ctx.batch, hit["jackpot_id"], hit["award_id"], hit["cycle"], hit["amount"], hit["currency"], winners)
    entry.awarded = [*(entry.awarded or ()), hit["award_id"]]
    log.info("term jackpot %s of %s shared out: %s", hit["award_id"], entry.term_id,
             ", ".join(f"rank {rank} {winner['user_id']} {bonus}" for rank, winner, bonus in winners))
