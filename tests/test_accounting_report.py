"""`saia-ctl report`: sums, GPU attribution, month edges, open rows, empty months, formats."""

from __future__ import annotations

import csv
import difflib
import io
import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from tabulate import tabulate

from saia_ctl.accounting.columns import column
from saia_ctl.accounting.render import grid
from saia_ctl.accounting.report import monthly_report
from tests.support.accounting import JUNE, LONG_USER, MAY, NOW, Rows, busy_month, cli, random_month


def report(engine: Any, month: str = "2026-05", **kw: Any) -> dict[str, Any]:
    return monthly_report(engine, month, now=kw.pop("now", NOW), **kw).data


def milli(x: float) -> int:
    return round(x * 1000)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sums_agree_with_raw_rows_and_gpu_splits_exactly(rows: Rows, engine: Any, seed: int) -> None:
    random_month(rows, seed)
    data = report(engine)
    users, services, totals = data["users"], data["services"], data["totals"]
    raw = rows.conn.execute(
        "SELECT COUNT(*), COALESCE(SUM(input_tokens),0), COALESCE(SUM(output_tokens),0), SUM(outcome IS NULL)"
        " FROM requests WHERE started_at >= ? AND started_at < ?",
        (MAY, JUNE),
    ).fetchone()
    for key, value in zip(("requests", "input_tokens", "output_tokens", "in_flight"), raw, strict=True):
        assert sum(u[key] for u in users) == value == sum(s[key] for s in services) == totals[key]
    for s in services:
        assert s["requests"] == s["ok"] + s["errors"] + s["aborted"] + s["in_flight"]
        assert s["errors"] >= s["errors_4xx"] + s["errors_5xx"]
        # users' shares + idle = the service total, to the last displayed digit
        assert milli(s["attributed_gpu_hours"]) + milli(s["idle_gpu_hours"]) == milli(s["gpu_hours"])
    assert sum(milli(u["gpu_hours"]) for u in users) + milli(totals["idle_gpu_hours"]) == milli(
        totals["gpu_hours"]
    )
    assert sum(milli(s["gpu_hours"]) for s in services) == milli(totals["gpu_hours"])
    assert sum(milli(s["attributed_gpu_hours"]) for s in services) == sum(
        milli(u["gpu_hours"]) for u in users
    )
    # and the GPU total is the jobs' run time clipped to May, times their GPUs
    expect = 0.0
    for started, ended, gpus in rows.conn.execute("SELECT started_at, ended_at, gpus FROM jobs"):
        expect += max(0.0, min(ended, JUNE) - max(started, MAY)) * gpus
    assert abs(totals["gpu_hours"] - expect / 3600) <= 0.0005 * len(services)
    # per-service: the users' rows of a --service report add up to that service's row
    for s in services:
        part = report(engine, service=s["service"])
        assert sum(milli(u["gpu_hours"]) for u in part["users"]) == milli(s["attributed_gpu_hours"])
        assert sum(u["requests"] for u in part["users"]) == s["requests"]


def test_attribution_splits_each_instant_among_users_in_flight(rows: Rows, engine: Any) -> None:
    t0 = MAY + 86400
    job = rows.job("svc-a", t0, t0 + 3600, ready=t0 + 600, gpus=2)
    # 0-600 loading (idle); alice 600-1800; bob 1200-2400 with two requests at once 1200-1800
    rows.request("alice", "svc-a", job, t0 + 600, t0 + 1800)
    rows.request("bob", "svc-a", job, t0 + 1200, t0 + 2400)
    rows.request("bob", "svc-a", job, t0 + 1200, t0 + 1800)
    data = report(engine)
    by_user = {u["user"]: u["gpu_hours"] for u in data["users"]}
    # alice: 600 s alone + 600 s at 1/3; bob: 600 s at 2/3 + 600 s alone; x 2 GPUs
    assert by_user == {"alice": round((600 + 200) * 2 / 3600, 3), "bob": round((400 + 600) * 2 / 3600, 3)}
    svc = data["services"][0]
    assert svc["gpu_hours"] == 2.0 and svc["job_hours"] == 1.0
    assert svc["idle_gpu_hours"] == round((600 + 1200) * 2 / 3600, 3)  # loading + after bob
    assert svc["idle_ready_gpu_hours"] == round(1200 * 2 / 3600, 3)
    assert svc["ready_hours"] == round(3000 / 3600, 3)
    assert svc["submit_to_ready_median_s"] == 610.0
    assert svc["jobs"] == 1 and svc["jobs_open"] == 0


