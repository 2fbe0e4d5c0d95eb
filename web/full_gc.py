"""Python's full garbage collections, on a schedule instead of whenever the heap grew by 25 %.

A push gateway with 10,000 clients holds about 490,000 objects tracked by the collector, ~50 per
client (aiohttp's request, protocol, WebSocket response, heartbeat timers). A full collection
walks all of them with the event loop stopped: 100-650 ms measured in `tests/bench_push.py
--clients 10000` on the shared 2-core machine, longer than the page's lag notice (600 ms). By
CPython's own rule one ran every 30 s or so there, and its stalled frames alone were the whole
p99 of the push latency. Young generations stay automatic (they are cheap); a full collection
runs every FULL_GC_S, right after a round of frames so that it delays the next one the least.

The cost of waiting: the cyclic garbage that closed connections leave (~47 objects, ~12 KB each,
measured) lives until the next full collection, a few minutes of churn. Freezing the heap
(gc.freeze) was measured too and rejected: that garbage would never be collected.
"""
from __future__ import annotations

import gc
import time

from prometheus_client import Histogram

FULL_GC_S = 300.0
NEVER = 2**31 - 1        # CPython runs a full collection once this many young collections passed

FULL_GC = Histogram("push_gc_full_seconds", "Full garbage collections, the event loop stopped",
                    buckets=(.01, .025, .05, .1, .25, .5, 1, 2.5))


class FullCollections:
    def __init__(self, every_s: float = FULL_GC_S) -> None:
        self.every_s = every_s
        self.last = time.monotonic()
        young, middle, _ = gc.get_threshold()
        gc.set_threshold(young, middle, NEVER)

    def maybe_collect(self) -> None:
        """Call when a pause costs least (frames just went out): a full collection if one is due."""
        now = time.monotonic()
        if now - self.last < self.every_s:
            return
        gc.collect()
        self.last = time.monotonic()
        FULL_GC.observe(self.last - now)
