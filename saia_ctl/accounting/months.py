"""Month windows (a month in a zone with its local days, on ``zones``) and user-given times."""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from .zones import TimeError, local_midnight, next_of, parse_month, zone


@dataclass(frozen=True)
class Window:
    """A month in a zone: ``start <= t < end`` in epoch seconds; ``days`` are the local day starts."""

    month: str  # YYYY-MM
    tz: str
    start: float
    end: float
    days: tuple[tuple[str, float], ...]  # (YYYY-MM-DD, epoch of its local midnight)

    def day_of(self, t: float) -> str:
        """The local day (YYYY-MM-DD) of an instant inside the window."""
        i = bisect.bisect_right(self.day_starts, t) - 1
        return self.days[max(i, 0)][0]

    @property
    def day_starts(self) -> list[float]:
        return [begin for _, begin in self.days]

    def iso(self, t: float) -> str:
        return datetime.fromtimestamp(t, tz=zone(self.tz)).isoformat()


def month_window(month: str, tz: str = "UTC") -> Window:
    year, mon = parse_month(month)
    z = zone(tz)
    first = date(year, mon, 1)
    nxt = date(*next_of(year, mon), 1)
    days = []
    d = first
    while d < nxt:
        days.append((d.isoformat(), local_midnight(d.year, d.month, d.day, z)))
        d += timedelta(days=1)
    return Window(
        f"{year:04d}-{mon:02d}",
        tz,
        local_midnight(year, mon, 1, z),
        local_midnight(nxt.year, nxt.month, 1, z),
        tuple(days),
    )


def next_month(month: str) -> str:
    y, m = next_of(*parse_month(month))
    return f"{y:04d}-{m:02d}"


def parse_time(text: str) -> float:
    """ISO 8601 date or date-time (UTC unless it carries an offset) to epoch seconds."""
    raw = text.strip()
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", raw):
            d = date.fromisoformat(raw)
            return datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp()
        dt = datetime.fromisoformat(raw.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise TimeError(f"not a date or time (YYYY-MM-DD or ISO 8601, UTC): {text!r}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()
