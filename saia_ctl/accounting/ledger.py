"""The accounting ledger: each month's figures, kept up to date one closed day at a time.

A month's report needs every request of the month, and reading a million rows
into Python takes longer than the report may. So a day that is over (and has
no request still open) is *folded* once into small per-month tables: counters
per user and per service, each with all its durations and times to first byte
as one sorted run; per service the GPU time attributed to each user, and its
requests per day; per job its idle GPU time. A report reads
those tables for the folded days of its month and scans the rows only for the
rest (the *tail*: today, or a month nobody folded yet) with the same code the
fold uses, so the figures are the same whichever way they were made.

What adds up exactly, and why: counters are integers; durations are kept whole
(nearest-rank percentiles are picked from the union of sorted runs, never
estimated); job, idle and ready times are sums of differences of timestamps,
which are exact in binary floating point for epoch times in 2004-2038. Only an
attributed share (time divided by the requests in flight) is rounded, so a
user's unrounded GPU seconds may differ in the last binary digit from a single
pass over the month; the report rounds to thousandths of a GPU-hour.

The ledger keeps one zone's days (``SAIA_ACCOUNTING_TZ``, a cursor per zone):
everything before the cursor is folded. A day is folded when it ended at least
``MARGIN`` seconds ago and no request that started before its end is open.
A fold is one short write transaction that checks and moves the cursor, so two
folds at once, or a fold killed half-way, never count a day twice. The cursor
also keeps the highest request id seen: a row with a higher id that started
before the cursor came late (a backfill); reports then scan its month, and the
next fold rewinds the ledger to that month and folds it again.
"""

from __future__ import annotations

import bisect
import itertools
import json
import math
import sqlite3
import struct
import sys
import time
from array import array
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine

from .figures import ALL, COUNT_FIELDS, LONG_REQUEST, Figures, ServiceGPU, Usage
from .gpu import JobSpan, attribute, clip, median, percentile, ready_interval, union_length
from .months import Window, month_of, month_window

# A day is folded this long after it ended at the earliest: the scheduler may still
# correct a job's end time a little after the fact, and a request's row is written
# right after its start time was taken (at most the busy timeout later).
MARGIN = 900.0

N = len(COUNT_FIELDS)  # requests, ok, errors, errors_4xx, errors_5xx, aborted, in_flight, tokens in/out

# SUM of a group whose terms are all NULL (e.g. only in-flight rows: outcome IS NULL) is NULL,
# hence the IFNULLs: such a group has 0 ok, 0 errors... (not null).
_COUNT_COLUMNS = """COUNT(*),
       IFNULL(SUM(outcome = 'ok'), 0), IFNULL(SUM(outcome = 'error'), 0),
       IFNULL(SUM(outcome = 'error' AND status >= 400 AND status < 500), 0),
       IFNULL(SUM(outcome = 'error' AND status >= 500), 0),
       IFNULL(SUM(outcome = 'aborted'), 0), SUM(outcome IS NULL),
       IFNULL(SUM(input_tokens), 0), IFNULL(SUM(output_tokens), 0)"""

_LEVEL_SQL = f"""
SELECT {{column}}, {_COUNT_COLUMNS}
FROM requests WHERE started_at >= ? AND started_at < ? GROUP BY {{column}}
"""

_CELLS_SQL = f"""
SELECT user_id, service_id, {_COUNT_COLUMNS}
FROM requests WHERE started_at >= ? AND started_at < ?{{extra}} GROUP BY user_id, service_id
"""

# Ordered by duration: every list built from it comes out sorted (SQLite's sorter is C).
_LATENCY_SQL = """
SELECT user_id, service_id, ended_at - started_at AS d, first_byte_at - started_at
FROM requests WHERE started_at >= ? AND started_at < ? AND outcome = 'ok'{extra}
ORDER BY d
"""

# Requests per service in one local day: a range count on ix_requests_service_started.
_DAY_SQL = "SELECT count(*) FROM requests WHERE service_id = ? AND started_at >= ? AND started_at < ?"

