"""saia-ctl's GPU time against Slurm's own accounting (sacct), per service and per account.

saia-ctl's figure for a job is the one its report bills: GPUs x (start to end,
or now), clipped to the month, where start and end are Slurm's once the job's
record arrived (``row_sql.JOB_START_SQL``) and what the ticks observed before.
Slurm's is AllocTRES gres/gpu x (Start to End, or now), clipped the same way. Jobs are matched by Slurm job id; a job
on one side only is listed. Pure functions over rows and records: the CLI
fetches both.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from ..sacct import SacctRecord
from ..scheduler.names import parse_job_name
from .figures import dbapi, named
from .gpu import clip
from .months import Window
from .row_sql import JOB_END_SQL, JOB_GPUS_SQL, JOB_START_SQL

UNKNOWN_ACCOUNT = "(unknown)"

_JOBS_SQL = f"""
SELECT id, service_id, slurm_job_id, {JOB_GPUS_SQL} AS gpus, {JOB_START_SQL} AS started_at, {JOB_END_SQL} AS ended_at,
       slurm_account
FROM jobs
WHERE {JOB_START_SQL} IS NOT NULL AND {JOB_START_SQL} < ? AND ({JOB_END_SQL} IS NULL OR {JOB_END_SQL} > ?)
ORDER BY id
"""


@dataclass(frozen=True)
class ObservedJob:
    """A job row as the report bills it (Slurm's times where its record arrived)."""

    id: int
    service: str
    slurm_job_id: int | None
    gpus: int
    started_at: float
    ended_at: float | None
    account: str | None


@dataclass
class ServiceReconciliation:
    service: str
    saia_gpu_seconds: float = 0.0
    slurm_gpu_seconds: float = 0.0  # of the jobs both sides know
    jobs: int = 0  # matched
    saia_only: list[int] = field(default_factory=list)  # Slurm ids (or -row id when none)
    slurm_only: list[int] = field(default_factory=list)

    @property
    def difference_seconds(self) -> float:
        """saia-ctl minus Slurm, over the matched jobs and saia-ctl's unmatched ones."""
        return self.saia_gpu_seconds - self.slurm_gpu_seconds

    @property
    def difference_percent(self) -> float | None:
        if self.slurm_gpu_seconds == 0:
            return None
        return 100.0 * self.difference_seconds / self.slurm_gpu_seconds


def observed_jobs(session: Session, window: Window) -> list[ObservedJob]:
    """Job rows that ran inside the window."""
    rows = named(dbapi(session)).execute(_JOBS_SQL, [window.end, window.start])
    return [
        ObservedJob(
            int(r["id"]),
            str(r["service_id"]),
            None if r["slurm_job_id"] is None else int(r["slurm_job_id"]),
            int(r["gpus"] or 0),
            float(r["started_at"]),
            None if r["ended_at"] is None else float(r["ended_at"]),
            r["slurm_account"],
        )
        for r in rows
    ]


def saia_seconds(job: ObservedJob, window: Window, now: float) -> float:
    a, b = clip(window.start, window.end, job.started_at, now if job.ended_at is None else job.ended_at)
    return job.gpus * (b - a)


def slurm_seconds(rec: SacctRecord, window: Window, now: float) -> float:
    if rec.start is None:
        return 0.0
    a, b = clip(window.start, window.end, rec.start, now if rec.end is None else rec.end)
    return rec.gpus * (b - a)


def reconcile(
    jobs: Iterable[ObservedJob],
    records: Iterable[SacctRecord],
    window: Window,
    now: float,
    prefix: str,
) -> dict[str, ServiceReconciliation]:
    """Per service: both figures over the same jobs, and the jobs one side only has.

    ``records`` are Slurm's jobs of the window; only those named like ours (``prefix``)
    take part, each in the service its name carries.
    """
    ours: dict[int, SacctRecord] = {}
    for record in records:
        if parse_job_name(record.name, prefix) is not None:
            ours[record.job_id] = record
    out: dict[str, ServiceReconciliation] = {}

    def of(service: str) -> ServiceReconciliation:
        return out.setdefault(service, ServiceReconciliation(service))

    seen: set[int] = set()
    for job in jobs:
        r = of(job.service)
        saia = saia_seconds(job, window, now)
        rec = ours.get(job.slurm_job_id) if job.slurm_job_id is not None else None
        if rec is None:
            if saia > 0:
                r.saia_only.append(job.slurm_job_id if job.slurm_job_id is not None else -job.id)
                r.saia_gpu_seconds += saia
            continue
        seen.add(rec.job_id)
        r.jobs += 1
        r.saia_gpu_seconds += saia
        r.slurm_gpu_seconds += slurm_seconds(rec, window, now)
    for job_id, rec in sorted(ours.items()):
        if job_id in seen:
            continue
        secs = slurm_seconds(rec, window, now)
        if secs <= 0:
            continue
        parsed = parse_job_name(rec.name, prefix)
        assert parsed is not None
        r = of(parsed[1])
        r.slurm_only.append(job_id)
        r.slurm_gpu_seconds += secs
    return dict(sorted(out.items()))


def reconciliation_rows(result: dict[str, ServiceReconciliation], checked: bool) -> list[dict[str, Any]]:
    """One row per service; ``checked`` False: Slurm's side is unknown, its cells empty."""
    rows = []
    for r in result.values():
        pct = r.difference_percent
        rows.append(
            {
                "service": r.service,
                "jobs": r.jobs,
                "saia_gpu_hours": round(r.saia_gpu_seconds / 3600, 3),
                "slurm_gpu_hours": round(r.slurm_gpu_seconds / 3600, 3) if checked else None,
                "difference_gpu_seconds": round(r.difference_seconds, 1) if checked else None,
                "difference_percent": (None if pct is None else round(pct, 3)) if checked else None,
                "saia_only_jobs": " ".join(map(str, r.saia_only)) if checked else None,
                "slurm_only_jobs": " ".join(map(str, r.slurm_only)) if checked else None,
            }
        )
    return rows


def by_account(
    jobs: Iterable[ObservedJob],
    records: dict[int, SacctRecord],
    window: Window,
    now: float,
) -> list[dict[str, Any]]:
    """GPU-hours per Slurm account, then per service inside it, in the shape of ``sreport
    cluster AccountUtilizationByUser`` (an account row, then its members): saia-ctl's
    figures, so every level sums exactly to the one above. A job's account is the one
    its row recorded, else Slurm's record, else ``(unknown)``."""
    per: dict[str, dict[str, float]] = {}
    for job in jobs:
        rec = records.get(job.slurm_job_id) if job.slurm_job_id is not None else None
        account = job.account or (rec.account if rec is not None and rec.account else UNKNOWN_ACCOUNT)
        secs = saia_seconds(job, window, now)
        services = per.setdefault(account, {})
        services[job.service] = services.get(job.service, 0.0) + secs
    rows: list[dict[str, Any]] = []
    for account, services in sorted(per.items()):
        # Milli-GPU-seconds summed as integers: the account's total is exactly its services' sum.
        milli = {s: round(v * 1000) for s, v in services.items()}
        rows.append({"account": account, "service": "", "gpu_hours": sum(milli.values()) / 3_600_000})
        for s in sorted(milli):
            rows.append({"account": account, "service": s, "gpu_hours": milli[s] / 3_600_000})
    return rows


@dataclass
class SlurmSide:
    """Slurm's records of a window, or why there are none."""

    records: list[SacctRecord]
    checked: bool  # False: no figure of this report could be checked against Slurm
    note: str | None = None


def read_slurm_side(slurm: Any, window: Window) -> SlurmSide:
    """One sacct call for the window; a cluster without slurmdbd, or a sacct that fails,
    gives ``checked=False`` and the note to print — never a figure of zero."""
    from ..sacct import accounting_disabled
    from ..slurm import SlurmAccounting, SlurmError

    if not isinstance(slurm, SlurmAccounting):
        return SlurmSide([], False, "Slurm accounting cannot be read by this client: figures not checked")
    try:
        return SlurmSide(slurm.accounting_window(window.start, window.end), True)
    except SlurmError as e:
        if accounting_disabled(str(e)):
            why = "this cluster has no Slurm accounting (slurmdbd)"
        else:
            why = f"sacct failed: {e}"
        return SlurmSide([], False, f"{why}: saia-ctl's GPU-hours cannot be checked against Slurm's")
