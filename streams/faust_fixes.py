"""Five fixes to Faust's consumer. The one money depends on: a partition without a committed offset is
rewound to its beginning when Faust seeks its stream partitions "to their committed offsets".

Faust (faust-streaming 0.11-0.15) fetches ahead: while a rebalance's table recovery runs, a
partition just assigned may already be fetched, and the messages fetched then are skipped
(flow control off, or an older generation). Faust then relies on "seek stream partitions to
committed offsets" to read them again. aiokafka's seek_to_committed only seeks when the
committed offset is above 0: a partition that has never been committed (a new channel's first
bets, during the startup rebalance) stays past the skipped messages, and they are never read.
Seen in the chaos test: a channel's very first BetPlaced, decided one rebalance earlier by the
other worker, never reached the cashout book; the bet was settled as lost without its cashout
target being checked, and the term's totals missed its stake. (The upstream threads on offsets
skipped across a rebalance: faust-streaming issues 216 and 221.)

The rewind is to the beginning, as `consumer_auto_offset_reset="earliest"` says: every event
is then handled at least once, which every agent here already expects (idempotent by its keys).
Table changelogs are left alone: Faust positions those itself (recovery, standbys).
"""
from __future__ import annotations

import asyncio
import functools
import logging
import weakref
from collections.abc import Mapping

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.consumer.fetcher import Fetcher, FetchResult
from faust.transport import consumer as faust_consumer
from faust.transport.drivers import aiokafka as faust_aiokafka

__all__ = ["install", "seek_stream_partition", "seek_to_committed_or_beginning"]

log = logging.getLogger(__name__)


def _is_stream_partition(tp: TopicPartition) -> bool:
    return not tp.topic.endswith("-changelog") and not tp.topic.startswith("__")


async def seek_to_committed_or_beginning(consumer: AIOKafkaConsumer) -> Mapping[TopicPartition, int | None]:
    """aiokafka's seek_to_committed, plus: a stream partition committed at nothing (or 0) is
    rewound to its earliest offset instead of staying wherever fetching had got to."""
    committed = await consumer.seek_to_committed()
    never = [tp for tp, offset in committed.items() if not offset and _is_stream_partition(tp)]
    if never:
        log.info("rewinding %d never-committed partitions to their beginning: %s", len(never),
                 ", ".join(sorted(f"{tp.topic}[{tp.partition}]" for tp in never)))
        await consumer.seek_to_beginning(*never)
    return committed


async def _seek_to_committed(self) -> Mapping[TopicPartition, int | None]:
    return await self.call_thread(seek_to_committed_or_beginning, self._ensure_consumer())


async def seek_stream_partition(consumer, tp: TopicPartition, offset: int) -> None:
    """Faust's Consumer.seek, run where it belongs: Faust calls aiokafka's seek from the app's
    event loop although the aiokafka consumer lives in a thread and loop of its own; this runs it
    in that thread, then moves Faust's read offset (below it, Faust drops what it is delivered)."""
    thread = consumer._thread

    async def seek() -> None:
        thread._ensure_consumer().seek(tp, offset)
    await thread.call_thread(seek)
    consumer._read_offset[tp] = offset or None


# Faust builds its consumer with fetch_max_wait_ms=1500, fixed. aiokafka leaves a partition whose
# fetched records are not consumed yet out of its next fetch request, and sends no other request
# to that broker until this one returns; the broker holds a request whose partitions have nothing
# new for up to fetch_max_wait_ms. So while one agent worked through a backlog (game.bet during
# a term's flight), the next fetch went out without it and waited at the broker for 1-1.5 s,
# and nothing new reached any agent, the clock's Ticks and the bets included (crash-bench's
# ticks phase: empty 1 s fetches every ~3 s, then ~4,000 records at once, and TermTicks up to
# 1.6 s late). The other consumers here (sink, gateway, push) already wait 10-50 ms.
def _bounded_fetch_wait(create, fetch_wait_ms: int):
    def create_worker_consumer(self, transport):
        consumer = create(self, transport)
        consumer._fetch_max_wait_ms = fetch_wait_ms     # read by the fetcher it builds at start
        _faust_subscriptions.add(consumer._subscription)  # the fetcher it builds has this one
        return consumer
    return create_worker_consumer


# Faust's consumer hands each fetched message to the agents' queues through
# `wait_first(callback(message), suspend_flow.wait())`: four tasks and an asyncio.wait per
# message, so that a delivery stuck on a full queue is dropped when a rebalance suspends the
# flow. That was the worker's ceiling: at ~1,000 commands/s the consumer delivered a few hundred
# messages per agent batch window while thousands it had fetched waited, and the commands agent
# ran batches of ~38 events (crash-bench, sustained; py-spy: wait_first, asyncio.wait and
# ensure_future among the top self-time frames). Here a message is delivered with a plain await
# when nothing can hold it up: the flow is on, Faust's producer buffer is not over its limit, the
# callback table is not being rebuilt and no queue of its partition is full. Otherwise the
# delivery goes Faust's way. The rest is faust-streaming 0.15's `Consumer._drain_messages`.
def _blocked(consumer, tp) -> bool:
    app = consumer.app
    conductor = app.topics
    return (consumer.suspend_flow.is_set() or not app.flow_control.is_active()
            or app.producer.buffer.size > app.producer.buffer.max_messages
            or conductor._tp_to_callback_lock.locked()
            or any(channel.queue.full() for channel in conductor._tp_index.get(tp, ())))