_JOBS_SQL = """
SELECT id, service_id, gpus, submitted_at, started_at, ready_at, draining_at, ended_at
FROM jobs WHERE started_at IS NOT NULL AND started_at < ? AND (ended_at IS NULL OR ended_at > ?)
ORDER BY id
"""

# Requests that may be in flight during [A, B): short ones by start time, long or open
# ones through the partial index ix_requests_long (same WHERE terms, so SQLite uses it).
_BUSY_SQL = f"""
SELECT job_id, user_id, started_at, ended_at FROM requests
WHERE started_at >= ? AND started_at < ? AND job_id IS NOT NULL
  AND (ended_at IS NULL OR ended_at > ?)
UNION ALL
SELECT job_id, user_id, started_at, ended_at FROM requests
WHERE (ended_at IS NULL OR ended_at - started_at > {LONG_REQUEST}) AND started_at < ?
  AND job_id IS NOT NULL AND (ended_at IS NULL OR ended_at > ?)
"""

_OPEN_SQL = "SELECT MIN(started_at) FROM requests WHERE ended_at IS NULL"
_FIRST_SQL = "SELECT MIN(t) FROM (SELECT MIN(started_at) AS t FROM requests UNION ALL SELECT MIN(started_at) FROM jobs)"


# --- sorted runs of floats, stored as little-endian doubles -----------------------------------


def pack(values: Sequence[float]) -> bytes:
    a = array("d", values)
    if sys.byteorder == "big":
        a.byteswap()
    return a.tobytes()


def unpack(blob: bytes | None) -> array[float]:
    a = array("d")
    if blob:
        a.frombytes(blob)
        if sys.byteorder == "big":
            a.byteswap()
    return a


def _key(x: float) -> int:
    """An integer that orders like the float ``x`` (IEEE 754 bits, sign folded)."""
    bits = int(struct.unpack("<q", struct.pack("<d", x))[0])
    return bits if bits >= 0 else -(bits & 0x7FFFFFFFFFFFFFFF) - 1


def _float(key: int) -> float:
    bits = key if key >= 0 else (-(key + 1)) | -0x8000000000000000
    (x,) = struct.unpack("<d", struct.pack("<q", bits))
    return float(x)


def nth_smallest(runs: Sequence[Sequence[float]], rank: int) -> float:
    """The ``rank``-th smallest value (1-based) of the union of sorted runs, without merging them."""
    runs = [r for r in runs if len(r)]
    if len(runs) == 1:
        return runs[0][rank - 1]
    lo = min(_key(r[0]) for r in runs)
    hi = max(_key(r[-1]) for r in runs)
    while lo < hi:  # the least key whose float has at least `rank` values at or below it
        mid = (lo + hi) // 2
        v = _float(mid)  # never NaN: NaN keys lie beyond those of the infinities
        if sum(bisect.bisect_right(r, v) for r in runs) < rank:
            lo = mid + 1
        else:
            hi = mid
    v = _float(lo)
    # the stored value itself (the same float; this keeps 0.0 from coming back as -0.0)
    return min(r[i] for r in runs if (i := bisect.bisect_left(r, v)) < len(r))


# Up to this many values in several runs, sorting them together is cheaper than selecting.
MERGE_UP_TO = 4096


def _rank(p: float, n: int) -> int:
    return min(max(1, math.ceil(p * n / 100)), n)  # as gpu.percentile


def runs_percentile(runs: Sequence[Sequence[float]], p: float) -> float | None:
    """Nearest-rank percentile of the union of sorted runs (as ``gpu.percentile`` of it merged)."""
    n = sum(len(r) for r in runs)
    if not n:
        return None
    return nth_smallest(runs, _rank(p, n))


def nth_of_two(a: Sequence[float], b: Sequence[float], rank: int) -> float:
    """The ``rank``-th smallest (1-based) of two sorted runs; O(len(b)), for a short ``b``."""
    n, m = len(a), len(b)
    for j in range(max(0, rank - n), min(m, rank) + 1):  # j values of b among the `rank` smallest
        i = rank - j
        if (j == m or i == 0 or a[i - 1] <= b[j]) and (j == 0 or i == n or b[j - 1] <= a[i]):
            if i == 0:
                return b[j - 1]
            if j == 0:
                return a[i - 1]
            return max(a[i - 1], b[j - 1])
    raise ValueError("runs not sorted")


