"""What the reference wallet accepts: its requests read and validated into Operations.

Every rule a request must pass (fields, identifiers, amounts in minor units, batch size) and the
400 it gets otherwise (BadRequest), with no database or HTTP server: web/wallet.py answers with
these, web/wallet_ledger.py applies the Operations.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from streams import ids
from web import http

MAX_BATCH_ITEMS = 500
# Largest amount or balance accepted: the biggest integer a JSON reader using IEEE doubles
# (JavaScript, many operator stacks) still reads exactly.
MAX_AMOUNT = 2**53 - 1

# Identifiers follow the game's one rule (streams/ids.py): a user id accepted by the bet API is
# accepted here, and one refused here was refused there, so no payout or debit can be left
# failed for good by a door that disagrees. An order_no is a caller's reference (a debit's
# order_no is the bet's api_order_no) or the pipeline's payout number, references joined by
# ':' (cashout:<bet_id>, refund:<bet_id>, refund:<channel_id>:<api_order_no>,
# bonus:<award_id>:<rank>); callers' references have no ':', so the two never collide.
ORDER_NO_MAX = 128
ORDER_NO_RE = re.compile(rf"{ids.REFERENCE.pattern}(?::{ids.REFERENCE.pattern}){{0,3}}")
USER_ID_RE = ids.REFERENCE
CURRENCY_RE = ids.CURRENCY
KIND_RE = re.compile(r"[A-Za-z0-9_.-]{0,32}")

DEBIT_FIELDS = frozenset({"order_no", "user_id", "currency", "amount", "meta"})
CREDIT_FIELDS = frozenset({"order_no", "user_id", "currency", "amount", "kind", "meta"})
ACCOUNT_FIELDS = frozenset({"user_id", "currency", "balance"})


class BadRequest(Exception):
    """A request the wallet will not process (400); the text is the answer's `reason`."""


def json_object(body: bytes, what: str = "body") -> dict[str, Any]:
    # The shared reader: invalid UTF-8, deep nesting, over-long integers, NaN are 400s.
    if not body:
        raise BadRequest(f"{what} is not valid JSON (empty)")
    try:
        return http.parse_json_object(body, what)
    except http.BadRequest as error:
        raise BadRequest(error.reason) from None


def check_fields(data: dict[str, Any], allowed: frozenset[str], prefix: str) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise BadRequest(f"{prefix}unknown field {unknown[0]!r}")


def _text(data: dict[str, Any], name: str, pattern: re.Pattern[str], rule: str, prefix: str = "") -> str:
    if name not in data:
        raise BadRequest(f"{prefix}missing field {name!r}")
    value = data[name]
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise BadRequest(f"{prefix}{name} must be {rule}")
    return value


def _integer(value: Any, name: str, minimum: int, prefix: str = "") -> int:
    # bool is a subclass of int in Python: true must not be read as 1 cent.
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= MAX_AMOUNT:
        kind = "a positive" if minimum > 0 else "a non-negative"
        raise BadRequest(f"{prefix}{name} must be {kind} integer in minor units (at most {MAX_AMOUNT})")
    return value


def amount_field(data: dict[str, Any], name: str, minimum: int, prefix: str = "") -> int:
    if name not in data:
        raise BadRequest(f"{prefix}missing field {name!r}")
    return _integer(data[name], name, minimum, prefix)


def user_id_field(data: dict[str, Any], prefix: str = "") -> str:
    return _text(data, "user_id", USER_ID_RE,
                 "1 to 64 characters of A-Z a-z 0-9 _ . -, starting with a letter or digit", prefix)


def currency_field(data: dict[str, Any], prefix: str = "") -> str:
    return _text(data, "currency", CURRENCY_RE, "3 capital letters (ISO 4217)", prefix)


@dataclass(frozen=True)
class Operation:
    """One balance change, as requested."""

    op: str  # debit | credit | adjust
    order_no: str
    user_id: str
    currency: str
    amount: int  # debit/credit: the positive amount; adjust: the target balance
    kind: str = ""
    meta: dict[str, Any] | None = None

    def digest(self) -> str:
        """What "the same content" means for a repeated order_no: op, user, currency, amount."""
        return hashlib.sha256(
            f"{self.op}\n{self.user_id}\n{self.currency}\n{self.amount}".encode()).hexdigest()


def parse_operation(data: dict[str, Any], op: str, prefix: str = "") -> Operation:
    check_fields(data, DEBIT_FIELDS if op == "debit" else CREDIT_FIELDS, prefix)
    order_no = _text(data, "order_no", ORDER_NO_RE,
                     "a reference (A-Z a-z 0-9 _ . -, starting with a letter or digit) or references joined by :",
                     prefix)
    if len(order_no) > ORDER_NO_MAX:
        raise BadRequest(f"{prefix}order_no must be at most {ORDER_NO_MAX} characters")
    user_id = user_id_field(data, prefix)
    currency = currency_field(data, prefix)
    amount = amount_field(data, "amount", 1, prefix)
    kind = ""
    if op == "credit" and data.get("kind") is not None:
        kind = _text(data, "kind", KIND_RE, "at most 32 characters of A-Z a-z 0-9 _ . -", prefix)
    meta = data.get("meta")
    if meta is not None and not isinstance(meta, dict):
        raise BadRequest(f"{prefix}meta must be a JSON object")
    return Operation(op, order_no, user_id, currency, amount, kind, meta)


def parse_batch(body: bytes) -> list[Operation]:
    data = json_object(body)
    check_fields(data, frozenset({"items"}), "")
    items = data.get("items")
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_BATCH_ITEMS:
        raise BadRequest(f"items must be a list of 1 to {MAX_BATCH_ITEMS} credits")
    ops = []
    for index, item in enumerate(items):
        prefix = f"items[{index}]: "
        if not isinstance(item, dict):
            raise BadRequest(f"{prefix}must be a JSON object")
        ops.append(parse_operation(item, "credit", prefix))
    return ops
