"""The rows of `payout_outbox`: a row as the Payout Adapter claims it (OutboxRow) and the
operators' queries (list_payouts, retry_payout: /ops/payouts in web/operator_views.py).

Apart from the adapter's loop (agents/payout_adapter.py) because the operator views read and
retry rows with these and need nothing of the loop, its wallet client or its Kafka producer.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

log = logging.getLogger("crash.payout")

STATUSES = ("ready", "sent", "acked", "failed", "cancelled")   # cancelled: a rolled-back jackpot award
TRACE_ID_CHARS = 64              # event_log.trace_id


def now_ms() -> int:
    return int(time.time() * 1000)


def _json_value(value: Any) -> Any:
    """JSON columns come back as text from MariaDB (JSON is an alias of LONGTEXT there)."""
    if isinstance(value, str | bytes):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


@dataclass(frozen=True)
class OutboxRow:
    id: int
    order_no: str
    kind: str
    channel_id: str
    term_id: str
    bet_id: str | None
    user_id: str
    currency: str
    amount: int
    meta: dict[str, Any] | None
    retry_count: int
    created_at: int
    lease: int

    @classmethod
    def from_db(cls, row: Any, lease: int) -> OutboxRow:
        meta = _json_value(row.meta)
        return cls(id=int(row.id), order_no=row.order_no, kind=row.kind, channel_id=row.channel_id,
                   term_id=row.term_id, bet_id=row.bet_id, user_id=row.user_id, currency=row.currency,
                   amount=int(row.amount), meta=meta if isinstance(meta, dict) else None,
                   retry_count=int(row.retry_count), created_at=int(row.created_at), lease=lease)

    def item(self) -> dict[str, Any]:
        """The wallet credit of this row (web/apisys.openapi.yaml)."""
        item: dict[str, Any] = {"order_no": self.order_no, "user_id": self.user_id, "currency": self.currency,
                                "amount": self.amount, "kind": self.kind}
        if self.meta is not None:
            item["meta"] = self.meta
        return item

    def owned(self, now: int) -> dict[str, Any]:
        return {"id": self.id, "lease": self.lease, "now": now}

    def event_base(self, now: int) -> dict[str, Any]:
        return {"channel_id": self.channel_id, "term_id": self.term_id, "ts": now,
                "trace_id": self.order_no[:TRACE_ID_CHARS], "kind": self.kind, "order_no": self.order_no,
                "user_id": self.user_id, "amount": self.amount, "currency": self.currency,
                "bet_id": self.bet_id or ""}


# ---------------------------------------------------------------- operator helpers

_LIST_COLUMNS = ("id, order_no, kind, channel_id, term_id, bet_id, user_id, currency, amount, meta, status,"
                 " retry_count, next_at, leased_until, last_error, receipt, created_at, updated_at")


async def list_payouts(engine: AsyncEngine, status: str | None = None, limit: int = 100,
                       operator_group: str = "") -> list[dict[str, Any]]:
    """Newest outbox rows first, optionally of one status (ready|sent|acked|failed|cancelled) and
    of the channels of one operator group."""
    if status is not None and status not in STATUSES:
        raise ValueError(f"status must be one of {', '.join(STATUSES)}")
    limit = max(1, min(int(limit), 1000))
    conditions = (["status = :status"] if status is not None else []) + (
        ["channel_id IN (SELECT channel_id FROM channel WHERE operator_group = :group)"] if operator_group else [])
    where = f"WHERE {' AND '.join(conditions)} " if conditions else ""
    query = text(f"SELECT {_LIST_COLUMNS} FROM payout_outbox {where}ORDER BY id DESC LIMIT :limit")
    async with engine.connect() as conn:
        rows = await conn.execute(query, {"status": status, "limit": limit, "group": operator_group})
        return [{**row._mapping, "meta": _json_value(row.meta), "receipt": _json_value(row.receipt)}
                for row in rows]


async def retry_payout(engine: AsyncEngine, order_no: str) -> bool:
    """Put a `failed` row back to `ready` (retry_count 0, due now, last_error kept for the record).
    False when there is no failed row with this order_no."""
    now = now_ms()
    async with engine.begin() as conn:
        result = await conn.execute(text(
            "UPDATE payout_outbox SET status = 'ready', retry_count = 0, next_at = :now, leased_until = NULL,"
            " updated_at = :now WHERE order_no = :order_no AND status = 'failed'"), {"now": now, "order_no": order_no})
        changed = result.rowcount == 1
    if changed:
        log.warning("payout %s put back to ready by an operator", order_no)
    return changed
