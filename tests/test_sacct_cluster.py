"""Slurm's record as the system of record, on the real cluster with slurmdbd (``-m cluster``).

Skipped, with the reason, on a cluster without Slurm accounting (the dev cluster
brought up without slurmdbd or MariaDB installed, or DEV_SLURMDBD=0).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from saia_ctl.accounting.months import month_window
from saia_ctl.accounting.reconcile import observed_jobs, read_slurm_side, reconcile
from saia_ctl.accounting.zones import month_of
from saia_ctl.db import engine_for
from saia_ctl.sacct import ENV as SACCT_ENV
from saia_ctl.sacct import SacctRecord, parse_sacct, sacct_argv
from saia_ctl.scheduler.names import name_prefix
from saia_ctl.scheduler.plan import end_reason_of_state
from saia_ctl.scheduler.tick import make_slurm, run_tick
from saia_ctl.settings import Settings
from saia_ctl.slurm import SlurmError
from tests.support.fixtures import service_config

pytestmark = pytest.mark.cluster

# What each service's batch script does, and the Slurm state it must end in.
SCRIPTS = {
    "ok": ("#SBATCH --gres=gpu:1\n", "sleep 3\nexit 0\n"),
    "fail": ("", "sleep 2\nexit 3\n"),
    "cancel": ("", "sleep 300\n"),
    "timeout": ("#SBATCH --time=1\n#SBATCH --gres=gpu:2\n", "sleep 300\n"),
}


def _slurm_env(cluster: Any) -> dict[str, str]:
    return {**os.environ, "SLURM_CONF": cluster.slurm_conf, **SACCT_ENV}


def slurm_config(cluster: Any, key: str) -> str:
    """One value of ``scontrol show config`` ("" if absent)."""
    out = subprocess.run(
        ["scontrol", "show", "config"], env=_slurm_env(cluster), capture_output=True, text=True, timeout=30
    ).stdout
    for line in out.splitlines():
        name, sep, value = line.partition("=")
        if sep and name.strip() == key:
            return value.strip()
    return ""


def has_slurmdbd(cluster: Any) -> bool:
    return slurm_config(cluster, "AccountingStorageType") == "accounting_storage/slurmdbd"


def enforces_memory_with_cgroup(cluster: Any) -> bool:
    """Slurm names a job OUT_OF_MEMORY only when task/cgroup saw its memory cgroup's OOM kill."""
    return "task/cgroup" in slurm_config(cluster, "TaskPlugin").split(",")


