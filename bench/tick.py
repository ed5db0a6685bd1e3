"""Planning time of one scheduler tick: 100 services, 1,000 jobs, FakeSlurm (goal < 100 ms CPU).

Usage: .venv/bin/python bench/tick.py [--services 100] [--jobs 1000] [--runs 7]

Prints the CPU time of the pure planner and of a whole steady-state tick
(snapshot + one squeue + plan + writes; probes answered in memory), medians
of several runs, and checks that each tick made exactly one squeue call.
Also two latencies the scheduler's tests check only as behaviour: a tick
that finds the lease held returns at once (goal < 1 s), and a watching tick
notices a backend that starts answering within about one probe period
(goal < 0.6 s; probes every 0.25 s).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import Figure, json_line
from sqlalchemy import text

from saia_ctl.db import engine_for, write_session
from saia_ctl.migrate import upgrade
from saia_ctl.scheduler.lease import begin_tick
from saia_ctl.scheduler.names import job_name, name_prefix
from saia_ctl.scheduler.observe import probe_targets, read_slurm, read_snapshot
from saia_ctl.scheduler.plan import plan_tick
from saia_ctl.scheduler.probes import ProbeTarget
from saia_ctl.scheduler.tick import run_tick
from saia_ctl.scheduler.views import Observation, ProbeResult
from saia_ctl.settings import Settings
from saia_ctl.slurm_fake import FakeSlurm


def healthy(targets: Sequence[ProbeTarget], timeout: float) -> dict[int, ProbeResult]:
    return {t.job_id: ProbeResult(True, f"GET {t.path}: 200") for t in targets}


def setup(home: str, n_services: int, n_jobs: int) -> tuple[Settings, FakeSlurm]:
    settings = Settings(home=home, environ={"SAIA_PORT_RANGE": "20000-29999", "SAIA_JOB_PREFIX": "bench"})
    engine = engine_for(settings)
    upgrade(engine)
    script = os.path.join(home, "x.sbatch")
    Path(script).write_text("#!/bin/bash\n")
    now = time.time()
    fake = FakeSlurm(time.time, time_limit=86400)
    per = n_jobs // n_services
    with write_session(engine) as s:
        for i in range(n_services):
            sid = f"service-{i:03d}"
            s.execute(
                text(
                    "INSERT INTO services (id, name, owned_by, input, output, sbatch, inferences_per_instance, "
                    "minimum_number_instances, maximum_number_instances, job_expiry_time, ready_timeout, "
                    "idle_timeout, scale_down_cooldown, health_failures, request_hold_time, enabled, config_json, "
                    "created_at, updated_at) VALUES (:id, :id, 'bench', '[]', '[]', :sb, 1, :n, :n, 600, 1800, "
                    "900, 120, 3, 30, 1, '{}', :now, :now)"
                ),
                {"id": sid, "sb": script, "n": per, "now": now},
            )
            s.execute(
                text("INSERT INTO service_states (service_id, load_avg, target) VALUES (:id, 0, 0)"),
                {"id": sid},
            )
        port = 20000
        for i in range(n_services):
            sid = f"service-{i:03d}"
            for _ in range(per):
                r = s.connection().execute(
                    text(
                        "INSERT INTO jobs (name, service_id, state, port, secret, submitted_at, gpus, "
                        "health_failures) VALUES (:n, :sid, 'pending', :p, 'x', :now, 0, 0)"
                    ),
                    {"n": f"tmp-{port}", "sid": sid, "p": port, "now": now - 60},
                )
                jid = int(r.lastrowid)
                name = job_name("bench", jid, sid)
                slurm_id = fake.submit(script, name=name, port=port, env={}, workdir=home, output="x")
                fake.start(slurm_id, node=f"gpu{port % 50}")
                s.execute(
                    text("UPDATE jobs SET name = :n, slurm_job_id = :j WHERE id = :id"),
                    {"n": name, "j": slurm_id, "id": jid},
                )
                port += 1
    return settings, fake


def busy_tick_wall(runs: int) -> float:
    """Median wall seconds of a tick that finds the lease held by another host."""
    walls = []
    with tempfile.TemporaryDirectory() as home:
        settings, fake = setup(home, 1, 0)
        engine = engine_for(settings)
        for _ in range(runs):
            with engine.begin() as c:
                c.execute(text("DELETE FROM scheduler_lease"))
            begin_tick(engine, "other-host:1:abc", time.time(), settings.lease_ttl)
            w0 = time.perf_counter()
            r = run_tick(engine, settings, fake, prober=healthy, watch=False)
            walls.append(time.perf_counter() - w0)
            assert r.status == "busy", r.text()
        engine.dispose()
    return statistics.median(walls)


def watch_detection_delay(runs: int) -> float:
    """Median seconds from a backend's first good answer to its job's ready_at, while a request waits."""
    return statistics.median(one_detection() for _ in range(runs))


def one_detection() -> float:
    with tempfile.TemporaryDirectory() as home:
        setup(home, 1, 0)
        env = {"SAIA_PORT_RANGE": "20000-29999", "SAIA_JOB_PREFIX": "bench", "SAIA_TICK_TIMEOUT": "8"}
        settings = Settings(home=home, environ=env)
        engine = engine_for(settings)
        fake = FakeSlurm(time.time)
        with write_session(engine) as s:
            s.execute(text("UPDATE services SET maximum_number_instances = 1"))
            s.execute(
                text(
                    "INSERT INTO requests (inference_id, user_id, service_id, method, path, started_at,"
                    " bytes_in, bytes_out, handler_host, handler_pid) VALUES ('w', 'u', 'service-000',"
                    " 'POST', '/v1/chat/completions', :at, 0, 0, 'bench-host', :pid)"
                ),
                {"at": time.time(), "pid": os.getpid()},
            )
        answering: list[float] = []

        def prober(targets: Sequence[ProbeTarget], timeout: float) -> dict[int, ProbeResult]:
            up = bool(answering)
            return {t.job_id: ProbeResult(up, f"GET {t.path}: {200 if up else 'refused'}") for t in targets}

        def backend_comes_up() -> None:
            time.sleep(0.5)
            fake.start(next(iter(fake.jobs)), node="gpu1")
            time.sleep(0.5)
            answering.append(time.time())

        threading.Thread(target=backend_comes_up, daemon=True).start()
        r = run_tick(engine, settings, fake, time.time, prober=prober, watch=True, hostname="bench-host")
        with engine.connect() as c:
            ready_at = c.execute(text("SELECT ready_at FROM jobs")).scalar_one()
        engine.dispose()
        assert ready_at is not None and answering, r.text()
        return float(ready_at) - answering[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--services", type=int, default=100)
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--json", action="store_true", help="print the figures as a JSON line last (bench/run)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as home:
        settings, fake = setup(home, args.services, args.jobs)
        engine = engine_for(settings)
        # First tick: every job becomes starting -> ready (the big write); not measured.
        first = run_tick(engine, settings, fake, prober=healthy, watch=False)
        assert first.error is None, first.error
        plan_cpu, tick_cpu, tick_wall = [], [], []
        for _ in range(args.runs):
            snap = read_snapshot(engine, time.time(), "bench-host")
            queue, info = read_slurm(fake, name_prefix("bench"), snap.jobs)
            probes = healthy(probe_targets(snap.jobs, queue), 1.0)
            obs = Observation(time.time(), snap.services, snap.jobs, queue, info, probes)
            c0 = time.process_time()
            plan = plan_tick(obs, name_prefix("bench"))
            plan_cpu.append(time.process_time() - c0)
            assert not plan.submits and not plan.cancels, "steady state expected"
        for _ in range(args.runs):
            calls = fake.calls["queue"]
            c0, w0 = time.process_time(), time.perf_counter()
            r = run_tick(engine, settings, fake, prober=healthy, watch=False)
            tick_cpu.append(time.process_time() - c0)
            tick_wall.append(time.perf_counter() - w0)
            assert r.error is None, r.error
            assert fake.calls["queue"] - calls == 1, "one squeue per tick"
        live = len(snap.jobs)
        print(f"services={args.services} live jobs={live} runs={args.runs}")
        print(
            f"plan only:  median {statistics.median(plan_cpu) * 1000:.1f} ms CPU (min {min(plan_cpu) * 1000:.1f})"
        )
        print(
            f"whole tick: median {statistics.median(tick_cpu) * 1000:.1f} ms CPU, "
            f"{statistics.median(tick_wall) * 1000:.1f} ms wall; squeue calls per tick: 1"
        )
        goal = statistics.median(plan_cpu) < 0.1
        print(f"goal (< 100 ms CPU planning): {'met' if goal else 'NOT met'}")
        busy = busy_tick_wall(args.runs)
        print(f"tick while the lease is held: median {busy * 1000:.1f} ms wall (goal < 1 s)")
        detect = watch_detection_delay(max(1, args.runs // 2))
        print(f"watching tick, backend answers -> ready: median {detect * 1000:.0f} ms (goal < 600 ms)")
        if args.json:
            scale = f"{args.services} services, {live} jobs"
            print(
                json_line(
                    [
                        Figure(
                            "tick",
                            f"planning CPU ({scale})",
                            round(statistics.median(plan_cpu) * 1000, 2),
                            "ms",
                            baseline=round(statistics.median(tick_cpu) * 1000, 2),
                            goal="< 100 ms",
                            ok=goal,
                        ),
                        Figure("tick", "squeue calls per tick", 1, "", goal="1", ok=True),
                        Figure(
                            "tick",
                            "tick while the lease is held (wall)",
                            round(busy * 1000, 1),
                            "ms",
                            goal="< 1000 ms",
                            ok=busy < 1.0,
                        ),
                        Figure(
                            "tick",
                            "watching tick: backend answers -> ready",
                            round(detect * 1000),
                            "ms",
                            goal="< 600 ms",
                            ok=detect < 0.6,
                        ),
                    ]
                )
            )
        return 0 if goal else 1


if __name__ == "__main__":
    sys.exit(main())
