"""Server-drawn SVG charts: no script, themeable by CSS classes, readable by screen readers
(each bar has a <title>, and the page offers the same numbers as a table)."""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass

from longcat.console.filters import compact

W, H = 720, 220
LEFT, RIGHT, TOP, BOTTOM = 52, 8, 10, 26


@dataclass(slots=True)
class Bar:
    day: str
    x: float
    width: float
    # (css class, y, height, value) from the bottom up
    parts: list[tuple[str, float, float, int]]
    values: dict[str, int]


def days_back(today: str, n: int) -> list[str]:
    end = dt.date.fromisoformat(today)
    return [(end - dt.timedelta(days=n - 1 - i)).isoformat() for i in range(n)]


def nice_step(value: float, intervals: int = 4) -> float:
    """A round step (1, 2, 2.5 or 5 times a power of ten) so that `intervals` steps cover `value`."""
    if value <= 0:
        return 1.0
    raw = value / intervals
    exp = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if m * exp >= raw:
            return m * exp
    return 10 * exp


def daily_tokens(daily: dict[str, dict[str, int]], today: str, lang: str, n: int = 30) -> dict:
    """Stacked bars per day: uncached input, cached input, output."""
    days = days_back(today, n)
    rows = [daily.get(d, {}) for d in days]
    totals = [r.get("input_tokens", 0) + r.get("output_tokens", 0) for r in rows]
    step = nice_step(max(totals, default=0))
    top = step * max(1, math.ceil(max(totals, default=0) / step))
    plot_w, plot_h = W - LEFT - RIGHT, H - TOP - BOTTOM
    slot = plot_w / n
    bars = []
    for i, (day, r) in enumerate(zip(days, rows, strict=True)):
        cached = r.get("cached_tokens", 0)
        fresh = max(0, r.get("input_tokens", 0) - cached)
        out = r.get("output_tokens", 0)
        y = TOP + plot_h
        parts = []
        for cls, value in (("in", fresh), ("cached", cached), ("out", out)):
            h = plot_h * value / top
            y -= h
            parts.append((cls, round(y, 2), round(h, 2), value))
        bars.append(Bar(day, round(LEFT + i * slot + slot * 0.15, 2), round(slot * 0.7, 2), parts,
                        {"input": r.get("input_tokens", 0), "cached": cached, "output": out, "requests": r.get("requests", 0)}))
    ticks = [(round(TOP + plot_h - plot_h * (i * step) / top, 2), compact(i * step, lang)) for i in range(round(top / step) + 1)]
    labels = [(round(LEFT + i * slot + slot / 2, 2), days[i][5:]) for i in range(0, n, max(1, n // 6))]
    return {"w": W, "h": H, "left": LEFT, "right": W - RIGHT, "bottom": TOP + plot_h, "bars": bars, "ticks": ticks,
            "labels": labels, "empty": not any(totals)}
