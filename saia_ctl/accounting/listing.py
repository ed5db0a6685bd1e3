"""Rows for `saia-ctl jobs list` and `saia-ctl requests list`."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from .figures import dbapi, named
from .zones import iso_utc

_JOBS_SQL = """
SELECT j.id, j.service_id, j.slurm_job_id, j.state, j.node, j.port, j.submitted_at, j.started_at,
       j.ready_at, j.ended_at, j.walltime_limit, j.gpus, j.end_reason, j.slurm_state, j.slurm_exit_code,
       j.slurm_started_at, j.slurm_ended_at, j.slurm_gpus, j.slurm_account,
       (SELECT COUNT(*) FROM requests r WHERE r.job_id = j.id AND r.ended_at IS NULL
            AND r.service_id = j.service_id) AS in_flight
FROM jobs j
"""


def list_jobs(
    session: Session,
    now: float,
    *,
    all_jobs: bool = False,
    service: str | None = None,
    since: float | None = None,
) -> list[dict[str, Any]]:
    """Jobs, newest first: live ones, or all (``since``: alive at or after that time)."""
    where: list[str] = []
    params: list[Any] = []
    if not all_jobs:
        where.append("j.ended_at IS NULL")
    if service is not None:
        where.append("j.service_id = ?")
        params.append(service)
    if since is not None:
        where.append("(j.ended_at IS NULL OR j.ended_at >= ?)")
        params.append(since)
    sql = (
        _JOBS_SQL
        + (" WHERE " + " AND ".join(where) if where else "")
        + " ORDER BY j.submitted_at DESC, j.id DESC"
    )
    rows = []
    for r in named(dbapi(session)).execute(sql, params):
        started, ended, limit = r["started_at"], r["ended_at"], r["walltime_limit"]
        left = None
        if ended is None and started is not None and limit is not None:
            left = max(0.0, started + limit - now)
        rows.append(
            {
                "id": r["id"],
                "service": r["service_id"],
                "slurm_job_id": r["slurm_job_id"],
                "state": r["state"],
                "ready": r["state"] == "ready",
                "node": r["node"],
                "port": r["port"],
                "gpus": r["gpus"],
                "in_flight": r["in_flight"],
                "age_s": round((ended if ended is not None else now) - r["submitted_at"], 3),
                "walltime_left_s": None if left is None else round(left, 3),
                "submitted_at": iso_utc(r["submitted_at"]),
                "ready_at": iso_utc(r["ready_at"]),
                "ended_at": iso_utc(ended),
                "end_reason": r["end_reason"],
                # Slurm's accounting record (sacct), when the tick could read it.
                "slurm_state": r["slurm_state"],
                "exit_code": r["slurm_exit_code"],
                "slurm_started_at": iso_utc(r["slurm_started_at"]),
                "slurm_ended_at": iso_utc(r["slurm_ended_at"]),
                "slurm_gpus": r["slurm_gpus"],
                "account": r["slurm_account"],
            }
        )
    return rows


_REQUESTS_SQL = """
SELECT r.started_at, r.inference_id, r.user_id, r.service_id, j.slurm_job_id, r.method, r.path, r.status,
       r.outcome, r.first_byte_at, r.ended_at, r.input_tokens, r.output_tokens, r.error
FROM requests r LEFT JOIN jobs j ON j.id = r.job_id
"""


def parse_status(text: str) -> tuple[str, list[Any]]:
    """A status filter: an HTTP status (404), a class (4xx), an outcome (ok, error, aborted) or in-flight."""
    t = text.strip().lower()
    if t.isdigit() and 100 <= int(t) <= 599:
        return "r.status = ?", [int(t)]
    if len(t) == 3 and t[0] in "12345" and t[1:] == "xx":
        lo = int(t[0]) * 100
        return "r.status >= ? AND r.status < ?", [lo, lo + 100]
    if t in ("ok", "error", "aborted"):
        return "r.outcome = ?", [t]
    if t in ("in-flight", "in_flight", "open"):
        return "r.ended_at IS NULL", []
    raise ValueError(
        f"--status must be an HTTP status (404), a class (4xx), ok, error, aborted or in-flight, not {text!r}"
    )


def list_requests(
    session: Session,
    now: float,
    *,
    user: str | None = None,
    service: str | None = None,
    status: str | None = None,
    since: float | None = None,
    until: float | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Requests newest first, by start time: ``since <= started_at < until``."""
    where: list[str] = []
    params: list[Any] = []
    for column, value in (("r.user_id", user), ("r.service_id", service)):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    if status is not None:
        clause, values = parse_status(status)
        where.append(clause)
        params += values
    if since is not None:
        where.append("r.started_at >= ?")
        params.append(since)
    if until is not None:
        where.append("r.started_at < ?")
        params.append(until)
    sql = _REQUESTS_SQL + (" WHERE " + " AND ".join(where) if where else "")
    sql += " ORDER BY r.started_at DESC, r.id DESC LIMIT ?"
    params.append(max(0, limit))
    rows = []
    for r in named(dbapi(session)).execute(sql, params):
        started, fb, ended, outcome = r["started_at"], r["first_byte_at"], r["ended_at"], r["outcome"]
        rows.append(
            {
                "started_at": iso_utc(started),
                "inference_id": r["inference_id"],
                "user": r["user_id"],
                "service": r["service_id"],
                "slurm_job_id": r["slurm_job_id"],
                "method": r["method"],
                "path": r["path"],
                "status": r["status"],
                "outcome": outcome if outcome is not None else "in-flight",
                "duration_s": round((ended if ended is not None else now) - started, 3),
                "ttfb_s": None if fb is None else round(fb - started, 3),
                "input_tokens": r["input_tokens"],
                "output_tokens": r["output_tokens"],
                "error": r["error"],
            }
        )
    return rows
