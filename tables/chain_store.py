"""The secret store of fairness chains (DESIGN section 6): a MariaDB database of its own,
reachable only with the crash_secret credentials (CRASH_SECRET_DB_URL).

Only the orchestrator (which must know a running term's crash time) and the channel-creating
operator view use it. Chains are cached in process memory once loaded; nothing read from here
is ever logged, sent to a topic or written to a table.
"""
from __future__ import annotations

import asyncio
import logging
import time

from sqlalchemy import text

from streams.fairness import DEFAULT_CHECKPOINT_EVERY, Chain, generate_chain
from tables.secret_db import SecretDatabase

log = logging.getLogger(__name__)


class ChainNotFound(LookupError):
    pass


class ChainStore(SecretDatabase):
    def __init__(self, url: str) -> None:
        super().__init__(url)
        self._cache: dict[tuple[str, int], Chain] = {}

    def cached(self, channel_id: str, chain_no: int) -> Chain | None:
        return self._cache.get((channel_id, chain_no))

    async def get(self, channel_id: str, chain_no: int) -> Chain:
        """The chain, waiting while the secret store is unreachable."""
        chain = self._cache.get((channel_id, chain_no))
        if chain is not None:
            return chain

        async def select():
            async with self.engine.connect() as conn:
                return (await conn.execute(text(
                    "SELECT length, seed, salt, checkpoint_every, checkpoints FROM chain_secret"
                    " WHERE channel_id = :c AND chain_no = :n"), {"c": channel_id, "n": chain_no})).first()
        row = await self.waiting(select)
        if row is None:
            raise ChainNotFound(f"no secret chain {chain_no} for channel {channel_id}")
        chain = Chain(length=row.length, seed=bytes.fromhex(row.seed), salt=bytes.fromhex(row.salt),
                      checkpoint_every=row.checkpoint_every, checkpoints=bytes(row.checkpoints))
        self._cache[(channel_id, chain_no)] = chain
        return chain

    async def exists(self, channel_id: str, chain_no: int) -> bool:
        try:
            await self.get(channel_id, chain_no)
        except ChainNotFound:
            return False
        return True

    async def create(self, channel_id: str, chain_no: int, length: int,
                     checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY) -> Chain:
        """Generate and store a new chain; an existing one is returned unchanged (idempotent)."""
        try:
            return await self.get(channel_id, chain_no)
        except ChainNotFound:
            pass
        # About half a second per million hashes: keep it off the event loop.
        chain = await asyncio.get_running_loop().run_in_executor(None, generate_chain, length, checkpoint_every)
        async with self.engine.begin() as conn:
            await conn.execute(text(
                "INSERT INTO chain_secret (channel_id, chain_no, length, seed, salt,"
                " checkpoint_every, checkpoints, created_at) VALUES (:c, :n, :l, :s, :salt, :e, :cp, :t)"
                " ON DUPLICATE KEY UPDATE channel_id = channel_id"),
                {"c": channel_id, "n": chain_no, "l": length, "s": chain.seed.hex(), "salt": chain.salt.hex(),
                 "e": checkpoint_every, "cp": chain.checkpoints, "t": int(time.time() * 1000)})
        self._cache.pop((channel_id, chain_no), None)
        return await self.get(channel_id, chain_no)   # the stored one wins a concurrent race


_store: ChainStore | None = None


def chain_store() -> ChainStore:
    global _store
    if _store is None:
        from streams.settings import get_settings
        _store = ChainStore(get_settings().secret_db_url)
    return _store
