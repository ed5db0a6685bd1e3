"""Bench: ``GET /v1/usage`` (the caller's month so far, docs/accounting.md) on a big month.

Generates a month of traffic in the current month with ``bench/report.py``'s
generator (default 1,000,000 requests, 10,000 users, 20 services), folds it
into the ledger as the tick does, sets a few limits, then times
``GET /v1/usage`` for random users through ``cloud_interface.sh`` as sshd runs it
(process start to exit, a fresh interpreter per request) and the library call
alone (``saia_ctl.usage.usage_of_user``, in process). Interleaved with each
request, the baseline: a bare ``python -I -S -c pass`` of the same interpreter
(the floor of any request through the request path). Goal of issue 13: p95 < 50 ms
at 1,000,000 requests a month.

Two months, each generated fresh:

- ``so far``: the month's traffic up to now only (early in a month, few requests);
- ``month end``: all of the month's requests already there, its last day's squeezed
  into today up to now (so today is as busy as a whole day; the hour before it as
  busy as any), as on the month's last evening, and folded as the tick folds: the
  days before today whole, today up to its last due whole hour. The ledger is as big
  as it gets (every user on every service) and the unfolded tail as long as the tick
  leaves it (about an hour plus the ledger's MARGIN, of today's denser rows). (On
  the month's first day: the month so far.)

    .venv/bin/python bench/usage.py --per-month 100000 --calls 20   # quick
    .venv/bin/python bench/usage.py [--month so-far|month-end|both] [--longest-tail] [--json]
"""

from __future__ import annotations

import argparse
import calendar
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from common import Figure, json_line, median, p95  # noqa: E402
from report import generate, month_start, setup  # noqa: E402

from saia_ctl.accounting import ledger  # noqa: E402
from saia_ctl.db import engine_for  # noqa: E402
from saia_ctl.settings import Settings  # noqa: E402
from saia_ctl.usage import usage_of_user  # noqa: E402
from tests.support.paths import CLOUD_INTERFACE, PYTHON  # noqa: E402
from tests.support.wire import command  # noqa: E402

DAY = 86400.0
HOUR = 3600.0
GOAL_MS = 50.0


def squeeze_into(conn: sqlite3.Connection, a: float, b: float, today: float, now: float) -> None:
    """Move a whole month [a, b) of rows into [a, now), by a monotone map that keeps durations:
    its last day into [today, now), the hour before it as it was (the tail's scan reaches an
    hour back for the requests in flight across the cursor), the rest into [a, today - 1 h).
    Jobs that ran to the month's end are still running."""
    pieces = [(a, b - DAY - HOUR, a, today - HOUR), (b - DAY - HOUR, b - DAY, today - HOUR, today),
              (b - DAY, b, today, now)]  # fmt: skip

    def f(col: str) -> str:
        cases = " ".join(
            f"WHEN {col} < {x1!r} THEN {y0!r} + ({col} - {x0!r}) * {(y1 - y0) / (x1 - x0)!r}"
            for x0, x1, y0, y1 in pieces[:-1]
        )
        x0, x1, y0, y1 = pieces[-1]
        return f"(CASE {cases} ELSE {y0!r} + ({col} - {x0!r}) * {(y1 - y0) / (x1 - x0)!r} END)"

    conn.execute(
        f"UPDATE requests SET first_byte_at = first_byte_at - started_at + {f('started_at')},"
        f" ended_at = ended_at - started_at + {f('started_at')}, started_at = {f('started_at')}"
    )
    conn.execute(
        f"UPDATE jobs SET submitted_at = submitted_at - started_at + {f('started_at')},"
        f" ready_at = ready_at - started_at + {f('started_at')},"
        f" ended_at = CASE WHEN ended_at >= {b!r} THEN NULL ELSE {f('ended_at')} END,"
        f" state = CASE WHEN ended_at >= {b!r} THEN 'ready' ELSE state END,"
        f" started_at = {f('started_at')}"
    )


