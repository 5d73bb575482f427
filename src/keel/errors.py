"""Keel's exceptions: one root, split by who is at fault.

Every error carries a stable ``code`` (for programs), a readable message (for people), whether a
retry may help (``retryable``) and a ``context`` mapping (tool, rule id, run id, ...). Surfaces map
errors to HTTP statuses, MCP errors and CLI exit codes in one place each, keyed on the class.

    KeelError
    ├── UsageError                the caller or operator misused Keel: fix the input, do not retry
    │   ├── ConfigError           a config or policy file is malformed (names file, line and key)
    │   │   ├── PriceUnknown      a model has no known price and none is configured
    │   │   └── SecretNotFound    a secret reference names nothing (never shows a value)
    │   ├── InvalidRequestError   a call's content is bad: unknown tool, schema violation, bad name
    │   │   ├── PayloadTooLargeError   over a size or depth limit
    │   │   └── NotFoundError     no such object, or not the caller's to see (no existence oracle)
    │   └── SchemaVersionError    the store was written by a newer Keel
    ├── AuthenticationError       the caller's identity could not be established (token, signature)
    ├── AuthorizationError        the caller is known but not allowed
    │   ├── PolicyDenied          a policy rule denied the call (carries the verdict)
    │   ├── KillSwitchEngaged     a kill switch stops the call
    │   ├── BudgetExceeded        a spending, token or call cap would be exceeded
    │   ├── ApprovalRequired      a person must approve (or the call was escalated)
    │   └── EgressDenied          an outbound request would reach a refused address (SSRF)
    ├── RateLimited               too many calls for a limit; ``retry_after`` says when to retry
    ├── ConflictError             the call collides with another one
    │   ├── IdempotencyInFlight   the same key is executing right now (retry later)
    │   └── IdempotencyMismatch   the same key was used with different arguments
    ├── ToolError                 the tool failed while executing (``retryable``: may a retry help)
    │   ├── ToolTimeout
    │   └── ToolResultInvalid     the tool returned something that breaks its result contract
    ├── ModelError                a model provider failed (``retryable`` for 429/5xx/timeouts)
    │   ├── ModelTimeout
    │   └── ModelResponseInvalid  the provider or model answered something malformed
    └── InternalError             Keel itself failed; the call was denied (fail closed)
        └── StoreError            the store could not be read or written
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

__all__ = [
    "ApprovalRequired",
    "AuthenticationError",
    "AuthorizationError",
    "BudgetExceeded",
    "ConfigError",
    "ConflictError",
    "EgressDenied",
    "IdempotencyInFlight",
    "IdempotencyMismatch",
    "InternalError",
    "InvalidRequestError",
    "KeelError",
    "KillSwitchEngaged",
    "ModelError",
    "ModelResponseInvalid",
    "ModelTimeout",
    "NotFoundError",
    "PayloadTooLargeError",
    "PolicyDenied",
    "PriceUnknown",
    "RateLimited",
    "SchemaVersionError",
    "SecretNotFound",
    "StoreError",
    "ToolError",
    "ToolResultInvalid",
    "ToolTimeout",
    "UsageError",
]


class KeelError(Exception):
    """Root of every error Keel raises on purpose.

    ``code`` is stable across releases and safe to match on; the message is for people and may
    change. ``context`` holds JSON-safe facts about the failure (never secrets).
    """

    code: ClassVar[str] = "keel_error"
    retryable_default: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        retryable: bool | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code  # type: ignore[misc]  # instance override of the class default
        self.retryable = self.retryable_default if retryable is None else retryable
        self.context: dict[str, Any] = dict(context or {})

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe summary, as surfaces return it to callers."""
        return {
            "error": self.code,
            "message": self.message,
            "retryable": self.retryable,
            "context": self.context,
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r})"


class UsageError(KeelError):
    code = "usage_error"


class ConfigError(UsageError):
    """A configuration or policy document is malformed.

    ``context`` names the ``file``, ``line`` (1-based, when known) and ``key`` (dotted path).
    """

    code = "config_error"


class InvalidRequestError(UsageError):
    code = "invalid_request"


class PayloadTooLargeError(InvalidRequestError):
    code = "payload_too_large"


class NotFoundError(InvalidRequestError):
    """No such object, or one in a tenant the caller may not see: both answer alike, so the error
    tells nothing about what exists elsewhere."""

    code = "not_found"


class PriceUnknown(ConfigError):
    """No price is known for a model: configure one (``prices:`` in keel.yaml) or the call fails."""

    code = "price_unknown"


class SchemaVersionError(UsageError):
    code = "schema_version"


class AuthenticationError(KeelError):
    code = "unauthenticated"


class AuthorizationError(KeelError):
    code = "forbidden"


class PolicyDenied(AuthorizationError):
    code = "policy_denied"


class KillSwitchEngaged(AuthorizationError):
    code = "kill_switch"


class BudgetExceeded(AuthorizationError):
    """A cap would be exceeded. ``context``: ``cap`` (which), ``limit``, ``spent``, ``reserved``,
    ``requested`` (as strings for money)."""

    code = "budget_exceeded"


class RateLimited(KeelError):
    """Too many calls. ``retry_after`` (seconds, float) says when a retry may succeed."""

    code = "rate_limited"
    retryable_default = True

    def __init__(self, message: str, *, retry_after: float, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after
        self.context.setdefault("retry_after_seconds", round(retry_after, 3))


class ApprovalRequired(AuthorizationError):
    """The call needs a person's approval (``require_approval``) or was escalated (``escalate``)."""

    code = "approval_required"


class ConflictError(KeelError):
    code = "conflict"


class IdempotencyInFlight(ConflictError):
    code = "idempotency_in_flight"
    retryable_default = True


class IdempotencyMismatch(ConflictError):
    code = "idempotency_key_reused"


class ToolError(KeelError):
    code = "tool_error"


class ToolTimeout(ToolError):
    code = "tool_timeout"
    retryable_default = True


class ToolResultInvalid(ToolError):
    code = "tool_result_invalid"


class ModelError(KeelError):
    """A model provider failed: HTTP error, refused request, network trouble."""

    code = "model_error"


class ModelTimeout(ModelError):
    code = "model_timeout"
    retryable_default = True


class ModelResponseInvalid(ModelError):
    """The provider's answer is malformed: truncated JSON, wrong content type, missing usage,
    tool arguments that are not JSON."""

    code = "model_response_invalid"


class InternalError(KeelError):
    code = "internal_error"


class StoreError(InternalError):
    code = "store_error"
    retryable_default = True


class EgressDenied(AuthorizationError):
    """An outbound request was refused before any connection: its URL's scheme, credentials or
    host, or an address the host resolves to (loopback, private, link-local, metadata ...).
    ``context``: ``host``, ``address``, ``reason`` (never the URL's path, query or credentials)."""

    code = "egress_denied"


class SecretNotFound(ConfigError):
    """A secret reference (``env:NAME``, ``file:PATH``, ``store:NAME``) names nothing: an unset
    variable, a missing file, no such stored secret. ``context``: ``ref`` (never a value)."""

    code = "secret_not_found"
