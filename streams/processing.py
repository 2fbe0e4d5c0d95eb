"""The batch loop every stateful agent runs (see tables/staging.py for why it is shaped so).

    take the events queued now (queued_batches) -> admit each (streams/positions.py: an event
    past one this agent has not handled rewinds its partition) -> decode each (undecodable ->
    game.dlq) -> handle it against the
    staged tables -> finish the batch (after_batch: output grouped over the whole batch) ->
    send the batch's output and wait for Kafka's acks -> apply the staged table writes ->
    after_commit (views of the committed state) -> (Faust acks the events and commits their
    offsets after the producer flush)

An unexpected exception is a bug, not bad input: the worker stops with a non-zero status before
anything of the batch is applied, so that the batch is processed again after a restart (by this
worker or the one that takes its partitions over) instead of being half-applied or skipped.
"""
from __future__ import annotations

import base64
import logging
import os
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from faust.streams import _current_event

from streams import metrics
from streams.app import app
from streams.codec import DecodeError, decode, encode, header_type
from streams.emit import Emitter
from streams.events import DeadLetter, Message
from streams.positions import SourcePositions
from streams.topics import dlq_topic
from tables.staging import Staged

log = logging.getLogger(__name__)


# A batch slower than this is logged with where its time went (ticks and answers wait on it).
SLOW_BATCH_S = 0.5


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class Batch:
    staged: Staged = field(default_factory=Staged)
    emit: Emitter = field(default_factory=Emitter)
    now: int = field(default_factory=now_ms)
    # The handler's accumulators over the batch (e.g. contributions grouped per jackpot), which
    # its after_batch turns into output.
    work: dict[str, Any] = field(default_factory=dict)


Handler = Callable[[Message, object, Batch], Awaitable[None]]
BatchHook = Callable[[Batch], Awaitable[None]]


def dead_letter(batch: Batch, event, error: str, consumer: str) -> None:
    message = event.message
    key = message.key or b""
    letter = DeadLetter(
        event_id=f"dlq.{message.topic}.{message.partition}.{message.offset}",
        channel_id=key.decode(errors="replace")[:64], ts=batch.now,
        source_topic=message.topic, partition=message.partition, offset=message.offset,
        error=error[:1000], consumer=consumer,
        key_b64=base64.b64encode(key).decode(),
        value_b64=base64.b64encode(message.value or b"").decode())
    batch.emit.send_raw(dlq_topic, key, encode(letter), [("type", b"DeadLetter")])
    metrics.DEAD_LETTERS.labels(consumer=consumer, topic=message.topic).inc()
    log.warning("dead letter from %s[%s]@%s: %s", message.topic, message.partition, message.offset, error)


async def queued_batches(stream, max_batch: int):
    """The stream's events in batches of what is queued now (at most `max_batch`), acknowledged
    after the batch is handled (so its offsets are committed only then).

    Not Faust's take_events(max, within): that one stops taking events while the batch is being
    handled, and then collects for `within` seconds at most, one event per trip through Faust's
    stream machinery. At ~1,000 commands/s the commands agent got ~38 events a batch and spent 60 %
    of its time waiting for the acks of batches that small (crash-bench, sustained), while
    thousands of fetched commands waited in Faust's queues. Here the events that arrived during a
    batch are all in the next one: one event alone is handled at once, a backlog in batches of
    `max_batch`, so the fixed cost of a batch (the acks, the table writes) is shared by whatever
    queued while the last one ran."""
    queue = stream.channel.queue
    stream.enable_acks = False
    batch: list = []
    async for event in stream.events():
        batch.append(event)
        if len(batch) >= max_batch or queue.empty():
            yield batch
            for handled in batch:
                await stream.ack(handled)
            batch = []


async def run_batches(stream, consumer: str, handle: Handler,
                      expected: tuple[type[Message], ...] | None = None,
                      max_batch: int = 500,
                      before_batch: Callable[[], None] | None = None, dead_letters: bool = True,
                      after_batch: BatchHook | None = None, after_commit: BatchHook | None = None,
                      reads: tuple[type[Message], ...] | None = None) -> None:
    """`reads`: the records the handler acts on; a message whose `type` header names another
    record is skipped without being decoded (one without the header is decoded as before)."""
    wanted = frozenset(cls.__name__.encode() for cls in reads) if reads else None
    positions = SourcePositions(consumer)
    async for events in queued_batches(stream, max_batch):
        if before_batch is not None:
            before_batch()
        batch = Batch()
        started = time.perf_counter()
        try:
            for event in events:
                _current_event.set(weakref.ref(event))
                if not await positions.admit(event, batch.staged):
                    continue
                if wanted is not None:
                    kind = header_type(event.message.headers)
                    if kind is not None and kind not in wanted:
                        continue
                try:
                    record = decode(event.value, expected)
                except DecodeError as error:
                    if dead_letters:
                        dead_letter(batch, event, str(error), consumer)
                    continue
                await handle(record, event, batch)
            if after_batch is not None:
                await after_batch(batch)
            handled = time.perf_counter()
            await batch.emit.flush()
            flushed = time.perf_counter()
            await batch.staged.commit(await app.maybe_start_producer())
            if after_commit is not None:
                await after_commit(batch)
        except Exception:
            log.exception("%s: unexpected failure; stopping the worker so the batch is processed again", consumer)
            logging.shutdown()
            os._exit(70)
        took = time.perf_counter() - started
        metrics.BATCH_SECONDS.labels(consumer=consumer).observe(took)
        if took > SLOW_BATCH_S:
            log.warning("%s: slow batch of %d events: %.0f ms handling, %.0f ms waiting for Kafka, %.0f ms tables",
                        consumer, len(events), (handled - started) * 1000, (flushed - handled) * 1000,
                        (time.perf_counter() - flushed) * 1000)
        metrics.EVENTS_HANDLED.labels(consumer=consumer).inc(len(events))
