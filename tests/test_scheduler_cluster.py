"""The tick against the real single-node Slurm (``-m cluster``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from saia_ctl.db import engine_for
from saia_ctl.scheduler.names import name_prefix
from saia_ctl.scheduler.tick import TickResult, make_slurm, run_tick
from saia_ctl.settings import Settings
from saia_ctl.slurm import SlurmClient, SlurmError
from tests.support.fixtures import service_config
from tests.support.paths import REPO

pytestmark = pytest.mark.cluster
BACKEND = REPO / "tests" / "data" / "scheduler_backend.sbatch"


@pytest.fixture
def real(cluster: Any, home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """Settings, engine and the real Slurm client of a test home; cancels its jobs at the end."""
    monkeypatch.setenv("SAIA_TEST_PYTHON", sys.executable)
    monkeypatch.setenv("SAIA_TEST_BACKEND", str(REPO / "tests" / "support" / "backend.py"))  # for copies
    monkeypatch.setenv("SLURM_CONF", cluster.slurm_conf)
    settings = Settings(home=str(home))
    slurm = make_slurm(settings)
    ctx = {"settings": settings, "engine": engine_for(settings), "slurm": slurm, "home": home}
    try:
        yield ctx
    finally:
        cancel_all(slurm, settings)


def cancel_all(slurm: SlurmClient, settings: Settings) -> None:
    for _ in range(3):
        try:
            for j in slurm.queue(name_prefix(settings.job_prefix)):
                if not j.is_finished:
                    slurm.cancel(j.job_id)
            return
        except SlurmError:
            time.sleep(2)


def rows(engine: Any, live_only: bool = False) -> list[dict[str, Any]]:
    where = " WHERE ended_at IS NULL" if live_only else ""
    with engine.connect() as c:
        out = [dict(r) for r in c.execute(text(f"SELECT * FROM jobs{where} ORDER BY id")).mappings()]
        c.rollback()
    return out


def ticker(real: dict[str, Any], **kw: Any) -> Callable[[], TickResult]:
    settings = kw.pop("settings", real["settings"])
    return lambda: run_tick(real["engine"], settings, real["slurm"], **kw)


def wait_for(
    pred: Callable[[], bool], tick: Callable[[], TickResult], seconds: float, every: float = 1.0
) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        tick()
        if pred():
            return True
        time.sleep(every)
    return False


def our_slurm_jobs(real: dict[str, Any]) -> list[Any]:
    return [j for j in real["slurm"].queue(name_prefix(real["settings"].job_prefix)) if not j.is_finished]


def test_min_one_comes_up_and_hand_scancel_is_replaced(real, import_services) -> None:  # type: ignore[no-untyped-def]
    import_services(service_config("svc", sbatch=str(BACKEND)))
    engine, tick = real["engine"], ticker(real, watch=False)
    # Generous: a job submitted right after another test's cancel can wait for the node.
    ready = wait_for(lambda: any(r["state"] == "ready" for r in rows(engine)), tick, 120)
    assert ready, (rows(engine), real["slurm"].queue(""))
    [job] = rows(engine, live_only=True)
    assert job["node"] and job["walltime_limit"] == 600 and job["started_at"]
    subprocess.run(["scancel", str(job["slurm_job_id"])], check=True, timeout=30)
    time.sleep(0.5)
    tick()
    tick()
    all_rows = rows(engine)
    assert all_rows[0]["state"] == "ended" and all_rows[0]["end_reason"] in ("cancelled", "gone")
    live = rows(engine, live_only=True)
    assert len(live) == 1 and live[0]["id"] != job["id"]
    assert [j.job_id for j in our_slurm_jobs(real)] == [live[0]["slurm_job_id"]]


def test_rotation_under_load_loses_no_request(real, import_services, tmp_path) -> None:  # type: ignore[no-untyped-def]
    script = tmp_path / "short.sbatch"
    script.write_text(BACKEND.read_text().replace("#SBATCH --time=00:10:00", "#SBATCH --time=00:02:00"))
    import_services(
        service_config("svc", sbatch=str(script), job_expiry_time="1:00", maximum_number_instances=1)
    )
    engine, tick = real["engine"], ticker(real, watch=False)
    # Generous: a job submitted right after another test's cancel can wait for the node.
    ready = wait_for(lambda: any(r["state"] == "ready" for r in rows(engine)), tick, 120)
    assert ready, (rows(engine), real["slurm"].queue(""))
    first = rows(engine)[0]
    stats = {"ok": 0, "failed": 0, "errors": [], "jobs": set()}
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            with engine.connect() as c:
                r = c.execute(
                    text(
                        "SELECT id, node, port, secret FROM jobs WHERE state = 'ready' ORDER BY ready_at DESC"
                    )
                ).first()
                c.rollback()
            if r is not None:
                req = urllib.request.Request(
                    f"http://{r[1]}:{r[2]}/v1/chat/completions",
                    data=b'{"model": "svc", "messages": []}',
                    headers={"Authorization": f"Bearer {r[3]}", "content-type": "application/json"},
                )
                try:
                    with urllib.request.urlopen(req, timeout=5) as resp:
                        json.loads(resp.read())
                    stats["ok"] += 1
                    stats["jobs"].add(r[0])
                except Exception as e:
                    stats["failed"] += 1
                    stats["errors"].append(f"job {r[0]}: {e}")
            stop.wait(0.2)

    t = threading.Thread(target=client, daemon=True)
    t.start()
    try:
        rotated = wait_for(
            lambda: rows(engine)[0]["state"] == "ended" and len(rows(engine, live_only=True)) == 1,
            tick,
            110,
            every=2.0,
        )
        time.sleep(2)
    finally:
        stop.set()
        t.join(10)
    all_rows = rows(engine)
    assert rotated, all_rows
    old, new = all_rows[0], all_rows[1]
    assert old["id"] == first["id"] and old["end_reason"] == "rotated"
    assert new["replaces_job_id"] == old["id"] and new["state"] == "ready"
    assert old["ended_at"] < old["started_at"] + 120  # cancelled before its walltime ended
    assert stats["failed"] == 0, stats["errors"][:5]
    assert stats["ok"] > 100 and stats["jobs"] >= {old["id"], new["id"]}


def _killed_tick(home: Path, where: str) -> subprocess.CompletedProcess[str]:
    """Run a tick in a child that SIGKILLs itself at ``where``."""
    code = f"""
