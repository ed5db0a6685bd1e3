"""Bench: ``GET /v1/usage`` (the caller's month so far, docs/accounting.md) on a big month.

Generates the current month's traffic (up to now) with ``bench/report.py``'s generator
(default 1,000,000 requests, 10,000 users, 20 services), folds the closed days
into the ledger as the tick does, sets a few limits, then times ``GET /v1/usage``
for random users through ``cloud_interface.sh`` as sshd runs it (process start to
exit) and the library call alone (``saia_ctl.usage.usage_of_user``, in process).
Goal of issue 13: p95 < 50 ms at 1,000,000 requests a month.

    .venv/bin/python bench/usage.py --per-month 100000 --calls 20   # quick
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from report import generate, setup  # noqa: E402

from saia_ctl.accounting import ledger  # noqa: E402
from saia_ctl.db import engine_for  # noqa: E402
from saia_ctl.settings import Settings  # noqa: E402
from saia_ctl.usage import usage_of_user  # noqa: E402
from tests.support.paths import CLOUD_INTERFACE  # noqa: E402
from tests.support.wire import command  # noqa: E402


def p95(values: list[float]) -> float:
    return sorted(values)[max(0, int(len(values) * 0.95 + 0.5) - 1)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--per-month", type=int, default=1_000_000)
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--services", type=int, default=20)
    ap.add_argument("--calls", type=int, default=40)
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="saia-bench-usage-"))
    try:
        setup(home, args.services)
        now = time.time()
        t = time.gmtime(now)
        generate(home / "saia.db", [(t.tm_year, t.tm_mon)], args.per_month, args.users, args.services, 1)
        with sqlite3.connect(home / "saia.db") as conn:  # the month so far: nothing after now
            conn.execute("DELETE FROM requests WHERE started_at > ?", (now,))
            conn.execute("UPDATE jobs SET ended_at = NULL, state = 'ready' WHERE ended_at > ?", (now,))
            so_far = conn.execute("SELECT count(*) FROM requests").fetchone()[0]
        settings = Settings(home=str(home), environ={})
        engine = engine_for(settings)
        ledger.fold_engine(engine, "UTC", now)
        with sqlite3.connect(home / "saia.db") as conn:
            conn.execute("INSERT INTO limits VALUES ('default', '', '', 'requests_day', 1000)")
            conn.execute("INSERT INTO limits VALUES ('default', '', '', 'tokens_month', 10000000)")
        users = [f"user{random.randrange(args.users):05d}@example.org" for _ in range(args.calls)]
        lib = []
        for u in users:
            t0 = time.perf_counter()
            usage_of_user(settings, u, "UTC")
            lib.append(time.perf_counter() - t0)
        env = {"PATH": "/usr/bin:/bin", "SAIA_HOME": str(home), "LANG": "C.UTF-8"}
        wall = []
        for i, u in enumerate(users):
            cmd = command(f"usage-{i}", u, "usage", "/v1/usage", method="GET", body=None)
            t0 = time.perf_counter()
            r = subprocess.run([str(CLOUD_INTERFACE)], env={**env, "SSH_ORIGINAL_COMMAND": cmd.decode()},
                               capture_output=True, stdin=subprocess.DEVNULL)  # fmt: skip
            wall.append(time.perf_counter() - t0)
            if not r.stdout.startswith(b"HTTP/1.1 200"):
                raise SystemExit(f"bad usage answer: {r.stdout[:300]!r}")
        print(f"{so_far:,} requests so far this month (of {args.per_month:,} generated for all of it), "
              f"{args.users:,} users, cores: {os.cpu_count()}")  # fmt: skip
        print(
            f"usage_of_user in process: median {statistics.median(lib) * 1000:.0f} ms, p95 {p95(lib) * 1000:.0f} ms"
        )
        print(f"GET /v1/usage through cloud_interface.sh: median {statistics.median(wall) * 1000:.0f} ms, "
              f"p95 {p95(wall) * 1000:.0f} ms (goal: p95 < 50 ms)")  # fmt: skip
    finally:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
