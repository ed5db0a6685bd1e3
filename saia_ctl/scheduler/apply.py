"""Acting on a plan: record intents (one short write), call Slurm outside it, record outcomes.

Crash safety: a new job's row (state submitting, port and secret chosen) is
committed before ``sbatch`` runs and carries the job name, so a tick killed
between ``sbatch`` and the outcome write leaves a row the next tick adopts by
name. A job is marked ended only after ``scancel`` succeeded; a failed
``scancel`` leaves it draining, and the next tick tries again.
"""

from __future__ import annotations

import json
import os
import secrets
import time
import uuid
from dataclasses import dataclass

from sqlalchemy import Engine, bindparam, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..config import slurm_options
from ..db import read_session, write_session
from ..models import JobState, Outcome
from ..settings import Settings
from ..slurm import SlurmClient, SlurmError
from .names import job_name
from .views import Action, ActionKind, Cancel, EndReason, JobChange, Plan, SubmitReason

# The columns a job change may set: the fields JobChange declares (each a column
# of ``jobs``; a test checks it against the schema).
JOB_CHANGE_COLUMNS = frozenset(JobChange.__dataclass_fields__)


class NoFreePort(Exception):
    """Every port of the range is held by a live job."""


class UnknownJobField(ValueError):
    """A job change names a field that is no column the planner may set: a bug, never dropped."""


def update_job(s: Session, job_id: int, change: JobChange) -> None:
    """Write one job change to its live row; a field that is no settable column raises."""
    cols = change.columns()
    unknown = sorted(set(cols) - JOB_CHANGE_COLUMNS)
    if unknown:
        raise UnknownJobField(f"job {job_id}: cannot set {', '.join(unknown)} (no such column of jobs)")
    if not cols:
        return
    assignments = ", ".join(f"{k} = :{k}" for k in cols)
    s.execute(
        text(f"UPDATE jobs SET {assignments} WHERE id = :_id AND ended_at IS NULL"),
        {**cols, "_id": job_id},
    )


@dataclass(frozen=True)
class NewJob:
    job_id: int
    name: str
    service_id: str
    sbatch: str
    port: int
    secret: str
    reason: SubmitReason
    replaces_job_id: int | None
    slurm_options: tuple[str, ...] = ()  # the service's account/partition/qos/reservation


def lowest_free_port(held: set[int], port_range: tuple[int, int]) -> int:
    low, high = port_range
    for port in range(low, high + 1):
        if port not in held:
            return port
    raise NoFreePort(f"no free port in {low}-{high}: {len(held)} live jobs hold them")


def insert_job(
    s: Session,
    service_id: str,
    prefix: str,
    port_range: tuple[int, int],
    now: float,
    replaces: int | None,
    held: set[int],
) -> tuple[int, str, int, str]:
    """Insert a job row in state submitting with the lowest free port (the unique index decides)."""
    secret = secrets.token_urlsafe(32)
    for _ in range(port_range[1] - port_range[0] + 1):
        port = lowest_free_port(held, port_range)
        try:
            with s.begin_nested():
                result = s.connection().execute(
                    text(
                        "INSERT INTO jobs (name, service_id, state, port, secret, submitted_at, gpus, "
                        "health_failures, replaces_job_id, spec) VALUES (:name, :sid, :state, :port, :secret, "
                        ":now, 0, 0, :rep, (SELECT spec FROM services WHERE id = :sid))"
                    ),
                    {
                        "name": f"{prefix}_new_{uuid.uuid4().hex}",
                        "sid": service_id,
                        "state": JobState.SUBMITTING.value,
                        "port": port,
                        "secret": secret,
                        "now": now,
                        "rep": replaces,
                    },
                )
        except IntegrityError:
            held.add(port)  # a live job we did not know of holds it: pick again
            continue
        job_id = int(result.lastrowid)
        name = job_name(prefix, job_id, service_id)
        s.execute(text("UPDATE jobs SET name = :n WHERE id = :id"), {"n": name, "id": job_id})
        held.add(port)
        return job_id, name, port, secret
    raise NoFreePort(f"no free port in {port_range[0]}-{port_range[1]}")


def _slurm_options(s: Session, service_ids: set[str]) -> dict[str, tuple[str, ...]]:
    """The sbatch options of the services' optional Slurm keys (from their stored config)."""
    rows = s.execute(
        text("SELECT id, config_json FROM services WHERE id IN :ids").bindparams(
            bindparam("ids", expanding=True)
        ),
        {"ids": sorted(service_ids)},
    ).all()
    out: dict[str, tuple[str, ...]] = {}
    for r in rows:
        try:
            raw = json.loads(r.config_json or "{}")
        except ValueError:
            raw = {}
        out[str(r.id)] = slurm_options(raw)
    return out


