"""How the Payout Adapter's events reach Kafka: PayoutSucceeded/PayoutFailed on game.payout and
BetRefunded on game.bet, from a producer of its own that keeps what Kafka has not acknowledged.

Apart from the adapter's loop (agents/payout_adapter.py), which only hands events over after
its commit: a Kafka outage is this module's concern and delays the events, never the payouts.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from streams.codec import encode, type_header
from streams.events import BetRefunded, Message
from streams.settings import Settings

log = logging.getLogger("crash.payout")

# streams.topics.PAYOUT and BET; importing that module would build the Faust app's topic objects.
PAYOUT_TOPIC = "game.payout"
BET_TOPIC = "game.bet"


class EventPublisher:
    """PayoutSucceeded/PayoutFailed to game.payout and BetRefunded to game.bet, keyed by channel_id.

    Lanes hand their events over and go on paying; one background task sends them and keeps what
    Kafka did not acknowledge for the next round (same ids, so a resent event is a duplicate that
    consumers drop). A Kafka outage therefore delays the events, never the payouts."""

    def __init__(self, settings: Settings) -> None:
        self.topic = settings.topic(PAYOUT_TOPIC)
        self.bet_topic = settings.topic(BET_TOPIC)
        self._bootstrap = settings.kafka_bootstrap
        self._producer: AIOKafkaProducer | None = None
        # (topic, key, value, headers) of each event not yet acknowledged
        self._pending: list[tuple[str, bytes, bytes, list[tuple[str, bytes]]]] = []
        self._in_flight = 0
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None

    @property
    def backlog(self) -> int:
        return len(self._pending) + self._in_flight

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    def publish(self, records: Sequence[Message]) -> None:
        if not records:
            return
        self._pending.extend((self.bet_topic if isinstance(record, BetRefunded) else self.topic,
                              record.channel_id.encode(), encode(record), type_header(record)) for record in records)
        self._idle.clear()
        self._wakeup.set()

    async def _run(self) -> None:
        failures = 0
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                if await self._send_pending():
                    failures = 0
                else:
                    failures += 1
                    await asyncio.sleep(min(5.0, 0.1 * 2 ** min(failures, 10)))
            self._idle.set()

    async def _ensure_producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            producer = AIOKafkaProducer(bootstrap_servers=self._bootstrap, acks="all", enable_idempotence=True,
                                        linger_ms=2, request_timeout_ms=15_000)
            try:
                await producer.start()
            except BaseException:
                try:
                    await producer.stop()
                except Exception:  # the start error is the one worth reporting
                    pass
                raise
            self._producer = producer
        return self._producer

    async def _send_pending(self) -> bool:
        """Send what is pending now; True when Kafka acknowledged all of it."""
        batch, self._pending = self._pending, []
        self._in_flight = len(batch)
        try:
            try:
                producer = await self._ensure_producer()
                futures = [await producer.send(topic, value=value, key=key, headers=headers)
                           for topic, key, value, headers in batch]
            except (KafkaError, OSError) as error:
                log.warning("Kafka unavailable, %d events pending: %s", len(batch) + len(self._pending), error)
                self._pending[:0] = batch
                return False
            outcomes = await asyncio.gather(*futures, return_exceptions=True)
            failed = [message for message, outcome in zip(batch, outcomes, strict=True)
                      if isinstance(outcome, BaseException)]
            if failed:
                log.warning("Kafka did not acknowledge %d of %d events (%s); they stay pending", len(failed),
                            len(batch), next(o for o in outcomes if isinstance(o, BaseException)))
                self._pending[:0] = failed
            return not failed
        finally:
            self._in_flight = 0

    async def close(self, timeout_s: float = 10.0) -> None:
        """Send what is left (for at most `timeout_s`), then stop the producer."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            # Not lost for good: the outbox rows say acked/failed, the events can be derived again.
            log.error("exiting with %d PayoutSucceeded/PayoutFailed events not sent", self.backlog)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._producer is not None:
            try:
                await asyncio.wait_for(self._producer.stop(), timeout_s)
            except (TimeoutError, KafkaError, OSError) as error:
                log.warning("Kafka producer did not stop cleanly: %s", error)
            self._producer = None
