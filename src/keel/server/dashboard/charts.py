"""Small SVG charts drawn by the server: no script, no third-party code, nothing inline to style.

- :func:`time_chart`: values over time — bars per bucket, a line (e.g. cumulative), a band
  (low–high per point) and horizontal rules (e.g. a budget cap); a rule far above the data is
  named at the top instead of flattening the chart.
- :func:`bar_chart`: horizontal bars, one labelled row each (e.g. spend per target).
- :func:`range_chart`: one row per comparison: a band (e.g. a forecast's P10–P90) with its
  middle and the actual value as a marker.

Each returns one ``<svg role="img">`` as :class:`markupsafe.Markup`, with a ``<title>`` and
``<desc>`` (the accessible name) and a ``<title>`` on every mark (a tooltip). Every text that goes
in is escaped; geometry uses only numbers computed here. Colours and line styles come from CSS
classes (``static/spend.css``: ``bar``, ``line``, ``band``, ``rule``, ``mid``, ``actual``,
``axis``, ``grid``, ``tick``, ``empty``), since the dashboard's CSP forbids inline styles. A
chart is not the only way to read its data: pages put a table next to each.

Values are Decimal, int or float; a value that is not a finite number is drawn as zero. The
scale always includes zero; empty data draws the frame with a "No data" note.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

from markupsafe import Markup, escape

__all__ = [
    "Format",
    "Number",
    "RangeRow",
    "Rule",
    "bar_chart",
    "plain",
    "range_chart",
    "time_chart",
]

Number = Decimal | int | float
Format = Callable[[Decimal], str]

WIDTH = 720
_LEFT, _RIGHT, _TOP, _BOTTOM = 84, 16, 30, 34
_MAX_X_LABELS = 8
_RULE_HEADROOM = 4  # a rule up to this many times the data's top is drawn to scale
_IDENT = re.compile(r"[^A-Za-z0-9_-]")


def plain(value: Decimal) -> str:
    """The default format: the number as it is (``1234.5``)."""
    return f"{value.normalize():f}" if value == value.to_integral_value() else str(value)


@dataclass(frozen=True, slots=True)
class Rule:
    """A horizontal line across a time chart at ``value`` (a cap), named ``label``."""

    label: str
    value: Number


@dataclass(frozen=True, slots=True)
class RangeRow:
    """One comparison of a range chart: the band ``low``–``high`` with its ``mid`` marked, and
    ``actual`` (None: not known yet)."""

    label: str
    low: Number
    mid: Number
    high: Number
    actual: Number | None = None


def _dec(value: Number | None) -> Decimal:
    """A finite Decimal (anything else is zero)."""
    if value is None or isinstance(value, bool):
        return Decimal(0)
    try:
        number = value if isinstance(value, Decimal) else Decimal(str(value))
    except ArithmeticError:
        return Decimal(0)
    return number if number.is_finite() else Decimal(0)


def _f(number: float) -> str:
    """A coordinate: two decimals at most."""
    return f"{number:.2f}".rstrip("0").rstrip(".")


def _ident(text: str) -> str:
    return _IDENT.sub("-", text)[:60] or "chart"


class _Scale:
    """Values ``lo``..``hi`` (zero included) onto pixels ``top``..``bottom``, with nice ticks."""

    def __init__(self, values: Sequence[Decimal], top: float, bottom: float) -> None:
        lo = min([Decimal(0), *values])
        hi = max([Decimal(0), *values])
        if hi == lo:
            hi = lo + 1
        step = _nice_step(hi - lo)
        self.lo = (lo / step).to_integral_value(ROUND_FLOOR) * step
        self.hi = (hi / step).to_integral_value(ROUND_CEILING) * step
        count = int((self.hi - self.lo) / step)
        self.ticks = [self.lo + step * i for i in range(count + 1)]
        self.top, self.bottom = top, bottom

    def at(self, value: Decimal) -> float:
        share = float((value - self.lo) / (self.hi - self.lo))
        return self.bottom - share * (self.bottom - self.top)


def _nice_step(span: Decimal, count: int = 4) -> Decimal:
    """1, 2 or 5 times a power of ten, about ``span / count``."""
    raw = span / count
    exponent = raw.adjusted()
    base = raw.scaleb(-exponent)
    multiple = next((m for m in (1, 2, 5) if base <= m), 10)
    return Decimal(multiple).scaleb(exponent)


def _svg(ident: str, title: str, description: str, height: float, body: list[str]) -> Markup:
    head = (
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} '
        f'{_f(height)}" role="img" aria-labelledby="{ident}-title {ident}-desc" '
        f'preserveAspectRatio="xMinYMin meet">'
        f'<title id="{ident}-title">{escape(title)}</title>'
        f'<desc id="{ident}-desc">{escape(description)}</desc>'
    )
    return Markup(head + "".join(body) + "</svg>")


def _empty(height: float) -> str:
    return (
        f'<text class="empty" x="{WIDTH // 2}" y="{_f(height / 2)}" '
        'text-anchor="middle">No data</text>'
    )


def _legend(entries: Sequence[tuple[str, str]]) -> list[str]:
    out: list[str] = []
    x = float(_LEFT)
    for css, label in entries:
        out.append(f'<rect class="{css} key" x="{_f(x)}" y="6" width="12" height="12"/>')
        out.append(f'<text class="tick" x="{_f(x + 16)}" y="16">{escape(label)}</text>')
        x += 28 + 7 * len(label)
    return out


def _y_axis(scale: _Scale, fmt: Format, right: float) -> list[str]:
    out: list[str] = []
    for tick in scale.ticks:
        y = _f(scale.at(tick))
        out.append(f'<line class="grid" x1="{_LEFT}" x2="{_f(right)}" y1="{y}" y2="{y}"/>')
        out.append(
            f'<text class="tick" x="{_LEFT - 6}" y="{y}" text-anchor="end" '
            f'dominant-baseline="middle">{escape(fmt(tick))}</text>'
        )
    return out


def time_chart(
    labels: Sequence[str],
    *,
    title: str,
    description: str,
    ident: str,
    bars: Sequence[Number] = (),
    line: Sequence[Number] = (),
    band: tuple[Sequence[Number], Sequence[Number]] | None = None,
    rules: Sequence[Rule] = (),
    bar_label: str = "per bucket",
    line_label: str = "cumulative",
    band_label: str = "band",
    fmt: Format = plain,
    height: int = 260,
) -> Markup:
    """A chart over ``labels`` (one per time bucket): ``bars``, ``line`` and ``band`` (lows,
    highs) each give one value per label (missing values are zero, extra ones ignored)."""
    ident = _ident(ident)
    n = len(labels)
    bar_values = [_dec(bars[i] if i < len(bars) else None) for i in range(n)] if bars else []
    line_values = [_dec(line[i] if i < len(line) else None) for i in range(n)] if line else []
    lows: list[Decimal] = []
    highs: list[Decimal] = []
    if band is not None:
        lows = [_dec(band[0][i] if i < len(band[0]) else None) for i in range(n)]
        highs = [_dec(band[1][i] if i < len(band[1]) else None) for i in range(n)]
    entries = [("bar", bar_label)] if bars else []
    entries += [("line", line_label)] if line else []
    entries += [("band", band_label)] if band is not None else []
    entries += [("rule", rule.label) for rule in rules[:3]]
    body = _legend(entries)
    if n == 0:
        return _svg(ident, title, description, height, [*body, _empty(height)])
    data = [*bar_values, *line_values, *lows, *highs]
    top_of_data = max([Decimal(0), *data])
    shown = [r for r in rules if top_of_data == 0 or _dec(r.value) <= top_of_data * _RULE_HEADROOM]
    above = [r for r in rules if r not in shown]
    right = WIDTH - _RIGHT
    scale = _Scale([*data, *(_dec(r.value) for r in shown)], _TOP, height - _BOTTOM)
    body += _y_axis(scale, fmt, right)
    slot = (right - _LEFT) / n
    every = max(1, math.ceil(n / _MAX_X_LABELS))

    def centre(i: int) -> float:
        return _LEFT + slot * (i + 0.5)

    if band is not None:
        upper = [f"{_f(centre(i))},{_f(scale.at(highs[i]))}" for i in range(n)]
        lower = [f"{_f(centre(i))},{_f(scale.at(lows[i]))}" for i in reversed(range(n))]
        if n == 1:  # a band of one point: a short bar
            half = slot * 0.3
            upper = [f"{_f(centre(0) - half)},{_f(scale.at(highs[0]))}"]
            upper.append(f"{_f(centre(0) + half)},{_f(scale.at(highs[0]))}")
            lower = [f"{_f(centre(0) + half)},{_f(scale.at(lows[0]))}"]
            lower.append(f"{_f(centre(0) - half)},{_f(scale.at(lows[0]))}")
        body.append(f'<polygon class="band" points="{" ".join(upper + lower)}"/>')
    zero = scale.at(Decimal(0))
    for i, value in enumerate(bar_values):
        y = scale.at(value)
        top, size = min(y, zero), abs(zero - y)
        body.append(
            f'<rect class="bar" x="{_f(centre(i) - slot * 0.35)}" y="{_f(top)}" '
            f'width="{_f(slot * 0.7)}" height="{_f(size)}">'
            f"<title>{escape(labels[i])}: {escape(fmt(value))}</title></rect>"
        )
    if line_values:
        points = " ".join(f"{_f(centre(i))},{_f(scale.at(v))}" for i, v in enumerate(line_values))
        body.append(f'<polyline class="line" points="{points}"/>')
        for i, value in enumerate(line_values):
            body.append(
                f'<circle class="line point" cx="{_f(centre(i))}" '
                f'cy="{_f(scale.at(value))}" r="3">'
                f"<title>{escape(labels[i])}: {escape(fmt(value))} ({escape(line_label)})"
                "</title></circle>"
            )
    for rule in shown:
        at = _f(scale.at(_dec(rule.value)))
        body.append(
            f'<line class="rule" x1="{_LEFT}" x2="{_f(right)}" y1="{at}" y2="{at}">'
            f"<title>{escape(rule.label)}: {escape(fmt(_dec(rule.value)))}</title></line>"
        )
        body.append(
            f'<text class="tick rule-label" x="{_f(right - 4)}" y="{at}" dy="-4" '
            f'text-anchor="end">{escape(rule.label)}: {escape(fmt(_dec(rule.value)))}</text>'
        )
    for k, rule in enumerate(above):
        body.append(
            f'<text class="tick rule-label" x="{_f(right - 4)}" y="{_TOP + 12 + 14 * k}" '
            f'text-anchor="end">▲ {escape(rule.label)}: {escape(fmt(_dec(rule.value)))} '
            "(above the chart)</text>"
        )
    base = _f(height - _BOTTOM)
    body.append(f'<line class="axis" x1="{_LEFT}" x2="{_f(right)}" y1="{base}" y2="{base}"/>')
    for i in range(0, n, every):
        body.append(
            f'<text class="tick" x="{_f(centre(i))}" y="{_f(height - _BOTTOM + 16)}" '
            f'text-anchor="middle">{escape(labels[i])}</text>'
        )
    return _svg(ident, title, description, height, body)


def _short(label: str, size: int = 26) -> str:
    return label if len(label) <= size else label[: size - 1] + "…"


def bar_chart(
    rows: Sequence[tuple[str, Number]],
    *,
    title: str,
    description: str,
    ident: str,
    fmt: Format = plain,
) -> Markup:
    """Horizontal bars, one per ``(label, value)`` row, in the order given (longest labels are
    shortened; the full one is the bar's tooltip)."""
    ident = _ident(ident)
    row_height, label_width = 26, 200
    height = _TOP + row_height * max(len(rows), 1) + 10
    if not rows:
        return _svg(ident, title, description, height, [_empty(height)])
    values = [max(_dec(value), Decimal(0)) for _, value in rows]
    top = max(values) or Decimal(1)
    room = WIDTH - _RIGHT - label_width - 110  # space for the value after the bar
    body: list[str] = []
    for i, ((label, _), value) in enumerate(zip(rows, values, strict=True)):
        y = _TOP + row_height * i
        size = float(value / top) * room
        body.append(
            f'<text class="tick" x="{label_width - 8}" y="{_f(y + 13)}" text-anchor="end" '
            f'dominant-baseline="middle">{escape(_short(label))}</text>'
        )
        body.append(
            f'<rect class="bar" x="{label_width}" y="{_f(y + 4)}" width="{_f(size)}" '
            f'height="{row_height - 8}"><title>{escape(label)}: {escape(fmt(value))}</title></rect>'
        )
        body.append(
            f'<text class="tick" x="{_f(label_width + size + 6)}" y="{_f(y + 13)}" '
            f'dominant-baseline="middle">{escape(fmt(value))}</text>'
        )
    return _svg(ident, title, description, height, body)


def range_chart(
    rows: Sequence[RangeRow],
    *,
    title: str,
    description: str,
    ident: str,
    band_label: str = "band",
    mid_label: str = "expected",
    actual_label: str = "actual",
    fmt: Format = plain,
) -> Markup:
    """One row per comparison on one scale: the band, its middle and the actual value."""
    ident = _ident(ident)
    row_height, label_width = 40, 150
    height = _TOP + row_height * max(len(rows), 1) + 30
    right = WIDTH - _RIGHT - 30  # room for the last tick's label
    body = _legend([("band", band_label), ("mid", mid_label), ("actual", actual_label)])
    if not rows:
        return _svg(ident, title, description, height, [*body, _empty(height)])
    values = [_dec(v) for r in rows for v in (r.low, r.mid, r.high, r.actual) if v is not None]
    scale = _Scale(values, 0, 1)  # positions along x: 0..1 of the plot's width

    def x(value: Decimal) -> float:
        return label_width + (1 - scale.at(value)) * (right - label_width)

    for i, row in enumerate(rows):
        y = _TOP + row_height * i
        low, mid, high = _dec(row.low), _dec(row.mid), _dec(row.high)
        body.append(
            f'<text class="tick" x="{label_width - 8}" y="{_f(y + 16)}" text-anchor="end" '
            f'dominant-baseline="middle">{escape(_short(row.label, 20))}</text>'
        )
        body.append(
            f'<rect class="band" x="{_f(x(min(low, high)))}" y="{_f(y + 6)}" '
            f'width="{_f(abs(x(high) - x(low)))}" height="20"><title>{escape(row.label)} '
            f"{escape(band_label)}: {escape(fmt(low))} – {escape(fmt(high))}</title></rect>"
        )
        body.append(
            f'<line class="mid" x1="{_f(x(mid))}" x2="{_f(x(mid))}" y1="{_f(y + 2)}" '
            f'y2="{_f(y + 30)}"><title>{escape(row.label)} {escape(mid_label)}: '
            f"{escape(fmt(mid))}</title></line>"
        )
        if row.actual is not None:
            actual = _dec(row.actual)
            body.append(
                f'<circle class="actual" cx="{_f(x(actual))}" cy="{_f(y + 16)}" r="6">'
                f"<title>{escape(row.label)} {escape(actual_label)}: {escape(fmt(actual))}"
                "</title></circle>"
            )
    base = _TOP + row_height * len(rows) + 4
    body.append(f'<line class="axis" x1="{label_width}" x2="{right}" y1="{base}" y2="{base}"/>')
    for tick in scale.ticks:
        body.append(
            f'<text class="tick" x="{_f(x(tick))}" y="{base + 16}" text-anchor="middle">'
            f"{escape(fmt(tick))}</text>"
        )
    return _svg(ident, title, description, height, body)
