"""The Faust application: broker, RocksDB store, web port, all from streams.settings.

Two kinds of process run it: `crash-worker` (every agent; its web server answers /metrics only)
and `crash-ops` (the operator views, with a Faust app id of its own: no agent, no table, no part
in the workers' consumer group). Faust's built-in /router, /table, /graph and statistics views are
off in both: they would show players' bets and the live books to anyone.
"""
from __future__ import annotations

import logging

import faust

from streams import faust_fixes
from streams.settings import get_settings
from web.http import stamp_and_guard

settings = get_settings()
faust_fixes.install(fetch_wait_ms=settings.consumer_fetch_wait_ms)

OPS = settings.process_role == "ops"

app = faust.App(
    f"{settings.app_id}-ops" if OPS else settings.app_id,
    broker=f"kafka://{settings.kafka_bootstrap}",
    store="rocksdb://",
    datadir=f"{settings.data_dir}-ops" if OPS else settings.data_dir,
    web_host=settings.web_host,
    web_bind=settings.web_host,
    web_port=settings.web_port,
    topic_partitions=settings.partitions,
    topic_replication_factor=settings.replication,
    topic_allow_declare=True,
    consumer_auto_offset_reset="earliest",
    broker_session_timeout=settings.session_timeout_ms / 1000,
    broker_heartbeat_interval=1.0,
    broker_commit_interval=1.0,
    producer_acks=-1,
    producer_linger=settings.producer_linger_ms / 1000,
    table_standby_replicas=settings.standby_replicas,
    stream_wait_empty=False,
    web_enabled=True,
    web_router_enabled=False,
    web_tables_enabled=False,
    web_graph_enabled=False,
    web_stats_enabled=False,
    # Every answer of the operator views (and a worker's /metrics) is JSON on error: a bug is a
    # JSON 500 (logged), a database or Redis away a 503, an unknown path a 404 with a reason.
    web_application_options={"middlewares": [stamp_and_guard(64 * 1024)]},
    logging_config=None,
)


def main() -> None:
    """`crash-worker worker -l info`: one Faust worker with every agent (web: /metrics)."""
    import agents
    import web.metrics_view  # noqa: F401

    agents.register()
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    # uvloop: the profiles showed socket writes (Kafka produce requests) as the largest single
    # share of a worker's time; uvloop's transports cost less per write. Set before any loop exists.
    import mode.loop
    mode.loop.use("uvloop")
    from streams import full_gc
    full_gc.install(full_gc.WORKER_FULL_GC_S)
    full_gc.freeze_startup()
    app.main()
