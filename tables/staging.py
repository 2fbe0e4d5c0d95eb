"""Batch-staged table writes: the rule that keeps tables and topics consistent under kill -9.

An agent handles a batch of events against a Staged overlay, sends the batch's output events,
waits until Kafka acknowledges them, and only then applies the staged writes to the tables.
If the worker dies before that, the batch is re-processed from tables that do not include it
and makes the same decisions with the same event ids (consumers de-duplicate); if it dies
after, every staged decision already has its events in Kafka. Several writes to one key in a
batch also collapse into one changelog message.
"""
from __future__ import annotations

import weakref
from typing import Any

from faust.streams import _current_event, current_event

_DELETED = object()


class Staged:
    def __init__(self) -> None:
        self._writes: dict[tuple[str, Any], tuple[Any, Any, Any]] = {}

    def get(self, table, key: Any) -> Any:
        staged = self._writes.get((table.name, key))
        if staged is not None:
            value = staged[1]
            return None if value is _DELETED else value
        return table.get(key)

    def set(self, table, key: Any, value: Any) -> None:
        # Remember the event being handled: a RocksDB table writes a key into the store of
        # that event's partition, so the write must be replayed under the same event.
        self._writes[(table.name, key)] = (table, value, current_event())

    def delete(self, table, key: Any) -> None:
        self._writes[(table.name, key)] = (table, _DELETED, current_event())

    def commit(self) -> None:
        previous = _current_event.get(None)
        try:
            for (_, key), (table, value, event) in self._writes.items():
                _current_event.set(weakref.ref(event) if event is not None else None)
                if value is _DELETED:
                    if key in table:
                        del table[key]
                else:
                    table[key] = value
        finally:
            _current_event.set(previous)
            self._writes.clear()