# --- one scan of the rows: the figures of [lo, hi) that can be added to others -----------------


@dataclass
class Span:
    """What the rows say about [lo, hi): sums that add up across spans, and sorted runs."""

    users: dict[str, list[int]] = field(default_factory=dict)  # counters per user
    services: dict[str, list[int]] = field(default_factory=dict)  # counters per service
    user_lat: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)
    service_lat: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)
    days: dict[tuple[str, str], int] = field(default_factory=dict)  # (service, local day) requests
    gpu: dict[tuple[str, str], float] = field(default_factory=dict)  # attributed GPU seconds
    idle: dict[int, tuple[float, float]] = field(default_factory=dict)  # job: idle, idle-while-ready GPU s


def scan(conn: sqlite3.Connection, window: Window, lo: float, hi: float, now: float) -> Span:
    """The rows' figures for requests that started in [lo, hi) and GPU time in [lo, hi)."""
    span = Span()
    for level, column in ((span.users, "user_id"), (span.services, "service_id")):
        for row in conn.execute(_LEVEL_SQL.format(column=column), (lo, hi)):
            level[row[0]] = list(row[1:])
    by_user: defaultdict[str, tuple[list[float], list[float]]] = defaultdict(lambda: ([], []))
    by_service: defaultdict[str, tuple[list[float], list[float]]] = defaultdict(lambda: ([], []))
    for u, s, d, f in conn.execute(_LATENCY_SQL.format(extra=""), (lo, hi)):
        ud, uf = by_user[u]
        sd, sf = by_service[s]
        ud.append(d)
        sd.append(d)
        if f is not None:
            uf.append(f)
            sf.append(f)
    for lists in (by_user, by_service):
        for _, f_list in lists.values():
            f_list.sort()
    span.user_lat, span.service_lat = dict(by_user), dict(by_service)
    services = sorted(span.services)
    for day, a, b in _days_in(window, lo, hi):
        for s in services:
            n = conn.execute(_DAY_SQL, (s, a, b)).fetchone()[0]
            if n:
                span.days[(s, day)] = n
    _attribute(conn, span, lo, hi, now)
    return span


def _days_in(window: Window, lo: float, hi: float) -> list[tuple[str, float, float]]:
    bounds = [*window.day_starts[1:], window.end]
    out = []
    for (day, a), b in zip(window.days, bounds, strict=True):
        a, b = max(a, lo), min(b, hi)
        if b > a:
            out.append((day, a, b))
    return out


def _attribute(conn: sqlite3.Connection, span: Span, lo: float, hi: float, now: float) -> None:
    jobs = [JobSpan(*row) for row in conn.execute(_JOBS_SQL, (hi, lo))]
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


# --- folding closed days into the ledger -----------------------------------------------------


@dataclass(frozen=True)
class Cursor:
    """Where the ledger of a zone stands: the days before ``folded_to`` are folded, from the
    request rows up to id ``max_id`` (a row with a higher id arrived after; if it started
    before ``folded_to``, it came late and the ledger must be rewound to fold it in)."""

    folded_to: float
    max_id: int


def read_cursor(conn: sqlite3.Connection, tz: str) -> Cursor | None:
    row = conn.execute("SELECT folded_to, max_request_id FROM ledger_cursors WHERE tz = ?", (tz,)).fetchone()
    return None if row is None else Cursor(float(row[0]), int(row[1]))


def cursor(conn: sqlite3.Connection, tz: str) -> float | None:
    """Up to where the days of zone ``tz`` are folded (None: not begun)."""
    c = read_cursor(conn, tz)
    return None if c is None else c.folded_to


# Rows that arrived after the last fold but started before its end: read through the rowid
# range (the rows inserted since that fold), never the started_at index (millions of rows).
_LATE_SQL = "SELECT MIN(started_at) FROM requests NOT INDEXED WHERE id > ? AND started_at < ?"
_LATE_IN_SQL = (
    "SELECT 1 FROM requests NOT INDEXED WHERE id > ? AND started_at >= ? AND started_at < ? LIMIT 1"
)


