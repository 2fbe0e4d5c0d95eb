"""The pools' views in Redis (`jackpot:<id>`: what GET /jackpot/{id}, the push gateway and the
ticker read) and the pools' value gauges.

The Jackpot Service writes the views of the pools a batch touched once the batch is committed;
a timer writes every owned pool's view again. A view is a copy for readers, never the state, so
it is kept apart from the commands (agents/jackpot_service.py).
"""
from __future__ import annotations

import json
import logging
from typing import Any

from aiokafka.partitioner import DefaultPartitioner

from streams import jackpots, metrics
from streams.app import app, settings
from streams.cache import redis_client
from streams.topics import JACKPOT_COMMAND
from tables import JackpotPool, jackpot_pools

log = logging.getLogger(__name__)

__all__ = ["pool_view", "publish_views", "owned_pools", "refresh_views"]


def pool_view(pool: JackpotPool) -> dict[str, Any]:
    """What GET /jackpot/{id}, the push gateway and the ticker show: never above the true pool."""
    definition = pool.definition
    return {
        "jackpot_id": pool.jackpot_id, "name": definition["name"], "tier": definition["tier"],
        "currency": definition["currency"], "status": pool.status, "trigger": definition["trigger"],
        "channel_id": definition["channel_id"], "operator_group": definition["operator_group"],
        "seed": definition["seed"], "cap": definition["cap"], "rate_bps": definition["rate_bps"],
        "near_cap_bps": definition["near_cap_bps"], "rank_split_bps": definition["rank_split_bps"],
        "value": jackpots.whole(pool.value_micro), "cycle": pool.cycle, "commitment": pool.commitment,
        "near_cap": pool.near_cap_sent, "pending": pool.pending, "last_hit": pool.last_hit,
        "version": pool.version, "updated_at": pool.updated_at,
    }


_redis = None


async def publish_views(pools: list[JackpotPool]) -> None:
    """Write the pools' views to Redis; a Redis outage only delays the views (logged)."""
    global _redis
    if not pools:
        return
    for pool in pools:
        metrics.JACKPOT_VALUE.labels(jackpot_id=pool.jackpot_id, currency=pool.definition["currency"]).set(
            jackpots.whole(pool.value_micro))
    try:
        if _redis is None:
            _redis = redis_client(settings.redis_url, max_connections=4)
        async with _redis.pipeline(transaction=False) as pipe:
            for pool in pools:
                pipe.set(jackpots.view_key(pool.jackpot_id), json.dumps(pool_view(pool), separators=(",", ":")))
            await pipe.execute()
    except Exception as error:       # a view, not the state: the next batch or refresh writes it again
        metrics.JACKPOT_VIEW_ERRORS.inc()
        log.warning("jackpot views not written to Redis: %s", error)


def owned_pools() -> list[JackpotPool]:
    topic = settings.topic(JACKPOT_COMMAND)
    owned = {tp.partition for tp in app.assignor.assigned_actives() if tp.topic == topic}
    return [pool for _, pool in jackpot_pools.items() if _partition_of(pool.jackpot_id) in owned]


def _partition_of(jackpot_id: str) -> int:
    partitions = list(range(settings.partitions))
    return DefaultPartitioner()(jackpot_id.encode(), partitions, partitions)


def _clear_value_gauges(*args, **kwargs) -> None:
    metrics.JACKPOT_VALUE.clear()


app.on_partitions_revoked.connect(_clear_value_gauges)


@app.timer(interval=10.0)
async def refresh_views() -> None:
    """Every owned pool's view again (heals a Redis restart; shows paused pools' values)."""
    await publish_views(owned_pools())
