"""The demo's HTML report: one self-contained page with SVG charts, no scripts, no downloads."""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from keel.demo.runner import DemoReport

__all__ = ["bar_chart", "write_html"]

_COLORS = {
    "completed": "#2e7d32",
    "failed": "#c62828",
    "escalated": "#6a1b9a",
    "parked": "#ef6c00",
    "killed": "#37474f",
    "waiting": "#f9a825",
}


def bar_chart(
    title: str, rows: Sequence[tuple[str, float]], *, unit: str = "", width: int = 560
) -> str:
    """A horizontal bar chart as inline SVG."""
    height = 28 * len(rows) + 36
    peak = max((v for _, v in rows), default=0) or 1
    label_width = min(int(max((len(label) for label, _ in rows), default=8) * 7.4) + 12, 360)
    width = max(width, label_width + 300)
    parts = [
        f'<svg role="img" aria-label="{html.escape(title)}" width="{width}" '
        f'height="{height}" xmlns="http://www.w3.org/2000/svg">',
        f'<text x="0" y="16" font-weight="bold">{html.escape(title)}</text>',
    ]
    for i, (label, value) in enumerate(rows):
        y = 30 + 28 * i
        bar = max(int((width - label_width - 110) * value / peak), 1)
        color = _COLORS.get(label, "#1565c0")
        shown = f"{value:,.6f}" if unit == "$" else f"{value:,.0f}"
        parts.append(
            f'<text x="0" y="{y + 15}" font-size="13">{html.escape(label)}</text>'
            f'<rect x="{label_width}" y="{y}" width="{bar}" height="20" fill="{color}"/>'
            f'<text x="{label_width + 8 + bar}" y="{y + 15}" font-size="13">{unit}{shown}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def write_html(report: DemoReport, path: Path) -> None:
    sections: list[str] = []
    for workflow, counts in report.runs.items():
        sections.append(bar_chart(f"{workflow}: runs by outcome", sorted(counts.items())))
    sections.append(
        bar_chart(
            "cost per completed unit of work (USD)",
            [(w, float(report.per_completed(w))) for w in report.runs],
            unit="$",
        )
    )
    sections.append(bar_chart("calls stopped, by rule", report.stops.most_common(10)))
    sections.append(bar_chart("approvals", report.approvals.most_common()))
    bt = report.backtest
    if bt is not None:
        fc = bt.forecast
        sections.append(
            bar_chart(
                f"forecast vs actual, {bt.test_runs} held-out tickets (USD)",
                [
                    ("forecast P10", float(fc.total_p10)),
                    ("forecast P50", float(fc.total_p50)),
                    ("forecast P90", float(fc.total_p90)),
                    ("actual", float(bt.actual_total)),
                ],
                unit="$",
            )
        )
    audit = report.audit
    verdict = (
        f"Audit chain verified: {audit.records_checked} records."
        if audit is not None and audit.ok
        else f"Audit chain BROKEN: {audit.problem if audit else 'not checked'}"
    )
    crash = report.crash
    crash_text = (
        f"The worker was killed with SIGKILL after {crash.get('killed_after')} runs had ended; "
        f"a new worker recovered {crash.get('recovered', 0)} run(s). Duplicate effects: "
        f"{report.duplicates}."
        if crash
        else "No crash was injected."
    )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Keel demo report</title>
<style>body{{font-family:system-ui,sans-serif;max-width:64rem;margin:2rem auto;padding:0 1rem}}
section{{margin:1.5rem 0}}</style></head>
<body><h1>Keel demo report</h1>
<p>{html.escape(verdict)}</p><p>{html.escape(crash_text)}</p>
{"".join(f"<section>{s}</section>" for s in sections)}
</body></html>
"""
    path.write_text(page, encoding="utf-8")