def make_month(home: Path, which: str, args: argparse.Namespace) -> int:
    """Generate and fold the month; the number of its requests up to now."""
    setup(home, args.services)
    db = home / "saia.db"
    now = time.time()
    t = time.gmtime(now)
    generate(db, [(t.tm_year, t.tm_mon)], args.per_month, args.users, args.services, 1)
    a = month_start(t.tm_year, t.tm_mon)
    b = a + calendar.monthrange(t.tm_year, t.tm_mon)[1] * DAY
    today = now // DAY * DAY
    with sqlite3.connect(db) as conn:
        if which == "month end" and today - HOUR > a:
            squeeze_into(conn, a, b, today, now)
        else:  # the month so far: nothing after now
            conn.execute("DELETE FROM requests WHERE started_at > ?", (now,))
            conn.execute("UPDATE jobs SET ended_at = NULL, state = 'ready' WHERE ended_at > ?", (now,))
        so_far: int = conn.execute("SELECT count(*) FROM requests").fetchone()[0]
    # --longest-tail: folded as a tick an hour ago left it, so the unfolded tail is 1 h 15 min
    # to 2 h 15 min long: longer than the tick ever leaves it, whatever the minute of the run
    at = now - HOUR if args.longest_tail else now
    ledger.fold_engine(engine_for(Settings(home=str(home), environ={})), "UTC", at)
    with sqlite3.connect(db) as conn:
        (cursor,) = conn.execute("SELECT folded_to FROM ledger_cursors WHERE tz = 'UTC'").fetchone()
    print(f"  {which}: folded up to {(now - cursor) / 60:.0f} minutes before now")
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO limits VALUES ('default', '', '', 'requests_day', 1000)")
        conn.execute("INSERT INTO limits VALUES ('default', '', '', 'tokens_month', 10000000)")
    return so_far


def run_month(which: str, args: argparse.Namespace) -> list[Figure]:
    home = Path(tempfile.mkdtemp(prefix="saia-bench-usage-"))
    try:
        so_far = make_month(home, which, args)
        settings = Settings(home=str(home), environ={})
        rng = random.Random(7)
        users = [f"user{rng.randrange(args.users):05d}@example.org" for _ in range(args.calls)]
        lib = []
        for u in users:
            t0 = time.perf_counter()
            usage_of_user(settings, u, "UTC")
            lib.append((time.perf_counter() - t0) * 1000)
        env = {"PATH": "/usr/bin:/bin", "SAIA_HOME": str(home), "LANG": "C.UTF-8"}
        wall, floor = [], []
        for i, u in enumerate(users):
            t0 = time.perf_counter()
            subprocess.run([PYTHON, "-I", "-S", "-c", "pass"], check=True)
            floor.append((time.perf_counter() - t0) * 1000)
            cmd = command(f"usage-{i}", u, "usage", "/v1/usage", method="GET", body=None)
            t0 = time.perf_counter()
            r = subprocess.run([str(CLOUD_INTERFACE)], env={**env, "SSH_ORIGINAL_COMMAND": cmd.decode()},
                               capture_output=True, stdin=subprocess.DEVNULL)  # fmt: skip
            wall.append((time.perf_counter() - t0) * 1000)
            if not r.stdout.startswith(b"HTTP/1.1 200"):
                raise SystemExit(f"bad usage answer: {r.stdout[:300]!r}")
        extra = [w - f for w, f in zip(wall, floor, strict=True)]
        print(f"{which}: {so_far:,} requests this month up to now, {args.users:,} users, "
              f"{args.services} services, {args.calls} calls, cores: {os.cpu_count()}")  # fmt: skip
        print(f"  usage_of_user in process:            median {median(lib):5.1f} ms, p95 {p95(lib):5.1f} ms")
        print(
            f"  baseline python -I -S -c pass:       median {median(floor):5.1f} ms, p95 {p95(floor):5.1f} ms"
        )
        print(
            f"  GET /v1/usage (cloud_interface.sh):  median {median(wall):5.1f} ms, p95 {p95(wall):5.1f} ms"
            f" (goal: p95 < {GOAL_MS:.0f} ms); {p95(wall) / median(floor):.1f} x the baseline's median"
        )
        print(
            f"  minus its baseline, call by call:    median {median(extra):5.1f} ms, p95 {p95(extra):5.1f} ms"
        )
        name = which.replace(" ", "-")
        return [
            Figure(
                "usage",
                f"{name} GET /v1/usage p95",
                round(p95(wall), 1),
                "ms",
                round(median(floor), 1),
                goal=f"< {GOAL_MS:.0f} ms",
                ok=p95(wall) < GOAL_MS,
            ),
            Figure("usage", f"{name} usage_of_user p95 (in process)", round(p95(lib), 1), "ms"),
        ]
    finally:
        shutil.rmtree(home, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--per-month", type=int, default=1_000_000)
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--services", type=int, default=20)
    ap.add_argument("--calls", type=int, default=40)
    ap.add_argument("--month", choices=("so-far", "month-end", "both"), default="both")
    ap.add_argument(
        "--longest-tail",
        action="store_true",
        help="fold as an hour ago: a longer unfolded tail than the tick leaves",
    )
    ap.add_argument("--json", action="store_true", help="print the figures as a JSON line last (bench/run)")
    args = ap.parse_args()
    figures: list[Figure] = []
    for which in ("so far", "month end"):
        if args.month in ("both", which.replace(" ", "-")):
            figures += run_month(which, args)
    if args.json:
        print(json_line(figures))


if __name__ == "__main__":
    main()
