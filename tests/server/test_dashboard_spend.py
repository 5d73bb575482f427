"""The Spend screen over real HTTP: figures from governed calls and workflow runs, tenant
isolation, SVG charts with tables, the forecast on request, and bad filters answered clearly."""

from __future__ import annotations

import datetime as _dt
import html
import re
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from keel import App, KeelConfig
from keel.ledger import MIN_OBSERVATIONS
from keel.server.dashboard.site import usd
from keel.testing import FrozenClock, RecordingTool, ScriptedModel

from ._serving import serving

ACME = """
policy: spend
scope: {tenant: acme}
tools: {allow: [search.web, translate.text]}
models: {allow: ["scripted-*"]}
caps:
  - {id: acme-day, per: [tenant], window: day, max_usd: 30}
  - {id: per-flow, per: [workflow], max_usd: 500}
"""
GLOBEX = """
policy: globex
scope: {tenant: globex}
tools: {allow: [search.web]}
caps:
  - {id: globex-day, per: [tenant], window: day, max_usd: 30}
"""
MODELS = {"prices": {"scripted:*": {"input": "1.00", "output": "2.00"}}}
JAN1 = _dt.datetime(2026, 1, 1, tzinfo=_dt.UTC)
DEC30 = JAN1 - _dt.timedelta(days=2)


class Site:
    """A served App with priced tools, a priced model, two workflows and two tenants' caps."""

    def __init__(self, keel: App, clock: FrozenClock, base: str) -> None:
        self.keel = keel
        self.clock = clock
        self.base = base
        self.clients: list[httpx.Client] = []

    def login(self, role: str = "viewer", **options: Any) -> httpx.Client:
        text, _record = self.keel.operator_keys.create(f"{role}-person", role, **options)
        client = httpx.Client(base_url=self.base, follow_redirects=False)
        self.clients.append(client)
        answer = client.post("/login", data={"key": text, "next": "/spend"})
        assert answer.status_code == 303 and answer.headers["location"] == "/spend"
        return client

    def runs(self, workflow: str, count: int, **data: Any) -> None:
        for _ in range(count):
            self.keel.runtime.submit(workflow, data)
        self.keel.runtime.worker().drain()

    def calls(self, agent: str, tenant: str, count: int) -> None:
        """``count`` direct calls of search.web (0.25 each), outside any workflow."""
        token = self.keel.mint_token(agent, tenant=tenant, scopes=["search:run"])
        for i in range(count):
            answer = httpx.post(
                f"{self.base}/v1/calls",
                json={"tool": "search.web", "arguments": {"q": str(i)}},
                headers={"Authorization": f"Bearer {token}"},
            )
            assert answer.status_code == 200, answer.text

    def spent(self, **filters: Any) -> Decimal:
        return self.keel.ledger.spend_by(**filters).spent_usd


@pytest.fixture
def site(tmp_path: Path, store_url: str) -> Iterator[Site]:
    clock = FrozenClock(JAN1)
    config = KeelConfig(store_url=store_url, home=tmp_path / "home", models=MODELS)
    with App(config, clock=clock) as keel:
        keel.add_policy(ACME)
        keel.add_policy(GLOBEX)
        keel.register(RecordingTool("search.web", scope="search:run", cost_usd="0.25"))
        keel.register(RecordingTool("translate.text", scope="translate:run", cost_usd="1.50"))
        keel.add_model("scripted-small", ScriptedModel(default="a short digest"))

        @keel.workflow(
            "research",
            agent="research-bot",
            scopes=["search:run", "translate:run"],
            tenant="acme",
        )
        async def research(run: Any, data: Any) -> str:
            await run.tool("search.web", {"q": "a"})
            if data.get("give_up"):
                run.escalate("nothing found")
            await run.tool("search.web", {"q": "b"})
            await run.tool("translate.text", {"text": "c"})
            return "done"

        @keel.workflow("digest", agent="digest-bot", scopes=["models:invoke"], tenant="acme")
        async def digest(run: Any, data: Any) -> str:
            answer = await run.model(
                {
                    "model": "scripted-small",
                    "messages": [{"role": "user", "content": "sum up"}],
                    "max_tokens": 20,
                }
            )
            return str(answer["choices"][0]["text"])

        with serving(keel) as base:
            served = Site(keel, clock, base)
            try:
                yield served
            finally:
                for client in served.clients:
                    client.close()


