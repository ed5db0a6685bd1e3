"""One scan of the request and job rows: the figures of [lo, hi) that add up across spans.

The fold (``ledger``) scans a piece of a day with it and keeps the result; a report
(``assemble``) scans the rest of its month with the same code, so a figure is
the same whichever way it was made.
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from operator import itemgetter

from .figures import COUNT_FIELDS, named
from .gpu import attribute
from .months import Window
from .row_sql import COUNTER_SQL, LONG_OR_OPEN, LONG_REQUEST, jobs_in

# (done, total): how far a long computation is; called with increasing ``done`` up to ``total``
# (``total`` may grow when more work turns up). The CLI draws a bar; the library draws nothing.
Progress = Callable[[int, int], None]

_COUNT_COLUMNS = ", ".join(f"{COUNTER_SQL[name]} AS {name}" for name in COUNT_FIELDS)

LEVEL_SQL = f"""
SELECT {{column}} AS id, {_COUNT_COLUMNS}
FROM requests WHERE started_at >= ? AND started_at < ? GROUP BY {{column}}
"""

CELLS_SQL = f"""
SELECT user_id, service_id, {_COUNT_COLUMNS}
FROM requests WHERE started_at >= ? AND started_at < ?{{extra}} GROUP BY user_id, service_id
"""

# Ordered by duration: every list built from it comes out sorted (SQLite's sorter is C).
# Millions of rows: read as plain tuples, unpacked in the column order written here.
LATENCY_SQL = """
SELECT user_id, service_id, ended_at - started_at AS d, first_byte_at - started_at
FROM requests WHERE started_at >= ? AND started_at < ? AND outcome = 'ok'{extra}
ORDER BY d
"""

# Requests per service in one local day: a range count on ix_requests_service_started.
_DAY_SQL = "SELECT count(*) FROM requests WHERE service_id = ? AND started_at >= ? AND started_at < ?"

# Requests that may be in flight during [A, B): short ones by start time, long or open
# ones through the partial index ix_requests_long (its WHERE text, so SQLite uses it).
_BUSY_SQL = f"""
SELECT job_id, user_id, started_at, ended_at FROM requests
WHERE started_at >= ? AND started_at < ? AND job_id IS NOT NULL
  AND (ended_at IS NULL OR ended_at > ?)
UNION ALL
SELECT job_id, user_id, started_at, ended_at FROM requests
WHERE ({LONG_OR_OPEN}) AND started_at < ?
  AND job_id IS NOT NULL AND (ended_at IS NULL OR ended_at > ?)
"""

# The latency scan reports its progress every this many rows.
_PROGRESS_EVERY = 1 << 16


_COUNTS = itemgetter(*COUNT_FIELDS)  # by name, in C: thousands of rows per scan


def counts_of(row: sqlite3.Row) -> list[int]:
    """A row's counters, in ``COUNT_FIELDS`` order (lists add up fast; ``Usage.of_counts``)."""
    return list(_COUNTS(row))


@dataclass
class Span:
    """What the rows say about [lo, hi): sums that add up across spans, and sorted runs."""

    users: dict[str, list[int]] = field(default_factory=dict)  # counters per user (COUNT_FIELDS)
    services: dict[str, list[int]] = field(default_factory=dict)  # counters per service
    user_lat: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)
    service_lat: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)
    days: dict[tuple[str, str], int] = field(default_factory=dict)  # (service, local day) requests
    gpu: dict[tuple[str, str], float] = field(default_factory=dict)  # attributed GPU seconds
    idle: dict[int, tuple[float, float]] = field(default_factory=dict)  # job: idle, idle-while-ready GPU s


def scan(
    conn: sqlite3.Connection,
    window: Window,
    lo: float,
    hi: float,
    now: float,
    progress: Progress | None = None,
) -> Span:
    """The rows' figures for requests that started in [lo, hi) and GPU time in [lo, hi).

    ``progress`` counts the ``ok`` requests read for their durations (the longest part).
    """
    span = Span()
    for level, column in ((span.users, "user_id"), (span.services, "service_id")):
        for row in named(conn).execute(LEVEL_SQL.format(column=column), (lo, hi)):
            level[row["id"]] = counts_of(row)
    by_user: defaultdict[str, tuple[list[float], list[float]]] = defaultdict(lambda: ([], []))
    by_service: defaultdict[str, tuple[list[float], list[float]]] = defaultdict(lambda: ([], []))
    total = sum(c[COUNT_FIELDS.index("ok")] for c in span.services.values())
    done = 0
    rows = conn.execute(LATENCY_SQL.format(extra=""), (lo, hi))
    while batch := rows.fetchmany(_PROGRESS_EVERY):
        for u, s, d, f in batch:
            ud, uf = by_user[u]
            sd, sf = by_service[s]
            ud.append(d)
            sd.append(d)
            if f is not None:
                uf.append(f)
                sf.append(f)
        done += len(batch)
        if progress is not None:
            progress(done, total)
    for lists in (by_user, by_service):
        for _, f_list in lists.values():
            f_list.sort()
    span.user_lat, span.service_lat = dict(by_user), dict(by_service)
    services = sorted(span.services)
    for day, a, b in days_in(window, lo, hi):
        for s in services:
            n = conn.execute(_DAY_SQL, (s, a, b)).fetchone()[0]
            if n:
                span.days[(s, day)] = n
    _attribute(conn, span, lo, hi, now)
    return span


def days_in(window: Window, lo: float, hi: float) -> list[tuple[str, float, float]]:
    """The local days of ``window`` cut to [lo, hi): (day, start, end)."""
    bounds = [*window.day_starts[1:], window.end]
    out = []
    for (day, a), b in zip(window.days, bounds, strict=True):
        a, b = max(a, lo), min(b, hi)
        if b > a:
            out.append((day, a, b))
    return out


def _attribute(conn: sqlite3.Connection, span: Span, lo: float, hi: float, now: float) -> None:
    jobs = jobs_in(conn, lo, hi)
    if not jobs:
        return
    ids = {j.id for j in jobs}
    busy: defaultdict[int, list[tuple[float, float | None, str]]] = defaultdict(list)
    params = (lo - LONG_REQUEST, hi, lo, lo - LONG_REQUEST, lo)
    for job_id, user, start, end in conn.execute(_BUSY_SQL, params):
        if job_id in ids:
            busy[job_id].append((start, end, user))
    gpu = span.gpu
    for job in jobs:
        res = attribute(job, busy.get(job.id, []), lo, hi, now)
        if res.run_seconds <= 0:
            continue
        span.idle[job.id] = (res.idle_gpu_seconds, res.idle_ready_gpu_seconds)
        for user, secs in res.users.items():
            key = (user, job.service)
            gpu[key] = gpu.get(key, 0.0) + secs