def _watermark(conn: sqlite3.Connection, now: float) -> float:
    """Days ending at or before this can be folded."""
    oldest_open = conn.execute(_OPEN_SQL).fetchone()[0]
    w = now - MARGIN
    return w if oldest_open is None else min(w, float(oldest_open))


@dataclass(frozen=True)
class DueDay:
    month: str
    day: str
    start: float
    end: float


def next_day(conn: sqlite3.Connection, tz: str, at: float | None, now: float) -> DueDay | None:
    """The day of zone ``tz`` that starts at the cursor ``at``, if it may be folded now."""
    if at is None:
        first = conn.execute(_FIRST_SQL).fetchone()[0]
        if first is None:
            return None
        at = month_window(month_of(float(first), tz), tz).start
    w = month_window(month_of(at, tz), tz)
    bounds = [*w.day_starts[1:], w.end]
    for (day, a), b in zip(w.days, bounds, strict=True):
        if a <= at < b:
            if b > now - MARGIN or b > _watermark(conn, now):
                return None
            return DueDay(w.month, day, a, b)
    return None  # not reached: the cursor is always a local midnight of its month


@dataclass
class FoldResult:
    days: list[str] = field(default_factory=list)
    rewound: list[str] = field(default_factory=list)  # months refolded for rows that came late
    seconds: float = 0.0  # wall time
    writes: list[float] = field(default_factory=list)  # each step's write transaction (seconds)


@dataclass
class _Step:
    """One fold step, prepared in a read transaction: fold a day, or rewind for late rows."""

    seen: Cursor | None
    new: Cursor
    statements: Statements
    day: str | None = None
    rewind_month: str | None = None


def fold(
    conn: sqlite3.Connection,
    tz: str,
    now: float,
    *,
    max_days: int | None = None,
) -> FoldResult:
    """Fold the due days of zone ``tz`` (at most ``max_days``).

    ``conn`` is a plain sqlite3 connection in autocommit mode (isolation_level None): each day
    is scanned in a read transaction and written in one short BEGIN IMMEDIATE transaction.
    """
    result = FoldResult()
    t0 = time.monotonic()
    while max_days is None or len(result.days) < max_days:
        step = _scan_next(conn, tz, now)
        if step is None:
            break
        t1 = time.monotonic()
        conn.execute("BEGIN IMMEDIATE")
        try:
            if read_cursor(conn, tz) != step.seen:  # another fold moved it meanwhile: look again
                conn.execute("ROLLBACK")
                continue
            _write(conn, step.statements)
            conn.execute(
                "INSERT INTO ledger_cursors (tz, folded_to, max_request_id, folded_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (tz) DO UPDATE SET folded_to = excluded.folded_to,"
                " max_request_id = excluded.max_request_id, folded_at = excluded.folded_at",
                (tz, step.new.folded_to, step.new.max_id, now),
            )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:  # a failed COMMIT may have rolled back already
                conn.execute("ROLLBACK")
            raise
        result.writes.append(time.monotonic() - t1)
        if step.day is not None:
            result.days.append(step.day)
        if step.rewind_month is not None:
            result.rewound.append(step.rewind_month)
            if result.rewound.count(step.rewind_month) > 1:
                break  # rows keep arriving late: leave it to the next fold
    result.seconds = time.monotonic() - t0
    return result


