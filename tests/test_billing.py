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


def test_gpu_hours_limit_is_checked_against_the_reports_figure(
    rows: Rows, engine: Any, settings: Any
) -> None:
    from saia_ctl import rawdb
    from saia_ctl.accounting.report import monthly_report
    from saia_ctl.limits import refresh_gpu_figures, set_limits
    from saia_ctl.request_path import admission
    from tests.support.accounting import JUNE

    random_month(rows, 3)
    now = JUNE - 60  # the end of May: the figures are May's
    report = monthly_report(engine, "2026-05", tz="UTC", now=now, by="user")
    gpu = {u["user"]: u["gpu_hours"] for u in report.data["users"]}
    heavy = max(gpu, key=lambda u: gpu[u])
    assert gpu[heavy] > 0
    with write_session(engine) as s:
        add_project(s, "team", None, [heavy, "newcomer"])
        set_limits(s, "user", heavy, None, {"gpu_hours_month": str(gpu[heavy])})
        set_limits(s, "project", "team", None, {"gpu_hours_month": str(gpu[heavy] + 1)})
        assert refresh_gpu_figures(s, "UTC", now) == 2
    conn = rawdb.connect(settings.db_path, journal_mode=settings.journal_mode, busy_timeout=5)
    try:
        with rawdb.immediate(conn):
            d = admission.admit(conn, heavy, "svc-a", now, "UTC")
            assert d.refused is not None and d.refused.kind == "gpu_hours_month" and d.status == 429
            assert d.refused.used == gpu[heavy]
            # a member with no GPU time: the project's figure (the heavy user's) is below its limit
            assert admission.admit(conn, "newcomer", "svc-a", now, "UTC").refused is None
    finally:
        conn.close()
    with write_session(engine) as s:
        set_limits(s, "project", "team", None, {"gpu_hours_month": str(gpu[heavy] - 0.001)})
        refresh_gpu_figures(s, "UTC", now)
    conn = rawdb.connect(settings.db_path, journal_mode=settings.journal_mode, busy_timeout=5)
    try:
        with rawdb.immediate(conn):
            refused = admission.admit(conn, "newcomer", "svc-a", now, "UTC").refused
            assert refused is not None and refused.subject == "project:team"
    finally:
        conn.close()
