"""A month's figures, computed from the raw rows or read back from the rollup tables.

The report is made from a ``Figures`` object only, and a ``Figures`` object
read from the rollups is equal to the one computed from the rows before they
were pruned: that is what makes reports of pruned months byte-identical.
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from collections.abc import Callable
from dataclasses import astuple, dataclass, field, fields
from typing import Any

from sqlalchemy.orm import Session

from .gpu import JobSpan, attribute, clip, median, percentile, ready_interval, union_length
from .months import Window

ALL = ""  # the user_id / service_id of "all users" / "all services" rows

# Requests longer than this are found through the partial index ix_requests_long
# (models.py); shorter ones by their start time, so the scan stays a range scan.
LONG_REQUEST = 3600.0


@dataclass
class Usage:
    """Request figures of one (user, service) pair, user (service ALL), service (user ALL) or all."""

    requests: int = 0
    ok: int = 0
    errors: int = 0
    errors_4xx: int = 0
    errors_5xx: int = 0
    aborted: int = 0
    in_flight: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    duration_p50: float | None = None
    duration_p95: float | None = None
    ttfb_p50: float | None = None
    ttfb_p95: float | None = None
    gpu_seconds: float = 0.0  # attributed, unrounded

    def add_counts(self, other: Usage) -> None:
        for name in COUNT_FIELDS:
            setattr(self, name, getattr(self, name) + getattr(other, name))


COUNT_FIELDS = tuple(f.name for f in fields(Usage))[:9]
USAGE_FIELDS = tuple(f.name for f in fields(Usage))


@dataclass
class ServiceGPU:
    """GPU figures of one service in the month (seconds)."""

    jobs: int = 0
    jobs_open: int = 0
    job_seconds: float = 0.0
    gpu_seconds: float = 0.0
    idle_gpu_seconds: float = 0.0
    idle_ready_gpu_seconds: float = 0.0
    ready_seconds: float = 0.0
    submit_to_ready_median: float | None = None


GPU_FIELDS = tuple(f.name for f in fields(ServiceGPU))


@dataclass
class Figures:
    window: Window
    usage: dict[tuple[str, str], Usage] = field(default_factory=dict)  # (user|ALL, service|ALL)
    gpu: dict[str, ServiceGPU] = field(default_factory=dict)
    days: dict[tuple[str, str], int] = field(default_factory=dict)  # (service, YYYY-MM-DD)

    @property
    def empty(self) -> bool:
        return not self.usage and not any(g.jobs for g in self.gpu.values())


def dbapi(session: Session) -> sqlite3.Connection:
    """The raw sqlite3 connection of a session: the big scans skip SQLAlchemy's row objects."""
    conn: Any = session.connection().connection.driver_connection
    assert isinstance(conn, sqlite3.Connection)
    return conn


# SUM of a group whose terms are all NULL (e.g. only in-flight rows: outcome IS NULL) is NULL,
# hence the IFNULLs: such a group has 0 ok, 0 errors... (not null).
_COUNT_COLUMNS = """COUNT(*),
       IFNULL(SUM(outcome = 'ok'), 0), IFNULL(SUM(outcome = 'error'), 0),
       IFNULL(SUM(outcome = 'error' AND status >= 400 AND status < 500), 0),
       IFNULL(SUM(outcome = 'error' AND status >= 500), 0),
       IFNULL(SUM(outcome = 'aborted'), 0), SUM(outcome IS NULL),
       IFNULL(SUM(input_tokens), 0), IFNULL(SUM(output_tokens), 0)"""


def _counts_sql(group: str) -> str:
    return f"SELECT {group}, {_COUNT_COLUMNS} FROM requests WHERE started_at >= ? AND started_at < ? GROUP BY {group}"


# Ordered by duration: the lists built from it come out sorted (SQLite's sorter is C).
_LATENCY_SQL = """
SELECT user_id, service_id, ended_at - started_at AS d, first_byte_at - started_at
FROM requests WHERE started_at >= ? AND started_at < ? AND outcome = 'ok'
ORDER BY d
"""

