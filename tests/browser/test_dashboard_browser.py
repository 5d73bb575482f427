"""The dashboard in a real browser: Debian's Chromium driven by Playwright (no browser download:
``executable_path=/usr/bin/chromium``). Screenshots of each screen go to
``artifacts/screenshots/`` for a person to look at."""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from keel import App, KeelConfig
from keel.testing import RecordingTool

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
try:
    from playwright.sync_api import Page, sync_playwright
except ImportError:  # pragma: no cover - the test extra installs it
    sync_playwright = None  # type: ignore[assignment]

if os.environ.get("KEEL_REQUIRE_BROWSER") and (CHROMIUM is None or sync_playwright is None):
    raise RuntimeError("KEEL_REQUIRE_BROWSER is set (CI) but chromium or playwright is missing")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or sync_playwright is None,
    reason="needs Debian's chromium (apt-get install chromium chromium-driver; .ci/run does) "
    "and the playwright package (the test extra)",
)

SHOTS = Path(__file__).resolve().parents[2] / "artifacts" / "screenshots"
POLICY = """
policy: browser
scope: {tenant: acme}
tools: {allow: [billing.refund]}
approvers: [finance]
require_approval_if_over: {billing.refund: 100}
"""


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[App, str]]:
    from server._serving import serving

    with App(KeelConfig(store_url=f"sqlite:///{tmp_path}/k.db", home=tmp_path / "home")) as keel:
        keel.add_policy(POLICY)
        keel.register(RecordingTool("billing.refund", scope="billing:write", effect="irreversible"))

        @keel.workflow("refund", agent="refund-bot", scopes=["billing:write"], tenant="acme")
        async def refund(run: Any, data: Any) -> dict[str, Any]:
            await run.tool("billing.refund", {"order_id": data["order_id"], "amount": 250})
            return {"refunded": 250}

        with serving(keel) as base:
            yield keel, base


@contextlib.contextmanager
def _worker(keel: App) -> Iterator[None]:
    """A workflow worker beside the server, as ``keel worker`` would run."""
    stop = threading.Event()
    worker = keel.runtime.worker()

    def loop() -> None:
        while not stop.is_set():
            if worker.run_once() is None:
                stop.wait(0.05)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(30)


@pytest.fixture
def page() -> Iterator[Page]:
    assert sync_playwright is not None and CHROMIUM is not None
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        context = browser.new_context(viewport={"width": 1366, "height": 860})
        try:
            yield context.new_page()
        finally:
            context.close()
            browser.close()


def _pending(keel: App) -> str:
    from keel.errors import ApprovalRequired
    from keel.gateway import CallRequest

    token = keel.mint_token("refund-bot", tenant="acme", scopes=["billing:write"])
    try:
        keel.call(
            CallRequest(
                tool="billing.refund", arguments={"order_id": "A-7", "amount": 250}, token=token
            )
        )
    except ApprovalRequired as exc:
        return str(exc.context["approval_id"])
    raise AssertionError("the refund should have waited for approval")


def _login(page: Page, base: str, key: str) -> None:
    page.goto(f"{base}/approvals")
    page.get_by_label("Operator API key").fill(key)
    with page.expect_navigation():  # the form's answer has loaded before the test goes on
        page.keyboard.press("Enter")  # keyboard only: the form submits on Enter


def _shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def test_an_approver_approves_a_waiting_refund_in_the_browser(
    served: tuple[App, str], page: Any
) -> None:
    keel, base = served
    approval_id = _pending(keel)
    key, _ = keel.operator_keys.create("Ana", "approver", labels=("finance",))
    page.goto(base)
    _shot(page, "login")
    _login(page, base, key)
    card = page.locator(f"section#{approval_id}")
    card.wait_for()
    assert "billing.refund" in card.inner_text() and "250" in card.inner_text()
    _shot(page, "approvals")
    card.get_by_label("Note").fill("customer verified")
    card.get_by_role("button", name="Approve").click()
    page.get_by_role("status").wait_for()
    assert "approved" in page.get_by_role("status").inner_text()
    assert keel.approvals.get(approval_id).status == "approved"
    assert page.locator(f"section#{approval_id}").count() == 0
    _shot(page, "approvals-after")


def test_a_viewer_cannot_approve_in_the_browser(served: tuple[App, str], page: Any) -> None:
    keel, base = served
    approval_id = _pending(keel)
    key, _ = keel.operator_keys.create("Vic", "viewer")
    _login(page, base, key)
    card = page.locator(f"section#{approval_id}")
    card.wait_for()
    assert card.get_by_role("button", name="Approve").count() == 0
    assert "can look but not decide" in card.inner_text()
    assert keel.approvals.get(approval_id).status == "pending"


def test_a_wrong_key_is_refused_in_the_browser(served: tuple[App, str], page: Any) -> None:
    _keel, base = served
    _login(page, base, "keel_op_0123456789abcdef_" + "x" * 43)
    status = page.get_by_role("status")
    status.wait_for()
    assert "wrong" in status.inner_text()
    assert page.url.startswith(f"{base}/login")


