"""Async client of an ApiSys wallet (the reference one in web/wallet.py, or an operator's).

Every part of the game that moves money through the operator's wallet uses this client
(payout adapter, gateway in seamless mode, bots, tests). The contract is
web/apisys.openapi.yaml. How to read its answers:

- a `WalletResult` is a definitive answer for that order_no: `ok`, `refused` (e.g. insufficient
  funds) or `conflict` (the order_no was used with other content). `replayed` says the wallet
  had already processed the order_no and returned the stored answer;
- `WalletUnavailable` means "unknown": timeout, connection error or drop, any 5xx, an answer
  that cannot be read. The operation may or may not have been applied: retry with the SAME
  order_no (the wallet is idempotent on it) until a definitive answer arrives;
- `WalletRejected` means the wallet refused the request itself (bad signature, validation,
  role): retrying the same request will not help.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import aiohttp
from yarl import URL

from web.signing import sign_headers

MAX_BATCH_ITEMS = 500
MAX_BODY_BYTES = 64 * 1024
_RESULT_STATUSES = frozenset({"ok", "refused", "conflict"})


class WalletError(Exception):
    """Base of the client's errors."""


class WalletUnavailable(WalletError):
    """No definitive answer: the operation may or may not be applied; retry with the same order_no."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class WalletRejected(WalletError):
    """The wallet refused the request as such (4xx other than a refusal or conflict)."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"wallet rejected the request: HTTP {status}: {body}")
        self.status = status
        self.body = body


@dataclass(frozen=True)
class WalletResult:
    order_no: str
    status: str  # "ok" | "refused" | "conflict"
    balance: int | None = None
    tx_id: str | None = None
    reason: str | None = None
    replayed: bool = False

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @classmethod
    def from_json(cls, data: Any, order_no: str | None = None) -> WalletResult:
        """Read one result object; an answer that does not fit raises WalletUnavailable."""
        if not isinstance(data, dict):
            raise WalletUnavailable(f"unexpected answer: {data!r:.200}")
        status, balance, tx_id = data.get("status"), data.get("balance"), data.get("tx_id")
        if (status not in _RESULT_STATUSES
                or not isinstance(data.get("order_no"), str)
                or (order_no is not None and data["order_no"] != order_no)
                or (status == "ok" and (isinstance(balance, bool) or not isinstance(balance, int)))
                or (balance is not None and (isinstance(balance, bool) or not isinstance(balance, int)))
                or (tx_id is not None and not isinstance(tx_id, str | int))):
            raise WalletUnavailable(f"unexpected answer: {data!r:.200}")
        reason = data.get("reason")
        return cls(order_no=data["order_no"], status=status, balance=balance,
                   tx_id=None if tx_id is None else str(tx_id),
                   reason=reason if isinstance(reason, str) else None,
                   replayed=data.get("replayed") is True)