@pytest.fixture
def history(site: Site) -> Site:
    """Research: a completed run on Dec 30, three completed and one escalated on Jan 1; two
    digest runs (a model call each); one direct acme call; four globex calls."""
    site.clock.set(DEC30)
    site.runs("research", 1)
    site.clock.set(JAN1)
    site.runs("research", 3)
    site.runs("research", 1, give_up=True)
    site.runs("digest", 2)
    site.calls("searcher", "acme", 1)
    site.calls("globex-bot", "globex", 4)
    return site


def _text(page: str, ident: str) -> str:
    """The text of the element with ``id=ident`` (tags removed, spaces collapsed)."""
    match = re.search(rf'<(\w+)[^>]*\bid="{ident}"[^>]*>(.*?)</\1>', page, re.S)
    assert match is not None, f"no #{ident}"
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", match.group(2)))
    return html.unescape(text).strip()


def _row(page: str, table: str, *first_cells: str) -> list[str]:
    """The cells of the row of table ``#table`` that begins with ``first_cells``."""
    match = re.search(rf'id="{table}".*?</table>', page, re.S)
    assert match is not None, f"no table #{table}"
    for row in re.findall(r"<tr[^>]*>(.*?)</tr>", match.group(0), re.S):
        cells = [
            html.unescape(re.sub(r"<[^>]+>", "", c)).strip()
            for c in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row, re.S)
        ]
        if tuple(cells[: len(first_cells)]) == first_cells:
            return cells
    raise AssertionError(f"no row {first_cells!r} in #{table}")


def test_the_screen_shows_spend_per_workflow_and_its_cost_per_completed_run(
    history: Site,
) -> None:
    client = history.login("viewer", tenant="acme")
    answer = client.get("/spend")
    assert answer.status_code == 200, answer.text
    page = answer.text
    acme = history.spent(tenant="acme")
    model = history.spent(tenant="acme", target="scripted-small")
    assert model > 0
    assert acme == Decimal("8.25") + model + Decimal("0.25")
    assert _text(page, "total-spent") == usd(acme)
    # Cost per completed run: research's runs in the last 7 days (Dec 26 to Jan 1).
    assert _row(page, "units", "research") == [
        "research",
        "5",  # runs started
        "4",  # completed
        "$8.00",
        "$2.00",  # per completed run
        "$0.25",  # the escalated run's search
        "$2.06",  # 8.25 / 4
    ]
    digest = _row(page, "units", "digest")
    per_digest = (model / 2).quantize(Decimal("0.000001"))
    assert digest[1:3] == ["2", "2"] and digest[4] == usd(per_digest)
    # Top cost drivers: models and tools, with their kind.
    assert _row(page, "targets", "search.web")[1:3] == ["tool", "$2.50"]  # 10 calls
    assert _row(page, "targets", "translate.text")[1:3] == ["tool", "$6.00"]
    assert _row(page, "targets", "scripted-small")[1:3] == ["model", usd(model)]
    assert _row(page, "workflows", "research")[1] == "$8.25"
    assert _row(page, "workflows", "(outside any workflow)")[1] == "$0.25"
    # Per day: Dec 30 and Jan 1, with the running total.
    assert _row(page, "spend-series", "2025-12-30")[1:3] == ["$2.00", "$2.00"]
    assert _row(page, "spend-series", "2026-01-01")[1:3] == [usd(acme - 2), usd(acme)]
    assert _row(page, "spend-series", "2025-12-31")[1] == "$0.00"
    # Budgets: today's day cap and the lifetime cap per workflow.
    day_cap = _row(page, "caps", "spend#acme-day")
    assert day_cap[3].startswith("2026-01-01") and day_cap[4] == usd(acme - 2)
    assert day_cap[6] == "$30.00"
    per_flow = _row(page, "caps", "spend#per-flow", "acme", "workflow research")
    assert per_flow[3:7] == ["since the cap was set", "$8.25", "$0.00", "$500.00"]
    outside = _row(page, "caps", "spend#per-flow", "acme", "workflow (outside any workflow)")
    assert outside[4] == "$0.25"
    assert "Retries" in page and "cannot be told apart" in page


