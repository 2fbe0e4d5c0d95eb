"""What `crash-bots` (web/bots.py) counts: each operation's outcomes, refusal reasons, retries and
latency quantiles, over the run and over the report's 5-second window, and the run's error counts.

Apart from the players because it is plain bookkeeping (no I/O): the bet API client
(web/bot_client.py) and the players both write to it, the report and the summary read it.
"""
from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any


class Quantiles:
    """Latency quantiles in bounded memory: logarithmic buckets 2 % wide from 0.1 ms."""

    RATIO = 1.02
    FLOOR_MS = 0.1

    def __init__(self) -> None:
        self.buckets: Counter[int] = Counter()
        self.count = 0
        self.max_ms = 0.0

    def add(self, ms: float) -> None:
        bucket = 0 if ms <= self.FLOOR_MS else int(math.log(ms / self.FLOOR_MS, self.RATIO)) + 1
        self.buckets[bucket] += 1
        self.count += 1
        self.max_ms = max(self.max_ms, ms)

    def quantile(self, q: float) -> float | None:
        if not self.count:
            return None
        rank = max(1, math.ceil(q * self.count))
        seen = 0
        for bucket in sorted(self.buckets):
            seen += self.buckets[bucket]
            if seen >= rank:
                return min(self.max_ms, self.FLOOR_MS * self.RATIO ** bucket)
        return self.max_ms

    def summary(self) -> dict[str, Any]:
        def r(value: float | None) -> float | None:
            return None if value is None else round(value, 1)
        return {"count": self.count, "p50": r(self.quantile(0.5)), "p90": r(self.quantile(0.9)),
                "p99": r(self.quantile(0.99)), "max": r(self.max_ms) if self.count else None}


@dataclass
class OpStats:
    """One operation's outcomes (place, cancel or cashout), over the run or over a window."""
    sent: int = 0
    accepted: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    failed: int = 0          # no definitive answer: gave up, 5xx, unexpected 4xx
    retries: int = 0
    latency: Quantiles = field(default_factory=Quantiles)

    def as_dict(self) -> dict[str, Any]:
        return {"sent": self.sent, "accepted": self.accepted, "refused": sum(self.refused.values()),
                "refused_by_reason": dict(self.refused.most_common()), "failed": self.failed,
                "retries": self.retries, "latency_ms": self.latency.summary()}


OPS = ("place", "cancel", "cashout")


class Stats:
    def __init__(self) -> None:
        self.total = {op: OpStats() for op in OPS}
        self.window = {op: OpStats() for op in OPS}
        self.window_started = time.monotonic()
        self.http_5xx: Counter[str] = Counter()
        self.unexpected_4xx: Counter[str] = Counter()
        self.connection_errors = 0
        self.gave_up: Counter[str] = Counter()
        self.poll_errors = 0
        self.missed_cashouts: Counter[str] = Counter()  # the player saw the term end before the target
        self.accepted_by_channel: Counter[str] = Counter()
        self.staked: Counter[str] = Counter()           # accepted stakes by currency, minor units
        self.cashout_payout: Counter[str] = Counter()   # manual cashouts' payouts by currency
        self.accepted_bets: list[tuple[str, str]] = []
        self.funded = 0
        self.refills = 0
        self.bot_errors = 0

    def _both(self, op: str) -> tuple[OpStats, OpStats]:
        return self.total[op], self.window[op]

    def sent(self, op: str) -> None:
        for s in self._both(op):
            s.sent += 1

    def answered(self, op: str, accepted: bool, reason: str, latency_ms: float) -> None:
        for s in self._both(op):
            if accepted:
                s.accepted += 1
            else:
                s.refused[reason] += 1
            s.latency.add(latency_ms)

    def failed(self, op: str) -> None:
        for s in self._both(op):
            s.failed += 1

    def retried(self, op: str) -> None:
        for s in self._both(op):
            s.retries += 1

    def new_window(self) -> tuple[dict[str, OpStats], float]:
        window, seconds = self.window, time.monotonic() - self.window_started
        self.window = {op: OpStats() for op in OPS}
        self.window_started = time.monotonic()
        return window, seconds
