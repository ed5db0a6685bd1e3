"""Whole ticks against the database and FakeSlurm, with a controllable clock and fake probes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from saia_ctl.db import write_session
from saia_ctl.sacct import SacctRecord
from saia_ctl.scheduler import TickResult, run_tick
from saia_ctl.scheduler.lease import begin_tick
from saia_ctl.scheduler.names import job_name
from saia_ctl.scheduler.plan import DRAIN_GRACE
from saia_ctl.scheduler.probes import ProbeTarget
from saia_ctl.scheduler.views import ProbeResult
from saia_ctl.settings import Settings
from saia_ctl.slurm import SlurmJob
from saia_ctl.slurm_fake import FakeSlurm
from tests.support.fixtures import Clock, service_config
from tests.support.paths import REPO

SBATCH = str(REPO / "tests" / "data" / "scheduler_backend.sbatch")
HOST = "test-host"


def cfg(sid: str = "svc", **kw: Any) -> dict[str, Any]:
    return service_config(sid, sbatch=SBATCH, **kw)


class Probes:
    """Fake backends: every job answers 200 unless told otherwise (by jobs.id)."""

    def __init__(self) -> None:
        self.status: dict[int, int | None] = {}
        self.default: int | None = 200
        self.calls: list[ProbeTarget] = []

    def __call__(self, targets: Sequence[ProbeTarget], timeout: float) -> dict[int, ProbeResult]:
        out = {}
        for t in targets:
            self.calls.append(t)
            status = self.status.get(t.job_id, self.default)
            if status is None:
                out[t.job_id] = ProbeResult(False, f"GET {t.path}: connection refused")
            else:
                ok = status < 500 if t.path == "/" else status in (200, 404)
                out[t.job_id] = ProbeResult(ok, f"GET {t.path}: {status}")
        return out


@pytest.fixture
def fake(clock: Clock) -> FakeSlurm:
    return FakeSlurm(clock, time_limit=3600)


@pytest.fixture
def probes() -> Probes:
    return Probes()


@pytest.fixture
def tick(
    engine: Any, settings: Settings, fake: FakeSlurm, clock: Clock, probes: Probes
) -> Callable[..., TickResult]:
    def do(**kw: Any) -> TickResult:
        kw.setdefault("settings", settings)
        s = kw.pop("settings")
        return run_tick(
            engine, s, kw.pop("slurm", fake), clock, prober=probes, watch=False, hostname=HOST, **kw
        )

    return do


def jobs(engine: Any, live_only: bool = False) -> list[dict[str, Any]]:
    where = " WHERE ended_at IS NULL" if live_only else ""
    with engine.connect() as c:
        rows = c.execute(text(f"SELECT * FROM jobs{where} ORDER BY id")).mappings().all()
        c.rollback()
    return [dict(r) for r in rows]


def sql(engine: Any, stmt: str, **params: Any) -> Any:
    with write_session(engine) as s:
        return s.execute(text(stmt), params)


def scalar(engine: Any, stmt: str, **params: Any) -> Any:
    with engine.connect() as c:
        v = c.execute(text(stmt), params).scalar()
        c.rollback()
    return v


def add_request(
    engine: Any,
    clock: Clock,
    service: str = "svc",
    job_id: int | None = None,
    host: str = HOST,
    pid: int | None = None,
    age: float = 0.0,
) -> int:
    with write_session(engine) as s:
        r = s.connection().execute(
            text(
                "INSERT INTO requests (inference_id, user_id, service_id, job_id, method, path, started_at, "
                "bytes_in, bytes_out, handler_host, handler_pid) VALUES (:iid, 'u@x', :sid, :jid, 'POST', "
                "'/v1/chat/completions', :at, 0, 0, :host, :pid)"
            ),
            {
                "iid": os.urandom(8).hex(),
                "sid": service,
                "jid": job_id,
                "at": clock() - age,
                "host": host,
                "pid": os.getpid() if pid is None else pid,
            },
        )
        return int(r.lastrowid)


def end_request(engine: Any, clock: Clock, rid: int) -> None:
    sql(
        engine,
        "UPDATE requests SET ended_at = :t, outcome = 'ok', status = 200 WHERE id = :id",
        t=clock(),
        id=rid,
    )


def start_all(fake: FakeSlurm) -> None:
    for j in fake.live():
        if j.state == "PENDING":
            fake.start(j.job_id)


# --- scale up, readiness, health


def test_min_one_submits_once_with_name_port_secret(import_services, tick, engine, fake, settings) -> None:  # type: ignore[no-untyped-def]
    import_services(cfg())
    r = tick()
    assert r.ran and r.error is None, r.text()
    [row] = jobs(engine)
    assert row["state"] == "pending" and row["slurm_job_id"] is not None
    assert row["name"] == job_name(settings.job_prefix, row["id"], "svc")
    lo, _hi = settings.port_range
    assert row["port"] == lo
    [fj] = fake.jobs.values()
    assert fj.job.name == row["name"] and fj.port == row["port"] and fj.script == SBATCH
    assert fj.env == {"SAIA_API_KEY": row["secret"], "SAIA_PORT": str(lo), "SAIA_SBATCH": SBATCH}
    assert fj.args == ["--no-requeue"]  # a job lost with its node ends and is replaced at once
    assert len(row["secret"]) >= 40
    assert "svc: target 1" in r.summary and "submitting 1" in r.summary
    # Pending counts toward the target: a second tick submits nothing.
    tick()
    assert len(jobs(engine)) == 1 and fake.calls["submit"] == 1


def test_slurm_keys_of_a_service_are_passed_to_sbatch(import_services, tick, fake) -> None:  # type: ignore[no-untyped-def]
    import_services(cfg(account="saia_b", partition="debug", qos="normal", reservation="maint"))
    assert tick().error is None
    [fj] = fake.jobs.values()
    assert fj.args == [
        "--no-requeue",
        "--account=saia_b",
        "--partition=debug",
        "--qos=normal",
        "--reservation=maint",
    ]


def test_job_ready_when_get_root_answers(import_services, tick, engine, fake, clock, probes) -> None:  # type: ignore[no-untyped-def]
    import_services(cfg())
    tick()
    [row] = jobs(engine)
    fake.start(row["slurm_job_id"], node="gpu7")
    probes.status[row["id"]] = None  # still loading
    clock.advance(30)
    tick()
    [row] = jobs(engine)
    assert row["state"] == "starting" and row["node"] == "gpu7"
    assert row["started_at"] == pytest.approx(clock() - 30, abs=1)
    assert probes.calls[-1].path == "/" and probes.calls[-1].host == "gpu7"
    probes.status[row["id"]] = 404  # any status below 500 means it answers
    clock.advance(10)
    tick()
    [row] = jobs(engine)
    assert row["state"] == "ready" and row["ready_at"] == pytest.approx(clock())


def test_ready_timeout_cancels_and_replaces(import_services, tick, engine, fake, clock, probes) -> None:  # type: ignore[no-untyped-def]
    import_services(cfg(ready_timeout="2:00"))
    tick()
    first = jobs(engine)[0]
    fake.start(first["slurm_job_id"])
    probes.default = None
    clock.advance(60)
    tick()
    assert jobs(engine)[0]["state"] == "starting"
    clock.advance(61)
    tick()
    rows = jobs(engine)
    assert rows[0]["state"] == "ended" and rows[0]["end_reason"] == "ready-timeout"
    assert fake.jobs[first["slurm_job_id"]].job.state == "CANCELLED"
    assert [r["state"] for r in rows[1:]] == ["pending"]


def test_unhealthy_job_out_of_routing_cancelled_replaced(
    import_services, tick, engine, fake, clock, probes
) -> None:  # type: ignore[no-untyped-def]
    import_services(cfg(health_failures=2))
    tick()
    start_all(fake)
    tick()
    ready = jobs(engine)[0]
    assert ready["state"] == "ready"
    probes.status[ready["id"]] = 404  # no /health route: healthy
    tick()
    assert jobs(engine)[0]["health_failures"] == 0
    probes.status[ready["id"]] = 503
    tick()
    assert jobs(engine)[0]["state"] == "ready" and jobs(engine)[0]["health_failures"] == 1
    tick()
    rows = jobs(engine)
    assert rows[0]["state"] == "ended" and rows[0]["end_reason"] == "unhealthy"
    assert fake.jobs[ready["slurm_job_id"]].job.state == "CANCELLED"
    assert [r["state"] for r in rows[1:]] == ["pending"]


def test_load_scales_up_and_down_with_cooldown(import_services, tick, engine, fake, clock) -> None:  # type: ignore[no-untyped-def]
    import_services(cfg(maximum_number_instances=3, scale_down_cooldown="2:00"))
    tick()
    start_all(fake)
    tick()
    first = jobs(engine)[0]["id"]
    rids = [add_request(engine, clock, job_id=first) for _ in range(3)]
    # The average needs a few samples to reach 3 in flight.
    for _ in range(30):
        clock.advance(10)
        tick()
        start_all(fake)
    live = jobs(engine, live_only=True)
    assert len(live) == 3 and all(j["state"] == "ready" for j in live[:2])
    for rid in rids:
        end_request(engine, clock, rid)
    # Load gone: the average decays, then the cool-down must pass before one job is drained.
    drained_at = None
    for _ in range(60):
        clock.advance(10)
        tick()
        states = [j["state"] for j in jobs(engine, live_only=True)]
        if "draining" in states or len(states) < 3:
            drained_at = clock()
            break
    assert drained_at is not None
    lower_since = scalar(engine, "SELECT lower_since FROM service_states WHERE service_id = 'svc'")
    assert lower_since is None or drained_at - lower_since >= 120
    # Keep ticking: it ends at the minimum (1), never below.
    for _ in range(80):
        clock.advance(10)
        tick()
    live = jobs(engine, live_only=True)
    assert [j["state"] for j in live] == ["ready"]
    ended = [j for j in jobs(engine) if j["state"] == "ended"]
    assert len(ended) == 2 and {j["end_reason"] for j in ended} == {"scale-down"}
    assert len(fake.live()) == 1


def test_draining_job_waits_for_its_requests(import_services, tick, engine, fake, clock) -> None:  # type: ignore[no-untyped-def]
    import_services(cfg())
    tick()
    start_all(fake)
    tick()
    job = jobs(engine)[0]
    assert job["state"] == "ready"
    rid = add_request(engine, clock, job_id=job["id"])
    import_services(cfg("other"))  # "svc" dropped from config.json: drained, not cut
    clock.advance(10)
    tick()
    assert jobs(engine)[0]["state"] == "draining"
    clock.advance(DRAIN_GRACE + 1)
    tick()
    assert jobs(engine)[0]["state"] == "draining"  # its request is still running
    end_request(engine, clock, rid)
    clock.advance(1)
    tick()
    assert jobs(engine)[0]["state"] == "ended" and jobs(engine)[0]["end_reason"] == "disabled"
    assert [j for j in fake.live() if j.name.endswith("_svc")] == []


def test_idle_drained_job_revived_when_requests_come_back(import_services, tick, engine, fake, clock) -> None:  # type: ignore[no-untyped-def]
    import_services(cfg(minimum_number_instances=0, idle_timeout="1:00"))
    sql(engine, "UPDATE service_states SET demand_at = :t", t=clock())
    tick()
    start_all(fake)
    tick()
    job = jobs(engine)[0]
    clock.advance(61)
    tick()  # idle for idle_timeout: drained
    assert jobs(engine)[0]["state"] == "draining"
    add_request(engine, clock, job_id=job["id"])  # it picked the job just before the drain
    clock.advance(1)
    tick()
    rows = jobs(engine)
    assert len(rows) == 1 and rows[0]["state"] == "ready" and rows[0]["end_reason"] is None
    assert fake.calls["submit"] == 1


def test_scale_to_zero_after_idle_then_on_demand(import_services, tick, engine, fake, clock) -> None:  # type: ignore[no-untyped-def]
    import_services(cfg(minimum_number_instances=0, maximum_number_instances=2, idle_timeout="5:00"))
    tick()
    assert jobs(engine) == []  # nothing wanted
    sql(engine, "UPDATE service_states SET demand_at = :t", t=clock())
    r = tick()
    assert len(jobs(engine)) == 1 and "on demand" in r.summary
    tick()
    tick()
    assert len(jobs(engine)) == 1 and fake.calls["submit"] == 1  # one start per demand
    start_all(fake)
    tick()
    for _ in range(28):
        clock.advance(10)
        tick()
    assert jobs(engine, live_only=True)[0]["state"] == "ready"  # 290 s idle < 300
    clock.advance(20)
    tick()
    clock.advance(DRAIN_GRACE + 1)
    tick()
    assert jobs(engine, live_only=True) == [] and fake.live() == []
    # A job that failed does not come back without a new demand...
    clock.advance(10)
    tick()
    assert len(jobs(engine)) == 1
    # ...but a request waiting for a backend asks for one (never above max).
    add_request(engine, clock, job_id=None)
    sql(engine, "UPDATE service_states SET demand_at = :t", t=clock())
    tick()
    tick()
    assert len(jobs(engine, live_only=True)) == 1


def test_max_zero_never_starts(import_services, tick, engine, clock) -> None:  # type: ignore[no-untyped-def]
    import_services(cfg(minimum_number_instances=0, maximum_number_instances=0))
    add_request(engine, clock, job_id=None)
    sql(engine, "UPDATE service_states SET demand_at = :t", t=clock())
    tick()
    assert jobs(engine) == []


def test_disabled_service_drains_everything(import_services, tick, engine, fake, clock) -> None:  # type: ignore[no-untyped-def]
    import_services(cfg(minimum_number_instances=2))
    tick()
    fake.start(min(fake.jobs))
    tick()
    import_services(cfg("other"))  # "svc" dropped from config.json: disabled
    tick()
    states = {j["id"]: j["state"] for j in jobs(engine) if j["service_id"] == "svc"}
    assert sorted(states.values()) == ["draining", "ended"]  # the ready one drains, the pending one goes
    clock.advance(DRAIN_GRACE + 1)
    tick()
    assert all(j["state"] == "ended" for j in jobs(engine) if j["service_id"] == "svc")
    assert [j.name for j in fake.live() if j.name.endswith("_svc")] == []


# --- rotation


def test_rotation_before_walltime(import_services, tick, engine, fake, clock) -> None:  # type: ignore[no-untyped-def]
    fake.time_limit = 600
    import_services(cfg(job_expiry_time="2:00"))
    tick()
    start_all(fake)
    tick()
    old = jobs(engine)[0]
    assert old["state"] == "ready" and old["walltime_limit"] == 600
    clock.advance(470)  # 130 s left: not yet
    tick()
    assert len(jobs(engine)) == 1
    clock.advance(15)  # 115 s left < 120
    r = tick()
    rows = jobs(engine)
    assert len(rows) == 2 and rows[1]["replaces_job_id"] == old["id"] and rows[1]["state"] == "pending"
    assert rows[0]["state"] == "ready", "the old job keeps serving until the replacement is ready"
    assert "rotation" in json.dumps([a.as_dict() for a in r.actions])
    clock.advance(10)
    tick()
    assert len(jobs(engine)) == 2  # no second replacement
    fake.start(rows[1]["slurm_job_id"])
    clock.advance(10)
    tick()
    rows = jobs(engine)
    assert (
        rows[1]["state"] == "ready" and rows[0]["state"] == "draining" and rows[0]["end_reason"] == "rotated"
    )
    clock.advance(DRAIN_GRACE + 1)
    tick()
    rows = jobs(engine)
    assert rows[0]["state"] == "ended" and rows[0]["end_reason"] == "rotated"
    assert rows[0]["ended_at"] < rows[0]["started_at"] + 600
    assert [j.job_id for j in fake.live()] == [rows[1]["slurm_job_id"]]


# --- ports


def test_ports_unique_and_reused_after_end(home: Path, engine, fake, clock, probes, import_services) -> None:  # type: ignore[no-untyped-def]
    settings = Settings(home=str(home), environ={"SAIA_PORT_RANGE": "40001-40003"})
    import_services(cfg("a"), cfg("b"), cfg("c"), cfg("d"))

    def tick() -> TickResult:
        return run_tick(engine, settings, fake, clock, prober=probes, watch=False, hostname=HOST)

    r = tick()
    rows = jobs(engine)
    assert sorted(j["port"] for j in rows) == [40001, 40002, 40003]
    assert "no free port in 40001-40003" in (r.error or "")
    b = next(j for j in rows if j["service_id"] == "b")
    fake.finish(b["slurm_job_id"], "FAILED")
    tick()
    live = jobs(engine, live_only=True)
    assert sorted(j["port"] for j in live) == [40001, 40002, 40003]
    assert len({j["port"] for j in live}) == 3
    assert next(j for j in jobs(engine) if j["id"] == b["id"])["end_reason"] == "failed"


# --- Slurm failures, crashes, orphans


def test_failed_squeue_changes_nothing(import_services, tick, engine, fake, clock) -> None:  # type: ignore[no-untyped-def]
    import_services(cfg(minimum_number_instances=2))
    tick()
    before = jobs(engine)
    for j in list(fake.jobs):
        fake.finish(j, "CANCELLED")
    fake.fail_next.add("queue")
    clock.advance(10)
    r = tick()
    assert r.error and "Unable to contact slurm controller" in r.error and r.exit_code == 1
    assert jobs(engine) == before and fake.calls["submit"] == 2
    row = scalar(engine, "SELECT error FROM ticks ORDER BY id DESC LIMIT 1")
    assert "no job changed" in row
    r = tick()
    assert r.error is None
    assert {j["end_reason"] for j in jobs(engine) if j["state"] == "ended"} == {"cancelled"}


class Crash(BaseException):
    """A stand-in for SIGKILL: nothing after it runs."""


def test_crash_between_submit_and_record_is_adopted(
    import_services, tick, engine, fake, clock, settings
) -> None:  # type: ignore[no-untyped-def]
    import_services(cfg())

    class CrashAfterSubmit(FakeSlurm):
        def submit(self, *a: Any, **kw: Any) -> int:
            super().submit(*a, **kw)
            raise Crash

    crashing = CrashAfterSubmit(clock)
    crashing.jobs, crashing.next_id = fake.jobs, fake.next_id
    with pytest.raises(Crash):
        tick(slurm=crashing)
    [row] = jobs(engine)
    assert row["state"] == "submitting" and row["slurm_job_id"] is None
    [slurm_job] = fake.jobs.values()
    clock.advance(settings.lease_ttl + 1)
    r = tick()
    assert r.ran and any(a.kind == "adopt" for a in r.actions)
    [row] = jobs(engine)
    assert row["slurm_job_id"] == slurm_job.job.job_id and row["state"] == "pending"
    assert len(fake.live()) == 1  # no duplicate


def test_row_never_submitted_is_ended_and_replaced(
    import_services, tick, engine, fake, clock, settings
) -> None:  # type: ignore[no-untyped-def]
    import_services(cfg())

    class CrashBeforeSubmit(FakeSlurm):
        def submit(self, *a: Any, **kw: Any) -> int:
            raise Crash

    with pytest.raises(Crash):
        tick(slurm=CrashBeforeSubmit(clock))
    clock.advance(1)
    tick()
    rows = jobs(engine)
    assert rows[0]["state"] == "ended" and rows[0]["end_reason"] == "submit-failed"
    assert rows[1]["state"] == "pending" and len(fake.live()) == 1


def test_orphans_cancelled(import_services, tick, engine, fake, clock, settings) -> None:  # type: ignore[no-untyped-def]
    import_services(cfg())
    tick()
    start_all(fake)
    tick()
    prefix = settings.job_prefix
    ghost = fake.submit(SBATCH, name=f"{prefix}_999_svc", port=1, env={}, workdir="/", output="/x")
    foreign = fake.submit(SBATCH, name=f"{prefix}x_5_svc", port=1, env={}, workdir="/", output="/x")
    sql(engine, "UPDATE jobs SET state = 'ended', ended_at = :t, end_reason = 'test'", t=clock())
    ended_slurm = jobs(engine)[0]["slurm_job_id"]
    r = tick()
    assert fake.jobs[ghost].job.state == "CANCELLED"
    assert fake.jobs[ended_slurm].job.state == "CANCELLED"
    assert fake.jobs[foreign].job.state == "PENDING"  # not ours
    assert "no live row" in r.summary
    assert len(jobs(engine, live_only=True)) == 1  # the minimum is kept by a new job


def test_job_gone_from_queue_gets_reason(import_services, tick, engine, fake, clock) -> None:  # type: ignore[no-untyped-def]
    import_services(cfg(minimum_number_instances=2))
    tick()
    a, b = sorted(fake.jobs)
    fake.start(a)
    fake.finish(a, "TIMEOUT")
    fake.forget(a)  # squeue no longer shows it, scontrol still knows
    fake.forgotten.discard(a)
    fake.forget(b)  # purged: neither knows it
    fake.forgotten.add(b)

    def queue_without(prefix: str, _orig=fake.queue) -> list[SlurmJob]:  # type: ignore[no-untyped-def]
        return [j for j in _orig(prefix) if j.job_id not in (a, b)]

    fake.queue = queue_without  # type: ignore[method-assign]
    tick()
    reasons = {j["slurm_job_id"]: j["end_reason"] for j in jobs(engine) if j["state"] == "ended"}
    assert reasons == {a: "timeout", b: "gone"}


def test_start_and_end_are_slurms_times_from_squeue(import_services, tick, engine, fake, clock) -> None:  # type: ignore[no-untyped-def]
    """squeue's StartTime and EndTime, not the ticks' times: a job that started 7.6 s before
    the tick that first saw it run, and ended 4.3 s before the tick that saw it finished."""
    import_services(cfg(minimum_number_instances=1))
    tick()
    [a] = sorted(fake.jobs)
    fake.start(a)
    started = clock()
    clock.advance(7.6)
    tick()
    [row] = jobs(engine)
    assert row["started_at"] == started  # not now - int(elapsed) = started + 0.6
    # An estimate made without StartTime (the watcher's, a row of an older version) is corrected.
    sql(engine, "UPDATE jobs SET started_at = started_at + 0.9")
    clock.advance(5)
    tick()
    assert jobs(engine)[0]["started_at"] == started
    clock.advance(20)
    fake.finish(a, "FAILED")
    finished = clock()
    clock.advance(4.3)
    tick()
    row = jobs(engine)[0]
    assert (row["ended_at"], row["end_reason"]) == (finished, "failed")


def _record(fake: FakeSlurm, job_id: int, state: str, **kw: Any) -> SacctRecord:
    values: dict[str, Any] = {
        "job_id": job_id,
        "state": state,
        "exit_code": "0:0",
        "start": 1000.0,
        "end": 1100.0,
        "elapsed": 100,
        "gpus": 2,
        "account": "saia_b",
        "partition": "debug",
        "qos": "normal",
        "name": fake.jobs[job_id].job.name,
    }
    values.update(kw)
    return SacctRecord(**values)


def test_jobs_that_left_the_queue_get_slurms_record_in_one_sacct_call(
    import_services, tick, engine, fake, clock
) -> None:  # type: ignore[no-untyped-def]
    import_services(cfg(minimum_number_instances=3))
    tick()
    a, b, c = sorted(fake.jobs)
    for j in (a, b, c):
        fake.start(j)
    clock.advance(30)
    tick()
    assert fake.calls["accounting"] == 0  # nothing left the queue: no sacct call
    fake.finish(a, "FAILED")  # squeue still lists it, as failed; sacct knows better
    fake.forget(b)  # gone from squeue and scontrol
    fake.records[a] = _record(fake, a, "OUT_OF_MEMORY", exit_code="0:125")
    fake.records[b] = _record(fake, b, "TIMEOUT", exit_code="0:15", gpus=1, start=1010.0, end=1200.0)
    r = tick()
    assert r.error is None, r.text()
    assert fake.calls["accounting"] == 1  # one call for both
    rows = {j["slurm_job_id"]: j for j in jobs(engine)}
    assert rows[a]["end_reason"] == "out-of-memory" and rows[b]["end_reason"] == "timeout"
    assert (rows[a]["slurm_state"], rows[a]["slurm_exit_code"]) == ("OUT_OF_MEMORY", "0:125")
    assert (rows[b]["slurm_started_at"], rows[b]["slurm_ended_at"]) == (1010.0, 1200.0)
    assert rows[b]["slurm_gpus"] == 1 and rows[b]["slurm_account"] == "saia_b"
    # What the ticks observed is kept next to it.
    assert rows[b]["gpus"] == fake.gpus and rows[b]["ended_at"] == clock()
    assert rows[c]["ended_at"] is None and rows[c]["slurm_state"] is None


def test_sacct_failure_or_missing_record_keeps_what_was_observed(
    import_services, tick, engine, fake, clock
) -> None:  # type: ignore[no-untyped-def]
    import_services(cfg(minimum_number_instances=3))
    tick()
    a, b, c = sorted(fake.jobs)
    for j in (a, b, c):
        fake.start(j)
    fake.forget(a)
    fake.records[a] = _record(fake, a, "OUT_OF_MEMORY")
    fake.fail_next.add("accounting")
    r = tick()
    assert r.error is None and r.ran
    notes = [line for line in r.summary.splitlines() if "as observed" in line]
    assert notes == [
        "end reasons and times as observed for 1 job(s): sacct unavailable: "
        "fake accounting failure: Unable to contact slurm controller"
    ]
    row = {j["slurm_job_id"]: j for j in jobs(engine)}
    assert row[a]["end_reason"] == "gone" and row[a]["slurm_state"] is None  # never a claimed reason
    # A record not final yet (slurmdbd lags), or of another job that got the id: not used.
    fake.forget(b)
    fake.records[b] = _record(fake, b, "RUNNING", end=None)
    fake.forget(c)
    fake.records[c] = _record(fake, c, "OUT_OF_MEMORY", name="someone-elses-job")
    r = tick()
    assert r.error is None and "as observed" not in r.summary
    row = {j["slurm_job_id"]: j for j in jobs(engine)}
    assert row[b]["end_reason"] == "gone" and row[b]["slurm_state"] is None
    assert row[c]["end_reason"] == "gone" and row[c]["slurm_state"] is None
    # Later ticks ask again about rows that ended without Slurm's record (in their one
    # sacct call): once slurmdbd has it, "gone" becomes Slurm's state.
    fake.records[b] = _record(fake, b, "NODE_FAIL")
    calls = fake.calls["accounting"]
    assert tick().error is None
    assert fake.calls["accounting"] == calls + 1
    row = {j["slurm_job_id"]: j for j in jobs(engine)}
    assert (row[a]["end_reason"], row[a]["slurm_state"]) == ("out-of-memory", "OUT_OF_MEMORY")
    assert (row[b]["end_reason"], row[b]["slurm_state"]) == ("node-failure", "NODE_FAIL")
    assert row[c]["end_reason"] == "gone" and row[c]["slurm_state"] is None


# --- lease, throttle


def test_second_tick_while_lease_held_exits_at_once(tick, engine, clock, settings) -> None:  # type: ignore[no-untyped-def]
    b = begin_tick(engine, "other-host:1:abc", clock(), settings.lease_ttl)
    assert b.status == "run"
    r = tick()  # returns at once, without waiting for the lease (bench/tick.py times it)
    assert r.status == "busy" and r.exit_code == 0
    assert "another tick is running (holder other-host:1:abc, expires" in r.summary


def test_expired_lease_is_taken_over(import_services, tick, engine, clock, settings) -> None:  # type: ignore[no-untyped-def]
    import_services(cfg())
    begin_tick(engine, "dead-host:1:abc", clock(), settings.lease_ttl)
    clock.advance(settings.lease_ttl + 0.5)
    r = tick()
    assert r.ran and len(jobs(engine)) == 1
    assert scalar(engine, "SELECT holder FROM scheduler_lease") is None  # released at the end


def test_two_ticks_started_together_one_runs(import_services, engine, settings, clock, probes) -> None:  # type: ignore[no-untyped-def]
    import_services(cfg())

    class SlowFake(FakeSlurm):
        def queue(self, name_prefix: str) -> list[SlurmJob]:
            time.sleep(0.5)
            return super().queue(name_prefix)

    fake = SlowFake(clock)
    results: list[TickResult] = []
    barrier = threading.Barrier(2)

    def run() -> None:
        barrier.wait()
        results.append(run_tick(engine, settings, fake, clock, prober=probes, watch=False, hostname=HOST))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(r.status for r in results) == ["busy", "ran"]
    assert fake.calls["queue"] == 1 and fake.calls["submit"] == 1


def test_if_due_throttles(import_services, tick, engine, clock, settings) -> None:  # type: ignore[no-untyped-def]
    import_services(cfg())
    assert tick(if_due=True).ran
    clock.advance(settings.tick_interval - 1)
    r = tick(if_due=True)
    assert r.status == "not-due" and "not due" in r.summary and r.exit_code == 0
    assert tick().ran  # without --if-due it runs anyway
    clock.advance(settings.tick_interval)
    assert tick(if_due=True).ran
    assert scalar(engine, "SELECT count(*) FROM ticks") == 3


def test_tick_log_row(import_services, tick, engine) -> None:  # type: ignore[no-untyped-def]
    import_services(cfg())
    r = tick()
    row = dict(
        next(
            iter(
                engine.connect()
                .execute(text("SELECT * FROM ticks WHERE id = :i"), {"i": r.tick_id})
                .mappings()
            )
        )
    )
    assert row["summary"] == r.summary and row["duration"] is not None and row["error"] is None
    assert [a["action"] for a in json.loads(row["actions"])] == ["submit"]


# --- requests of dead handlers


def test_requests_of_dead_handlers_closed(import_services, tick, engine, clock) -> None:  # type: ignore[no-untyped-def]
    import_services(cfg())
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    dead = add_request(engine, clock, pid=p.pid)
    alive = add_request(engine, clock)
    foreign_old = add_request(engine, clock, host="login9", pid=1, age=25 * 3600)
    foreign_new = add_request(engine, clock, host="login9", pid=1, age=3600)
    r = tick()
    with engine.connect() as c:
        rows = {
            row[0]: row[1:]
            for row in c.execute(text("SELECT id, outcome, error, ended_at FROM requests")).all()
        }
    assert rows[dead][:2] == ("aborted", "handler process gone")
    assert rows[foreign_old][0] == "aborted" and "login9" in rows[foreign_old][1]
    assert rows[alive][0] is None and rows[foreign_new][0] is None
    assert "closed 2 request(s)" in r.summary


# --- watching while requests wait


def test_watch_commits_ready_within_the_tick(import_services, home, engine, probes) -> None:  # type: ignore[no-untyped-def]
    settings = Settings(home=str(home), environ={"SAIA_TICK_TIMEOUT": "8"})
    import_services(cfg(minimum_number_instances=0))
    real_clock = Clock(time.time())
    fake = FakeSlurm(time.time)
    add_request(engine, real_clock, job_id=None)  # waiting for a backend
    probes.default = None
    answered_at: list[float] = []

    def backend_comes_up() -> None:
        time.sleep(0.6)
        fake.start(next(iter(fake.jobs)), node="gpu1")
        time.sleep(0.6)
        answered_at.append(time.time())
        probes.default = 200

    threading.Thread(target=backend_comes_up, daemon=True).start()
    r = run_tick(engine, settings, fake, time.time, prober=probes, watch=True, hostname=HOST)
    [row] = jobs(engine)
    assert row["state"] == "ready", r.text()
    assert row["ready_at"] >= answered_at[0]
    # probed again and again while the tick watched, not once per tick (bench/tick.py times the delay)
    assert len(probes.calls) >= 2
    assert any(a.watch for a in r.actions)
    assert 2 <= fake.calls["queue"] <= 6


def test_jobs_that_fail_before_ready_back_off(import_services, tick, engine, fake, clock, probes) -> None:  # type: ignore[no-untyped-def]
    """A broken batch script must not be resubmitted every tick (found by the soak)."""
    import_services(cfg(minimum_number_instances=1))
    tick()
    for expected_failures in (1, 2, 3):
        [live] = fake.live()
        fake.start(live.job_id)
        fake.finish(live.job_id, "FAILED")  # died while loading: never answered GET /
        tick()  # noticed as ended; a failed start in a row
        ended = [j for j in jobs(engine) if j["state"] == "ended"]
        assert len(ended) == expected_failures and all(j["ready_at"] is None for j in ended)
        assert fake.live() == []  # backing off, nothing submitted yet
        r = tick()
        assert "backing off" in r.summary and fake.live() == []
        clock.advance(10 * 2 ** (expected_failures - 1) + 1)
        tick()
        assert len(fake.live()) == 1  # the next try after the back-off
    # A job that becomes ready ends the streak: its successor is submitted at once.
    [live] = fake.live()
    fake.start(live.job_id)
    tick()
    assert jobs(engine, live_only=True)[0]["state"] == "ready"
    fake.finish(live.job_id, "NODE_FAIL")
    tick()
    assert len(fake.live()) == 1


def test_job_cancelled_by_hand_before_ready_is_replaced_without_back_off(
    import_services, tick, engine, fake
) -> None:  # type: ignore[no-untyped-def]
    """An admin's scancel says nothing about the batch script: no back-off (found by the tick-kill faults)."""
    import_services(cfg(minimum_number_instances=1))
    for _ in range(3):
        tick()
        [live] = fake.live()
        fake.cancel(live.job_id)  # pending, never ready
        r = tick()
        assert "backing off" not in r.summary
        assert len(fake.live()) == 1