# Requests per service in one local day: a range count on ix_requests_service_started
# (covering), much cheaper than grouping a month of rows.
_DAY_SQL = "SELECT count(*) FROM requests WHERE service_id = ? AND started_at >= ? AND started_at < ?"

_JOBS_SQL = """
SELECT id, service_id, gpus, submitted_at, started_at, ready_at, draining_at, ended_at
FROM jobs WHERE started_at IS NOT NULL AND started_at < ? AND (ended_at IS NULL OR ended_at > ?)
ORDER BY id
"""

# Requests that may be in flight during [A, B): short ones by start time, long or open
# ones through the partial index ix_requests_long (same WHERE terms, so SQLite uses it).
_BUSY_SQL = """
SELECT job_id, user_id, started_at, ended_at FROM requests
WHERE started_at >= ? AND started_at < ? AND job_id IS NOT NULL
  AND (ended_at IS NULL OR ended_at > ?)
UNION ALL
SELECT job_id, user_id, started_at, ended_at FROM requests
WHERE (ended_at IS NULL OR ended_at - started_at > 3600.0) AND started_at < ?
  AND job_id IS NOT NULL AND (ended_at IS NULL OR ended_at > ?)
"""


def no_cells(user: str, service: str) -> bool:
    """``want_cell`` of a report without --user/--service: no (user, service) pairs needed."""
    return False


def compute(
    session: Session,
    window: Window,
    now: float,
    want_cell: Callable[[str, str], bool] | None = None,
) -> Figures:
    """The month's figures from the raw rows; latency percentiles of (user, service) pairs
    only where ``want_cell`` says so (all of them when it is None)."""
    conn = dbapi(session)
    a, b = window.start, window.end
    figs = Figures(window)
    usage = figs.usage
    if want_cell is None:  # every (user, service) pair: the levels above are their sums
        for row in conn.execute(_counts_sql("user_id, service_id"), (a, b)):
            usage[(row[0], row[1])] = Usage(*row[2:])
        for (u, s), cell in sorted(usage.items()):
            usage.setdefault((u, ALL), Usage()).add_counts(cell)
            usage.setdefault((ALL, s), Usage()).add_counts(cell)
            usage.setdefault((ALL, ALL), Usage()).add_counts(cell)
    else:  # the same integers, summed by SQLite (much faster than in Python)
        for row in conn.execute(_counts_sql("user_id"), (a, b)):
            usage[(row[0], ALL)] = Usage(*row[1:])
        for row in conn.execute(_counts_sql("service_id"), (a, b)):
            usage[(ALL, row[0])] = Usage(*row[1:])
            usage.setdefault((ALL, ALL), Usage()).add_counts(usage[(ALL, row[0])])
        wanted = set() if want_cell is no_cells else {p for p in _pairs(conn, a, b) if want_cell(*p)}
        if wanted:
            for row in conn.execute(_counts_sql("user_id, service_id"), (a, b)):
                if (row[0], row[1]) in wanted:
                    usage[(row[0], row[1])] = Usage(*row[2:])

    _latencies(conn, figs, want_cell)
    _days(conn, figs)
    _gpu(conn, figs, now)
    return figs


def _pairs(conn: sqlite3.Connection, a: float, b: float) -> list[tuple[str, str]]:
    sql = "SELECT DISTINCT user_id, service_id FROM requests WHERE started_at >= ? AND started_at < ?"
    return [(u, s) for u, s in conn.execute(sql, (a, b))]