def test_request_at_last_second_belongs_to_its_month_and_job_is_split(rows: Rows, engine: Any) -> None:
    job = rows.job("svc-a", JUNE - 7200, JUNE + 3600, ready=JUNE - 7000, gpus=4)
    rows.request("late", "svc-a", job, JUNE - 1, JUNE + 5)
    rows.request("early", "svc-a", job, JUNE, JUNE + 2)
    may, june = report(engine, "2026-05"), report(engine, "2026-06")
    assert [u["user"] for u in may["users"]] == ["late"]
    assert {u["user"] for u in june["users"]} == {"early", "late"}  # late is still in flight in June
    assert [u["requests"] for u in june["users"] if u["user"] == "late"] == [0]
    assert may["services"][0]["gpu_hours"] == 8.0 and june["services"][0]["gpu_hours"] == 4.0
    assert may["services"][0]["job_hours"] == 2.0 and june["services"][0]["job_hours"] == 1.0
    # the late request's GPU time is split at midnight: 1 s in May, then shared in June
    assert may["users"][0]["gpu_hours"] == round(4 / 3600, 3)


def test_time_zone_moves_the_month_window(rows: Rows, engine: Any) -> None:
    rows.request("u", "svc-a", None, JUNE - 1800, JUNE - 1799, status=502, outcome="error")
    # 23:30 UTC on 31 May is 01:30 on 1 June in Berlin (UTC+2)
    assert report(engine, "2026-05")["totals"]["requests"] == 1
    assert report(engine, "2026-05", tz="Europe/Berlin")["totals"]["requests"] == 0
    berlin = report(engine, "2026-06", tz="Europe/Berlin")
    assert berlin["totals"]["requests"] == 1 and berlin["totals"]["errors_5xx"] == 1
    assert berlin["from"] == "2026-06-01T00:00:00+02:00"
    assert berlin["days"] == [{"day": "2026-06-01", "service": "svc-a", "requests": 1}]


def test_open_requests_and_jobs_are_counted_as_open(rows: Rows, engine: Any) -> None:
    now = MAY + 10 * 86400
    job = rows.job("svc-a", MAY + 86400, None, ready=MAY + 86400 + 60, gpus=1)
    rows.request("u", "svc-a", job, now - 100, None)
    rows.request("u", "svc-a", job, now - 300, now - 200)
    data = report(engine, now=now)
    svc = data["services"][0]
    assert svc["jobs_open"] == 1 and svc["in_flight"] == 1 and data["totals"]["in_flight"] == 1
    assert svc["gpu_hours"] == (9 * 24)  # the running job counts up to now
    assert data["users"][0]["gpu_hours"] == round(200 / 3600, 3)


def test_empty_month_and_unknown_filters_exit_0_with_a_message(rows: Rows, engine: Any) -> None:
    r = cli("report", "--month", "2020-01", "--format", "json")
    assert r.exit_code == 0
    assert "no requests or jobs in 2020-01" in r.stderr
    assert json.loads(r.stdout)["users"] == []
    rows.request("u", "svc-a", None, MAY + 10, MAY + 11)
    r = cli("report", "--month", "2026-05", "--service", "nope", "--format", "json")
    assert r.exit_code == 0 and "unknown service 'nope'" in r.stderr
    assert json.loads(r.stdout)["services"] == [] and json.loads(r.stdout)["totals"]["requests"] == 0
    r = cli("report", "--month", "2026-05", "--user", "ghost")
    assert r.exit_code == 0 and "no requests by user 'ghost'" in r.stderr
    r = cli("report", "--month", "2026-13")
    assert r.exit_code == 1 and r.stderr.startswith("Error: not a month")
    r = cli("report", "--month", "2026-05", "--tz", "Mars/Olympus")
    assert r.exit_code == 1 and "unknown time zone" in r.stderr


