"""Python's full garbage collections, on a schedule instead of whenever the heap grew by 25 %.

`install()` in a process's main (the push gateway, the workers); tests and tools keep CPython's
rule.

A push gateway with 10,000 clients holds about 490,000 objects tracked by the collector, ~50 per
client (aiohttp's request, protocol, WebSocket response, heartbeat timers). A full collection
walks all of them with the event loop stopped: 100-650 ms measured in `tests/bench_push.py
--clients 10000` on the shared 2-core machine, longer than the page's lag notice (600 ms). By
CPython's own rule one ran every 30 s or so there, and its stalled frames alone were the whole
p99 of the push latency. Young generations stay automatic (they are cheap); a full
collection runs every FULL_GC_S, from a thread of its own so that no code path has to remember
to call it (it holds the GIL like any collection: the pause is the same, only rarer).

A worker under load keeps what it makes (orders, books, staged table writes, ~160,000 objects),
so CPython's rule ran a full collection of 150-190 ms about every 1.7 s during `crash-bench
--quick --only sustained`, each of them finding almost nothing to free (0-181 objects): ~10 % of
the worker's time (a gc callback summing each generation's pauses). Every WORKER_FULL_GC_S
instead, two alternating pairs: steady decisions 2,048/2,050 vs 1,720/1,861 per s, worker CPU
per 1,000 bets 0.377/0.366 vs 0.440/0.434 s; tick jitter (`--only ticks`) p99 17/14 vs 15/39 ms.

The cost of waiting: the cyclic garbage that closed connections leave (~47 objects, ~12 KB each,
measured) lives until the next full collection, a few minutes of churn. Freezing the heap
(gc.freeze) while serving was measured too and rejected: that garbage would never be collected.

`freeze_startup()` is the other use of gc.freeze, in the bet gateway: once, before serving, so
that what exists then (modules, classes, functions, the app just built: ~140,000 objects, all
alive until the process ends) is no longer walked by every full collection. Nothing made later
is frozen. The workers freeze too, since their full collections run on the schedule: under
CPython's 25 % rule a smaller long-lived base had made them more frequent (tick jitter p99
99/63 ms with the freeze against 61/54 ms without); on the schedule it only shortens each one.
Two alternating pairs of `crash-bench --only sustained` (60 s): scheduled pauses 206-256 ms vs
276-342 ms, steady decisions 2,416/2,537 vs 1,910/2,312 per s, worker CPU per 1,000 bets 0.309
vs 0.341 s.
"""

from __future__ import annotations

import gc
import threading
import time

from prometheus_client import Histogram

FULL_GC_S = 300.0
WORKER_FULL_GC_S = 60.0
NEVER = 2**31 - 1        # CPython runs a full collection once this many young collections passed

FULL_GC = Histogram("gc_full_pause_seconds", "Scheduled full garbage collections (the event loop stopped)",
                    buckets=(.01, .025, .05, .1, .25, .5, 1, 2.5))


def collect() -> float:
    """One full collection, observed; returns its duration."""
    started = time.perf_counter()
    gc.collect()
    took = time.perf_counter() - started
    FULL_GC.observe(took)
    return took


def install(every_s: float = FULL_GC_S) -> threading.Event:
    """Full collections every `every_s` from now on, none by CPython's rule; set the returned
    event to stop them (CPython's rule is back then)."""
    young, middle, old = gc.get_threshold()
    gc.set_threshold(young, middle, NEVER)
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(every_s):
            collect()
        gc.set_threshold(young, middle, old)

    threading.Thread(target=run, name="full-gc", daemon=True).start()
    return stop


def freeze_startup() -> None:
    """Leave everything that exists now out of every later collection (see the module docstring)."""
    gc.collect()
    gc.freeze()
