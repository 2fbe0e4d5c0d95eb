"""Money and multiplier arithmetic: the one place for these rules (DESIGN sections 5, 7, 8).

Amounts are integers in minor units, multiples integers in hundredths. The growth curve is
Bustabit's m(t) = floor(100 * e^(g * t)) / 100; its float is floored to an integer number of
hundredths before it can touch money, and every payout is amount * multiple_x100 // 100.
"""
from __future__ import annotations

import math

MIN_MULTIPLE_X100 = 100
MIN_AUTO_CASHOUT_X100 = 101


def payout(amount: int, multiple_x100: int) -> int:
    return amount * multiple_x100 // 100


def multiplier_x100(elapsed_ms: int, growth_per_ms: float) -> int:
    """The multiple reached `elapsed_ms` after take-off, in hundredths."""
    if elapsed_ms <= 0:
        return MIN_MULTIPLE_X100
    return max(MIN_MULTIPLE_X100, math.floor(100 * math.exp(growth_per_ms * elapsed_ms)))


def ms_to_reach(multiple_x100: int, growth_per_ms: float) -> int:
    """The first whole millisecond after take-off at which the multiple reaches `multiple_x100`."""
    if multiple_x100 <= MIN_MULTIPLE_X100:
        return 0
    t = max(0, math.ceil(math.log(multiple_x100 / 100) / growth_per_ms))
    # The float estimate can be a millisecond off either way; settle it on the curve itself.
    while t > 0 and multiplier_x100(t - 1, growth_per_ms) >= multiple_x100:
        t -= 1
    while multiplier_x100(t, growth_per_ms) < multiple_x100:
        t += 1
    return t


def max_multiple_within(amount: int, max_payout: int) -> int:
    """The highest multiple at which a stake of `amount` pays at most `max_payout`."""
    # amount * x // 100 <= max_payout  <=>  amount * x < (max_payout + 1) * 100
    return ((max_payout + 1) * 100 - 1) // amount
