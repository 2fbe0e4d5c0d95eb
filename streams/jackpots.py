"""Progressive jackpot rules (DESIGN section 10): pure, integer-only, no I/O, no clock.

The Jackpot Service feeds these functions in the order its single writer sees the commands;
the replay of a jackpot's stream, the verifier and the reconciliation use them too.

Units. A pool holds its value in micro units (millionths of the minor unit): a contribution
of `rate_bps` of a stake is `stake * rate_bps / 10_000` minor units, which is
`stake * rate_bps * 100` micro units, always a whole number, so nothing is lost to rounding
and `seed + contributions - awards` is exact. Seeds, caps, hit values and awards are whole
minor units.

Cycle. A cycle starts at creation or at a reset with `seed + overflow` (what the previous
cycle's hit left). `must_hit_by`: a hit value is drawn uniformly in [seed, cap] with a CSPRNG
and committed as SHA-256("<value>:<nonce>"); the pool hits when a contribution takes it to or
above that value (at most one hit per contribution); the award is exactly the hit value and the
rest of that contribution is the overflow. `external`: the game reports the hit; the award is the
pool's whole minor units and the sub-unit remainder is the overflow. A pool never shows more
than its cap: beyond it, contributions wait in a reserve that joins the next cycle.
"""
from __future__ import annotations

import copy
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any

from streams import ids

MICRO = 1_000_000
BPS = 10_000
TIERS = ("local", "shared", "mega")
TRIGGERS = ("must_hit_by", "external")
STATUSES = ("active", "paused", "audit")
MAX_MONEY = 10**13                     # minor units: far above any pool, far below 2^63 micro units

DEFAULTS: dict[str, Any] = {
    "name": "",
    "rate_bps": 100,                   # share of each stake fed to the pool
    "near_cap_bps": 8000,              # the near-cap notice, as a share of the cap
    "rank_split_bps": None,            # term jackpots: [rank 1, rank 2, rank 3] shares, summing to 10000
    "channel_id": "",                  # tier local: the channel whose terms it belongs to
    "operator_group": "",              # tier shared: the operator group whose channels feed it
}
REQUIRED = ("jackpot_id", "tier", "currency", "seed", "cap", "trigger")
# Fixed at creation: changing them would change who feeds the pool or what it is worth.
FIXED = ("jackpot_id", "tier", "currency", "trigger", "channel_id", "operator_group")
# May change, from the next reset.
CHANGEABLE = ("name", "rate_bps", "near_cap_bps", "rank_split_bps", "seed", "cap")


class DefinitionError(ValueError):
    """A jackpot definition that cannot run; the text is the reason given to the admin."""


def _int(definition: dict[str, Any], name: str, low: int, high: int) -> None:
    value = definition.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise DefinitionError(f"{name} must be an integer in [{low}, {high}]")


