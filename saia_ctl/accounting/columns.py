"""The report's columns, declared once: key, human title, number format, and whether the compact
terminal table shows it.

JSON and CSV keep the keys and today's plain numbers (they are an interface); the terminal table,
Markdown and HTML show the titles and numbers with thousands separators.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


class Kind(enum.Enum):
    """How a column's values are written."""

    ID = "id"  # a user or service id: text, left-aligned
    COUNT = "count"  # an integer count
    HOURS = "hours"  # GPU-, job- or ready-hours: exactly three decimals
    SECONDS = "seconds"  # a duration in seconds: three decimals


@dataclass(frozen=True)
class Column:
    key: str
    title: str
    kind: Kind
    compact: bool = False

    def plain(self, value: Any) -> str:
        """As in CSV: no separators; hours and seconds with exactly three decimals."""
        return plain(self.kind, value)

    def human(self, value: Any) -> str:
        """As people read it: thousands separators."""
        if value is None:
            return ""
        if self.kind in (Kind.HOURS, Kind.SECONDS):
            return f"{float(value):,.3f}"
        if self.kind is Kind.COUNT and isinstance(value, int):
            return f"{value:,}"
        return str(value)

    @property
    def numeric(self) -> bool:
        return self.kind is not Kind.ID


def plain(kind: Kind, value: Any) -> str:
    if value is None:
        return ""
    if kind in (Kind.HOURS, Kind.SECONDS):
        return f"{float(value):.3f}"
    return str(value)


# In the order of the report's rows. Compact: what fits a 120-column terminal.
COLUMNS = (
    Column("user", "User", Kind.ID, compact=True),
    Column("service", "Service", Kind.ID, compact=True),
    Column("users", "Users", Kind.COUNT, compact=True),
    Column("services", "Services", Kind.COUNT, compact=True),
    Column("requests", "Requests", Kind.COUNT, compact=True),
    Column("ok", "OK", Kind.COUNT),
    Column("errors", "Errors", Kind.COUNT, compact=True),
    Column("errors_4xx", "4xx", Kind.COUNT),
    Column("errors_5xx", "5xx", Kind.COUNT),
    Column("aborted", "Aborted", Kind.COUNT),
    Column("in_flight", "In flight", Kind.COUNT),
    Column("input_tokens", "Tokens in", Kind.COUNT, compact=True),
    Column("output_tokens", "Tokens out", Kind.COUNT, compact=True),
    Column("duration_p50_s", "p50 (s)", Kind.SECONDS, compact=True),
    Column("duration_p95_s", "p95 (s)", Kind.SECONDS, compact=True),
    Column("ttfb_p50_s", "TTFB p50 (s)", Kind.SECONDS),
    Column("ttfb_p95_s", "TTFB p95 (s)", Kind.SECONDS),
    Column("jobs", "Jobs", Kind.COUNT),
    Column("jobs_open", "Jobs open", Kind.COUNT),
    Column("job_hours", "Job-hours", Kind.HOURS),
    Column("gpu_hours", "GPU-hours", Kind.HOURS, compact=True),
    Column("attributed_gpu_hours", "Attributed GPU-h", Kind.HOURS),
    Column("idle_gpu_hours", "Idle GPU-h", Kind.HOURS),
    Column("idle_ready_gpu_hours", "Idle ready GPU-h", Kind.HOURS),
    Column("ready_hours", "Ready hours", Kind.HOURS),
    Column("submit_to_ready_median_s", "Submit to ready p50 (s)", Kind.SECONDS),
)
BY_KEY = {c.key: c for c in COLUMNS}
ORDER = {c.key: i for i, c in enumerate(COLUMNS)}
IDS = ("user", "service")  # the column that names a row: kept by --columns
# What the compact table means by p50/p95 (printed under its title).
LEGEND = "p50/p95: median and 95th percentile of a request's total time; tokens in/out: input/output tokens"


class UnknownColumn(ValueError):
    """A --columns key that is not a column of the report."""


def column(key: str) -> Column:
    """The declared column; a key the report gains later is shown as its own title, as text."""
    return BY_KEY.get(key) or Column(key, key, Kind.ID)


def parse(spec: str) -> list[str]:
    """``--columns KEY,KEY``: the keys, in the given order; an unknown key is an error."""
    keys = [k.strip() for k in spec.split(",") if k.strip()]
    bad = [k for k in keys if k not in BY_KEY]
    if bad or not keys:
        what = f"unknown column {bad[0]!r}" if bad else "no column given"
        raise UnknownColumn(f"{what}; valid: {', '.join(BY_KEY)}")
    return list(dict.fromkeys(keys))


def pick(keys: Sequence[str], chosen: Sequence[str] | None, *, compact: bool) -> list[str]:
    """The columns of one table, from the keys its rows have: the chosen ones in the given order
    (and the id that names each row), or the compact set or all in the declared order."""
    if chosen is not None:
        ids = [k for k in keys if k in IDS and k not in chosen]
        return ids + [k for k in chosen if k in keys]
    ordered = sorted(keys, key=lambda k: ORDER.get(k, len(ORDER)))  # stable: new keys last
    return [k for k in ordered if column(k).compact] if compact else ordered


def title(data: dict[str, Any]) -> str:
    """The report's title line: month, zone and the window's bounds."""
    return f"saia-ctl report {data['month']} ({data['tz']}: {data['from']} to {data['to']})"


def shorten(text: str, width: int) -> str:
    """``text`` in at most ``width`` characters: its start and end around "..." (a long user id
    is told apart by its start, often a name, and its end, often a domain)."""
    if len(text) <= width:
        return text
    tail = (width - 3) // 2 - 1
    return text[: width - 3 - tail] + "..." + text[len(text) - tail :]
