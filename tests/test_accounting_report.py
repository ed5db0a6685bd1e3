"""`saia-ctl report`: sums, GPU attribution, month edges, open rows, empty months, formats."""

from __future__ import annotations

import csv
import io
import json
import random
import shutil
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from saia_ctl.accounting.report import monthly_report
from saia_ctl.cli.main import app
from saia_ctl.request_path.store import FINISH_REQUEST_SQL, INSERT_REQUEST_SQL
from tests.conftest import service_config

MAY = datetime(2026, 5, 1, tzinfo=UTC).timestamp()
JUNE = datetime(2026, 6, 1, tzinfo=UTC).timestamp()
NOW = datetime(2026, 7, 15, tzinfo=UTC).timestamp()


class Rows:
    """Writes jobs (as the scheduler does) and requests (through the request path's own statements)."""

    def __init__(self, db: Path) -> None:
        self.conn = sqlite3.connect(db, isolation_level=None)
        self.n = 0

    def job(
        self,
        service: str,
        started: float | None,
        ended: float | None = None,
        *,
        ready: float | None = None,
        draining: float | None = None,
        submitted: float | None = None,
        gpus: int = 1,
        state: str | None = None,
        walltime: int | None = None,
        end_reason: str | None = None,
        slurm_id: int | None = None,
    ) -> int:
        self.n += 1
        st = state or ("ended" if ended is not None else ("ready" if ready is not None else "starting"))
        cur = self.conn.execute(
            "INSERT INTO jobs (name, service_id, slurm_job_id, state, node, port, secret, submitted_at, started_at,"
            " ready_at, draining_at, ended_at, walltime_limit, gpus, end_reason, health_failures)"
            " VALUES (?, ?, ?, ?, 'node1', ?, 's', ?, ?, ?, ?, ?, ?, ?, ?, 0)",
            (
                f"t_{self.n}_{service}",
                service,
                slurm_id if slurm_id is not None else 1000 + self.n,
                st,
                30000 + self.n,
                submitted if submitted is not None else (started or 0) - 10,
                started,
                ready,
                draining,
                ended,
                walltime,
                gpus,
                end_reason,
            ),
        )
        assert cur.lastrowid is not None
        return cur.lastrowid

    def request(
        self,
        user: str,
        service: str,
        job: int | None,
        start: float,
        end: float | None = None,
        *,
        status: int = 200,
        outcome: str = "ok",
        tin: int | None = 10,
        tout: int | None = 20,
        ttfb: float | None = 0.1,
        error: str | None = None,
    ) -> int:
        self.n += 1
        cur = self.conn.execute(
            INSERT_REQUEST_SQL,
            {
                "inference_id": f"inf-{self.n}",
                "user_id": user,
                "service_id": service,
                "job_id": job,
                "method": "POST",
                "path": "/v1/chat/completions",
                "started_at": start,
                "bytes_in": 100,
                "handler_host": "login1",
                "handler_pid": 4242,
            },
        )
        rid = cur.lastrowid
        if end is not None:
            self.conn.execute(
                FINISH_REQUEST_SQL,
                {
                    "id": rid,
                    "job_id": job,
                    "first_byte_at": None if ttfb is None else start + ttfb,
                    "ended_at": end,
                    "status": status,
                    "outcome": outcome,
                    "bytes_in": 100,
                    "bytes_out": 200,
                    "input_tokens": tin,
                    "output_tokens": tout,
                    "error": error,
                },
            )
        assert rid is not None
        return rid


@pytest.fixture
def rows(home: Path, import_services: Any, tmp_path: Path) -> Rows:
    batch = tmp_path / "job.sbatch"
    batch.write_text("#!/bin/sh\n")
    import_services(*(service_config(s, sbatch=str(batch)) for s in ("svc-a", "svc-b", "svc-c")))
    return Rows(home / "saia.db")


def cli(*args: str) -> Any:
    result = CliRunner().invoke(app, list(args))
    return result


def report(engine: Any, month: str = "2026-05", **kw: Any) -> dict[str, Any]:
    return monthly_report(engine, month, now=kw.pop("now", NOW), **kw).data


def milli(x: float) -> int:
    return round(x * 1000)


def random_month(rows: Rows, seed: int, n_requests: int = 400) -> list[tuple[Any, ...]]:
    """Jobs and overlapping requests of several users; some cross the month edges."""
    rng = random.Random(seed)
    jobs = []
    for svc in ("svc-a", "svc-b"):
        for _k in range(3):
            start = MAY - 3 * 86400 + rng.uniform(0, 40) * 86400
            end = start + rng.uniform(0.1, 5) * 86400
            ready = start + rng.uniform(60, 900)
            jobs.append(
                (
                    rows.job(svc, start, min(end, NOW), ready=ready, gpus=rng.choice([1, 2, 4])),
                    svc,
                    start,
                    end,
                )
            )
    users = [f"user{i}" for i in range(12)]
    for _ in range(n_requests):
        jid, svc, js, je = rng.choice(jobs)
        start = rng.uniform(js, je)
        end = start + rng.expovariate(1 / 300)
        outcome, status = rng.choice(
            [("ok", 200)] * 6 + [("error", 404), ("error", 503), ("error", 200), ("aborted", 200)]
        )
        rows.request(
            rng.choice(users), svc, jid, start, end, outcome=outcome, status=status, tin=rng.randint(0, 900)
        )
    # requests that never reached a job, and one still in flight
    rows.request(
        "user1", "svc-c", None, MAY + 5000, MAY + 5001, status=503, outcome="error", tin=None, tout=None
    )
    rows.request("user2", "svc-a", jobs[0][0], MAY + 7000, None)
    return jobs


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
