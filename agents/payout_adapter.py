"""`crash-payout`: the Payout Adapter, where money leaves the system (DESIGN sections 7 and 9).

A standalone asyncio process (not a Faust agent). The sink writes `payout_outbox` rows (status
`ready`) in the same MySQL transaction as the business row they pay; this worker:

1. claims due rows in one short transaction (`FOR UPDATE SKIP LOCKED`, so several adapters share
   the table) and leases them (`sent`, `leased_until`); a row whose lease ran out (its worker died)
   is claimed again and sent again, which is safe because the wallet is idempotent on order_no;
2. credits the batch in one `credit_batch` call of the operator's wallet;
3. records each definitive answer (`acked` + receipt, or `failed` on refused/conflict); an
   unknown outcome (`WalletUnavailable`) puts the rows back to `ready` with exponential backoff
   and jitter, and makes them `failed` after `payout_max_tries` tries. Every write is
   conditional on the lease, so a worker that lost its lease cannot overwrite a newer owner;
4. emits PayoutSucceeded / PayoutFailed on game.payout after the DB commit (ids are
   deterministic, so a re-sent event is a duplicate consumers drop; a lost one is re-derivable
   from the outbox), and for a credited refund the bet's terminal outcome, BetRefunded, on
   game.bet (streams/refunds.py: the row's meta carries its cause and order).

No float ever touches an amount: amounts are read from the row and sent as integers. A row and
the operators' queries of the outbox are agents/payout_outbox.py; the events' producer is
agents/payout_events.py.
"""
from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import random
import signal
import time
from dataclasses import dataclass
from typing import Any

from prometheus_client import start_http_server
from sqlalchemy import bindparam, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from agents.payout_events import EventPublisher
from agents.payout_outbox import OutboxRow, now_ms
from sql.db import make_engine
from streams import metrics
from streams.backoff import backoff_ms
from streams.events import Message, PayoutFailed, PayoutSucceeded
from streams.refunds import refunded
from streams.settings import Settings, get_settings
from web.wallet_client import WalletClient, WalletRejected, WalletResult, WalletUnavailable

log = logging.getLogger("crash.payout")

ERROR_CHARS = 512                # payout_outbox.last_error
EVENT_ID_CHARS = 96              # event_log.event_id
FAILED_GAUGE_EVERY_S = 5.0
DB_RETRY_CAP_MS = 5_000
SINGLE_CREDIT_CONCURRENCY = 8
# Events kept in memory while Kafka is away; beyond this the adapter stops claiming new rows.
EVENT_BACKLOG_PAUSE = 10_000
# Batches in flight per process: while one lane claims or records, another keeps the wallet busy.
LANES = 2
# Connection-level failures of the database (restart, failover, network): log, wait, retry.
DB_ERRORS: tuple[type[BaseException], ...] = (DBAPIError, OSError, ConnectionError)

_COLUMNS = ("id, order_no, kind, channel_id, term_id, bet_id, user_id, currency, amount, meta, retry_count,"
            " created_at")
# Two selects instead of one OR: each follows the (status, next_at) index in order, so a claim
# locks only the rows it takes and a second adapter can claim the next ones at the same time.
# Expired leases go first: their rows are the oldest and their worker is gone.
_CLAIM_EXPIRED = text(f"SELECT {_COLUMNS} FROM payout_outbox WHERE status = 'sent' AND leased_until < :now"
                      " ORDER BY next_at, id LIMIT :limit FOR UPDATE SKIP LOCKED")
_CLAIM_READY = text(f"SELECT {_COLUMNS} FROM payout_outbox WHERE status = 'ready' AND next_at <= :now"
                    " ORDER BY next_at, id LIMIT :limit FOR UPDATE SKIP LOCKED")
_LEASE = text("UPDATE payout_outbox SET status = 'sent', leased_until = :lease, updated_at = :now"
              " WHERE id IN :ids").bindparams(bindparam("ids", expanding=True))
_OWNED = " WHERE id = :id AND status = 'sent' AND leased_until = :lease"
_ACK = text("UPDATE payout_outbox SET status = 'acked', receipt = :receipt, leased_until = NULL,"
            " updated_at = :now" + _OWNED)
_FAIL = text("UPDATE payout_outbox SET status = 'failed', retry_count = :retry_count, last_error = :error,"
             " leased_until = NULL, updated_at = :now" + _OWNED)
