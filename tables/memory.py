"""Process memory derived from tables: forgotten at a rebalance, rebuilt at its first use after.

An agent may keep, in memory, what it could read from its tables every time (the commands
agent's order index and cashout books). A rebalance can move partitions, so such memory is
forgotten then; only at the start of the agent's next batch, never mid-batch, where the
batch's staged writes are not in the tables yet; and built again from the tables when the
batch first asks for it.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from streams.app import app

T = TypeVar("T")


class TableMemory(Generic[T]):
    def __init__(self, build: Callable[[], T]) -> None:
        self._build = build
        self._value: T | None = None
        self._stale = False
        app.on_partitions_revoked.connect(self._mark_stale)
        app.on_partitions_assigned.connect(self._mark_stale)

    def _mark_stale(self, *args: Any, **kwargs: Any) -> None:
        self._stale = True

    def before_batch(self) -> None:
        """Call at the start of each batch of the agent that uses it."""
        if self._stale:
            self._value, self._stale = None, False

    def get(self) -> T:
        if self._value is None:
            self._value = self._build()
        return self._value