# --- job changes are typed: nothing is dropped silently


def test_job_change_fields_are_columns_of_jobs() -> None:
    from saia_ctl.models import Job
    from saia_ctl.scheduler.apply import JOB_CHANGE_COLUMNS

    assert JOB_CHANGE_COLUMNS and set(Job.__table__.columns.keys()) >= JOB_CHANGE_COLUMNS


def test_applying_a_change_with_an_unknown_field_is_an_error(
    import_services, tick, engine, settings, clock
) -> None:  # type: ignore[no-untyped-def]
    """A field apply does not know (here a misspelt ``stat``) raises; it is never dropped."""
    import dataclasses

    from saia_ctl.scheduler.apply import UnknownJobField, record_intents
    from saia_ctl.scheduler.views import JobChange, Plan

    @dataclasses.dataclass(slots=True)
    class Misspelt(JobChange):
        stat: str = "draining"

    import_services(cfg())
    tick()
    (row,) = jobs(engine, live_only=True)
    plan = Plan(job_changes={row["id"]: Misspelt(last_error="x")})
    with pytest.raises(UnknownJobField, match="stat"):
        record_intents(engine, plan, settings, clock(), [])
    # nothing of the change was written either
    assert jobs(engine, live_only=True)[0]["last_error"] is None
    # the same change without the misspelt field is written
    record_intents(engine, Plan(job_changes={row["id"]: JobChange(last_error="x")}), settings, clock(), [])
    assert jobs(engine, live_only=True)[0]["last_error"] == "x"
