"""The dashboard's SVG charts: well-formed, accessible, escaped, and sane on degenerate data."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from decimal import Decimal

import pytest
from markupsafe import Markup

from keel.server.dashboard import charts
from keel.server.dashboard.charts import RangeRow, Rule, bar_chart, range_chart, time_chart

NS = "{http://www.w3.org/2000/svg}"
NASTY = "<script>alert('x')</script> & \"quoted\""
GEOMETRY = ("x", "y", "x1", "x2", "y1", "y2", "cx", "cy", "r", "width", "height")


def _parse(svg: Markup) -> ET.Element:
    assert isinstance(svg, Markup)
    root = ET.fromstring(str(svg))  # well-formed XML, or this raises
    assert root.tag == f"{NS}svg"
    return root


def _all(root: ET.Element, tag: str, css: str | None = None) -> list[ET.Element]:
    found = root.iter(f"{NS}{tag}")
    return [e for e in found if css is None or css in (e.get("class") or "").split()]


def _numbers(root: ET.Element) -> list[float]:
    """Every coordinate and size drawn (points of polylines and polygons included)."""
    values: list[float] = []
    for element in root.iter():
        values += [float(element.get(a, "0")) for a in GEOMETRY if a in element.attrib]
        for pair in (element.get("points") or "").split():
            values += [float(v) for v in pair.split(",")]
    return values


def _inside(root: ET.Element) -> None:
    _, _, width, height = (float(v) for v in root.get("viewBox", "").split())
    for value in _numbers(root):
        assert math.isfinite(value) and -1 <= value <= max(width, height) + 1, value


def _accessible(root: ET.Element, title: str) -> None:
    assert root.get("role") == "img"
    ident_title, ident_desc = (root.get("aria-labelledby") or "").split()
    assert root.find(f"{NS}title[@id='{ident_title}']") is not None
    assert root.find(f"{NS}desc[@id='{ident_desc}']") is not None
    assert root.findtext(f"{NS}title") == title


def test_a_time_chart_has_a_bar_a_point_and_a_label_per_bucket() -> None:
    labels = [f"Jan {d:02d}" for d in range(1, 8)]
    spend = [Decimal(v) for v in ("1.5", "0", "2.25", "3", "0.5", "0", "4")]
    running = [sum(spend[: i + 1], Decimal(0)) for i in range(7)]
    root = _parse(
        time_chart(
            labels,
            bars=spend,
            line=running,
            rules=[Rule("daily cap", Decimal(5))],
            title="Spend per day",
            description="Bars per day, a cumulative line and a cap.",
            ident="spend",
        )
    )
    _accessible(root, "Spend per day")
    bars = _all(root, "rect", "bar")
    bars = [b for b in bars if "key" not in (b.get("class") or "")]
    assert len(bars) == 7
    assert [b.findtext(f"{NS}title") for b in bars][:3] == [
        "Jan 01: 1.5",
        "Jan 02: 0",
        "Jan 03: 2.25",
    ]
    heights = [float(b.get("height", "0")) for b in bars]
    assert heights[1] == 0 and heights[6] > heights[3] > heights[0] > 0
    assert math.isclose(heights[3] / heights[0], 2.0, rel_tol=0.01)  # to scale
    (polyline,) = _all(root, "polyline", "line")
    assert len((polyline.get("points") or "").split()) == 7
    assert len(_all(root, "circle", "point")) == 7
    (rule,) = _all(root, "line", "rule")
    assert rule.findtext(f"{NS}title") == "daily cap: 5"
    ticks = [t.text for t in _all(root, "text", "tick")]
    assert "Jan 01" in ticks and "0" in ticks
    _inside(root)


def test_every_text_is_escaped() -> None:
    svg = time_chart(
        [NASTY, "b"],
        bars=[1, 2],
        line=[1, 3],
        rules=[Rule(NASTY, 2)],
        title=NASTY,
        description=NASTY,
        ident='x" onload="alert(1)',
        bar_label=NASTY,
        fmt=lambda v: f"<{v}>",
    )
    for chart in (
        svg,
        bar_chart([(NASTY, 3)], title=NASTY, description=NASTY, ident="b", fmt=lambda v: "<&>"),
        range_chart([RangeRow(NASTY, 1, 2, 3, 4)], title=NASTY, description=NASTY, ident="r"),
    ):
        root = _parse(chart)
        text = str(chart)
        assert "<script>" not in text and "onload=" not in text.replace("onload=&#34;", "")
        assert "&lt;script&gt;" in text
        assert root.findtext(f"{NS}title") == NASTY  # escaped once, read back as written
        assert not list(root.iter(f"{NS}script"))
    assert 'aria-labelledby="x--onload--alert-1--title' in str(svg)  # the id is sanitized


@pytest.mark.parametrize(
    "chart",
    [
        lambda: time_chart([], bars=[], title="t", description="d", ident="e"),
        lambda: bar_chart([], title="t", description="d", ident="e"),
        lambda: range_chart([], title="t", description="d", ident="e"),
    ],
)
def test_empty_data_draws_a_frame_saying_so(chart: object) -> None:
    root = _parse(chart())  # type: ignore[operator]
    _accessible(root, "t")
    assert [t.text for t in _all(root, "text", "empty")] == ["No data"]
    _inside(root)


def test_one_point() -> None:
    root = _parse(
        time_chart(
            ["only"],
            bars=[Decimal("2.5")],
            line=[Decimal("2.5")],
            band=([Decimal(1)], [Decimal(4)]),
            title="t",
            description="d",
            ident="one",
        )
    )
    assert len([b for b in _all(root, "rect", "bar") if "key" not in b.get("class", "")]) == 1
    assert len(_all(root, "circle", "point")) == 1
    (band,) = _all(root, "polygon", "band")
    assert len((band.get("points") or "").split()) == 4  # a short bar, not a line
    _inside(root)


def test_all_zeros_and_non_numbers_draw_flat_at_zero() -> None:
    for values in ([0, 0, 0], [Decimal("NaN"), float("inf"), None]):
        root = _parse(
            time_chart(
                ["a", "b", "c"],
                bars=values,  # type: ignore[arg-type]
                line=values,  # type: ignore[arg-type]
                title="t",
                description="d",
                ident="zero",
            )
        )
        bars = [b for b in _all(root, "rect", "bar") if "key" not in b.get("class", "")]
        assert [float(b.get("height", "1")) for b in bars] == [0, 0, 0]
        (axis,) = _all(root, "line", "axis")
        ys = {float(c.get("cy", "0")) for c in _all(root, "circle", "point")}
        assert ys == {float(axis.get("y1", "0"))}  # on the zero line
        _inside(root)


def test_huge_and_tiny_values_stay_in_the_frame() -> None:
    for scale in (Decimal("1e30"), Decimal("1e-12"), Decimal(10**15)):
        values = [scale * k for k in (1, 7, 3)]
        root = _parse(
            time_chart(
                ["a", "b", "c"],
                bars=values,
                line=values,
                band=(values, [v * 2 for v in values]),
                rules=[Rule("cap", scale * 9)],
                title="t",
                description="d",
                ident="big",
            )
        )
        _inside(root)
        heights = [
            float(b.get("height", "0"))
            for b in _all(root, "rect", "bar")
            if "key" not in b.get("class", "")
        ]
        assert math.isclose(heights[1] / heights[0], 7, rel_tol=0.01)
        _inside(
            _parse(
                bar_chart([("a", scale), ("b", scale * 3)], title="t", description="d", ident="h")
            )
        )
        _inside(
            _parse(
                range_chart(
                    [RangeRow("r", scale, scale * 2, scale * 3, scale * 5)],
                    title="t",
                    description="d",
                    ident="h",
                )
            )
        )


def test_a_rule_far_above_the_data_is_named_not_drawn() -> None:
    root = _parse(
        time_chart(
            ["a", "b"],
            bars=[1, 2],
            rules=[Rule("near", 5), Rule("far", 1000)],
            title="t",
            description="d",
            ident="rules",
        )
    )
    drawn = [r.findtext(f"{NS}title") for r in _all(root, "line", "rule")]
    assert drawn == ["near: 5"]
    labels = [t.text for t in _all(root, "text", "rule-label")]
    assert "▲ far: 1000 (above the chart)" in labels
    heights = [
        float(b.get("height", "0"))
        for b in _all(root, "rect", "bar")
        if "key" not in b.get("class", "")
    ]
    assert heights[1] > 40  # the far rule does not flatten the bars
    # With nothing spent yet, the cap is drawn to show the room left.
    empty = _parse(
        time_chart(
            ["a"], bars=[0], rules=[Rule("cap", 1000)], title="t", description="d", ident="c"
        )
    )
    assert len(_all(empty, "line", "rule")) == 1


def test_negative_values_get_an_axis_below_zero() -> None:
    root = _parse(time_chart(["a", "b"], bars=[-2, 4], title="t", description="d", ident="neg"))
    bars = [b for b in _all(root, "rect", "bar") if "key" not in b.get("class", "")]
    (axis,) = _all(root, "line", "axis")
    assert float(bars[0].get("y", "0")) < float(axis.get("y1", "0"))  # zero is above the axis
    _inside(root)


def test_bar_chart_rows_are_to_scale_in_order() -> None:
    long_name = "a-very-long-tool-name-that-goes-on-and-on"
    root = _parse(
        bar_chart(
            [("gpt-big", Decimal("9")), (long_name, Decimal("3")), ("free", 0), ("odd", -1)],
            title="Drivers",
            description="d",
            ident="drivers",
            fmt=charts.plain,
        )
    )
    _accessible(root, "Drivers")
    bars = _all(root, "rect", "bar")
    widths = [float(b.get("width", "0")) for b in bars]
    assert widths[2] == widths[3] == 0 and math.isclose(widths[0] / widths[1], 3, rel_tol=0.01)
    assert bars[1].findtext(f"{NS}title") == f"{long_name}: 3"  # the full name
    texts = [t.text or "" for t in _all(root, "text", "tick")]
    assert any(t.endswith("…") and len(t) == 26 for t in texts)
    _inside(root)


def test_range_chart_marks_the_band_the_middle_and_the_actual() -> None:
    root = _parse(
        range_chart(
            [RangeRow("total", 10, 15, 20, 25), RangeRow("pending", 1, 2, 3)],
            title="Forecast",
            description="d",
            ident="fc",
            band_label="P10–P90",
        )
    )
    _accessible(root, "Forecast")
    bands = [b for b in _all(root, "rect", "band") if "key" not in b.get("class", "")]
    assert [b.findtext(f"{NS}title") for b in bands] == [
        "total P10–P90: 10 – 20",
        "pending P10–P90: 1 – 3",
    ]
    x0 = float(bands[0].get("x", "0"))
    width = float(bands[0].get("width", "0"))
    mid, _ = _all(root, "line", "mid")
    assert math.isclose(float(mid.get("x1", "0")), x0 + width / 2, abs_tol=0.02)  # 15: the middle
    (actual,) = _all(root, "circle", "actual")  # only the row with an actual value
    assert float(actual.get("cx", "0")) > x0 + width
    assert actual.findtext(f"{NS}title") == "total actual: 25"
    _inside(root)


def test_plain_format() -> None:
    assert charts.plain(Decimal("1E+2")) == "100"
    assert charts.plain(Decimal("2.50")) == "2.50"
    assert charts.plain(Decimal(0)) == "0"
