"""Time, injectable: quotas follow the Beijing calendar day, and tests must cross midnight
without waiting for it.

`SystemClock` is the real one. `FileOffsetClock` adds an offset (seconds) read from a file, so a
test can move a running server's time by writing a number; it exists for tests and is enabled
only by the `clock_file` setting.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from pathlib import Path

# Asia/Shanghai has had no daylight saving since 1991: a fixed UTC+8 is exact.
BEIJING = dt.timezone(dt.timedelta(hours=8), "Asia/Shanghai")


class SystemClock:
    def now(self) -> float:
        return time.time()


class FileOffsetClock:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._mtime: float | None = None
        self._offset = 0.0

    def now(self) -> float:
        try:
            mtime = os.stat(self.path).st_mtime
        except FileNotFoundError:
            return time.time()
        if mtime != self._mtime:
            try:
                self._offset = float(self.path.read_text().strip() or 0)
            except ValueError:
                self._offset = 0.0
            self._mtime = mtime
        return time.time() + self._offset


def beijing_day(ts: float) -> str:
    """The Asia/Shanghai calendar day of a timestamp, as YYYY-MM-DD."""
    return dt.datetime.fromtimestamp(ts, BEIJING).date().isoformat()


def next_refresh(ts: float) -> float:
    """The timestamp of the next 00:00 Beijing time after `ts`: when daily quotas refresh."""
    local = dt.datetime.fromtimestamp(ts, BEIJING)
    midnight = dt.datetime.combine(local.date() + dt.timedelta(days=1), dt.time(0), BEIJING)
    return midnight.timestamp()


def describe_refresh(ts: float, now: float) -> str:
    """'2026-11-26 00:00 Beijing time (16:00 UTC), in 3 h 12 min'."""
    local = dt.datetime.fromtimestamp(ts, BEIJING)
    utc = dt.datetime.fromtimestamp(ts, dt.UTC)
    left = max(0, int(ts - now))
    hours, minutes = left // 3600, (left % 3600) // 60
    wait = f"{hours} h {minutes} min" if hours else f"{max(minutes, 1)} min"
    return f"{local:%Y-%m-%d %H:%M} Beijing time ({utc:%H:%M} UTC), in {wait}"


def make_clock(settings) -> SystemClock | FileOffsetClock:
    """The clock the settings ask for: the system's, or an offset one for tests."""
    return FileOffsetClock(Path(settings.clock_file)) if settings.clock_file else SystemClock()
