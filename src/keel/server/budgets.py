"""Budget routes, for operator API keys: cap lines (``keel budget show``), spend in total or
grouped, and cost forecasts from run history (``keel forecast``).

Every route needs ``viewer`` or above. A key limited to one tenant sees its tenant's counters and
spend only, and forecasts its tenant's workflows only (asking for another tenant or its workflow
is "not found").
Money is a decimal string of US dollars, exact to the micro-dollar.
"""

from __future__ import annotations

import datetime as _dt
from typing import Annotated, Any

import pydantic
from fastapi import APIRouter, Query

from keel.app import App
from keel.errors import NotFoundError
from keel.identity import OperatorKey
from keel.ledger import SpendGroup, forecast
from keel.runtime.history import run_observations
from keel.server._http import (
    ERRORS,
    ISO_TIME,
    NOT_FOUND,
    OPERATOR_RESPONSES,
    QueryText,
    utc_param,
)
from keel.server.auth import OperatorAuth, tenant_filter

__all__ = ["budgets_router"]

Usd = Annotated[str, pydantic.Field(description="US dollars, a decimal string")]


class BudgetLine(pydantic.BaseModel):
    """One cap's counter for one key and period: what it allows, what is spent and held."""

    tenant: str
    cap: str
    scope: str
    key: str
    period: str = pydantic.Field(description="The UTC day for day-window caps, else empty.")
    workflow: str | None
    run_id: str | None
    limit_usd: Usd | None
    spent_usd: Usd
    reserved_usd: Usd
    remaining_usd: Usd | None
    limit_tokens: int | None
    spent_tokens: int
    reserved_tokens: int
    remaining_tokens: int | None
    limit_calls: int | None
    spent_calls: int
    reserved_calls: int
    remaining_calls: int | None
    alerted: bool = pydantic.Field(description="A burn alert has fired for this counter.")


class Budgets(pydantic.BaseModel):
    budgets: list[BudgetLine]


class Spend(pydantic.BaseModel):
    spent_usd: Usd
    spent_tokens: int
    spent_calls: int
    reserved_usd: Usd
    reserved_tokens: int
    reserved_calls: int
    reservations: int
    overruns: int


class SpendLine(Spend):
    key: str | None = pydantic.Field(description="The group's value (None: outside any).")


class SpendReport(pydantic.BaseModel):
    by: SpendGroup | None
    total: Spend
    groups: list[SpendLine] = pydantic.Field(description="Most spent first (with ``by``).")


class Band(pydantic.BaseModel):
    mean: Usd | None = None
    expected: Usd | None = None
    p10: Usd
    p50: Usd
    p90: Usd


class Forecast(pydantic.BaseModel):
    """Expected cost of ``runs`` future runs of a workflow, with a P10–P90 band, calibrated on
    its recorded runs (``keel.ledger.forecast``)."""

    workflow: str
    runs: int
    per_run: Band
    total: Band
    per_completed_run_mean: Usd | None
    completion_rate: float
    observations_used: int
    inputs: dict[str, dict[str, Any]]
    parameters: dict[str, Any]
    seed: int
    samples: int
    dependence: str
    calibration_uncertainty: bool
    scenario: dict[str, Any] | None


def budgets_router(keel: App, auth: OperatorAuth) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["budgets"], responses=OPERATOR_RESPONSES)
    viewer = auth.needs("viewer")

    @router.get("/budgets", response_model=Budgets, responses=NOT_FOUND)
    def budgets(
        tenant: QueryText = None,
        workflow: QueryText = None,
        run_id: QueryText = None,
        all_days: Annotated[bool, Query(description="Include past days' counters.")] = False,
        key: OperatorKey = viewer,
    ) -> dict[str, Any]:
        """Every cap counter: limit, spent, reserved and remaining, per tenant, key and period
        (day-window counters of today, UTC, unless ``all_days``)."""
        tenant = tenant_filter(key, tenant)
        lines = keel.ledger.report(
            tenant=tenant, workflow=workflow, run_id=run_id, all_days=all_days
        )
        return {"budgets": [line.to_dict() for line in lines]}

    @router.get("/spend", response_model=SpendReport, responses=NOT_FOUND)
    def spend(
        by: Annotated[SpendGroup | None, Query(description="Group by this field.")] = None,
        tenant: QueryText = None,
        agent: QueryText = None,
        workflow: QueryText = None,
        run_id: QueryText = None,
        target: QueryText = None,
        since: Annotated[_dt.datetime | None, ISO_TIME, Query(alias="from")] = None,
        until: Annotated[_dt.datetime | None, ISO_TIME, Query(alias="to")] = None,
        limit: Annotated[int, Query(ge=1, le=1000, description="At most this many groups.")] = 100,
        key: OperatorKey = viewer,
    ) -> dict[str, Any]:
        """Spend over calls made in ``[from, to)``: settled at the calls' prices, and holds."""
        filters: dict[str, Any] = {
            "tenant": tenant_filter(key, tenant),
            "agent": agent,
            "workflow": workflow,
            "run_id": run_id,
            "target": target,
            "since": utc_param(since, "from"),
            "until": utc_param(until, "to"),
        }
        total = keel.ledger.spend_by(**filters)
        groups = [] if by is None else keel.ledger.spend_grouped(by, limit=limit, **filters)
        return {
            "by": by,
            "total": total.to_dict(),
            "groups": [{"key": value, **line.to_dict()} for value, line in groups],
        }

    @router.get(
        "/forecasts",
        response_model=Forecast,
        responses={
            **NOT_FOUND,
            409: {**ERRORS[409], "description": "too few recorded runs to forecast from"},
        },
    )
    def forecasts(
        workflow: Annotated[
            str, Query(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")
        ],
        runs: Annotated[int, Query(ge=1, le=1_000_000, description="Future runs.")] = 1000,
        seed: Annotated[int, Query(ge=0, le=2**32, description="Same seed, same answer.")] = 0,
        since: Annotated[
            _dt.datetime | None, ISO_TIME, Query(description="Calibrate on runs started since.")
        ] = None,
        tenant: Annotated[
            str | None,
            Query(
                min_length=1,
                max_length=200,
                pattern=r"^[^\x00-\x1f\x7f]+$",
                description="For a workflow this server does not register: whose runs to "
                "calibrate on (default: every tenant's, or the key's). A registered one uses "
                "its own tenant.",
            ),
        ] = None,
        key: OperatorKey = viewer,
    ) -> dict[str, Any]:
        """Expected cost of ``runs`` runs of ``workflow`` with a P10–P90 band, from the history
        of its tenant's runs (calls naming the workflow from another tenant do not count).

        Too little history is a 409 with code ``forecast_insufficient_history``."""
        if workflow not in keel.workflows:
            tenant = tenant_filter(key, tenant)
        elif key.covers(keel.workflow_tenant(workflow)):
            tenant = keel.workflow_tenant(workflow)
        else:
            raise NotFoundError(f"no workflow named {workflow!r}", code="workflow_not_found")
        moment = utc_param(since, "since")
        history = run_observations(keel.store, workflow, since=moment, tenant=tenant)
        return forecast(history, runs, seed=seed).to_dict()

    return router
