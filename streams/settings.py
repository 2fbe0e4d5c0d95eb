"""Every endpoint and knob of the pipeline, read from environment variables.

Defaults are the local demo profile that `./stack up` starts (all on 127.0.0.1).
In production every value comes from the environment; nothing else reads os.environ.

Fail closed (DESIGN section 11): the profiles `demo` and `test` (what `./stack` sets in
CRASH_PROFILE) may use the development defaults of secrets; any other profile, e.g.
CRASH_PROFILE=production, refuses to start with a development default secret, and a secret
variable it was not given has no value at all: reading it stops the process with the variable's
name (a pod gets only the secrets it needs, k8s/). The check is `Settings.__post_init__`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from functools import lru_cache
from typing import Any

DEVELOPMENT_PROFILES = ("demo", "test", "chaos")
# A secret shorter than this is refused outside the development profiles.
MIN_SECRET_LENGTH = 16
# Secret variables and their development defaults (filled by `_secret` below).
SECRET_VARIABLES: dict[str, str] = {}


class SettingsError(ValueError):
    """The environment cannot run this profile (the message lists every problem)."""


class _Unset:
    """A secret variable that a non-development profile was not given."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<{self.name} not set>"


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, str(default)))


def _profile() -> str:
    return os.environ.get("CRASH_PROFILE", "demo")


def _secret(name: str, dev_default: str, parse=None, optional: bool = False):
    """A field read from a secret variable: its development default only in demo and test.

    Outside them a missing variable is `_Unset` (reading the field raises SettingsError), or
    "" when `optional` (e.g. S3 credentials, where the SDK's own chain takes over).
    """
    SECRET_VARIABLES[name] = dev_default

    def read() -> Any:
        raw = os.environ.get(name)
        if raw is None:
            if _profile() not in DEVELOPMENT_PROFILES:
                return "" if optional else _Unset(name)
            raw = dev_default
        return parse(raw) if parse else raw
    return field(default_factory=read, metadata={"env": name})


def _parse_keys(spec: str) -> dict[str, tuple[str, str]]:
    """`key_id:secret:role,...` -> {key_id: (secret, role)}; `role@group` makes a key of one
    operator group (it acts only on that group's channels and data)."""
    keys: dict[str, tuple[str, str]] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        key_id, secret, role = item.split(":", 2)
        keys[key_id] = (secret, role)
    return keys


