"""Month windows and user-given times: [first instant of a month, first instant of the next) in a zone."""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ..errors import SaiaError

_MONTH = re.compile(r"^(\d{4})-(\d{2})$")


class TimeError(SaiaError, ValueError):
    """A month, zone or time given by the user cannot be used."""


def zone(name: str) -> ZoneInfo:
    """The zone called ``name`` (IANA name such as ``Europe/Berlin``, or ``UTC``)."""
    if not name or name.startswith("/") or ".." in name:
        raise TimeError(f"not a time zone: {name!r}")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise TimeError(
            f"unknown time zone: {name!r} (use an IANA name such as UTC or Europe/Berlin)"
        ) from None


def parse_month(text: str) -> tuple[int, int]:
    m = _MONTH.match(text.strip())
    if not m or not 1 <= int(m[2]) <= 12 or int(m[1]) < 1970:
        raise TimeError(f"not a month (YYYY-MM): {text!r}")
    return int(m[1]), int(m[2])


def _next(year: int, month: int) -> tuple[int, int]:
    return (year + 1, 1) if month == 12 else (year, month + 1)


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


def _local_midnight(d: date, tz: ZoneInfo) -> float:
    # ZoneInfo resolves a wall time that does not exist (a DST gap) forwards, which is what we want.
    return datetime(d.year, d.month, d.day, tzinfo=tz).astimezone(UTC).timestamp()


def month_window(month: str, tz: str = "UTC") -> Window:
    year, mon = parse_month(month)
    z = zone(tz)
    first = date(year, mon, 1)
    ny, nm = _next(year, mon)
    nxt = date(ny, nm, 1)
    days = []
    d = first
    while d < nxt:
        days.append((d.isoformat(), _local_midnight(d, z)))
        d += timedelta(days=1)
    return Window(
        f"{year:04d}-{mon:02d}", tz, _local_midnight(first, z), _local_midnight(nxt, z), tuple(days)
    )


def month_of(t: float, tz: str = "UTC") -> str:
    """The month (YYYY-MM) an instant falls in, in zone ``tz``."""
    d = datetime.fromtimestamp(t, tz=zone(tz))
    return f"{d.year:04d}-{d.month:02d}"


def next_month(month: str) -> str:
    y, m = _next(*parse_month(month))
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


def iso_utc(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.fromtimestamp(t, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
