"""Usage so far this month with each limit and what remains: ``GET /v1/usage`` (the
caller's own, answered by the request path) and ``saia-ctl usage`` (an admin's view).

The figures are the month report's (``accounting.report.monthly_report`` for the
user, in ``SAIA_ACCOUNTING_TZ``): requests, tokens and attributed GPU-hours equal
``saia-ctl report --month M --user U``. A user's are read from their own rows
(``accounting.own_month``: the ledger's folded part and the rest through the
user's index), stdlib only, so the request path answers without SQLAlchemy; a
project's come from the report. The limits are read as admission reads
them (``request_path/admission.py``), without writing anything: asking for one's
usage never counts against a limit.
"""

from __future__ import annotations

import time

from . import rawdb
from .accounting.own_month import own_month
from .accounting.zones import iso_utc, month_of
from .request_path import admission
from .settings import Settings

TYPE_CHECKING = False  # typing and SQLAlchemy are not imported at run time (the request path)
if TYPE_CHECKING:
    from typing import Any

    from sqlalchemy import Engine


def _connect(settings: Settings) -> rawdb.Connection:
    return rawdb.connect(
        settings.db_path, journal_mode=settings.journal_mode, busy_timeout=settings.busy_timeout
    )


def _figures(engine: Engine, month: str, tz: str, now: float, user: str | None) -> dict[str, dict[str, Any]]:
    """user -> requests, tokens, GPU-hours of the month (every user if ``user`` is None)."""
    from .accounting.report import monthly_report

    rep = monthly_report(engine, month, tz=tz, now=now, user=user, by="user")
    return {
        str(r["user"]): {
            "requests": int(r["requests"]),
            "input_tokens": int(r["input_tokens"]),
            "output_tokens": int(r["output_tokens"]),
            "gpu_hours": float(r["gpu_hours"]),
        }
        for r in rep.data["users"]
    }


def _limit_rows(conn: rawdb.Connection, user: str, now: float, tz: str, gpu: float) -> list[dict[str, Any]]:
    d, _members = admission.evaluate(conn, user, None, now, tz)
    out = []
    for a in d.applied:
        used = gpu if a.kind == "gpu_hours_month" else a.used
        row: dict[str, Any] = {
            "limit": a.kind,
            "scope": a.scope,
            "subject": a.subject.split(":", 1)[1],
            "service": a.service_id or "*",
            "value": a.limit,
            "used": used,
            "remaining": max(0.0, a.limit - used),
            "resets_at": iso_utc(a.end) if a.end else None,
        }
        if a.kind != "gpu_hours_month":
            for k in ("value", "used", "remaining"):
                row[k] = int(row[k])
        out.append(row)
    return out


def usage_of_user(settings: Settings, user: str, tz: str, now: float | None = None) -> dict[str, Any]:
    """One user's month so far, with every limit that applies to them (one read transaction)."""
    now = time.time() if now is None else now
    month = month_of(now, tz)
    conn = _connect(settings)
    try:
        with rawdb.deferred(conn):
            own = own_month(conn, month, tz, now, user)
            if own is None:  # a rolled-up month: the report's rules
                figs = _figures(_engine(settings), month, tz, now, user).get(user, _ZERO)
            else:
                figs = {
                    "requests": own.counts["requests"],
                    "input_tokens": own.counts["input_tokens"],
                    "output_tokens": own.counts["output_tokens"],
                    "gpu_hours": own.gpu_milli / 1000,
                }
            project = admission.project_of(conn, user)
            limits = _limit_rows(conn, user, now, tz, figs["gpu_hours"])
    finally:
        conn.close()
    return {
        "object": "usage",
        "user": user,
        "project": project,
        "month": month,
        "tz": tz,
        **figs,
        "tokens": figs["input_tokens"] + figs["output_tokens"],
        "limits": limits,
    }


_ZERO: dict[str, Any] = {"requests": 0, "input_tokens": 0, "output_tokens": 0, "gpu_hours": 0.0}


def _engine(settings: Settings) -> Engine:
    import sys

    if sys.flags.no_site:  # cloud_interface.sh runs `python -S`: SQLAlchemy is in site-packages
        import site

        site.main()
    from .db import engine_for

    return engine_for(settings)


def usage_of_project(
    engine: Engine, settings: Settings, project: str, tz: str, now: float | None = None
) -> dict[str, Any]:
    """A project's month so far: the sums over its users (as they are members now), per user too."""
    now = time.time() if now is None else now
    month = month_of(now, tz)
    figs = _figures(engine, month, tz, now, None)
    conn = _connect(settings)
    try:
        with rawdb.deferred(conn):
            members = admission.read_members(conn)
            users = sorted(u for u in figs if admission.project_in(members, u) == project)
            limits = [
                row
                for u in users[:1]
                for row in _limit_rows(conn, u, now, tz, sum(figs[x]["gpu_hours"] for x in users))
                if row["scope"] == "project"
            ]
    finally:
        conn.close()
    keys = ("requests", "input_tokens", "output_tokens")
    totals: dict[str, Any] = {k: sum(figs[u][k] for u in users) for k in keys}
    totals["gpu_hours"] = round(sum(figs[u]["gpu_hours"] for u in users), 3)
    return {
        "object": "usage",
        "project": project,
        "month": month,
        "tz": tz,
        **totals,
        "tokens": totals["input_tokens"] + totals["output_tokens"],
        "users": [{"user": u, **figs[u]} for u in users],
        "limits": limits,
    }
