"""Plain snapshots the planner works on (no ORM, no I/O), and what it returns.

The contracts between the tick's steps: ``Observation`` goes into the planner;
``Plan`` (job changes, submits, cancels, service updates, actions) comes out
and is applied by ``apply.py``. Times are epoch seconds (floats), as stored.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, fields
from typing import Any

from ..sacct import SacctRecord
from ..slurm import SlurmJob


class EndReason(enum.StrEnum):
    """Why a job ended, was drained or cancelled (``jobs.end_reason``; shown in reports).

    The values are stored in the database: never rename one. A job that Slurm
    ended in a state not listed here gets that state in lower case instead.
    """

    # --- Slurm ended the job (its final state)
    COMPLETED = "completed"  # the batch script exited 0 (the service stopped by itself)
    CANCELLED = "cancelled"  # scancel by someone other than this tick
    TIMEOUT = "timeout"  # Slurm killed it at its walltime
    FAILED = "failed"  # the batch script exited non-zero
    NODE_FAILURE = "node-failure"  # its node went down (Slurm's NODE_FAIL)
    PREEMPTED = "preempted"  # a higher-priority job took its resources
    OUT_OF_MEMORY = "out-of-memory"  # killed by the memory limit
    BOOT_FAILURE = "boot-failure"  # the node could not boot for it (BOOT_FAIL)
    DEADLINE = "deadline"  # its --deadline passed before it could run
    # --- the row lost its Slurm job
    GONE = "gone"  # neither squeue nor scontrol knows its Slurm id any more
    SUBMIT_FAILED = "submit-failed"  # the row was written but sbatch never created the job
    NOT_SUBMITTED = "not-submitted"  # the tick ran out of time before calling sbatch
    # --- the planner drained or cancelled it
    READY_TIMEOUT = "ready-timeout"  # never answered GET / within the service's ready_timeout
    UNHEALTHY = "unhealthy"  # failed health_failures health checks in a row
    SURPLUS = "surplus"  # a pending or starting job more than the target wants
    SCALE_DOWN = "scale-down"  # a ready job more than the target wants, after the cool-down
    IDLE = "idle"  # no request for idle_timeout: the service scales to zero
    DISABLED = "disabled"  # its service was disabled
    ROTATED = "rotated"  # its replacement became ready (walltime rotation, or a changed batch script)
    OUTDATED = "outdated"  # not serving yet, and its service's batch script changed: submitted anew
    EXPIRING = "expiring"  # near its walltime end, and no replacement is needed
    WALLTIME_ENDING = "walltime-ending"  # ready but within DRAIN_BEFORE_END of its walltime end
    DRAINED = "drained"  # draining without a recorded reason (set by hand or an old version)
    ORPHAN = "orphan"  # a Slurm job with our name prefix that no live row owns


class SubmitReason(enum.StrEnum):
    """Why a job is submitted (logged with its submit action)."""

    SCALE_UP = "scale-up"  # the load's target is above the jobs there are
    DEMAND = "demand"  # requests wait, or an on-demand start was asked for
    ROTATION = "rotation"  # it replaces a ready job near its walltime end (or a maintenance window)


class ActionKind(enum.StrEnum):
    """What a tick did to a job, as logged in ``ticks.actions``."""

    ADOPT = "adopt"  # a row written before sbatch got its Slurm id (found by name)
    END = "end"  # the row was closed: its Slurm job is finished or gone
    READY = "ready"  # the job answered GET /: requests may be routed to it
    DRAIN = "drain"  # the job was taken out of routing
    REVIVE = "revive"  # a drained job still running was taken back into routing
    BACKOFF = "backoff"  # no submission: recent jobs failed before becoming ready
    CANCEL = "cancel"  # scancel (planned, failed or skipped)
    SUBMIT = "submit"  # sbatch (done, failed or not reached)


@dataclass(frozen=True)
class Action:
    """One line of a tick's action log; ``as_dict`` is its stored JSON form."""

    kind: ActionKind
    service: str | None = None
    job: int | None = None  # jobs.id
    slurm_job_id: int | None = None
    name: str | None = None  # Slurm job name (orphans)
    port: int | None = None
    reason: str | None = None  # an EndReason (maybe + ", walltime ending"), or a SubmitReason
    replaces: int | None = None  # jobs.id of the job a rotation replaces
    detail: str | None = None
    probe: str | None = None  # the probe's answer
    failed_starts: int | None = None
    seconds: float | None = None  # back-off left
    error: str | None = None  # the Slurm call failed
    skipped: str | None = None  # why a graceful cancel was not done
    watch: bool | None = None  # found ready while watching for waiting requests

    def as_dict(self) -> dict[str, Any]:
        """``{"action": kind, ...}`` with the fields that are set, in declaration order.

        An ``end`` action always carries ``slurm_job_id`` (null for a row that never
        reached Slurm), as the log always had.
        """
        out: dict[str, Any] = {"action": self.kind.value}
        for name in _ACTION_FIELDS:
            value = getattr(self, name)
            if value is not None or (name == "slurm_job_id" and self.kind is ActionKind.END):
                out[name] = value.value if isinstance(value, enum.Enum) else value
        return out


