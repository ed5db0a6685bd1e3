"""The SQL over request and job rows that the month's scan (``scan``), the ledger
(``ledger``) and a user's own month (``own_month``) share.

Standard library only and cheap to import (no ``dataclasses``, ``typing`` or ``re``):
the request path's ``GET /v1/usage`` reads it.
"""

from __future__ import annotations

from .gpu import JobSpan

TYPE_CHECKING = False
if TYPE_CHECKING:
    import sqlite3

# Requests longer than this (seconds), and those still open, are found through the partial
# index ix_requests_long, whose condition is LONG_OR_OPEN (models.py); shorter ones by their
# start time, so the scans stay range scans.
LONG_REQUEST = 3600.0
LONG_OR_OPEN = f"ended_at IS NULL OR ended_at - started_at > {LONG_REQUEST!r}"

# The SQL of each counter of ``figures.Usage`` over a group of request rows, by name: the
# scans' SELECTs are built from ``figures.COUNT_FIELDS`` (the one declaration of the counters
# and their order) and their rows are read by column name. SUM of a group whose terms are all
# NULL (e.g. only in-flight rows: outcome IS NULL) is NULL, hence the IFNULLs: such a group
# has 0 ok, 0 errors... (not null).
COUNTER_SQL = {
    "requests": "COUNT(*)",
    "ok": "IFNULL(SUM(outcome = 'ok'), 0)",
    "errors": "IFNULL(SUM(outcome = 'error'), 0)",
    "errors_4xx": "IFNULL(SUM(outcome = 'error' AND status >= 400 AND status < 500), 0)",
    "errors_5xx": "IFNULL(SUM(outcome = 'error' AND status >= 500), 0)",
    "aborted": "IFNULL(SUM(outcome = 'aborted'), 0)",
    "in_flight": "SUM(outcome IS NULL)",
    "input_tokens": "IFNULL(SUM(input_tokens), 0)",
    "output_tokens": "IFNULL(SUM(output_tokens), 0)",
}

# A job's run as it is billed: Slurm's Start, End and allocated GPUs (sacct, filled in when
# the job ended) where its record arrived, else what the ticks observed (a job too short for
# any tick to see it run has no observed start nor GPUs). Slurm's GPU count is taken when it
# counted some: a cluster without AccountingStorageTRES=gres/gpu records none. Every GPU
# figure reads these.
JOB_START_SQL = "COALESCE(slurm_started_at, started_at)"
JOB_END_SQL = "COALESCE(slurm_ended_at, ended_at)"
JOB_GPUS_SQL = "CASE WHEN slurm_gpus > 0 THEN slurm_gpus ELSE gpus END"

# The columns of a JobSpan, in the order of its fields.
JOBS_SQL = f"""
SELECT id, service_id, {JOB_GPUS_SQL}, submitted_at, {JOB_START_SQL}, ready_at, draining_at, {JOB_END_SQL}
FROM jobs WHERE {JOB_START_SQL} IS NOT NULL AND {JOB_START_SQL} < ?
  AND ({JOB_END_SQL} IS NULL OR {JOB_END_SQL} > ?)
ORDER BY id
"""

# Where the ledger of a zone stands (``ledger.Cursor``): folded up to, highest request id seen.
CURSOR_SQL = "SELECT folded_to, max_request_id FROM ledger_cursors WHERE tz = ?"

# Whether a row came late into [A, B): inserted after the last fold (id above the cursor's)
# but started in a folded span. Read through the rowid range (the rows inserted since that
# fold), never the started_at index (millions of rows).
LATE_IN_SQL = "SELECT 1 FROM requests NOT INDEXED WHERE id > ? AND started_at >= ? AND started_at < ? LIMIT 1"


def jobs_in(conn: sqlite3.Connection, lo: float, hi: float) -> list[JobSpan]:
    """The jobs that ran during [lo, hi), by id."""
    return [JobSpan(*row) for row in conn.execute(JOBS_SQL, (hi, lo))]
