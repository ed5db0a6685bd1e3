"""The fast report path against independent reference computations on random data.

Phases of the report were rewritten for speed (SQLite sorts and range counts, a table printer
that skips tabulate on plain cells, a sweep for the GPU attribution). These tests hold each to
a plain method that shares no code with it: the attribution to exact rational arithmetic over
every elementary interval between the requests' and the jobs' starts and ends (per job, and
for a month of jobs crossing its edges, folded or not), the table byte for byte against
tabulate, and the whole report JSON against figures computed row by row in Python.
"""

from __future__ import annotations

import json
import math
import random
import sqlite3
import string
from collections import defaultdict
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from tabulate import tabulate

from saia_ctl.accounting import figures as F
from saia_ctl.accounting.assemble import assemble
from saia_ctl.accounting.gpu import (
    JobSpan,
    attribute,
)
from saia_ctl.accounting.ledger import fold
from saia_ctl.accounting.months import month_window
from saia_ctl.accounting.render import grid, render
from saia_ctl.accounting.report import build, monthly_report
from tests.support.accounting import JUNE, MAY, NOW, Rows, random_month
from tests.support.accounting_oracle import Exact, exact_attribution, reference_figures


def share_tolerance(gpu_seconds: float, user_requests: int, event_times: int) -> float:
    """How far ``attribute``'s float share of a user may be from the exact one.

    The sweep adds ``(t - t_prev) / n`` to a running integral F once per event time: a
    division and an addition, each rounded by at most half a unit in the last place (ulp) of
    F, which never exceeds the run time. So F is within ``event_times`` ulps of exact; a share
    is the sum of one difference of F per request (2 * event_times ulps, plus the rounding of
    the difference and of the sum), times the GPUs. ``gpu_seconds`` (run time x GPUs) bounds
    the ulp of every term.
    """
    return user_requests * (2 * event_times + 2) * math.ulp(gpu_seconds)


ZONES = ["UTC", "Europe/Berlin", "Asia/Kolkata"]
DAY = 86400.0


def random_job_and_requests(
    rng: random.Random, job_id: int = 1, service: str = "svc"
) -> tuple[JobSpan, list[tuple[float, float | None, str]]]:
    """A job around May 2026 (it may start in April, end in June or still run), and requests on
    it that may start before it (held while it loads), cross the month's edges or stay open."""
    grain = rng.choice([1.0, 0.25, None])  # coarse times make ties and back-to-back requests

    def t(x: float) -> float:
        return x if grain is None else round(x / grain) * grain

    edge = rng.choice([MAY, JUNE, MAY + DAY * rng.randint(1, 30)])
    start = t(edge + rng.uniform(-2 * DAY, 2 * DAY))
    ended = rng.choice([None, t(start + rng.uniform(60, 5 * DAY))])
    ready = rng.choice([None, t(start + rng.uniform(0, 600))])
    draining = rng.choice([None, t(start + rng.uniform(600, 4 * DAY))]) if ready else None
    job = JobSpan(job_id, service, rng.choice([1, 2, 3, 4, 8]), start - 60, start, ready, draining, ended)
    users = [f"u{i}" for i in range(rng.randint(1, 6))]
    until = start + 5 * DAY if ended is None else ended
    reqs: list[tuple[float, float | None, str]] = []
    for _ in range(rng.randint(0, 120)):
        a = t(rng.uniform(start - 3600, until + 3600))
        mean = rng.choice([5, 60, 600, 4 * 3600])  # some longer than LONG_REQUEST
        b = None if rng.random() < 0.05 else t(a + rng.expovariate(1 / mean))
        reqs.append((a, b, rng.choice(users)))
    return job, reqs


@pytest.mark.parametrize("seed", range(300))
def test_attribution_equals_exact_rationals(seed: int) -> None:
    rng = random.Random(seed)
    job, reqs = random_job_and_requests(rng)
    w = month_window("2026-05", ZONES[seed % 3])
    now = rng.choice([MAY + 20 * DAY + 0.5, JUNE + 10 * DAY])
    got = attribute(job, reqs, w.start, w.end, now)
    want = exact_attribution(job, reqs, w.start, w.end, now)
    # Sums of differences of epoch times: exact in binary floating point.
    assert (got.run_seconds, got.gpu_seconds) == (want.run, want.gpu)
    assert (got.idle_gpu_seconds, got.idle_ready_gpu_seconds) == (want.idle, want.idle_ready)
    assert set(got.users) == set(want.users)
    events = len({x for a, b, _ in reqs for x in (a, now if b is None else b)}) + 2
    for user, secs in got.users.items():
        n = sum(1 for *_, u in reqs if u == user)
        assert abs(Fraction(secs) - want.users[user]) <= share_tolerance(got.gpu_seconds, n, events), user