def _chunks(items: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Split a batch so that each request has at most 500 items and fits in the 64 KiB body limit."""
    chunks: list[list[dict[str, Any]]] = []
    current: list[dict[str, Any]] = []
    size = len('{"items":[]}')
    for item in items:
        item_size = len(json.dumps(item, separators=(",", ":")).encode()) + 1  # + the comma
        if current and (len(current) == MAX_BATCH_ITEMS or size + item_size > MAX_BODY_BYTES):
            chunks.append(current)
            current, size = [], len('{"items":[]}')
        current.append(item)
        size += item_size
    if current:
        chunks.append(current)
    return chunks


class WalletClient:
    """Signed JSON calls to an ApiSys wallet; see the module docstring for the error model."""

    def __init__(self, base_url: str, key_id: str, secret: str, timeout_s: float = 3.0,
                 session: aiohttp.ClientSession | None = None) -> None:
        self._base = URL(base_url.rstrip("/"))
        self._key_id = key_id
        self._secret = secret
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session = session
        self._own_session = session is None

    @classmethod
    def from_settings(cls, settings: Any, timeout_s: float | None = None) -> WalletClient:
        """The deployment's wallet (settings.wallet_url) with the game's key."""
        if timeout_s is None:
            timeout_s = settings.payout_http_timeout_ms / 1000
        return cls(settings.wallet_url, settings.wallet_key_id, settings.wallet_key_secret, timeout_s)

    async def __aenter__(self) -> WalletClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
        self._session = None

    # ---- money
    async def debit(self, order_no: str, user_id: str, currency: str, amount: int,
                    meta: dict[str, Any] | None = None) -> WalletResult:
        body: dict[str, Any] = {"order_no": order_no, "user_id": user_id, "currency": currency, "amount": amount}
        if meta is not None:
            body["meta"] = meta
        return await self._operation("/v1/debit", body)

    async def credit(self, order_no: str, user_id: str, currency: str, amount: int, kind: str = "",
                     meta: dict[str, Any] | None = None) -> WalletResult:
        body: dict[str, Any] = {"order_no": order_no, "user_id": user_id, "currency": currency, "amount": amount}
        if kind:
            body["kind"] = kind
        if meta is not None:
            body["meta"] = meta
        return await self._operation("/v1/credit", body)

    async def credit_batch(self, items: list[dict[str, Any]]) -> list[WalletResult]:
        """Credit many at once; results in the order of `items`.

        Each item is {order_no, user_id, currency, amount, kind?, meta?}. More than 500 items
        (or 64 KiB) go in several requests; if one fails the whole call raises WalletUnavailable and is safe to
        repeat as a whole (applied items come back replayed).
        """
        results: list[WalletResult] = []
        for chunk in _chunks(items):
            status, data = await self._call("POST", "/v1/credit/batch", {"items": chunk})
            if status != 200:
                raise WalletRejected(status, data)
            answers = data.get("results") if isinstance(data, dict) else None
            if not isinstance(answers, list) or len(answers) != len(chunk):
                raise WalletUnavailable(f"unexpected batch answer: {data!r:.200}")
            results.extend(WalletResult.from_json(answer, item.get("order_no"))
                           for answer, item in zip(answers, chunk, strict=True))
        return results

    async def balance(self, user_id: str, currency: str) -> int:
        status, data = await self._call("GET", f"/v1/balance/{user_id}", query={"currency": currency})
        if status != 200:
            raise WalletRejected(status, data)
        balance = data.get("balance") if isinstance(data, dict) else None
        if isinstance(balance, bool) or not isinstance(balance, int):
            raise WalletUnavailable(f"unexpected balance answer: {data!r:.200}")
        return balance

    # ---- admin (reference wallet; needs an admin key)
    async def get_faults(self) -> dict[str, Any]:
        status, data = await self._call("GET", "/admin/faults")
        if status != 200:
            raise WalletRejected(status, data)
        return data

    async def set_faults(self, **switches: int | float) -> dict[str, Any]:
        """Change fault switches (latency_ms, latency_jitter_ms, error_rate, timeout_rate,
        timeout_ms, drop_rate); returns all switches as now set."""
        status, data = await self._call("POST", "/admin/faults", dict(switches))
        if status != 200:
            raise WalletRejected(status, data)
        return data

    async def set_balance(self, user_id: str, currency: str, balance: int) -> int:
        """Set a player's balance (journalled as an `adjust`); returns the new balance."""
        status, data = await self._call("POST", "/admin/accounts",
                                        {"user_id": user_id, "currency": currency, "balance": balance})
        if status != 200:
            raise WalletRejected(status, data)
        return int(data["balance"])

    async def health(self) -> dict[str, Any]:
        status, data = await self._call("GET", "/v1/health")
        if status != 200:
            raise WalletRejected(status, data)
        return data

    # ---- transport
    async def _operation(self, path: str, body: dict[str, Any]) -> WalletResult:
        status, data = await self._call("POST", path, body)
        if status == 200 or (status == 409 and isinstance(data, dict)
                             and data.get("status") in ("refused", "conflict")):
            return WalletResult.from_json(data, body["order_no"])
        raise WalletRejected(status, data)

    def _session_now(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
            self._own_session = True
        return self._session

    async def _call(self, method: str, path: str, payload: dict[str, Any] | None = None,
                    query: dict[str, str] | None = None) -> tuple[int, Any]:
        """One signed request: (status, parsed JSON, or the text of an unreadable 3xx/4xx).

        Raises WalletUnavailable when the outcome is unknown (no answer, 5xx, 408, 429, an
        unreadable 2xx/409)."""
        url = self._base.with_path(self._base.path.rstrip("/") + path)
        if query:
            url = url.with_query(query)
        # Serialise once: the signature covers exactly these bytes.
        body = b"" if payload is None else json.dumps(payload, separators=(",", ":")).encode()
        headers = sign_headers(self._key_id, self._secret, method, url.raw_path_qs, body)
        if payload is not None:
            headers["Content-Type"] = "application/json"
        try:
            async with self._session_now().request(method, url, data=body if payload is not None else None,
                                                   headers=headers, timeout=self._timeout,
                                                   allow_redirects=False) as response:
                raw = await response.read()
                status = response.status
        except TimeoutError:
            raise WalletUnavailable(f"{method} {path}: no answer within {self._timeout.total} s") from None
        except aiohttp.ClientError as error:  # refused, reset, dropped, bad framing...
            raise WalletUnavailable(f"{method} {path}: {type(error).__name__}: {error}") from None
        if status >= 500 or status in (408, 429):  # overloaded or failing: outcome unknown
            raise WalletUnavailable(f"{method} {path}: HTTP {status}: {raw[:200]!r}")
        try:
            return status, json.loads(raw)
        except ValueError:
            if 200 <= status < 300 or status == 409:  # an answer we cannot read: outcome unknown
                raise WalletUnavailable(
                    f"{method} {path}: HTTP {status} with an unreadable body: {raw[:200]!r}") from None
            # Any other 4xx (or 3xx) is a refusal of the request itself, e.g. a wrong URL.
            return status, raw[:500].decode(errors="replace")