def record_intents(
    engine: Engine,
    plan: Plan,
    settings: Settings,
    now: float,
    dead_requests: list[tuple[int, str]],
) -> tuple[list[NewJob], list[str]]:
    """One write transaction: job transitions, service states, closed requests, new job rows."""
    new_jobs: list[NewJob] = []
    errors: list[str] = []
    prefix = settings.job_prefix
    port_range = settings.port_range
    with write_session(engine) as s:
        for job_id, change in plan.job_changes.items():
            update_job(s, job_id, change)
        for u in plan.service_updates:
            params = {
                "sid": u.service_id,
                "avg": u.load_avg,
                "at": u.sampled_at,
                "target": u.target,
                "lower": u.lower_since,
                "busy": u.last_busy_at,
            }
            n = (
                s.connection()
                .execute(
                    text(
                        "UPDATE service_states SET load_avg = :avg, sampled_at = :at, target = :target, "
                        "lower_since = :lower, last_busy_at = :busy WHERE service_id = :sid"
                    ),
                    params,
                )
                .rowcount
            )
            if not n:
                s.execute(
                    text(
                        "INSERT INTO service_states (service_id, load_avg, sampled_at, target, lower_since, "
                        "last_busy_at) VALUES (:sid, :avg, :at, :target, :lower, :busy)"
                    ),
                    params,
                )
        for rid, why in dead_requests:
            s.execute(
                text(
                    "UPDATE requests SET ended_at = :now, outcome = :aborted, error = :why "
                    "WHERE id = :id AND ended_at IS NULL"
                ),
                {"now": now, "why": why, "id": rid, "aborted": Outcome.ABORTED.value},
            )
        if plan.submits:
            held = {int(p) for p in s.execute(text("SELECT port FROM jobs WHERE ended_at IS NULL")).scalars()}
            options = _slurm_options(s, {sub.service_id for sub in plan.submits})
            for sub in plan.submits:
                try:
                    job_id, name, port, secret = insert_job(
                        s, sub.service_id, prefix, port_range, now, sub.replaces_job_id, held
                    )
                except NoFreePort as e:
                    errors.append(f"{sub.service_id}: {e}")
                    continue
                new_jobs.append(
                    NewJob(
                        job_id,
                        name,
                        sub.service_id,
                        sub.sbatch,
                        port,
                        secret,
                        sub.reason,
                        sub.replaces_job_id,
                        options.get(sub.service_id, ()) + sub.extra_args,
                    )
                )
    return new_jobs, errors


def in_flight_of(engine: Engine, job_ids: list[int]) -> dict[int, int]:
    """Requests in flight per job, read after the drain was committed."""
    if not job_ids:
        return {}
    with read_session(engine) as s:
        rows = s.execute(
            text(
                "SELECT job_id, count(*) AS n FROM requests WHERE ended_at IS NULL AND job_id IN :ids GROUP BY job_id"
            ).bindparams(bindparam("ids", expanding=True)),
            {"ids": job_ids},
        ).all()
    return {int(r.job_id): int(r.n) for r in rows}


@dataclass
class Outcomes:
    submitted: list[tuple[NewJob, int]]  # (job, slurm id)
    submit_failed: list[tuple[NewJob, str]]
    not_submitted: list[NewJob]  # the tick ran out of time first
    cancelled: list[Cancel]
    cancel_failed: list[tuple[Cancel, str]]
    skipped: list[Cancel]  # graceful cancels of jobs that got a request after all


# Options every backend job is submitted with (they override the script's #SBATCH lines).
SUBMIT_ARGS = ("--no-requeue",)


@dataclass(frozen=True)
class SubmitPlace:
    """Where a backend job runs and writes its output, and the options it is submitted
    with: one declaration for the tick and for `saia-ctl doctor`'s ``sbatch --test-only``."""

    workdir: str
    output: str
    extra_args: tuple[str, ...] = SUBMIT_ARGS


def submit_place(settings: Settings) -> SubmitPlace:
    return SubmitPlace(workdir=settings.jobs_dir, output=f"{settings.jobs_dir}/%x-%j.out")


