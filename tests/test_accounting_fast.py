"""The fast report path against straightforward reference computations on random data.

Phases of the report were rewritten for speed (SQLite sorts and range counts, a table printer
that skips tabulate on plain cells), and the GPU sweep is the next candidate. These tests hold
each to a plain, obviously correct version: the sweep bit for bit (against the event-at-a-time
loop it must stay identical to), the table byte for byte, and the whole report JSON against
figures computed row by row in Python.
"""

from __future__ import annotations

import json
import math
import random
import sqlite3
import string
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from tabulate import tabulate

from saia_ctl.accounting import figures as F
from saia_ctl.accounting.gpu import (
    JobGPU,
    JobSpan,
    attribute,
    clip,
    largest_remainder,
    median,
    ready_interval,
    union_length,
)
from saia_ctl.accounting.months import month_window
from saia_ctl.accounting.render import grid, render
from saia_ctl.accounting.report import build, monthly_report
from tests.support.accounting import MAY, NOW, Rows, random_month


def attribute_reference(
    job: JobSpan, requests: Sequence[tuple[float, float | None, str]], lo: float, hi: float, now: float
) -> JobGPU:
    """``gpu.attribute`` as first written: one event at a time; a faster sweep must match it."""
    out = JobGPU()
    if job.started_at is None:
        return out
    run_a, run_b = clip(lo, hi, job.started_at, now if job.ended_at is None else job.ended_at)
    if run_b <= run_a:
        return out
    g = float(job.gpus)
    out.run_seconds = run_b - run_a
    out.gpu_seconds = out.run_seconds * g
    ready = ready_interval(job, now)
    ready_a, ready_b = clip(run_a, run_b, *ready) if ready else (run_a, run_a)
    users: list[str] = []
    starts: list[float] = []
    ends: list[float] = []
    for start, end, user in requests:
        a = max(run_a, start)
        b = min(run_b, now if end is None else end)
        if b > a:
            users.append(user)
            starts.append(a)
            ends.append(b)
    n_req = len(users)
    times = ends + starts
    f_at = [0.0] * (2 * n_req)
    f = 0.0
    n = 0
    t_prev = run_a
    idle = idle_ready = 0.0

    def gap(a: float, b: float) -> None:
        nonlocal idle, idle_ready
        idle += b - a
        ra, rb = max(a, ready_a), min(b, ready_b)
        if rb > ra:
            idle_ready += rb - ra

    for k in sorted(range(2 * n_req), key=times.__getitem__):
        t = times[k]
        if t > t_prev:
            if n:
                f += (t - t_prev) / n
            else:
                gap(t_prev, t)
            t_prev = t
        f_at[k] = f
        n += 1 if k >= n_req else -1
    if run_b > t_prev:
        gap(t_prev, run_b)
    shares: dict[str, float] = {}
    for user, fe, fs in zip(users, f_at[:n_req], f_at[n_req:], strict=True):
        shares[user] = shares.get(user, 0.0) + (fe - fs)
    out.idle_gpu_seconds = idle * g
    out.idle_ready_gpu_seconds = idle_ready * g
    out.users = {u: v * g for u, v in shares.items()}
    return out


@pytest.mark.parametrize("seed", range(40))
def test_sweep_is_bit_identical_to_the_event_loop(seed: int) -> None:
    rng = random.Random(seed)
    grain = rng.choice([1.0, 0.25, None])  # coarse times make many ties and back-to-back requests

    def t(x: float) -> float:
        return x if grain is None else round(x / grain) * grain

    lo, hi = 1000.0, 5000.0
    start = t(rng.uniform(500, 2000))
    ended = rng.choice([None, t(rng.uniform(3000, 6000))])
    ready = rng.choice([None, start + t(rng.uniform(0, 300))])
    draining = rng.choice([None, t(rng.uniform(3500, 4800))]) if ready else None
    job = JobSpan(1, "svc", rng.choice([1, 2, 4, 8]), start - 60, start, ready, draining, ended)
    users = [f"u{i}" for i in range(rng.randint(1, 6))]
    reqs: list[tuple[float, float | None, str]] = []
    for _ in range(rng.randint(0, 300)):
        a = t(rng.uniform(0, 6000))
        b = None if rng.random() < 0.05 else t(a + rng.expovariate(1 / rng.choice([5, 60, 600])))
        reqs.append((a, b, rng.choice(users)))
    now = 5500.0
    fast, ref = attribute(job, reqs, lo, hi, now), attribute_reference(job, reqs, lo, hi, now)
    assert fast == ref
    assert list(fast.users) == list(ref.users)


