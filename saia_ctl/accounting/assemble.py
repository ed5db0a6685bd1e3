"""A month's figures: the ledger's folded part plus a scan of the rest of the month.

The folded part ``[start of month, cursor)`` is read from the ledger tables
(``ledger``); the rest, ``[cursor, end of month)``, is scanned from the rows
with the code the fold uses (``scan``). Counters add up, percentiles are picked
from the union of the sorted runs (``sorted_runs``), GPU time adds up per user
and per job; see ``ledger`` for why the result equals one pass over the rows.
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from collections.abc import Callable, Sequence

from .figures import ALL, Figures, ServiceGPU, Usage, named
from .gpu import clip, median, ready_interval, union_length
from .ledger import COUNT_NAMES, read_cursor, read_gpu_shares
from .months import Window
from .row_sql import LATE_IN_SQL, jobs_in
from .scan import CELLS_SQL, LATENCY_SQL, Progress, Span, counts_of, scan
from .shares import to_ns
from .sorted_runs import p50_p95, unpack

Runs = defaultdict[str, tuple[list[Sequence[float]], list[Sequence[float]]]]


def assemble(
    conn: sqlite3.Connection,
    window: Window,
    now: float,
    *,
    user: str | None = None,
    service: str | None = None,
    all_pairs: bool = False,
    use_ledger: bool = True,
    progress: Progress | None = None,
) -> Figures:
    """The month's figures. (user, service) pairs get counters and latency only when wanted:
    all of them with ``all_pairs``, else those of ``user`` or of ``service``; the rest of the
    pairs carry only their attributed GPU time. ``use_ledger=False``: from the rows alone.
    ``progress`` follows the scan of the rows that are not folded."""
    a, b = window.start, window.end
    at = read_cursor(conn, window.tz) if use_ledger else None
    c = a if at is None else min(max(at.folded_to, a), b)  # [a, c) is folded, [c, b) is scanned
    if at is not None and c > a and conn.execute(LATE_IN_SQL, (at.max_id, a, c)).fetchone():
        c = a  # rows came late into the folded part (the next fold rewinds): scan them all
    key = (window.tz, window.month)
    tail = scan(conn, window, c, b, now, progress) if c < b else Span()
    folded = c > a

    user_counts: dict[str, list[int]] = {}
    service_counts: dict[str, list[int]] = {}
    user_runs: Runs = defaultdict(lambda: ([], []))
    service_runs: Runs = defaultdict(lambda: ([], []))
    days: dict[tuple[str, str], int] = {}
    if folded:
        _read_level(conn, "ledger_users", "user_id", key, user_counts, user_runs)
        _read_level(conn, "ledger_services", "service_id", key, service_counts, service_runs)
        sql = "SELECT service_id, day, requests FROM ledger_days WHERE tz = ? AND month = ?"
        for row in named(conn).execute(sql, key):
            days[(row["service_id"], row["day"])] = row["requests"]
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
        usage[(u, ALL)] = Usage.of_counts(counts)
    total: Usage | None = None
    for s, counts in sorted(service_counts.items()):
        usage[(ALL, s)] = Usage.of_counts(counts)
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


def _read_level(
    conn: sqlite3.Connection,
    table: str,
    column: str,
    key: tuple[str, str],
    counts: dict[str, list[int]],
    runs: Runs,
) -> None:
    """A month's folded counters and sorted runs of the users (or the services)."""
    sql = f"SELECT {column} AS id, {COUNT_NAMES}, durations, ttfbs FROM {table} WHERE tz = ? AND month = ?"
    for row in named(conn).execute(sql, key):
        k = row["id"]
        counts[k] = counts_of(row)
        if row["durations"]:
            d_runs, f_runs = runs[k]
            d_runs.append(unpack(row["durations"]))
            f_runs.append(unpack(row["ttfbs"]))


def _put(cell: Usage, d_runs: Sequence[Sequence[float]], f_runs: Sequence[Sequence[float]]) -> None:
    if not any(len(r) for r in d_runs):
        return
    cell.duration_p50, cell.duration_p95 = p50_p95(d_runs)
    cell.ttfb_p50, cell.ttfb_p95 = p50_p95(f_runs)


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
    for row in named(conn).execute(CELLS_SQL.format(extra=extra), (w.start, w.end, *params)):
        figs.usage[(row["user_id"], row["service_id"])] = Usage.of_counts(counts_of(row))
    lists: defaultdict[tuple[str, str], tuple[list[float], list[float]]] = defaultdict(lambda: ([], []))
    for u, s, d, f in conn.execute(LATENCY_SQL.format(extra=extra), (w.start, w.end, *params)):
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
    shares: dict[str, dict[str, int]] = {}
    idle: dict[int, tuple[float, float]] = {}
    if folded:
        shares = {sv: users for sv, users in read_gpu_shares(conn, key).items() if users}
        sql = "SELECT job_id, idle_gpu_seconds, idle_ready_gpu_seconds FROM ledger_jobs WHERE tz = ? AND month = ?"
        for row in named(conn).execute(sql, key):
            idle[row["job_id"]] = (row["idle_gpu_seconds"], row["idle_ready_gpu_seconds"])
    for (u, sv), secs in tail.gpu.items():
        users = shares.setdefault(sv, {})
        users[u] = users.get(u, 0) + to_ns(secs)
    for job_id, (i, r) in tail.idle.items():
        have = idle.get(job_id, (0.0, 0.0))
        idle[job_id] = (have[0] + i, have[1] + r)

    ready: defaultdict[str, list[tuple[float, float]]] = defaultdict(list)
    to_ready: defaultdict[str, list[float]] = defaultdict(list)
    hi = min(w.end, now)
    for job in jobs_in(conn, w.start, w.end):
        assert job.started_at is not None  # jobs_in
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
