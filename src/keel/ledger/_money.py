"""Exact money and unit arithmetic for the ledger: Decimal USD <-> integer micro-dollars.

The store keeps money as integers of **micro-dollars** (1 USD = 1,000,000 µUSD) so that SQL
arithmetic (``spent + reserved + ? <= limit``) is exact and identical on SQLite (INTEGER) and
PostgreSQL (BIGINT). Conversions round *against* the spender:

- amounts charged (reservations, actual costs, summed arguments) round **up** to the next µUSD;
- limits round **down** to a whole µUSD;

so the ledger can over-count by less than one µUSD per call and never under-counts. Amounts
read back are exact Decimals (``Decimal(micros) / 10**6``).

Bounds keep every sum far from 64-bit overflow (SQLite silently turns an overflowing integer
sum into a float; PostgreSQL raises): one amount is at most ``MAX_AMOUNT_USD``, one count at
most ``MAX_UNITS``, and a counter refuses reservations once ``spent + reserved`` would pass
``COUNTER_CEILING``.
"""

from __future__ import annotations

from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal, InvalidOperation
from typing import Final

from keel.errors import InvalidRequestError

__all__ = [
    "COUNTER_CEILING",
    "MAX_AMOUNT_USD",
    "MAX_UNITS",
    "MICROS_PER_USD",
    "ceil_fraction",
    "from_micros",
    "limit_micros",
    "to_micros",
    "units",
]

MICROS_PER_USD: Final = 1_000_000
_MICRO: Final = Decimal(MICROS_PER_USD)
_QUANTUM: Final = Decimal("0.000001")
#: The largest single amount (a reservation, an actual cost, a limit): one billion dollars.
MAX_AMOUNT_USD: Final = Decimal(1_000_000_000)
#: The largest single token or call count.
MAX_UNITS: Final = 10**15
#: ``spent + reserved`` of one counter never passes this (2**62): a sum of two counters' worth
#: plus one amount still fits in a signed 64-bit integer.
COUNTER_CEILING: Final = 2**62


def _check_amount(value: object, what: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (Decimal, int)):
        raise InvalidRequestError(
            f"{what} must be a Decimal amount of USD (never a float), got {type(value).__name__}",
            context={"field": what, "type": type(value).__name__},
        )
    amount = Decimal(value)
    if not amount.is_finite() or amount < 0:
        raise InvalidRequestError(
            f"{what} must be a finite, non-negative amount of USD, got {amount}",
            context={"field": what, "value": str(amount)},
        )
    if amount > MAX_AMOUNT_USD:
        raise InvalidRequestError(
            f"{what} {amount} is over the largest amount the ledger accepts ({MAX_AMOUNT_USD})",
            context={"field": what, "value": str(amount), "max": str(MAX_AMOUNT_USD)},
        )
    return amount


def to_micros(value: Decimal | int, what: str = "amount") -> int:
    """An amount charged, in µUSD, rounded up. Raises InvalidRequestError for bad input."""
    amount = _check_amount(value, what)
    try:
        return int(amount.quantize(_QUANTUM, rounding=ROUND_CEILING) * _MICRO)
    except InvalidOperation:  # pragma: no cover - bounded above, so quantize cannot overflow
        raise InvalidRequestError(f"{what} {amount} cannot be represented") from None


def limit_micros(value: Decimal | int, what: str = "limit") -> int:
    """A limit, in µUSD, rounded down (a limit never admits more than it says)."""
    amount = _check_amount(value, what)
    return int(amount.quantize(_QUANTUM, rounding=ROUND_FLOOR) * _MICRO)


def from_micros(micros: int) -> Decimal:
    """µUSD back to an exact Decimal of USD (``1500000`` -> ``Decimal('1.5')``)."""
    return Decimal(micros) / _MICRO


def units(value: object, what: str) -> int:
    """A non-negative whole count (tokens, calls) within bounds, or InvalidRequestError."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequestError(
            f"{what} must be a whole number, got {type(value).__name__}",
            context={"field": what, "type": type(value).__name__},
        )
    if value < 0 or value > MAX_UNITS:
        raise InvalidRequestError(
            f"{what} must be between 0 and {MAX_UNITS}, got {value}",
            context={"field": what, "value": value},
        )
    return value


def ceil_fraction(limit: int, fraction: Decimal) -> int:
    """``ceil(limit * fraction)`` exactly (the burn-alert threshold of a limit)."""
    return int((Decimal(limit) * fraction).to_integral_value(rounding=ROUND_CEILING))