def test_formats_and_output_folder(rows: Rows, engine: Any, tmp_path: Path, home: Path) -> None:
    random_month(rows, 7, n_requests=60)
    data = report(engine)
    r = cli("report", "--month", "2026-05", "--format", "json")
    assert r.exit_code == 0 and json.loads(r.stdout) == json.loads(json.dumps(data))
    r = cli("report", "--month", "2026-05", "--format", "csv", "--by", "user")
    table = list(csv.DictReader(io.StringIO(r.stdout)))
    assert [t["user"] for t in table] == [u["user"] for u in data["users"]]
    assert all(len(t["gpu_hours"].split(".")[1]) == 3 for t in table)
    r = cli("report", "--month", "2026-05", "--format", "markdown")
    assert (
        r.stdout.startswith("# saia-ctl report 2026-05")
        and "## Services" in r.stdout
        and "| svc-a" in r.stdout
    )
    r = cli("report", "--month", "2026-05")
    assert "Users" in r.stdout and "Totals" in r.stdout
    default = home / "reports" / "2026-05"
    assert default.is_dir()  # the reports above wrote their files there by default
    shutil.rmtree(default)
    r = cli("report", "--month", "2026-05", "--no-files")
    assert r.exit_code == 0 and not default.exists()  # --no-files only prints
    r = cli("report", "--month", "2026-05", "--format", "html", "--output", str(tmp_path / "out"))
    assert r.exit_code == 0 and r.stdout.startswith("<!DOCTYPE html>") and "<script" not in r.stdout
    assert not default.exists()  # --output replaces the default folder
    r = cli("report", "--month", "2026-05", "--format", "json")
    assert r.exit_code == 0 and json.loads(r.stdout)["month"] == "2026-05"
    for folder in (tmp_path / "out", default):  # by default the files go to $SAIA_HOME/reports/YYYY-MM/
        assert sorted(p.name for p in folder.iterdir()) == [
            "days.csv", "report.html", "report.json", "services.csv", "users.csv",
        ]  # fmt: skip
        assert json.loads((folder / "report.json").read_text()) == json.loads(json.dumps(data))


def test_anonymize_gives_stable_pseudonyms(rows: Rows, engine: Any, home: Path) -> None:
    rows.request("alice@example.org", "svc-a", None, MAY + 10, MAY + 11)
    first = cli("report", "--month", "2026-05", "--anonymize", "--format", "json")
    second = cli("report", "--month", "2026-05", "--anonymize", "--format", "json")
    assert first.exit_code == 0 and first.stdout == second.stdout
    assert "alice" not in first.stdout
    user = json.loads(first.stdout)["users"][0]["user"]
    assert user.startswith("u-") and len(user) == 18
    key = home / "anonymize.key"
    assert key.stat().st_mode & 0o077 == 0
    key.write_text("0" * 64 + "\n")  # another installation: other pseudonyms
    third = cli("report", "--month", "2026-05", "--anonymize", "--format", "json")
    assert json.loads(third.stdout)["users"][0]["user"] != user


# --- Output for people: the compact table, --wide, --columns; JSON and CSV unchanged ----------

GOLDEN = Path(__file__).parent / "data" / "report"


