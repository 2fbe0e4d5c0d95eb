"""The worker's watchdog: a channel whose clock stands still while ticks are sent stops the
worker (so that it is restarted and its partitions assigned again); a moving clock does not."""
from __future__ import annotations

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
    commands._progress.clear()
    yield now
    commands._progress.clear()


def test_a_channel_whose_commands_are_processed_is_left_alone(clock):
    for step in range(100):
        clock["t"] += 1
        commands._check_progress("ch", 5000 + step)     # the clock moves with every tick processed


def test_a_stuck_channel_stops_the_worker_after_the_limit(clock):
    commands._check_progress("ch", 5000)
    clock["t"] += commands.STALL_AFTER_S - 1
    commands._check_progress("ch", 5000)
    clock["t"] += 2
    with pytest.raises(Stopped) as stopped:
        commands._check_progress("ch", 5000)
    assert stopped.value.args == (75,)


def test_waiting_for_the_secret_store_is_not_a_stall(clock, monkeypatch):
    store = commands.chain_store()
    monkeypatch.setattr(store, "waiting_since", 1.0)
    commands._check_progress("ch", 5000)
    clock["t"] += commands.STALL_AFTER_S * 3
    commands._check_progress("ch", 5000)