def _latencies(conn: sqlite3.Connection, figs: Figures, want_cell: Callable[[str, str], bool] | None) -> None:
    a, b = figs.window.start, figs.window.end
    rows = conn.execute(_LATENCY_SQL, (a, b)).fetchall()
    # Durations arrive sorted, so every list of them is sorted; times to first byte are sorted
    # per list below (stable: equal values are equal floats, the order among them is moot).
    by_user_d: defaultdict[str, list[float]] = defaultdict(list)
    by_user_f: defaultdict[str, list[float]] = defaultdict(list)
    by_svc_d: defaultdict[str, list[float]] = defaultdict(list)
    by_svc_f: defaultdict[str, list[float]] = defaultdict(list)
    for u, s, d, f in rows:
        by_user_d[u].append(d)
        by_svc_d[s].append(d)
        if f is not None:
            by_user_f[u].append(f)
            by_svc_f[s].append(f)
    all_d = [r[2] for r in rows]
    all_f = sorted([r[3] for r in rows if r[3] is not None])

    def put(key: tuple[str, str], d: list[float], f: list[float]) -> None:
        f.sort()
        cell = figs.usage[key]
        cell.duration_p50, cell.duration_p95 = percentile(d, 50), percentile(d, 95)
        cell.ttfb_p50, cell.ttfb_p95 = percentile(f, 50), percentile(f, 95)

    for u, d in by_user_d.items():
        put((u, ALL), d, by_user_f.get(u, []))
    for s, d in by_svc_d.items():
        put((ALL, s), d, by_svc_f.get(s, []))
    if all_d:
        put((ALL, ALL), all_d, all_f)
    pairs = [k for k in figs.usage if k[0] != ALL and k[1] != ALL]
    if not pairs:
        return
    dur: defaultdict[tuple[str, str], list[float]] = defaultdict(list)
    ttfb: defaultdict[tuple[str, str], list[float]] = defaultdict(list)
    for u, s, d, f in rows:
        if (u, s) in figs.usage:
            dur[(u, s)].append(d)
            if f is not None:
                ttfb[(u, s)].append(f)
    for key, d in dur.items():
        put(key, d, ttfb.get(key, []))


def _days(conn: sqlite3.Connection, figs: Figures) -> None:
    w = figs.window
    services = sorted(s for (u, s) in figs.usage if u == ALL and s != ALL)  # those with requests
    bounds = [*w.day_starts, w.end]
    for s in services:
        for (day, lo), hi in zip(w.days, bounds[1:], strict=True):
            n = conn.execute(_DAY_SQL, (s, lo, hi)).fetchone()[0]
            if n:
                figs.days[(s, day)] = n


def _gpu(conn: sqlite3.Connection, figs: Figures, now: float) -> None:
    w = figs.window
    jobs = [JobSpan(*row) for row in conn.execute(_JOBS_SQL, (w.end, w.start))]
    busy: defaultdict[int, list[tuple[float, float | None, str]]] = defaultdict(list)
    if jobs:
        ids = {j.id for j in jobs}
        params = (w.start - LONG_REQUEST, w.end, w.start, w.start - LONG_REQUEST, w.start)
        for job_id, user, start, end in conn.execute(_BUSY_SQL, params):
            if job_id in ids:
                busy[job_id].append((start, end, user))
    ready: defaultdict[str, list[tuple[float, float]]] = defaultdict(list)
    to_ready: defaultdict[str, list[float]] = defaultdict(list)
    hi = min(w.end, now)
    pair_gpu: dict[tuple[str, str], float] = {}
    for job in jobs:
        res = attribute(job, busy.get(job.id, []), w.start, w.end, now)
        if res.run_seconds <= 0:
            continue
        g = figs.gpu.setdefault(job.service, ServiceGPU())
        g.jobs += 1
        g.jobs_open += job.ended_at is None
        g.job_seconds += res.run_seconds
        g.gpu_seconds += res.gpu_seconds
        g.idle_gpu_seconds += res.idle_gpu_seconds
        g.idle_ready_gpu_seconds += res.idle_ready_gpu_seconds
        for user, secs in res.users.items():
            pair_gpu[(user, job.service)] = pair_gpu.get((user, job.service), 0.0) + secs
        r = ready_interval(job, now)
        if r is not None:
            ready[job.service].append(clip(w.start, hi, *r))
            if w.start <= r[0] < w.end:
                to_ready[job.service].append(r[0] - job.submitted_at)
    for s, g in figs.gpu.items():
        g.ready_seconds = union_length(ready.get(s, []))
        g.submit_to_ready_median = median(to_ready.get(s, []))
    # Pairs, then user, service and overall sums, in one fixed order (jobs by id above).
    usage = figs.usage
    for (u, s), secs in sorted(pair_gpu.items()):
        for key in ((u, s), (u, ALL), (ALL, s), (ALL, ALL)):
            cell = usage.get(key)
            if cell is None:  # e.g. in flight on this job, but started in an earlier month
                cell = usage[key] = Usage()
            cell.gpu_seconds += secs


