"""`saia-ctl jobs list`, `saia-ctl requests list` and `saia-ctl metrics`."""

from __future__ import annotations

import csv
import io
import json
import re
from typing import Any

from tests.support.accounting import MAY, Rows, cli


def test_jobs_list_live_all_service_and_formats(rows: Rows, monkeypatch: Any) -> None:
    now = MAY + 86400
    monkeypatch.setattr("time.time", lambda: now)
    live = rows.job("svc-a", now - 3600, None, ready=now - 3000, walltime=7200, slurm_id=77)
    rows.job("svc-b", now - 600, None, state="starting", slurm_id=78)
    ended = rows.job("svc-a", now - 9000, now - 5000, ready=now - 8000, end_reason="timeout", slurm_id=76)
    rows.conn.execute(
        "UPDATE jobs SET slurm_state = 'TIMEOUT', slurm_exit_code = '0:15', slurm_ended_at = ?,"
        " slurm_account = 'saia_a' WHERE id = ?",
        (now - 5001, ended),
    )
    rows.conn.commit()
    rows.request("u", "svc-a", live, now - 5, None)
    rows.request("u", "svc-a", live, now - 50, now - 40)
    r = cli("jobs", "list", "--format", "json")
    assert r.exit_code == 0, r.stderr
    jobs = json.loads(r.stdout)
    assert [j["slurm_job_id"] for j in jobs] == [78, 77]
    ready = jobs[1]
    assert ready["state"] == "ready" and ready["ready"] is True and ready["in_flight"] == 1
    assert ready["node"] == "node1" and isinstance(ready["port"], int)
    assert ready["walltime_left_s"] == 3600 and ready["age_s"] == 3610
    assert jobs[0]["ready"] is False and jobs[0]["walltime_left_s"] is None
    r = cli("jobs", "list", "--all", "--service", "svc-a", "--format", "csv")
    table = list(csv.DictReader(io.StringIO(r.stdout)))
    assert [(t["slurm_job_id"], t["end_reason"]) for t in table] == [("77", ""), ("76", "timeout")]
    # Slurm's own record (sacct) next to what the ticks observed.
    assert [(t["slurm_state"], t["exit_code"], t["account"]) for t in table] == [
        ("", "", ""),
        ("TIMEOUT", "0:15", "saia_a"),
    ]
    assert table[1]["slurm_ended_at"] == "2026-05-01T22:36:39.000Z"
    r = cli("jobs", "list", "--since", "2026-05-02T00:00:00Z", "--format", "json")
    assert {j["slurm_job_id"] for j in json.loads(r.stdout)} == {77, 78}  # 76 ended before
    r = cli("jobs", "list")
    assert r.exit_code == 0
    header = r.stdout.splitlines()[0].split()
    assert header == [
        "service",
        "slurm_job_id",
        "state",
        "node",
        "port",
        "in_flight",
        "age",
        "walltime_left",
        "end_reason",
        "slurm_state",
        "exit_code",
    ]
    assert "1:00:00" in r.stdout  # walltime left, Slurm-style
    r = cli("jobs", "list", "--since", "yesterday")
    assert r.exit_code == 1 and r.stderr.startswith("Error: not a date")


def test_requests_list_filters_newest_first(rows: Rows) -> None:
    t = MAY + 14 * 3600  # 2026-05-01 14:00 UTC
    rows.request("alice", "svc-a", None, t + 120, t + 121, status=502, outcome="error", error="no backend")
    rows.request("alice", "svc-a", None, t + 60, t + 65)
    rows.request("bob", "svc-b", None, t + 90, t + 95, status=404, outcome="error")
    rows.request("alice", "svc-b", None, t - 86400, t - 86399)
    r = cli("requests", "list", "--user", "alice", "--format", "json")
    got = json.loads(r.stdout)
    assert [g["started_at"] for g in got] == [
        "2026-05-01T14:02:00.000Z",
        "2026-05-01T14:01:00.000Z",
        "2026-04-30T14:00:00.000Z",
    ]
    assert got[0]["status"] == 502 and got[0]["error"] == "no backend" and got[0]["duration_s"] == 1.0
    r = cli("requests", "list", "--since", "2026-05-01", "--until", "2026-05-01T14:01:30", "--format", "json")
    assert [g["user"] for g in json.loads(r.stdout)] == ["alice"]
    r = cli("requests", "list", "--status", "4xx", "--format", "json")
    assert [g["user"] for g in json.loads(r.stdout)] == ["bob"]
    r = cli("requests", "list", "--status", "error", "--service", "svc-a", "--format", "csv")
    assert len(list(csv.DictReader(io.StringIO(r.stdout)))) == 1
    r = cli("requests", "list", "--limit", "2", "--format", "json")
    assert len(json.loads(r.stdout)) == 2
    r = cli("requests", "list", "--status", "teapot")
    assert r.exit_code == 1 and r.stderr.startswith("Error: --status must be")
    assert "14:02:00" in cli("requests", "list").stdout


def test_metrics_prometheus_text(rows: Rows, monkeypatch: Any) -> None:
    now = MAY + 86400
    monkeypatch.setattr("time.time", lambda: now)
    job = rows.job("svc-a", now - 100, None, ready=now - 50)
    rows.job("svc-b", now - 100, None, state="pending")
    rows.request("u", "svc-a", job, now - 5, None)
    rows.request("u", "svc-a", job, now - 9, now - 8, tin=5, tout=7)
    rows.request("u", "svc-a", job, now - 9, now - 8, outcome="aborted", tin=None, tout=None)
    rows.conn.execute(
        "INSERT INTO ticks (started_at, holder, summary, actions) VALUES (?, 'h', '', '[]')", (now - 12,)
    )
    r = cli("metrics")
    assert r.exit_code == 0, r.stderr
    text = r.stdout
    samples = {}
    for line in text.splitlines():
        if line.startswith("#"):
            assert re.match(r"# (HELP|TYPE) saia_\w+ \S", line)
            continue
        name, value = line.rsplit(" ", 1)
        samples[name] = float(value)
    assert samples['saia_requests_in_flight{service="svc-a"}'] == 1
    assert samples['saia_requests_in_flight{service="svc-b"}'] == 0
    assert samples['saia_jobs{service="svc-a",state="ready"}'] == 1
    assert samples['saia_jobs{service="svc-b",state="pending"}'] == 1
    assert samples['saia_jobs{service="svc-c",state="ready"}'] == 0
    assert samples['saia_requests_total{service="svc-a",outcome="ok"}'] == 1
    assert samples['saia_requests_total{service="svc-a",outcome="aborted"}'] == 1
    assert samples['saia_tokens_total{service="svc-a",outcome="ok",kind="output"}'] == 7
    assert samples["saia_last_tick_age_seconds"] == 12
    assert "# TYPE saia_requests_total counter" in text and "# TYPE saia_jobs gauge" in text
