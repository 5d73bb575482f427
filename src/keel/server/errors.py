"""KeelError → HTTP, in one place: status, headers and the JSON body every route returns.

Body: ``{"error": {"code", "message", "retryable", "context"}}``. ``code`` is the stable error code
(``keel.errors``), ``message`` is for people. ``RateLimited`` adds ``Retry-After`` (whole
seconds, rounded up). Anything that is not a KeelError is a 500 with a generic message: the
details go to the server log, never to the caller.
"""

from __future__ import annotations

import math
from typing import Any, Final

from keel.errors import (
    AuthenticationError,
    AuthorizationError,
    ConflictError,
    IdempotencyInFlight,
    IdempotencyMismatch,
    InvalidRequestError,
    KeelError,
    ModelError,
    ModelTimeout,
    NotFoundError,
    PayloadTooLargeError,
    RateLimited,
    StoreError,
    ToolError,
    UsageError,
)
from keel.ledger.forecast import InsufficientHistory

__all__ = ["error_body", "http_status", "response_headers"]

# First match wins: subclasses before their parents.
_STATUS: Final[tuple[tuple[type[KeelError], int], ...]] = (
    (PayloadTooLargeError, 413),
    (NotFoundError, 404),  # also another tenant's object: no existence oracle
    (InsufficientHistory, 409),  # a forecast needs more recorded runs than there are yet
    (IdempotencyMismatch, 422),  # the same key with a different body (IETF draft, Stripe)
    (IdempotencyInFlight, 409),  # the same key while the first request runs
    (ConflictError, 409),
    (RateLimited, 429),
    (AuthenticationError, 401),
    (AuthorizationError, 403),  # policy, kill switch, budget, approval required
    (InvalidRequestError, 400),
    (UsageError, 400),
    (StoreError, 503),  # the database is away: try again
    (ToolError, 502),  # the upstream tool failed; Keel did its part
    (ModelTimeout, 504),  # the model provider did not answer in time
    (ModelError, 502),  # the model provider failed or answered nonsense
)


def http_status(error: KeelError) -> int:
    """The HTTP status for ``error`` (500 for an error Keel does not classify)."""
    for cls, status in _STATUS:
        if isinstance(error, cls):
            return status
    return 500


def response_headers(error: KeelError) -> dict[str, str]:
    if isinstance(error, RateLimited):
        return {"Retry-After": str(max(1, math.ceil(error.retry_after)))}
    return {}


def error_body(error: KeelError) -> dict[str, Any]:
    return {
        "error": {
            "code": error.code,
            "message": error.message,
            "retryable": error.retryable,
            "context": error.context,
        }
    }
