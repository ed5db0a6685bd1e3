"""`saia-ctl report --reconcile` and `report --by account` against a stand-in sacct."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest

from saia_ctl.accounting.months import month_window
from saia_ctl.accounting.reconcile import ObservedJob, by_account, reconcile
from saia_ctl.sacct import SacctRecord
from saia_ctl.settings import Settings
from tests.support.accounting import MAY, Rows, cli


def _line(job_id: int, name: str, start: float, end: float, gpus: int, account: str = "saia_b") -> str:
    tres = f"billing=1,cpu=1,gres/gpu={gpus},node=1"
    return f"{job_id}|COMPLETED|0:0|{int(start)}|{int(end)}|{int(end - start)}|{tres}|{account}|debug|normal|{name}"


def _sacct(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str) -> Path:
    bin_dir = tmp_path / "slurm-bin"
    bin_dir.mkdir()
    script = bin_dir / "sacct"
    script.write_text(f'#!/bin/sh\necho "$*" > {tmp_path}/sacct-argv\n{body}')
    script.chmod(0o755)
    monkeypatch.setenv("SAIA_SLURM_BIN", str(bin_dir))
    return tmp_path / "sacct-argv"


@pytest.fixture
def month(rows: Rows, home: Path, tmp_path: Path) -> dict[str, Any]:
    prefix = Settings(home=str(home)).job_prefix
    a = rows.job("svc-a", MAY - 3600, MAY + 7200, slurm_id=501)  # crosses the month's start
    rows.job("svc-a", MAY + 100, MAY + 200, slurm_id=502)  # Slurm has no record of it
    records = "\n".join(
        [
            _line(501, f"{prefix}_{a}_svc-a", MAY - 3599, MAY + 7201, 1),
            _line(503, f"{prefix}_99_svc-b", MAY, MAY + 1000, 2),  # no row of ours
            _line(504, "somebody-elses-job", MAY, MAY + 1000, 4),  # not ours: ignored
        ]
    )
    (tmp_path / "records.txt").write_text(records + "\n")
    return {"prefix": prefix, "records": tmp_path / "records.txt"}


def test_reconcile_per_service(
    month: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    argv = _sacct(tmp_path, monkeypatch, f"cat {month['records']}\n")
    r = cli("report", "--month", "2026-05", "--tz", "UTC", "--reconcile", "--format", "csv")
    assert r.exit_code == 0, r.output
    got = list(csv.DictReader(io.StringIO(r.stdout)))
    assert got == [
        {
            "service": "svc-a",
            "jobs": "1",
            "saia_gpu_hours": "2.028",  # 7200 s inside May + 100 s of job 502
            "slurm_gpu_hours": "2.0",  # 7201 s inside May
            "difference_gpu_seconds": "99.0",
            "difference_percent": "1.375",
            "saia_only_jobs": "502",
            "slurm_only_jobs": "",
        },
        {
            "service": "svc-b",
            "jobs": "0",
            "saia_gpu_hours": "0.0",
            "slurm_gpu_hours": "0.556",
            "difference_gpu_seconds": "-2000.0",
            "difference_percent": "-100.0",
            "saia_only_jobs": "",
            "slurm_only_jobs": "503",
        },
    ]
    # One sacct call for the month, every user, in local time.
    assert argv.read_text().split()[:6] == ["-a", "-X", "-P", "-n", "--noconvert", "-S"]


def test_reconcile_without_slurmdbd_says_so(
    month: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _sacct(tmp_path, monkeypatch, "echo 'Slurm accounting storage is disabled' >&2\nexit 1\n")
    r = cli("report", "--month", "2026-05", "--tz", "UTC", "--reconcile", "--format", "json")
    assert r.exit_code == 0, r.output
    assert (
        "Warning: this cluster has no Slurm accounting (slurmdbd): saia-ctl's GPU-hours cannot be checked"
        in r.stderr
    )
    [row] = json.loads(r.stdout)
    assert row["service"] == "svc-a" and row["saia_gpu_hours"] == 2.028
    assert row["slurm_gpu_hours"] is None and row["difference_percent"] is None  # unknown, not zero


def test_by_account_sums_exactly(
    month: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _sacct(tmp_path, monkeypatch, f"cat {month['records']}\n")
    r = cli("report", "--month", "2026-05", "--tz", "UTC", "--by", "account", "--format", "json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout) == [
        {"account": "(unknown)", "service": "", "gpu_hours": 100 / 3600},
        {"account": "(unknown)", "service": "svc-a", "gpu_hours": 100 / 3600},
        {"account": "saia_b", "service": "", "gpu_hours": 2.0},
        {"account": "saia_b", "service": "svc-a", "gpu_hours": 2.0},
    ]
    r = cli("report", "--by", "account", "--format", "html")
    assert r.exit_code == 1 and "table, json or csv" in r.stderr


def test_account_totals_are_the_sum_of_their_services() -> None:
    window = month_window("2026-05", "UTC")
    jobs = [
        ObservedJob(i, f"svc-{i % 3}", 100 + i, 1 + i % 2, MAY + i * 1000.3, MAY + i * 1000.3 + 777.7, "acc")
        for i in range(1, 30)
    ]
    rows = by_account(jobs, {}, window, MAY + 10**6)
    total = rows[0]["gpu_hours"]
    assert rows[0]["service"] == "" and total == pytest.approx(sum(r["gpu_hours"] for r in rows[1:]), abs=0)


def test_a_running_job_counts_until_now_on_both_sides() -> None:
    window = month_window("2026-05", "UTC")
    job = ObservedJob(1, "svc", 7, 2, MAY + 10, None, None)
    rec = SacctRecord(7, "RUNNING", "0:0", MAY + 10, None, 0, 2, "a", "p", "q", "t_1_svc")
    [r] = reconcile([job], [rec], window, MAY + 110, "t").values()
    assert (r.saia_gpu_seconds, r.slurm_gpu_seconds, r.difference_percent) == (200, 200, 0)


def test_a_job_with_slurms_record_is_billed_from_it(
    rows: Rows, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The report and its reconciliation bill Slurm's Start..End once the record arrived: a job
    the ticks saw end late, and one too short for any tick to see running."""
    prefix = Settings(home=str(home)).job_prefix
    seen = rows.job("svc-a", MAY + 100.6, MAY + 404.2, slurm_id=601, gpus=2)  # ticks: start late, end late
    rows.slurm_record(seen, MAY + 100, MAY + 362)
    unseen = rows.job("svc-a", None, MAY + 500, slurm_id=602, gpus=0)  # never seen running: no GPUs
    rows.slurm_record(unseen, MAY + 450, MAY + 458, gpus=1)
    # A cluster whose accounting counts no GPUs (no AccountingStorageTRES=gres/gpu): the ticks' count.
    untracked = rows.job("svc-b", MAY + 1000, MAY + 1100, slurm_id=603, gpus=4)
    rows.slurm_record(untracked, MAY + 1000, MAY + 1090, gpus=0)
    body = "\n".join(
        [
            _line(601, f"{prefix}_{seen}_svc-a", MAY + 100, MAY + 362, 2),
            _line(602, f"{prefix}_{unseen}_svc-a", MAY + 450, MAY + 458, 1),
        ]
    )
    (tmp_path / "records.txt").write_text(body + "\n")
    _sacct(tmp_path, monkeypatch, f"cat {tmp_path / 'records.txt'}\n")
    r = cli("report", "--month", "2026-05", "--tz", "UTC", "--reconcile", "--format", "json")
    assert r.exit_code == 0, r.output
    [row, _b] = json.loads(r.stdout)
    assert (row["jobs"], row["difference_gpu_seconds"], row["saia_only_jobs"]) == (2, 0.0, "")
    r = cli(
        "report", "--month", "2026-05", "--tz", "UTC", "--by", "service", "--format", "json", "--no-files"
    )
    assert r.exit_code == 0, r.output
    svc, b = json.loads(r.stdout)["services"]
    assert svc["gpu_hours"] == round((262 * 2 + 8) / 3600, 3) and svc["jobs"] == 2
    assert b["gpu_hours"] == round(90 * 4 / 3600, 3)