def sacct(cluster: Any, ids: list[int]) -> dict[int, SacctRecord]:
    proc = subprocess.run(
        sacct_argv("sacct", ids), env=_slurm_env(cluster), capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0, proc.stderr
    return parse_sacct(proc.stdout)


@pytest.fixture
def real(cluster: Any, home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    if not has_slurmdbd(cluster):
        pytest.skip("the test cluster has no Slurm accounting (slurmdbd): nothing to compare with")
    monkeypatch.setenv("SLURM_CONF", cluster.slurm_conf)
    settings = Settings(home=str(home))
    slurm = make_slurm(settings)
    ctx = {"settings": settings, "engine": engine_for(settings), "slurm": slurm}
    try:
        yield ctx
    finally:
        for _ in range(3):
            try:
                for j in slurm.queue(name_prefix(settings.job_prefix)):
                    if not j.is_finished:
                        slurm.cancel(j.job_id)
                break
            except SlurmError:
                time.sleep(2)


def first_jobs(engine: Any) -> dict[str, dict[str, Any]]:
    with engine.connect() as c:
        rows = c.execute(text("SELECT * FROM jobs ORDER BY id")).mappings().all()
        c.rollback()
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        out.setdefault(r["service_id"], dict(r))
    return out


@pytest.mark.slow
def test_end_reasons_and_times_equal_slurms(
    real: dict[str, Any], cluster: Any, import_services: Any, tmp_path: Path
) -> None:
    services = []
    for sid, (head, body) in SCRIPTS.items():
        script = tmp_path / f"{sid}.sbatch"
        script.write_text(f"#!/bin/bash\n{head}{body}")
        extra = {"account": "saia_b"} if sid == "ok" else {}
        services.append(
            service_config(
                sid, sbatch=str(script), maximum_number_instances=1, job_expiry_time="5:00", **extra
            )
        )
    import_services(*services)
    engine, slurm = real["engine"], real["slurm"]
    prefix = name_prefix(real["settings"].job_prefix)

    def tick() -> None:
        r = run_tick(engine, real["settings"], slurm, watch=False)
        assert r.error is None, r.text()
        assert "as observed" not in r.summary, r.summary  # sacct answered every time

    cancelled = False
    deadline = time.monotonic() + 200
    while time.monotonic() < deadline:
        # Tick only once slurmdbd holds the final record of every job squeue lists as
        # finished: its end record arrives a moment after squeue shows the end.
        finished = [j.job_id for j in slurm.queue(prefix) if j.is_finished]
        if finished:
            for _ in range(20):
                recs = sacct(cluster, finished)
                if all(i in recs and recs[i].is_final for i in finished):
                    break
                time.sleep(0.5)
        tick()
        jobs = first_jobs(engine)
        cancel = jobs.get("cancel")
        if not cancelled and cancel and cancel["state"] in ("starting", "ready"):
            subprocess.run(["scancel", str(cancel["slurm_job_id"])], env=_slurm_env(cluster), check=True)
            cancelled = True
        if len(jobs) == len(SCRIPTS) and all(j["ended_at"] is not None for j in jobs.values()):
            break
        time.sleep(1)
    jobs = first_jobs(engine)
    assert all(j["ended_at"] is not None for j in jobs.values()), {s: j["state"] for s, j in jobs.items()}
    records = sacct(cluster, [int(j["slurm_job_id"]) for j in jobs.values()])
    expected = {"ok": "COMPLETED", "fail": "FAILED", "cancel": "CANCELLED", "timeout": "TIMEOUT"}
    for sid, job in jobs.items():
        rec = records[int(job["slurm_job_id"])]
        assert rec.state == expected[sid], (sid, rec)
        assert job["end_reason"] == end_reason_of_state(rec.state), (sid, job["end_reason"], rec)
        assert (job["slurm_state"], job["slurm_exit_code"]) == (rec.state, rec.exit_code), sid
        assert (job["slurm_started_at"], job["slurm_ended_at"]) == (rec.start, rec.end), sid
        assert rec.start is not None and rec.end is not None
        # What the tick observed: the start is squeue's StartTime (Slurm's own), the end squeue's
        # EndTime when a tick saw the job finished there, else the first tick after it ended.
        assert job["started_at"] is not None and abs(job["started_at"] - rec.start) <= 2, (sid, job, rec)
        assert abs(job["ended_at"] - rec.end) <= 2, (sid, job, rec)
    assert (jobs["ok"]["slurm_gpus"], jobs["timeout"]["slurm_gpus"]) == (1, 2)
    # Reconciliation over the month: every job on both sides; billed from Slurm's record
    # (every job has one), saia-ctl's GPU time is Slurm's.
    now = time.time()
    window = month_window(month_of(now, "UTC"), "UTC")
    with real["engine"].connect() as c:
        observed = observed_jobs(Session(bind=c), window)
    side = read_slurm_side(slurm, window)
    assert side.checked, side.note
    # The first job of each service (replacements may start between the last tick and now).
    first = {int(j["slurm_job_id"]) for j in jobs.values()}
    observed = [o for o in observed if o.slurm_job_id in first]
    records = [r for r in side.records if r.job_id in first]
    result = reconcile(observed, records, window, now, real["settings"].job_prefix)
    assert sum(r.jobs for r in result.values()) == len(SCRIPTS)
    for sid, r in result.items():
        assert r.saia_only == [] and r.slurm_only == [], (sid, r)
    total_saia = sum(r.saia_gpu_seconds for r in result.values())
    total_slurm = sum(r.slurm_gpu_seconds for r in result.values())
    assert total_slurm > 60  # the timed-out job's 2 GPUs for a minute or more
    for sid, r in result.items():
        assert r.difference_percent is None or abs(r.difference_percent) < 0.1, (sid, r)
    print(f"reconciled: saia-ctl {total_saia:.1f} GPU-s, Slurm {total_slurm:.1f} GPU-s")
    assert jobs["fail"]["slurm_exit_code"] == "3:0"
    assert jobs["ok"]["slurm_account"] == "saia_b"  # the service's account key reached sbatch
    assert jobs["fail"]["slurm_account"] == "saia_a"  # the user's default account


@pytest.mark.slow
def test_a_job_above_its_memory_ends_out_of_memory(
    real: dict[str, Any], cluster: Any, import_services: Any, tmp_path: Path
) -> None:
    """A job that exceeds --mem: Slurm's state OUT_OF_MEMORY (0:125), and saia-ctl names it so."""
    if not enforces_memory_with_cgroup(cluster):
        pytest.skip(
            f"the test cluster has TaskPlugin={slurm_config(cluster, 'TaskPlugin')}, not task/cgroup: Slurm "
            "records a job above --mem as FAILED (killed by jobacct_gather), never OUT_OF_MEMORY "
            "(dev-cluster.sh enables task/cgroup where /sys/fs/cgroup/memory is a writable cgroup v1 hierarchy)"
        )
    script = tmp_path / "oom.sbatch"
    script.write_text(
        "#!/bin/bash\n#SBATCH --mem=20M\n"
        f'{sys.executable} -c "b = b\\"x\\" * (300 * 1024 * 1024); import time; time.sleep(60)"\n'
    )
    import_services(
        service_config("oom", sbatch=str(script), maximum_number_instances=1, job_expiry_time="5:00")
    )
    engine, slurm = real["engine"], real["slurm"]
    deadline = time.monotonic() + 120
    job: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        r = run_tick(engine, real["settings"], slurm, watch=False)
        assert r.error is None, r.text()
        job = first_jobs(engine).get("oom")
        if job is not None and job["slurm_state"] is not None:
            break
        time.sleep(1)
    assert job is not None and job["slurm_state"] is not None, job
    [rec] = sacct(cluster, [int(job["slurm_job_id"])]).values()
    assert (rec.state, rec.exit_code) == ("OUT_OF_MEMORY", "0:125"), rec
    assert (job["slurm_state"], job["slurm_exit_code"]) == ("OUT_OF_MEMORY", "0:125")
    assert job["end_reason"] == "out-of-memory"
