"""streams/faust_fixes.py on the real broker: after messages were fetched (and, in Faust, skipped
during a rebalance), seeking "to the committed offsets" reads a never-committed partition again
from its beginning, and a committed one from its committed offset. aiokafka alone leaves the
never-committed partition where fetching had got to: the skipped messages would be lost."""
from __future__ import annotations

import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import OffsetAndMetadata
from faust.transport.drivers import aiokafka as faust_aiokafka

from streams import faust_fixes

pytestmark = pytest.mark.slow


@pytest.fixture
async def topic(base_settings):
    name = f"t.faust-fixes.{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=base_settings.kafka_bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic(name, num_partitions=2, replication_factor=1)])
    producer = AIOKafkaProducer(bootstrap_servers=base_settings.kafka_bootstrap)
    await producer.start()
    for partition in (0, 1):
        for n in range(3):
            await producer.send_and_wait(name, f"m{n}".encode(), partition=partition)
    await producer.stop()
    try:
        yield name
    finally:
        await admin.delete_topics([name])
        await admin.close()


async def fetched_ahead(base_settings, topic: str) -> tuple[AIOKafkaConsumer, TopicPartition, TopicPartition]:
    """A group consumer that has read two messages of each partition and committed partition 1
    at offset 1 (partition 0 never)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=base_settings.kafka_bootstrap, group_id=f"g-{uuid.uuid4().hex}",
                                enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    never, committed = TopicPartition(topic, 0), TopicPartition(topic, 1)
    consumer.assign([never, committed])
    for tp in (never, committed):
        for _ in range(2):
            await consumer.getmany(tp, timeout_ms=5000, max_records=1)
    await consumer.commit({committed: OffsetAndMetadata(1, "")})
    assert await consumer.position(never) == 2 and await consumer.position(committed) == 2
    return consumer, never, committed


async def test_aiokafka_alone_does_not_rewind_a_never_committed_partition(base_settings, topic):
    consumer, never, committed = await fetched_ahead(base_settings, topic)
    try:
        await consumer.seek_to_committed()
        assert await consumer.position(never) == 2          # offsets 0 and 1 would never be read again
        assert await consumer.position(committed) == 1
    finally:
        await consumer.stop()


async def test_the_fix_rewinds_it_to_the_beginning_and_a_committed_one_to_its_offset(base_settings, topic):
    consumer, never, committed = await fetched_ahead(base_settings, topic)
    try:
        offsets = await faust_fixes.seek_to_committed_or_beginning(consumer)
        assert offsets == {never: None, committed: 1}
        assert await consumer.position(never) == 0
        assert await consumer.position(committed) == 1
        again = await consumer.getmany(never, timeout_ms=5000, max_records=1)
        assert [m.offset for m in again[never]] == [0]
    finally:
        await consumer.stop()


def test_every_worker_runs_with_the_fix():
    import streams.app  # noqa: F401  (installs it)
    assert faust_aiokafka.AIOKafkaConsumerThread.seek_to_committed is faust_fixes._seek_to_committed


def test_the_prefetch_backoff_holds_fetches_back_only_for_partitions_faust_consumes(monkeypatch):
    """Records fetched for a partition Faust does not consume (a recovered table's changelog) are
    never taken; their prefetch backoff must not hold back the fetches of every other partition."""
    from types import SimpleNamespace

    from aiokafka.consumer.fetcher import FetchResult
    from faust.types import TP

    import streams.app  # noqa: F401  (installs the fixes)
    consumed, idle = TopicPartition("game.command", 0), TopicPartition("w-orders-changelog", 0)
    waiting = FetchResult(consumed, assignment=None, partition_records=None, backoff=30.0)
    held = FetchResult(idle, assignment=None, partition_records=None, backoff=30.0)

    monkeypatch.setattr(faust_fixes, "_consumer", None)          # not a worker: aiokafka's rule
    assert held.calculate_backoff() > 29 and waiting.calculate_backoff() > 29
    monkeypatch.setattr(faust_fixes, "_consumer", SimpleNamespace(_active_partitions={TP("game.command", 0)}))
    assert held.calculate_backoff() == 0
    assert waiting.calculate_backoff() > 29                     # a consumed partition still backs off


async def test_the_workers_fetcher_asks_only_for_the_partitions_faust_consumes(base_settings, topic, monkeypatch):
    """A worker is assigned its active tables' changelogs, which Faust reads only while it recovers
    them: its fetch requests leave them out until then (each partition of a request costs the
    fetcher's Python), and once Faust consumes one its records arrive from where it stood."""
    from types import SimpleNamespace

    from faust.types import TP

    import streams.app  # noqa: F401  (installs the fixes)
    stream, changelog = TopicPartition(topic, 0), TopicPartition(topic, 1)
    # What Faust consumes is set before any fetcher starts: a consumer's first fetch goes as soon
    # as it is assigned, and without Faust's consumer the filter asks for every partition.
    active = {TP(topic, 0)}
    monkeypatch.setattr(faust_fixes, "_consumer", SimpleNamespace(_active_partitions=active))
    consumers = []
    for of_faust in (True, False):
        consumer = AIOKafkaConsumer(bootstrap_servers=base_settings.kafka_bootstrap, auto_offset_reset="earliest",
                                    enable_auto_commit=False)
        if of_faust:
            faust_fixes._faust_subscriptions.add(consumer._subscription)
        await consumer.start()
        consumer.assign([stream, changelog])
        consumers.append(consumer)
    worker, other = consumers
    try:
        for consumer in consumers:
            batch = await consumer.getmany(stream, timeout_ms=10_000)
            assert [m.value for m in batch[stream]] == [b"m0", b"m1", b"m2"]
            await consumer.getmany(stream, timeout_ms=300)         # more fetches go meanwhile
        assert changelog not in worker._fetcher._records, "the worker fetched a partition Faust does not consume"
        assert await _fetched(other, changelog) == [b"m0", b"m1", b"m2"]   # any other consumer: as before
        active.add(TP(topic, 1))                                    # Faust resumes it to recover the table
        assert await _fetched(worker, changelog) == [b"m0", b"m1", b"m2"]
    finally:
        for consumer in consumers:
            await consumer.stop()


async def _fetched(consumer: AIOKafkaConsumer, tp: TopicPartition) -> list[bytes]:
    values: list[bytes] = []
    for _ in range(50):
        values += [m.value for m in (await consumer.getmany(tp, timeout_ms=200)).get(tp, [])]
        if len(values) >= 3:
            break
    return values