@dataclass(frozen=True)
class Settings:
    # demo | test (./stack's local profiles) | production (or any other name: fails closed)
    profile: str = field(default_factory=_profile)
    # Kafka
    kafka_bootstrap: str = field(default_factory=lambda: _env("CRASH_KAFKA_BOOTSTRAP", "127.0.0.1:19092"))
    topic_prefix: str = field(default_factory=lambda: _env("CRASH_TOPIC_PREFIX", ""))
    partitions: int = field(default_factory=lambda: _env_int("CRASH_PARTITIONS", 8))
    replication: int = field(default_factory=lambda: _env_int("CRASH_REPLICATION", 1))
    # Faust worker
    app_id: str = field(default_factory=lambda: _env("CRASH_APP_ID", "crash"))
    # worker (the game's agents) | ops (the operator views, in a Faust process of their own, so
    # that no operator request can slow the game's event loop; set by `crash-ops` itself).
    process_role: str = field(default_factory=lambda: _env("CRASH_PROCESS_ROLE", "worker"))
    data_dir: str = field(default_factory=lambda: _env("CRASH_DATA_DIR", "var/demo/faust"))
    web_host: str = field(default_factory=lambda: _env("CRASH_WEB_HOST", "127.0.0.1"))
    web_port: int = field(default_factory=lambda: _env_int("CRASH_WEB_PORT", 6066))
    session_timeout_ms: int = field(default_factory=lambda: _env_int("CRASH_SESSION_TIMEOUT_MS", 10000))
    # The clock's Tick per owned channel: time for the orchestrator's schedule (a transition, the
    # crash, the bet stream's watermark that pays the autos, is processed within this much of its
    # time; a channel with no step due ticks once a second, agents/commands.py). The TermTicks
    # players see have a clock of their own (agents/flight_clock.py).
    tick_interval_ms: int = field(default_factory=lambda: _env_int("CRASH_TICK_INTERVAL_MS", 50))
    # How long the workers' producer waits to fill a produce request: aiokafka encodes each
    # request in Python, so fewer, fuller requests cost less CPU per message (crash-bench).
    # (Measured on the 2-core machine: 2 ms -> 10 ms tripled the decisions per second and cut
    # the broker's CPU per bet by five; each hop waits up to this much longer.)
    producer_linger_ms: int = field(default_factory=lambda: _env_int("CRASH_PRODUCER_LINGER_MS", 10))
    # The longest a worker's fetch waits at the broker for new records (streams/faust_fixes.py):
    # below the clock's tick interval, so a fetch never holds a Tick back by more than this.
    consumer_fetch_wait_ms: int = field(default_factory=lambda: _env_int("CRASH_CONSUMER_FETCH_WAIT_MS", 20))
    # Standby copies of each table partition on other workers (Faust's table_standby_replicas).
    standby_replicas: int = field(default_factory=lambda: _env_int("CRASH_STANDBY_REPLICAS", 1))
    # A term's orders stay in the pipeline's index this long (channel time) after MySQL has
    # recorded the term: a cancel or cashout that comes that late still gets its real answer.
    order_keep_ms: int = field(default_factory=lambda: _env_int("CRASH_ORDER_KEEP_MS", 60_000))
    # Commands stamped further in the future than this are refused (clock skew guard).
    clock_tolerance_ms: int = field(default_factory=lambda: _env_int("CRASH_CLOCK_TOLERANCE_MS", 2000))
    # MariaDB / MySQL (SQLAlchemy async URLs)
    # (they carry passwords: secrets)
    db_url: str = _secret("CRASH_DB_URL", "mysql+aiomysql://crash:crash@127.0.0.1:13306/crash")
    secret_db_url: str = _secret(
        "CRASH_SECRET_DB_URL", "mysql+aiomysql://crash_secret:crash_secret@127.0.0.1:13306/crash_secret")
    wallet_db_url: str = _secret("CRASH_WALLET_DB_URL", "mysql+aiomysql://apisys:apisys@127.0.0.1:13306/apisys")
    # Redis
    redis_url: str = field(default_factory=lambda: _env("CRASH_REDIS_URL", "redis://127.0.0.1:16379/0"))
    # HTTP services
    gateway_host: str = field(default_factory=lambda: _env("CRASH_GATEWAY_HOST", "127.0.0.1"))
    gateway_port: int = field(default_factory=lambda: _env_int("CRASH_GATEWAY_PORT", 8080))
    gateway_id: str = field(default_factory=lambda: _env("CRASH_GATEWAY_ID", "gw-1"))
    # Gateway processes sharing the port (SO_REUSEPORT; each answers under `<gateway id>-<n>`):
    # one Python process is one core, and the bet API's HMAC, JSON and HTTP work is per request.
    gateway_processes: int = field(default_factory=lambda: _env_int("CRASH_GATEWAY_PROCESSES", 1))
    decision_timeout_ms: int = field(default_factory=lambda: _env_int("CRASH_DECISION_TIMEOUT_MS", 5000))
    # Past this many bet API writes in flight, a new one is answered 503 + Retry-After at once
    # (shedding keeps the accepted ones' latency bounded); 0 turns shedding off.
    gateway_max_in_flight: int = field(default_factory=lambda: _env_int("CRASH_GATEWAY_MAX_IN_FLIGHT", 500))
    # ... and while the pipeline lags: the oldest decision this gateway waits for is older than
    # this (a backlog on the command topic, a worker away); 0 turns it off.
    gateway_max_lag_ms: int = field(default_factory=lambda: _env_int("CRASH_GATEWAY_MAX_LAG_MS", 2000))
    wallet_host: str = field(default_factory=lambda: _env("CRASH_WALLET_HOST", "127.0.0.1"))
    wallet_port: int = field(default_factory=lambda: _env_int("CRASH_WALLET_PORT", 8090))
    wallet_url: str = field(default_factory=lambda: _env("CRASH_WALLET_URL", "http://127.0.0.1:8090"))
    # HMAC keys (DESIGN section 11): "key_id:secret:role,..."; roles: game, admin, reader, player
    api_keys: dict[str, tuple[str, str]] = _secret(
        "CRASH_API_KEYS", "operator:dev-operator-secret:game,admin:dev-admin-secret:admin", parse=_parse_keys)
    # The key this deployment uses to call the operator's wallet ("ApiSys") and that the
    # reference wallet accepts.
    wallet_key_id: str = field(default_factory=lambda: _env("CRASH_WALLET_KEY_ID", "crash-game"))
    wallet_key_secret: str = _secret("CRASH_WALLET_KEY_SECRET", "dev-wallet-secret")
    # Payout adapter
    payout_batch: int = field(default_factory=lambda: _env_int("CRASH_PAYOUT_BATCH", 100))
    payout_max_tries: int = field(default_factory=lambda: _env_int("CRASH_PAYOUT_MAX_TRIES", 12))
    payout_backoff_base_ms: int = field(default_factory=lambda: _env_int("CRASH_PAYOUT_BACKOFF_BASE_MS", 200))
    payout_backoff_cap_ms: int = field(default_factory=lambda: _env_int("CRASH_PAYOUT_BACKOFF_CAP_MS", 30000))
    payout_lease_ms: int = field(default_factory=lambda: _env_int("CRASH_PAYOUT_LEASE_MS", 15000))
    payout_http_timeout_ms: int = field(default_factory=lambda: _env_int("CRASH_PAYOUT_HTTP_TIMEOUT_MS", 3000))
    payout_poll_ms: int = field(default_factory=lambda: _env_int("CRASH_PAYOUT_POLL_MS", 200))
    payout_metrics_port: int = field(default_factory=lambda: _env_int("CRASH_PAYOUT_METRICS_PORT", 9101))
    # The sink's own process (crash-sink): its Prometheus port (0 = none).
    sink_metrics_port: int = field(default_factory=lambda: _env_int("CRASH_SINK_METRICS_PORT", 9102))
    # Player page and push gateway (DESIGN section 15). The session secret signs the players'
    # session tokens (web/sessions.py); the bet API issues them, the push gateway checks them.
    push_host: str = field(default_factory=lambda: _env("CRASH_PUSH_HOST", "127.0.0.1"))
    push_port: int = field(default_factory=lambda: _env_int("CRASH_PUSH_PORT", 8082))
    # Bytes queued on one client's socket before the push gateway cuts that (slow) client off.
    push_client_buffer: int = field(default_factory=lambda: _env_int("CRASH_PUSH_CLIENT_BUFFER", 262144))
    session_secret: str = _secret("CRASH_SESSION_SECRET", "dev-session-secret")
    session_ttl_s: int = field(default_factory=lambda: _env_int("CRASH_SESSION_TTL_S", 900))
    # The operators' console (web/console.py, served by crash-ops): its session cookies are signed
    # with this secret (production refuses the development default) and last this long idle,
    # refreshed on use. Failed logins: at most this many per account name and per client address
    # within the window, then 429 until the oldest failure leaves it. Proxy hops: reverse proxies
    # in front of crash-ops that append the client's address to X-Forwarded-For (0: the peer is
    # the client; never trust the header beyond the proxies you run).
    console_secret: str = _secret("CRASH_CONSOLE_SECRET", "dev-console-secret")
    console_session_ttl_s: int = field(default_factory=lambda: _env_int("CRASH_CONSOLE_SESSION_TTL_S", 900))
    console_login_window_s: int = field(default_factory=lambda: _env_int("CRASH_CONSOLE_LOGIN_WINDOW_S", 900))
    console_failures_per_name: int = field(default_factory=lambda: _env_int("CRASH_CONSOLE_FAILURES_PER_NAME", 5))
    console_failures_per_address: int = field(
        default_factory=lambda: _env_int("CRASH_CONSOLE_FAILURES_PER_ADDRESS", 20))
    console_proxy_hops: int = field(default_factory=lambda: _env_int("CRASH_CONSOLE_PROXY_HOPS", 0))
    # Public base URLs as a browser sees them: the page (push gateway) and the bet API it calls.
    page_url: str = field(default_factory=lambda: _env("CRASH_PAGE_URL", "http://127.0.0.1:8082"))
    page_api_url: str = field(default_factory=lambda: _env("CRASH_PAGE_API_URL", "http://127.0.0.1:8080"))
    # Origins allowed to call the page's actions on the bet API (CORS), comma-separated or "*".
    page_origins: str = field(default_factory=lambda: _env("CRASH_PAGE_ORIGINS", "*"))
    log_level: str = field(default_factory=lambda: _env("CRASH_LOG_LEVEL", "info"))
    # Audit log (streams/audit.py, its export streams/audit_worm.py): sealed segments go to S3 Object
    # Lock (COMPLIANCE). An empty endpoint is AWS itself; the stack runs a local S3-compatible
    # server. Credentials may be left unset in production, where the SDK's own chain (IAM role,
    # IRSA) applies.
    audit_s3_endpoint: str = field(default_factory=lambda: _env("CRASH_AUDIT_S3_ENDPOINT", ""))
    audit_s3_region: str = field(default_factory=lambda: _env("CRASH_AUDIT_S3_REGION", "us-east-1"))
    audit_s3_bucket: str = field(default_factory=lambda: _env("CRASH_AUDIT_S3_BUCKET", "crash-audit"))
    audit_s3_access_key_id: str = _secret("CRASH_AUDIT_S3_ACCESS_KEY_ID", "dev-audit-key", optional=True)
    audit_s3_secret_access_key: str = _secret("CRASH_AUDIT_S3_SECRET_ACCESS_KEY", "dev-audit-secret-key",
                                              optional=True)
    # COMPLIANCE retention of every exported segment (DESIGN section 11: at least 5 years).
    audit_retention_days: int = field(default_factory=lambda: _env_int("CRASH_AUDIT_RETENTION_DAYS", 1827))
    # A segment is sealed when it has this many rows, or when its oldest row is this old.
    audit_segment_rows: int = field(default_factory=lambda: _env_int("CRASH_AUDIT_SEGMENT_ROWS", 1000))
    audit_seal_after_s: int = field(default_factory=lambda: _env_int("CRASH_AUDIT_SEAL_AFTER_S", 3600))
    # How often `crash-audit export --every` seals and exports.
    audit_export_interval_s: int = field(default_factory=lambda: _env_int("CRASH_AUDIT_EXPORT_INTERVAL_S", 300))
    # Jackpots: how long REST contribution ids and award idempotency keys are remembered by the
    # pipeline, how often every pool is reconciled against MySQL, where near-cap notices go.
    jackpot_idempotency_s: int = field(default_factory=lambda: _env_int("CRASH_JACKPOT_IDEMPOTENCY_S", 86400))
    jackpot_reconcile_interval_s: int = field(
        default_factory=lambda: _env_int("CRASH_JACKPOT_RECONCILE_INTERVAL_S", 3600))
    jackpot_webhook_url: str = field(default_factory=lambda: _env("CRASH_JACKPOT_WEBHOOK_URL", ""))
    jackpot_webhook_secret: str = field(default_factory=lambda: _env("CRASH_JACKPOT_WEBHOOK_SECRET", ""))

    def __post_init__(self) -> None:
        if self.profile not in DEVELOPMENT_PROFILES:
            problems = self.production_problems()
            if problems:
                raise SettingsError(f"profile {self.profile!r} refuses to start: " + "; ".join(problems))

    def production_problems(self) -> list[str]:
        """Every development default or weak secret this environment would run with."""
        problems: list[str] = []
        for f in fields(self):
            value = object.__getattribute__(self, f.name)
            name = f.metadata.get("env", f.name)
            if isinstance(value, _Unset):
                continue                      # refused when read (a pod gets only what it needs)
            if name in SECRET_VARIABLES and value and os.environ.get(name) == SECRET_VARIABLES[name]:
                problems.append(f"{name} is the development default")
            elif isinstance(value, str) and value.startswith("dev-"):
                problems.append(f"{name} looks like a development default ({value[:4]}...)")
        keys = object.__getattribute__(self, "api_keys")
        if not isinstance(keys, _Unset):
            for key_id, (secret, _role) in keys.items():
                if secret.startswith("dev-") or len(secret) < MIN_SECRET_LENGTH:
                    problems.append(f"CRASH_API_KEYS: the secret of {key_id} is a development default or shorter"
                                    f" than {MIN_SECRET_LENGTH} characters")
        wallet_secret = object.__getattribute__(self, "wallet_key_secret")
        if isinstance(wallet_secret, str) and len(wallet_secret) < MIN_SECRET_LENGTH:
            problems.append(f"CRASH_WALLET_KEY_SECRET is shorter than {MIN_SECRET_LENGTH} characters")
        return problems

    def __getattribute__(self, name: str) -> Any:
        value = object.__getattribute__(self, name)
        if type(value) is _Unset:
            raise SettingsError(f"{value.name} is not set: profile {object.__getattribute__(self, 'profile')!r}"
                                " has no default secrets")
        return value

    def topic(self, name: str) -> str:
        """Physical topic name: the optional prefix isolates environments sharing a cluster."""
        return f"{self.topic_prefix}{name}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings; a profile that cannot run stops the process with the reason."""
    try:
        return Settings()
    except SettingsError as error:
        raise SystemExit(f"crash: {error}") from None
