"""Every endpoint and knob of the pipeline, read from environment variables.

Defaults are the local demo profile that `./stack up` starts (all on 127.0.0.1).
In production every value comes from the environment; nothing else reads os.environ.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, str(default)))


def _parse_keys(spec: str) -> dict[str, tuple[str, str]]:
    """`key_id:secret:role,...` -> {key_id: (secret, role)}."""
    keys: dict[str, tuple[str, str]] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        key_id, secret, role = item.split(":", 2)
        keys[key_id] = (secret, role)
    return keys


@dataclass(frozen=True)
class Settings:
    # Kafka
    kafka_bootstrap: str = field(default_factory=lambda: _env("CRASH_KAFKA_BOOTSTRAP", "127.0.0.1:19092"))
    topic_prefix: str = field(default_factory=lambda: _env("CRASH_TOPIC_PREFIX", ""))
    partitions: int = field(default_factory=lambda: _env_int("CRASH_PARTITIONS", 8))
    replication: int = field(default_factory=lambda: _env_int("CRASH_REPLICATION", 1))
    # Faust worker
    app_id: str = field(default_factory=lambda: _env("CRASH_APP_ID", "crash"))
    data_dir: str = field(default_factory=lambda: _env("CRASH_DATA_DIR", "var/demo/faust"))
    web_host: str = field(default_factory=lambda: _env("CRASH_WEB_HOST", "127.0.0.1"))
    web_port: int = field(default_factory=lambda: _env_int("CRASH_WEB_PORT", 6066))
    session_timeout_ms: int = field(default_factory=lambda: _env_int("CRASH_SESSION_TIMEOUT_MS", 10000))
    tick_interval_ms: int = field(default_factory=lambda: _env_int("CRASH_TICK_INTERVAL_MS", 100))
    # Commands stamped further in the future than this are refused (clock skew guard).
    clock_tolerance_ms: int = field(default_factory=lambda: _env_int("CRASH_CLOCK_TOLERANCE_MS", 2000))
    # MariaDB / MySQL (SQLAlchemy async URLs)
    db_url: str = field(default_factory=lambda: _env(
        "CRASH_DB_URL", "mysql+aiomysql://crash:crash@127.0.0.1:13306/crash"))
    secret_db_url: str = field(default_factory=lambda: _env(
        "CRASH_SECRET_DB_URL", "mysql+aiomysql://crash_secret:crash_secret@127.0.0.1:13306/crash_secret"))
    wallet_db_url: str = field(default_factory=lambda: _env(
        "CRASH_WALLET_DB_URL", "mysql+aiomysql://apisys:apisys@127.0.0.1:13306/apisys"))
    # Redis
    redis_url: str = field(default_factory=lambda: _env("CRASH_REDIS_URL", "redis://127.0.0.1:16379/0"))
    # HTTP services
    gateway_host: str = field(default_factory=lambda: _env("CRASH_GATEWAY_HOST", "127.0.0.1"))
    gateway_port: int = field(default_factory=lambda: _env_int("CRASH_GATEWAY_PORT", 8080))
    gateway_id: str = field(default_factory=lambda: _env("CRASH_GATEWAY_ID", "gw-1"))
    decision_timeout_ms: int = field(default_factory=lambda: _env_int("CRASH_DECISION_TIMEOUT_MS", 5000))
    wallet_host: str = field(default_factory=lambda: _env("CRASH_WALLET_HOST", "127.0.0.1"))
    wallet_port: int = field(default_factory=lambda: _env_int("CRASH_WALLET_PORT", 8090))
    wallet_url: str = field(default_factory=lambda: _env("CRASH_WALLET_URL", "http://127.0.0.1:8090"))
    # HMAC keys (DESIGN section 11): "key_id:secret:role,..."; roles: game, admin, reader, player
    api_keys: dict[str, tuple[str, str]] = field(default_factory=lambda: _parse_keys(_env(
        "CRASH_API_KEYS", "operator:dev-operator-secret:game,admin:dev-admin-secret:admin")))
    # The key this deployment uses to call the operator's wallet ("ApiSys") and that the
    # reference wallet accepts.
    wallet_key_id: str = field(default_factory=lambda: _env("CRASH_WALLET_KEY_ID", "crash-game"))
    wallet_key_secret: str = field(default_factory=lambda: _env("CRASH_WALLET_KEY_SECRET", "dev-wallet-secret"))
    # Payout adapter
    payout_batch: int = field(default_factory=lambda: _env_int("CRASH_PAYOUT_BATCH", 100))
    payout_max_tries: int = field(default_factory=lambda: _env_int("CRASH_PAYOUT_MAX_TRIES", 12))
    payout_backoff_base_ms: int = field(default_factory=lambda: _env_int("CRASH_PAYOUT_BACKOFF_BASE_MS", 200))
    payout_backoff_cap_ms: int = field(default_factory=lambda: _env_int("CRASH_PAYOUT_BACKOFF_CAP_MS", 30000))
    payout_lease_ms: int = field(default_factory=lambda: _env_int("CRASH_PAYOUT_LEASE_MS", 15000))
    payout_http_timeout_ms: int = field(default_factory=lambda: _env_int("CRASH_PAYOUT_HTTP_TIMEOUT_MS", 3000))
    payout_poll_ms: int = field(default_factory=lambda: _env_int("CRASH_PAYOUT_POLL_MS", 200))
    payout_metrics_port: int = field(default_factory=lambda: _env_int("CRASH_PAYOUT_METRICS_PORT", 9101))
    log_level: str = field(default_factory=lambda: _env("CRASH_LOG_LEVEL", "info"))

    def topic(self, name: str) -> str:
        """Physical topic name: the optional prefix isolates environments sharing a cluster."""
        return f"{self.topic_prefix}{name}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
