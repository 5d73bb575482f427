"""Spend, per workflow and tenant: spend against budget over time, cost per completed run, the
forecast next to the actual, and the top cost drivers.

Every figure comes from the ledger's services, the same as the REST routes: the spend of a
window in one grouped query (``keel.ledger.series.spend_breakdown``: its totals and lines are
``Ledger.spend_by`` / ``spend_grouped``'s, as ``/v1/spend`` answers), the budget counters
(``keel.ledger.series.cap_lines``: lines of ``Ledger.report``, as ``/v1/budgets``), runs and
their spend (``keel.ledger.unit_cost``), and the forecast of ``/v1/forecasts``
(``run_observations`` + ``forecast``). A key limited to one tenant sees that tenant only.

The forecast is what would have been forecast when the window began: calibrated on the latest
:data:`CALIBRATION_RUNS` runs of the workflow started before it, for the number of runs started
in it, set against what those runs cost. It reads run history from the audit log, which takes
time on a long history, so it is computed when asked for (a button).
"""

from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final

from fastapi import Request
from fastapi.responses import Response

from keel.app import App
from keel.errors import KeelError, NotFoundError
from keel.identity import OperatorKey
from keel.ledger import (
    BudgetLine,
    Forecast,
    InsufficientHistory,
    RunObservation,
    Spend,
    forecast,
)
from keel.ledger.series import (
    Bucket,
    SpendBreakdown,
    bucket_floor,
    bucket_size,
    cap_lines,
    spend_breakdown,
)
from keel.ledger.unit_cost import DEFAULT_SAMPLE, UnitCost, completed_run_spread, unit_costs
from keel.runtime.history import run_observations
from keel.server.auth import tenant_filter
from keel.server.dashboard import charts
from keel.server.dashboard.site import Site, Who, usd

__all__ = ["CALIBRATION_RUNS", "WINDOWS", "register"]


@dataclass(frozen=True, slots=True)
class Window:
    label: str
    span: _dt.timedelta
    bucket: Bucket


#: The windows offered, each ending with the current hour or day (UTC).
WINDOWS: Final[dict[str, Window]] = {
    "24h": Window("last 24 hours", _dt.timedelta(hours=24), "hour"),
    "7d": Window("last 7 days", _dt.timedelta(days=7), "day"),
    "30d": Window("last 30 days", _dt.timedelta(days=30), "day"),
}
DEFAULT_WINDOW: Final = "7d"
#: The forecast is calibrated on at most this many of the workflow's latest runs.
CALIBRATION_RUNS: Final = 200
#: The forecast of what is to come is for this many runs.
AHEAD_RUNS: Final = 1000
#: Rows of the cost-driver chart and table.
TOP: Final = 10
#: Rows of the tables per workflow.
TOP_WORKFLOWS: Final = 50
_TEXT = re.compile(r"[^\x00-\x1f\x7f]{1,200}")


