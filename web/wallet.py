"""`crash-wallet`: the reference ApiSys wallet, the operator's wallet system (DESIGN section 9).

A small aiohttp service with its own MariaDB database (`apisys`) that holds players' balances.
The game debits stakes from it and credits payouts to it; operators implement the same contract
(web/apisys.openapi.yaml) on their own platform. Rules it keeps:

- amounts are positive integers in minor units, never floats; a debit never makes a balance
  negative (an unknown account has balance 0);
- every operation is idempotent on `order_no` (unique across debit and credit): a repeat with
  the same content returns the first stored answer plus `"replayed": true`, a repeat with other
  content is a conflict. The journal row and the balance change are one DB transaction and the
  unique key on `order_no` serialises concurrent identical requests;
- every request is HMAC-signed (web/signing.py): role game or admin for money, admin for /admin;
- switches under /admin/faults inject latency, 5xx, late answers and lost answers, so that the
  payout adapter's retries can be tested against a wallet that misbehaves the way real ones do.

Requests are read and validated by web/wallet_requests.py and applied by the Ledger
(web/wallet_ledger.py); this module is the HTTP service around them.
"""
from __future__ import annotations

import asyncio
import logging
import math
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

import redis.asyncio as aioredis
from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeout
from sqlalchemy.ext.asyncio import AsyncEngine

from sql.db import make_engine
from streams.audit import AuditLog, request_summary
from streams.cache import REDIS_ERRORS, redis_client
from streams.settings import Settings, get_settings
from web.signing import CALLER, RedisNonceStore, Verifier, require_signature
from web.wallet_ledger import Ledger, Outcome
from web.wallet_requests import (
    ACCOUNT_FIELDS,
    BadRequest,
    Operation,
    amount_field,
    check_fields,
    currency_field,
    json_object,
    parse_batch,
    parse_operation,
    user_id_field,
)

log = logging.getLogger("crash.wallet")

# The outcome label of a request for the wallet's metrics, set by whoever decided it.
OUTCOME = web.RequestKey("outcome", str)
MAX_BODY_BYTES = 64 * 1024
MAX_FAULT_MS = 600_000
BATCH_CONCURRENCY = 8


# ---------------------------------------------------------------- faults

@dataclass
class Faults:
    """Runtime switches (POST /admin/faults); rates are probabilities, not money."""

    latency_ms: int = 0
    latency_jitter_ms: int = 0
    error_rate: float = 0.0
    timeout_rate: float = 0.0
    timeout_ms: int = 10_000
    drop_rate: float = 0.0

    def update(self, changes: dict[str, Any]) -> None:
        """Validate every change first, then apply them all (never half an update)."""
        valid: dict[str, int | float] = {}
        for name, value in changes.items():
            if name not in self.__dataclass_fields__:
                raise BadRequest(f"unknown switch {name!r}")
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise BadRequest(f"{name} must be a number")
            if name.endswith("_rate"):
                if not math.isfinite(value) or not 0 <= value <= 1:
                    raise BadRequest(f"{name} must be between 0 and 1")
                valid[name] = float(value)
            else:
                if not isinstance(value, int) or not 0 <= value <= MAX_FAULT_MS:
                    raise BadRequest(f"{name} must be an integer from 0 to {MAX_FAULT_MS}")
                valid[name] = value
        for name, value in valid.items():
            setattr(self, name, value)


# ---------------------------------------------------------------- metrics