def test_one_workflow_selected_and_the_24_hour_window(history: Site) -> None:
    client = history.login("viewer")
    page = client.get("/spend", params={"workflow": "research", "window": "24h"}).text
    assert _text(page, "total-spent") == "$6.25"  # Jan 1 only: 3 × 2.00 + 0.25
    assert _row(page, "units", "research")[1:5] == ["4", "3", "$6.00", "$2.00"]
    assert 'class="selected"' in page
    assert _text(page, "spread").startswith("Completed runs of research: P50 $2.00, P90 $2.00")
    assert len(re.findall(r"<tr><th scope=\"row\">2026-01-01 00:00", page)) == 1
    assert _row(page, "spend-series", "2026-01-01 00:00")[1] == "$6.25"
    assert _row(page, "targets", "translate.text")[2] == "$4.50"
    assert "scripted-small" not in _text(page, "targets")  # the digest's model is not research's


def test_a_tenant_key_sees_its_tenant_only(history: Site) -> None:
    own = history.login("viewer", tenant="acme")
    page = own.get("/spend").text
    assert "globex" not in page
    assert 'id="f-tenant"' not in page  # no tenant to choose
    assert 'id="tenants"' not in page
    other = own.get("/spend", params={"tenant": "globex"})
    assert other.status_code == 404
    assert "No tenant &#39;globex&#39; for this key." in other.text
    assert "globex" not in other.text.replace("No tenant &#39;globex&#39;", "")
    assert own.get("/spend", params={"tenant": "acme"}).status_code == 200
    outsider = history.login("viewer", tenant="globex")
    theirs = outsider.get("/spend").text
    assert _text(theirs, "total-spent") == "$1.00"
    assert "research" not in theirs and "acme" not in theirs
    assert outsider.get("/spend", params={"workflow": "research"}).status_code == 400


def test_a_key_for_every_tenant_chooses_one(history: Site) -> None:
    client = history.login("viewer")
    page = client.get("/spend").text
    everyone = history.spent()
    assert _text(page, "total-spent") == usd(everyone)
    assert _row(page, "tenants", "globex")[1] == "$1.00"
    assert _row(page, "tenants", "acme")[1] == usd(everyone - 1)
    assert 'id="f-tenant"' in page and '<option value="globex"' in page
    globex = client.get("/spend", params={"tenant": "globex"}).text
    assert _text(globex, "total-spent") == "$1.00"
    assert _row(globex, "caps", "globex#globex-day")[4] == "$1.00"
    assert "spend#acme-day" not in globex
    nobody = client.get("/spend", params={"tenant": "initech"})
    assert nobody.status_code == 200 and _text(nobody.text, "total-spent") == "$0.00"


def test_charts_are_svg_with_titles_and_tables_and_no_inline_style(history: Site) -> None:
    client = history.login("viewer", tenant="acme")
    answer = client.get("/spend")
    page = answer.text
    charts = re.findall(r"<svg [^>]*>", page)
    assert len(charts) == 2  # over time, drivers (the forecast is on request)
    assert all('role="img"' in svg and "aria-labelledby" in svg for svg in charts)
    assert '<title id="spend-over-time-title">Spend per day, last 7 days</title>' in page
    assert 'class="rule"' in page  # the daily cap of the key's tenant, as a dashed line
    assert "spend#acme-day (acme) a day: $30.00" in page
    assert 'class="bar"' in page and 'class="line"' in page
    assert "style=" not in page
    assert re.search(r"<script(?![^>]*\bsrc=)", page) is None  # no inline script
    assert "/static/spend.css" in page
    assert "style-src 'self'" in answer.headers["content-security-policy"]
    css = client.get("/static/spend.css")
    assert css.status_code == 200 and "svg.chart" in css.text


def test_an_empty_store_shows_an_empty_screen(site: Site) -> None:
    client = site.login("viewer")
    answer = client.get("/spend")
    assert answer.status_code == 200, answer.text
    page = answer.text
    assert _text(page, "total-spent") == "$0.00"
    assert "No data" in page and "No spend in this window." in page
    assert "No run started in this window." in page
    assert "No dollar cap per tenant or workflow applies here." in page
    assert "Choose a workflow" in page