@pytest.mark.parametrize("seed", range(6))
def test_a_months_gpu_time_equals_exact_rationals(rows: Rows, home: Path, seed: int) -> None:
    """Jobs and requests across April, May and June, in the database: May's GPU shares, idle
    and GPU seconds per service from the rows alone, partly folded and all folded, against
    the exact attribution of every job."""
    rng = random.Random(seed)
    tz = ZONES[seed % 3]
    w = month_window("2026-05", tz)
    jobs: list[tuple[JobSpan, list[tuple[float, float | None, str]]]] = []
    for _ in range(rng.randint(2, 6)):
        service = rng.choice(["svc-a", "svc-b"])
        job, reqs = random_job_and_requests(rng, service=service)
        # An ended job whose Slurm record arrived is billed from Slurm's times and GPUs: its
        # row keeps what the ticks observed (a start a little late, the end one tick late), or
        # nothing (too short for any tick to see it run: no start, no GPUs).
        billed_by_slurm = job.ended_at is not None and job.started_at is not None and rng.random() < 0.5
        seen = (
            (rng.choice([None, job.started_at + 0.5]), job.ended_at + rng.uniform(1, 30))
            if billed_by_slurm
            else (job.started_at, job.ended_at)
        )
        job_id = rows.job(
            service, seen[0], seen[1], ready=job.ready_at, draining=job.draining_at,
            submitted=job.submitted_at, gpus=job.gpus if seen[0] is not None else 0,
        )  # fmt: skip
        if billed_by_slurm:
            assert job.ended_at is not None
            rows.slurm_record(job_id, job.started_at, job.ended_at, gpus=job.gpus)
        job = JobSpan(
            job_id, job.service, job.gpus, job.submitted_at, job.started_at, job.ready_at,
            job.draining_at, job.ended_at,
        )  # fmt: skip
        # open requests hold the folding back: keep those of late May only
        reqs = [(a, b if b is not None or a > MAY + 25 * DAY else a + 30, u) for a, b, u in reqs]
        for a, b, u in reqs:
            rows.request(u, service, job_id, a, b)
        jobs.append((job, reqs))
    want_shares: dict[str, dict[str, Fraction]] = defaultdict(dict)
    want_gpu: dict[str, Exact] = defaultdict(Exact)
    tolerance: dict[tuple[str, str], float] = defaultdict(float)
    for job, reqs in jobs:
        e = exact_attribution(job, reqs, w.start, w.end, NOW)
        if not e.run:
            continue
        g = want_gpu[job.service]
        g.gpu, g.idle, g.idle_ready = g.gpu + e.gpu, g.idle + e.idle, g.idle_ready + e.idle_ready
        events = len({x for a, b, _ in reqs for x in (a, NOW if b is None else b)}) + 2
        for u, secs in e.users.items():
            shares = want_shares[job.service]
            shares[u] = shares.get(u, Fraction(0)) + secs
            n = sum(1 for *_, x in reqs if x == u)
            # a fold attributes each piece anew: one bound per piece (a day each, one day in two)
            tolerance[(job.service, u)] += share_tolerance(float(e.gpu), n, events) * (len(w.days) + 1)

    def check(figs: F.Figures) -> None:
        assert figs.gpu_shares.keys() == want_shares.keys()
        for sv, shares in want_shares.items():
            assert figs.gpu_shares[sv].keys() == shares.keys()
            for u, secs in shares.items():
                got = Fraction(figs.gpu_shares[sv][u], 10**9)  # whole ns: rounded once per day at most
                assert abs(got - secs) <= tolerance[(sv, u)] + Fraction(len(w.days) + 1, 2 * 10**9), (sv, u)
        assert {sv for sv, g in figs.gpu.items() if g.gpu_seconds} == set(want_gpu)
        for sv, want in want_gpu.items():
            got = figs.gpu[sv]
            assert (got.gpu_seconds, got.idle_gpu_seconds, got.idle_ready_gpu_seconds) == (
                want.gpu,
                want.idle,
                want.idle_ready,
            )

    db = home / "saia.db"
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        check(assemble(conn, w, NOW, use_ledger=False))
        for fold_now in (MAY + 12.5 * DAY, NOW):
            assert fold(conn, tz, fold_now).days
            check(assemble(conn, w, NOW))
    finally:
        conn.close()


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


@pytest.mark.parametrize("seed", [11, 12, 13, 14])
@pytest.mark.parametrize("tz", ["UTC", "Europe/Berlin", "Asia/Kolkata"])
def test_report_equals_the_row_by_row_reference(
    rows: Rows, engine: Any, home: Path, seed: int, tz: str
) -> None:
    jobs = random_month(rows, seed, n_requests=300)
    rng = random.Random(seed)
    for job_id, _service, start, end in jobs[::2]:  # Slurm's record of every other job
        if end < NOW:
            gpus = rng.choice([None, 0, 3])  # the row's; none counted (no gres/gpu TRES); others
            rows.slurm_record(job_id, start - rng.uniform(0, 2), end - rng.uniform(0, 30), gpus=gpus)
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
