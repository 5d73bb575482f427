"""The Ledger: reserve before a call, settle after it, never overspend a cap.

Protocol for one call::

    reservation = ledger.reserve(request)      # BudgetExceeded: deny the call
    ...execute...
    ledger.settle(reservation.id, actual_usd, actual_tokens)   # or ledger.release(id)

**Atomicity.** ``reserve`` is one write transaction: one conditional upsert charges every
counter the call touches (each only if its cap still fits, checked inside the statement) and one
insert records the reservation. If any cap does not fit, the transaction rolls back and nothing
is charged. The check and the change are the same statement, so the guarantee holds across
threads and processes on SQLite (``BEGIN IMMEDIATE``) and, with the same SQL, across machines on
PostgreSQL (the upsert locks the row and re-checks ``WHERE`` on its latest version). Rows are
charged in a fixed order, so concurrent transactions cannot deadlock.

**Settlement.** ``settle`` moves the hold to spent at the actual cost and releases the rest;
a cost above the hold is an *overrun*, spent anyway (the call already ran) and reported.
``release`` gives back a hold whose call did not run. Both are idempotent: a second call changes
nothing and says so (``Settlement.outcome`` ``already_*``). Both accept the caller's open
transaction (``tx=``) so the gateway can settle in the same commit as the audit record.

**Expiry.** A hold lives ``reservation_ttl`` (default 15 minutes). ``expire_stale`` releases
holds past their time (a crash between reserve and settle leaks nothing); ``reserve`` calls it
opportunistically, at most once per ``sweep_interval`` of the clock's monotonic time (one
indexed read when nothing is stale), and again before refusing a call for budget. A late
``settle`` of an expired hold still records the actual spend.

**Burn alerts.** When a reservation makes a counter's spent + reserved reach a fraction of one
of its limits for the first time, the reservation carries a :class:`BurnAlert` (the gateway
turns it into ``require_approval``). The fraction is the cap's ``alert_fraction``, else
``burn_alert_at`` (default 0.8) for the caps selected by ``burn_alert_caps``: ``"run"`` (caps
counted per run, the default), ``"all"`` or ``"none"``.

**Fail closed.** Any store failure raises (StoreError); the gateway denies the call.

Money is integer micro-dollars in the store (see :mod:`keel.ledger._money`); every amount in and
out of this API is an exact ``Decimal`` of USD. Time comes from the injected Clock (UTC); the
day of a day-window counter is the UTC date when the reservation is made.

Thread safety: a Ledger may be shared by threads and processes (through the store). All methods
block on the store.
"""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final, Literal, NoReturn, Unpack

from keel.canonical import canonical_json
from keel.core import Clock, new_id
from keel.errors import (
    BudgetExceeded,
    InternalError,
    InvalidRequestError,
    StoreError,
    UsageError,
)
from keel.ledger import _sql
from keel.ledger._money import (
    COUNTER_CEILING,
    ceil_fraction,
    from_micros,
    to_micros,
    units,
)
from keel.ledger._spend import SPEND_GROUPS, SpendFilter, SpendGroup, spend_rows
from keel.ledger.caps import Cap, ReservationRequest
from keel.ledger.records import (
    BudgetLine,
    BurnAlert,
    ExpiredReservation,
    Reservation,
    Settlement,
    Spend,
)
from keel.store import Row, Store, Transaction

__all__ = ["BurnAlertCaps", "Ledger"]

BurnAlertCaps = Literal["run", "all", "none"]
_DIMS: Final = ("usd", "tokens", "calls")
_UTC = _dt.UTC


def _ts(moment: _dt.datetime) -> str:
    """Fixed-width UTC text that sorts in time order."""
    if moment.tzinfo is None:
        raise UsageError("the ledger needs timezone-aware times (UTC)", code="invalid_argument")
    if moment.utcoffset() != _dt.timedelta(0):
        moment = moment.astimezone(_UTC)
    return moment.isoformat(timespec="microseconds")


def _ts_or_none(moment: _dt.datetime | None) -> str | None:
    return None if moment is None else _ts(moment)


def _parse_ts(text: str) -> _dt.datetime:
    return _dt.datetime.fromisoformat(text)


