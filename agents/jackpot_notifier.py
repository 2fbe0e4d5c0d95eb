"""Near-cap notices to the operator's webhook (DESIGN section 10), at least once, idempotent.

The sink writes each JackpotNearCap event as a `jackpot_notice` row (an outbox, like payouts);
this task, in every worker, claims due rows (`FOR UPDATE SKIP LOCKED` with a lease, so workers
share them), POSTs each one HMAC-signed (web.signing, key id `crash-jackpot`) with its
`notice_id` as `Idempotency-Key`, marks it delivered on a 2xx answer and otherwise retries it
with exponential backoff and jitter (streams.backoff), up to NOTICE_MAX_TRIES. A receiver may
see a notice twice (a worker died after the POST): it de-duplicates on the notice id.
A Telegram bot or a web app can sit behind the webhook.
"""
from __future__ import annotations

import asyncio
import json
import logging
import random
import time

import aiohttp
from sqlalchemy import text
from yarl import URL

from sql.db import make_engine
from streams import metrics
from streams.app import app, settings
from streams.backoff import backoff_ms
from web.signing import sign_headers

log = logging.getLogger(__name__)

WEBHOOK_KEY_ID = "crash-jackpot"
NOTICE_MAX_TRIES = 20
LEASE_MS = 30_000
POLL_S = 1.0

_CLAIM = text("SELECT notice_id, payload, retry_count FROM jackpot_notice WHERE status = 'ready' AND next_at <= :now"
              " ORDER BY next_at LIMIT 20 FOR UPDATE SKIP LOCKED")
_CLAIM_EXPIRED = text("SELECT notice_id, payload, retry_count FROM jackpot_notice WHERE status = 'sending'"
                      " AND leased_until < :now ORDER BY next_at LIMIT 20 FOR UPDATE SKIP LOCKED")
_LEASE = text("UPDATE jackpot_notice SET status = 'sending', leased_until = :lease, updated_at = :now"
              " WHERE notice_id = :id")
_DONE = text("UPDATE jackpot_notice SET status = :status, retry_count = :tries, next_at = :next_at,"
             " last_error = :error, leased_until = NULL, updated_at = :now WHERE notice_id = :id")


def _now() -> int:
    return int(time.time() * 1000)


async def deliver_due(engine, http: aiohttp.ClientSession, url: str, secret: str) -> int:
    """One round: claim due notices, POST them, record each outcome. Returns how many were sent."""
    now = _now()
    async with engine.begin() as conn:
        rows = [*(await conn.execute(_CLAIM_EXPIRED, {"now": now})).all(),
                *(await conn.execute(_CLAIM, {"now": now})).all()]
        for row in rows:
            await conn.execute(_LEASE, {"lease": now + LEASE_MS, "now": now, "id": row.notice_id})
    for row in rows:
        body = row.payload.encode() if isinstance(row.payload, str) else json.dumps(row.payload).encode()
        headers = {**sign_headers(WEBHOOK_KEY_ID, secret, "POST", URL(url).path_qs, body),
                   "Content-Type": "application/json", "Idempotency-Key": row.notice_id}
        error = ""
        try:
            async with http.post(url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=5)) as resp:
                if resp.status >= 300:
                    error = f"HTTP {resp.status}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            error = f"{type(exc).__name__}: {exc}"[:500]
        tries = row.retry_count + 1
        if not error:
            status, next_at = "delivered", _now()
        elif tries >= NOTICE_MAX_TRIES:
            status, next_at = "failed", _now()
        else:
            status, next_at = "ready", _now() + backoff_ms(tries, 500, 60_000, random.random())
        metrics.JACKPOT_NOTICES.labels(outcome=status).inc()
        async with engine.begin() as conn:
            await conn.execute(_DONE, {"status": status, "tries": tries, "next_at": next_at, "error": error or None,
                                       "now": _now(), "id": row.notice_id})
        if error:
            log.warning("near-cap notice %s not delivered (%s); %s", row.notice_id, error, status)
    return len(rows)


@app.task
async def notify_forever() -> None:
    if not settings.jackpot_webhook_url:
        log.info("no CRASH_JACKPOT_WEBHOOK_URL: near-cap notices are kept in MySQL, not delivered")
        return
    engine = make_engine(settings.db_url, pool_size=1)
    async with aiohttp.ClientSession() as http:
        while True:
            try:
                sent = await deliver_due(engine, http, settings.jackpot_webhook_url, settings.jackpot_webhook_secret)
            except asyncio.CancelledError:
                raise
            except Exception as error:       # the database may be away: try again next round
                log.warning("near-cap notifier: %s", error)
                sent = 0
            if not sent:
                await asyncio.sleep(POLL_S)