_ACTION_FIELDS = tuple(f.name for f in fields(Action) if f.name != "kind")


@dataclass(frozen=True)
class ServiceView:
    """A service, its remembered scheduler state and its load right now."""

    id: str
    enabled: bool  # in config.json and not drained or disabled by hand (`saia-ctl services`)
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
    spec: str | None = None  # fingerprint of what shapes its jobs now (config.job_spec)
    maintenance_until: float | None = None  # end of the active MAINT reservation it is down for
    last_walltime: int | None = None  # walltime limit of its newest job that had one (seconds)
    hold_until: float | None = None  # a new job would run into a maintenance window: none before this


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
    gpus: int = 0  # as last recorded from Slurm
    in_flight: int = 0
    spec: str | None = None  # its service's spec when it was submitted (None: before fingerprints)


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
    records: dict[int, SacctRecord] = field(default_factory=dict)  # sacct, by Slurm id
    # Ready jobs a coming maintenance window ends (jobs.id -> the window's nodes): rotated,
    # their replacements submitted excluding those nodes (maintenance.move_off).
    move_off: dict[int, tuple[str, ...]] = field(default_factory=dict)


class _Unset(enum.Enum):
    UNSET = "unset"


UNSET = _Unset.UNSET  # a JobChange field left as it is (None is a value: it writes NULL)


@dataclass(slots=True)
class JobChange:
    """Column values the planner sets on one live job row; fields left UNSET are not written.

    Every field is a column of ``jobs`` (a test checks it). ``slots``: setting a
    misspelt field raises AttributeError instead of adding it; ``apply`` also
    refuses a field that is not a known column.
    """

    state: str | _Unset = UNSET
    node: str | _Unset | None = UNSET
    slurm_job_id: int | _Unset | None = UNSET
    started_at: float | _Unset | None = UNSET
    ready_at: float | _Unset | None = UNSET
    draining_at: float | _Unset | None = UNSET
    ended_at: float | _Unset | None = UNSET
    walltime_limit: int | _Unset | None = UNSET
    gpus: int | _Unset = UNSET
    end_reason: str | _Unset | None = UNSET
    last_error: str | _Unset | None = UNSET
    health_failures: int | _Unset = UNSET
    slurm_state: str | _Unset | None = UNSET
    slurm_exit_code: str | _Unset | None = UNSET
    slurm_started_at: float | _Unset | None = UNSET
    slurm_ended_at: float | _Unset | None = UNSET
    slurm_gpus: int | _Unset | None = UNSET
    slurm_account: str | _Unset | None = UNSET

    def columns(self) -> dict[str, Any]:
        """The fields that are set, by name (a subclass's fields included: apply checks them)."""
        return {name: v for name in self.__dataclass_fields__ if (v := getattr(self, name)) is not UNSET}

    def __bool__(self) -> bool:
        return any(getattr(self, name) is not UNSET for name in self.__dataclass_fields__)


@dataclass(frozen=True)
class Submit:
    service_id: str
    sbatch: str
    reason: SubmitReason
    replaces_job_id: int | None = None
    extra_args: tuple[str, ...] = ()  # further sbatch options (e.g. --exclude before a maintenance window)


@dataclass(frozen=True)
class Cancel:
    slurm_job_id: int
    reason: str  # an EndReason, or one with ", walltime ending" appended
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
    """The planner's decisions for one tick (built up while planning, then only read)."""

    job_changes: dict[int, JobChange] = field(default_factory=dict)  # by jobs.id
    submits: list[Submit] = field(default_factory=list)
    cancels: list[Cancel] = field(default_factory=list)
    service_updates: list[ServiceUpdate] = field(default_factory=list)
    summary: list[str] = field(default_factory=list)  # one line per service
    actions: list[Action] = field(default_factory=list)
