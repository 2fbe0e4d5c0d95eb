"""Seamless mode (DESIGN section 9): debit the player's wallet, then place the bet.

The intent is written to MySQL (player_debit) before the debit, with the command as it will be
placed (its receive time included). A debit whose answer was lost (timeout, dropped
connection, a process that died) is finished by the resolver: it repeats the debit (the wallet
is idempotent on order_no = api_order_no) and then places the bet with its original receive
time. Once money may have left the player, the pipeline always decides; a bet it refuses
after the debit is refunded by the Refund Service (the command is marked `debited`).

The resolver takes each row on its own (issue 9, finding 4): a row it cannot finish now (wallet
or Kafka unavailable) is tried again later with a growing backoff (`next_at`), and a row the
wallet refuses as a request (4xx: it will never succeed as it is) is set aside as `stuck` with
the reason, for an operator; neither holds back the rows behind it.

Used by every face that places bets for players: the bet API's POST /v1/player/bets and the
player page.
"""
from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable

from prometheus_client import Counter
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from streams.codec import decode, encode
from streams.events import CommandReply, PlaceBet
from web.http import BadRequest
from web.wallet_client import WalletClient, WalletRejected, WalletResult, WalletUnavailable

log = logging.getLogger(__name__)

__all__ = ["DebitSaga"]

DEBITS = Counter("gateway_player_debits_total", "Seamless-mode debits", ["outcome"])
# A pending intent older than this is the resolver's (its request is gone or stuck).
STALE_MS = 5000
# A row being resolved is leased for this long (another gateway's resolver skips it).
LEASE_MS = 30_000
RETRY_BASE_MS, RETRY_CAP_MS = 1000, 60_000
RESOLVE_BATCH = 100
RESOLVE_CONCURRENCY = 8
STUCK = Counter("gateway_player_debits_stuck_total", "Seamless debits the resolver set aside (wallet refused"
                " the request as such); they need an operator")


def retry_delay_ms(attempts: int) -> int:
    """Full-jitter exponential backoff: a random delay up to min(cap, base * 2^attempts)."""
    return int(random.uniform(0.5, 1.0) * min(RETRY_CAP_MS, RETRY_BASE_MS * 2 ** min(attempts, 16)))


def _now() -> int:
    return int(time.time() * 1000)


