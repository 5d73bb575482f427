"""What the ledger enforces (:class:`Cap`) and what a call asks of it (:class:`ReservationRequest`).

Caps arrive as plain data: the ledger does not read policy. The composition root converts policy
caps (``keel.policy`` ``caps:`` list and the per-task caps) into :class:`Cap` values once and
passes the applicable ones with every request; see ``docs`` in :mod:`keel.ledger` for the
mapping.

A cap counts a call's money (USD), tokens and calls in one **counter** named by the cap id, a
tuple of dimension values (``per``) and a period (``window``). Every counter also belongs to the
caller's tenant, so no counter is ever shared between tenants.

``per`` dimensions (combined: ``("agent", "arguments.customer_id")`` is per agent and customer):

=========================  ===============================================================
``tenant``                 the calling tenant (the default when ``per`` is empty)
``agent``                  the calling agent
``workflow``               the call's workflow; calls outside any workflow share the key ``""``
``run``                    the call's run (same as ``window="run"``)
``arguments.<name>``       the value of the call's argument ``<name>`` (passed by the caller
                           in ``key_arguments``; a missing value is an error, fail closed)
=========================  ===============================================================

``window``: ``"none"`` (one counter forever), ``"day"`` (one counter per calendar day in UTC,
taken from the ledger's clock when the reservation is made), ``"run"`` (one counter per run:
``run`` is added to ``per``) or ``"call"`` (no counter: each call alone must fit the limits). A
run-window cap on a call made outside any run is checked like a call-window cap (the call is its
own task).

Money counted is the call's price (``amount_usd`` of the request; settled to the actual cost),
unless ``sum_argument`` names an argument whose value is summed instead (a refund's ``amount``;
settled unchanged). Tokens are the call's tokens; calls count 1 per call (``calls``).
"""

from __future__ import annotations

import datetime as _dt
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, Final, Literal, Protocol

from keel.canonical import canonical_json
from keel.core import Call
from keel.errors import InvalidRequestError, UsageError
from keel.ledger._money import limit_micros, units

__all__ = [
    "DIMENSIONS",
    "WINDOWS",
    "Cap",
    "CapSpecLike",
    "ReservationRequest",
    "Window",
    "argument_amount",
    "argument_key",
]

Window = Literal["none", "day", "run", "call"]
WINDOWS: Final[tuple[Window, ...]] = ("none", "day", "run", "call")
#: The fixed dimensions; ``arguments.<name>`` adds argument-keyed ones.
DIMENSIONS: Final[tuple[str, ...]] = ("tenant", "agent", "workflow", "run")
_ARGUMENT = re.compile(r"arguments\.([A-Za-z0-9_$@-]+)")
_ID = re.compile(r"[^\x00-\x1f\x7f]{1,200}")


def _usage(message: str, **context: Any) -> UsageError:
    return UsageError(message, code="invalid_cap", context=context)


class CapSpecLike(Protocol):
    """What :meth:`Cap.from_spec` reads: the attributes of ``keel.policy.CapSpec`` (structural,
    so the ledger needs no import of policy)."""

    @property
    def id(self) -> str: ...
    @property
    def per(self) -> tuple[str, ...]: ...
    @property
    def window(self) -> str: ...
    @property
    def max_usd(self) -> Decimal | None: ...
    @property
    def max_tokens(self) -> int | None: ...
    @property
    def max_calls(self) -> int | None: ...
    @property
    def sum_argument(self) -> str | None: ...
    @property
    def alert_at(self) -> Decimal | None: ...