def _scan_next(conn: sqlite3.Connection, tz: str, now: float) -> _Step | None:
    """The next step and its writes, read in one read transaction (one snapshot)."""
    conn.execute("BEGIN")
    try:
        seen = read_cursor(conn, tz)
        due = next_day(conn, tz, None if seen is None else seen.folded_to, now)
        if due is None:  # nothing due (rows that came late wait for the next due day)
            return None
        max_id = int(conn.execute("SELECT IFNULL(MAX(id), 0) FROM requests").fetchone()[0])
        if seen is not None:
            late = conn.execute(_LATE_SQL, (seen.max_id, seen.folded_to)).fetchone()[0]
            if late is not None:  # refold from the month of the earliest late row
                month = month_of(float(late), tz)
                start = month_window(month, tz).start
                deletes: Statements = [
                    (f"DELETE FROM {table} WHERE tz = ? AND month >= ?", [(tz, month)])
                    for table in LEDGER_TABLES
                ]
                return _Step(seen, Cursor(start, max_id), deletes, rewind_month=month)
        step = _Step(seen, Cursor(due.end, max_id), [], day=due.day)
        rolled_up = "SELECT 1 FROM rollup_months WHERE month = ? AND tz = ?"
        if not conn.execute(rolled_up, (due.month, tz)).fetchone():  # pruned: its rollup answers
            span = scan(conn, month_window(due.month, tz), due.start, due.end, now)
            step.statements = _prepare(conn, tz, due, span)
        return step
    finally:
        conn.execute("COMMIT")


LEDGER_TABLES = ("ledger_users", "ledger_services", "ledger_days", "ledger_jobs")


def drop_month(conn: sqlite3.Connection, tz: str, month: str) -> None:
    """Forget a month's folded figures (once its rollup keeps them; the cursor stays)."""
    for table in LEDGER_TABLES:
        conn.execute(f"DELETE FROM {table} WHERE tz = ? AND month = ?", (tz, month))


def fold_engine(engine: Engine, tz: str, now: float, *, max_days: int | None = None) -> FoldResult:
    """``fold`` on a connection of ``engine`` (the tick and `saia-ctl db ledger`)."""
    raw = engine.raw_connection()
    try:
        conn = raw.driver_connection
        assert isinstance(conn, sqlite3.Connection)
        return fold(conn, tz, now, max_days=max_days)
    finally:
        raw.close()


_COUNT_NAMES = ", ".join(COUNT_FIELDS)
_ADD_COUNTS = ", ".join(f"{c} = {c} + excluded.{c}" for c in COUNT_FIELDS)


Statements = list[tuple[str, list[tuple[Any, ...]]]]


def _level_rows(
    conn: sqlite3.Connection,
    table: str,
    column: str,
    key: tuple[str, str],
    counts: dict[str, list[int]],
    lat: dict[str, tuple[list[float], list[float]]],
) -> tuple[str, list[tuple[Any, ...]]]:
    """The upsert adding a day's counters to the users' (or services') rows, durations merged in."""
    ids = sorted(counts)
    old: dict[str, tuple[bytes, bytes]] = {}
    for i in range(0, len(ids), 500):
        chunk = ids[i : i + 500]
        sql = (
            f"SELECT {column}, durations, ttfbs FROM {table} WHERE tz = ? AND month = ?"
            f" AND {column} IN ({', '.join('?' * len(chunk))})"
        )
        for k, d, f in conn.execute(sql, (*key, *chunk)):
            old[k] = (d, f)

    def merged(blob: bytes, new: list[float]) -> bytes:
        return pack(sorted([*unpack(blob), *new])) if new else blob

    rows: list[tuple[Any, ...]] = []
    for k in ids:
        d_new, f_new = lat.get(k, ([], []))
        d_old, f_old = old.get(k, (b"", b""))
        rows.append((*key, k, *counts[k], merged(d_old, d_new), merged(f_old, f_new)))
    sql = (
        f"INSERT INTO {table} (tz, month, {column}, {_COUNT_NAMES}, durations, ttfbs)"
        f" VALUES (?, ?, ?, {', '.join('?' * N)}, ?, ?) ON CONFLICT (tz, month, {column})"
        f" DO UPDATE SET {_ADD_COUNTS}, durations = excluded.durations, ttfbs = excluded.ttfbs"
    )
    return sql, rows


def _read_level(
    conn: sqlite3.Connection,
    table: str,
    column: str,
    key: tuple[str, str],
    counts: dict[str, list[int]],
    runs: defaultdict[str, tuple[list[Sequence[float]], list[Sequence[float]]]],
) -> None:
    sql = f"SELECT {column}, {_COUNT_NAMES}, durations, ttfbs FROM {table} WHERE tz = ? AND month = ?"
    for row in conn.execute(sql, key):
        counts[row[0]] = list(row[1 : 1 + N])
        if row[-2]:
            d_runs, f_runs = runs[row[0]]
            d_runs.append(unpack(row[-2]))
            f_runs.append(unpack(row[-1]))