class Metrics:
    """One registry per app, so that several apps can live in one process (tests, tools)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.requests = Counter("wallet_requests_total", "Wallet requests by operation and outcome",
                                ["op", "outcome"], registry=self.registry)
        self.latency = Histogram("wallet_request_seconds", "Wallet request handling time", ["op"],
                                 registry=self.registry,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.batch_items = Counter("wallet_batch_items_total", "Credits of /v1/credit/batch by outcome",
                                   ["outcome"], registry=self.registry)
        self.faults = Counter("wallet_faults_injected_total", "Faults injected on purpose (/admin/faults)",
                              ["fault"], registry=self.registry)
        self.switches = Gauge("wallet_fault_switch", "Current fault switches", ["switch"], registry=self.registry)
        self.db_retries = Counter("wallet_db_retries_total", "Transactions re-run after a deadlock",
                                  registry=self.registry)

    def show_switches(self, faults: Faults) -> None:
        for name, value in asdict(faults).items():
            self.switches.labels(switch=name).set(value)


# ---------------------------------------------------------------- HTTP

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, error: str, reason: str) -> web.Response:
    return web.json_response({"error": error, "reason": reason}, status=status)


class WalletService:
    def __init__(self, settings: Settings, engine: AsyncEngine, redis: aioredis.Redis,
                 rng: random.Random | None = None) -> None:
        self.settings = settings
        self.engine = engine
        self.redis = redis
        self.metrics = Metrics()
        self.ledger = Ledger(engine, on_retry=self.metrics.db_retries.inc)
        # The wallet's admin writes (fault switches, set-balance) go to its own audit chain, in
        # its own database: the operator's system, not the game's.
        self.audit = AuditLog(engine, chain="apisys")
        self.faults = Faults()
        self.metrics.show_switches(self.faults)
        self.random = rng or random.Random()
        keys = {settings.wallet_key_id: (settings.wallet_key_secret, "game")}
        keys.update({key_id: entry for key_id, entry in settings.api_keys.items()
                     if entry[1] == "admin" and key_id != settings.wallet_key_id})
        self.verifier = Verifier(keys, RedisNonceStore(redis, namespace="nonce:wallet"))
        self._batch_slots = asyncio.Semaphore(BATCH_CONCURRENCY)

    # ---- middleware: JSON errors, body limit, metrics
    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        route = request.match_info.route.name or "unmatched"
        started = time.perf_counter()
        try:
            if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
                response: web.StreamResponse = _error(413, "payload_too_large",
                                                      f"the body may be at most {MAX_BODY_BYTES} bytes")
            else:
                response = await handler(request)
        except web.HTTPRequestEntityTooLarge:  # a chunked body that grew past the limit
            response = _error(413, "payload_too_large", f"the body may be at most {MAX_BODY_BYTES} bytes")
        except web.HTTPException as exc:  # 404, 405...: JSON like every other answer
            response = _error(exc.status, exc.reason.lower().replace(" ", "_"), exc.text or exc.reason)
        except (DBAPIError, SQLAlchemyTimeout) as exc:  # MariaDB down: the caller retries the same order_no
            log.warning("%s %s: database unavailable: %s", request.method, request.path, str(exc)[:200])
            response = _error(503, "database_unavailable", "the wallet database cannot be reached; retry")
            response.headers["Retry-After"] = "1"
        except REDIS_ERRORS as exc:
            log.warning("%s %s: Redis unavailable: %s", request.method, request.path, exc)
            response = _error(503, "redis_unavailable", "the nonce store cannot be reached; retry")
            response.headers["Retry-After"] = "1"
        except Exception:
            log.exception("%s %s failed", request.method, request.path)
            response = _error(500, "internal", "internal error (logged)")
        if route not in ("health", "metrics"):
            outcome = request.get(OUTCOME) or {401: "unauthorized", 403: "forbidden", 413: "too_large",
                                                 400: "bad_request"}.get(response.status, str(response.status))
            self.metrics.requests.labels(op=route, outcome=outcome).inc()
            self.metrics.latency.labels(op=route).observe(time.perf_counter() - started)
        return response

    def _bad(self, request: web.Request, error: BadRequest) -> web.Response:
        request[OUTCOME] = "bad_request"
        return _error(400, "bad_request", str(error))

    # ---- faults
    async def _fault(self) -> str | None:
        """Sleep the configured latency, then draw the fault of this request (None: behave)."""
        faults = self.faults
        if faults.latency_ms or faults.latency_jitter_ms:
            self.metrics.faults.labels(fault="latency").inc()
            await asyncio.sleep((faults.latency_ms + self.random.uniform(0, faults.latency_jitter_ms)) / 1000)
        for name, rate in (("error", faults.error_rate), ("timeout", faults.timeout_rate),
                           ("drop", faults.drop_rate)):
            if rate and self.random.random() < rate:
                self.metrics.faults.labels(fault=name).inc()
                return name
        return None

    async def _apply_with_faults(self, request: web.Request, ops: list[Operation],
                                 answer: Callable[[list[Outcome]], web.Response]) -> web.Response:
        fault = await self._fault()
        if fault == "error":
            request[OUTCOME] = "injected_error"
            return web.json_response({"error": "injected_error"}, status=503)
        if fault == "timeout":
            # Answer so late that the caller has given up, but still apply: the classic
            # "did my credit go through?" case that only order_no idempotence resolves.
            await asyncio.sleep(self.faults.timeout_ms / 1000)
        outcomes = await self._apply_all(ops)
        response = answer(outcomes)
        if fault == "drop":
            # Applied, but the answer is lost: close the socket so that the caller sees a
            # disconnect (no status line at all). aiohttp's write of `response` then fails
            # quietly with ConnectionResetError, which it treats as a client disconnect.
            request[OUTCOME] = "dropped"
            if request.transport is not None:
                request.transport.abort()
        return response

    async def _apply_all(self, ops: list[Operation]) -> list[Outcome]:
        if len(ops) == 1:
            return [await self.ledger.apply(ops[0])]

        async def one(op: Operation) -> Outcome:
            async with self._batch_slots:
                return await self.ledger.apply(op)

        # Items are independent transactions; wait for all before failing, so that a retry of
        # the whole batch finds every applied item in the journal.
        outcomes: list[Outcome] = []
        for result in await asyncio.gather(*(one(op) for op in ops), return_exceptions=True):
            if isinstance(result, BaseException):
                raise result
            outcomes.append(result)
        return outcomes

    # ---- handlers
    async def debit(self, request: web.Request) -> web.Response:
        return await self._single(request, "debit")

    async def credit(self, request: web.Request) -> web.Response:
        return await self._single(request, "credit")

    async def _single(self, request: web.Request, op_name: str) -> web.Response:
        try:
            op = parse_operation(json_object(await request.read()), op_name)
        except BadRequest as error:
            return self._bad(request, error)

        def answer(outcomes: list[Outcome]) -> web.Response:
            request.setdefault(OUTCOME, outcomes[0].label)
            return web.json_response(outcomes[0].result, status=outcomes[0].http_status)

        return await self._apply_with_faults(request, [op], answer)

    async def credit_batch(self, request: web.Request) -> web.Response:
        try:
            ops = parse_batch(await request.read())
        except BadRequest as error:
            return self._bad(request, error)

        def answer(outcomes: list[Outcome]) -> web.Response:
            for outcome in outcomes:
                self.metrics.batch_items.labels(outcome=outcome.label).inc()
            request.setdefault(OUTCOME, "ok")
            return web.json_response({"results": [outcome.result for outcome in outcomes]})

        return await self._apply_with_faults(request, ops, answer)

    async def balance(self, request: web.Request) -> web.Response:
        try:
            user_id = user_id_field({"user_id": request.match_info["user_id"]})
            currency = currency_field(dict(request.query))
        except BadRequest as error:
            return self._bad(request, error)
        request[OUTCOME] = "ok"
        balance = await self.ledger.balance(user_id, currency)
        return web.json_response({"user_id": user_id, "currency": currency, "balance": balance})

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def metrics_view(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.metrics.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def get_faults(self, request: web.Request) -> web.Response:
        request[OUTCOME] = "ok"
        return web.json_response(asdict(self.faults))

    async def set_faults(self, request: web.Request) -> web.Response:
        try:
            changes = json_object(await request.read())
            Faults(**asdict(self.faults)).update(changes)       # validate on a copy first
        except BadRequest as error:
            return self._bad(request, error)
        caller = request[CALLER].key_id
        await self.audit.append(caller, caller, "wallet.faults", request_summary(request, changes))
        self.faults.update(changes)
        self.metrics.show_switches(self.faults)
        log.warning("fault switches now %s (by %s)", asdict(self.faults), request[CALLER].key_id)
        request[OUTCOME] = "ok"
        return web.json_response(asdict(self.faults))

    async def set_account(self, request: web.Request) -> web.Response:
        try:
            data = json_object(await request.read())
            check_fields(data, ACCOUNT_FIELDS, "")
            user_id, currency = user_id_field(data), currency_field(data)
            balance = amount_field(data, "balance", 0)
        except BadRequest as error:
            return self._bad(request, error)
        op = Operation("adjust", f"adjust:{uuid.uuid4().hex}", user_id, currency, balance, kind="admin",
                       meta={"by": request[CALLER].key_id})
        await self.audit.append(request[CALLER].key_id, request[CALLER].key_id, "wallet.set_balance",
                                request_summary(request, data, order_no=op.order_no), target=f"{user_id}/{currency}")
        outcome = await self.ledger.apply(op)
        request[OUTCOME] = "ok"
        return web.json_response({"user_id": user_id, "currency": currency, "balance": outcome.result["balance"],
                                  "order_no": op.order_no, "tx_id": outcome.result["tx_id"]})

    def routes(self, app: web.Application) -> None:
        money = require_signature(self.verifier, roles=("game", "admin"))
        admin = require_signature(self.verifier, roles=("admin",))
        router = app.router
        router.add_post("/v1/debit", money(self.debit), name="debit")
        router.add_post("/v1/credit", money(self.credit), name="credit")
        router.add_post("/v1/credit/batch", money(self.credit_batch), name="credit_batch")
        router.add_get("/v1/balance/{user_id}", money(self.balance), name="balance", allow_head=False)
        router.add_get("/v1/health", self.health, name="health", allow_head=False)
        router.add_get("/metrics", self.metrics_view, name="metrics", allow_head=False)
        router.add_get("/admin/faults", admin(self.get_faults), name="admin_faults_get", allow_head=False)
        router.add_post("/admin/faults", admin(self.set_faults), name="admin_faults_set")
        router.add_post("/admin/accounts", admin(self.set_account), name="admin_accounts")


SERVICE_KEY = web.AppKey("wallet_service", WalletService)


def make_app(settings: Settings | None = None) -> web.Application:
    """The wallet as an aiohttp app (engine and Redis are closed on cleanup)."""
    settings = settings or get_settings()
    service = WalletService(settings, make_engine(settings.wallet_db_url, pool_size=10),
                            redis_client(settings.redis_url))
    # client_max_size: a body that streams past 64 KiB (no Content-Length) is cut off too.
    app = web.Application(middlewares=[service.middleware], client_max_size=MAX_BODY_BYTES)
    app[SERVICE_KEY] = service
    service.routes(app)

    async def close(_: web.Application) -> None:
        await service.engine.dispose()
        await service.redis.aclose()

    app.on_cleanup.append(close)
    return app


def main() -> None:
    settings = get_settings()
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Schema migrations are the stack's job (python -m sql.migrate), not the service's.
    web.run_app(make_app(settings), host=settings.wallet_host, port=settings.wallet_port,
                handler_cancellation=False,  # a caller hanging up must not cut a transaction short
                shutdown_timeout=15.0,
                access_log=log if settings.log_level.lower() == "debug" else None,
                print=lambda message: log.info("%s", " ".join(message.split())))


if __name__ == "__main__":  # pragma: no cover
    main()
