"""Inline SVG charts for report.html: horizontal bars, with an interval and a reference line.

One kind of chart serves every section (accuracy with its interval per file and target, SQNR
per operator, latency per configuration, bytes per board): a label, a bar, the value written
beside it. Drawn here as text, so the page needs no script and no library, prints as vectors,
and every label passes through `esc` like any other string from a user's file.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass

WIDTH = 820  # px: fits a printed A4 page and a laptop screen beside nothing else
LABEL_W = 330  # px for the labels left of the bars (longer labels are cut with an ellipsis)
VALUE_W = 130  # px for the value written right of each bar
ROW_H = 20
TOP, BOTTOM = 26, 24  # title above, axis ticks below
BAR_COLOR, MARK_COLOR, FAIL_COLOR = "#3b7dd8", "#c0392b", "#c0392b"
MAX_LABEL = 54  # characters


def esc(value: object) -> str:
    """Text for HTML or SVG: `<`, `>`, `&` and both quotes escaped (any value, as str)."""
    return html.escape(str(value), quote=True)


@dataclass(frozen=True)
class Bar:
    label: str
    value: float
    text: str  # written right of the bar: the value as a person reads it
    low: float | None = None  # an interval around value (drawn as a whisker)
    high: float | None = None
    marked: bool = False  # drawn in MARK_COLOR: the culprit, a failed gate


@dataclass(frozen=True)
class Axis:
    low: float
    high: float
    log: bool = False
    unit: str = ""

    def at(self, value: float) -> float:
        """0..1 along the axis (clamped)."""
        if self.log:
            value = math.log10(max(value, self.low))
            low, high = math.log10(self.low), math.log10(self.high)
        else:
            low, high = self.low, self.high
        return min(1.0, max(0.0, (value - low) / ((high - low) or 1.0)))


def auto_axis(values: list[float], *, unit: str = "", zero: bool = True) -> Axis:
    """A linear axis from 0 (or just below the smallest value) to the largest; a log axis when
    the positive values span more than 100×."""
    positive = [v for v in values if v > 0 and math.isfinite(v)]
    if positive and max(positive) / min(positive) > 100:
        low = 10 ** math.floor(math.log10(min(positive)))
        high = 10 ** math.ceil(math.log10(max(positive)))
        return Axis(low, high if high > low else low * 10, log=True, unit=unit)
    finite = [v for v in values if math.isfinite(v)] or [1.0]
    high = max(finite) or 1.0
    low = 0.0 if zero else min(finite) - 0.1 * ((high - min(finite)) or abs(high) or 1.0)
    return Axis(min(low, 0.0) if zero else low, high * 1.05 if high > 0 else 1.0, unit=unit)


def _ticks(axis: Axis) -> list[float]:
    if axis.log:
        lo, hi = round(math.log10(axis.low)), round(math.log10(axis.high))
        every = max(1, (hi - lo) // 6)
        return [10.0**e for e in range(lo, hi + 1, every)]
    span = axis.high - axis.low
    raw = span / 5
    mag = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(axis.low / step) * step
    return [first + i * step for i in range(int((axis.high - first) / step) + 1)]


def _tick_text(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1e4 or abs(v) < 1e-2:
        return f"{v:.0e}".replace("e+0", "e").replace("e-0", "e-")
    return f"{v:g}"


def bar_chart(
    title: str,
    bars: list[Bar],
    axis: Axis | None = None,
    reference: tuple[float, str] | None = None,
) -> str:
    """An <svg> of one horizontal bar per entry of `bars`, on `axis` (auto_axis by default), with
    an optional vertical reference line (value, its label): the original's accuracy, a tolerance.
    """
    axis = axis or auto_axis([b.value for b in bars])
    plot_w = WIDTH - LABEL_W - VALUE_W
    height = TOP + ROW_H * len(bars) + BOTTOM
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" width="{WIDTH}" '
        f'height="{height}" viewBox="0 0 {WIDTH} {height}" aria-label="{esc(title)}">',
        f'<text x="0" y="16" class="ct">{esc(title)}</text>',
    ]
    for tick in _ticks(axis):
        x = LABEL_W + axis.at(tick) * plot_w
        out.append(
            f'<line x1="{x:.1f}" y1="{TOP - 4}" x2="{x:.1f}" y2="{height - BOTTOM}" class="grid"/>'
            f'<text x="{x:.1f}" y="{height - 8}" class="tick">{esc(_tick_text(tick))}</text>'
        )
    out.append(
        f'<text x="{WIDTH - VALUE_W + 16}" y="{height - 8}" class="unit">{esc(axis.unit)}</text>'
    )
    for i, bar in enumerate(bars):
        out.append(_bar(bar, axis, TOP + i * ROW_H, plot_w))
    if reference is not None:
        x = LABEL_W + axis.at(reference[0]) * plot_w
        out.append(
            f'<line x1="{x:.1f}" y1="{TOP - 6}" x2="{x:.1f}" y2="{height - BOTTOM}" class="ref"/>'
            f'<text x="{x + 3:.1f}" y="{TOP - 8}" class="reft">{esc(reference[1])}</text>'
        )
    out.append("</svg>")
    return "".join(out)


def _bar(bar: Bar, axis: Axis, y: float, plot_w: float) -> str:
    label = bar.label if len(bar.label) <= MAX_LABEL else bar.label[: MAX_LABEL - 1] + "…"
    x0 = LABEL_W + axis.at(axis.low if axis.log else max(axis.low, 0.0)) * plot_w
    x1 = LABEL_W + axis.at(bar.value) * plot_w
    color = MARK_COLOR if bar.marked else BAR_COLOR
    left, w = min(x0, x1), max(abs(x1 - x0), 1.0)
    parts = [
        f'<text x="{LABEL_W - 6}" y="{y + 14}" class="lab">{esc(label)}'
        f"<title>{esc(bar.label)}</title></text>",
        f'<rect x="{left:.1f}" y="{y + 4}" width="{w:.1f}" height="{ROW_H - 8}" fill="{color}"/>',
    ]
    if bar.low is not None and bar.high is not None:
        a = LABEL_W + axis.at(bar.low) * plot_w
        b = LABEL_W + axis.at(bar.high) * plot_w
        mid = y + ROW_H / 2
        parts.append(
            f'<path d="M{a:.1f} {mid - 4}v8M{a:.1f} {mid}H{b:.1f}M{b:.1f} {mid - 4}v8" '
            'class="whisker"/>'
        )
    weight = ' font-weight="bold"' if bar.marked else ""
    parts.append(
        f'<text x="{WIDTH - VALUE_W + 6}" y="{y + 14}" class="val"{weight}>{esc(bar.text)}</text>'
    )
    return "".join(parts)


CHART_CSS = """
svg.chart{display:block;max-width:100%;height:auto;margin:.6em 0 1em;font:12px system-ui,sans-serif}
svg.chart .ct{font-weight:600;font-size:13px}
svg.chart .lab{text-anchor:end}
svg.chart .tick{fill:#666;font-size:10px;text-anchor:middle}
svg.chart .unit{fill:#666;font-size:10px}
svg.chart .grid{stroke:#e3e3e3}
svg.chart .ref{stroke:#222;stroke-dasharray:4 3}
svg.chart .reft{font-size:10px;fill:#222}
svg.chart .whisker{stroke:#111;fill:none;stroke-width:1.2}
"""