def validate(changes: dict[str, Any], current: dict[str, Any] | None = None) -> dict[str, Any]:
    """Merge `changes` over `current` (or the defaults, for a new jackpot) and check the result."""
    if not isinstance(changes, dict):
        raise DefinitionError("definition must be a JSON object")
    known = set(DEFAULTS) | set(REQUIRED)
    unknown = set(changes) - known
    if unknown:
        raise DefinitionError(f"unknown definition keys: {', '.join(sorted(unknown))}")
    if current is not None:
        for name in FIXED:
            if name in changes and changes[name] != current.get(name):
                raise DefinitionError(f"{name} cannot change after the jackpot is created")
        definition = {**copy.deepcopy(current), **copy.deepcopy(changes)}
    else:
        missing = [name for name in REQUIRED if name not in changes]
        if missing:
            raise DefinitionError(f"missing: {', '.join(missing)}")
        definition = {**DEFAULTS, **copy.deepcopy(changes)}
    if not ids.is_name(definition["jackpot_id"]):
        raise DefinitionError(f"jackpot_id must match {ids.NAME.pattern}")
    if not isinstance(definition["name"], str) or len(definition["name"]) > 100:
        raise DefinitionError("name must be a string of at most 100 characters")
    if definition["tier"] not in TIERS:
        raise DefinitionError(f"tier must be one of {', '.join(TIERS)}")
    if definition["trigger"] not in TRIGGERS:
        raise DefinitionError(f"trigger must be one of {', '.join(TRIGGERS)}")
    if not isinstance(definition["currency"], str) or not ids.CURRENCY.fullmatch(definition["currency"]):
        raise DefinitionError("currency must be three capital letters")
    _int(definition, "rate_bps", 1, BPS)
    _int(definition, "near_cap_bps", 1, BPS)
    _int(definition, "seed", 0, MAX_MONEY)
    _int(definition, "cap", 1, MAX_MONEY)
    if definition["cap"] <= definition["seed"]:
        raise DefinitionError("cap must be above seed")
    if definition["trigger"] == "must_hit_by" and definition["seed"] < 1:
        raise DefinitionError("a must_hit_by seed must be at least 1: its award is at least the seed")
    tier = definition["tier"]
    scope = {"local": "channel_id", "shared": "operator_group"}.get(tier)
    for name in ("channel_id", "operator_group"):
        if name == scope:
            if not ids.is_name(definition[name]):
                raise DefinitionError(f"a {tier} jackpot needs {name} matching {ids.NAME.pattern}")
        elif definition[name]:
            raise DefinitionError(f"{name} is only for {'local' if name == 'channel_id' else 'shared'} jackpots")
    split = definition["rank_split_bps"]
    if split is not None:
        if tier != "local" or definition["trigger"] != "must_hit_by":
            raise DefinitionError("rank_split_bps is for term jackpots: tier local, trigger must_hit_by")
        if (not isinstance(split, list) or not 1 <= len(split) <= 3
                or any(not isinstance(s, int) or isinstance(s, bool) or s <= 0 for s in split)
                or sum(split) != BPS):
            raise DefinitionError("rank_split_bps must be 1 to 3 positive integers summing to 10000")
    return definition


def scope_of(definition: dict[str, Any]) -> dict[str, str]:
    """Which channels feed the jackpot: {"channel_id": ...}, {"operator_group": ...} or {} (all)."""
    if definition["tier"] == "local":
        return {"channel_id": definition["channel_id"]}
    if definition["tier"] == "shared":
        return {"operator_group": definition["operator_group"]}
    return {}


def feeds(definition: dict[str, Any], channel_id: str, operator_group: str) -> bool:
    """Does a channel (of an operator group) feed this jackpot?"""
    return all({"channel_id": channel_id, "operator_group": operator_group}[k] == v
               for k, v in scope_of(definition).items())


def view_key(jackpot_id: str) -> str:
    """The Redis key of a jackpot's view (written by the Jackpot Service after each batch)."""
    return f"jackpot:{jackpot_id}"


# ---------------------------------------------------------------- contributions and hits

