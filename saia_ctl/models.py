"""The schema: SQLAlchemy 2 typed models.

Times are stored as UTC epoch seconds (REAL) so that the standard-library
request path (``request_path/``) can read and write them with ``time.time()`` and
plain SQL; the ORM sees timezone-aware UTC ``datetime`` objects.
``request_path/store.py`` repeats the column names it uses; ``tests/test_schema_agreement.py``
proves the two agree.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    CheckConstraint,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from .accounting.row_sql import LONG_OR_OPEN

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCTimestamp(TypeDecorator[datetime]):
    """Aware UTC datetime in Python, epoch seconds (REAL) in the database."""

    impl = Float
    cache_ok = True

    def process_bind_param(self, value: datetime | float | None, dialect: Dialect) -> float | None:
        if value is None:
            return None
        if isinstance(value, (int, float)):
            return float(value)
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.timestamp()

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return datetime.fromtimestamp(float(value), tz=UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCTimestamp()}


class JobState(enum.StrEnum):
    SUBMITTING = "submitting"  # row written, sbatch not yet known to have succeeded
    PENDING = "pending"  # in the Slurm queue, not running
    STARTING = "starting"  # running, the service does not answer yet
    READY = "ready"  # answers GET /; receives requests
    DRAINING = "draining"  # gets no new requests; cancelled once its in-flight requests end
    ENDED = "ended"  # gone from Slurm, or given up; see end_reason


LIVE_JOB_STATES = (
    JobState.SUBMITTING,
    JobState.PENDING,
    JobState.STARTING,
    JobState.READY,
    JobState.DRAINING,
)


class Outcome(enum.StrEnum):
    OK = "ok"  # the backend answered with a status below 400 and the answer was delivered whole
    ERROR = "error"  # 4xx/5xx, no backend, or the backend broke off mid-answer
    ABORTED = "aborted"  # the client (SSH session) went away before the answer ended


def _values(e: type[enum.Enum]) -> str:
    return ", ".join(f"'{m.value}'" for m in e)


class Service(Base):
    """A service from config.json; updated in place by `saia-ctl init`, never deleted."""

    __tablename__ = "services"

    id: Mapped[str] = mapped_column(String(256), primary_key=True)
    name: Mapped[str] = mapped_column(String(512))
    owned_by: Mapped[str] = mapped_column(String(512))
    input: Mapped[str] = mapped_column(Text, default="[]")  # JSON list
    output: Mapped[str] = mapped_column(Text, default="[]")  # JSON list
    sbatch: Mapped[str] = mapped_column(Text)  # absolute path of the batch script
    inferences_per_instance: Mapped[int] = mapped_column(Integer)
    minimum_number_instances: Mapped[int] = mapped_column(Integer)
    maximum_number_instances: Mapped[int] = mapped_column(Integer)
    job_expiry_time: Mapped[int] = mapped_column(Integer)  # seconds
    # saia-ctl's optional keys (see README, "Service keys")
    ready_timeout: Mapped[int] = mapped_column(Integer)  # seconds a job may take to answer GET /
    idle_timeout: Mapped[int] = mapped_column(Integer)  # seconds idle before scaling to zero (min 0)
    scale_down_cooldown: Mapped[int] = mapped_column(Integer)  # seconds the target must stay lower
    health_failures: Mapped[int] = mapped_column(Integer)  # failed health checks in a row before replacing
    request_hold_time: Mapped[float] = mapped_column(Float)  # seconds a request waits for a starting job
    enabled: Mapped[bool] = mapped_column(default=True)  # false once dropped from config.json
    # set by hand (`saia-ctl services ...`), never by config.json: active, draining or disabled
    admin_state: Mapped[str] = mapped_column(String(16), default="active", server_default="active")
    spec: Mapped[str | None] = mapped_column(
        String(64)
    )  # fingerprint of what shapes its jobs (config.job_spec)
    config_json: Mapped[str] = mapped_column(Text)  # the service's object as imported, unknown keys kept
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]

    jobs: Mapped[list[Job]] = relationship(back_populates="service")

    __table_args__ = (
        CheckConstraint("inferences_per_instance >= 1", name="inferences_per_instance"),
        CheckConstraint(
            "minimum_number_instances >= 0 AND minimum_number_instances <= maximum_number_instances",
            name="instances",
        ),
        CheckConstraint("job_expiry_time >= 0", name="job_expiry_time"),
    )


class ServiceState(Base):
    """What the scheduler remembers about a service between ticks."""

    __tablename__ = "service_states"

    service_id: Mapped[str] = mapped_column(ForeignKey("services.id"), primary_key=True)
    load_avg: Mapped[float] = mapped_column(Float, default=0.0)  # moving average of in-flight requests
    sampled_at: Mapped[datetime | None]
    target: Mapped[int] = mapped_column(Integer, default=0)  # last target the planner chose
    lower_since: Mapped[datetime | None]  # since when the wanted count has been below the live count
    last_busy_at: Mapped[datetime | None]  # last time a request was in flight
    demand_at: Mapped[datetime | None]  # last request that found no ready job (written by the request path)
    context_length: Mapped[int | None] = mapped_column(Integer)  # learned from the backend's /v1/models
    maintenance_until: Mapped[datetime | None]  # end of the MAINT reservation it is down for (by the tick)
    maintenance_name: Mapped[str | None] = mapped_column(String(256))  # that reservation's name


class Job(Base):
    """One Slurm batch job we submitted for a service."""

    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(300), unique=True)  # Slurm job name; leads back to this row
    service_id: Mapped[str] = mapped_column(ForeignKey("services.id"), index=True)
    slurm_job_id: Mapped[int | None] = mapped_column(Integer, index=True)
    state: Mapped[str] = mapped_column(String(16), default=JobState.SUBMITTING.value)
    node: Mapped[str | None] = mapped_column(String(256))
    port: Mapped[int] = mapped_column(Integer)
    secret: Mapped[str] = mapped_column(String(128))  # bearer token the backend requires
    submitted_at: Mapped[datetime]
    started_at: Mapped[datetime | None]
    ready_at: Mapped[datetime | None]
    draining_at: Mapped[datetime | None]
    ended_at: Mapped[datetime | None]
    walltime_limit: Mapped[int | None] = mapped_column(Integer)  # seconds; None = unlimited/unknown
    gpus: Mapped[int] = mapped_column(Integer, default=0)  # GPUs Slurm allocated
    end_reason: Mapped[str | None] = mapped_column(String(64))
    last_error: Mapped[str | None] = mapped_column(Text)
    health_failures: Mapped[int] = mapped_column(Integer, default=0)
    replaces_job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"))  # rotation
    # Slurm's accounting record (sacct) once the job left the queue; NULL where sacct
    # was not available. started_at/ended_at/gpus above stay what the ticks observed.
    slurm_state: Mapped[str | None] = mapped_column(String(32))  # e.g. COMPLETED, OUT_OF_MEMORY
    slurm_exit_code: Mapped[str | None] = mapped_column(String(16))  # "RC:SIGNAL"
    slurm_started_at: Mapped[datetime | None]
    slurm_ended_at: Mapped[datetime | None]
    slurm_gpus: Mapped[int | None] = mapped_column(Integer)
    slurm_account: Mapped[str | None] = mapped_column(String(128))
    slurm_reason: Mapped[str | None] = mapped_column(String(64))  # squeue's reason while pending
    slurm_start: Mapped[datetime | None]  # Slurm's expected start while pending (squeue --start)
    spec: Mapped[str | None] = mapped_column(String(64))  # the service's spec when submitted

    service: Mapped[Service] = relationship(back_populates="jobs")

    __table_args__ = (
        CheckConstraint(f"state IN ({_values(JobState)})", name="state"),
        CheckConstraint("(state = 'ended') = (ended_at IS NOT NULL)", name="ended"),
        # A port belongs to at most one live job: enforced here, not only in code.
        Index(
            "uq_jobs_live_port",
            "port",
            unique=True,
            sqlite_where=text("ended_at IS NULL"),
        ),
        Index("ix_jobs_live_service", "service_id", "state", sqlite_where=text("ended_at IS NULL")),
    )


class Request(Base):
    """One request that passed validation (written by the request path)."""

    __tablename__ = "requests"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    inference_id: Mapped[str] = mapped_column(String(300), unique=True)
    user_id: Mapped[str] = mapped_column(String(256))
    service_id: Mapped[str] = mapped_column(ForeignKey("services.id"))
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"))
    method: Mapped[str] = mapped_column(String(16))
    path: Mapped[str] = mapped_column(String(300))
    started_at: Mapped[datetime]
    first_byte_at: Mapped[datetime | None]
    ended_at: Mapped[datetime | None]
    status: Mapped[int | None] = mapped_column(Integer)  # HTTP status sent to the client
    outcome: Mapped[str | None] = mapped_column(String(16))  # None while in flight
    bytes_in: Mapped[int] = mapped_column(Integer, default=0)
    bytes_out: Mapped[int] = mapped_column(Integer, default=0)
    input_tokens: Mapped[int | None] = mapped_column(Integer)
    output_tokens: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    handler_host: Mapped[str] = mapped_column(String(256))  # login node running the handler
    handler_pid: Mapped[int] = mapped_column(Integer)  # so a tick can close rows of dead handlers

    __table_args__ = (
        CheckConstraint(f"outcome IS NULL OR outcome IN ({_values(Outcome)})", name="outcome"),
        CheckConstraint("(outcome IS NULL) = (ended_at IS NULL)", name="ended"),
        Index("ix_requests_started_at", "started_at"),
        Index("ix_requests_service_started", "service_id", "started_at"),
        Index("ix_requests_user_started", "user_id", "started_at"),
        Index("ix_requests_in_flight", "service_id", "job_id", sqlite_where=text("ended_at IS NULL")),
    )


class SchedulerLease(Base):
    """Single row: who runs the tick now. Expires, so a killed tick cannot wedge the next."""

    __tablename__ = "scheduler_lease"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    holder: Mapped[str | None] = mapped_column(String(256))
    acquired_at: Mapped[datetime | None]
    expires_at: Mapped[datetime | None]

    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)


class Tick(Base):
    """Log of one scheduler tick: what it saw, decided and did."""

    __tablename__ = "ticks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    started_at: Mapped[datetime] = mapped_column(index=True)
    duration: Mapped[float | None] = mapped_column(Float)  # seconds
    holder: Mapped[str] = mapped_column(String(256))
    summary: Mapped[str] = mapped_column(Text, default="")  # one line per service, human readable
    actions: Mapped[str] = mapped_column(Text, default="[]")  # JSON list of what was done
    error: Mapped[str | None] = mapped_column(Text)


# --- Accounting rollups (written by `saia-ctl db prune`, read by `saia-ctl report`) ---
#
# A month's figures are kept here before its request rows are deleted, so a
# report of a pruned month comes out byte-identical. Every table is keyed by
# the month ("YYYY-MM") and the time zone its window was cut in.


class RollupMonth(Base):
    """A month whose figures are kept in the rollup tables (its requests may be pruned)."""

    __tablename__ = "rollup_months"

    month: Mapped[str] = mapped_column(String(7), primary_key=True)
    tz: Mapped[str] = mapped_column(String(64), primary_key=True)
    start_at: Mapped[datetime]  # first instant of the month in tz
    end_at: Mapped[datetime]  # first instant of the next month in tz
    made_at: Mapped[datetime]


class RollupUsage(Base):
    """Request figures of a month per user x service; '' stands for "all users" / "all services"."""

    __tablename__ = "rollup_usage"

    month: Mapped[str] = mapped_column(String(7), primary_key=True)
    tz: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    service_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    requests: Mapped[int] = mapped_column(Integer)
    ok: Mapped[int] = mapped_column(Integer)
    errors: Mapped[int] = mapped_column(Integer)
    errors_4xx: Mapped[int] = mapped_column(Integer)
    errors_5xx: Mapped[int] = mapped_column(Integer)
    aborted: Mapped[int] = mapped_column(Integer)
    in_flight: Mapped[int] = mapped_column(Integer)
    input_tokens: Mapped[int] = mapped_column(Integer)
    output_tokens: Mapped[int] = mapped_column(Integer)
    duration_p50: Mapped[float | None] = mapped_column(Float)  # seconds
    duration_p95: Mapped[float | None] = mapped_column(Float)
    ttfb_p50: Mapped[float | None] = mapped_column(Float)
    ttfb_p95: Mapped[float | None] = mapped_column(Float)
    gpu_seconds: Mapped[float] = mapped_column(Float)  # attributed GPU time, unrounded


class RollupService(Base):
    """GPU figures of a month per service (seconds, unrounded)."""

    __tablename__ = "rollup_services"

    month: Mapped[str] = mapped_column(String(7), primary_key=True)
    tz: Mapped[str] = mapped_column(String(64), primary_key=True)
    service_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    jobs: Mapped[int] = mapped_column(Integer)
    jobs_open: Mapped[int] = mapped_column(Integer)
    job_seconds: Mapped[float] = mapped_column(Float)
    gpu_seconds: Mapped[float] = mapped_column(Float)
    idle_gpu_seconds: Mapped[float] = mapped_column(Float)
    idle_ready_gpu_seconds: Mapped[float] = mapped_column(Float)
    ready_seconds: Mapped[float] = mapped_column(Float)
    submit_to_ready_median: Mapped[float | None] = mapped_column(Float)


class RollupDay(Base):
    """Requests per local day and service of a month (the report's chart)."""

    __tablename__ = "rollup_days"

    month: Mapped[str] = mapped_column(String(7), primary_key=True)
    tz: Mapped[str] = mapped_column(String(64), primary_key=True)
    service_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    day: Mapped[str] = mapped_column(String(10), primary_key=True)  # YYYY-MM-DD in tz
    requests: Mapped[int] = mapped_column(Integer)


class PrunedTotal(Base):
    """Counts of deleted request rows, so the metrics counters never go down."""

    __tablename__ = "pruned_totals"

    service_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    outcome: Mapped[str] = mapped_column(String(16), primary_key=True)  # '' for rows never closed
    requests: Mapped[int] = mapped_column(Integer)
    input_tokens: Mapped[int] = mapped_column(Integer)
    output_tokens: Mapped[int] = mapped_column(Integer)


# --- the accounting ledger (accounting/ledger.py) ---------------------------------------------
#
# A month's figures, kept up to date a closed day (or an hour of the open day) at a time
# so that a report reads them instead of a million request rows. Keyed by the zone the
# days are cut in and the month ("YYYY-MM") in that zone; the cursor says up to where
# the rows are folded.
# Durations are sorted runs of little-endian doubles (seconds). The narrow tables are
# WITHOUT ROWID (no second copy of the key in an index); those with blobs are not.


class LedgerCursor(Base):
    """Everything before ``folded_to`` (a local midnight in ``tz``, or a whole hour of the
    day being folded in pieces) is in the ledger."""

    __tablename__ = "ledger_cursors"

    tz: Mapped[str] = mapped_column(String(64), primary_key=True)
    folded_to: Mapped[datetime]
    # the highest request id when the time before folded_to was folded: a row with a
    # higher id that started before folded_to came late, and the ledger is rewound for it
    max_request_id: Mapped[int] = mapped_column(Integer)
    folded_at: Mapped[datetime]


class _LedgerCounts:
    requests: Mapped[int] = mapped_column(Integer)
    ok: Mapped[int] = mapped_column(Integer)
    errors: Mapped[int] = mapped_column(Integer)
    errors_4xx: Mapped[int] = mapped_column(Integer)
    errors_5xx: Mapped[int] = mapped_column(Integer)
    aborted: Mapped[int] = mapped_column(Integer)
    in_flight: Mapped[int] = mapped_column(Integer)
    input_tokens: Mapped[int] = mapped_column(Integer)
    output_tokens: Mapped[int] = mapped_column(Integer)


class LedgerUser(_LedgerCounts, Base):
    """Folded counters of one user in a month, with all their sorted durations."""

    __tablename__ = "ledger_users"

    tz: Mapped[str] = mapped_column(String(64), primary_key=True)
    month: Mapped[str] = mapped_column(String(7), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    durations: Mapped[bytes] = mapped_column(LargeBinary)  # of ok requests, sorted
    ttfbs: Mapped[bytes] = mapped_column(LargeBinary)  # times to first byte, sorted


class LedgerService(_LedgerCounts, Base):
    """Folded counters of one service in a month, with all its sorted durations."""

    __tablename__ = "ledger_services"

    tz: Mapped[str] = mapped_column(String(64), primary_key=True)
    month: Mapped[str] = mapped_column(String(7), primary_key=True)
    service_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    durations: Mapped[bytes] = mapped_column(LargeBinary)  # of ok requests, sorted
    ttfbs: Mapped[bytes] = mapped_column(LargeBinary)  # times to first byte, sorted


class LedgerGpuBlock(Base):
    """GPU time attributed to the users of a service in a month, in split order, in blocks of
    consecutive users (accounting/shares.py): one user's share reads one block."""

    __tablename__ = "ledger_gpu_blocks"
    __table_args__ = {"sqlite_with_rowid": False}

    tz: Mapped[str] = mapped_column(String(64), primary_key=True)
    month: Mapped[str] = mapped_column(String(7), primary_key=True)
    service_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    first_key: Mapped[str] = mapped_column(Text, primary_key=True)  # its first user's JSON-encoded id
    before_ns: Mapped[int] = mapped_column(Integer)  # the users' of the blocks before it, summed
    # running sums of its users' ns, int64 little-endian (before ``keys``: the service's total
    # is read from its last block without the ids)
    running: Mapped[bytes] = mapped_column(LargeBinary)
    keys: Mapped[str] = mapped_column(Text)  # its users' JSON-encoded ids, each line between newlines


class LedgerDay(Base):
    """Requests of one service on one folded day (the report's chart)."""

    __tablename__ = "ledger_days"
    __table_args__ = {"sqlite_with_rowid": False}

    tz: Mapped[str] = mapped_column(String(64), primary_key=True)
    month: Mapped[str] = mapped_column(String(7), primary_key=True)
    service_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    day: Mapped[str] = mapped_column(String(10), primary_key=True)  # YYYY-MM-DD in tz
    requests: Mapped[int] = mapped_column(Integer)


class LedgerJob(Base):
    """A job's folded idle GPU time in a month (seconds; idle = no request in flight)."""

    __tablename__ = "ledger_jobs"
    __table_args__ = {"sqlite_with_rowid": False}

    tz: Mapped[str] = mapped_column(String(64), primary_key=True)
    month: Mapped[str] = mapped_column(String(7), primary_key=True)
    job_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    idle_gpu_seconds: Mapped[float] = mapped_column(Float)
    idle_ready_gpu_seconds: Mapped[float] = mapped_column(Float)


# Requests in flight, or longer than accounting's LONG_REQUEST: the few a month's report must
# find among rows that started before the month. The index's condition is the accounting
# scan's own text (SQLite uses a partial index only for a WHERE that contains its condition).
# Migration 0002 keeps its own literal.
Index("ix_requests_long", Request.started_at, sqlite_where=text(LONG_OR_OPEN))


# Projects, limits and their counters (issue 13; docs/accounting.md, "Limits and projects").
# The request path (request_path/admission.py) reads and writes them with plain SQL.

LIMIT_SCOPES = ("user", "project", "default")
LIMIT_KINDS = (
    "requests_minute",
    "requests_hour",
    "requests_day",
    "requests_month",
    "concurrent",
    "tokens_day",
    "tokens_month",
    "gpu_hours_month",
)


class Project(Base):
    """A group of users for limits and billing, optionally charged to a Slurm account."""

    __tablename__ = "projects"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    slurm_account: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime]


class ProjectMember(Base):
    """A member of a project: an exact user id, or an fnmatch pattern (``*@uni-x.de``)."""

    __tablename__ = "project_members"
    __table_args__ = {"sqlite_with_rowid": False}

    project: Mapped[str] = mapped_column(ForeignKey("projects.name", ondelete="CASCADE"), primary_key=True)
    member: Mapped[str] = mapped_column(String(256), primary_key=True)


class Limit(Base):
    """One limit: of a user, of a project (all its members together) or the default of each user;
    ``service_id`` '' means every service together."""

    __tablename__ = "limits"

    scope: Mapped[str] = mapped_column(String(8), primary_key=True)
    subject: Mapped[str] = mapped_column(String(256), primary_key=True)  # '' for the defaults
    service_id: Mapped[str] = mapped_column(String(256), primary_key=True)  # '' for all services
    kind: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[float] = mapped_column(Float)

    __table_args__ = (
        CheckConstraint(f"scope IN ({', '.join(repr(s) for s in LIMIT_SCOPES)})", name="scope"),
        CheckConstraint(f"kind IN ({', '.join(repr(k) for k in LIMIT_KINDS)})", name="kind"),
        CheckConstraint("value >= 0", name="value"),
        {"sqlite_with_rowid": False},
    )


class LimitCounter(Base):
    """What a subject ('user:ID' or 'project:NAME') used in the current window of one limit."""

    __tablename__ = "limit_counters"
    __table_args__ = {"sqlite_with_rowid": False}

    subject: Mapped[str] = mapped_column(String(300), primary_key=True)
    service_id: Mapped[str] = mapped_column(String(256), primary_key=True)  # '' for all services
    kind: Mapped[str] = mapped_column(String(32), primary_key=True)
    window: Mapped[str] = mapped_column(String(16))  # the window's key (see admission.window_key)
    value: Mapped[float] = mapped_column(Float)
