"""The public surface of keel.ledger's budget and rate-limit parts, pinned."""

from __future__ import annotations

import keel.ledger

EXPECTED = {
    "DIMENSIONS",
    "MAX_AMOUNT_USD",
    "MICROS_PER_USD",
    "WINDOWS",
    "BucketKey",
    "BucketState",
    "BudgetLine",
    "BurnAlert",
    "BurnAlertCaps",
    "Cap",
    "CapSpecLike",
    "ExpiredReservation",
    "Ledger",
    "RateLimit",
    "RateLimitSpecLike",
    "RateLimiter",
    "RateScope",
    "Reservation",
    "ReservationRequest",
    "Settlement",
    "SettlementOutcome",
    "Spend",
    "Window",
    "argument_amount",
    "argument_key",
    "bucket_keys",
}


def test_exported_members() -> None:
    # Forecast names may join __all__ (ledger/forecast.py has its own owner); these must stay.
    assert set(keel.ledger.__all__) >= EXPECTED
    for name in EXPECTED:
        assert getattr(keel.ledger, name) is not None