def assert_golden(name: str, text: str) -> None:
    """``text`` equals tests/data/report/``name`` (a readable diff if not);
    SAIA_UPDATE_GOLDEN=1 rewrites the file."""
    path = GOLDEN / name
    if os.environ.get("SAIA_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    want = path.read_text()
    if text != want:
        diff = difflib.unified_diff(want.splitlines(), text.splitlines(), "golden", "got", lineterm="")
        pytest.fail(f"{name} differs from its golden file:\n" + "\n".join(diff))


def headers(table: str, section: str) -> list[str]:
    """The column titles of one section of the terminal table (split on 2+ blanks)."""
    lines = table.splitlines()
    head = lines[lines.index(section) + 2]
    return [t for t in re.split(r"\s{2,}", head.strip()) if t]


def test_default_table_is_compact_with_human_titles_and_fits_120_columns(rows: Rows) -> None:
    busy_month(rows)
    r = cli("report", "--month", "2026-05", "--no-files")
    assert r.exit_code == 0, r.stderr
    lines = r.stdout.splitlines()
    assert max(len(line) for line in lines) <= 120, max(lines, key=len)
    want = ["Requests", "Errors", "Tokens in", "Tokens out", "p50 (s)", "p95 (s)", "GPU-hours"]
    assert headers(r.stdout, "Users") == ["User", *want]
    assert headers(r.stdout, "Services") == ["Service", *want]
    assert headers(r.stdout, "Totals") == ["Users", "Services", *want]
    assert "errors_4xx" not in r.stdout and "duration_p50_s" not in r.stdout
    # a long id keeps its start and end; the others are whole; numbers have separators
    assert "firstname.midd...example.org " in r.stdout and LONG_USER not in r.stdout
    assert "svc-account-batch-0001 " in r.stdout and "617,283,945" in r.stdout
    assert_golden("table.txt", r.stdout)


def test_wide_shows_every_column_and_markdown_has_human_titles(rows: Rows, engine: Any) -> None:
    busy_month(rows)
    data = report(engine)
    r = cli("report", "--month", "2026-05", "--no-files", "--wide")
    assert r.exit_code == 0, r.stderr
    for section, key in (("Users", "users"), ("Services", "services")):
        assert headers(r.stdout, section) == [column(k).title for k in data[key][0]]  # same order
    totals = ["Users", "Services", "Requests", "OK", "Errors", "4xx", "5xx", "Aborted", "In flight"]
    totals += ["Tokens in", "Tokens out", "p50 (s)", "p95 (s)", "TTFB p50 (s)", "TTFB p95 (s)", "Jobs"]
    totals += ["Jobs open", "GPU-hours", "Attributed GPU-h", "Idle GPU-h"]
    assert headers(r.stdout, "Totals") == totals
    assert sorted(totals) == sorted(column(k).title for k in data["totals"])
    assert len(headers(r.stdout, "Services")) == 23 and "Attributed GPU-h" in r.stdout
    assert LONG_USER in r.stdout  # whole ids in the wide table
    r = cli("report", "--month", "2026-05", "--no-files", "--format", "markdown")
    assert r.exit_code == 0, r.stderr
    assert " 4xx |" in r.stdout and " Submit to ready p50 (s) |" in r.stdout
    assert "errors_4xx" not in r.stdout and LONG_USER in r.stdout
    assert_golden("report.md", r.stdout)


def test_columns_picks_columns_and_rejects_unknown_keys(rows: Rows) -> None:
    busy_month(rows)
    r = cli("report", "--month", "2026-05", "--no-files", "--columns", "gpu_hours,errors_5xx")
    assert r.exit_code == 0, r.stderr
    assert headers(r.stdout, "Users") == ["User", "GPU-hours", "5xx"]  # the id, then as asked
    assert headers(r.stdout, "Totals") == ["GPU-hours", "5xx"]
    r = cli("report", "--month", "2026-05", "--no-files", "-f", "markdown", "--columns", "jobs")
    assert r.exit_code == 0 and "| Service   |   Jobs |" in r.stdout and "| User" in r.stdout
    r = cli("report", "--month", "2026-05", "--no-files", "--user", "user2", "--columns", "jobs")
    assert r.exit_code == 0 and "Totals\n\n(none of the chosen columns)\n" in r.stdout
    for args, message in (
        (["--columns", "requests,nope"], "unknown column 'nope'; valid: user, service, users,"),
        (["--columns", ","], "no column given; valid: user,"),
        (["--columns", "requests", "--wide"], "--columns and --wide cannot be used together"),
        (["--columns", "requests", "-f", "json"], "--columns applies to --format table or markdown"),
        (["--wide", "-f", "csv"], "--wide applies to --format table or markdown"),
    ):
        r = cli("report", "--month", "2026-05", "--no-files", *args)
        assert r.exit_code == 1 and r.stdout == "", args
        assert r.stderr.startswith("Error: " + message) and r.stderr.count("\n") == 1, r.stderr
    r = cli("report", "--month", "2026-05", "--no-files", "--columns", "nope")
    assert "submit_to_ready_median_s" in r.stderr and "Traceback" not in r.stderr


def test_json_and_csv_keep_keys_and_plain_numbers(rows: Rows, tmp_path: Path) -> None:
    """JSON and CSV are an interface: byte for byte what they were before human titles."""
    busy_month(rows)
    r = cli("report", "--month", "2026-05", "--format", "json", "--output", str(tmp_path / "out"))
    assert r.exit_code == 0, r.stderr
    assert_golden("report.json", r.stdout)
    r = cli("report", "--month", "2026-05", "--format", "csv", "--no-files")
    assert r.exit_code == 0, r.stderr
    assert_golden("report.csv", r.stdout)
    for name in ("users.csv", "services.csv", "days.csv", "report.json"):
        assert_golden(name, (tmp_path / "out" / name).read_text())


def test_grid_right_aligns_numbers_as_tabulate_does() -> None:
    rng = random.Random(12)
    for _ in range(300):
        cols = rng.randint(1, 6)
        right = [rng.random() < 0.6 for _ in range(cols)]
        heads = ["".join(rng.choice("abc XY-(s)") for _ in range(rng.randint(1, 12))).strip() or "h"]
        heads += [f"col {i}" for i in range(1, cols)]
        body = [[f"{rng.randint(0, 10 ** rng.randint(0, 9)):,}" for _ in range(cols)] for _ in range(5)]
        for fmt in ("simple", "github"):
            want = tabulate(
                body,
                headers=heads,
                tablefmt=fmt,
                disable_numparse=True,
                colalign=["right" if r else "left" for r in right],
            )
            assert grid(body, heads, fmt, right) == want