import os, signal, sys
sys.path.insert(0, {str(REPO)!r})
from saia_ctl.db import engine_for
from saia_ctl.settings import Settings
from saia_ctl.scheduler import apply, tick
settings = Settings()
slurm = tick.make_slurm(settings)
if {where!r} == "after-submit":
    real_submit = slurm.submit
    def submit(*a, **kw):
        real_submit(*a, **kw)
        os.kill(os.getpid(), signal.SIGKILL)
    slurm.submit = submit
else:
    real_insert = apply.insert_job
    def insert_job(*a, **kw):
        real_insert(*a, **kw)
        os.kill(os.getpid(), signal.SIGKILL)
    apply.insert_job = insert_job
tick.run_tick(engine_for(settings), settings, slurm, watch=False)
"""
    env = {**os.environ, "SAIA_HOME": str(home), "SAIA_LEASE_TTL": "2"}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("where", ["after-submit", "mid-transaction"])
def test_sigkilled_tick_is_repaired(real, import_services, where) -> None:  # type: ignore[no-untyped-def]
    import_services(service_config("svc", sbatch=str(BACKEND)))
    proc = _killed_tick(real["home"], where)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    engine = real["engine"]
    if where == "after-submit":
        [row] = rows(engine)
        assert row["state"] == "submitting" and row["slurm_job_id"] is None
        assert len(our_slurm_jobs(real)) == 1
    else:
        assert rows(engine) == [] and our_slurm_jobs(real) == []  # rolled back, nothing submitted
    time.sleep(2.2)  # the killed tick's lease expires
    r = run_tick(engine, real["settings"], real["slurm"], watch=False)
    assert r.ran, r.text()
    live = rows(engine, live_only=True)
    slurm_jobs = our_slurm_jobs(real)
    assert len(live) == 1 and len(slurm_jobs) == 1, (live, slurm_jobs)
    assert live[0]["slurm_job_id"] == slurm_jobs[0].job_id and live[0]["name"] == slurm_jobs[0].name


def test_detection_delay_from_zero(real, import_services, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A request for a scaled-to-zero service: queue wait, service start, our detection delay (< 1 s)."""
    monkeypatch.setenv("SAIA_TEST_LISTEN_DIR", str(tmp_path))
    monkeypatch.setenv("SAIA_TEST_START_DELAY", "2")
    import_services(service_config("svc", sbatch=str(BACKEND), minimum_number_instances=0))
    engine = real["engine"]
    t0 = time.time()
    with engine.begin() as c:
        c.execute(
            text(
                "INSERT INTO requests (inference_id, user_id, service_id, method, path, started_at, bytes_in, "
                "bytes_out, handler_host, handler_pid) VALUES ('dd-1', 'u', 'svc', 'POST', '/v1/x', :t, 0, 0, "
                "'elsewhere', 1)"
            ),
            {"t": t0},
        )
        c.execute(text("UPDATE service_states SET demand_at = :t WHERE service_id = 'svc'"), {"t": t0})
    settings = Settings(home=str(real["home"]), environ={**os.environ, "SAIA_TICK_TIMEOUT": "40"})
    r = run_tick(engine, settings, real["slurm"])
    [job] = rows(engine)
    assert job["state"] == "ready", r.text()
    listen = float((tmp_path / f"{job['slurm_job_id']}.listen").read_text())
    queue_wait = job["started_at"] - job["submitted_at"]
    start = listen - job["started_at"]
    detect = job["ready_at"] - listen
    print(
        f"\nfrom request: queue wait ~{queue_wait:.2f}s, service start {start:.2f}s, detection {detect:.2f}s"
    )
    assert detect >= 0  # ready only once it listened (bench/tick.py times the detection)