_RETRY = text("UPDATE payout_outbox SET status = 'ready', retry_count = :retry_count, next_at = :next_at,"
              " last_error = :error, leased_until = NULL, updated_at = :now" + _OWNED)
_COUNT_FAILED = text("SELECT COUNT(*) FROM payout_outbox WHERE status = 'failed'")


def _event_id(order_no: str, suffix: str) -> str:
    """`<order_no>.<suffix>`; an order_no too long for event_log.event_id is hashed (still deterministic)."""
    event_id = f"{order_no}.{suffix}"
    if len(event_id) <= EVENT_ID_CHARS:
        return event_id
    return f"{hashlib.sha256(order_no.encode()).hexdigest()[:64]}.{suffix}"


# What the wallet said about one row: a definitive WalletResult, or no definitive answer.
@dataclass(frozen=True)
class Unknown:
    error: str


@dataclass(frozen=True)
class Invalid:
    """The wallet refused the request itself (400): sending it again will not help."""
    error: str


Answer = WalletResult | Unknown | Invalid


def _short(error: str) -> str:
    return error if len(error) <= ERROR_CHARS else error[:ERROR_CHARS - 3] + "..."


# ---------------------------------------------------------------- the worker

async def _wait(stop: asyncio.Event, ms: int, wake: asyncio.Event | None = None) -> None:
    """Sleep `ms`, or less if asked to stop (or if `wake` is set)."""
    waiters = [asyncio.ensure_future(event.wait()) for event in (stop, wake) if event is not None]
    try:
        await asyncio.wait(waiters, timeout=ms / 1000, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


class PayoutAdapter:
    def __init__(self, settings: Settings, engine: AsyncEngine, wallet: WalletClient, events: EventPublisher,
                 rng: random.Random | None = None) -> None:
        self.settings = settings
        self.engine = engine
        self.wallet = wallet
        self.events = events
        self.rng = rng or random.Random()
        self.failed_changed = asyncio.Event()
        self._backlog = asyncio.Event()  # set while full batches are being claimed

    # ---- 1. claim
    async def claim(self) -> list[OutboxRow]:
        batch, now = self.settings.payout_batch, now_ms()
        # Strictly later than any lease a previous owner held (it expired before `now`), so the
        # lease value also identifies this claim in the conditional updates below.
        lease = now + self.settings.payout_lease_ms
        async with self.engine.begin() as conn:
            rows = list(await conn.execute(_CLAIM_EXPIRED, {"now": now, "limit": batch}))
            if len(rows) < batch:
                rows += list(await conn.execute(_CLAIM_READY, {"now": now, "limit": batch - len(rows)}))
            if rows:
                await conn.execute(_LEASE, {"lease": lease, "now": now, "ids": [row.id for row in rows]})
        return [OutboxRow.from_db(row, lease) for row in rows]

    # ---- 2. credit
    async def credit(self, rows: list[OutboxRow]) -> list[Answer]:
        try:
            return list(await self.wallet.credit_batch([row.item() for row in rows]))
        except WalletUnavailable as error:
            log.warning("wallet unavailable for a batch of %d, will retry: %s", len(rows), error.reason)
            return [Unknown(error.reason)] * len(rows)
        except WalletRejected as error:
            if error.status == 400 and len(rows) > 1:
                # One bad item refuses the whole batch: find it by sending them one by one.
                log.warning("wallet refused a batch of %d (%s); crediting one by one", len(rows), error)
                return await self._credit_singly(rows)
            if error.status == 400:
                return [Invalid(str(error))]
            # 401/403/404...: a configuration problem; retry (with backoff) until it is fixed.
            log.error("wallet refused the request: %s", error)
            return [Unknown(str(error))] * len(rows)
        except Exception as error:  # an unexpected failure is an unknown outcome: retry safely
            log.exception("wallet call failed")
            return [Unknown(f"{type(error).__name__}: {error}")] * len(rows)

    async def _credit_singly(self, rows: list[OutboxRow]) -> list[Answer]:
        slots = asyncio.Semaphore(SINGLE_CREDIT_CONCURRENCY)

        async def one(row: OutboxRow) -> Answer:
            async with slots:
                return (await self.credit([row]))[0]

        return list(await asyncio.gather(*(one(row) for row in rows)))

    # ---- 3. record
    def _decide(self, row: OutboxRow, answer: Answer, now: int, jitter: float
                ) -> tuple[Any, dict[str, Any], str, Message | None]:
        """(statement, params, outcome label, event) of one row."""
        settings = self.settings
        if isinstance(answer, WalletResult) and answer.ok:
            receipt = dataclasses.asdict(answer)
            event = PayoutSucceeded(event_id=_event_id(row.order_no, "succeeded"), receipt=receipt,
                                    **row.event_base(now))
            return _ACK, {**row.owned(now), "receipt": json.dumps(receipt, separators=(",", ":"))}, "acked", event
        if isinstance(answer, WalletResult):  # refused or conflict: final, an operator decides
            reason, tries = _short(f"{answer.status}: {answer.reason or 'no reason given'}"), row.retry_count
        elif isinstance(answer, Invalid):
            reason, tries = _short(f"rejected: {answer.error}"), row.retry_count
        else:
            tries = row.retry_count + 1
            if tries < settings.payout_max_tries:
                delay = backoff_ms(tries, settings.payout_backoff_base_ms, settings.payout_backoff_cap_ms, jitter)
                return _RETRY, {**row.owned(now), "retry_count": tries, "next_at": now + delay,
                                "error": _short(answer.error)}, "retry", None
            reason = _short(f"gave up after {tries} tries: {answer.error}")
        event = PayoutFailed(event_id=_event_id(row.order_no, "failed"), reason=reason, retry_count=tries,
                             **row.event_base(now))
        return _FAIL, {**row.owned(now), "retry_count": tries, "error": reason}, "failed", event

    async def record(self, rows: list[OutboxRow], answers: list[Answer]) -> list[Message]:
        """Write every outcome in one transaction; returns the events of the rows still ours."""
        now = now_ms()
        # One jitter per batch: rows that failed together come back together, as one batch again.
        jitter = self.rng.random()
        decisions = [self._decide(row, answer, now, jitter) for row, answer in zip(rows, answers, strict=True)]
        applied: list[int] = []
        async with self.engine.begin() as conn:
            for index, (statement, params, _, _) in enumerate(decisions):
                if (await conn.execute(statement, params)).rowcount == 1:
                    applied.append(index)
                else:  # our lease ran out and another worker owns the row now: its result wins
                    log.warning("lost the lease of %s; leaving it to its new owner", rows[index].order_no)
        events: list[Message] = []
        for index in applied:
            row, (_, _, outcome, event) = rows[index], decisions[index]
            if outcome == "acked":
                metrics.PAYOUTS.labels(kind=row.kind, outcome="acked").inc()
                metrics.PAYOUT_LATENCY.observe(max(0, now - row.created_at) / 1000)
            elif outcome == "failed":
                metrics.PAYOUTS.labels(kind=row.kind, outcome="failed").inc()
                self.failed_changed.set()
                log.error("payout %s failed: %s", row.order_no, decisions[index][1]["error"])
            if event is not None:
                events.append(event)
            if isinstance(event, PayoutSucceeded) and row.kind == "refund":
                events.append(refunded(event, row.meta, _event_id(row.order_no, "refunded")))
        return events

    @staticmethod
    def _count_attempts(answers: list[Answer]) -> None:
        for answer in answers:
            if isinstance(answer, WalletResult):
                label = "replayed" if answer.ok and answer.replayed else answer.status
            else:
                label = "unavailable" if isinstance(answer, Unknown) else "rejected"
            metrics.PAYOUT_ATTEMPTS.labels(outcome=label).inc()

    # ---- one batch
    async def run_once(self, stop: asyncio.Event | None = None) -> int:
        """Claim, credit and record one batch, then hand its events over; returns the rows claimed."""
        started = time.perf_counter()
        rows = await self.claim()
        if not rows:
            return 0
        claimed = time.perf_counter()
        answers = await self.credit(rows)
        credited = time.perf_counter()
        self._count_attempts(answers)
        events = await self._record_until_done(rows, answers, stop)
        self.events.publish(events)  # after the commit: the outbox is the truth, events follow it
        log.debug("batch of %d: claim %.0f ms, wallet %.0f ms, record %.0f ms", len(rows),
                  (claimed - started) * 1000, (credited - claimed) * 1000, (time.perf_counter() - credited) * 1000)
        return len(rows)

    async def _record_until_done(self, rows: list[OutboxRow], answers: list[Answer],
                                 stop: asyncio.Event | None) -> list[Message]:
        """The wallet's answers exist only in memory now: keep trying to record them while the
        database is away. Giving up is still safe (the rows are re-sent after their lease and the
        wallet replays), so a stop request ends the attempts after a few."""
        attempt = 0
        while True:
            try:
                return await self.record(rows, answers)
            except DB_ERRORS as error:
                attempt += 1
                if stop is not None and stop.is_set() and attempt >= 3:
                    log.error("could not record %d wallet answers (%s); their leases will expire", len(rows), error)
                    return []
                delay = min(DB_RETRY_CAP_MS, 50 * 2 ** min(attempt, 10))
                log.warning("database unavailable while recording a batch (%s); retrying in %d ms", error, delay)
                await asyncio.sleep(delay / 1000)

    # ---- 5. loop
    async def run(self, stop: asyncio.Event) -> None:
        log.info("payout adapter running: %d lanes, batch %d, poll %d ms, lease %d ms, topic %s", LANES,
                 self.settings.payout_batch, self.settings.payout_poll_ms, self.settings.payout_lease_ms,
                 self.events.topic)
        await asyncio.gather(*(self._lane(stop, lane) for lane in range(LANES)))
        log.info("payout adapter stopped")

    async def _lane(self, stop: asyncio.Event, lane: int) -> None:
        """One claim -> credit -> record loop. Lane 0 polls; the others join in while there is a
        backlog (full batches), so that the wallet is working while a lane claims or records."""
        poll_ms, batch = self.settings.payout_poll_ms, self.settings.payout_batch
        failures = 0
        while not stop.is_set():
            if self.events.backlog >= EVENT_BACKLOG_PAUSE:
                await _wait(stop, 1000)  # Kafka is away for long: do not pile up more events
                continue
            try:
                claimed = await self.run_once(stop)
            except DB_ERRORS as error:
                failures += 1
                delay = min(DB_RETRY_CAP_MS, poll_ms * 2 ** min(failures, 10))
                log.warning("database unavailable (%s: %s); retrying in %d ms",
                            type(error).__name__, str(error).splitlines()[0][:200], delay)
                await _wait(stop, delay)
                continue
            except Exception:
                failures += 1
                log.exception("payout batch failed")
                await _wait(stop, min(DB_RETRY_CAP_MS, poll_ms * 2 ** min(failures, 10)))
                continue
            if failures:
                log.info("database reachable again")
                failures = 0
            if claimed >= batch:  # a full batch means more is waiting: go again at once
                self._backlog.set()
            elif lane == 0:
                self._backlog.clear()
                await _wait(stop, poll_ms)
            else:
                self._backlog.clear()
                await _wait(stop, poll_ms * 10, self._backlog)

    # ---- 6. the failed-rows gauge
    async def watch_failed(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                async with self.engine.connect() as conn:
                    metrics.PAYOUTS_FAILED.set((await conn.execute(_COUNT_FAILED)).scalar_one())
            except DB_ERRORS as error:
                log.debug("could not count failed payouts: %s", error)
            self.failed_changed.clear()
            await _wait(stop, int(FAILED_GAUGE_EVERY_S * 1000), self.failed_changed)


# ---------------------------------------------------------------- process

async def serve(settings: Settings) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)  # finish the batch in flight, then exit
    if settings.payout_metrics_port > 0:
        start_http_server(settings.payout_metrics_port, addr=settings.web_host)
        log.info("metrics on http://%s:%d/metrics", settings.web_host, settings.payout_metrics_port)
    engine = make_engine(settings.db_url, pool_size=2)
    wallet = WalletClient.from_settings(settings)
    events = EventPublisher(settings)
    events.start()
    adapter = PayoutAdapter(settings, engine, wallet, events)
    gauge = asyncio.create_task(adapter.watch_failed(stop))
    try:
        await adapter.run(stop)
    finally:
        stop.set()
        await gauge
        await events.close()
        await wallet.close()
        await engine.dispose()
    return 0


def main() -> int:
    settings = get_settings()
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    return asyncio.run(serve(settings))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
