"""Identifiers: one rule for every door (bet API, jackpot API, operator views, pipeline).

Names (channels, jackpots, operator groups, games) and references chosen by callers
(api_order_no, user ids, contribution ids, idempotency keys) are short ASCII words of letters,
digits, `_`, `.` and `-`, starting with a letter or digit. No `:` (the pipeline's own order
numbers are `kind:<id>`, so a caller's reference can never collide with one), no whitespace,
no newline: a value is checked whole (`fullmatch`), never by a prefix match.
"""
from __future__ import annotations

import re

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,47}")
REFERENCE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
CURRENCY = re.compile(r"[A-Z]{3}")

__all__ = ["NAME", "REFERENCE", "CURRENCY", "is_name", "is_reference"]


def is_name(value: object) -> bool:
    return isinstance(value, str) and NAME.fullmatch(value) is not None


def is_reference(value: object) -> bool:
    return isinstance(value, str) and REFERENCE.fullmatch(value) is not None
