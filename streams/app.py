"""The Faust application: broker, RocksDB store, web port, all from streams.settings."""
from __future__ import annotations

import logging

import faust

from streams.settings import get_settings

settings = get_settings()

app = faust.App(
    settings.app_id,
    broker=f"kafka://{settings.kafka_bootstrap}",
    store="rocksdb://",
    datadir=settings.data_dir,
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
    producer_linger=0.002,
    table_standby_replicas=1,
    stream_wait_empty=False,
    web_enabled=True,
    logging_config=None,
)


def main() -> None:
    """`crash-worker worker -l info`: one Faust worker with every agent and operator view."""
    import agents  # noqa: F401  (registers the agents and timers)
    import web.jackpot_views  # noqa: F401  (registers the jackpot operator views)
    import web.operator_views  # noqa: F401  (registers the operator views)

    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    app.main()
