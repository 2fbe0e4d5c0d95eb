"""The worker's watchdog: a channel whose clock stands still while the broker acknowledges the
ticks stops the worker (so that it is restarted and its partitions assigned again); a moving
clock does not, and neither does a broker outage (every worker would exit at once)."""
from __future__ import annotations

from concurrent.futures import Future

import pytest

from agents import commands


class Stopped(Exception):
    pass


@pytest.fixture
def clock(monkeypatch):
    now = {"t": 1000.0}
    monkeypatch.setattr(commands.time, "monotonic", lambda: now["t"])

    def exit_(code):
        raise Stopped(code)
    monkeypatch.setattr(commands.os, "_exit", exit_)
    monkeypatch.setattr(commands.logging, "shutdown", lambda: None)
    monkeypatch.setitem(commands._last_ack, "at", now["t"])
    commands._progress.clear()
    yield now
    commands._progress.clear()


def ticks(clock, seconds: float, channel_clock: int | None, acked: bool = True) -> None:
    """One tick a second for `seconds`: the broker acknowledges each (or none), the channel's
    clock stays at `channel_clock` (or moves with every tick when None)."""
    for step in range(int(seconds)):
        clock["t"] += 1
        if acked:
            sent: Future = Future()
            sent.set_result(None)
            commands._tick_acknowledged(sent)
        commands._check_progress("ch", 5000 + step if channel_clock is None else channel_clock)


def test_a_channel_whose_commands_are_processed_is_left_alone(clock):
    ticks(clock, 3 * commands.STALL_AFTER_S, channel_clock=None)


def test_a_stuck_channel_stops_the_worker_after_the_limit(clock):
    ticks(clock, commands.STALL_AFTER_S, channel_clock=5000)
    with pytest.raises(Stopped) as stopped:
        ticks(clock, 2, channel_clock=5000)
    assert stopped.value.args == (75,)


def test_a_broker_outage_is_not_a_stall_and_the_count_starts_when_the_broker_is_back(clock):
    ticks(clock, 10, channel_clock=5000)
    ticks(clock, 3 * commands.STALL_AFTER_S, channel_clock=5000, acked=False)     # the broker is down
    ticks(clock, commands.STALL_AFTER_S - 2, channel_clock=5000)      # back, and the consumer still stuck
    with pytest.raises(Stopped):
        ticks(clock, 3, channel_clock=5000)


def test_a_failed_send_is_no_acknowledgement(clock):
    ticks(clock, 10, channel_clock=5000)
    before = commands._last_ack["at"]
    clock["t"] += 1
    failed: Future = Future()
    failed.set_exception(ConnectionError("broker away"))
    commands._tick_acknowledged(failed)
    assert commands._last_ack["at"] == before


def test_waiting_for_the_secret_store_is_not_a_stall(clock, monkeypatch):
    store = commands.chain_store()
    monkeypatch.setattr(store, "waiting_since", 1.0)
    ticks(clock, 3 * commands.STALL_AFTER_S, channel_clock=5000)