def _prepare(conn: sqlite3.Connection, tz: str, due: DueDay, span: Span) -> Statements:
    """The writes that fold ``span`` into the ledger, computed in the read transaction (the
    write transaction then only runs them: merging durations holds no lock)."""
    key = (tz, due.month)
    out: Statements = []
    out.append(_level_rows(conn, "ledger_users", "user_id", key, span.users, span.user_lat))
    out.append(_level_rows(conn, "ledger_services", "service_id", key, span.services, span.service_lat))
    out.append(_gpu_rows(conn, key, span.gpu))
    out.append(
        (
            "INSERT INTO ledger_days (tz, month, service_id, day, requests) VALUES (?, ?, ?, ?, ?)",
            [(*key, sv, day, n) for (sv, day), n in sorted(span.days.items())],
        )
    )
    out.append(
        (
            "INSERT INTO ledger_jobs (tz, month, job_id, idle_gpu_seconds, idle_ready_gpu_seconds)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (tz, month, job_id) DO UPDATE SET"
            " idle_gpu_seconds = idle_gpu_seconds + excluded.idle_gpu_seconds,"
            " idle_ready_gpu_seconds = idle_ready_gpu_seconds + excluded.idle_ready_gpu_seconds",
            [(*key, j, idle, ready) for j, (idle, ready) in sorted(span.idle.items())],
        )
    )
    return out


def _gpu_rows(
    conn: sqlite3.Connection, key: tuple[str, str], gpu: dict[tuple[str, str], float]
) -> tuple[str, list[tuple[Any, ...]]]:
    """The upsert adding a day's attributed GPU seconds to each service's users."""
    by_service: defaultdict[str, dict[str, float]] = defaultdict(dict)
    for (u, sv), secs in gpu.items():
        by_service[sv][u] = secs
    sql = "SELECT service_id, user_gpu_seconds FROM ledger_services WHERE tz = ? AND month = ?"
    old = dict(conn.execute(sql, key).fetchall())
    rows: list[tuple[Any, ...]] = []
    for sv, add in sorted(by_service.items()):
        have: dict[str, float] = json.loads(old.get(sv) or "{}")
        for u, secs in add.items():
            have[u] = have.get(u, 0.0) + secs
        rows.append((*key, sv, json.dumps(have, separators=(",", ":"))))
    zeros = ", ".join("0" * N)
    return (
        f"INSERT INTO ledger_services (tz, month, service_id, {_COUNT_NAMES}, durations, ttfbs, user_gpu_seconds)"
        f" VALUES (?, ?, ?, {zeros}, X'', X'', ?) ON CONFLICT (tz, month, service_id)"
        " DO UPDATE SET user_gpu_seconds = excluded.user_gpu_seconds",
        rows,
    )


def _write(conn: sqlite3.Connection, statements: Statements) -> None:
    for sql, rows in statements:
        conn.executemany(sql, rows)


# --- a month's figures: the ledger's folded days plus a scan of the rest ------------------------