def call_slurm(
    engine: Engine,
    slurm: SlurmClient,
    settings: Settings,
    cancels: list[Cancel],
    new_jobs: list[NewJob],
    deadline: float,
) -> Outcomes:
    """scancel, then sbatch, outside any transaction; stops submitting at the deadline."""
    out = Outcomes([], [], [], [], [], [])
    graceful = [c.job_id for c in cancels if c.graceful and c.job_id is not None]
    busy = in_flight_of(engine, graceful)
    for c in cancels:
        if c.graceful and c.job_id is not None and busy.get(c.job_id, 0) > 0:
            out.skipped.append(c)
            continue
        try:
            slurm.cancel(c.slurm_job_id)
        except SlurmError as e:
            out.cancel_failed.append((c, str(e)))
        else:
            out.cancelled.append(c)
    if new_jobs:
        os.makedirs(settings.jobs_dir, exist_ok=True)
    place = submit_place(settings)
    for job in new_jobs:
        if time.monotonic() >= deadline:
            out.not_submitted.append(job)
            continue
        try:
            slurm_id = slurm.submit(
                job.sbatch,
                name=job.name,
                port=job.port,
                env={"SAIA_API_KEY": job.secret, "SAIA_PORT": str(job.port), "SAIA_SBATCH": job.sbatch},
                workdir=place.workdir,
                output=place.output,
                # A job lost with its node must end, not wait ~2 min in the queue
                # for its requeue (BeginTime): the next tick submits a fresh one.
                extra_args=place.extra_args + job.slurm_options,
            )
        except SlurmError as e:
            out.submit_failed.append((job, str(e)))
        else:
            out.submitted.append((job, slurm_id))
    return out


def record_outcomes(engine: Engine, out: Outcomes, now: float) -> list[Action]:
    """One write transaction with what Slurm did; returns the actions to log."""
    actions: list[Action] = []
    with write_session(engine) as s:
        for job, slurm_id in out.submitted:
            s.execute(
                text(
                    "UPDATE jobs SET slurm_job_id = :sid, state = CASE WHEN state = :submitting "
                    "THEN :pending ELSE state END WHERE id = :id AND ended_at IS NULL"
                ),
                {
                    "sid": slurm_id,
                    "id": job.job_id,
                    "submitting": JobState.SUBMITTING.value,
                    "pending": JobState.PENDING.value,
                },
            )
            actions.append(
                Action(
                    ActionKind.SUBMIT,
                    service=job.service_id,
                    job=job.job_id,
                    slurm_job_id=slurm_id,
                    port=job.port,
                    reason=job.reason,
                    replaces=job.replaces_job_id or None,
                )
            )
        for job, error in out.submit_failed:
            # Left in state submitting: if sbatch did create the job (a timeout), the next
            # tick adopts it by name; otherwise it ends the row as submit-failed.
            s.execute(
                text("UPDATE jobs SET last_error = :e WHERE id = :id"),
                {"e": f"sbatch: {error}", "id": job.job_id},
            )
            actions.append(Action(ActionKind.SUBMIT, service=job.service_id, job=job.job_id, error=error))
        for job in out.not_submitted:
            s.execute(
                text(
                    "UPDATE jobs SET state = :ended, ended_at = :now, end_reason = :reason, "
                    "last_error = 'the tick ran out of time before sbatch' WHERE id = :id"
                ),
                {
                    "now": now,
                    "id": job.job_id,
                    "ended": JobState.ENDED.value,
                    "reason": EndReason.NOT_SUBMITTED.value,
                },
            )
            actions.append(Action(ActionKind.SUBMIT, service=job.service_id, job=job.job_id, error="timeout"))
        for c in out.cancelled:
            if c.job_id is not None:
                s.execute(
                    text(
                        "UPDATE jobs SET state = :ended, ended_at = :now, "
                        "end_reason = coalesce(end_reason, :r) WHERE id = :id AND ended_at IS NULL"
                    ),
                    {"now": now, "r": str(c.reason), "id": c.job_id, "ended": JobState.ENDED.value},
                )
        for c, error in out.cancel_failed:
            if c.job_id is not None:
                s.execute(
                    text("UPDATE jobs SET last_error = :e WHERE id = :id"),
                    {"e": f"scancel: {error}", "id": c.job_id},
                )
            actions.append(Action(ActionKind.CANCEL, slurm_job_id=c.slurm_job_id, error=error))
        for c in out.skipped:
            actions.append(Action(ActionKind.CANCEL, job=c.job_id, skipped="a request arrived"))
    return actions