# --- rollups ---------------------------------------------------------------------------------


def has_rollup(session: Session, window: Window) -> bool:
    row = (
        dbapi(session)
        .execute("SELECT 1 FROM rollup_months WHERE month = ? AND tz = ?", (window.month, window.tz))
        .fetchone()
    )
    return row is not None


def pruned_before(session: Session) -> tuple[float, str] | None:
    """The latest end of a rolled-up month and its zone: request rows before it may be gone."""
    row = (
        dbapi(session).execute("SELECT end_at, tz FROM rollup_months ORDER BY end_at DESC LIMIT 1").fetchone()
    )
    return (float(row[0]), str(row[1])) if row else None


def load(session: Session, window: Window) -> Figures:
    conn = dbapi(session)
    key = (window.month, window.tz)
    figs = Figures(window)
    cols = ", ".join(USAGE_FIELDS)
    for row in conn.execute(
        f"SELECT user_id, service_id, {cols} FROM rollup_usage WHERE month = ? AND tz = ?"
        " ORDER BY user_id, service_id",
        key,
    ):
        figs.usage[(row[0], row[1])] = Usage(*row[2:])
    cols = ", ".join(GPU_FIELDS)
    for row in conn.execute(
        f"SELECT service_id, {cols} FROM rollup_services WHERE month = ? AND tz = ? ORDER BY service_id", key
    ):
        figs.gpu[row[0]] = ServiceGPU(*row[1:])
    for s, day, n in conn.execute(
        "SELECT service_id, day, requests FROM rollup_days WHERE month = ? AND tz = ? ORDER BY service_id, day",
        key,
    ):
        figs.days[(s, day)] = n
    return figs


def store(session: Session, figs: Figures, made_at: float) -> None:
    """Write the figures to the rollup tables (the caller holds a write transaction)."""
    conn = dbapi(session)
    w = figs.window
    key = (w.month, w.tz)
    for table in ("rollup_usage", "rollup_services", "rollup_days", "rollup_months"):
        conn.execute(f"DELETE FROM {table} WHERE month = ? AND tz = ?", key)
    conn.execute(
        "INSERT INTO rollup_months (month, tz, start_at, end_at, made_at) VALUES (?, ?, ?, ?, ?)",
        (*key, w.start, w.end, made_at),
    )
    cols = ", ".join(USAGE_FIELDS)
    marks = ", ".join("?" * (len(USAGE_FIELDS) + 4))
    conn.executemany(
        f"INSERT INTO rollup_usage (month, tz, user_id, service_id, {cols}) VALUES ({marks})",
        [(*key, u, s, *astuple(v)) for (u, s), v in sorted(figs.usage.items())],
    )
    cols = ", ".join(GPU_FIELDS)
    marks = ", ".join("?" * (len(GPU_FIELDS) + 3))
    conn.executemany(
        f"INSERT INTO rollup_services (month, tz, service_id, {cols}) VALUES ({marks})",
        [(*key, s, *astuple(g)) for s, g in sorted(figs.gpu.items())],
    )
    conn.executemany(
        "INSERT INTO rollup_days (month, tz, service_id, day, requests) VALUES (?, ?, ?, ?, ?)",
        [(*key, s, d, n) for (s, d), n in sorted(figs.days.items())],
    )
