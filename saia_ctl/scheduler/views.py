"""Plain snapshots the planner works on (no ORM, no I/O), and what it returns.

Times are epoch seconds (floats), as stored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..slurm import SlurmJob


@dataclass(frozen=True)
class ServiceView:
    """A service, its remembered scheduler state and its load right now."""

    id: str
    enabled: bool
    sbatch: str
    inferences_per_instance: int
    minimum: int
    maximum: int
    job_expiry_time: int
    ready_timeout: int
    idle_timeout: int
    scale_down_cooldown: int
    health_failures: int
    load_avg: float = 0.0
    sampled_at: float | None = None
    lower_since: float | None = None
    last_busy_at: float | None = None
    demand_at: float | None = None
    last_request_at: float | None = None  # newest requests.started_at
    last_submit_at: float | None = None  # newest jobs.submitted_at, ended jobs included
    in_flight: int = 0  # requests with ended_at IS NULL
    waiting: int = 0  # ... of which have no backend yet (job_id NULL)
    failed_starts: int = 0  # jobs in a row that ended without ever becoming ready
    last_failed_at: float | None = None  # when the newest of those ended


@dataclass(frozen=True)
class JobView:
    """A live job row (``ended_at IS NULL``) with its in-flight request count."""

    id: int
    name: str
    service_id: str
    slurm_job_id: int | None
    state: str
    node: str | None
    port: int
    submitted_at: float
    started_at: float | None = None
    ready_at: float | None = None
    draining_at: float | None = None
    walltime_limit: int | None = None
    health_failures: int = 0
    end_reason: str | None = None
    replaces_job_id: int | None = None
    in_flight: int = 0


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    detail: str  # the HTTP status, or why there was none


@dataclass
class Observation:
    """Everything one tick saw: the database snapshot, Slurm's queue, the probes."""

    now: float
    services: list[ServiceView]
    jobs: list[JobView]
    queue: list[SlurmJob]
    job_info: dict[int, SlurmJob | None] = field(default_factory=dict)  # live rows missing from queue
    probes: dict[int, ProbeResult] = field(default_factory=dict)  # by jobs.id


@dataclass(frozen=True)
class Submit:
    service_id: str
    sbatch: str
    reason: str
    replaces_job_id: int | None = None


@dataclass(frozen=True)
class Cancel:
    slurm_job_id: int
    reason: str
    job_id: int | None = None  # None: an orphan with no live row
    graceful: bool = False  # a drained job: cancel only if still no request in flight


@dataclass(frozen=True)
class ServiceUpdate:
    service_id: str
    load_avg: float
    sampled_at: float
    target: int
    lower_since: float | None
    last_busy_at: float | None


@dataclass
class Plan:
    job_changes: dict[int, dict[str, Any]] = field(default_factory=dict)  # jobs.id -> column values
    submits: list[Submit] = field(default_factory=list)
    cancels: list[Cancel] = field(default_factory=list)
    service_updates: list[ServiceUpdate] = field(default_factory=list)
    summary: list[str] = field(default_factory=list)
    actions: list[dict[str, Any]] = field(default_factory=list)
