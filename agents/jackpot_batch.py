"""A Jackpot Service batch's bookkeeping: the pools it touched and the idempotency keys it saw.

Each pool a batch touches is staged once (`touch`) and gathers the batch's contributions to its
running cycle in a Segment, sent as one JackpotContributed (its near-cap notice after it) when
the cycle ends at a hit, before a snapshot, or at the end of the batch. The REST contribution
ids and award idempotency keys a batch sees are kept in `jackpot_keys` and pruned per partition.
Apart from agents/jackpot_service.py, which keeps the command handlers and the agent: these are
the steps the handlers share. The pool arithmetic is streams/jackpots.py (`money_of` and
`set_money` only carry a PoolMoney out of and back into a JackpotPool table record).
"""
from __future__ import annotations

import hashlib
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from streams import jackpots
from streams.app import app, settings
from streams.jackpot_events import JackpotContributed, JackpotNearCap
from streams.jackpots import PoolMoney
from streams.processing import Batch
from streams.topics import jackpot_topic
from tables import JackpotPool, jackpot_keys, jackpot_pools

__all__ = ["Segment", "Touched", "work", "touch", "money_of", "set_money", "close_segment", "add",
           "check_near_cap", "seen", "remember", "prune_keys", "digest"]


@dataclass
class Segment:
    """The contributions of one batch to one cycle of one pool."""
    cycle: int
    items: list[dict[str, Any]] = field(default_factory=list)
    total_micro: int = 0


@dataclass
class Touched:
    pool: JackpotPool
    segment: Segment | None = None
    notices: list[JackpotNearCap] = field(default_factory=list)


def work(batch: Batch) -> dict[str, Touched]:
    return batch.work.setdefault("pools", {})


# ---------------------------------------------------------------- idempotency keys

# partition -> [(ts, key)] in insertion order, to prune `jackpot_keys`; None = rebuild.
_key_log: dict[int, deque[tuple[int, str]]] | None = None


def _forget_key_log(*args, **kwargs) -> None:
    global _key_log
    _key_log = None


app.on_partitions_assigned.connect(_forget_key_log)


def _key_log_of(partition: int) -> deque[tuple[int, str]]:
    global _key_log
    if _key_log is None:
        _key_log = {}
        for key, entry in sorted(jackpot_keys.items(), key=lambda kv: kv[1]["ts"]):
            _key_log.setdefault(entry["p"], deque()).append((entry["ts"], key))
    return _key_log.setdefault(partition, deque())


def seen(batch: Batch, key: str) -> dict[str, Any] | None:
    return batch.staged.get(jackpot_keys, key)


def remember(batch: Batch, partition: int, key: str, entry: dict[str, Any]) -> None:
    entry = {**entry, "ts": batch.now, "p": partition}
    batch.staged.set(jackpot_keys, key, entry)
    _key_log_of(partition).append((batch.now, key))


def prune_keys(batch: Batch, partition: int) -> None:
    """Forget keys older than the idempotency window (under an event of their partition)."""
    horizon = batch.now - settings.jackpot_idempotency_s * 1000
    keys = _key_log_of(partition)
    while keys and keys[0][0] < horizon:
        batch.staged.delete(jackpot_keys, keys.popleft()[1])


def digest(*parts: object) -> str:
    return hashlib.sha256("\x1f".join(map(str, parts)).encode()).hexdigest()[:32]


# ---------------------------------------------------------------- pools in a batch

def touch(batch: Batch, pool: JackpotPool) -> Touched:
    touched = work(batch).get(pool.jackpot_id)
    if touched is None:
        touched = work(batch)[pool.jackpot_id] = Touched(pool)
    pool.updated_at = batch.now
    batch.staged.set(jackpot_pools, pool.jackpot_id, pool)
    return touched


def money_of(pool: JackpotPool) -> PoolMoney:
    return PoolMoney(pool.value_micro, pool.reserve_micro)


def set_money(pool: JackpotPool, money: PoolMoney) -> None:
    pool.value_micro, pool.reserve_micro = money.value_micro, money.reserve_micro


def close_segment(batch: Batch, touched: Touched) -> None:
    segment, pool = touched.segment, touched.pool
    if segment is not None and segment.items:
        first = digest(segment.items[0]["key"])[:16]      # ids fit event_log's 96 characters
        batch.emit.send(jackpot_topic, pool.jackpot_id, JackpotContributed(
            event_id=f"{pool.jackpot_id}.{segment.cycle}.c.{first}", channel_id="", ts=batch.now,
            jackpot_id=pool.jackpot_id, cycle=segment.cycle, items=segment.items, total_micro=segment.total_micro,
            value_micro=pool.value_micro, currency=pool.definition["currency"]))
    touched.segment = None
    for notice in touched.notices:
        batch.emit.send(jackpot_topic, pool.jackpot_id, notice)
    touched.notices.clear()


def add(batch: Batch, touched: Touched, entry: dict[str, Any]) -> None:
    """Add one contribution (`entry`, with its amount_micro) to the pool and to this batch's
    segment of the pool's cycle."""
    pool = touched.pool
    segment = touched.segment
    if segment is None or segment.cycle != pool.cycle:
        close_segment(batch, touched)
        segment = touched.segment = Segment(pool.cycle)
    money = money_of(pool)
    money.add(entry["amount_micro"], pool.definition["cap"])
    set_money(pool, money)
    segment.items.append(entry)
    segment.total_micro += entry["amount_micro"]
    pool.contributions += 1
    check_near_cap(batch, touched, pool.definition["currency"])


def check_near_cap(batch: Batch, touched: Touched, currency: str) -> None:
    pool = touched.pool
    definition = pool.definition
    if pool.near_cap_sent or not jackpots.near_cap(money_of(pool), definition["cap"], definition["near_cap_bps"]):
        return
    pool.near_cap_sent = True
    touched.notices.append(JackpotNearCap(
        event_id=f"{pool.jackpot_id}.{pool.cycle}.near_cap", channel_id="", ts=batch.now, jackpot_id=pool.jackpot_id,
        cycle=pool.cycle, value=jackpots.whole(pool.value_micro), cap=definition["cap"],
        share_bps=definition["near_cap_bps"], currency=currency))
