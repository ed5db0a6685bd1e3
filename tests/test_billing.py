"""Billing by project: each project's figures are the sums of its users' report rows,
and the billing rows (project x service) sum to the project rows."""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from typing import Any

from saia_ctl.accounting.billing import by_project
from saia_ctl.db import write_session
from saia_ctl.limits import add_project
from saia_ctl.request_path.admission import project_in
from tests.support.accounting import NOW, Rows, cli, random_month

KEYS = ("requests", "input_tokens", "output_tokens", "gpu_hours")


def test_project_sums_equal_their_users_and_billing_rows_sum_to_projects(rows: Rows, engine: Any) -> None:
    random_month(rows, 11)
    with write_session(engine) as s:
        add_project(s, "alpha", "acct_alpha", ["user0", "user3", "user5"])
        add_project(s, "beta", None, ["user1?"])  # user10, user11
        add_project(s, "empty", "acct_e", [])
    members = [("alpha", "user0"), ("alpha", "user3"), ("alpha", "user5"), ("beta", "user1?")]
    report = json.loads(cli("report", "--month", "2026-05", "-f", "json", "--no-files").stdout)
    expected: dict[str, dict[str, float]] = defaultdict(lambda: dict.fromkeys(KEYS, 0))
    for u in report["users"]:
        p = project_in(members, u["user"])
        for k in KEYS:
            expected[p][k] += u[k]
    projects, billing = by_project(engine, "2026-05", "UTC", NOW)
    got = {p["project"]: p for p in projects}
    assert set(got) == {"alpha", "beta", "default", "empty"}
    assert got["alpha"]["slurm_account"] == "acct_alpha"
    assert got["empty"]["requests"] == 0 and got["empty"]["gpu_hours"] == 0
    for p, want in expected.items():
        for k in KEYS:
            assert round(got[p][k], 3) == round(want[k], 3), (p, k)
    assert sum(p["requests"] for p in projects) == report["totals"]["requests"]
    for p in got.values():
        mine = [b for b in billing if b["project"] == p["project"]]
        for k in KEYS:
            assert round(sum(b[k] for b in mine), 3) == round(p[k], 3), (p["project"], k)
    assert {b["service"] for b in billing} <= {"svc-a", "svc-b", "svc-c"}
    # the CLI's billing CSV: one row per project and service, the same figures
    out = cli("report", "--month", "2026-05", "--by", "project", "--billing", "-f", "csv")
    assert out.exit_code == 0, out.stderr
    csv_rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert len(csv_rows) == len(billing)
    assert sum(int(r["requests"]) for r in csv_rows) == report["totals"]["requests"]
    assert {r["slurm_account"] for r in csv_rows if r["project"] == "alpha"} == {"acct_alpha"}


def test_billing_option_needs_by_project(rows: Rows) -> None:
    out = cli("report", "--month", "2026-05", "--billing")
    assert out.exit_code == 1 and out.stderr.strip() == "Error: --billing goes with --by project"
