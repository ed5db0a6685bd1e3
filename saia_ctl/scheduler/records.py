"""Slurm's accounting records of the jobs that left the queue: ONE ``sacct`` call per tick.

Only live rows whose Slurm job is no longer running are asked about (gone from
``squeue``, or listed there as finished). Whatever goes wrong — no sacct, no
slurmdbd, a timeout, output the parser does not understand — the tick goes on
with what it observed, and this returns the one line its log says it with; a
missing record never becomes an end reason.
"""

from __future__ import annotations

from ..sacct import MAX_IDS, SacctRecord, accounting_disabled
from ..slurm import SlurmAccounting, SlurmClient, SlurmError, SlurmJob
from .views import JobView


def ids_to_look_up(jobs: list[JobView], queue: list[SlurmJob]) -> list[int]:
    """Slurm ids of live rows whose job left the queue or is listed there as finished."""
    listed = {q.job_id: q for q in queue}
    ids = []
    for job in jobs:
        if job.slurm_job_id is None:
            continue
        q = listed.get(job.slurm_job_id)
        if q is None or q.is_finished:
            ids.append(job.slurm_job_id)
    return sorted(set(ids))[:MAX_IDS]


def read_records(
    slurm: SlurmClient, jobs: list[JobView], queue: list[SlurmJob]
) -> tuple[dict[int, SacctRecord], str | None]:
    """(records by Slurm id, a line for the tick log or None)."""
    ids = ids_to_look_up(jobs, queue)
    if not ids or not isinstance(slurm, SlurmAccounting):
        return {}, None
    try:
        return slurm.accounting(ids), None
    except SlurmError as e:
        if accounting_disabled(str(e)):
            why = "this cluster has no Slurm accounting (slurmdbd)"
        else:
            why = f"sacct unavailable: {e}"
        return {}, f"end reasons and times as observed for {len(ids)} job(s): {why}"