class DebitSaga:
    def __init__(self, db: AsyncEngine, wallet: WalletClient,
                 place: Callable[[PlaceBet], Awaitable[CommandReply]],
                 send: Callable[[PlaceBet], Awaitable[None]]) -> None:
        self.db = db
        self.wallet = wallet
        self._place = place      # send the command and wait for the pipeline's decision
        self._send = send        # send the command only (the resolver does not wait)
        self._task: asyncio.Task | None = None
        self._background: set[asyncio.Task] = set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._resolve_forever())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def debit_and_place(self, command: PlaceBet) -> CommandReply | WalletResult:
        """Debit the stake, then place the bet; the wallet's refusal is returned as is."""
        async with self.db.begin() as conn:
            await conn.execute(text(
                "INSERT INTO player_debit (channel_id, api_order_no, user_id, currency, amount, command,"
                " state, received_at, updated_at) VALUES (:c, :o, :u, :cur, :a, :cmd, 'pending', :t, :now)"
                " ON DUPLICATE KEY UPDATE channel_id = channel_id"),
                {"c": command.channel_id, "o": command.api_order_no, "u": command.user_id, "cur": command.currency,
                 "a": command.amount, "cmd": encode(command).decode(), "t": command.ts, "now": _now()})
            row = (await conn.execute(text(
                "SELECT command FROM player_debit WHERE channel_id = :c AND api_order_no = :o"),
                {"c": command.channel_id, "o": command.api_order_no})).first()
        first = decode(row.command, (PlaceBet,))
        if (first.user_id, first.amount, first.currency) != (command.user_id, command.amount, command.currency):
            raise BadRequest(409, "order_no_taken", "api_order_no already used with different content")
        result = await self._debit(first)
        if not result.ok:
            return result
        reply = await self._place(first)
        self._in_background(self._set_state(first, "placed"))   # bookkeeping, off the answer's path
        return reply

    async def _debit(self, command: PlaceBet) -> WalletResult:
        """Debit (or repeat the debit of) one bet's stake; records a refusal."""
        try:
            result = await self.wallet.debit(command.api_order_no, command.user_id, command.currency, command.amount,
                                             meta={"channel_id": command.channel_id, "kind": "stake"})
        except WalletUnavailable:
            DEBITS.labels(outcome="unknown").inc()
            raise
        DEBITS.labels(outcome=result.status).inc()
        if not result.ok:
            async with self.db.begin() as conn:
                await conn.execute(text(
                    "UPDATE player_debit SET state = 'refused', wallet_result = :r, updated_at = :now"
                    " WHERE channel_id = :c AND api_order_no = :o AND state = 'pending'"),
                    {"r": json.dumps(result.__dict__), "now": _now(), "c": command.channel_id,
                     "o": command.api_order_no})
        # An ok debit is not recorded here: the bet is placed at once, and a row left
        # 'pending' is resolved by repeating the (idempotent) debit.
        return result

    async def _set_state(self, command: PlaceBet, state: str) -> None:
        async with self.db.begin() as conn:
            await conn.execute(text(
                "UPDATE player_debit SET state = :s, updated_at = :now WHERE channel_id = :c AND api_order_no = :o"),
                {"s": state, "now": _now(), "c": command.channel_id, "o": command.api_order_no})

    def _in_background(self, coroutine) -> None:
        task = asyncio.create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _resolve_forever(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            try:
                await self.resolve_once()
            except asyncio.CancelledError:
                raise
            except Exception as error:   # keep resolving after any failure; the rows stay
                log.warning("debit resolver: %s", error)

    async def resolve_once(self) -> None:
        """Finish debits whose answer was lost: repeat them, then let the pipeline decide.

        Each due row is worked on its own: its failure is recorded on it (backoff, or `stuck`)
        and never stops the others.
        """
        now = _now()
        async with self.db.begin() as conn:
            rows = (await conn.execute(text(
                "SELECT channel_id, api_order_no, command, state, attempts FROM player_debit"
                " WHERE state IN ('pending', 'debited') AND updated_at < :stale AND next_at <= :now"
                " ORDER BY next_at, updated_at LIMIT :n FOR UPDATE SKIP LOCKED"),
                {"stale": now - STALE_MS, "now": now, "n": RESOLVE_BATCH})).all()
            for row in rows:
                await conn.execute(text(
                    "UPDATE player_debit SET updated_at = :now, next_at = :lease"
                    " WHERE channel_id = :c AND api_order_no = :o"),
                    {"now": now, "lease": now + LEASE_MS, "c": row.channel_id, "o": row.api_order_no})
        slots = asyncio.Semaphore(RESOLVE_CONCURRENCY)

        async def one(row) -> None:
            async with slots:
                await self._resolve_row(row)

        await asyncio.gather(*(one(row) for row in rows))

    async def _resolve_row(self, row) -> None:
        try:
            command = decode(row.command, (PlaceBet,))
            if row.state == "pending" and not (await self._debit(command)).ok:
                return                                        # refused: recorded by _debit
            await self._send(command)
            await self._set_state(command, "placed")
            log.info("resolved the debit of %s/%s: placed with its original receive time",
                     command.channel_id, command.api_order_no)
        except asyncio.CancelledError:
            raise
        except WalletRejected as error:
            STUCK.inc()
            log.error("debit %s/%s set aside: the wallet refuses the request itself: %s",
                      row.channel_id, row.api_order_no, error)
            await self._record_failure(row, str(error), stuck=True)
        except Exception as error:   # wallet or Kafka unavailable, a DB blip: later, with backoff
            log.warning("debit %s/%s not resolved yet (try %d): %s", row.channel_id, row.api_order_no,
                        row.attempts + 1, error)
            await self._record_failure(row, f"{type(error).__name__}: {error}", stuck=False)

    async def _record_failure(self, row, reason: str, stuck: bool) -> None:
        try:
            async with self.db.begin() as conn:
                await conn.execute(text(
                    "UPDATE player_debit SET attempts = attempts + 1, next_at = :next, last_error = :e,"
                    " state = CASE WHEN :stuck THEN 'stuck' ELSE state END, updated_at = :now"
                    " WHERE channel_id = :c AND api_order_no = :o AND state IN ('pending', 'debited')"),
                    {"next": _now() + retry_delay_ms(row.attempts), "e": reason[:255], "stuck": stuck,
                     "now": _now(), "c": row.channel_id, "o": row.api_order_no})
        except Exception as error:    # the lease expires and the row is taken again
            log.warning("debit %s/%s: could not record the failure: %s", row.channel_id, row.api_order_no, error)
