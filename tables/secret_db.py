"""The secret database (crash_secret: its own user and grants), as its stores share it: a lazy
engine, and waiting out an outage instead of failing (no term and no must_hit_by cycle can go on
without their secrets, and crashing would not bring the database back sooner)."""
from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine
from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential

from sql.db import make_engine

log = logging.getLogger(__name__)

T = TypeVar("T")

__all__ = ["SecretDatabase"]


class SecretDatabase:
    def __init__(self, url: str) -> None:
        self._url = url
        self._engine: AsyncEngine | None = None
        self.waiting_since: float | None = None    # set while the database is unreachable

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            self._engine = make_engine(self._url, pool_size=2)
        return self._engine

    async def close(self) -> None:
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None

    async def waiting(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Run `operation`, retrying it (backoff 0.2 s doubling to 5 s) while the database is away."""
        def note(state) -> None:
            if self.waiting_since is None:
                self.waiting_since = time.monotonic()
            log.warning("secret database unreachable (%s); retrying in %.1fs",
                        type(state.outcome.exception()).__name__, state.next_action.sleep)

        async for attempt in AsyncRetrying(retry=retry_if_exception_type((OperationalError, InterfaceError)),
                                           wait=wait_exponential(multiplier=0.2, max=5), before_sleep=note,
                                           reraise=True):
            with attempt:
                result = await operation()
        self.waiting_since = None
        return result