def test_an_operator_flips_a_kill_switch_and_the_next_call_is_denied(
    served: tuple[App, str], page: Any
) -> None:
    from keel.errors import KillSwitchEngaged
    from keel.gateway import CallRequest

    keel, base = served
    key, _ = keel.operator_keys.create("Oli", "operator")
    _login(page, base, key)
    page.get_by_role("link", name="Kill switches").click()
    page.get_by_label("Level").select_option("tool")
    page.get_by_label("Target").fill("billing.refund")
    page.get_by_label("Reason", exact=True).fill("incident 42")
    page.get_by_role("button", name="Engage").click()  # unconfirmed: the form does not submit
    assert keel.kill_switches.list() == []
    page.get_by_label("Stop these calls now").check()
    page.get_by_role("button", name="Engage").click()
    status = page.get_by_role("status")
    status.wait_for()
    assert "engaged" in status.inner_text()
    assert "billing.refund" in page.locator("table").inner_text()
    _shot(page, "kill-switches")
    token = keel.mint_token("refund-bot", tenant="acme", scopes=["billing:write"])
    with pytest.raises(KillSwitchEngaged):
        keel.call(
            CallRequest(
                tool="billing.refund", arguments={"order_id": "A-8", "amount": 5}, token=token
            )
        )


def test_policies_screen_explains_a_pasted_call(served: tuple[App, str], page: Any) -> None:
    keel, base = served
    key, _ = keel.operator_keys.create("Sec", "viewer")
    _login(page, base, key)
    page.get_by_role("link", name="Policies").click()
    page.get_by_label("The call, as JSON").fill(
        '{"tool": "billing.refund", "arguments": {"order_id": "A-1", "amount": 500}, '
        '"agent": "refund-bot", "tenant": "acme"}'
    )
    page.get_by_role("button", name="Explain").click()
    verdict = page.locator("#verdict")
    verdict.wait_for()
    assert "require_approval" in verdict.inner_text()
    _shot(page, "policies")


def test_a_running_workflow_waits_is_approved_in_the_browser_and_completes(
    served: tuple[App, str], page: Any
) -> None:
    keel, base = served
    key, _ = keel.operator_keys.create("Ana", "approver", labels=("finance",))
    with _worker(keel):
        run = keel.runtime.submit("refund", {"order_id": "W-3"}, on_behalf_of="dana@example.com")
        for _ in range(400):
            if keel.runtime.get(run.run_id).status == "waiting":
                break
            time.sleep(0.05)
        assert keel.runtime.get(run.run_id).status == "waiting"
        _login(page, base, key)
        card = page.locator("section.card", has_text=run.run_id)
        card.wait_for()
        assert "dana@example.com" in card.inner_text()
        card.get_by_label("Note").fill("order checked")
        card.get_by_role("button", name="Approve").click()
        page.get_by_role("status").wait_for()
        page.goto(f"{base}/runs/{run.run_id}")
        # The run page refreshes itself while the run is active (static/live.js).
        page.locator("h1 .badge.completed").wait_for(timeout=20_000)
        step = page.locator("li.step", has_text="billing.refund")
        text = step.inner_text()
        assert "ran after approval" in text
        assert "approve by Ana" in text and "order checked" in text
        _shot(page, "run-timeline")
    assert keel.runtime.get(run.run_id).status == "completed"


@pytest.fixture(scope="module")
def demo_served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[App, str]]:
    """The demo's own data (``keel demo``: 250 runs, approvals, denials, spend), served."""
    import subprocess
    import sys

    from keel.demo.workflows import build_demo_app
    from server._serving import serving

    folder = tmp_path_factory.mktemp("demo") / "keel-demo"
    subprocess.run(
        [sys.executable, "-m", "keel", "demo", "--dir", str(folder), "--quiet"],
        check=True,
        stdout=subprocess.DEVNULL,
        timeout=300,
    )
    with build_demo_app(folder) as keel, serving(keel) as base:
        yield keel, base


def test_the_demo_tells_security_who_approved_what_and_finance_what_a_unit_costs(
    demo_served: tuple[App, str], page: Any
) -> None:
    from keel.audit import query

    keel, base = demo_served
    key, _ = keel.operator_keys.create("Sam", "admin")
    _login(page, base, key)
    # Security: a refund that waited for approval, who decided and why, on the run's timeline.
    (request,) = query(keel.store, decision="approval.approve", limit=1)
    run_id = request.entry.run_id
    page.goto(f"{base}/runs/{run_id}")
    step = page.locator(f"#step-{request.entry.step_id}")
    step.wait_for()
    text = step.inner_text()
    assert "approve by" in text and str(request.entry.body["actor"]) in text
    _shot(page, "run-demo-approved")
    page.goto(f"{base}/audit?rule_id={request.entry.rule_id}")
    records = page.locator("table.records").inner_text()
    assert f"by {request.entry.body['actor']}" in records  # who approved, on the record's row
    _shot(page, "audit")
    page.get_by_role("button", name="Verify now").click()
    page.locator("#verification").wait_for()
    assert "the log is intact" in page.locator("#verification").inner_text()
    _shot(page, "audit-verified")
    # Finance: cost per completed ticket, the spread, and what the next runs will cost.
    page.goto(f"{base}/spend?workflow=support&window=24h")
    units = page.locator("#units").inner_text()
    assert "support" in units and "$" in units
    page.get_by_role("button", name="Compute the forecast").click()
    page.locator("#forecast-ahead-table").wait_for()
    assert "Next 1,000 runs" in page.locator("#forecast-ahead-table").inner_text()
    _shot(page, "spend")
    page.get_by_role("link", name="Health").click()
    page.locator("#h-runs").wait_for()
    _shot(page, "health")
    page.get_by_role("link", name="Runs").click()
    _shot(page, "runs")
