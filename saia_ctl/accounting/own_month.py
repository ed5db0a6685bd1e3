"""One user's month so far, read from that user's rows only: the figures ``GET /v1/usage``
shows, equal to the month report's for the user (``report.monthly_report(user=U, by="user")``).

The report makes the whole month (``assemble``); this reads only what the user's
figures depend on, with the same code and in the same order, so the numbers are
the same to the last digit:

- requests and tokens: the user's ledger row for the folded part plus their rows
  of the rest (the tail), through ``ix_requests_user_started``;
- attributed GPU-hours: the report splits each service's rounded GPU total among
  all its users and its idle time by cumulative rounding (``shares``), so a user's
  share needs three sums of the service's split — of the keys before the user, the
  user's own, of all: from the ledger's blocks of the service's users (the block
  that holds the user and the last one, ``shares.before_and_own``, ``total_of``: no
  other user's entry decoded) plus the tail's attribution of that service's jobs
  (all their requests, not only the user's), and the service's job and idle time.

Stdlib only and cheap to import (no ``dataclasses``, ``json``, ``re`` or ``typing``):
the request path answers with it, one process per request. A month with a rollup
(or rows pruned in another zone) returns None: the caller makes the report.
"""

from __future__ import annotations

from .gpu import JobSpan, attribute, clip
from .row_sql import COUNTER_SQL, CURSOR_SQL, LATE_IN_SQL, LONG_OR_OPEN, LONG_REQUEST, jobs_in
from .shares import before_and_own, milli_gpu_hours, order_key, share, to_ns, total_of
from .zones import month_bounds

TYPE_CHECKING = False  # the request path answers with this module: no typing, no dataclasses
if TYPE_CHECKING:
    import sqlite3

# The counters the usage view shows (of ``figures.COUNT_FIELDS``, the ledger's column names).
COUNTS = ("requests", "input_tokens", "output_tokens")
_USER_TAIL_SQL = (
    f"SELECT {', '.join(COUNTER_SQL[name] for name in COUNTS)} FROM requests"
    " WHERE user_id = ? AND started_at >= ? AND started_at < ?"
)
_USER_LEDGER_SQL = f"SELECT {', '.join(COUNTS)} FROM ledger_users WHERE tz = ? AND month = ? AND user_id = ?"

# The services of the jobs the user's requests ran on that may have been in flight in [lo, hi):
# the user's rows that started in [lo - LONG_REQUEST, hi) and their long or open ones.
_USER_SERVICES_SQL = f"""
SELECT DISTINCT service_id FROM jobs WHERE id IN (
  SELECT job_id FROM requests WHERE user_id = ? AND started_at >= ? AND started_at < ?
  UNION
  SELECT job_id FROM requests WHERE ({LONG_OR_OPEN}) AND started_at < ? AND user_id = ?
)
"""

# A service's stored users (``shares.pack``): the block that holds, or would hold, a user (the
# last whose first user is not after them in split order), and the last block (the total).
_BLOCK_SQL = (
    "SELECT before_ns, keys, running FROM ledger_gpu_blocks WHERE tz = ? AND month = ? AND service_id = ?"
    " AND first_key <= ? ORDER BY first_key DESC LIMIT 1"
)
_LAST_BLOCK_SQL = (
    "SELECT before_ns, running FROM ledger_gpu_blocks WHERE tz = ? AND month = ? AND service_id = ?"
    " ORDER BY first_key DESC LIMIT 1"
)

# ``scan._BUSY_SQL`` for the jobs of one service: the requests that may be in flight during
# [A, B) on that service's jobs (a request's row carries its job's service), by start time
# through ix_requests_service_started, long or open ones through ix_requests_long.
_SERVICE_BUSY_SQL = """
SELECT job_id, user_id, started_at, ended_at FROM requests
WHERE service_id = ? AND started_at >= ? AND started_at < ? AND job_id IS NOT NULL
  AND (ended_at IS NULL OR ended_at > ?)
"""
_LONG_BUSY_SQL = f"""
SELECT job_id, user_id, started_at, ended_at FROM requests
WHERE ({LONG_OR_OPEN}) AND started_at < ?
  AND job_id IS NOT NULL AND (ended_at IS NULL OR ended_at > ?)
"""


class OwnMonth:
    """A user's month so far, as the report shows it."""

    __slots__ = ("counts", "gpu_milli")

    def __init__(self, counts: dict[str, int], gpu_milli: int) -> None:
        self.counts = counts  # COUNTS -> the user's month so far
        self.gpu_milli = gpu_milli  # attributed GPU time in thousandths of a GPU-hour, as the report shows it


