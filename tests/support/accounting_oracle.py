"""Oracles for the accounting tests: a job's GPU time and its attribution in exact
rationals (``exact_attribution``, ``attribute_oracle`` in ``gpu.attribute``'s shape),
and a month's figures computed row by row in Python straight from docs/accounting.md
(``reference_figures``), to hold the report, the ledger and the usage view against."""

from __future__ import annotations

import bisect
import math
import sqlite3
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

from saia_ctl.accounting import figures as F
from saia_ctl.accounting.gpu import JobGPU, JobSpan, clip, median, ready_interval, union_length
from saia_ctl.accounting.months import month_window


@dataclass
class Exact:
    """A job's GPU figures in a window as exact rationals (seconds)."""

    run: Fraction = Fraction(0)
    gpu: Fraction = Fraction(0)
    idle: Fraction = Fraction(0)
    idle_ready: Fraction = Fraction(0)
    users: dict[str, Fraction] = field(default_factory=dict)


def exact_attribution(
    job: JobSpan, requests: Sequence[tuple[float, float | None, str]], lo: float, hi: float, now: float
) -> Exact:
    """docs/accounting.md's attribution by brute force, in exact rational arithmetic.

    Cut the job's run time in the window at every request start and end and at the ready
    bounds: on each elementary interval the set of requests in flight is constant, so its GPU
    seconds go in equal parts to those requests (and so to their users), or to idle (and to
    idle-while-ready inside the ready interval). No sweep, no running integral, no tie order:
    a request is in flight on [start, end) (from the job's start if it waited for it), so it
    covers exactly the elementary intervals between its start and its end.
    """
    q = Fraction
    out = Exact()
    if job.started_at is None:
        return out
    run_a = max(q(lo), q(job.started_at))
    run_b = min(q(hi), q(now if job.ended_at is None else job.ended_at))
    if run_b <= run_a:
        return out
    g = job.gpus
    out.run = run_b - run_a
    out.gpu = out.run * g
    ready: tuple[Fraction, Fraction] | None = None
    if job.ready_at is not None:  # ready until it drains, else until it ends, else now
        until = next(t for t in (job.draining_at, job.ended_at, now) if t is not None)
        ready = (q(job.ready_at), q(until))
    reqs = [(q(start), q(now if end is None else end), user) for start, end, user in requests]
    cuts = {run_a, run_b}
    for t in [x for start, end, _ in reqs for x in (start, end)] + list(ready or ()):
        if run_a < t < run_b:
            cuts.add(t)
    points = sorted(cuts)
    in_flight: list[list[str]] = [[] for _ in points[1:]]
    for start, end, user in reqs:  # the elementary intervals each request covers
        i = bisect.bisect_left(points, max(start, run_a))
        j = bisect.bisect_left(points, min(end, run_b))
        for k in range(i, j):
            in_flight[k].append(user)
    for k, users in enumerate(in_flight):
        a, b = points[k], points[k + 1]
        mid = (a + b) / 2
        seconds = (b - a) * g
        if users:
            for user in users:
                out.users[user] = out.users.get(user, Fraction(0)) + seconds / len(users)
        else:
            out.idle += seconds
            if ready is not None and ready[0] <= mid < ready[1]:
                out.idle_ready += seconds
    assert sum(out.users.values(), Fraction(0)) + out.idle == out.gpu  # the oracle adds up
    return out


def attribute_oracle(
    job: JobSpan, requests: Sequence[tuple[float, float | None, str]], lo: float, hi: float, now: float
) -> JobGPU:
    """``exact_attribution`` as floats (nearest), in the shape of ``gpu.attribute``."""
    e = exact_attribution(job, requests, lo, hi, now)
    return JobGPU(
        float(e.run),
        float(e.gpu),
        float(e.idle),
        float(e.idle_ready),
        {u: float(v) for u, v in e.users.items()},
    )