@dataclass(frozen=True, slots=True)
class Cap:
    """One cap: limits on money, tokens and calls for a counter (see the module docstring).

    ``id`` names the cap in errors, alerts and reports and is part of its counters' identity:
    keep it stable (policy caps use ``<policy>#<id>``). A limit of None is no limit on that
    dimension; a cap with no limit at all still counts (useful for reports). ``alert_fraction``
    (0 < f <= 1) raises a burn alert the first time a counter's spent + reserved reaches that
    fraction of a limit; None leaves it to the ledger's default. Invalid values raise
    :class:`keel.errors.UsageError` (code ``invalid_cap``) at construction.
    """

    id: str
    per: tuple[str, ...] = ()
    window: Window = "none"
    limit_usd: Decimal | None = None
    limit_tokens: int | None = None
    limit_calls: int | None = None
    sum_argument: str | None = None
    alert_fraction: Decimal | None = None
    # Derived once at construction (hot path): counter dimensions, scope text, limits in µUSD.
    dims: tuple[str, ...] = field(init=False, repr=False, compare=False)
    scope: str = field(init=False, repr=False, compare=False)
    limit_usd_micros: int | None = field(init=False, repr=False, compare=False)
    key_arguments: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not _ID.fullmatch(self.id):
            raise _usage(f"cap id {self.id!r} must be 1-200 printable characters", cap=self.id)
        if self.window not in WINDOWS:
            raise _usage(
                f"cap {self.id!r}: window {self.window!r} is not one of {', '.join(WINDOWS)}",
                cap=self.id,
            )
        per = tuple(self.per)
        arguments: list[str] = []
        for dim in per:
            match = _ARGUMENT.fullmatch(dim) if isinstance(dim, str) else None
            if match is not None:
                arguments.append(match.group(1))
            elif dim not in DIMENSIONS:
                hint = " (use window='call' for per-call limits)" if dim == "call" else ""
                raise _usage(
                    f"cap {self.id!r}: {dim!r} is not a dimension; use tenant, agent, workflow, "
                    f"run or arguments.<name>{hint}",
                    cap=self.id,
                )
        if len(set(per)) != len(per):
            raise _usage(f"cap {self.id!r}: per {list(per)} repeats a dimension", cap=self.id)
        dims = per
        if self.window == "run" and "run" not in dims:
            dims = (*dims, "run")
        if not dims:
            dims = ("tenant",)
        if self.limit_usd is not None:
            limit = limit_micros(self.limit_usd, f"cap {self.id!r} limit_usd")
        else:
            limit = None
        for name in ("limit_tokens", "limit_calls"):
            value = getattr(self, name)
            if value is not None:
                units(value, f"cap {self.id!r} {name}")
        if self.sum_argument is not None and not (
            isinstance(self.sum_argument, str)
            and _ARGUMENT.fullmatch("arguments." + self.sum_argument)
        ):
            raise _usage(
                f"cap {self.id!r}: sum_argument {self.sum_argument!r} is not an argument name",
                cap=self.id,
            )
        fraction = self.alert_fraction
        if fraction is not None and not (
            isinstance(fraction, Decimal) and fraction.is_finite() and 0 < fraction <= 1
        ):
            raise _usage(
                f"cap {self.id!r}: alert_fraction must be a Decimal in (0, 1], got {fraction!r}",
                cap=self.id,
            )
        object.__setattr__(self, "per", per)
        object.__setattr__(self, "dims", dims)
        object.__setattr__(self, "scope", "+".join(dims))
        object.__setattr__(self, "limit_usd_micros", limit)
        object.__setattr__(self, "key_arguments", tuple(arguments))

    @classmethod
    def from_spec(cls, spec: CapSpecLike) -> Cap:
        """The ledger cap for a policy cap (``PolicySet.limits_for(...).caps``): ``id``, ``per``
        and ``window`` as they are; ``max_usd`` / ``max_tokens`` / ``max_calls`` are the limits;
        ``sum_argument`` as it is; ``alert_at`` is the alert fraction. Convert once per policy
        set and target (``limits_for`` answers are cached and immutable), not per call."""
        window = spec.window
        if window not in WINDOWS:
            raise _usage(f"cap {spec.id!r}: window {window!r} is not one of {WINDOWS}", cap=spec.id)
        return cls(
            spec.id,
            per=tuple(spec.per),
            window=window,
            limit_usd=spec.max_usd,
            limit_tokens=spec.max_tokens,
            limit_calls=spec.max_calls,
            sum_argument=spec.sum_argument,
            alert_fraction=spec.alert_at,
        )

    @property
    def counts_run(self) -> bool:
        """True if the cap's counters are per run (window ``run`` or ``run`` in ``per``)."""
        return "run" in self.dims

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (money as strings)."""
        return {
            "id": self.id,
            "per": list(self.per),
            "window": self.window,
            "limit_usd": None if self.limit_usd is None else str(self.limit_usd),
            "limit_tokens": self.limit_tokens,
            "limit_calls": self.limit_calls,
            "sum_argument": self.sum_argument,
            "alert_fraction": None if self.alert_fraction is None else str(self.alert_fraction),
        }


def argument_key(value: object) -> str:
    """The counter key for an argument value: a string as is, anything else as canonical JSON.

    ``"C1"`` -> ``C1``; ``42`` -> ``42``; ``{"b": 1, "a": 2}`` -> ``{"a":2,"b":1}``. Raises
    InvalidRequestError for values that have no JSON form.
    """
    if isinstance(value, str):
        return value
    return canonical_json(value)


def argument_amount(value: object, what: str = "argument") -> Decimal:
    """An argument's value as an exact Decimal amount (int, Decimal, numeric string, or a finite
    float read through its shortest repr), or InvalidRequestError. Booleans are not amounts."""
    number: Decimal | None = None
    if isinstance(value, bool):
        number = None
    elif isinstance(value, (int, Decimal)):
        number = Decimal(value)
    elif isinstance(value, float) and math.isfinite(value):
        number = Decimal(repr(value))
    elif isinstance(value, str) and len(value) <= 64:
        try:
            number = Decimal(value.strip())
        except InvalidOperation:
            number = None
    if number is None or not number.is_finite() or number < 0:
        raise InvalidRequestError(
            f"{what} must be a non-negative number to be summed by a cap",
            context={"field": what},
        )
    return number


@dataclass(frozen=True, slots=True)
class ReservationRequest:
    """What one call asks the ledger to hold before it runs.

    ``amount_usd`` and ``tokens`` are the worst case (a model call: input estimate x input price
    + max_tokens x output price, x n; a tool: its declared cost). ``caps`` are every cap that
    applies to this call. ``key_arguments`` maps an argument name to its key string (see
    :func:`argument_key`) for caps keyed on ``arguments.<name>``; ``argument_amounts`` maps an
    argument name to its Decimal value for caps with ``sum_argument``. ``ttl`` overrides the
    ledger's reservation lifetime for a call known to run long. Build one from a governed
    :class:`keel.core.Call` with :meth:`for_call`.
    """

    tenant: str
    agent: str
    call_id: str
    amount_usd: Decimal
    tokens: int = 0
    calls: int = 1
    caps: Sequence[Cap] = ()
    workflow: str | None = None
    run_id: str | None = None
    target: str = ""
    key_arguments: Mapping[str, str] = field(default_factory=dict)
    argument_amounts: Mapping[str, Decimal] = field(default_factory=dict)
    ttl: _dt.timedelta | None = None

    @classmethod
    def for_call(
        cls,
        call: Call,
        *,
        amount_usd: Decimal,
        tokens: int = 0,
        caps: Sequence[Cap] = (),
        ttl: _dt.timedelta | None = None,
    ) -> ReservationRequest:
        """A request for ``call``: identity from its principal, keys and summed amounts taken
        from its arguments for the caps that need them (a missing argument is an error)."""
        key_arguments: dict[str, str] = {}
        amounts: dict[str, Decimal] = {}
        arguments = call.arguments
        for cap in caps:
            for name in cap.key_arguments:
                if name not in key_arguments:
                    if name not in arguments:
                        raise _missing(cap, name, "is keyed on")
                    key_arguments[name] = argument_key(arguments[name])
            name = cap.sum_argument or ""
            if name and name not in amounts:
                if name not in arguments:
                    raise _missing(cap, name, "sums")
                amounts[name] = argument_amount(arguments[name], f"argument {name!r}")
        principal = call.principal
        return cls(
            tenant=principal.tenant,
            agent=principal.agent_id,
            call_id=call.call_id,
            amount_usd=amount_usd,
            tokens=tokens,
            caps=tuple(caps),
            workflow=call.workflow,
            run_id=call.run_id if call.run_id is not None else principal.run_id,
            target=call.target,
            key_arguments=key_arguments,
            argument_amounts=amounts,
            ttl=ttl,
        )


def _missing(cap: Cap, name: str, verb: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"cap {cap.id!r} {verb} argument {name!r}, which the call does not have",
        code="cap_argument_missing",
        context={"cap": cap.id, "argument": name},
    )
