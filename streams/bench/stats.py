"""The benchmark's arithmetic over what a phase measured: quantiles and latency figures, the
steady rate of a timeline, CPU seconds per 1,000 bets, the floor that a bet's messages and rows
set, and the search for the highest offered rate
that meets a latency bound.

Separate from the phases (runs.py): pure functions of their figures, tested without a pipeline
(tests/test_bench_search.py).
"""
from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["quantile", "latency_figures", "steady_rate", "per_1000", "REFINE_STEPS", "next_rate", "search_rates",
           "floor"]


def quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def latency_figures(values: list[float]) -> dict[str, float | None]:
    return {"p50_ms": quantile(values, 0.5), "p99_ms": quantile(values, 0.99),
            "max_ms": max(values) if values else None}


def per_1000(figures: dict[str, Any], bets: int) -> dict[str, float]:
    """CPU seconds per 1,000 bets of each process, of the load generator, and of the whole
    machine (`box`: every process and the kernel, so more than the sum of the others)."""
    cpu = {**figures["cpu_s"], "load generator": figures["load_cpu_s"], "box": figures["box"]["busy_cpu_s"]}
    return {k: round(v / max(1, bets) * 1000, 3) for k, v in cpu.items()}


def steady_rate(timeline: list[list[float]], seconds: float) -> int | None:
    """Answers per second between 20 % and 90 % of the sending time (no ramp-up, no drain)."""
    inside = [(t, n) for t, n in timeline if 0.2 * seconds <= t <= 0.9 * seconds]
    if len(inside) < 2:
        return None
    (t0, n0), (t1, n1) = inside[0], inside[-1]
    return round((n1 - n0) / (t1 - t0)) if t1 > t0 else None


# After the ladder of offered rates, at most this many more steps look for the highest rate that
# meets a latency bound, between the highest rate that met it and the lowest that did not.
REFINE_STEPS = 3


def next_rate(outcomes: dict[int, bool], smallest: int = 25) -> int | None:
    """The offered rate to try next when searching for the highest rate that meets a bound, from
    the rates tried so far (rate -> met it); None when the answer is known closely enough: within
    a fifth of the lowest failing rate above it, or the highest rate tried passed."""
    passed = [rate for rate, ok in outcomes.items() if ok]
    low = max(passed, default=0)
    above = [rate for rate, ok in outcomes.items() if not ok and rate > low]
    if not above:
        return None
    high = min(above)
    if high - low <= max(smallest, high // 5):
        return None
    rate = (low + high) // 2 // smallest * smallest
    return rate if low < rate < high and rate >= smallest else None


async def search_rates(rates: list[int], run_step: Callable[[int], Awaitable[dict[str, Any]]],
                       meets: Callable[[dict[str, Any]], bool], far_over: Callable[[dict[str, Any]], bool]
                       ) -> tuple[list[dict[str, Any]], int | None]:
    """Steps at the offered `rates` (stopping once one is `far_over` capacity: higher rates would
    only measure the backlog), then up to REFINE_STEPS more between the highest rate that `meets`
    the bound and the lowest that did not. The steps by offered rate, and that highest rate."""
    steps: list[dict[str, Any]] = []
    met: dict[int, bool] = {}
    for rate in rates:
        step = await run_step(rate)
        steps.append(step)
        met[rate] = meets(step)
        if far_over(step):
            break
    for _ in range(REFINE_STEPS):
        rate = next_rate(met)
        if rate is None:
            break
        step = await run_step(rate)
        steps.append(step)
        met[rate] = meets(step)
    steps.sort(key=lambda step: step["offered_per_s"])
    return steps, max((rate for rate, ok in met.items() if ok), default=None)


def floor(traffic_per_bet: dict[str, Any], kafka: dict[str, Any], mysql: dict[str, Any], cores: int,
          box_ms_per_bet: float | None) -> dict[str, Any] | None:
    """What a bet would cost if its messages and rows moved at the bare baselines' price, with
    nothing else: every message produced once and consumed once at the bare loop's client and
    broker CPU per message (changelogs are only produced, some topics have more than one
    reader: the two roughly cancel), every row at the bare aiomysql writer's client and MariaDB
    CPU per row of its table (a table it did not write: its mean over all rows). Its ceiling is
    the machine's cores over that CPU; the pipeline's box CPU per bet set against it says how
    much of the cost is the pipeline's own work."""
    try:
        msg_us = kafka["cpu_us_per_msg"] + kafka["broker_cpu_us_per_msg"]
        mean_row_us = mysql["cpu_us_per_row"] + mysql["server_cpu_us_per_row"]
        messages, rows = traffic_per_bet["kafka_messages_total"], traffic_per_bet["mysql_rows"]
        priced = {table: t["cpu_us_per_row"] + t["server_cpu_us_per_row"]
                  for table, t in (mysql.get("tables") or {}).items()}
    except (KeyError, TypeError):
        return None
    kafka_us = messages * msg_us
    mysql_us = sum(n * priced.get(table, mean_row_us) for table, n in rows.items())
    total_us = kafka_us + mysql_us
    out: dict[str, Any] = {
        "messages_per_bet": messages, "rows_per_bet": traffic_per_bet.get("mysql_rows_total"),
        "us_per_msg": round(msg_us, 1), "kafka_us_per_bet": round(kafka_us), "mysql_us_per_bet": round(mysql_us),
        "us_per_bet": round(total_us), "ceiling_bets_per_s": round(cores * 1e6 / total_us) if total_us else None}
    if box_ms_per_bet:
        out["pipeline_us_per_bet"] = round(box_ms_per_bet * 1000)
        out["floor_share_of_pipeline"] = round(total_us / (box_ms_per_bet * 1000), 3)
    return out