def _line(tenant: str, row: Row) -> BudgetLine:
    # row: COUNTER_SELECT columns.
    return BudgetLine(
        tenant=row[0] if row[0] is not None else tenant,
        cap_id=row[1],
        scope=row[2],
        key=row[3],
        period=row[4],
        workflow=row[5],
        run_id=row[6],
        limit_usd=None if row[7] is None else from_micros(row[7]),
        spent_usd=from_micros(row[8]),
        reserved_usd=from_micros(row[9]),
        limit_tokens=row[10],
        spent_tokens=row[11],
        reserved_tokens=row[12],
        limit_calls=row[13],
        spent_calls=row[14],
        reserved_calls=row[15],
        alerted=row[16] is not None,
    )


@dataclass(frozen=True, slots=True)
class _Charge:
    """One counter a reservation holds, and how much of each dimension."""

    cap: Cap
    key: str
    period: str
    usd: int
    tokens: int
    calls: int
    row: tuple[Any, ...]
    alerting: bool

    @property
    def ident(self) -> tuple[str, str, str, str]:
        return (self.cap.id, self.cap.scope, self.key, self.period)


@dataclass(frozen=True, slots=True)
class _Plan:
    rid: str
    request: ReservationRequest
    usd: int
    tokens: int
    calls: int
    charges: tuple[_Charge, ...]
    params: list[Any]
    created: _dt.datetime
    expires: _dt.datetime
    charges_json: str


# A reservation that lost a deadlock or serialization race is tried again this many times in all.
_CONTENTION_ATTEMPTS: Final = 3