def assemble(
    conn: sqlite3.Connection,
    window: Window,
    now: float,
    *,
    user: str | None = None,
    service: str | None = None,
    all_pairs: bool = False,
    use_ledger: bool = True,
) -> Figures:
    """The month's figures. (user, service) pairs get counters and latency only when wanted:
    all of them with ``all_pairs``, else those of ``user`` or of ``service``; the rest of the
    pairs carry only their attributed GPU time. ``use_ledger=False``: from the rows alone."""
    a, b = window.start, window.end
    at = read_cursor(conn, window.tz) if use_ledger else None
    c = a if at is None else min(max(at.folded_to, a), b)  # [a, c) is folded, [c, b) is scanned
    if at is not None and c > a and conn.execute(_LATE_IN_SQL, (at.max_id, a, c)).fetchone():
        c = a  # rows came late into the folded days (the next fold rewinds): scan them all
    key = (window.tz, window.month)
    tail = scan(conn, window, c, b, now) if c < b else Span()
    folded = c > a

    user_counts: dict[str, list[int]] = {}
    service_counts: dict[str, list[int]] = {}
    user_runs: defaultdict[str, tuple[list[Sequence[float]], list[Sequence[float]]]] = defaultdict(
        lambda: ([], [])
    )
    service_runs: defaultdict[str, tuple[list[Sequence[float]], list[Sequence[float]]]] = defaultdict(
        lambda: ([], [])
    )
    days: dict[tuple[str, str], int] = {}
    if folded:
        _read_level(conn, "ledger_users", "user_id", key, user_counts, user_runs)
        _read_level(conn, "ledger_services", "service_id", key, service_counts, service_runs)
        for sv, day, n in conn.execute(
            "SELECT service_id, day, requests FROM ledger_days WHERE tz = ? AND month = ?", key
        ):
            days[(sv, day)] = n
    for level, tail_level in ((user_counts, tail.users), (service_counts, tail.services)):
        for k, counts in tail_level.items():
            have = level.get(k)
            level[k] = counts if have is None else [x + y for x, y in zip(have, counts, strict=True)]
    for lat, runs_of in ((tail.user_lat, user_runs), (tail.service_lat, service_runs)):
        for k, (d, f) in lat.items():
            runs_of[k][0].append(d)
            runs_of[k][1].append(f)
    for day_key, n in tail.days.items():
        days[day_key] = days.get(day_key, 0) + n

    figs = Figures(window)
    usage = figs.usage
    for u, counts in user_counts.items():
        usage[(u, ALL)] = Usage(*counts)
    total: Usage | None = None
    for s, counts in sorted(service_counts.items()):
        usage[(ALL, s)] = Usage(*counts)
        total = total or Usage()
        total.add_counts(usage[(ALL, s)])
    if total is not None:
        usage[(ALL, ALL)] = total
    # Latency of the users, the services and all (a level without ok requests has none).
    every_d: list[Sequence[float]] = []
    every_f: list[Sequence[float]] = []
    for u, (d_runs, f_runs) in user_runs.items():
        _put(usage[(u, ALL)], d_runs, f_runs)
    for s, (d_runs, f_runs) in service_runs.items():
        _put(usage[(ALL, s)], d_runs, f_runs)
        every_d += d_runs
        every_f += f_runs
    _put(usage.get((ALL, ALL), Usage()), every_d, every_f)
    figs.days = dict(sorted(days.items()))

    want: Callable[[str, str], bool] | None = None
    if all_pairs or user is not None or service is not None:
        _pairs(conn, figs, user, service, all_pairs)

        def want(u: str, s: str) -> bool:
            return all_pairs or u == user or s == service

    _gpu(conn, figs, tail, folded, now, want)
    return figs


def _p50_p95(runs: Sequence[Sequence[float]]) -> tuple[float | None, float | None]:
    runs = [r for r in runs if len(r)]
    if len(runs) == 2:  # e.g. a user's folded durations and today's few
        a, b = sorted(runs, key=len, reverse=True)
        if len(b) <= 16:
            n = len(a) + len(b)
            return nth_of_two(a, b, _rank(50, n)), nth_of_two(a, b, _rank(95, n))
    if len(runs) > 1 and sum(len(r) for r in runs) > MERGE_UP_TO:
        return runs_percentile(runs, 50), runs_percentile(runs, 95)
    values = runs[0] if len(runs) == 1 else sorted(itertools.chain.from_iterable(runs))
    return percentile(values, 50), percentile(values, 95)


def _put(cell: Usage, d_runs: Sequence[Sequence[float]], f_runs: Sequence[Sequence[float]]) -> None:
    if not any(len(r) for r in d_runs):
        return
    cell.duration_p50, cell.duration_p95 = _p50_p95(d_runs)
    cell.ttfb_p50, cell.ttfb_p95 = _p50_p95(f_runs)


