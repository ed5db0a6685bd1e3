"""What the tick stores for the live catalogue (the `status` answer): Slurm's
reason for each pending job of ours and its expected start (``squeue --start``).

One short write, only when something changed; the expected start costs one
``squeue --start`` per tick, and only while a job of ours is pending.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence
from datetime import datetime

from sqlalchemy import Engine, text

from ..db import write_session
from ..slurm import SlurmError, SlurmJob
from .views import JobView

_UPDATE = text("UPDATE jobs SET slurm_reason = :reason, slurm_start = :start WHERE id = :id")
_READ = text("SELECT id, slurm_reason, slurm_start FROM jobs WHERE ended_at IS NULL")


def parse_start_times(stdout: str) -> dict[int, float]:
    """``squeue --start -h -o %i|%S`` lines -> {job id: expected start (epoch)};
    N/A and unparsable lines are skipped (no estimate is not an error)."""
    out: dict[int, float] = {}
    for line in stdout.splitlines():
        job, _, start = line.strip().partition("|")
        if not job.isdigit():
            continue
        try:
            out[int(job)] = datetime.fromisoformat(start.strip()).astimezone().timestamp()
        except ValueError:
            continue
    return out


def start_times(slurm: object, job_ids: Sequence[int]) -> dict[int, float]:
    """Slurm's expected start of pending jobs, when the client can run squeue (else none)."""
    run: Callable[..., subprocess.CompletedProcess[str]] | None = getattr(slurm, "run", None)
    if run is None or not job_ids:
        return {}
    try:
        proc = run("squeue", "--start", "-h", "-o", "%i|%S", "-j", ",".join(str(j) for j in job_ids))
    except SlurmError:
        return {}
    return parse_start_times(proc.stdout) if proc.returncode == 0 else {}


def queue_facts(
    jobs: Sequence[JobView], queue: Sequence[SlurmJob], starts: dict[int, float]
) -> dict[int, tuple[str | None, float | None]]:
    """{job row id: (pending reason, expected start)} for our live jobs; (None, None) once running."""
    by_id = {j.job_id: j for j in queue}
    facts: dict[int, tuple[str | None, float | None]] = {}
    for job in jobs:
        sj = by_id.get(job.slurm_job_id) if job.slurm_job_id is not None else None
        if sj is None:
            continue
        if sj.is_pending:
            facts[job.id] = (sj.reason, starts.get(sj.job_id))
        else:
            facts[job.id] = (None, None)
    return facts


def record_queue_facts(
    engine: Engine, slurm: object, jobs: Sequence[JobView], queue: Sequence[SlurmJob]
) -> int:
    """Store the pending reasons and expected starts that changed; the number of rows written."""
    pending = [j.job_id for j in queue if j.is_pending and any(v.slurm_job_id == j.job_id for v in jobs)]
    facts = queue_facts(jobs, queue, start_times(slurm, pending))
    if not facts:
        return 0
    with write_session(engine) as s:
        stored = {int(r[0]): (r[1], r[2]) for r in s.execute(_READ)}
        changed = [
            {"id": jid, "reason": reason, "start": start}
            for jid, (reason, start) in facts.items()
            if jid in stored and stored[jid] != (reason, start)
        ]
        if changed:
            s.execute(_UPDATE, changed)
    return len(changed)
