"""The flight clock: each flying term's TermTicks, sent on their slots from a task of their own.

A TermTick is what a player's page shows between events: the multiple at `flying_at + k *
tick_ms`. It decides nothing (cashouts are decided from receive times, the crash from the
channel's clock), so it need not pass through the channel's ordered command stream. It used to:
the orchestrator sent one when a clock Tick came through game.command, and every tick then
waited behind whatever that stream and the worker's other agents had queued (crash-bench's
ticks phase, 10,000 autos flying: jitter p99 60-100 ms after the consumer fixes, where the
design asks for 20). Here a task sleeps until the next slot of any flying term and sends it.

- A flight is handed over by the orchestrator after the batch that saw the term flying is
  acknowledged (`after_commit`), so TermStateChanged(flying) is in Kafka before the first tick;
  it is handed over again on every advance, so a worker that takes a channel over has it within
  one clock Tick. A rebalance drops them all.
- No tick at or after the crash time (known from the crash point, in this process's memory
  only, like the point itself), and none once the orchestrator has ended the term (`land`,
  during the batch that decides the crash or abort, before its events are sent). A slot missed
  (the loop held up) is not sent late: the newest due slot is.
- Event ids are `<term>.tick.<elapsed>` as before: two workers during a rebalance send the
  same events, and the page ignores a multiple that does not grow.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from streams import metrics, money
from streams.app import app
from streams.emit import Emitter
from streams.events import TermTick
from streams.processing import Batch, now_ms
from streams.topics import term_topic

log = logging.getLogger(__name__)

IDLE_S = 1.0                  # nothing flying: look again this often (a new flight wakes it anyway)


@dataclass
class Flight:
    term_id: str
    channel_id: str
    flying_at: int
    crash_at: int             # secret until the crash: never sent, never stored
    tick_ms: int
    growth_per_ms: float
    next_slot: int = 0

    def __post_init__(self) -> None:
        if not self.next_slot:
            self.next_slot = self.flying_at + self.tick_ms

    def due(self, now: int) -> int | None:
        """The newest slot due at `now` that is before the crash, once; None if there is none."""
        if now < self.next_slot:
            return None
        slot = self.next_slot + (now - self.next_slot) // self.tick_ms * self.tick_ms
        self.next_slot = slot + self.tick_ms
        return slot if slot < self.crash_at else None

    def tick(self, slot: int) -> TermTick:
        elapsed = slot - self.flying_at
        return TermTick(event_id=f"{self.term_id}.tick.{elapsed}", channel_id=self.channel_id, term_id=self.term_id,
                        ts=slot, trace_id=self.term_id, elapsed_ms=elapsed,
                        multiple_x100=money.multiplier_x100(elapsed, self.growth_per_ms))


# channel_id -> its flying term, for the channels this worker owns.
_flights: dict[str, Flight] = {}
_changed = asyncio.Event()
_sending: set[asyncio.Task] = set()


def fly(batch: Batch, term_id: str, channel_id: str, flying_at: int, crash_at: int, tick_ms: int,
        growth_per_ms: float) -> None:
    """The orchestrator advanced a flying term: the clock takes it once the batch is acknowledged."""
    current = _flights.get(channel_id)
    if current is None or current.term_id != term_id:
        batch.work.setdefault("flights", {})[channel_id] = Flight(term_id, channel_id, flying_at, crash_at, tick_ms,
                                                                  growth_per_ms)


def land(batch: Batch, channel_id: str) -> None:
    """The orchestrator ended the channel's term: no tick from now on."""
    batch.work.get("flights", {}).pop(channel_id, None)
    _flights.pop(channel_id, None)


async def after_commit(batch: Batch) -> None:
    for channel_id, flight in batch.work.get("flights", {}).items():
        current = _flights.get(channel_id)
        if current is None or current.term_id != flight.term_id:
            _flights[channel_id] = flight
            _changed.set()


def _forget(*args, **kwargs) -> None:
    _flights.clear()


app.on_partitions_revoked.connect(_forget)


def send_due(now: int) -> float:
    """Send every slot due at `now`; returns the seconds until the next slot."""
    emit = Emitter()
    for channel_id, flight in list(_flights.items()):
        if now >= flight.crash_at:
            del _flights[channel_id]
            continue
        slot = flight.due(now)
        if slot is not None:
            emit.send(term_topic, channel_id, flight.tick(slot))
            metrics.TICK_LATENESS_MS.observe(now - slot)
    if emit.pending:
        # Not awaited here: the next slot (another channel's, maybe) must not wait for this ack.
        task = asyncio.ensure_future(emit.flush())
        _sending.add(task)
        task.add_done_callback(_sent)
    upcoming = min((f.next_slot for f in _flights.values()), default=now + IDLE_S * 1000)
    return max(0.0, (upcoming - now) / 1000)


def _sent(task: asyncio.Task) -> None:
    _sending.discard(task)
    if not task.cancelled() and task.exception() is not None:
        log.warning("ticks not sent: %r", task.exception())


@app.task
async def flight_clock() -> None:
    while True:
        wait = send_due(now_ms())
        _changed.clear()
        try:
            await asyncio.wait_for(_changed.wait(), timeout=min(wait, IDLE_S))
        except TimeoutError:
            pass