class Ledger:
    """Budgets that cannot be overspent; see the module docstring for the guarantees.

    ``reservation_ttl``: how long a hold lives without settlement. ``burn_alert_at`` and
    ``burn_alert_caps``: the default burn-alert fraction and which caps it applies to.
    ``sweep_interval``: how often ``reserve`` looks for stale holds.
    """

    def __init__(
        self,
        store: Store,
        clock: Clock,
        *,
        reservation_ttl: _dt.timedelta = _dt.timedelta(minutes=15),
        burn_alert_at: Decimal = Decimal("0.8"),
        burn_alert_caps: BurnAlertCaps = "run",
        sweep_interval: _dt.timedelta = _dt.timedelta(seconds=30),
        sweep_batch: int = 500,
    ) -> None:
        if reservation_ttl <= _dt.timedelta(0):
            raise UsageError("reservation_ttl must be positive", code="invalid_argument")
        if not (isinstance(burn_alert_at, Decimal) and 0 < burn_alert_at <= 1):
            raise UsageError("burn_alert_at must be a Decimal in (0, 1]", code="invalid_argument")
        if burn_alert_caps not in ("run", "all", "none"):
            raise UsageError(
                "burn_alert_caps must be 'run', 'all' or 'none'", code="invalid_argument"
            )
        self._store = store
        self._clock = clock
        self._ttl = reservation_ttl
        self._alert_at = burn_alert_at
        self._alert_caps = burn_alert_caps
        self._sweep_every = sweep_interval.total_seconds()
        self._sweep_batch = sweep_batch
        self._next_sweep = float("-inf")

    @property
    def reservation_ttl(self) -> _dt.timedelta:
        return self._ttl

    # -- reserve ------------------------------------------------------------------------------

    def reserve(self, request: ReservationRequest, *, tx: Transaction | None = None) -> Reservation:
        """Hold the request's worst case on every cap it names, or raise BudgetExceeded.

        All or nothing: on success every counter was charged; on BudgetExceeded none was (the
        error's ``context`` names the cap: ``cap``, ``scope``, ``key``, ``period``,
        ``dimension``, ``limit``, ``spent``, ``reserved``, ``requested``; money as strings).
        Bad input raises InvalidRequestError/UsageError; a store failure raises StoreError.
        With ``tx`` the work joins the caller's write transaction (no opportunistic sweep)
        inside a savepoint: a refused reservation leaves the caller's transaction as it was.
        """
        plan = self._plan(request)
        if tx is not None:
            tx.execute("SAVEPOINT keel_ledger_reserve")
            try:
                reservation = self._reserve_in(tx, plan)
            except BaseException:
                tx.execute("ROLLBACK TO SAVEPOINT keel_ledger_reserve")
                tx.execute("RELEASE SAVEPOINT keel_ledger_reserve")
                raise
            tx.execute("RELEASE SAVEPOINT keel_ledger_reserve")
            return reservation
        self._maybe_sweep(plan.created)
        try:
            return self._reserve_own(plan)
        except BudgetExceeded:
            # Stale holds may be what blocks this call: release them and try once more.
            if not self.expire_stale(plan.created):
                raise
        return self._reserve_own(plan)

    def _reserve_own(self, plan: _Plan) -> Reservation:
        """``_reserve_in`` in a transaction of its own, tried again (a few times) when the
        database gave up on it for a reason that says nothing about the budget: a deadlock or a
        serialization failure among concurrent writers (all or nothing: the retry starts clean).
        """
        for attempt in range(1, _CONTENTION_ATTEMPTS + 1):
            try:
                with self._store.write(locks=()) as wtx:
                    return self._reserve_in(wtx, plan)
            except StoreError as exc:
                state = str(exc.context.get("sqlstate", ""))
                if attempt == _CONTENTION_ATTEMPTS or not state.startswith("40"):
                    raise
        raise InternalError("unreachable")  # pragma: no cover

    def _plan(self, request: ReservationRequest) -> _Plan:
        now = self._clock.now()
        now_s = _ts(now)
        usd = to_micros(request.amount_usd, "amount_usd")
        tokens = units(request.tokens, "tokens")
        calls = units(request.calls, "calls")
        for name, value in (("tenant", request.tenant), ("agent", request.agent)):
            if not isinstance(value, str) or not value:
                raise InvalidRequestError(f"a reservation needs a {name}", context={"field": name})
        rid = new_id("rsv_")
        day = now.astimezone(_UTC).date().isoformat()
        charges: list[_Charge] = []
        seen: set[tuple[str, str, str, str]] = set()
        for cap in request.caps:
            if not isinstance(cap, Cap):
                raise UsageError(
                    f"caps must be keel.ledger.Cap values, got {type(cap).__name__}",
                    code="invalid_cap",
                )
            charge_usd = usd
            if cap.sum_argument is not None:
                amount = request.argument_amounts.get(cap.sum_argument)
                if amount is None:
                    raise InvalidRequestError(
                        f"cap {cap.id!r} sums argument {cap.sum_argument!r}, which the call "
                        "does not have",
                        code="cap_argument_missing",
                        context={"cap": cap.id, "argument": cap.sum_argument},
                    )
                charge_usd = to_micros(amount, f"argument {cap.sum_argument!r}")
            if cap.window == "call" or (request.run_id is None and cap.counts_run):
                self._check_alone(request, cap, charge_usd, tokens, calls)
                continue
            key = self._key(request, cap)
            period = day if cap.window == "day" else ""
            ident = (cap.id, cap.scope, key, period)
            if ident in seen:
                raise UsageError(
                    f"cap {cap.id!r} is listed twice for this call", code="invalid_cap"
                )
            seen.add(ident)
            row, alerting = self._row(
                request, cap, key, period, rid, now_s, charge_usd, tokens, calls
            )
            charges.append(_Charge(cap, key, period, charge_usd, tokens, calls, row, alerting))
        # Rows are charged in one fixed order (by identity) so that transactions on PostgreSQL
        # lock them in the same order and cannot deadlock; settle, release and expiry move them
        # in that order too (the charges are stored sorted, and sorted again when read).
        ordered = sorted(charges, key=lambda c: c.ident)
        params = [v for c in ordered for v in c.row]
        charges_json = json.dumps(
            [
                [*c.ident, c.usd, c.tokens, c.calls, int(c.cap.sum_argument is None)]
                for c in ordered
            ],
            separators=(",", ":"),
        )
        ttl = request.ttl if request.ttl is not None else self._ttl
        return _Plan(
            rid, request, usd, tokens, calls, tuple(charges), params, now, now + ttl, charges_json
        )

    @staticmethod
    def _key(request: ReservationRequest, cap: Cap) -> str:
        parts: list[str] = []
        for dim in cap.dims:
            if dim == "tenant":
                parts.append(request.tenant)
            elif dim == "agent":
                parts.append(request.agent)
            elif dim == "workflow":
                parts.append(request.workflow or "")
            elif dim == "run":
                parts.append(request.run_id or "")
            else:
                name = dim[len("arguments.") :]
                value = request.key_arguments.get(name)
                if not isinstance(value, str):
                    raise InvalidRequestError(
                        f"cap {cap.id!r} is keyed on argument {name!r}, which the call does "
                        "not have (or whose key is not a string)",
                        code="cap_argument_missing",
                        context={"cap": cap.id, "argument": name},
                    )
                parts.append(value)
        return parts[0] if len(parts) == 1 else canonical_json(parts)

    def _fraction(self, cap: Cap) -> Decimal | None:
        if cap.alert_fraction is not None:
            return cap.alert_fraction
        if self._alert_caps == "all" or (self._alert_caps == "run" and cap.counts_run):
            return self._alert_at
        return None

    def _row(
        self,
        request: ReservationRequest,
        cap: Cap,
        key: str,
        period: str,
        rid: str,
        now_s: str,
        usd: int,
        tokens: int,
        calls: int,
    ) -> tuple[tuple[Any, ...], bool]:
        """The counter row to charge (COUNTER_COLUMNS order), and whether it can burn-alert."""
        limits = (cap.limit_usd_micros, cap.limit_tokens, cap.limit_calls)
        fraction = self._fraction(cap)
        alerts: tuple[int | None, ...] = (None, None, None)
        crosses = False
        if fraction is not None:
            alerts = tuple(None if lim is None else ceil_fraction(lim, fraction) for lim in limits)
            crosses = any(
                a is not None and amount >= a
                for a, amount in zip(alerts, (usd, tokens, calls), strict=True)
            )
        counts_run = "run" in cap.dims
        row = (
            request.tenant,
            cap.id,
            cap.scope,
            key,
            period,
            request.workflow if counts_run or "workflow" in cap.dims else None,
            request.run_id if counts_run else None,
            *limits,
            usd,
            tokens,
            calls,
            *alerts,
            rid if crosses else None,
            rid,
            now_s,
            now_s,
        )
        return row, any(a is not None for a in alerts)

    def _check_alone(
        self, request: ReservationRequest, cap: Cap, usd: int, tokens: int, calls: int
    ) -> None:
        """A cap without a counter: the call alone must fit."""
        for dim, amount, limit in (
            ("usd", usd, cap.limit_usd_micros),
            ("tokens", tokens, cap.limit_tokens),
            ("calls", calls, cap.limit_calls),
        ):
            if limit is not None and amount > limit:
                raise self._exceeded(
                    request, cap, "call", request.call_id, "", dim, limit, 0, 0, amount
                )

    def _reserve_in(self, tx: Transaction, plan: _Plan) -> Reservation:
        request = plan.request
        charges = plan.charges
        alerts: list[BurnAlert] = []
        if charges:
            for charge in charges:
                # A new counter is inserted unconditionally: the charge alone must fit first.
                if _first_excess(charge, 0, 0, 0) is not None:
                    self._raise_for(tx, plan, charge)
            changed = tx.execute(_sql.charge_sql(len(charges)), plan.params)
            if changed != len(charges):
                for charge in charges:
                    row = tx.fetchone(_sql.READ_COUNTER, (request.tenant, *charge.ident))
                    if row is None or row[17] != plan.rid:
                        self._raise_for(tx, plan, charge)
                raise InternalError(  # pragma: no cover - a missing row is always explained
                    "the ledger charged fewer counters than it asked for; the call is denied"
                )
            for charge in charges:
                if charge.alerting:
                    row = tx.fetchone(_sql.READ_COUNTER, (request.tenant, *charge.ident))
                    if row is not None and row[16] == plan.rid:
                        line = _line(request.tenant, row)
                        fraction = self._fraction(charge.cap) or self._alert_at
                        alerts.append(
                            BurnAlert(
                                line.cap_id, line.scope, line.key, line.period, fraction, line
                            )
                        )
        tx.execute(
            _sql.INSERT_RESERVATION,
            (
                plan.rid,
                request.tenant,
                request.agent,
                request.workflow,
                request.run_id,
                request.call_id,
                request.target,
                plan.usd,
                plan.tokens,
                plan.calls,
                plan.charges_json,
                _ts(plan.created),
                _ts(plan.expires),
            ),
        )
        return Reservation(
            id=plan.rid,
            tenant=request.tenant,
            call_id=request.call_id,
            amount_usd=from_micros(plan.usd),
            tokens=plan.tokens,
            calls=plan.calls,
            created_at=plan.created,
            expires_at=plan.expires,
            burn_alerts=tuple(alerts),
        )

    def _raise_for(self, tx: Transaction, plan: _Plan, charge: _Charge) -> NoReturn:
        request = plan.request
        cap = charge.cap
        row = tx.fetchone(_sql.READ_COUNTER, (request.tenant, *charge.ident))
        spent = (0, 0, 0) if row is None else (row[8], row[11], row[14])
        held = (0, 0, 0) if row is None else (row[9], row[12], row[15])
        failed = _first_excess(charge, *(s + h for s, h in zip(spent, held, strict=True)))
        if failed is None:  # another writer gave budget back between the charge and this read
            raise StoreError(
                "the budget counters changed while this call was being charged; retry the call",
                retryable=True,
                context={"cap": cap.id, "tenant": request.tenant, "call_id": request.call_id},
            )
        index = _DIMS.index(failed)
        limit = (cap.limit_usd_micros, cap.limit_tokens, cap.limit_calls)[index]
        raise self._exceeded(
            request,
            cap,
            cap.scope,
            charge.key,
            charge.period,
            failed,
            COUNTER_CEILING if limit is None else limit,
            spent[index],
            held[index],
            (charge.usd, charge.tokens, charge.calls)[index],
        )

    @staticmethod
    def _exceeded(
        request: ReservationRequest,
        cap: Cap,
        scope: str,
        key: str,
        period: str,
        dim: str,
        limit: int,
        spent: int,
        reserved: int,
        requested: int,
    ) -> BudgetExceeded:
        if dim == "usd":
            shown: list[Any] = [from_micros(v) for v in (limit, spent, reserved, requested)]
            text = [f"${v}" for v in shown]
            values: list[Any] = [str(v) for v in shown]
        else:
            text = [f"{v} {dim}" for v in (limit, spent, reserved, requested)]
            values = [limit, spent, reserved, requested]
        where = f"{scope} {key!r}" + (f" on {period}" if period else "")
        return BudgetExceeded(
            f"cap {cap.id!r} ({where}) would be exceeded: limit {text[0]}, spent {text[1]}, "
            f"reserved {text[2]}, this call {text[3]}",
            context={
                "cap": cap.id,
                "scope": scope,
                "key": key,
                "period": period,
                "dimension": dim,
                "limit": values[0],
                "spent": values[1],
                "reserved": values[2],
                "requested": values[3],
                "tenant": request.tenant,
                "call_id": request.call_id,
                "run_id": request.run_id,
            },
        )

    # -- extend --------------------------------------------------------------------------------

    def extend(self, reservation_id: str, amount_usd: Decimal, tokens: int = 0) -> Decimal:
        """Grow a held reservation by ``amount_usd`` and ``tokens`` on every cap it charges, or
        raise BudgetExceeded and change nothing. Returns the reservation's new total hold.

        For calls whose cost is only known as they go (a streamed model answer whose upstream
        outruns the estimate): each top-up is checked against every cap exactly like a
        reservation, all or nothing, so the hold can never take a cap past its limit. Caps
        that sum an argument keep their hold (the argument did not change). A reservation that
        is no longer held (settled, released, expired) cannot grow: InvalidRequestError with
        code ``reservation_not_held``.
        """
        usd = to_micros(amount_usd, "amount_usd")
        grow_tokens = units(tokens, "tokens")
        with self._store.write(locks=()) as tx:
            row = tx.fetchone(_sql.LOCK_HELD, (reservation_id,))
            if row is None:
                raise InvalidRequestError(
                    f"reservation {reservation_id!r} is not held: it cannot grow",
                    code="reservation_not_held",
                    context={"reservation_id": reservation_id},
                )
            tenant, charges_json = row
            now_s = _ts(self._clock.now())
            grown: list[list[Any]] = []
            for ident, c_usd, c_tokens, c_calls, priced in _charges(charges_json):
                add_usd = usd if priced else 0
                changed = tx.execute(
                    _sql.EXTEND_COUNTER,
                    (add_usd, grow_tokens, now_s, tenant, *ident, add_usd, grow_tokens),
                )
                if changed != 1:
                    raise self._not_extended(tx, tenant, ident, reservation_id, add_usd, tokens)
                grown.append([*ident, c_usd + add_usd, c_tokens + grow_tokens, c_calls, priced])
            total = tx.fetchone(
                _sql.EXTEND_RESERVATION,
                (usd, grow_tokens, json.dumps(grown, separators=(",", ":")), reservation_id),
            )
            assert total is not None  # the row is locked and held
            return from_micros(int(total[1]))

    @staticmethod
    def _not_extended(
        tx: Transaction,
        tenant: str,
        ident: tuple[str, str, str, str],
        rid: str,
        usd: int,
        tokens: int,
    ) -> BudgetExceeded:
        cap_id, scope, key, period = ident
        row = tx.fetchone(_sql.READ_COUNTER, (tenant, *ident))
        line = None if row is None else _line(tenant, row)
        where = f"{scope} {key!r}" + (f" on {period}" if period else "")
        limit = "none" if line is None or line.limit_usd is None else f"${line.limit_usd}"
        return BudgetExceeded(
            f"cap {cap_id!r} ({where}) has no room to grow this call's hold by "
            f"${from_micros(usd)} / {tokens} tokens (limit {limit}"
            + ("" if line is None else f", spent ${line.spent_usd}, held ${line.reserved_usd}")
            + ")",
            context={
                "cap": cap_id,
                "scope": scope,
                "key": key,
                "period": period,
                "tenant": tenant,
                "reservation_id": rid,
                "requested": str(from_micros(usd)),
                "requested_tokens": tokens,
            },
        )

    # -- settle / release ----------------------------------------------------------------------

    def settle(
        self,
        reservation_id: str,
        actual_usd: Decimal,
        actual_tokens: int = 0,
        *,
        tx: Transaction | None = None,
    ) -> Settlement:
        """Record the call's actual cost: hold -> spent, the difference released.

        Caps that sum an argument move their held amount unchanged. An actual cost above the
        hold is an overrun: spent anyway, reported in the result. A reservation already
        expired is settled late (spend recorded; its hold was released at expiry). Settling a
        settled or released reservation changes nothing and is reported (``already_*``). An
        unknown id raises InvalidRequestError (code ``reservation_unknown``).
        """
        usd = to_micros(actual_usd, "actual_usd")
        tokens = units(actual_tokens, "actual_tokens")
        if tx is not None:
            return self._settle_in(tx, reservation_id, usd, tokens)
        with self._store.write(locks=()) as wtx:
            return self._settle_in(wtx, reservation_id, usd, tokens)

    def _settle_in(self, tx: Transaction, rid: str, usd: int, tokens: int) -> Settlement:
        now_s = _ts(self._clock.now())
        row = tx.fetchone(_sql.SETTLE, (usd, tokens, now_s, rid))
        if row is None:
            return self._noop(tx, rid, "settle")
        tenant, charges_json, held_usd, held_tokens, expired_at = row
        late = expired_at is not None
        for ident, c_usd, c_tokens, c_calls, priced in _charges(charges_json):
            tx.execute(
                _sql.MOVE_COUNTER,
                (
                    0 if late else c_usd,
                    usd if priced else c_usd,
                    0 if late else c_tokens,
                    tokens,
                    0 if late else c_calls,
                    c_calls,
                    now_s,
                    tenant,
                    *ident,
                ),
            )
        return Settlement(
            rid,
            "settled_after_expiry" if late else "settled",
            from_micros(held_usd),
            from_micros(usd),
            held_tokens,
            tokens,
        )

    def release(self, reservation_id: str, *, tx: Transaction | None = None) -> Settlement:
        """Give back the whole hold of a call that did not run (nothing is spent).

        Releasing twice, or releasing a settled or expired reservation, changes nothing and is
        reported (``already_*``). An unknown id raises InvalidRequestError.
        """
        if tx is not None:
            return self._release_in(tx, reservation_id)
        with self._store.write(locks=()) as wtx:
            return self._release_in(wtx, reservation_id)

    def _release_in(self, tx: Transaction, rid: str) -> Settlement:
        now_s = _ts(self._clock.now())
        row = tx.fetchone(_sql.RELEASE, (now_s, rid))
        if row is None:
            return self._noop(tx, rid, "release")
        tenant, charges_json, held_usd, held_tokens = row
        self._give_back(tx, tenant, charges_json, now_s)
        return Settlement(rid, "released", from_micros(held_usd), Decimal(0), held_tokens, 0)

    @staticmethod
    def _give_back(tx: Transaction, tenant: str, charges_json: str, now_s: str) -> None:
        for ident, c_usd, c_tokens, c_calls, _priced in _charges(charges_json):
            tx.execute(
                _sql.MOVE_COUNTER, (c_usd, 0, c_tokens, 0, c_calls, 0, now_s, tenant, *ident)
            )

    @staticmethod
    def _noop(tx: Transaction, rid: str, action: str) -> Settlement:
        row = tx.fetchone(_sql.RESERVATION_STATE, (rid,))
        if row is None:
            raise InvalidRequestError(
                f"cannot {action} reservation {rid!r}: the ledger has no such reservation",
                code="reservation_unknown",
                context={"reservation_id": rid},
            )
        status, held_usd, held_tokens, actual_usd, actual_tokens = row
        outcome: Any = {
            "settled": "already_settled",
            "released": "already_released",
            "expired": "already_expired",
        }.get(status)
        if outcome is None:  # pragma: no cover - 'held' rows are always updated
            raise InternalError(f"reservation {rid!r} is in an unknown state {status!r}")
        return Settlement(
            rid,
            outcome,
            from_micros(held_usd),
            from_micros(actual_usd or 0),
            held_tokens,
            actual_tokens or 0,
        )

    # -- expiry ------------------------------------------------------------------------------

    def expire_stale(self, now: _dt.datetime | None = None) -> list[ExpiredReservation]:
        """Release every hold whose time has passed (as of ``now``, default the clock's), and
        report them. Cheap when nothing is stale: one indexed read, no write lock. Safe to run
        from several processes at once: each hold is released exactly once."""
        moment = self._clock.now() if now is None else now
        now_s = _ts(moment)
        if self._store.read_one(_sql.HAS_STALE, (now_s,)) is None:
            return []
        expired: list[ExpiredReservation] = []
        while True:
            with self._store.write(locks=()) as tx:
                ids = [r[0] for r in tx.fetchall(_sql.FIND_STALE, (now_s, self._sweep_batch))]
                # Reservation rows first (in id order), then every counter they held, summed and
                # in identity order: the same lock order as reserve, so no deadlock.
                moves: dict[tuple[str, tuple[str, str, str, str]], list[int]] = {}
                for rid in sorted(ids):
                    row = tx.fetchone(_sql.EXPIRE_ONE, (now_s, now_s, rid))
                    if row is None:  # another process expired or settled it meanwhile
                        continue
                    charges_json, tenant, call_id, usd, tokens, expires_at = row
                    for ident, c_usd, c_tokens, c_calls, _priced in _charges(charges_json):
                        move = moves.setdefault((tenant, ident), [0, 0, 0])
                        move[0] += c_usd
                        move[1] += c_tokens
                        move[2] += c_calls
                    expired.append(
                        ExpiredReservation(
                            rid, tenant, call_id, from_micros(usd), tokens, _parse_ts(expires_at)
                        )
                    )
                for (tenant, ident), (c_usd, c_tokens, c_calls) in sorted(moves.items()):
                    tx.execute(
                        _sql.MOVE_COUNTER,
                        (c_usd, 0, c_tokens, 0, c_calls, 0, now_s, tenant, *ident),
                    )
            if len(ids) < self._sweep_batch:
                return expired

    def _maybe_sweep(self, now: _dt.datetime) -> None:
        mono = self._clock.monotonic()
        if mono < self._next_sweep:
            return
        self._next_sweep = mono + self._sweep_every
        self.expire_stale(now)

    # -- reports -----------------------------------------------------------------------------

    def report(
        self,
        *,
        tenant: str | None = None,
        workflow: str | None = None,
        run_id: str | None = None,
        day: _dt.date | None = None,
        all_days: bool = False,
    ) -> list[BudgetLine]:
        """Every counter matching the filters, with spend, holds, limits and remaining.

        ``workflow``/``run_id`` select counters specific to that workflow or run. Day-window
        counters are those of ``day`` (default: today, UTC) unless ``all_days``. Ordered by
        tenant, scope, key, cap, period. This is what ``keel budget show`` prints.
        """
        where: list[str] = []
        params: list[Any] = []
        for column, value in (("tenant", tenant), ("workflow", workflow), ("run_id", run_id)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if not all_days:
            when = day if day is not None else self._clock.now().astimezone(_UTC).date()
            where.append("(period = '' OR period = ?)")
            params.append(when.isoformat())
        sql = f"SELECT {_sql.COUNTER_SELECT} FROM ledger_counters"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY tenant, scope, cap_key, cap_id, period"
        with self._store.read() as tx:
            rows = tx.fetchall(sql, params)
        return [_line(row[0], row) for row in rows]

    def spend_by(self, **filters: Unpack[SpendFilter]) -> Spend:
        """Totals over reservations made in ``[since, until)`` matching the filters (tenant,
        agent, workflow, run_id, target): settled spend at the calls' prices (argument sums are
        not spend), current holds, counts."""
        return self._spend(None, filters, 1)[0][1]

    def spend_grouped(
        self, by: SpendGroup, *, limit: int = 1000, **filters: Unpack[SpendFilter]
    ) -> list[tuple[str | None, Spend]]:
        """Like :meth:`spend_by`, one line per value of ``by`` (``tenant``, ``agent``,
        ``workflow``, ``run_id`` or ``target``: the tool or model), most spent first, at most
        ``limit`` lines. The value is None for calls outside a workflow or run."""
        return self._spend(by, filters, limit)

    def _spend(
        self, by: SpendGroup | None, filters: SpendFilter, limit: int
    ) -> list[tuple[str | None, Spend]]:
        given: dict[str, Any] = dict(filters)
        columns = [(column, given.get(column)) for column in SPEND_GROUPS]
        since, until = _ts_or_none(given.get("since")), _ts_or_none(given.get("until"))
        return spend_rows(self._store, by, columns, since, until, limit)

    def prune(self, before: _dt.datetime) -> tuple[int, int]:
        """Delete finished reservations that ended before ``before``, and day-window counters of
        days before it that hold nothing. Returns (reservations, counters) deleted."""
        before_s = _ts(before)
        day = before.astimezone(_UTC).date().isoformat()
        with self._store.write() as tx:
            gone = tx.execute(
                "DELETE FROM ledger_reservations WHERE status <> 'held' AND finished_at < ?",
                (before_s,),
            )
            counters = tx.execute(
                "DELETE FROM ledger_counters WHERE period <> '' AND period < ? "
                "AND reserved_usd = 0 AND reserved_tokens = 0 AND reserved_calls = 0",
                (day,),
            )
        return gone, counters


def _first_excess(charge: _Charge, used_usd: int, used_tokens: int, used_calls: int) -> str | None:
    """The first dimension in which ``used + charge`` passes the cap's limit, or None."""
    cap = charge.cap
    for dim, used, amount, limit in (
        ("usd", used_usd, charge.usd, cap.limit_usd_micros),
        ("tokens", used_tokens, charge.tokens, cap.limit_tokens),
        ("calls", used_calls, charge.calls, cap.limit_calls),
    ):
        if used + amount > (COUNTER_CEILING if limit is None else limit):
            return dim
    return None


def _charges(
    text: str,
) -> list[tuple[tuple[str, str, str, str], int, int, int, bool]]:
    try:
        items = json.loads(text)
        return sorted(  # one lock order, also for reservations stored before it was sorted
            (
                (str(c[0]), str(c[1]), str(c[2]), str(c[3])),
                int(c[4]),
                int(c[5]),
                int(c[6]),
                bool(c[7]),
            )
            for c in items
        )
    except (ValueError, TypeError, IndexError) as exc:
        raise InternalError(
            f"a reservation's charges are unreadable ({exc}); the call is denied"
        ) from None
