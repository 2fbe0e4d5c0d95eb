"""streams/positions.py without Kafka: what an agent does with each offset of a partition, given the
position it recorded (the real consumer and a real hole: tests/test_rebalance.py)."""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
from faust.streams import _current_event

from streams import positions as positions_module
from streams.positions import RESEEK_AFTER_S, SourcePositions
from tables.staging import Staged

TOPIC = "t.game.command"


class FakeTable:
    name = "positions"

    def __init__(self, values: dict) -> None:
        self.values = values

    def get(self, key):
        return self.values.get(key)


@dataclass
class Message:
    topic: str
    partition: int
    offset: int


class Event:
    def __init__(self, offset: int, partition: int = 3) -> None:
        self.message = Message(TOPIC, partition, offset)


@pytest.fixture
def consumer(monkeypatch):
    """The app's consumer as positions.py sees it: its generation, the partition's earliest
    offset, and the seeks it is asked for."""
    fake = SimpleNamespace(generation=1, earliest=0, seeks=[])

    async def earliest_offsets(tp):
        return {tp: fake.earliest}

    async def seek(consumer, tp, offset):
        fake.seeks.append((tp.partition, offset))

    class App:
        consumer = SimpleNamespace(earliest_offsets=earliest_offsets)

        @property
        def consumer_generation_id(self) -> int:
            return fake.generation

    monkeypatch.setattr(positions_module, "app", App())
    monkeypatch.setattr(positions_module, "seek_stream_partition", seek)
    return fake


def table(monkeypatch, recorded: dict) -> FakeTable:
    fake = FakeTable(recorded)
    monkeypatch.setattr(positions_module, "positions", fake)
    return fake


async def admit(agent: SourcePositions, staged: Staged, offset: int, partition: int = 3) -> bool:
    event = Event(offset, partition)
    _current_event.set(weakref.ref(event))
    return await agent.admit(event, staged)


async def test_contiguous_offsets_are_handled_and_the_next_one_is_staged(consumer, monkeypatch):
    positions = table(monkeypatch, {f"commands/{TOPIC}/3": 10})
    agent, staged = SourcePositions("commands"), Staged()
    assert [await admit(agent, staged, o) for o in (10, 11, 12)] == [True, True, True]
    assert staged.get(positions, f"commands/{TOPIC}/3") == 13
    assert consumer.seeks == []


async def test_a_partition_never_recorded_starts_wherever_the_consumer_starts(consumer, monkeypatch):
    positions = table(monkeypatch, {})
    agent, staged = SourcePositions("commands"), Staged()
    assert await admit(agent, staged, 500)
    assert staged.get(positions, f"commands/{TOPIC}/3") == 501


async def test_a_repeat_is_handled_and_the_record_does_not_move_back(consumer, monkeypatch):
    positions = table(monkeypatch, {f"commands/{TOPIC}/3": 10})
    agent, staged = SourcePositions("commands"), Staged()
    assert await admit(agent, staged, 7)            # after a restart: handled again (idempotent)
    assert staged.get(positions, f"commands/{TOPIC}/3") == 10
    assert consumer.seeks == []


async def test_a_hole_rewinds_the_partition_and_nothing_past_it_is_handled_until_it_is_read(consumer, monkeypatch):
    positions = table(monkeypatch, {f"commands/{TOPIC}/3": 10, f"commands/{TOPIC}/4": 50})
    agent, staged = SourcePositions("commands"), Staged()
    assert not await admit(agent, staged, 14)       # 10-13 were never handled
    assert consumer.seeks == [(3, 10)]
    assert not await admit(agent, staged, 15)       # fetched before the seek: left alone
    assert await admit(agent, staged, 50, partition=4)   # other partitions go on
    assert consumer.seeks == [(3, 10)]              # no second seek right away
    assert [await admit(agent, staged, o) for o in (10, 11, 12, 13, 14)] == [True] * 5
    assert staged.get(positions, f"commands/{TOPIC}/3") == 15


async def test_a_rewind_seeks_again_when_old_messages_keep_coming(consumer, monkeypatch):
    table(monkeypatch, {f"commands/{TOPIC}/3": 10})
    agent, staged = SourcePositions("commands"), Staged()
    assert not await admit(agent, staged, 14)
    rewind = agent._rewinds[(TOPIC, 3)]
    rewind.sought_at -= RESEEK_AFTER_S + 0.01       # as if the seek were that old
    assert not await admit(agent, staged, 16)
    assert consumer.seeks == [(3, 10), (3, 10)]


async def test_a_rebalance_ends_a_rewind_and_the_record_decides_again(consumer, monkeypatch):
    table(monkeypatch, {f"commands/{TOPIC}/3": 10})
    agent, staged = SourcePositions("commands"), Staged()
    assert not await admit(agent, staged, 14)
    consumer.generation = 2                         # Faust sought every partition again
    assert await admit(agent, staged, 10)


async def test_offsets_deleted_by_retention_are_not_waited_for(consumer, monkeypatch):
    table(monkeypatch, {f"commands/{TOPIC}/3": 10})
    agent, staged = SourcePositions("commands"), Staged()
    consumer.earliest = 14                          # 10-13 are gone from the log
    assert await admit(agent, staged, 14)
    consumer.earliest = 20
    assert await admit(agent, staged, 30) is False  # 15-19 gone, 20-29 not: read from 20
    assert consumer.seeks == [(3, 20)]
