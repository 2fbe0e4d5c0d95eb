"""Group commit: the calls that arrive while one batch runs go together in the next one.

The first call starts a batch at once; nothing waits for a timer, so a lone request costs what it
did. Used for the `api_order` claims in MariaDB (`web/order_claims.py`) and the signed requests'
nonce claims in Redis (`web/signing.py`): one round trip per request was a large share of a
gateway's CPU at load (crash-bench --profile).
"""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

# Runs one batch: a result (or the exception that one item fails with) per item, in order. An
# exception raised by the batch itself fails every item of it.
BatchRun = Callable[[list[Item]], Awaitable[list["Result | Exception"]]]


class GroupCommit(Generic[Item, Result]):
    def __init__(self, run: BatchRun, max_items: int) -> None:
        self._run = run
        self._max_items = max_items
        self._pending: list[tuple[Item, asyncio.Future]] = []
        self._writer: asyncio.Task | None = None

    async def submit(self, item: Item) -> Result:
        answer: asyncio.Future = asyncio.get_running_loop().create_future()
        self._pending.append((item, answer))
        if self._writer is None:
            self._writer = asyncio.create_task(self._run_pending())
        return await answer

    async def _run_pending(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending[:self._max_items], self._pending[self._max_items:]
                try:
                    results = await self._run([item for item, _ in batch])
                except Exception as error:
                    results = [error] * len(batch)
                for (_, answer), result in zip(batch, results, strict=True):
                    if answer.done():          # its request went away (client gone, timeout)
                        continue
                    if isinstance(result, Exception):
                        answer.set_exception(result)
                    else:
                        answer.set_result(result)
        finally:
            self._writer = None
