"""The flight clock's slots (agents/flight_clock.py): pure arithmetic of when a TermTick is due."""
from __future__ import annotations

from agents.flight_clock import Flight

FLYING_AT = 10_000


def flight(crash_in_ms: int = 10_000) -> Flight:
    return Flight("ch-1", "ch", FLYING_AT, FLYING_AT + crash_in_ms, 100, 0.0004)


def test_a_slot_is_due_once_from_its_time():
    f = flight()
    assert f.due(FLYING_AT + 99) is None, "the first tick is one period after take-off"
    assert f.due(FLYING_AT + 100) == FLYING_AT + 100
    assert f.due(FLYING_AT + 150) is None, "not twice"
    assert f.due(FLYING_AT + 207) == FLYING_AT + 200
    assert f.next_slot == FLYING_AT + 300


def test_missed_slots_are_skipped_not_sent_late():
    f = flight()
    assert f.due(FLYING_AT + 100) == FLYING_AT + 100
    assert f.due(FLYING_AT + 730) == FLYING_AT + 700, "after a pause: the newest due slot only"
    assert f.due(FLYING_AT + 799) is None
    assert f.due(FLYING_AT + 800) == FLYING_AT + 800


def test_no_slot_at_or_after_the_crash():
    f = flight(crash_in_ms=300)
    assert f.due(FLYING_AT + 200) == FLYING_AT + 200
    assert f.due(FLYING_AT + 300) is None, "the slot at the crash time is not a flying tick"
    assert f.due(FLYING_AT + 1000) is None


def test_a_tick_shows_the_curve_at_its_slot():
    tick = flight().tick(FLYING_AT + 1000)
    assert (tick.event_id, tick.ts, tick.elapsed_ms) == ("ch-1.tick.1000", FLYING_AT + 1000, 1000)
    assert tick.multiple_x100 == 149            # floor(100 * e^(0.0004 * 1000)) = floor(149.18)
