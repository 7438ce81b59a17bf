"""Template filters: numbers, token counts and times, written the way each language writes them."""

from __future__ import annotations

import datetime as dt
from typing import Any

from longcat.gateway.clock import BEIJING


def number(value: Any) -> str:
    try:
        return f"{int(value):,}"
    except (TypeError, ValueError):
        return "—"


def compact(value: Any, lang: str = "en") -> str:
    """1234567 -> 1.2M (en) or 123.5万 (zh): for axes and cards."""
    try:
        n = float(value)
    except (TypeError, ValueError):
        return "—"
    if lang == "zh_CN":
        for size, unit in ((1e8, "亿"), (1e4, "万")):
            if abs(n) >= size:
                return f"{n / size:.1f}".rstrip("0").rstrip(".") + unit
        return f"{int(n):,}"
    for size, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= size:
            return f"{n / size:.1f}".rstrip("0").rstrip(".") + unit
    return f"{int(n):,}"


def beijing(ts: Any, fmt: str = "%Y-%m-%d %H:%M") -> str:
    if ts in (None, ""):
        return ""
    return dt.datetime.fromtimestamp(float(ts), BEIJING).strftime(fmt)


def iso(ts: Any) -> str:
    if ts in (None, ""):
        return ""
    return dt.datetime.fromtimestamp(float(ts), dt.UTC).isoformat().replace("+00:00", "Z")


def utc(ts: Any, fmt: str = "%Y-%m-%d %H:%M") -> str:
    if ts in (None, ""):
        return ""
    return dt.datetime.fromtimestamp(float(ts), dt.UTC).strftime(fmt)


def percent(part: Any, whole: Any) -> float:
    try:
        return max(0.0, min(100.0, 100.0 * float(part) / float(whole))) if float(whole) else 0.0
    except (TypeError, ValueError):
        return 0.0


_BROWSERS = (("Edg/", "Edge"), ("OPR/", "Opera"), ("Firefox/", "Firefox"), ("Chrome/", "Chrome"), ("Safari/", "Safari"),
             ("curl/", "curl"), ("python-httpx", "httpx"), ("python-requests", "requests"), ("OpenAI/", "OpenAI SDK"))
_SYSTEMS = (("Windows", "Windows"), ("iPhone", "iOS"), ("iPad", "iPadOS"), ("Android", "Android"), ("Mac OS X", "macOS"),
            ("CrOS", "ChromeOS"), ("Linux", "Linux"))


def user_agent(ua: Any) -> str:
    """'Chrome · Linux' rather than the whole User-Agent string."""
    text = str(ua or "")
    browser = next((name for mark, name in _BROWSERS if mark in text), "")
    system = next((name for mark, name in _SYSTEMS if mark in text), "")
    return " · ".join(p for p in (browser, system) if p) or text[:40]


def for_language(lang: str) -> dict[str, Any]:
    return {
        "number": number,
        "compact": lambda v: compact(v, lang),
        "beijing": beijing,
        "iso": iso,
        "utc": utc,
        "percent": percent,
        "user_agent": user_agent,
    }