def contribution_micro(stake: int, rate_bps: int) -> int:
    """`rate_bps` of a stake in minor units, in micro units (exact)."""
    return stake * rate_bps * (MICRO // BPS)


def whole(value_micro: int) -> int:
    """Whole minor units of a value in micro units (what a display or an award may use)."""
    return value_micro // MICRO


@dataclass
class PoolMoney:
    """The money of one cycle: the shown value (at most the cap) and the reserve above it."""
    value_micro: int
    reserve_micro: int = 0

    @property
    def total_micro(self) -> int:
        return self.value_micro + self.reserve_micro

    def add(self, amount_micro: int, cap: int) -> None:
        value = self.value_micro + amount_micro
        limit = cap * MICRO
        if value > limit:
            self.reserve_micro += value - limit
            value = limit
        self.value_micro = value


def reached(money: PoolMoney, hit_value: int) -> bool:
    """must_hit_by: the pool is at or above its committed hit value."""
    return money.value_micro >= hit_value * MICRO


def lock_in(money: PoolMoney, trigger: str, hit_value: int | None) -> tuple[int, int]:
    """(award in minor units, overflow in micro units) at a hit: the award is the hit value
    (must_hit_by) or the pool's whole minor units (external); the rest of the value overflows."""
    if trigger == "must_hit_by":
        assert hit_value is not None and reached(money, hit_value)
        award = hit_value
    else:
        award = whole(money.value_micro)
    return award, money.value_micro - award * MICRO


def start_of_cycle(seed: int, overflow_micro: int, reserve_micro: int, cap: int) -> PoolMoney:
    """The money a new cycle starts with: its seed, the overflow and the reserve, capped."""
    money = PoolMoney(value_micro=seed * MICRO)
    money.add(overflow_micro + reserve_micro, cap)
    return money


def near_cap(money: PoolMoney, cap: int, share_bps: int) -> bool:
    return money.value_micro * BPS >= cap * MICRO * share_bps


# ---------------------------------------------------------------- commitment (must_hit_by)

def commitment(hit_value: int, nonce: str) -> str:
    """SHA-256 over "<hit value in minor units>:<nonce hex>", lowercase hex."""
    return hashlib.sha256(f"{hit_value}:{nonce}".encode("ascii")).hexdigest()


def draw_hit_value(seed: int, cap: int) -> tuple[int, str]:
    """(hit value uniform in [seed, cap], 128-bit nonce hex), from the OS CSPRNG."""
    return seed + secrets.randbelow(cap - seed + 1), secrets.token_hex(16)


def verify_hit(commitment_hex: str, hit_value: int, nonce: str, seed: int, cap: int, award: int) -> list[str]:
    """What is wrong with a revealed must_hit_by hit ([] when it verifies)."""
    problems = []
    if not hmac.compare_digest(commitment(hit_value, nonce), commitment_hex):
        problems.append("SHA-256(value:nonce) is not the published commitment")
    if not seed <= hit_value <= cap:
        problems.append(f"hit value {hit_value} outside [seed {seed}, cap {cap}]")
    if award != hit_value:
        problems.append(f"award {award} is not the hit value {hit_value}")
    return problems


# ---------------------------------------------------------------- the term jackpot

def split_award(amount: int, split_bps: list[int], podium: list[dict[str, Any]],
                trigger: dict[str, Any]) -> list[tuple[int, dict[str, Any], int]]:
    """[(rank, winner, bonus)]: the podium's first len(split) bets share `amount` by
    `split_bps` (rounded down); the remainder, and the share of a rank nobody took, go to
    rank 1. With an empty podium (nobody cashed out) the bet that triggered the hit takes all."""
    winners = podium[:len(split_bps)] or [trigger]
    shares = [amount * bps // BPS for bps in split_bps[:len(winners)]]
    shares[0] += amount - sum(shares)
    return [(rank, winner, share) for rank, (winner, share) in enumerate(zip(winners, shares, strict=True), 1)]


def bonus_order_no(award_id: str, rank: int) -> str:
    return f"bonus:{award_id}:{rank}"


# ---------------------------------------------------------------- reconciliation

def expected_pool_micro(seeds: int, contributions_micro: int, awards: int, compensations: int) -> int:
    """What the pool must hold: every cycle's seed plus contributions, minus awards, plus the
    compensating entries of rolled-back awards (seeds, awards and compensations in minor units)."""
    return seeds * MICRO + contributions_micro - awards * MICRO + compensations * MICRO


def difference_bps(difference_micro: int, expected_micro: int) -> int:
    """|difference| as a share of the expected pool, in bps rounded up (an alert is > 10 bps)."""
    if difference_micro == 0:
        return 0
    if expected_micro <= 0:
        return BPS
    return -(-abs(difference_micro) * BPS // expected_micro)