class _BadQuery(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def _share(part: Decimal, whole: Decimal) -> str:
    return f"{part / whole * 100:.1f}%" if whole > 0 else "—"


def _text(request: Request, name: str) -> str | None:
    value = request.query_params.get(name, "")
    if value == "":
        return None
    if not _TEXT.fullmatch(value):
        raise _BadQuery(f"{name} must be 1 to 200 printable characters.")
    return value


def _spend_row(key: str | None, line: Spend, total: Decimal) -> dict[str, Any]:
    return {
        "key": key,
        "spent": usd(line.spent_usd),
        "held": usd(line.reserved_usd),
        "calls": line.spent_calls,
        "share": _share(line.spent_usd, total),
        "value": line.spent_usd,
    }


def register(site: Site) -> None:
    keel = site.keel

    @site.screen("/spend")
    def spend(request: Request, who: Who) -> Response:
        key = who[1]
        query = {
            "window": request.query_params.get("window") or DEFAULT_WINDOW,
            "tenant": request.query_params.get("tenant", "")[:200],
            "workflow": request.query_params.get("workflow", "")[:200],
        }
        try:
            context = _view(keel, key, request)
        except _BadQuery as bad:
            page = site.render(
                "spend.html",
                request,
                who,
                page="spend",
                windows=WINDOWS,
                query=query,
                error=bad.message,
                view=None,
            )
            page.status_code = bad.status
            return page
        return site.render(
            "spend.html", request, who, page="spend", windows=WINDOWS, query=query, **context
        )


def _view(keel: App, key: OperatorKey, request: Request) -> dict[str, Any]:
    name = request.query_params.get("window") or DEFAULT_WINDOW
    window = WINDOWS.get(name)
    if window is None:
        raise _BadQuery(f"The window must be one of {', '.join(WINDOWS)}; got {name[:40]!r}.")
    asked_tenant, workflow = _text(request, "tenant"), _text(request, "workflow")
    try:
        tenant = tenant_filter(key, asked_tenant)
    except NotFoundError:
        raise _BadQuery(f"No tenant {asked_tenant!r} for this key.", status=404) from None
    until = bucket_floor(keel.clock.now(), window.bucket) + bucket_size(window.bucket)
    since = until - window.span
    try:
        everything = spend_breakdown(
            keel.store,
            since=since,
            until=until,
            bucket=window.bucket,
            tenant=key.tenant,
            now=keel.clock.now(),
        )
    except KeelError as exc:
        raise _BadQuery(exc.message) from None
    in_tenant = everything.where(tenant=tenant)
    registered = [w for w in keel.workflows if key.covers(keel.workflow_tenant(w))]
    seen = [w for w, _ in in_tenant.by("workflow") if w is not None]
    workflows = sorted({*registered, *seen})
    if workflow is not None and workflow not in workflows:
        raise _BadQuery(
            f"No workflow named {workflow!r} is registered or has spend in the {window.label}"
            f"{f' of tenant {tenant}' if tenant else ''}; pick one from the list."
        )
    view = in_tenant.where(workflow=workflow)
    total = view.total()
    units = unit_costs(keel.store, since=since, until=until, tenant=tenant, limit=TOP_WORKFLOWS)
    unit = next((u for u in units if u.workflow == workflow), None)
    if workflow is not None and unit is None:
        found = unit_costs(keel.store, since=since, until=until, tenant=tenant, workflow=workflow)
        unit = found[0] if found else None
    return {
        "view": True,
        "window": window,
        "since": since,
        "until": until,
        "tenant": tenant,
        "workflow": workflow,
        "tenants": _tenants(keel, key, everything, tenant),
        "workflows": workflows,
        "summary": _summary(total, unit),
        **_over_time(keel, view, window, tenant, workflow, since, until),
        **_drivers(keel, view, in_tenant, everything, key, tenant, total.spent_usd),
        "units": [_unit_row(u, u.workflow == workflow) for u in units],
        "spread": _spread(keel, workflow, since, until, tenant),
        "forecast": _forecast(keel, request, workflow, tenant, since, unit),
        "calibration_runs": CALIBRATION_RUNS,
        "unit_sample": DEFAULT_SAMPLE,
    }


def _tenants(
    keel: App, key: OperatorKey, everything: SpendBreakdown, tenant: str | None
) -> list[str]:
    """Tenants to choose from (keys of every tenant only): with spend, or owning a workflow."""
    if key.tenant is not None:
        return []
    names = {t for t, _ in everything.by("tenant") if t is not None}
    names.update(keel.workflow_tenant(w) for w in keel.workflows)
    if tenant:
        names.add(tenant)
    return sorted(names)


def _summary(total: Spend, unit: UnitCost | None) -> dict[str, Any]:
    return {
        "spent": usd(total.spent_usd),
        "held": usd(total.reserved_usd),
        "calls": total.spent_calls,
        "overruns": total.overruns,
        "per_completed": None if unit is None else usd(unit.per_completed_run),
        "completed": None if unit is None else unit.completed,
    }


def _bucket_label(start: _dt.datetime, bucket: Bucket) -> str:
    return start.strftime("%H:00") if bucket == "hour" else start.strftime("%b %d")


def _over_time(
    keel: App,
    view: SpendBreakdown,
    window: Window,
    tenant: str | None,
    workflow: str | None,
    since: _dt.datetime,
    until: _dt.datetime,
) -> dict[str, Any]:
    """The series with its running total, and the budget counters that apply."""
    rows: list[dict[str, Any]] = []
    running = Decimal(0)
    for start, line in view.series():
        running += line.spent_usd
        rows.append(
            {
                "start": start.strftime(
                    "%Y-%m-%d %H:00" if window.bucket == "hour" else "%Y-%m-%d"
                ),
                "label": _bucket_label(start, window.bucket),
                "spent": line.spent_usd,
                "cumulative": running,
                "text": usd(line.spent_usd),
                "cumulative_text": usd(running),
                "held": usd(line.reserved_usd),
                "calls": line.spent_calls,
            }
        )
    lines = cap_lines(
        keel.store,
        first_day=since.date(),
        last_day=(until - _dt.timedelta(microseconds=1)).date(),
        tenant=tenant,
        workflow=workflow,
    )
    caps = _caps(lines)
    rules = [
        charts.Rule(f"{c['cap']} ({c['key']}) a day", c["limit_value"])
        for c in caps
        if c["daily"] and window.bucket == "day" and tenant is not None
    ][:3]
    scope = f"workflow {workflow}" if workflow else "every workflow"
    who = f"tenant {tenant}" if tenant else "every tenant"
    chart = charts.time_chart(
        [r["label"] for r in rows],
        bars=[r["spent"] for r in rows],
        line=[r["cumulative"] for r in rows],
        rules=rules,
        title=f"Spend per {window.bucket}, {window.label}",
        description=f"Spend of {scope}, {who}: per {window.bucket} (bars) and cumulative "
        f"(line){', against daily caps (dashed)' if rules else ''}. The table below has the "
        "figures.",
        ident="spend-over-time",
        bar_label=f"spend per {window.bucket}",
        line_label="cumulative",
        fmt=usd,
    )
    return {"series": rows, "series_chart": chart, "caps": caps}


def _caps(lines: list[BudgetLine]) -> list[dict[str, Any]]:
    """One row per cap and key: its latest counter (today's, for a day cap)."""
    latest: dict[tuple[str, str, str, str], BudgetLine] = {}
    days: dict[tuple[str, str, str, str], int] = {}
    for line in lines:
        ident = (line.tenant, line.cap_id, line.scope, line.key)
        days[ident] = days.get(ident, 0) + 1
        if ident not in latest or line.period > latest[ident].period:
            latest[ident] = line
    rows = []
    for ident, line in latest.items():
        assert line.limit_usd is not None  # cap_lines reads capped counters only
        rows.append(
            {
                "tenant": line.tenant,
                "cap": line.cap_id,
                "scope": line.scope,
                "key": line.key or "(outside any workflow)",
                "daily": line.period != "",
                "period": line.period or "since the cap was set",
                "days": days[ident] if line.period else None,
                "spent": usd(line.spent_usd),
                "held": usd(line.reserved_usd),
                "limit": usd(line.limit_usd),
                "limit_value": line.limit_usd,
                "remaining": usd(line.remaining_usd),
                "used": _share(line.spent_usd + line.reserved_usd, line.limit_usd),
                "alerted": line.alerted,
            }
        )
    return rows


def _kind(keel: App, target: str | None) -> str:
    if target in keel.models.names():
        return "model"
    if target is not None and target in keel.tools:
        return "tool"
    return ""


def _drivers(
    keel: App,
    view: SpendBreakdown,
    in_tenant: SpendBreakdown,
    everything: SpendBreakdown,
    key: OperatorKey,
    tenant: str | None,
    spent: Decimal,
) -> dict[str, Any]:
    """Spend by target (models and tools), and per workflow and tenant."""
    targets = []
    for target, line in view.by("target", limit=TOP):
        row = _spend_row(target, line, spent)
        row["kind"] = _kind(keel, target)
        targets.append(row)
    chart = charts.bar_chart(
        [
            (f"{r['key']} ({r['kind']})" if r["kind"] else str(r["key"]), r["value"])
            for r in targets
        ],
        title="Top cost drivers",
        description=f"Spend per model or tool, the {TOP} largest; the table below has the figures.",
        ident="spend-drivers",
        fmt=usd,
    )
    in_total = in_tenant.total().spent_usd
    per_workflow = [
        _spend_row(w if w is not None else "(outside any workflow)", line, in_total)
        for w, line in in_tenant.by("workflow", limit=TOP_WORKFLOWS)
    ]
    per_tenant = []
    if key.tenant is None and tenant is None:
        all_total = everything.total().spent_usd
        per_tenant = [_spend_row(t, line, all_total) for t, line in everything.by("tenant")]
    return {
        "targets": targets,
        "targets_chart": chart,
        "per_workflow": per_workflow,
        "per_tenant": per_tenant,
    }


def _unit_row(unit: UnitCost, selected: bool) -> dict[str, Any]:
    return {
        "workflow": unit.workflow,
        "selected": selected,
        "runs": unit.runs,
        "completed": unit.completed,
        "completed_usd": usd(unit.completed_usd),
        "per_completed": usd(unit.per_completed_run),
        "other_usd": usd(unit.other_usd),
        "all_per_completed": usd(unit.all_per_completed_run),
        "sampled": unit.sampled,
    }


def _spread(
    keel: App,
    workflow: str | None,
    since: _dt.datetime,
    until: _dt.datetime,
    tenant: str | None,
) -> dict[str, Any] | None:
    if workflow is None:
        return None
    found = completed_run_spread(keel.store, workflow, since=since, until=until, tenant=tenant)
    if found is None:
        return None
    return {
        "runs": found.runs,
        "sampled": found.sampled,
        "p50": usd(found.p50),
        "p90": usd(found.p90),
        "max": usd(found.max),
    }


def _forecast(
    keel: App,
    request: Request,
    workflow: str | None,
    tenant: str | None,
    since: _dt.datetime,
    unit: UnitCost | None,
) -> dict[str, Any] | None:
    """``/v1/forecasts`` for the runs of ``workflow`` started in the window, calibrated on the
    latest runs started before it, next to what the window's runs cost."""
    if workflow is None:
        return None
    if request.query_params.get("forecast") != "1":
        return {"asked": False}
    if workflow in keel.workflows:
        tenant = keel.workflow_tenant(workflow)  # covered: the list offers no other
    ahead = _ahead(keel, workflow, tenant)
    before = keel.runtime.runs.find(
        workflow=workflow, tenant=tenant, until=since, limit=CALIBRATION_RUNS
    )
    runs = unit.runs if unit is not None else 0
    try:
        history: list[RunObservation] = []
        if before:
            recorded = run_observations(
                keel.store, workflow, since=before[-1].created_at, tenant=tenant
            )
            history = [o for o in recorded if o.started_at < since]
        found = forecast(history, max(runs, 1), seed=0)
    except InsufficientHistory as exc:
        return {
            "asked": True,
            "insufficient": True,
            "error": None,
            "observations": exc.context.get("observations", 0),
            "minimum": exc.context.get("minimum"),
            "ahead": ahead,
        }
    except KeelError as exc:
        return {"asked": True, "insufficient": False, "error": exc.message, "ahead": ahead}
    return {**_forecast_view(found, unit, before[-1].created_at), "ahead": ahead}


def _ahead(keel: App, workflow: str, tenant: str | None) -> dict[str, Any] | None:
    """What the next :data:`AHEAD_RUNS` runs will cost, calibrated on the workflow's latest
    :data:`CALIBRATION_RUNS` runs (``/v1/forecasts`` with ``since`` the oldest of them)."""
    latest = keel.runtime.runs.find(workflow=workflow, tenant=tenant, limit=CALIBRATION_RUNS)
    if not latest:
        return None
    history = run_observations(keel.store, workflow, since=latest[-1].created_at, tenant=tenant)
    try:
        found = forecast(history, AHEAD_RUNS, seed=0)
    except KeelError:
        return None
    return {
        "runs": f"{AHEAD_RUNS:,}",
        "observations": found.observations_used,
        "expected": usd(found.total_expected),
        "p10": usd(found.total_p10),
        "p90": usd(found.total_p90),
        "per_run": usd(found.per_run_mean),
        "per_run_p10": usd(found.per_run_p10),
        "per_run_p90": usd(found.per_run_p90),
        "per_completed": usd(found.per_completed_run_mean),
        "chart": charts.range_chart(
            [
                charts.RangeRow(
                    f"next {AHEAD_RUNS:,} runs",
                    found.total_p10,
                    found.total_expected,
                    found.total_p90,
                    None,
                )
            ],
            title=f"Forecast of the next {AHEAD_RUNS:,} runs of {workflow}",
            description="The forecast's P10–P90 band and its expected total; the table below "
            "has the figures.",
            ident="forecast-ahead",
            band_label="P10–P90",
            fmt=usd,
        ),
    }


def _forecast_view(found: Forecast, unit: UnitCost | None, first: _dt.datetime) -> dict[str, Any]:
    runs = unit.runs if unit is not None else 0
    actual = unit.total_usd if unit is not None else None
    per_run = unit.per_run if unit is not None else None
    total_chart = charts.range_chart(
        [
            charts.RangeRow(
                f"{runs} runs" if runs else "1 run",
                found.total_p10,
                found.total_expected,
                found.total_p90,
                actual,
            )
        ],
        title=f"Forecast of the window's {runs} runs against their actual spend",
        description="The forecast's P10–P90 band, its expected total and the actual spend; the "
        "table below has the figures.",
        ident="forecast-total",
        band_label="P10–P90",
        fmt=usd,
    )
    run_chart = charts.range_chart(
        [
            charts.RangeRow(
                "Per run", found.per_run_p10, found.per_run_mean, found.per_run_p90, per_run
            )
        ],
        title="Forecast cost of one run against the actual mean",
        description="The forecast's per-run P10–P90 band, its mean and the actual mean spend per "
        "run in the window; the table below has the figures.",
        ident="forecast-run",
        band_label="P10–P90",
        mid_label="mean",
        actual_label="actual mean",
        fmt=usd,
    )
    ref = found.inputs.get("reflection_expansion_factor")
    errors = found.inputs.get("error_probability")
    retries = found.inputs.get("retry_multiplier")
    return {
        "asked": True,
        "insufficient": False,
        "error": None,
        "runs": runs,
        "observations": found.observations_used,
        "calibrated_since": first.strftime("%Y-%m-%d %H:%M UTC"),
        "total": {
            "p10": usd(found.total_p10),
            "expected": usd(found.total_expected),
            "p50": usd(found.total_p50),
            "p90": usd(found.total_p90),
            "actual": usd(actual),
            "within": actual is not None and found.total_p10 <= actual <= found.total_p90,
        },
        "per_run": {
            "p10": usd(found.per_run_p10),
            "mean": usd(found.per_run_mean),
            "p50": usd(found.per_run_p50),
            "p90": usd(found.per_run_p90),
            "actual": usd(per_run),
        },
        "per_completed": usd(found.per_completed_run_mean),
        "per_completed_actual": usd(unit.per_completed_run if unit else None),
        "completion_rate": f"{found.completion_rate * 100:.0f}%",
        "total_chart": total_chart,
        "run_chart": run_chart,
        "retries": {
            "extra": f"{(ref.pooled - 1) * 100:.1f}%" if ref else "—",
            "error_rate": f"{errors.pooled:.3f}" if errors else "—",
            "per_error": f"{retries.pooled:.2f}" if retries else "—",
        },
    }
