"""Channel configuration: defaults, validation and the rules that tie the timings together.

A channel config is a JSON object; operators send a partial object and get back the full,
validated one. A change applies from the next term (each term keeps a snapshot).
"""
from __future__ import annotations

import copy
from typing import Any

from streams import ids

MAX_JACKPOTS = 8

DEFAULTS: dict[str, Any] = {
    "name": "",
    "operator_group": "default",
    "betting_ms": 8000,          # betting window (DESIGN section 5)
    "starting_ms": 2000,         # starting phase
    "cooldown_ms": 3000,         # from the crash to the next term's creation
    "growth_per_ms": "0.00006",  # m(t) = floor(100 e^(g t)) / 100
    "edge_bps": 100,
    "max_multiple_x100": 100000,
    "tick_ms": 100,              # flying ticks sent to clients (100-150 ms)
    # Commands reach Kafka within this much of their receive time; the bet stream of a term is
    # sealed (and auto cashouts paid) this long after the fact so that earlier-stamped commands
    # still count. Must stay below starting_ms.
    "grace_ms": 250,
    "chain_length": 1_000_000,
    # The jackpots this channel's bets feed (their ids; each checks tier, currency and status
    # itself). Kept up to date by the jackpot views when a jackpot of the channel's scope is
    # created; like every config key, a change applies from the next term.
    "jackpots": [],
    "currencies": {
        "EUR": {"min_bet": 10, "max_bet": 100_000, "max_bets_per_user": 3,
                "max_win": 10_000_000, "max_payout_per_term": 50_000_000},
    },
}

CURRENCY_LIMITS = ("min_bet", "max_bet", "max_bets_per_user", "max_win", "max_payout_per_term")
FIXED_AFTER_CREATION = ("chain_length",)


class ConfigError(ValueError):
    """A channel config that cannot run; the text is the reason given to the operator."""


def _int(config: dict[str, Any], name: str, low: int, high: int) -> None:
    value = config.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ConfigError(f"{name} must be an integer in [{low}, {high}]")


def validate(changes: dict[str, Any], current: dict[str, Any] | None = None) -> dict[str, Any]:
    """Merge `changes` over `current` (or the defaults) and check the result."""
    if not isinstance(changes, dict):
        raise ConfigError("config must be a JSON object")
    base = copy.deepcopy(current if current is not None else DEFAULTS)
    unknown = set(changes) - set(DEFAULTS)
    if unknown:
        raise ConfigError(f"unknown config keys: {', '.join(sorted(unknown))}")
    if current is not None:
        for name in FIXED_AFTER_CREATION:
            if name in changes and changes[name] != current.get(name):
                raise ConfigError(f"{name} cannot change after the channel is created")
    config = {**base, **copy.deepcopy(changes)}
    if not isinstance(config["name"], str) or len(config["name"]) > 100:
        raise ConfigError("name must be a string of at most 100 characters")
    if not ids.is_name(config["operator_group"]):
        raise ConfigError(f"operator_group must match {ids.NAME.pattern}")
    jackpots = config["jackpots"]
    if (not isinstance(jackpots, list) or len(jackpots) > MAX_JACKPOTS or len(set(jackpots)) != len(jackpots)
            or not all(ids.is_name(j) for j in jackpots)):
        raise ConfigError(f"jackpots must be a list of at most {MAX_JACKPOTS} distinct jackpot ids")
    _int(config, "betting_ms", 500, 600_000)
    _int(config, "starting_ms", 100, 60_000)
    _int(config, "cooldown_ms", 100, 600_000)
    _int(config, "edge_bps", 0, 5000)
    _int(config, "max_multiple_x100", 101, 100_000_000)
    _int(config, "tick_ms", 100, 150)
    _int(config, "grace_ms", 20, 5000)
    _int(config, "chain_length", 1, 100_000_000)
    if config["grace_ms"] >= config["starting_ms"]:
        raise ConfigError("grace_ms must be smaller than starting_ms")
    growth = config["growth_per_ms"]
    try:
        growth_value = float(growth)
    except (TypeError, ValueError):
        raise ConfigError("growth_per_ms must be a decimal string such as \"0.00006\"") from None
    if not isinstance(growth, str) or not 1e-7 <= growth_value <= 0.01:
        raise ConfigError("growth_per_ms must be a decimal string in [0.0000001, 0.01]")
    currencies = config["currencies"]
    if not isinstance(currencies, dict) or not currencies:
        raise ConfigError("currencies must be a non-empty object {CODE: limits}")
    for code, limits in currencies.items():
        if not isinstance(code, str) or not ids.CURRENCY.fullmatch(code):
            raise ConfigError(f"currency {code!r} must be three capital letters")
        if not isinstance(limits, dict) or set(limits) != set(CURRENCY_LIMITS):
            raise ConfigError(f"currency {code} needs exactly: {', '.join(CURRENCY_LIMITS)}")
        for name in CURRENCY_LIMITS:
            _int(limits, name, 1, 10**15)
        if limits["max_bet"] < limits["min_bet"]:
            raise ConfigError(f"{code}: max_bet is below min_bet")
        if limits["max_win"] < limits["max_bet"]:
            raise ConfigError(f"{code}: max_win must be at least max_bet")
        if limits["max_payout_per_term"] < limits["max_win"]:
            raise ConfigError(f"{code}: max_payout_per_term must be at least max_win")
    return config


def growth(config: dict[str, Any]) -> float:
    return float(config["growth_per_ms"])
