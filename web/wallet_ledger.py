"""The reference wallet's money book: balances and the journal that makes every operation
idempotent on its order_no, in the wallet's own MariaDB database (`apisys`).

Apart from the HTTP service (web/wallet.py), which validates requests (web/wallet_requests.py),
injects faults and hands each Operation to the Ledger: balances and the journal change here only.
"""
from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from web.wallet_requests import Operation

DB_ATTEMPTS = 5
CONFLICT_REASON = "order_no already used with different content"
MYSQL_DUPLICATE_KEY = 1062
# Deadlock and lock-wait timeout: the transaction was rolled back whole, so it can be re-run.
MYSQL_RETRYABLE = frozenset({1205, 1213})

_INSERT_TX = text(
    "INSERT INTO wallet_tx (order_no, op, user_id, currency, amount, kind, digest, status, result, meta,"
    " created_at) VALUES (:order_no, :op, :user_id, :currency, :amount, :kind, :digest, 'pending', '{}',"
    " :meta, :now)")
_FINISH_TX = text(
    "UPDATE wallet_tx SET status = :status, amount = :amount, balance_after = :balance, result = :result"
    " WHERE tx_id = :tx_id")
_STORED_TX = text("SELECT digest, result FROM wallet_tx WHERE order_no = :order_no")
_LOCK_ACCOUNT = text(
    "SELECT balance FROM wallet_account WHERE user_id = :user_id AND currency = :currency FOR UPDATE")
_READ_BALANCE = text("SELECT balance FROM wallet_account WHERE user_id = :user_id AND currency = :currency")
_ADD_TO_ACCOUNT = text(
    "INSERT INTO wallet_account (user_id, currency, balance, created_at, updated_at)"
    " VALUES (:user_id, :currency, :delta, :now, :now)"
    " ON DUPLICATE KEY UPDATE balance = balance + VALUES(balance), updated_at = VALUES(updated_at)")
_SET_ACCOUNT = text(
    "UPDATE wallet_account SET balance = :balance, updated_at = :now"
    " WHERE user_id = :user_id AND currency = :currency")


def _mysql_code(error: DBAPIError) -> int | None:
    args = getattr(error.orig, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


class _Duplicate(Exception):
    """The order_no is already in the journal (committed by someone else)."""


@dataclass(frozen=True)
class Outcome:
    result: dict[str, Any]  # the answer body for this order_no
    label: str  # ok | refused | conflict | replayed (metrics)

    @property
    def http_status(self) -> int:
        return 200 if self.result["status"] == "ok" else 409


class Ledger:
    """Balances and the idempotent journal, in the `apisys` database."""

    def __init__(self, engine: AsyncEngine, on_retry: Callable[[], None] = lambda: None) -> None:
        self._engine = engine
        self._on_retry = on_retry  # counts deadlock re-runs (metric)

    async def apply(self, op: Operation) -> Outcome:
        for attempt in range(DB_ATTEMPTS):
            try:
                return await self._apply_once(op)
            except _Duplicate:
                stored = await self._stored(op.order_no)
                if stored is not None:
                    return self._repeat(op, *stored)
                # The row we collided with was rolled back after all: apply it ourselves.
            except DBAPIError as error:
                if _mysql_code(error) not in MYSQL_RETRYABLE or attempt == DB_ATTEMPTS - 1:
                    raise
                self._on_retry()
                await asyncio.sleep(random.uniform(0.005, 0.02) * (attempt + 1))
        raise RuntimeError(f"order {op.order_no}: gave up after {DB_ATTEMPTS} attempts")

    async def _apply_once(self, op: Operation) -> Outcome:
        now = int(time.time() * 1000)
        key = {"user_id": op.user_id, "currency": op.currency}
        async with self._engine.begin() as conn:
            # The journal row first: its unique order_no makes a concurrent twin wait here until
            # we commit, and then fail with a duplicate key instead of applying a second time.
            try:
                inserted = await conn.execute(_INSERT_TX, {
                    **key, "order_no": op.order_no, "op": op.op, "amount": op.amount, "kind": op.kind,
                    "digest": op.digest(), "meta": None if op.meta is None else json.dumps(op.meta),
                    "now": now})
            except IntegrityError as error:
                if _mysql_code(error) == MYSQL_DUPLICATE_KEY:
                    raise _Duplicate from error
                raise
            tx_id = str(inserted.lastrowid)
            journal_amount = op.amount  # debit/credit: as requested, adjust: the signed change
            if op.op == "credit":
                await conn.execute(_ADD_TO_ACCOUNT, {**key, "delta": op.amount, "now": now})
                balance: int | None = await self._balance(conn, op.user_id, op.currency)
                status = "ok"
            elif op.op == "debit":
                current = (await conn.execute(_LOCK_ACCOUNT, key)).scalar_one_or_none() or 0
                if current >= op.amount:
                    balance = current - op.amount
                    await conn.execute(_SET_ACCOUNT, {**key, "balance": balance, "now": now})
                    status = "ok"
                else:
                    balance, status = None, "refused"
            else:  # adjust: set the balance to op.amount, journal the difference
                await conn.execute(_ADD_TO_ACCOUNT, {**key, "delta": 0, "now": now})  # exists + locked
                current = (await conn.execute(_LOCK_ACCOUNT, key)).scalar_one()
                await conn.execute(_SET_ACCOUNT, {**key, "balance": op.amount, "now": now})
                balance, status, journal_amount = op.amount, "ok", op.amount - current
            if status == "ok":
                result: dict[str, Any] = {"order_no": op.order_no, "status": "ok", "balance": balance,
                                          "tx_id": tx_id}
            else:
                result = {"order_no": op.order_no, "status": "refused", "reason": "insufficient_funds"}
            await conn.execute(_FINISH_TX, {"status": status, "amount": journal_amount, "balance": balance,
                                            "result": json.dumps(result), "tx_id": tx_id})
        return Outcome(result, status)

    async def _stored(self, order_no: str) -> tuple[str, dict[str, Any]] | None:
        async with self._engine.connect() as conn:
            row = (await conn.execute(_STORED_TX, {"order_no": order_no})).one_or_none()
        if row is None:
            return None
        return row.digest, json.loads(row.result)

    @staticmethod
    def _repeat(op: Operation, digest: str, result: dict[str, Any]) -> Outcome:
        if digest != op.digest():
            return Outcome({"order_no": op.order_no, "status": "conflict", "reason": CONFLICT_REASON}, "conflict")
        return Outcome({**result, "replayed": True}, "replayed")

    @staticmethod
    async def _balance(conn: AsyncConnection, user_id: str, currency: str) -> int:
        value = (await conn.execute(_READ_BALANCE, {"user_id": user_id, "currency": currency})).scalar()
        return int(value or 0)

    async def balance(self, user_id: str, currency: str) -> int:
        async with self._engine.connect() as conn:
            return await self._balance(conn, user_id, currency)
