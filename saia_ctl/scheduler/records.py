"""Slurm's accounting records of the jobs that left the queue: ONE ``sacct`` call per tick.

Only live rows whose Slurm job is no longer running are asked about (gone from
``squeue``, or listed there as finished). Whatever goes wrong — no sacct, no
slurmdbd, a timeout, output the parser does not understand — the tick goes on
with what it observed, and this returns the one line its log says it with; a
missing record never becomes an end reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Engine, text

from ..db import read_session, write_session
from ..sacct import MAX_IDS, SacctRecord, accounting_disabled
from ..slurm import SlurmAccounting, SlurmClient, SlurmError, SlurmJob
from .plan import end_reason_of_state
from .views import EndReason, JobView

# slurmdbd writes a job's end a moment after squeue shows it: a row ended without
# Slurm's record is asked about again for this long (in the same one sacct call).
LATE_RECORD_WINDOW = 600.0
MAX_LATE = 100


@dataclass(frozen=True)
class LateRow:
    """An ended row whose Slurm record was not there yet when it ended."""

    id: int
    name: str
    slurm_job_id: int
    end_reason: str | None


def late_rows(engine: Engine, now: float) -> list[LateRow]:
    with read_session(engine) as s:
        rows = s.execute(
            text(
                "SELECT id, name, slurm_job_id, end_reason FROM jobs WHERE ended_at IS NOT NULL "
                "AND ended_at > :since AND slurm_state IS NULL AND slurm_job_id IS NOT NULL "
                "ORDER BY ended_at DESC LIMIT :n"
            ),
            {"since": now - LATE_RECORD_WINDOW, "n": MAX_LATE},
        ).all()
    return [LateRow(int(r.id), str(r.name), int(r.slurm_job_id), r.end_reason) for r in rows]


def fill_late(engine: Engine, late: Sequence[LateRow], records: dict[int, SacctRecord]) -> int:
    """Slurm's record on ended rows that lacked it; a ``gone`` reason becomes Slurm's state
    (any other reason was known when the row ended and stays). Returns the rows filled."""
    done = 0
    todo = [
        (row, rec)
        for row in late
        if (rec := records.get(row.slurm_job_id)) is not None and rec.is_final and rec.name == row.name
    ]
    if not todo:
        return 0
    with write_session(engine) as s:
        for row, rec in todo:
            reason = end_reason_of_state(rec.state) if row.end_reason == EndReason.GONE else row.end_reason
            done += (
                s.connection()
                .execute(
                    text(
                        "UPDATE jobs SET slurm_state = :state, slurm_exit_code = :exit, "
                        "slurm_started_at = :start, slurm_ended_at = :end, slurm_gpus = :gpus, "
                        "slurm_account = :account, end_reason = :reason WHERE id = :id AND slurm_state IS NULL"
                    ),
                    {
                        "state": rec.state,
                        "exit": rec.exit_code,
                        "start": rec.start,
                        "end": rec.end,
                        "gpus": rec.gpus,
                        "account": rec.account or None,
                        "reason": reason,
                        "id": row.id,
                    },
                )
                .rowcount
            )
    return done


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
    slurm: SlurmClient, jobs: list[JobView], queue: list[SlurmJob], late: Sequence[LateRow] = ()
) -> tuple[dict[int, SacctRecord], str | None]:
    """(records by Slurm id, a line for the tick log or None): live rows that left the
    queue and ``late`` rows, in one sacct call."""
    live = ids_to_look_up(jobs, queue)
    ids = sorted(set(live) | {r.slurm_job_id for r in late})[:MAX_IDS]
    if not ids or not isinstance(slurm, SlurmAccounting):
        return {}, None
    try:
        return slurm.accounting(ids), None
    except SlurmError as e:
        if not live:
            return {}, None  # only rows that ended earlier were asked about: nothing claimed now
        if accounting_disabled(str(e)):
            why = "this cluster has no Slurm accounting (slurmdbd)"
        else:
            why = f"sacct unavailable: {e}"
        return {}, f"end reasons and times as observed for {len(live)} job(s): {why}"