@pytest.mark.parametrize(
    ("query", "status", "message"),
    [
        ({"window": "1y"}, 400, "The window must be one of 24h, 7d, 30d; got &#39;1y&#39;."),
        ({"workflow": "nope"}, 400, "No workflow named &#39;nope&#39; is registered"),
        ({"workflow": "a\x00b"}, 400, "workflow must be 1 to 200 printable characters."),
        ({"tenant": "x" * 201}, 400, "tenant must be 1 to 200 printable characters."),
    ],
)
def test_bad_filters_get_a_clear_message(
    history: Site, query: dict[str, str], status: int, message: str
) -> None:
    client = history.login("viewer")
    answer = client.get("/spend", params=query)
    assert answer.status_code == status, answer.text
    assert message in answer.text
    assert 'id="f-window"' in answer.text  # the filters stay, to correct them
    assert 'id="total-spent"' not in answer.text


def test_registered_workflows_and_windows_are_offered(history: Site) -> None:
    client = history.login("viewer")
    page = client.get("/spend").text
    options = re.findall(r'<option value="([^"]*)"', page)
    assert {"research", "digest"} <= set(options)
    assert {"24h", "7d", "30d"} <= set(options)


def test_logged_out_goes_to_the_login_form(site: Site) -> None:
    with httpx.Client(base_url=site.base, follow_redirects=False) as client:
        answer = client.get("/spend")
    assert answer.status_code == 303 and answer.headers["location"] == "/login?next=/spend"


def test_the_forecast_is_computed_on_request_and_says_when_history_is_short(
    history: Site,
) -> None:
    client = history.login("viewer", tenant="acme")
    page = client.get("/spend", params={"workflow": "research"}).text
    assert "Compute the forecast" in page and 'name="forecast" value="1"' in page
    assert 'id="forecast-total-title"' not in page
    asked = client.get("/spend", params={"workflow": "research", "forecast": "1"})
    assert asked.status_code == 200
    assert _text(asked.text, "forecast-missing") == (
        "Not enough history to forecast research: 0 runs recorded before this window, and a "
        f"forecast needs at least {MIN_OBSERVATIONS}."
    )
    # The run of Dec 30 is before the last 24 hours: one run of history.
    day = client.get("/spend", params={"workflow": "research", "forecast": "1", "window": "24h"})
    assert "1 run recorded before this window" in _text(day.text, "forecast-missing")
    assert "Too few recorded runs of research" in _text(day.text, "forecast-ahead-missing")


def test_the_forecast_band_next_to_the_actual(site: Site) -> None:
    """Calibrated on the runs before the window (two days, under the daily cap on each), for
    the runs started in it."""
    half = MIN_OBSERVATIONS // 2
    for days_ago, count in ((13, MIN_OBSERVATIONS - half), (12, half)):
        site.clock.set(JAN1 - _dt.timedelta(days=days_ago))
        site.runs("research", count)
    site.clock.set(JAN1)
    site.runs("research", 4)
    site.runs("research", 1, give_up=True)
    client = site.login("viewer", tenant="acme")
    week = client.get("/spend", params={"workflow": "research", "forecast": "1"}).text
    assert _row(week, "forecast", "5 runs") == ["5 runs", *["$10.00"] * 4, "$8.25"]
    assert _row(week, "forecast", "Per run") == ["Per run", *["$2.00"] * 4, "$1.65"]
    assert _row(week, "forecast", "Per completed run")[2::3] == ["$2.00", "$2.00"]
    assert "The actual total is outside the P10–P90 band." in week
    assert f"calibrated on the {MIN_OBSERVATIONS} latest runs of research started" in week
    assert '<title id="forecast-total-title">' in week and 'class="actual"' in week
    assert "retries added" in _text(week, "retries")
    # Over 30 days the window holds every run, and none is left before it to calibrate on;
    # what the next runs will cost is still forecast, from the latest runs.
    month = client.get("/spend", params={"workflow": "research", "forecast": "1", "window": "30d"})
    assert "0 runs recorded before this window" in month.text
    ahead = _row(month.text, "forecast-ahead-table", "Next 1,000 runs")
    assert ahead[0] == "Next 1,000 runs" and all(cell.startswith("$") for cell in ahead[1:])
    assert "forecast-ahead-title" in month.text