def reference_figures(db: Path, month: str, tz: str, now: float) -> F.Figures:
    """A month's figures row by row in Python, straight from docs/accounting.md."""
    w = month_window(month, tz)
    conn = sqlite3.connect(db)
    figs = F.Figures(w)
    lists: defaultdict[tuple[str, str], tuple[list[float], list[float]]] = defaultdict(lambda: ([], []))
    for u, s, start, fb, end, status, outcome, tin, tout in conn.execute(
        "SELECT user_id, service_id, started_at, first_byte_at, ended_at, status, outcome,"
        " input_tokens, output_tokens FROM requests ORDER BY id"
    ):
        if not w.start <= start < w.end:
            continue
        for key in ((u, s), (u, F.ALL), (F.ALL, s), (F.ALL, F.ALL)):
            c = figs.usage.setdefault(key, F.Usage())
            c.requests += 1
            c.ok += outcome == "ok"
            c.errors += outcome == "error"
            c.errors_4xx += outcome == "error" and 400 <= status < 500
            c.errors_5xx += outcome == "error" and status >= 500
            c.aborted += outcome == "aborted"
            c.in_flight += outcome is None
            c.input_tokens += tin or 0
            c.output_tokens += tout or 0
            if outcome == "ok":
                lists[key][0].append(end - start)
                if fb is not None:
                    lists[key][1].append(fb - start)
        day = (s, w.day_of(start))
        figs.days[day] = figs.days.get(day, 0) + 1

    def rank(values: list[float], p: int) -> float | None:
        v = sorted(values)
        return v[max(1, math.ceil(p * len(v) / 100)) - 1] if v else None

    for key, (d, f) in lists.items():
        c = figs.usage[key]
        c.duration_p50, c.duration_p95 = rank(d, 50), rank(d, 95)
        c.ttfb_p50, c.ttfb_p95 = rank(f, 50), rank(f, 95)

    # A job is billed from Slurm's start, end and GPUs where its record arrived (its GPUs if
    # it counted any), else as observed.
    jobs = [
        JobSpan(
            i,
            s,
            slurm_gpus if slurm_gpus else g,
            sub,
            start if slurm_start is None else slurm_start,
            ready,
            drain,
            end if slurm_end is None else slurm_end,
        )
        for i, s, g, sub, start, ready, drain, end, slurm_start, slurm_end, slurm_gpus in conn.execute(
            "SELECT id, service_id, gpus, submitted_at, started_at, ready_at, draining_at, ended_at,"
            " slurm_started_at, slurm_ended_at, slurm_gpus FROM jobs ORDER BY id"
        )
    ]
    jobs = [j for j in jobs if j.started_at is not None]
    busy: defaultdict[int, list[tuple[float, float | None, str]]] = defaultdict(list)
    for job_id, u, start, end in conn.execute(
        "SELECT job_id, user_id, started_at, ended_at FROM requests WHERE job_id IS NOT NULL ORDER BY id"
    ):
        busy[job_id].append((start, end, u))
    ready: defaultdict[str, list[tuple[float, float]]] = defaultdict(list)
    to_ready: defaultdict[str, list[float]] = defaultdict(list)
    seconds: defaultdict[str, dict[str, float]] = defaultdict(dict)  # service -> user -> GPU seconds
    for job in jobs:
        res = attribute_oracle(job, busy[job.id], w.start, w.end, now)
        if res.run_seconds <= 0:
            continue
        g = figs.gpu.setdefault(job.service, F.ServiceGPU())
        g.jobs += 1
        g.jobs_open += job.ended_at is None
        g.job_seconds += res.run_seconds
        g.gpu_seconds += res.gpu_seconds
        g.idle_gpu_seconds += res.idle_gpu_seconds
        g.idle_ready_gpu_seconds += res.idle_ready_gpu_seconds
        for u, secs in res.users.items():
            pair = (u, job.service)
            seconds[job.service][u] = seconds[job.service].get(u, 0.0) + secs
            for key in (pair, (u, F.ALL), (F.ALL, job.service), (F.ALL, F.ALL)):
                figs.usage.setdefault(key, F.Usage())
        r = ready_interval(job, now)
        if r is not None:
            ready[job.service].append(clip(w.start, min(w.end, now), *r))
            if w.start <= r[0] < w.end:
                to_ready[job.service].append(r[0] - job.submitted_at)
    for s, g in figs.gpu.items():
        g.ready_seconds = union_length(ready[s])
        g.submit_to_ready_median = median(to_ready[s])
    figs.gpu_shares = {sv: {u: round(x * 10**9) for u, x in users.items()} for sv, users in seconds.items()}
    conn.close()
    return figs