def own_month(conn: sqlite3.Connection, month: str, tz: str, now: float, user: str) -> OwnMonth | None:
    """The user's month so far; None if the month is the rollups' (the caller makes the report)."""
    a, b = month_bounds(month, tz)  # months.month_window's start and end
    # report.month_figures' rules: a rolled-up month (or one pruned in another zone) is the report's
    sql = "SELECT 1 FROM rollup_months WHERE month = ? AND tz = ?"
    if conn.execute(sql, (month, tz)).fetchone() is not None:
        return None
    sql = "SELECT end_at, tz FROM rollup_months ORDER BY end_at DESC LIMIT 1"
    mark = conn.execute(sql).fetchone()
    if mark is not None and a < float(mark[0]) and tz != str(mark[1]):
        return None
    key = (tz, month)
    at = conn.execute(CURSOR_SQL, (tz,)).fetchone()  # ledger.read_cursor: folded to, highest id seen
    c = a if at is None else min(max(float(at[0]), a), b)  # [a, c) is folded, [c, b) is the tail
    if at is not None and c > a and conn.execute(LATE_IN_SQL, (int(at[1]), a, c)).fetchone():
        c = a
    folded = c > a

    counts = [0] * len(COUNTS)
    if folded:
        row = conn.execute(_USER_LEDGER_SQL, (*key, user)).fetchone()
        if row is not None:
            counts = [int(x) for x in row]
    if c < b:
        row = conn.execute(_USER_TAIL_SQL, (user, c, b)).fetchone()
        if row[0]:
            counts = [x + int(y) for x, y in zip(counts, row, strict=True)]

    # The user's folded share of each service with jobs this month: from the block of the
    # service's users that holds (or would hold) the user, one look each.
    me = order_key(user)
    all_jobs = jobs_in(conn, a, b)
    folded_of: dict[str, tuple[int, int]] = {}  # service -> (the users' before the user, own)
    if folded:
        for sv in sorted({j.service for j in all_jobs}):
            row = conn.execute(_BLOCK_SQL, (*key, sv, me)).fetchone()
            if row is not None:
                folded_of[sv] = before_and_own(row[0], row[1], row[2], user)
    named = {sv for sv, (_, own) in folded_of.items() if own}
    tail_services: set[str] = set()
    if c < b:
        params = (user, c - LONG_REQUEST, b, c - LONG_REQUEST, user)
        tail_services = {sv for (sv,) in conn.execute(_USER_SERVICES_SQL, params)}
    services = named | tail_services
    if not services:
        return OwnMonth(dict(zip(COUNTS, counts, strict=True)), 0)

    month_jobs = [j for j in all_jobs if j.service in services]
    idle: dict[int, tuple[float, float]] = {}
    if folded and month_jobs:
        sql = "SELECT job_id, idle_gpu_seconds, idle_ready_gpu_seconds FROM ledger_jobs WHERE tz = ? AND month = ?"
        wanted = {j.id for j in month_jobs}
        for job_id, i, r in conn.execute(sql, key):
            if job_id in wanted:
                idle[job_id] = (i, r)
    tail: dict[str, dict[str, int]] = {}
    if c < b:
        tail = _tail(conn, sorted(services), c, b, now, idle)

    milli = 0
    gpu_seconds: dict[str, float] = {}
    idle_seconds: dict[str, float] = {}
    for job in month_jobs:  # assemble._gpu's sums, in its order (jobs by id)
        assert job.started_at is not None  # jobs_in
        run_a, run_b = clip(a, b, job.started_at, now if job.ended_at is None else job.ended_at)
        if run_b <= run_a:
            continue
        gpu_seconds[job.service] = gpu_seconds.get(job.service, 0.0) + (run_b - run_a) * float(job.gpus)
        idle_seconds[job.service] = idle_seconds.get(job.service, 0.0) + idle.get(job.id, (0.0, 0.0))[0]
    for sv, g in gpu_seconds.items():  # report.split_gpu: the user's share of the service's split
        before, own = folded_of.get(sv, (0, 0))
        whole = 0
        if folded and (last := conn.execute(_LAST_BLOCK_SQL, (*key, sv)).fetchone()) is not None:
            whole = total_of(last[0], last[1])
        added = tail.get(sv, {})
        own += added.get(user, 0)
        if not own:
            continue
        whole += sum(added.values())
        before += sum(ns for u, ns in added.items() if order_key(u) < me)
        idle_ns = to_ns(idle_seconds[sv])  # IDLE comes first
        milli += share(idle_ns + before, own, idle_ns + whole, milli_gpu_hours(g))
    return OwnMonth(dict(zip(COUNTS, counts, strict=True)), milli)


def _tail(
    conn: sqlite3.Connection,
    services: list[str],
    lo: float,
    hi: float,
    now: float,
    idle: dict[int, tuple[float, float]],
) -> dict[str, dict[str, int]]:
    """``scan._attribute`` over [lo, hi) for the jobs of ``services`` only: each service's
    users' tail in ns, as ``assemble._gpu`` adds it (seconds summed job by job, in job order,
    then ``to_ns``); the jobs' tail idle time is added to ``idle``."""
    wanted = set(services)
    jobs: list[JobSpan] = [j for j in jobs_in(conn, lo, hi) if j.service in wanted]
    if not jobs:
        return {}
    busy: dict[int, list[tuple[float, float | None, str]]] = {j.id: [] for j in jobs}
    for sv in services:  # each job's rows in the scan's order: short ones by start, then long ones
        for job_id, u, start, end in conn.execute(_SERVICE_BUSY_SQL, (sv, lo - LONG_REQUEST, hi, lo)):
            if job_id in busy:
                busy[job_id].append((start, end, u))
    for job_id, u, start, end in conn.execute(_LONG_BUSY_SQL, (lo - LONG_REQUEST, lo)):
        if job_id in busy:
            busy[job_id].append((start, end, u))
    tail: dict[tuple[str, str], float] = {}
    tail_idle: dict[int, tuple[float, float]] = {}
    for job in jobs:
        res = attribute(job, busy[job.id], lo, hi, now)
        if res.run_seconds <= 0:
            continue
        tail_idle[job.id] = (res.idle_gpu_seconds, res.idle_ready_gpu_seconds)
        for u, secs in res.users.items():
            k = (u, job.service)
            tail[k] = tail.get(k, 0.0) + secs
    for job_id, (i, r) in tail_idle.items():
        have = idle.get(job_id, (0.0, 0.0))
        idle[job_id] = (have[0] + i, have[1] + r)
    out: dict[str, dict[str, int]] = {}
    for (u, sv), secs in tail.items():
        out.setdefault(sv, {})[u] = to_ns(secs)
    return out