def _slurmctld(cluster: Any, action: str) -> None:
    pid_file = cluster.dir / "slurmctld.pid"
    if action == "stop":
        os.kill(int(pid_file.read_text().strip()), signal.SIGTERM)
        for _ in range(100):
            if subprocess.run(["pgrep", "-F", str(pid_file)], capture_output=True).returncode != 0:
                break
            time.sleep(0.1)
    else:
        subprocess.run(
            ["slurmctld"], env={**os.environ, "SLURM_CONF": cluster.slurm_conf}, check=True, timeout=30
        )


def test_slurmctld_down_ticks_fail_cleanly_then_reconcile(real, import_services, cluster) -> None:  # type: ignore[no-untyped-def]
    """Run last: it stops the shared controller for ~10-20 s (and always restarts it)."""
    import_services(service_config("svc", sbatch=str(BACKEND), minimum_number_instances=1))
    engine = real["engine"]
    settings = Settings(home=str(real["home"]), environ={**os.environ, "SAIA_SLURM_TIMEOUT": "5"})
    slurm = make_slurm(settings)
    tick = lambda: run_tick(engine, settings, slurm, watch=False)  # noqa: E731
    assert wait_for(lambda: any(r["state"] == "ready" for r in rows(engine)), tick, 60)
    before = rows(engine)
    _slurmctld(cluster, "stop")
    try:
        for _ in range(2):
            r = tick()
            assert r.ran and r.error and "no job changed" in r.error, r.text()
            assert rows(engine) == before
    finally:
        _slurmctld(cluster, "start")
    for _ in range(60):
        try:
            slurm.queue("x")
            break
        except SlurmError:
            time.sleep(0.5)
    r = tick()
    assert r.error is None, r.text()
    after = rows(engine)
    assert [(x["id"], x["slurm_job_id"]) for x in after] == [(x["id"], x["slurm_job_id"]) for x in before]
    assert after[0]["state"] == "ready"
    assert [j.job_id for j in our_slurm_jobs(real)] == [before[0]["slurm_job_id"]]
