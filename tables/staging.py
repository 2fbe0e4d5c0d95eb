"""Batch-staged table writes: the rule that keeps tables and topics consistent under kill -9.

An agent handles a batch of events against a Staged overlay, sends the batch's output events,
waits until Kafka acknowledges them, and only then applies the staged writes to the tables.
If the worker dies before that, the batch is re-processed from tables that do not include it
and makes the same decisions with the same event ids (consumers de-duplicate); if it dies
after, every staged decision already has its events in Kafka. Several writes to one key in a
batch also collapse into one changelog message.

The writes are applied here, not through Faust's `table[key] = value`: that path sends each
changelog message on its own through Faust's producer buffer (a queue drained one message at a
time, with a future, a callback and a RocksDB write of the persisted offset per message), and
while that buffer holds more than 100 messages Faust's consumer stops delivering to every
agent, the clock's ticks included (crash-bench's ticks phase: TermTicks arrived in bursts up to
1.7 s late while a batch's book entries drained). Here each write is encoded once, the same
bytes go to the partition's RocksDB (one write batch per partition) and to the changelog (the
app's aiokafka producer), and the persisted offset is written once per changelog partition.

Durability is Faust's rule, unchanged: it flushes the producer before it commits the offsets
of the events a batch handled, so a batch's changelog is in Kafka before the batch counts as
done. A changelog write Kafka refuses stops the worker before that commit: the batch is then
processed again, from a changelog that may lack it, which is the same as a kill -9.
"""
from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from faust.streams import current_event
from rocksdict import WriteBatch

from streams.emit import append

log = logging.getLogger(__name__)

_DELETED = object()


class Staged:
    def __init__(self) -> None:
        # (table name, key) -> (table, value or _DELETED, partition of the event that wrote it)
        self._writes: dict[tuple[str, Any], tuple[Any, Any, int]] = {}

    def get(self, table, key: Any) -> Any:
        staged = self._writes.get((table.name, key))
        if staged is not None:
            value = staged[1]
            return None if value is _DELETED else value
        return table.get(key)

    def set(self, table, key: Any, value: Any) -> None:
        self._writes[(table.name, key)] = (table, value, _event_partition())

    def delete(self, table, key: Any) -> None:
        self._writes[(table.name, key)] = (table, _DELETED, _event_partition())

    async def commit(self, producer) -> None:
        """Apply the writes: RocksDB at once, the changelog sent (acknowledged before Faust
        commits the batch's offsets, see the module docstring)."""
        if not self._writes:
            return
        # (table, partition) -> [its RocksDB write batch, the newest changelog send]
        partitions: dict[tuple[Any, int], list] = {}
        for (_, key), (table, value, partition) in self._writes.items():
            store = table.data
            key_bytes = store._encode_key(key)
            value_bytes = None if value is _DELETED else store._encode_value(value)
            entry = partitions.setdefault((table, partition), [WriteBatch(raw_mode=True), None])
            if value_bytes is None:
                entry[0].delete(key_bytes)
                store._key_index.pop(key_bytes, None)
            else:
                entry[0].put(key_bytes, value_bytes)
                store._key_index[key_bytes] = partition
            entry[1] = await append(producer, table.changelog_topic_name, key_bytes, value_bytes, partition=partition)
        self._writes.clear()
        for (table, partition), (batch, sent) in partitions.items():
            table.data._db_for_partition(partition).write(batch)
            sent.add_done_callback(lambda fut, table=table: _persisted(table, fut))


def _event_partition() -> int:
    # A table's keys live in the store and changelog partition of the event that writes them.
    event = current_event()
    if event is None:
        raise RuntimeError("a table can only be changed while handling an event")
    return event.message.partition


def _persisted(table, sent: asyncio.Future) -> None:
    """The newest changelog message of a partition is acknowledged: a recovery starts after it.
    Messages of one partition are acknowledged in order, so the newest one covers the rest."""
    if sent.cancelled() or sent.exception() is not None:
        log.critical("table %s: a changelog write failed (%r); stopping the worker before the batch's "
                     "offsets are committed, so that the batch is processed again",
                     table.name, None if sent.cancelled() else sent.exception())
        logging.shutdown()
        os._exit(70)
    metadata = sent.result()
    table.data.set_persisted_offset(metadata.topic_partition, metadata.offset)
