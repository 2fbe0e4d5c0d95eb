"""What the push gateway shows of a channel and of a jackpot, as pure reducers (no I/O, no clock).

`ChannelView` is the TermView(channel_id) of DESIGN section 15: the channel's config, its live
term, the term's bets and cashouts, the last 50 crash points with their proofs. `JackpotView`
is one pool's ticker. Each `apply(event)` updates the view and returns the changes as
(key, op) pairs: the push gateway coalesces ops of equal key within a frame (the latest wins)
and sends them to the room.

Rules that keep the frames right:
- **idempotent**: a restarted gateway replays Kafka from a position at or before what its
  stored view has seen, so applying an event twice changes nothing (term state versions,
  forward-only bet statuses, history de-duplicated by term id, jackpot (cycle, value) order);
- **no crash point before the crash**: a term's crash point enters the view with TermCrashed
  (or TermAborted) only; BetsSealed, which carries it too, is never read; `public_term` drops
  it from any term not ended anyway;
- **no player ids in frames**: a bet shows a masked name and `tag` (web/sessions.tag), by which
  its owner's page, and only it, recognises it. Other players' auto-cashout targets stay hidden.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from streams import jackpot_events as J
from streams.events import (
    BetCancelled,
    BetCashedOut,
    BetPlaced,
    BetVoided,
    ChainPublished,
    ChannelConfigured,
    Message,
    TermAborted,
    TermClosed,
    TermCrashed,
    TermCreated,
    TermSettled,
    TermStateChanged,
    TermTick,
)

__all__ = ["ChannelView", "JackpotView", "public_term", "mask", "HISTORY", "ENDED"]

HISTORY = 50
SNAPSHOT_BETS = 500
MICRO = 1_000_000
ENDED = frozenset({"crashed", "aborted", "closed"})
TERMINAL_BET = frozenset({"cashed_out", "cancelled", "voided", "lost"})
Op = tuple[Any, dict[str, Any]]
Tagger = Callable[[str], str]


def mask(user_id: str) -> str:
    """How other players see a player: enough to tell players apart, not to name them."""
    if len(user_id) <= 4:
        return user_id[:1] + "***"
    return f"{user_id[:2]}***{user_id[-2:]}"


def public_term(term: dict[str, Any] | None) -> dict[str, Any] | None:
    if term is None:
        return None
    if term.get("state") not in ENDED:
        return {k: v for k, v in term.items() if k not in ("crash_x100", "revealed_hash", "hmac_digest")}
    return dict(term)


class ChannelView:
    def __init__(self, channel_id: str, tagger: Tagger) -> None:
        self.channel_id = channel_id
        self.tagger = tagger
        self.config: dict[str, Any] | None = None
        self.config_version = 0
        self.chains: dict[str, dict[str, Any]] = {}       # chain_no -> {terminator, salt, length}
        self.term: dict[str, Any] | None = None
        self.bets: dict[str, dict[str, Any]] = {}         # bet_id -> bet of the current term
        self.early: dict[str, dict[str, dict[str, Any]]] = {}   # bets seen before their TermCreated
        self.history: list[dict[str, Any]] = []           # newest first
        self.proofs: dict[str, dict[str, Any]] = {}       # term_id -> proof, for the history's terms

    # ------------------------------------------------------------ persistence (Redis)

    def to_dict(self) -> dict[str, Any]:
        return {"channel_id": self.channel_id, "config": self.config, "config_version": self.config_version,
                "chains": self.chains, "term": self.term, "bets": list(self.bets.values()),
                "history": self.history, "proofs": self.proofs}

    @classmethod
    def from_dict(cls, data: dict[str, Any], tagger: Tagger) -> ChannelView:
        view = cls(data["channel_id"], tagger)
        view.config = data.get("config")
        view.config_version = data.get("config_version", 0)
        view.chains = data.get("chains") or {}
        view.term = data.get("term")
        view.bets = {b["bet_id"]: b for b in data.get("bets") or []}
        view.history = data.get("history") or []
        view.proofs = data.get("proofs") or {}
        return view

    # ------------------------------------------------------------ what a client gets

    def snapshot(self, tag: str | None = None) -> dict[str, Any]:
        """What a client gets on connect. A round's bets are capped (the largest, and the
        client's own): a snapshot must fit a client's buffer, and the page lists the top ones."""
        bets = list(self.bets.values())
        if len(bets) > SNAPSHOT_BETS:
            top = sorted(bets, key=lambda b: -b["amount"])[:SNAPSHOT_BETS]
            chosen = {b["bet_id"] for b in top}
            bets = top + [b for b in bets if tag is not None and b["tag"] == tag and b["bet_id"] not in chosen]
        return {"channel_id": self.channel_id, "config": self.config, "term": public_term(self.term),
                "bets": bets, "bets_count": len(self.bets), "history": self.history}

    @property
    def jackpot_ids(self) -> list[str]:
        return list((self.config or {}).get("jackpots") or [])

    # ------------------------------------------------------------ events

    def apply(self, event: Message) -> list[Op]:
        handler = _HANDLERS.get(type(event))
        return handler(self, event) if handler is not None else []

    def _configured(self, e: ChannelConfigured) -> list[Op]:
        if e.config_version < self.config_version:
            return []
        self.config, self.config_version = e.config, e.config_version
        return [("config", {"k": "config", "config": e.config})]

    def _chain(self, e: ChainPublished) -> list[Op]:
        self.chains[str(e.chain_no)] = {"terminator": e.terminator, "salt": e.salt, "length": e.length}
        return []

    def _created(self, e: TermCreated) -> list[Op]:
        if self.term is not None and (self.term["term_id"] == e.term_id or self.term["seq"] >= e.seq):
            return []
        config = e.config
        self.term = {"term_id": e.term_id, "seq": e.seq, "state": "pre_start", "state_version": e.state_version,
                     "created_at": e.created_at, "bets_close_at": e.bets_close_at, "flying_at": e.flying_at,
                     "chain_no": e.chain_no, "chain_index": e.chain_index, "prev_hash": e.prev_hash,
                     "growth_per_ms": config.get("growth_per_ms"), "edge_bps": config.get("edge_bps", 100),
                     "max_multiple_x100": config.get("max_multiple_x100"), "multiple_x100": 100}
        self.bets = self.early.pop(e.term_id, {})
        self.early.clear()
        return [("term", {"k": "term", "term": public_term(self.term)}),
                *((("bet", bet_id), {"k": "bet", "bet": bet}) for bet_id, bet in self.bets.items())]

    def _current(self, e: Message, version: int | None = None) -> dict[str, Any] | None:
        term = self.term
        if term is None or term["term_id"] != e.term_id:
            return None
        if version is not None and version <= term["state_version"]:
            return None
        return term

    def _state(self, e: TermStateChanged) -> list[Op]:
        term = self._current(e, e.state_version)
        if term is None:
            return []
        term.update(state=e.state, state_version=e.state_version, bets_close_at=e.bets_close_at,
                    flying_at=e.flying_at)
        return [("term", {"k": "term", "term": public_term(term)})]

    def _tick(self, e: TermTick) -> list[Op]:
        term = self._current(e)
        if term is None or term["state"] != "flying" or e.multiple_x100 < term.get("multiple_x100", 100):
            return []
        term["multiple_x100"] = e.multiple_x100
        return [("tick", {"k": "tick", "term_id": e.term_id, "m": e.multiple_x100, "e": e.elapsed_ms})]

    def _ended(self, e: TermCrashed | TermAborted) -> list[Op]:
        aborted = isinstance(e, TermAborted)
        at = e.aborted_at if aborted else e.crash_at
        proof = {"term_id": e.term_id, "channel_id": self.channel_id, "chain_no": e.chain_no,
                 "chain_index": e.chain_index, "revealed_hash": e.revealed_hash, "salt": e.salt,
                 "hmac_digest": e.hmac_digest, "crash_x100": e.crash_x100, "aborted": aborted}
        ops: list[Op] = []
        term = self._current(e, e.state_version)
        if term is not None:
            term.update(state=e.state, state_version=e.state_version, crash_x100=e.crash_x100, ended_at=at,
                        revealed_hash=e.revealed_hash, hmac_digest=e.hmac_digest, aborted=aborted)
            if not aborted:
                term["crash_at"] = e.crash_at
            proof.update(seq=term["seq"], prev_hash=term["prev_hash"], edge_bps=term["edge_bps"],
                         max_multiple_x100=term["max_multiple_x100"])
            ops.append(("term", {"k": "term", "term": public_term(term)}))
        elif any(h["term_id"] == e.term_id for h in self.history):
            return []
        else:   # a term this view did not see start (it started before the view): its config now
            config = self.config or {}
            proof.update(edge_bps=config.get("edge_bps", 100), max_multiple_x100=config.get("max_multiple_x100"))
        chain = self.chains.get(str(e.chain_no))
        if chain is not None:
            proof["terminator"] = chain["terminator"]
        if any(h["term_id"] == e.term_id for h in self.history):
            return ops
        item = {"term_id": e.term_id, "seq": proof.get("seq"), "crash_x100": e.crash_x100, "at": at,
                "aborted": aborted}
        self.history.insert(0, item)
        self.proofs[e.term_id] = proof
        for old in self.history[HISTORY:]:
            self.proofs.pop(old["term_id"], None)
        del self.history[HISTORY:]
        ops.append((("hist", e.term_id), {"k": "hist", "item": item}))
        return ops

    def _closed(self, e: TermClosed) -> list[Op]:
        term = self._current(e, e.state_version)
        if term is None:
            return []
        term.update(state="closed", state_version=e.state_version)
        return [("term", {"k": "term", "term": public_term(term)}), *self._settle(e.term_id)]

    # ------------------------------------------------------------ bets

    def _bet_of(self, e: Message, bet_id: str) -> dict[str, Any] | None:
        if self.term is not None and self.term["term_id"] == e.term_id:
            return self.bets.get(bet_id)
        return self.early.get(e.term_id, {}).get(bet_id)

    def _placed(self, e: BetPlaced) -> list[Op]:
        if self._bet_of(e, e.bet_id) is not None:
            return []
        bet = {"bet_id": e.bet_id, "term_id": e.term_id, "name": mask(e.user_id), "tag": self.tagger(e.user_id),
               "amount": e.amount, "currency": e.currency, "auto": e.auto_cashout_x100 is not None, "status": "open"}
        if self.term is not None and self.term["term_id"] == e.term_id:
            self.bets[e.bet_id] = bet
            return [(("bet", e.bet_id), {"k": "bet", "bet": bet})]
        if self.term is None or e.term_id not in {h["term_id"] for h in self.history}:
            # Its TermCreated is on another topic and may come a moment later.
            if e.term_id not in self.early and len(self.early) >= 2:
                self.early.pop(next(iter(self.early)))
            self.early.setdefault(e.term_id, {})[e.bet_id] = bet
        return []

    def _finish(self, e: Message, bet_id: str, status: str, **fields: Any) -> list[Op]:
        bet = self._bet_of(e, bet_id)
        if bet is None or bet["status"] in TERMINAL_BET:
            return []
        bet.update(status=status, **fields)
        if self.term is None or self.term["term_id"] != e.term_id:
            return []
        return [(("bet", bet_id), {"k": "bet", "bet": bet})]

    def _cashed(self, e: BetCashedOut) -> list[Op]:
        return self._finish(e, e.bet_id, "cashed_out", multiple_x100=e.multiple_x100, payout=e.payout, mode=e.mode)

    def _cancelled(self, e: BetCancelled) -> list[Op]:
        return self._finish(e, e.bet_id, "cancelled")

    def _voided(self, e: BetVoided) -> list[Op]:
        return self._finish(e, e.bet_id, "voided")

    def _settled(self, e: TermSettled) -> list[Op]:
        return self._settle(e.term_id) if self._current(e) is not None else []

    def _settle(self, term_id: str) -> list[Op]:
        """Every bet still open when the term is settled is lost (one op, not one per bet)."""
        changed = False
        for bet in self.bets.values():
            if bet["status"] == "open":
                bet["status"] = "lost"
                changed = True
        return [(("settled", term_id), {"k": "settled", "term_id": term_id})] if changed else []


_HANDLERS: dict[type, Callable[[ChannelView, Any], list[Op]]] = {
    ChannelConfigured: ChannelView._configured,
    ChainPublished: ChannelView._chain,
    TermCreated: ChannelView._created,
    TermStateChanged: ChannelView._state,
    TermTick: ChannelView._tick,
    TermCrashed: ChannelView._ended,
    TermAborted: ChannelView._ended,
    TermClosed: ChannelView._closed,
    BetPlaced: ChannelView._placed,
    BetCashedOut: ChannelView._cashed,
    BetCancelled: ChannelView._cancelled,
    BetVoided: ChannelView._voided,
    TermSettled: ChannelView._settled,
}


# ---------------------------------------------------------------- jackpots

class JackpotView:
    """One pool's ticker: the Jackpot Service's Redis view (`jackpot:<id>`) to start with, then
    its events. Values are whole minor units, floored: never above the true pool."""

    FIELDS = ("jackpot_id", "name", "tier", "currency", "status", "trigger", "seed", "cap", "near_cap_bps",
              "value", "cycle", "near_cap", "last_hit", "updated_at")

    def __init__(self, jackpot_id: str, tagger: Tagger) -> None:
        self.jackpot_id = jackpot_id
        self.tagger = tagger
        self.data: dict[str, Any] = {"jackpot_id": jackpot_id, "value": 0, "cycle": 0, "near_cap": False,
                                     "last_hit": None, "near_cap_bps": 8000}
        self.value_micro = -1      # the latest pool seen on an event (-1: none yet)
        self.known = False         # a view or a definition was seen

    def load(self, service_view: dict[str, Any]) -> None:
        """The Jackpot Service's own view, unless this one has already seen later events."""
        cycle, value = service_view.get("cycle", 0), service_view.get("value", 0)
        if self.known and (cycle, value * MICRO) < (self.data["cycle"], max(self.value_micro, 0)):
            return
        for name in self.FIELDS:
            if name in service_view:
                self.data[name] = service_view[name]
        hit = service_view.get("last_hit")
        if isinstance(hit, dict):
            self.data["last_hit"] = {**hit, "winners": [self._winner(w) for w in hit.get("winners") or []]}
        self.value_micro = max(self.value_micro, value * MICRO)
        self.known = True

    def public(self) -> dict[str, Any]:
        return dict(self.data)

    def _winner(self, w: dict[str, Any]) -> dict[str, Any]:
        user_id = str(w.get("user_id", ""))
        return {"rank": w.get("rank"), "name": mask(user_id), "tag": self.tagger(user_id),
                "bonus_amount": w.get("bonus_amount")}

    def _definition(self, definition: dict[str, Any]) -> None:
        for name in ("name", "tier", "currency", "trigger", "seed", "cap", "near_cap_bps"):
            if name in definition:
                self.data[name] = definition[name]
        self.known = True

    def apply(self, event: Message) -> list[Op]:
        d = self.data
        key = ("jp", self.jackpot_id)
        if isinstance(event, J.JackpotConfigured):
            self._definition(event.definition)
            d["status"] = event.status
        elif isinstance(event, J.JackpotCycleStarted):
            if event.cycle < d["cycle"]:
                return []
            if event.cycle > d["cycle"]:
                d.update(cycle=event.cycle, value=event.start_micro // MICRO, near_cap=False)
                self.value_micro = event.start_micro
            self._definition(event.definition)
        elif isinstance(event, J.JackpotContributed | J.JackpotAwardRolledBack):
            cycle = getattr(event, "cycle", d["cycle"])
            if (cycle, event.value_micro) < (d["cycle"], self.value_micro):
                return []
            d.update(cycle=cycle, value=event.value_micro // MICRO)
            self.value_micro = event.value_micro
        elif isinstance(event, J.JackpotNearCap):
            if event.cycle < d["cycle"] or (event.cycle == d["cycle"] and d["near_cap"]):
                return []
            d["near_cap"] = True
        elif isinstance(event, J.JackpotHit):
            hit = d.get("last_hit")
            if hit is not None and (hit.get("award_id") == event.award_id or event.cycle < hit.get("cycle", 0)):
                return []          # seen, or older than the hit already shown (a replay)
            d["last_hit"] = {"award_id": event.award_id, "amount": event.amount, "cycle": event.cycle,
                             "at": event.ts, "winners": []}
            return [(key, {"k": "jackpot", "jackpot": self.public()}),
                    (("jphit", event.award_id), {"k": "jackpot_hit", "jackpot_id": self.jackpot_id,
                                                 "award_id": event.award_id, "amount": event.amount,
                                                 "currency": event.currency})]
        elif isinstance(event, J.JackpotAwarded):
            hit = d.get("last_hit")
            if hit is not None and hit.get("award_id") != event.award_id and event.cycle < hit.get("cycle", 0):
                return []
            if hit is None or hit.get("award_id") != event.award_id:
                hit = d["last_hit"] = {"award_id": event.award_id, "amount": event.award_amount,
                                       "cycle": event.cycle, "at": event.ts, "winners": []}
            if any(w["rank"] == event.rank for w in hit["winners"]):
                return []
            hit["winners"] = sorted([*hit["winners"], self._winner(
                {"rank": event.rank, "user_id": event.user_id, "bonus_amount": event.bonus_amount})],
                key=lambda w: w["rank"] or 0)
        else:
            return []
        return [(key, {"k": "jackpot", "jackpot": self.public()})]