def test_table_printer_matches_tabulate_byte_for_byte() -> None:
    rng = random.Random(7)
    alpha = string.ascii_letters + string.digits + "@.-_:|"
    odd = ["-1", "1e5", "nan", "inf", " x", "x ", "ü", "宽字", "a\tb", "\x1b[31mred\x1b[0m", "None"]

    def cell() -> str:
        k = rng.random()
        if k < 0.2:
            return ""
        if k < 0.3:
            return f"{rng.uniform(0, 1e4):.3f}"
        if k < 0.35:
            return rng.choice(odd)
        return "".join(rng.choice(alpha) for _ in range(rng.randint(1, 14)))

    for _ in range(1500):
        cols = rng.randint(1, 7)
        headers = [cell() or "h" for _ in range(cols)]
        body = [[cell() for _ in range(cols)] for _ in range(rng.randint(0, 9))]
        for fmt in ("simple", "github"):
            want = tabulate(body, headers=headers, tablefmt=fmt, disable_numparse=True)
            assert grid(body, headers, fmt) == want


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

    jobs = [
        JobSpan(*r)
        for r in conn.execute(
            "SELECT id, service_id, gpus, submitted_at, started_at, ready_at, draining_at, ended_at"
            " FROM jobs WHERE started_at IS NOT NULL ORDER BY id"
        )
    ]
    busy: defaultdict[int, list[tuple[float, float | None, str]]] = defaultdict(list)
    for job_id, u, start, end in conn.execute(
        "SELECT job_id, user_id, started_at, ended_at FROM requests WHERE job_id IS NOT NULL ORDER BY id"
    ):
        busy[job_id].append((start, end, u))
    ready: defaultdict[str, list[tuple[float, float]]] = defaultdict(list)
    to_ready: defaultdict[str, list[float]] = defaultdict(list)
    for job in jobs:
        res = attribute_reference(job, busy[job.id], w.start, w.end, now)
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
            shares = figs.gpu_shares.setdefault(job.service, {})
            shares[u] = shares.get(u, 0.0) + secs
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
    conn.close()
    return figs


@pytest.mark.parametrize("seed", [11, 12, 13, 14])
@pytest.mark.parametrize("tz", ["UTC", "Europe/Berlin", "Asia/Kolkata"])
def test_report_equals_the_row_by_row_reference(
    rows: Rows, engine: Any, home: Path, seed: int, tz: str
) -> None:
    random_month(rows, seed, n_requests=300)
    rng = random.Random(seed)
    for _ in range(40):  # requests right at the month and day edges, and some in flight
        edge = rng.choice([MAY, MAY + 86400 * rng.randint(1, 30), MAY + 31 * 86400])
        start = edge + rng.choice([-1.0, -0.001, 0.0, 0.5, rng.uniform(-7200, 7200)])
        end = None if rng.random() < 0.1 else start + rng.uniform(0, 20)
        rows.request(f"user{rng.randint(0, 14)}", rng.choice(["svc-a", "svc-b"]), None, start, end)
    filters: list[dict[str, Any]] = [
        {},
        {"by": "user"},
        {"user": "user3"},
        {"service": "svc-b"},
        {"user": "user4", "service": "svc-a"},
    ]
    for kw in filters:
        fast = monthly_report(engine, "2026-05", tz=tz, now=NOW, **kw).data
        ref_figs = reference_figures(home / "saia.db", "2026-05", tz, NOW)
        ref = build(ref_figs, **kw).data
        assert json.dumps(fast, sort_keys=True) == json.dumps(ref, sort_keys=True), kw
        for fmt in ("table", "markdown", "csv", "json"):
            assert render(fast, fmt) == render(ref, fmt)


def largest_remainder_reference(values: dict[str, float], total: int) -> dict[str, int]:
    """Hamilton's method as written down: every key ordered by (remainder, value, key)."""
    s = math.fsum(values.values())
    quotas = {k: v * total / s for k, v in values.items()}
    out = {k: math.floor(q) for k, q in quotas.items()}
    order = sorted(quotas, key=lambda k: (-(quotas[k] - out[k]), -values[k], k))
    for i in range(total - sum(out.values())):
        out[order[i % len(order)]] += 1
    return out


@pytest.mark.parametrize("seed", range(40))
def test_largest_remainder_matches_the_plain_method(seed: int) -> None:
    rng = random.Random(seed)
    n = rng.randint(1, 300)
    # few distinct values, so that remainders tie across the cut
    pool = [rng.uniform(0.1, 50) for _ in range(rng.randint(1, 6))] + [1.0, 2.0, 0.5]
    values = {f"u{rng.randint(0, 10**6):07d}": rng.choice(pool) for _ in range(n)}
    total = rng.randint(0, 5000)
    got = largest_remainder(values, total)
    assert got == largest_remainder_reference(values, total)
    assert sum(got.values()) == total
