"""The bots' state of a channel and of its live term (web/bots.py): the bet slots each player
has left under max_bets_per_user, whether the betting window is open, and the random stakes and
cashout targets the players draw.

Apart from the players because it does no I/O: the players (Bots) read and update it as the
gateway's views and answers come.
"""
from __future__ import annotations

import asyncio
import math
import random
from typing import Any

from streams import money

CLOSE_MARGIN_MS = 50         # a bet sent later than this before bets_close_at would likely be refused
MAX_TARGET_X100 = 2000       # targets are drawn from 1.01x to 20x (then capped by the channel)


# ---------------------------------------------------------------- random draws

def log_uniform_stake(rng: random.Random, low: int, high: int) -> int:
    """A stake in minor units, log-uniform in [low, high] (small bets are common, big ones rare)."""
    if high <= low:
        return low
    value = round(math.exp(rng.uniform(math.log(low), math.log(high))))
    return min(high, max(low, value))


def heavy_tailed_target(rng: random.Random, cap_x100: int) -> int:
    """A target multiple in hundredths, Pareto-like as the crash point: P(target >= x) ~ 1/x."""
    top = max(money.MIN_AUTO_CASHOUT_X100, min(MAX_TARGET_X100, cap_x100))
    r = rng.random() * (1 - 100 / top)
    return min(top, max(money.MIN_AUTO_CASHOUT_X100, math.floor(100 / (1 - r))))


# ---------------------------------------------------------------- channels and terms

class TermPlay:
    """The bots' bookkeeping of one term: bet slots per player under max_bets_per_user."""

    def __init__(self, term_id: str, config: dict[str, Any], limits: list[int]) -> None:
        self.term_id = term_id
        self.config = config        # the config the term was seen with (changes apply from the next)
        self.growth = float(config["growth_per_ms"])
        self.limits = limits
        self.used = [0] * len(limits)
        self.free = [i for i, limit in enumerate(limits) if limit > 0]
        self._free_set = set(self.free)

    def take(self, rng: random.Random) -> int | None:
        """A random player with a free slot, now holding one more; None when all are full."""
        if not self.free:
            return None
        k = rng.randrange(len(self.free))
        player = self.free[k]
        self.used[player] += 1
        if self.used[player] >= self.limits[player]:
            self.free[k] = self.free[-1]
            self.free.pop()
            self._free_set.discard(player)
        return player

    def release(self, player: int) -> None:
        """The slot was not used after all (refused, cancelled, unknown)."""
        self.used[player] = max(0, self.used[player] - 1)
        if self.used[player] < self.limits[player] and player not in self._free_set:
            self.free.append(player)
            self._free_set.add(player)


class Channel:
    def __init__(self, channel_id: str) -> None:
        self.id = channel_id
        self.config: dict[str, Any] | None = None
        self.term: dict[str, Any] | None = None     # the latest view from the gateway
        self.play: TermPlay | None = None
        self.funded = False                         # seamless: every player's currency here is funded
        self.funding: asyncio.Task | None = None

    def term_view(self, term_id: str) -> dict[str, Any] | None:
        term = self.term
        return term if term is not None and term.get("term_id") == term_id else None

    def betting_open(self, now_ms: float) -> bool:
        term, play = self.term, self.play
        return (self.funded and term is not None and play is not None and term.get("term_id") == play.term_id
                and term.get("state") == "pre_start"
                and term.get("created_at", 0) <= now_ms < term.get("bets_close_at", 0) - CLOSE_MARGIN_MS)