def _pairs(
    conn: sqlite3.Connection, figs: Figures, user: str | None, service: str | None, all_pairs: bool
) -> None:
    """Counters and latency of the wanted (user, service) pairs, from the month's rows: through
    ix_requests_user_started / ix_requests_service_started, a user's or a service's rows only."""
    params: tuple[str | None, ...] = ()
    extra = ""
    if not all_pairs:
        extra, params = " AND (user_id = ? OR service_id = ?)", (user, service)
    w = figs.window
    for row in conn.execute(_CELLS_SQL.format(extra=extra), (w.start, w.end, *params)):
        figs.usage[(row[0], row[1])] = Usage(*row[2:])
    lists: defaultdict[tuple[str, str], tuple[list[float], list[float]]] = defaultdict(lambda: ([], []))
    for u, s, d, f in conn.execute(_LATENCY_SQL.format(extra=extra), (w.start, w.end, *params)):
        dl, fl = lists[(u, s)]
        dl.append(d)
        if f is not None:
            fl.append(f)
    for pair, (dl, fl) in lists.items():
        fl.sort()
        _put(figs.usage[pair], [dl], [fl])


def _gpu(
    conn: sqlite3.Connection,
    figs: Figures,
    tail: Span,
    folded: bool,
    now: float,
    want: Callable[[str, str], bool] | None,
) -> None:
    w = figs.window
    key = (w.tz, w.month)
    shares: dict[str, dict[str, float]] = {}
    idle: dict[int, tuple[float, float]] = {}
    if folded:
        sql = "SELECT service_id, user_gpu_seconds FROM ledger_services WHERE tz = ? AND month = ?"
        for sv, text in conn.execute(sql, key):
            if text != "{}":
                shares[sv] = json.loads(text)
        for job_id, i, r in conn.execute(
            "SELECT job_id, idle_gpu_seconds, idle_ready_gpu_seconds FROM ledger_jobs WHERE tz = ? AND month = ?",
            key,
        ):
            idle[job_id] = (i, r)
    for (u, sv), secs in tail.gpu.items():
        users = shares.setdefault(sv, {})
        users[u] = users.get(u, 0.0) + secs
    for job_id, (i, r) in tail.idle.items():
        have = idle.get(job_id, (0.0, 0.0))
        idle[job_id] = (have[0] + i, have[1] + r)

    ready: defaultdict[str, list[tuple[float, float]]] = defaultdict(list)
    to_ready: defaultdict[str, list[float]] = defaultdict(list)
    hi = min(w.end, now)
    for job in (JobSpan(*row) for row in conn.execute(_JOBS_SQL, (w.end, w.start))):
        assert job.started_at is not None  # _JOBS_SQL
        run_a, run_b = clip(w.start, w.end, job.started_at, now if job.ended_at is None else job.ended_at)
        if run_b <= run_a:
            continue
        g = figs.gpu.setdefault(job.service, ServiceGPU())
        g.jobs += 1
        g.jobs_open += job.ended_at is None
        g.job_seconds += run_b - run_a
        g.gpu_seconds += (run_b - run_a) * float(job.gpus)
        i, r = idle.get(job.id, (0.0, 0.0))
        g.idle_gpu_seconds += i
        g.idle_ready_gpu_seconds += r
        span = ready_interval(job, now)
        if span is not None:
            ready[job.service].append(clip(w.start, hi, *span))
            if w.start <= span[0] < w.end:
                to_ready[job.service].append(span[0] - job.submitted_at)
    for s, g in figs.gpu.items():
        g.ready_seconds = union_length(ready.get(s, []))
        g.submit_to_ready_median = median(to_ready.get(s, []))
    figs.gpu_shares = shares
    # Attributed time but no request in the month (in flight on a job here, started in an
    # earlier month): the user, the service and a wanted pair still get a (zero) cell.
    usage = figs.usage
    for k in [(u, ALL) for u in set().union(*shares.values())] + [(ALL, sv) for sv in shares]:
        if k not in usage:
            usage[k] = Usage()
    if want is not None:
        for sv, users in shares.items():
            for u in users:
                if (u, sv) not in usage and want(u, sv):
                    usage[(u, sv)] = Usage()
    if shares and (ALL, ALL) not in usage:
        usage[(ALL, ALL)] = Usage()
