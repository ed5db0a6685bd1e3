"""Bench: a month's `saia-ctl report` on a big database, against a plain count of that month's rows.

Generates synthetic traffic (default: 12 months x 1,000,000 requests, 10,000
users, 20 services) through the request path's own recording statements
(``INSERT_REQUEST_SQL`` / ``FINISH_REQUEST_SQL`` from ``saia_ctl.request_path.store``,
executemany in large transactions; WAL and synchronous=OFF while generating,
this bench only), then folds the days before the last into the report ledger
as the scheduler tick does (one day per piece, each its own transaction; timed), and
times:

- ``report --month`` of a middle month (all its days folded), against a
  ``SELECT count(*)`` over the same month's rows in the same run (the ratio);
- the report of the last month with its last day not folded yet: the most a
  report scans from the rows while the tick keeps the ledger (a day is folded
  15 minutes after it ends);
- the whole ``saia-ctl report`` command once (interpreter start, files written);
- once, the middle month's report from the rows alone (the ledger ignored):
  what the ledger saves, and a check that both give the same report.

Prints the database size per million requests, with and without the ledger.

    .venv/bin/python bench/report.py --months 1 --per-month 100000   # quick
    .venv/bin/python bench/report.py                                  # the full figure
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from common import Figure, json_line  # noqa: E402

from saia_ctl.accounting import ledger  # noqa: E402
from saia_ctl.accounting.render import render  # noqa: E402
from saia_ctl.accounting.report import monthly_report  # noqa: E402
from saia_ctl.config import apply_config, load_config  # noqa: E402
from saia_ctl.db import engine_for, write_session  # noqa: E402
from saia_ctl.migrate import upgrade  # noqa: E402
from saia_ctl.request_path.store import FINISH_REQUEST_SQL, INSERT_REQUEST_SQL  # noqa: E402
from saia_ctl.settings import Settings  # noqa: E402

BATCH = 200_000


def month_start(year: int, month: int) -> float:
    return datetime(year, month, 1, tzinfo=UTC).timestamp()


def months_from(first: tuple[int, int], n: int) -> list[tuple[int, int]]:
    y, m = first
    out = []
    for _ in range(n):
        out.append((y, m))
        y, m = (y + 1, 1) if m == 12 else (y, m + 1)
    return out


def setup(home: Path, services: int) -> None:
    batch = home / "job.sbatch"
    batch.write_text("#!/bin/sh\n")
    cfg = {
        "services": [
            {
                "name": f"Service {i}",
                "id": f"svc-{i:02d}",
                "owned_by": "bench",
                "input": ["text"],
                "output": ["text"],
                "sbatch": str(batch),
                "inferences_per_instance": 4,
                "maximum_number_instances": 4,
                "minimum_number_instances": 1,
                "job_expiry_time": "1-00:00:00",
            }
            for i in range(services)
        ]
    }
    (home / "config.json").write_text(json.dumps(cfg))
    engine = engine_for(Settings(home=str(home), environ={}))
    upgrade(engine)
    cfgs, _ = load_config(str(home / "config.json"))
    with write_session(engine) as s:
        apply_config(s, cfgs)


def generate(
    db: Path, months: list[tuple[int, int]], per_month: int, users: int, services: int, seed: int
) -> None:
    rng = random.Random(seed)
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("PRAGMA cache_size = -200000")
    svc_ids = [f"svc-{i:02d}" for i in range(services)]
    user_ids = [f"user{i:05d}@example.org" for i in range(users)]
    weights = [1 / (i + 1) for i in range(users)]  # a few heavy users, a long tail
    cum_weights = list(itertools.accumulate(weights))
    job_no = 0
    for y, m in months:
        a = month_start(y, m)
        b = month_start(*months_from((y, m), 2)[1])
        # Two jobs per service and month: one all month, one for the busy middle; 1-4 GPUs.
        jobs: dict[str, list[int]] = {}
        conn.execute("BEGIN")
        for s in svc_ids:
            for k, (js, je) in enumerate(((a, b), (a + (b - a) * 0.3, a + (b - a) * 0.7))):
                job_no += 1
                cur = conn.execute(
                    "INSERT INTO jobs (name, service_id, slurm_job_id, state, node, port, secret, submitted_at,"
                    " started_at, ready_at, draining_at, ended_at, walltime_limit, gpus, end_reason,"
                    " health_failures) VALUES (?, ?, ?, 'ended', 'node1', ?, 'x', ?, ?, ?, NULL, ?, ?, ?,"
                    " 'walltime', 0)",
                    (
                        f"bench_{job_no}_{s}",
                        s,
                        job_no,
                        40000 + job_no,
                        js - 60,
                        js,
                        js + 300,
                        je,
                        2678400,
                        1 + k,
                    ),
                )
                assert cur.lastrowid is not None
                jobs.setdefault(s, []).append(cur.lastrowid)
        conn.execute("COMMIT")
        done = 0
        while done < per_month:
            n = min(BATCH, per_month - done)
            starts = sorted(rng.uniform(a, b) for _ in range(n))
            inserts = []
            finishes = []
            for i, t in enumerate(starts):
                s = svc_ids[int(rng.random() ** 2 * services)]
                inserts.append(
                    {
                        "inference_id": f"bench-{y}{m:02d}-{done + i}",
                        "user_id": rng.choices(user_ids, cum_weights=cum_weights)[0]
                        if i % 4 == 0
                        else user_ids[rng.randrange(users)],
                        "service_id": s,
                        "job_id": None,
                        "method": "POST",
                        "path": "/v1/chat/completions",
                        "started_at": t,
                        "bytes_in": 800,
                        "handler_host": "login1",
                        "handler_pid": 1000 + i % 50,
                    }
                )
                r = rng.random()
                outcome, status = (
                    ("ok", 200) if r < 0.95 else ("error", 503) if r < 0.98 else ("aborted", 200)
                )
                dur = rng.expovariate(1 / 4.0)
                js = jobs[s]
                job = js[1] if (a + (b - a) * 0.3 <= t < a + (b - a) * 0.7 and r < 0.5) else js[0]
                finishes.append(
                    {
                        "job_id": job,
                        "first_byte_at": t + dur * 0.1,
                        "ended_at": t + dur,
                        "status": status,
                        "outcome": outcome,
                        "bytes_in": 800,
                        "bytes_out": 3000,
                        "input_tokens": rng.randint(10, 2000),
                        "output_tokens": rng.randint(1, 800),
                        "error": None if outcome == "ok" else "bench",
                    }
                )
            conn.execute("BEGIN")
            first = (conn.execute("SELECT COALESCE(MAX(id), 0) FROM requests").fetchone()[0]) + 1
            conn.executemany(INSERT_REQUEST_SQL, inserts)
            for k, f in enumerate(finishes):
                f["id"] = first + k
            conn.executemany(FINISH_REQUEST_SQL, finishes)
            conn.execute("COMMIT")
            done += n
            print(f"  {y}-{m:02d}: {done:,} requests", file=sys.stderr, flush=True)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.execute("PRAGMA journal_mode = DELETE")
    conn.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--months", type=int, default=12)
    ap.add_argument("--per-month", type=int, default=1_000_000)
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--services", type=int, default=20)
    ap.add_argument("--home", help="state directory to use (kept); default: a temporary one (removed)")
    ap.add_argument("--reuse", action="store_true", help="reuse the database in --home, do not generate")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", action="store_true", help="print the figures as a JSON line last (bench/run)")
    args = ap.parse_args()

    tmp = None
    if args.home:
        home = Path(args.home)
        home.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="saia-bench-report-")
        home = Path(tmp.name)
    db = home / "saia.db"
    months = months_from((2025, 1), args.months)
    if not args.reuse:
        if db.exists():
            db.unlink()
        t0 = time.perf_counter()
        setup(home, args.services)
        generate(db, months, args.per_month, args.users, args.services, args.seed)
        gen = time.perf_counter() - t0
        total = args.months * args.per_month
        print(f"generated {total:,} requests in {gen:.0f} s ({total / gen:,.0f} rows/s)")

    engine = engine_for(Settings(home=str(home), environ={}))
    upgrade(engine)
    y, m = months[len(months) // 2]
    month = f"{y}-{m:02d}"
    a, b = month_start(y, m), month_start(*months_from((y, m), 2)[1])
    last_y, last_m = months[-1]
    last = f"{last_y}-{last_m:02d}"
    now = month_start(*months_from(months[-1], 2)[1])
    conn = sqlite3.connect(db, isolation_level=None)
    # Folded up to the last day's start, none of it: the current month's report with a whole
    # day in its tail, the worst case (the tick folds the open day by the hour, leaving about
    # an hour plus MARGIN; a request left open can hold it back longer).
    fold_now = now - 86400 + ledger.MARGIN
    t0 = time.perf_counter()
    folded = ledger.fold(conn, "UTC", fold_now)
    fold_s = time.perf_counter() - t0
    if folded.days:
        print(
            f"ledger: folded {len(folded.days)} days in {fold_s:.0f} s"
            f" ({fold_s / len(folded.days) * 1000:.0f} ms per day of ~{args.per_month / 30.4:,.0f} requests;"
            f" write transaction median {statistics.median(folded.writes) * 1000:.0f} ms,"
            f" max {max(folded.writes) * 1000:.0f} ms)"
        )

    count_times, report_times, current_times = [], [], []
    rows = 0
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        rows = conn.execute(
            "SELECT count(*) FROM requests WHERE started_at >= ? AND started_at < ?", (a, b)
        ).fetchone()[0]
        count_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        rep = monthly_report(engine, month, now=now)
        render(rep.data, "table")
        report_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        render(monthly_report(engine, last, now=now).data, "table")
        current_times.append(time.perf_counter() - t0)
    total_rows = conn.execute("SELECT count(*) FROM requests").fetchone()[0]
    c, r, cur = min(count_times), min(report_times), min(current_times)
    print(
        f"month {month}: {rows:,} requests, {len(rep.data['users']):,} users, {len(rep.data['services'])} services"
    )
    print(f"SELECT count(*) over the month: {c * 1000:.0f} ms (best of {args.repeat})")
    print(f"report --month {month}:        {r * 1000:.0f} ms (best of {args.repeat}; ratio {r / c:.1f}x)")
    print(f"report --month {last} (last day not folded): {cur * 1000:.0f} ms (best of {args.repeat})")
    # The whole command as an operator runs it: interpreter start, report, table, and the
    # JSON, CSV and HTML files.
    out = tempfile.mkdtemp(prefix="saia-bench-report-out-")
    cmd = [sys.executable, "-c", "from saia_ctl.cli.main import run; run()", "report", "--month", month]
    env = {**os.environ, "SAIA_HOME": str(home), "PYTHONPATH": str(REPO)}
    t0 = time.perf_counter()
    subprocess.run([*cmd, "--output", out], env=env, check=True, capture_output=True)
    cli_s = time.perf_counter() - t0
    shutil.rmtree(out)
    print(f"saia-ctl report --month {month} (whole command, files written): {cli_s * 1000:.0f} ms")
    # Once, the same report from the rows alone (as without the ledger): what the ledger
    # saves, and a check that both ways give the same report.
    t0 = time.perf_counter()
    cold = monthly_report(engine, month, now=now, use_ledger=False)
    render(cold.data, "table")
    cold_s = time.perf_counter() - t0
    same = cold.data == rep.data
    print(
        f"report --month {month} from the rows alone (no ledger): {cold_s * 1000:.0f} ms; same report: {same}"
    )
    size = os.path.getsize(db)
    ledger_bytes = sum(
        conn.execute(f"SELECT COALESCE(SUM(pgsize), 0) FROM dbstat WHERE name LIKE '{t}%'").fetchone()[0]
        for t in ("ledger_", "sqlite_autoindex_ledger_")
    )
    per_m = total_rows / 1e6
    print(
        f"database: {size / 2**20:,.0f} MiB for {total_rows:,} requests = {size / 2**20 / per_m:,.0f} MiB per million"
        f" (of which the ledger {ledger_bytes / 2**20 / per_m:,.0f} MiB per million)"
    )
    conn.close()
    if tmp:
        tmp.cleanup()
    if args.json:
        size_per_m = size / 2**20 / per_m
        writes = folded.writes or [0.0]
        print(
            json_line(
                [
                    Figure(
                        "report", f"report of a month ({rows:,} requests)", r, "s", c, goal="< 2 s", ok=r < 2
                    ),
                    Figure(
                        "report",
                        "report of the current month (a day not folded)",
                        cur,
                        "s",
                        goal="< 2 s",
                        ok=cur < 2,
                    ),
                    Figure("report", "saia-ctl report, whole command with files", cli_s, "s"),
                    Figure(
                        "report",
                        "report from the rows alone (no ledger)",
                        cold_s,
                        "s",
                        r,
                        goal="same report",
                        ok=same,
                    ),
                    Figure(
                        "report", "ledger fold per day (median write lock)", statistics.median(writes), "s"
                    ),
                    Figure("report", "database size per million requests", size_per_m, "MiB"),
                    Figure("report", "of which the ledger", ledger_bytes / 2**20 / per_m, "MiB"),
                ]
            )
        )


if __name__ == "__main__":
    main()
