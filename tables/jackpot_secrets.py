"""The secret store of must_hit_by hit values (DESIGN section 10): the crash_secret database,
as the fairness chains (tables.chain_store).

A cycle's hit value and nonce are drawn once (streams.jackpots.draw_hit_value) and stored
before its commitment is published; drawing again for the same (jackpot, cycle) returns the
stored pair, so a batch processed again after a crash publishes the same commitment. Values
are cached in the Jackpot Service's memory and never logged, sent or written to a table before
the hit reveals them.
"""
from __future__ import annotations

import time

from sqlalchemy import text

from streams.jackpots import draw_hit_value
from tables.secret_db import SecretDatabase

__all__ = ["JackpotSecrets", "jackpot_secrets"]


class JackpotSecrets(SecretDatabase):
    def __init__(self, url: str) -> None:
        super().__init__(url)
        self._cache: dict[tuple[str, int], tuple[int, str]] = {}

    async def draw(self, jackpot_id: str, cycle: int, seed: int, cap: int) -> tuple[int, str]:
        """(hit value, nonce) of the cycle: drawn and stored the first time, read back after."""
        cached = self._cache.get((jackpot_id, cycle))
        if cached is not None:
            return cached
        hit_value, nonce = draw_hit_value(seed, cap)

        async def insert() -> None:
            async with self.engine.begin() as conn:
                await conn.execute(text(
                    "INSERT INTO jackpot_secret (jackpot_id, cycle, hit_value, nonce, created_at)"
                    " VALUES (:j, :c, :v, :n, :t) ON DUPLICATE KEY UPDATE jackpot_id = jackpot_id"),
                    {"j": jackpot_id, "c": cycle, "v": hit_value, "n": nonce, "t": int(time.time() * 1000)})
        await self.waiting(insert)
        return await self.get(jackpot_id, cycle)     # the stored pair wins a repeated draw

    async def get(self, jackpot_id: str, cycle: int) -> tuple[int, str]:
        cached = self._cache.get((jackpot_id, cycle))
        if cached is None:
            async def select():
                async with self.engine.connect() as conn:
                    return (await conn.execute(text(
                        "SELECT hit_value, nonce FROM jackpot_secret WHERE jackpot_id = :j AND cycle = :c"),
                        {"j": jackpot_id, "c": cycle})).first()
            row = await self.waiting(select)
            if row is None:
                raise LookupError(f"no hit value stored for jackpot {jackpot_id} cycle {cycle}")
            cached = self._cache[(jackpot_id, cycle)] = (row.hit_value, row.nonce)
        return cached


_store: JackpotSecrets | None = None


def jackpot_secrets() -> JackpotSecrets:
    global _store
    if _store is None:
        from streams.settings import get_settings
        _store = JackpotSecrets(get_settings().secret_db_url)
    return _store
