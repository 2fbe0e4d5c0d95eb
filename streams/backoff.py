"""Retry delays: one rule for every retry loop that waits between tries of an outbox row
(payouts, webhook notices)."""
from __future__ import annotations

__all__ = ["backoff_ms"]


def backoff_ms(tries: int, base_ms: int, cap_ms: int, jitter: float) -> int:
    """Delay before the next try after `tries` failed ones: base doubling per try, capped, then
    placed in [half, full] by `jitter` (0 <= jitter < 1) so that failures do not retry in lockstep."""
    full = min(cap_ms, base_ms * 2 ** min(max(tries - 1, 0), 40))
    half = full // 2
    return half + int((full - half) * jitter)
