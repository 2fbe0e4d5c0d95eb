"""How `crash-bots` (web/bots.py) talks to the bet API: signed commands retried with the same
api_order_no until a definitive answer, a backoff shared by every bot while the gateway does not
answer, and the estimate of the server's clock.

Apart from the players because it is the bots' HTTP client of the gateway, with its own rules
(what is retried, what is an answer, what is counted as an error); the players decide what to send.
"""
from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any

import aiohttp
from yarl import URL

from web.bot_stats import Stats
from web.signing import sign_headers

log = logging.getLogger("crash.bots")

RETRIES = 4                  # repeats of one command after a 503 or a lost connection
BACKOFF_CAP_S = 5.0


class Health:
    """Shared backoff while the gateway does not answer (restarting): nobody hammers it."""

    def __init__(self) -> None:
        self.failures = 0
        self.down_until = 0.0

    def failed(self) -> float:
        self.failures += 1
        delay = min(BACKOFF_CAP_S, 0.1 * 2 ** min(self.failures, 6)) * random.uniform(0.5, 1.0)
        self.down_until = max(self.down_until, time.monotonic() + delay)
        return delay

    def ok(self) -> None:
        self.failures = 0
        self.down_until = 0.0

    @property
    def down(self) -> bool:
        return time.monotonic() < self.down_until

    async def wait(self) -> None:
        while (delay := self.down_until - time.monotonic()) > 0:
            await asyncio.sleep(delay)


@dataclass(frozen=True)
class Answer:
    """A definitive answer of the pipeline (HTTP 200 accepted or 409 refused)."""
    body: dict[str, Any]

    @property
    def accepted(self) -> bool:
        return self.body.get("status") == "accepted"

    @property
    def reason(self) -> str:
        return str(self.body.get("reason") or self.body.get("status") or "unknown")


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None


def retry_delay(attempt: int) -> float:
    return min(BACKOFF_CAP_S, 0.2 * 2 ** (attempt - 1)) * random.uniform(0.7, 1.3)


class BetApi:
    """Signed bet-API commands over the shared session, with retries and error accounting."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str, key: tuple[str, str], stats: Stats,
                 health: Health, timeout_s: float) -> None:
        self.session = session
        self.base = base_url
        self.key_id, self.secret = key
        self.stats = stats
        self.health = health
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._logged: Counter[str] = Counter()

    def url(self, path: str) -> URL:
        return URL(self.base + path)

    async def get(self, path: str) -> tuple[int, Any]:
        """An unsigned read; connection errors are the caller's."""
        async with self.session.get(self.url(path), timeout=aiohttp.ClientTimeout(total=5)) as response:
            return response.status, _json(await response.read())

    async def command(self, op: str, path: str, body: dict[str, Any]) -> Answer | None:
        """Send one command until a definitive answer; None when none came (already counted)."""
        url = self.url(path)
        raw = json.dumps(body, separators=(",", ":")).encode()
        self.stats.sent(op)
        for attempt in range(RETRIES + 1):
            if attempt:
                self.stats.retried(op)
                await asyncio.sleep(retry_delay(attempt))
            await self.health.wait()
            # A fresh signature (nonce) per attempt; the body, and so the api_order_no, stays.
            headers = sign_headers(self.key_id, self.secret, "POST", url.raw_path_qs, raw)
            headers["Content-Type"] = "application/json"
            started = time.perf_counter()
            try:
                async with self.session.post(url, data=raw, headers=headers, timeout=self.timeout) as response:
                    status, data = response.status, _json(await response.read())
            except (aiohttp.ClientError, TimeoutError) as error:
                # Sent or not, we cannot know: repeat the same request once the gateway answers again.
                self.stats.connection_errors += 1
                self.health.failed()
                self._log(f"{op} connection", f"{op} {path}: {type(error).__name__}: {error}")
                continue
            self.health.ok()
            elapsed_ms = (time.perf_counter() - started) * 1000
            data = data if isinstance(data, dict) else {}
            if status in (200, 409) and data.get("status") in ("accepted", "refused"):
                answer = Answer(data)
                self.stats.answered(op, answer.accepted, answer.reason, elapsed_ms)
                return answer
            label = f"{op} {status} {data.get('error', '?')}"
            if status == 503:  # decision_timeout / wallet_unavailable: the same request finishes it
                self.stats.http_5xx[label] += 1
                continue
            if status >= 500:
                self.stats.http_5xx[label] += 1
            else:  # any other 4xx is a bug of the bots (or a gateway regression): say so
                self.stats.unexpected_4xx[label] += 1
            self._log(label, f"{op} {path} -> HTTP {status}: {data or '(no JSON body)'}")
            self.stats.failed(op)
            return None
        self.stats.gave_up[op] += 1
        self.stats.failed(op)
        return None

    def _log(self, label: str, message: str) -> None:
        """The first few of each kind, then every 100th (a broken gateway must not flood the log)."""
        self._logged[label] += 1
        n = self._logged[label]
        if n <= 5 or n % 100 == 0:
            log.warning("%s (seen %d times)", message, n)


class ServerClock:
    """Server time from the polls: the clocks are NTP-synced; this absorbs what is left."""

    def __init__(self) -> None:
        self._samples: deque[tuple[float, float]] = deque(maxlen=50)   # (round trip, offset) in ms
        self._one_way: deque[float] = deque(maxlen=50)
        self.offset_ms = 0.0

    def sample(self, sent_ms: float, received_ms: float, server_ms: int) -> None:
        self._samples.append((received_ms - sent_ms, server_ms - (sent_ms + received_ms) / 2))
        self.offset_ms = min(self._samples)[1]     # the fastest round trip bounds the error best

    def sample_one_way(self, server_ms: int, received_ms: float) -> None:
        """A pushed frame: sent at server_ms, so the offset is at least server_ms - received_ms."""
        self._one_way.append(server_ms - received_ms)
        self.offset_ms = max(self._one_way)

    def now_ms(self) -> float:
        return time.time() * 1000 + self.offset_ms
