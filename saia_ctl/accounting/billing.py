"""Billing by project: a month's figures summed over each project's users.

A user belongs to the project ``request_path.admission.project_in`` names (the
one admission uses: an exact member, else the first matching pattern, else the
default project), by membership at the time of the report. Counts and tokens
are the report's (user, service) cells; GPU-hours are the report's per-service
shares in thousandths (``report.split_gpu``), so each project's figures are
exactly the sums of its users' rows in ``report --month`` and the billing rows
(one per project and service) sum to the project rows.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine

from ..request_path.admission import DEFAULT_PROJECT, project_in
from .figures import ALL, dbapi, named
from .report import month_figures, split_gpu
from .shares import IDLE

COLUMNS = (
    "project",
    "slurm_account",
    "users",
    "requests",
    "input_tokens",
    "output_tokens",
    "tokens",
    "gpu_hours",
)
BILLING_COLUMNS = ("month", "tz", "project", "slurm_account", "service", *COLUMNS[2:])


def _empty() -> dict[str, Any]:
    return {"users": set(), "requests": 0, "input_tokens": 0, "output_tokens": 0, "milli_gpu": 0}


def _row(key: dict[str, Any], acc: dict[str, Any]) -> dict[str, Any]:
    return {
        **key,
        "users": len(acc["users"]),
        "requests": acc["requests"],
        "input_tokens": acc["input_tokens"],
        "output_tokens": acc["output_tokens"],
        "tokens": acc["input_tokens"] + acc["output_tokens"],
        "gpu_hours": acc["milli_gpu"] / 1000,
    }


def by_project(
    engine: Engine, month: str, tz: str, now: float
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(one row per project, one row per project and service) of the month."""
    from ..db import read_session
    from .months import month_window

    window = month_window(month, tz)
    with read_session(engine) as s:
        figs = month_figures(s, window, now, None, None, all_pairs=True)
        conn = named(dbapi(s))
        members = [
            (str(r["project"]), str(r["member"]))
            for r in conn.execute("SELECT project, member FROM project_members ORDER BY project, member")
        ]
        accounts = {
            str(r["name"]): r["slurm_account"]
            for r in conn.execute("SELECT name, slurm_account FROM projects")
        }
    _totals, shares = split_gpu(figs)
    per_project: dict[str, dict[str, Any]] = {}
    per_service: dict[tuple[str, str], dict[str, Any]] = {}
    cells = {(u, sv): c for (u, sv), c in figs.usage.items() if u != ALL and sv != ALL}
    gpu = {
        (u, sv): milli for sv, split in shares.items() for u, milli in split.items() if u != IDLE and milli
    }
    for u, sv in sorted(set(cells) | set(gpu)):
        p = project_in(members, u)
        for acc in (per_project.setdefault(p, _empty()), per_service.setdefault((p, sv), _empty())):
            acc["users"].add(u)
            c = cells.get((u, sv))
            if c is not None:
                acc["requests"] += c.requests
                acc["input_tokens"] += c.input_tokens
                acc["output_tokens"] += c.output_tokens
            acc["milli_gpu"] += gpu.get((u, sv), 0)
    for name in set(accounts) | {DEFAULT_PROJECT}:
        per_project.setdefault(name, _empty())
    projects = [
        _row({"project": p, "slurm_account": accounts.get(p)}, acc) for p, acc in sorted(per_project.items())
    ]
    billing = [
        _row(
            {
                "month": window.month,
                "tz": window.tz,
                "project": p,
                "slurm_account": accounts.get(p),
                "service": sv,
            },
            acc,
        )
        for (p, sv), acc in sorted(per_service.items())
    ]
    return projects, billing