async def _drain_messages(self, fetcher) -> None:  # the same as Faust's, but for the delivery
    global _consumer
    _consumer = self
    callback = self.callback
    getmany = self.getmany
    consumer_should_stop = self._stopped.is_set
    fetcher_should_stop = fetcher._stopped.is_set
    get_read_offset = self._read_offset.__getitem__
    set_read_offset = self._read_offset.__setitem__
    set_flag = self.diag.set_flag
    unset_flag = self.diag.unset_flag
    commit_every = self._commit_every
    acks_enabled_for = self.app.topics.acks_enabled_for
    yield_every = 100
    num_since_yield = 0
    try:
        while not (consumer_should_stop() or fetcher_should_stop()):
            set_flag(faust_consumer.CONSUMER_FETCHING)
            ait = getmany(timeout=1.0)
            await self.sleep(0)
            if not self.should_stop:
                async for tp, message in ait:
                    num_since_yield += 1
                    if num_since_yield > yield_every:
                        await asyncio.sleep(0)
                        num_since_yield = 0
                    offset = message.offset
                    r_offset = get_read_offset(tp)
                    if r_offset is None or offset >= r_offset:
                        gap = offset - (r_offset or 0)
                        if gap > 1 and r_offset and acks_enabled_for(message.topic):
                            await self._add_gap(tp, r_offset + 1, offset)
                        if commit_every is not None and self._n_acked >= commit_every:
                            self._n_acked = 0
                            await self.commit()
                        if _blocked(self, tp):
                            await self.wait_first(callback(message), self.suspend_flow.wait())
                        else:
                            await callback(message)
                        set_read_offset(tp, offset)
                unset_flag(faust_consumer.CONSUMER_FETCHING)
    except self.consumer_stopped_errors:
        if self.transport.app.should_stop:
            self.log.info("Broker stopped consumer, shutting down...")
            return
        raise
    except asyncio.CancelledError:
        if self.transport.app.should_stop:
            self.log.info("Consumer shutting down for user cancel.")
            return
        raise
    except Exception as exc:
        self.log.exception("Drain messages raised: %r", exc)
        raise
    finally:
        unset_flag(faust_consumer.CONSUMER_FETCHING)


# aiokafka's fetcher sends nothing to a broker while any partition's fetched records are younger
# than its prefetch backoff (100 ms) and not consumed yet: it lets the consumer catch up first.
# Faust keeps partitions assigned that it does not consume (an active table's changelog, once it
# is recovered: Faust's pause_partitions only takes a partition out of its own getmany), so the
# worker's own changelog writes were fetched, never taken, and stopped every fetch of the worker
# for 100 ms: each table's first write into a partition after a start or rebalance (a fresh
# channel's first commands reached the agent in 100 ms chunks; the partitions holding the fetches
# back, logged, were the orders, term_books and cashout_book changelogs). Here the backoff counts
# only for the partitions Faust consumes now. What is fetched and what is consumed do not change
# (pausing those partitions in aiokafka too was tried, and taken out: docs/ARCHITECTURE.md).
_consumer: faust_consumer.Consumer | None = None     # the worker's Faust consumer, once it drains


def _backoff_if_consumed(calculate):
    @functools.wraps(calculate)
    def calculate_backoff(self: FetchResult) -> float:
        consumer = _consumer
        active = consumer._active_partitions if consumer is not None else None
        if active is not None and self._topic_partition not in active:
            return 0
        return calculate(self)
    return calculate_backoff


# Every fetch request of the worker named every partition assigned to it: with 8 partitions a
# topic, ~78 of them, of which only the 16 of game.command and game.jackpot.command were consumed;
# the rest were the active tables' changelogs (8 tables), which Faust reads only while it recovers
# them. aiokafka encodes the request and decodes each partition of the answer in Python, once per
# fetch, and at a few hundred gateway bets/s a fetch returns every command or two: the consumer
# thread was ~40 % of the worker's CPU (its own CPU time, /proc/<pid>/task). Here the Faust
# consumer's fetcher asks only for the partitions Faust consumes now (streams, a table being
# recovered, the standbys): a partition not asked for keeps its position, and its records would
# have stayed in the fetcher's buffer untaken; Faust seeks a changelog partition before it reads
# it. Nothing about what is consumed, or when, changes; other consumers' fetchers are not touched.
_faust_subscriptions: weakref.WeakSet = weakref.WeakSet()


class _ConsumedPartitions:
    """The assignment as the fetcher iterates it: only the partitions Faust consumes now."""

    def __init__(self, assignment, active) -> None:
        self._assignment = assignment
        self.tps = [tp for tp in assignment.tps if tp in active]

    def __getattr__(self, name: str):
        return getattr(self._assignment, name)


def _fetch_consumed_only(get_actions):
    @functools.wraps(get_actions)
    def get_actions_per_node(self: Fetcher, assignment):
        consumer = _consumer
        active = consumer._active_partitions if consumer is not None else None
        if active is None or self._subscriptions not in _faust_subscriptions:
            return get_actions(self, assignment)
        return get_actions(self, _ConsumedPartitions(assignment, active))
    return get_actions_per_node


def install(fetch_wait_ms: int) -> None:
    faust_aiokafka.AIOKafkaConsumerThread.seek_to_committed = _seek_to_committed
    faust_consumer.Consumer._drain_messages = _drain_messages
    thread = faust_aiokafka.AIOKafkaConsumerThread
    thread._create_worker_consumer = _bounded_fetch_wait(thread._create_worker_consumer, fetch_wait_ms)
    if not hasattr(FetchResult.calculate_backoff, "__wrapped__"):
        FetchResult.calculate_backoff = _backoff_if_consumed(FetchResult.calculate_backoff)
    if not hasattr(Fetcher._get_actions_per_node, "__wrapped__"):
        Fetcher._get_actions_per_node = _fetch_consumed_only(Fetcher._get_actions_per_node)
