"""The bot players' money in seamless mode (`crash-bots`, web/bots.py): their balances in the
wallet, set through its admin API before they bet on a channel, topped up again when they run
dry, and a few of them summed for the report.

Apart from the players because it is the bots' only use of the wallet, with state of its own
(which accounts are funded, when each was last refilled); the players only say who needs money.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import Counter
from typing import Any

from web.bot_client import retry_delay
from web.bot_stats import Stats
from web.wallet_client import WalletClient, WalletError, WalletRejected

log = logging.getLogger("crash.bots")

BALANCE_SAMPLE = 5           # players whose balances the report sums (seamless mode)
FUNDING_CONCURRENCY = 16
REFILL_EVERY_S = 30.0


class Funding:
    """The players' balances, through the wallet's admin API (key with role `admin`)."""

    def __init__(self, wallet: WalletClient, players: list[str], balance: int, refill_below: int,
                 stats: Stats) -> None:
        self.wallet = wallet
        self.players = players
        self.balance = balance              # --balance: what a funded player holds
        self.refill_below = refill_below    # --refill-below: the threshold
        self.stats = stats
        self._funded: set[tuple[int, str]] = set()
        self._last_refill: dict[tuple[int, str], float] = {}

    async def fund(self, pairs: set[tuple[int, str]]) -> int:
        """Every (player, currency) of `pairs` holds at least the threshold; returns how many were
        checked (those not checked before). WalletRejected: the wallet refuses the admin key."""
        pairs = pairs - self._funded
        slots = asyncio.Semaphore(FUNDING_CONCURRENCY)

        async def fund(pair: tuple[int, str]) -> None:
            async with slots:
                for attempt in itertools.count(1):
                    try:
                        if await self.top_up(*pair):
                            self.stats.funded += 1
                        self._funded.add(pair)
                        return
                    except WalletRejected:
                        raise       # our key: no retry helps, the operator must fix it
                    except WalletError as error:
                        if attempt == 1 or attempt % 20 == 0:
                            log.warning("funding %s %s: %s (retrying)", self.players[pair[0]], pair[1], error)
                        await asyncio.sleep(retry_delay(min(attempt, 5)))

        await asyncio.gather(*(fund(pair) for pair in sorted(pairs)))
        return len(pairs)

    async def top_up(self, player: int, currency: str) -> bool:
        """Set the balance to --balance if it is below the threshold; True if it was set."""
        user_id = self.players[player]
        if await self.wallet.balance(user_id, currency) >= self.refill_below:
            return False
        await self.wallet.set_balance(user_id, currency, self.balance)
        return True

    async def refill(self, player: int, currency: str) -> None:
        """After insufficient_funds: top the player up again (at most every 30 s), so the demo goes on."""
        key = (player, currency)
        now = time.monotonic()
        if now - self._last_refill.get(key, -REFILL_EVERY_S) < REFILL_EVERY_S:
            return
        self._last_refill[key] = now
        try:
            if await self.top_up(player, currency):
                self.stats.refills += 1
        except WalletError as error:
            log.warning("refilling %s %s: %s", self.players[player], currency, error)

    async def sample_balances(self, currencies: dict[tuple[int, str], str]) -> dict[str, Any] | None:
        """Sum of a few players' balances, per currency (what the players actually hold);
        `currencies`: the currency chosen so far for each (player, channel)."""
        pairs = sorted({(i, cur) for (i, _), cur in currencies.items() if i < BALANCE_SAMPLE})
        if not pairs:
            return None
        try:
            values = await asyncio.wait_for(
                asyncio.gather(*(self.wallet.balance(self.players[i], cur) for i, cur in pairs)), 3.0)
        except (WalletError, TimeoutError) as error:
            return {"error": str(error) or type(error).__name__}
        sums: Counter[str] = Counter()
        for (_, currency), value in zip(pairs, values, strict=True):
            sums[currency] += value
        return {"players": sorted({self.players[i] for i, _ in pairs}), "sum_by_currency": dict(sums)}
