"""Months in a time zone as keys and bounds: which month an instant falls in, the first
instants of a month and of the next, times as ISO text (UTC).

Cheap to import: no ``re`` or ``dataclasses``, and ``zoneinfo`` (~4 ms) only for a zone
other than UTC. The request path's ``GET /v1/usage`` reads it; ``months.Window`` (a month
with its days) is built on it, so both give the same instants.
"""

from __future__ import annotations

from datetime import UTC, datetime

from ..errors import SaiaError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from datetime import tzinfo


class TimeError(SaiaError, ValueError):
    """A month, zone or time given by the user cannot be used."""


def zone(name: str) -> tzinfo:
    """The zone called ``name`` (IANA name such as ``Europe/Berlin``, or ``UTC``)."""
    if name == "UTC":  # the same instants as ZoneInfo("UTC"), without importing zoneinfo
        return UTC
    if not name or name.startswith("/") or ".." in name:
        raise TimeError(f"not a time zone: {name!r}")
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise TimeError(
            f"unknown time zone: {name!r} (use an IANA name such as UTC or Europe/Berlin)"
        ) from None


def parse_month(text: str) -> tuple[int, int]:
    """(year, month) of ``YYYY-MM``."""
    t = text.strip()
    y, dash, m = t[:4], t[4:5], t[5:]
    if not (dash == "-" and len(y) == 4 and len(m) == 2 and y.isdecimal() and m.isdecimal()):
        raise TimeError(f"not a month (YYYY-MM): {text!r}")
    if not 1 <= int(m) <= 12 or int(y) < 1970:
        raise TimeError(f"not a month (YYYY-MM): {text!r}")
    return int(y), int(m)


def next_of(year: int, month: int) -> tuple[int, int]:
    return (year + 1, 1) if month == 12 else (year, month + 1)


def local_midnight(year: int, month: int, day: int, tz: tzinfo) -> float:
    """Epoch seconds of the start of that day in ``tz``."""
    # ZoneInfo resolves a wall time that does not exist (a DST gap) forwards, which is what we want.
    return datetime(year, month, day, tzinfo=tz).astimezone(UTC).timestamp()


def month_bounds(month: str, tz: str) -> tuple[float, float]:
    """[first instant of the month, first instant of the next) in zone ``tz``."""
    year, mon = parse_month(month)
    z = zone(tz)
    return local_midnight(year, mon, 1, z), local_midnight(*next_of(year, mon), 1, z)


def month_of(t: float, tz: str = "UTC") -> str:
    """The month (YYYY-MM) an instant falls in, in zone ``tz``."""
    d = datetime.fromtimestamp(t, tz=zone(tz))
    return f"{d.year:04d}-{d.month:02d}"


def iso_utc(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.fromtimestamp(t, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
