"""The read phase of a tick: the database snapshot, one ``squeue``, the probes. No write lock held.

Reads use plain SQL over the schema's column names, rows read by name: times
stay epoch floats and a snapshot of 1,000 jobs costs little.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, Result, text

from ..db import read_session
from ..models import JobState
from ..slurm import SlurmClient, SlurmError, SlurmJob
from .plan import FAILED_START_REASONS
from .probes import ProbeTarget
from .views import JobView, ServiceView

# A request whose handler ran on another host is presumed dead after this long
# (its pid cannot be checked from here); on this host also, against pid reuse.
FOREIGN_HANDLER_TIMEOUT = 24 * 3600.0
# Bound on scontrol calls per tick for end reasons of jobs that left the queue.
MAX_JOB_INFO = 20

_SERVICES = text(
    """
    SELECT s.id, (s.enabled = 1 AND s.admin_state = 'active') AS enabled, s.sbatch, s.inferences_per_instance, s.minimum_number_instances,
           s.maximum_number_instances, s.job_expiry_time, s.ready_timeout, s.idle_timeout,
           s.scale_down_cooldown, s.health_failures, s.spec,
           st.maintenance_until, st.load_avg, st.sampled_at, st.lower_since, st.last_busy_at, st.demand_at,
           (SELECT r.started_at FROM requests r WHERE r.service_id = s.id
             ORDER BY r.started_at DESC LIMIT 1) AS last_request_at,
           (SELECT max(j.submitted_at) FROM jobs j WHERE j.service_id = s.id) AS last_submit_at,
           (SELECT j.walltime_limit FROM jobs j WHERE j.service_id = s.id AND j.walltime_limit IS NOT NULL
             ORDER BY j.id DESC LIMIT 1) AS last_walltime,
           f.n AS failed_starts, f.last AS last_failed_at
    FROM services s LEFT JOIN (
        -- jobs that ended without ever becoming ready since the service's last ready job
        SELECT j.service_id, count(*) AS n, max(j.ended_at) AS last
        FROM jobs j
        WHERE j.ended_at IS NOT NULL AND j.ready_at IS NULL
          AND j.end_reason IN ({failed})
          AND j.submitted_at > coalesce(
              (SELECT max(k.submitted_at) FROM jobs k
               WHERE k.service_id = j.service_id AND k.ready_at IS NOT NULL), 0)
        GROUP BY j.service_id
    ) f ON f.service_id = s.id LEFT JOIN service_states st ON st.service_id = s.id
    ORDER BY s.id
    """.replace("{failed}", ", ".join(f"'{r}'" for r in sorted(FAILED_START_REASONS)))
)
_JOBS = text(
    """
    SELECT id, name, service_id, slurm_job_id, state, node, port, submitted_at, started_at, ready_at,
           draining_at, walltime_limit, health_failures, end_reason, replaces_job_id, gpus, spec
    FROM jobs WHERE ended_at IS NULL ORDER BY id
    """
)
_IN_FLIGHT = text(
    "SELECT id, service_id, job_id, handler_host, handler_pid, started_at FROM requests WHERE ended_at IS NULL"
)


def by_name(result: Result[Any]) -> list[dict[str, Any]]:
    """The rows as dicts by column name (a Row's attribute access costs ~10x as much)."""
    keys = list(result.keys())
    return [dict(zip(keys, row, strict=True)) for row in result]


@dataclass
class Snapshot:
    services: list[ServiceView]
    jobs: list[JobView]
    dead_requests: list[tuple[int, str]] = field(default_factory=list)  # (requests.id, why)


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (a zombie counts as gone)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("State:"):
                    return "Z" not in line.split()[1:2]
    except OSError:
        pass
    return True


def read_snapshot(engine: Engine, now: float, hostname: str) -> Snapshot:
    """Services with their state and load, live jobs with their in-flight counts, dead handlers."""
    with read_session(engine) as s:
        service_rows = by_name(s.execute(_SERVICES))
        job_rows = by_name(s.execute(_JOBS))
        request_rows = by_name(s.execute(_IN_FLIGHT))
    per_service: Counter[str] = Counter()
    waiting: Counter[str] = Counter()
    per_job: Counter[int] = Counter()
    dead: list[tuple[int, str]] = []
    for q in request_rows:
        age = now - float(q["started_at"])
        if q["handler_host"] == hostname and not pid_alive(int(q["handler_pid"])):
            dead.append((q["id"], "handler process gone"))
            continue
        if age > FOREIGN_HANDLER_TIMEOUT:
            dead.append(
                (
                    q["id"],
                    f"handler on {q['handler_host']} presumed gone after {FOREIGN_HANDLER_TIMEOUT / 3600:.0f} h",
                )
            )
            continue
        per_service[q["service_id"]] += 1
        if q["job_id"] is None:
            waiting[q["service_id"]] += 1
        else:
            per_job[q["job_id"]] += 1
    services = [
        ServiceView(
            id=r["id"],
            enabled=bool(r["enabled"]),
            sbatch=r["sbatch"],
            inferences_per_instance=int(r["inferences_per_instance"]),
            minimum=int(r["minimum_number_instances"]),
            maximum=int(r["maximum_number_instances"]),
            job_expiry_time=int(r["job_expiry_time"]),
            ready_timeout=int(r["ready_timeout"]),
            idle_timeout=int(r["idle_timeout"]),
            scale_down_cooldown=int(r["scale_down_cooldown"]),
            health_failures=int(r["health_failures"]),
            load_avg=float(r["load_avg"] or 0.0),
            sampled_at=r["sampled_at"],
            lower_since=r["lower_since"],
            last_busy_at=r["last_busy_at"],
            demand_at=r["demand_at"],
            last_request_at=r["last_request_at"],
            last_submit_at=r["last_submit_at"],
            in_flight=per_service[r["id"]],
            waiting=waiting[r["id"]],
            failed_starts=int(r["failed_starts"] or 0),
            last_failed_at=r["last_failed_at"],
            spec=r["spec"],
            maintenance_until=r["maintenance_until"],
            last_walltime=r["last_walltime"],
        )
        for r in service_rows
    ]
    jobs = [
        JobView(
            id=r["id"],
            name=r["name"],
            service_id=r["service_id"],
            slurm_job_id=r["slurm_job_id"],
            state=r["state"],
            node=r["node"],
            port=int(r["port"]),
            submitted_at=float(r["submitted_at"]),
            started_at=r["started_at"],
            ready_at=r["ready_at"],
            draining_at=r["draining_at"],
            walltime_limit=r["walltime_limit"],
            health_failures=int(r["health_failures"] or 0),
            end_reason=r["end_reason"],
            replaces_job_id=r["replaces_job_id"],
            gpus=int(r["gpus"] or 0),
            in_flight=per_job[r["id"]],
            spec=r["spec"],
        )
        for r in job_rows
    ]
    return Snapshot(services, jobs, dead)


def read_slurm(
    slurm: SlurmClient, prefix: str, jobs: list[JobView]
) -> tuple[list[SlurmJob], dict[int, SlurmJob | None]]:
    """One ``squeue`` for all our jobs; ``scontrol`` only for live rows that left the queue.

    Raises SlurmError when the queue cannot be read: that is never "no jobs".
    """
    queue = slurm.queue(prefix)
    seen = {j.job_id for j in queue}
    info: dict[int, SlurmJob | None] = {}
    for job in jobs:
        if job.slurm_job_id is None or job.slurm_job_id in seen or len(info) >= MAX_JOB_INFO:
            continue
        try:
            info[job.slurm_job_id] = slurm.job_info(job.slurm_job_id)
        except SlurmError:
            info[job.slurm_job_id] = None  # the queue said it is gone; only the reason is unknown
    return queue, info


def probe_targets(jobs: list[JobView], queue: list[SlurmJob]) -> list[ProbeTarget]:
    """``GET /`` for running jobs not yet ready, ``GET /health`` for ready ones."""
    by_id = {j.job_id: j for j in queue}
    by_name = {j.name: j for j in queue if not j.is_finished}
    targets = []
    for job in jobs:
        sj = by_id.get(job.slurm_job_id) if job.slurm_job_id is not None else by_name.get(job.name)
        if sj is None or not sj.is_running or not sj.node:
            continue
        if job.state in (JobState.SUBMITTING.value, JobState.PENDING.value, JobState.STARTING.value):
            targets.append(ProbeTarget(job.id, sj.node, job.port, "/"))
        elif job.state == JobState.READY.value:
            targets.append(ProbeTarget(job.id, sj.node, job.port, "/health"))
    return targets
