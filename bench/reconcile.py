"""saia-ctl's GPU time against Slurm's own accounting, on the real cluster with slurmdbd.

Usage: .venv/bin/python bench/reconcile.py [--services 6] [--seconds 90] [--tick 5] [--json]

Runs short jobs (3-20 s, 1 or 2 GPUs) of several services through real ticks
(one every ``--tick`` seconds, as keep-alive runs them) for ``--seconds``, then
cancels what still runs and ticks until every job's Slurm record is in. Then,
for the month, per service: saia-ctl's billed GPU-seconds (``report
--reconcile``'s figure: Slurm's Start/End once a job's record arrived, the
ticks' observation before) against Slurm's (``sacct``: AllocTRES gres/gpu x
Start..End), the worst service's difference in per cent (goal < 0.1 %), and per
job the worst difference between the start and end the ticks observed
(squeue's StartTime/EndTime) and Slurm's (goal <= 2 s each).

Baseline, same run, same jobs: the figures as saia-ctl made them before it read
squeue's StartTime/EndTime and billed from Slurm's record: a job's start = the
tick's time less squeue's elapsed seconds when a tick first saw it run, its end =
the first tick that saw it finished or gone (recorded by wrapping squeue).

Uses the dev cluster in ``$SAIA_TEST_CLUSTER`` (or /tmp/saia-dev-cluster) when it
is up, else starts a private one and stops it. Without slurmdbd there is nothing
to compare with: it says so and exits 2.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import Figure, report
from sqlalchemy import text
from sqlalchemy.orm import Session

from tests.support.net import free_block

REPO = Path(__file__).resolve().parent.parent


def get_cluster() -> tuple[Any, Path | None]:
    from tests.support.cluster import cluster_at, cluster_running, start_cluster

    shared = Path(os.environ.get("SAIA_TEST_CLUSTER") or "/tmp/saia-dev-cluster")
    if cluster_running(shared):
        return cluster_at(shared.resolve(), owned=False), None
    private = Path(tempfile.mkdtemp(prefix="saia-br-"))
    os.chmod(private, 0o755)
    return start_cluster(private), private


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--services", type=int, default=6, help="services, one short job at a time each")
    ap.add_argument("--seconds", type=float, default=90.0, help="how long jobs are started")
    ap.add_argument("--tick", type=float, default=5.0, help="seconds between ticks")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", action="store_true", help="print the figures as a JSON line last")
    args = ap.parse_args()

    from saia_ctl.accounting.months import month_of, month_window
    from saia_ctl.accounting.reconcile import (
        ObservedJob,
        observed_jobs,
        read_slurm_side,
        reconcile,
        saia_seconds,
        slurm_seconds,
    )
    from saia_ctl.config import apply_config, load_config
    from saia_ctl.db import engine_for, write_session
    from saia_ctl.migrate import upgrade
    from saia_ctl.scheduler.names import name_prefix
    from saia_ctl.scheduler.tick import run_tick
    from saia_ctl.settings import Settings
    from saia_ctl.slurm import RealSlurm, SlurmJob

    class RecordingSlurm(RealSlurm):
        """The real client; remembers when each of our jobs was first seen running (with the
        elapsed seconds squeue printed) and first seen finished or gone."""

        def __init__(self, settings: Settings) -> None:
            super().__init__(settings)
            self.first_running: dict[int, float] = {}
            self.first_ended: dict[int, float] = {}
            self.listed: set[int] = set()

        def queue(self, name_prefix: str) -> list[SlurmJob]:
            jobs = super().queue(name_prefix)
            now = time.time()
            seen = set()
            for j in jobs:
                seen.add(j.job_id)
                if j.is_running and j.job_id not in self.first_running:
                    self.first_running[j.job_id] = now - (j.elapsed or 0)
                if j.is_finished and j.job_id not in self.first_ended:
                    self.first_ended[j.job_id] = now
            for gone in self.listed - seen:
                self.first_ended.setdefault(gone, now)
            self.listed |= seen
            return jobs

    cluster, private = get_cluster()
    tmp = Path(tempfile.mkdtemp(prefix="saia-bench-reconcile-"))
    home = tmp / "home"
    home.mkdir()
    rng = random.Random(args.seed)
    low = free_block()  # jobs' ports, outside the ephemeral range
    (home / "saia.conf").write_text(
        f"SAIA_JOB_PREFIX=brec{uuid.uuid4().hex[:6]}\nSAIA_PORT_RANGE={low}-{low + 49}\n"
        f"SAIA_SLURM_CONF={cluster.slurm_conf}\nSAIA_PYTHON={sys.executable}\n"
    )
    os.environ["SLURM_CONF"] = cluster.slurm_conf
    settings = Settings(home=str(home), environ={})
    engine = engine_for(settings)
    upgrade(engine)
    slurm = RecordingSlurm(settings)
    services = []
    for i in range(args.services):
        script = tmp / f"job{i}.sbatch"
        # Each job sleeps a random 3-20 s: short jobs, where a tick's granularity weighs most.
        script.write_text(
            f"#!/bin/bash\n#SBATCH --gres=gpu:{1 + i % 2}\n#SBATCH --mem=50M\nsleep $((3 + RANDOM % 18))\n"
        )
        services.append(
            {
                "name": f"Bench {i}",
                "id": f"rec{i}",
                "owned_by": "bench",
                "input": ["text"],
                "output": ["text"],
                "sbatch": str(script),
                "inferences_per_instance": 1,
                "maximum_number_instances": 1,
                "minimum_number_instances": 1,
                "job_expiry_time": "5:00",
            }
        )
    (home / "config.json").write_text(json.dumps({"services": services}))
    loaded, _ = load_config(str(home / "config.json"))
    with write_session(engine) as s:
        apply_config(s, loaded)
    prefix = name_prefix(settings.job_prefix)

    def tick() -> None:
        r = run_tick(engine, settings, slurm, watch=False)
        if r.error:
            print(f"reconcile: tick error: {r.error}", file=sys.stderr)
        time.sleep(args.tick * rng.uniform(0.8, 1.2))

    def rows() -> list[dict[str, Any]]:
        with engine.connect() as c:
            out = [dict(r) for r in c.execute(text("SELECT * FROM jobs ORDER BY id")).mappings()]
            c.rollback()
        return out

    try:
        side = read_slurm_side(slurm, month_window(month_of(time.time(), "UTC"), "UTC"))
        if not side.checked:
            print(f"reconcile: {side.note}", file=sys.stderr)
            return 2
        end = time.monotonic() + args.seconds
        while time.monotonic() < end:
            tick()
        with write_session(engine) as s:  # no more replacements: every service off
            s.execute(text("UPDATE services SET minimum_number_instances = 0, maximum_number_instances = 0"))
        for j in slurm.queue(prefix):
            if not j.is_finished:
                slurm.cancel(j.job_id)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            tick()
            todo = [r for r in rows() if r["slurm_job_id"] is not None and r["slurm_state"] is None]
            if not todo and all(r["ended_at"] is not None for r in rows()):
                break
        now = time.time()
        window = month_window(month_of(now, "UTC"), "UTC")
        with engine.connect() as c:
            billed = observed_jobs(Session(bind=c), window)
            c.rollback()
        side = read_slurm_side(slurm, window)
        assert side.checked, side.note
        by_id = {r["id"]: r for r in rows()}
        records = {r.job_id: r for r in side.records}

        def old_estimate(job: ObservedJob) -> ObservedJob | None:
            sid = job.slurm_job_id
            if sid is None or sid not in slurm.first_running:
                return None  # never seen running by a tick: billed nothing before
            return ObservedJob(
                job.id, job.service, sid, job.gpus, slurm.first_running[sid], slurm.first_ended.get(sid), None
            )

        def own_times(job: ObservedJob) -> ObservedJob | None:
            row = by_id[job.id]
            if row["started_at"] is None:
                return None
            return ObservedJob(
                job.id, job.service, job.slurm_job_id, job.gpus, row["started_at"], row["ended_at"], None
            )

        old = [o for o in map(old_estimate, billed) if o is not None]
        own = [o for o in map(own_times, billed) if o is not None]
        result = reconcile(billed, side.records, window, now, settings.job_prefix)
        baseline = reconcile(old, side.records, window, now, settings.job_prefix)
        observed = reconcile(own, side.records, window, now, settings.job_prefix)

        def worst_percent(res: dict[str, Any]) -> float:
            return max(abs(r.difference_percent or 0.0) for r in res.values())

        starts, ends = [], []
        for job in billed:
            row, rec = by_id[job.id], records.get(job.slurm_job_id or -1)
            if rec is None or rec.start is None or rec.end is None or row["started_at"] is None:
                continue
            starts.append(abs(row["started_at"] - rec.start))
            ends.append(abs(row["ended_at"] - rec.end))
        old_starts = [
            abs(o.started_at - records[o.slurm_job_id].start) for o in old if o.slurm_job_id in records
        ]  # type: ignore[operator,index]
        old_ends = [
            abs(o.ended_at - records[o.slurm_job_id].end)  # type: ignore[operator,index]
            for o in old
            if o.slurm_job_id in records and o.ended_at is not None
        ]
        saia = sum(r.saia_gpu_seconds for r in result.values())
        slurm_total = sum(r.slurm_gpu_seconds for r in result.values())
        print(
            f"reconcile: {len(billed)} jobs of {len(result)} services, {len(starts)} with Slurm's record; "
            f"saia-ctl {saia:.1f} GPU-s, Slurm {slurm_total:.1f} GPU-s; before: "
            f"{sum(r.saia_gpu_seconds for r in baseline.values()):.1f} GPU-s over {len(old)} jobs",
            file=sys.stderr,
        )
        for sv in result:
            b = baseline.get(sv)
            print(
                f"  {sv}: {result[sv].difference_percent or 0.0:+.4f} % "
                f"(ticks' own times: {observed[sv].difference_percent or 0.0:+.4f} %) "
                f"(before: {(b.difference_percent or 0.0) if b else 0.0:+.3f} %), jobs {result[sv].jobs}, "
                f"saia-only {result[sv].saia_only}, slurm-only {result[sv].slurm_only}",
                file=sys.stderr,
            )
        for job in billed:  # every job whose billed GPU time is not Slurm's, with both sides
            rec = records.get(job.slurm_job_id or -1)
            ours = saia_seconds(job, window, now)
            theirs = None if rec is None else slurm_seconds(rec, window, now)
            if theirs is None or abs(ours - theirs) > 1e-6:
                row = by_id[job.id]
                print(
                    f"  differs: row {job.id} {job.service} job {job.slurm_job_id} {row['end_reason']} "
                    f"{ours:.1f} vs {theirs} GPU-s; row {row['started_at']}..{row['ended_at']} "
                    f"Slurm's on row {row['slurm_started_at']}..{row['slurm_ended_at']} "
                    f"({row['slurm_state']}); sacct {rec}",
                    file=sys.stderr,
                )
        bench = "reconcile"
        pct, pct0, pct_own = worst_percent(result), worst_percent(baseline), worst_percent(observed)
        s_max, e_max = max(starts, default=0.0), max(ends, default=0.0)
        s0, e0 = max(old_starts, default=0.0), max(old_ends, default=0.0)
        report(
            [
                Figure(
                    bench,
                    "GPU-s difference vs Slurm, worst service",
                    pct,
                    "%",
                    pct0,
                    goal="< 0.1 %",
                    ok=pct < 0.1,
                ),
                Figure(
                    bench,
                    "same, ticks' own times only (no record)",
                    pct_own,
                    "%",
                    pct0,
                    goal="< 0.1 %",
                    ok=pct_own < 0.1,
                ),
                Figure(bench, "start vs Slurm's, worst job", s_max, "s", s0, goal="<= 2 s", ok=s_max <= 2),
                Figure(bench, "end vs Slurm's, worst job", e_max, "s", e0, goal="<= 2 s", ok=e_max <= 2),
                Figure(bench, "jobs compared", len(starts), "", len(old_starts)),
            ],
            args.json,
        )
        return 0
    finally:
        try:
            for j in slurm.queue(prefix):
                if not j.is_finished:
                    slurm.cancel(j.job_id)
        except Exception as e:  # cleanup: say it, go on
            print(f"reconcile: could not cancel the bench's jobs: {e}", file=sys.stderr)
        engine.dispose()
        shutil.rmtree(tmp, ignore_errors=True)
        if private is not None:
            subprocess.run(
                [str(REPO / "scripts" / "dev-cluster.sh"), "down", str(private)], capture_output=True
            )
            shutil.rmtree(private, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
