"""The monthly report: per user and per service, from a month's ``Figures``.

GPU-hours are shown in thousandths (milli-GPU-hours, integers internally): each
service's total is rounded once, then split among its users and its idle time
by cumulative rounding (``shares``), so the users' shares plus idle add up to the
service total exactly as displayed. See docs/accounting.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from ..errors import SaiaError
from . import figures as F
from .assemble import assemble
from .figures import ALL, Figures, Usage
from .months import Window
from .scan import Progress
from .shares import IDLE, milli_gpu_hours, split, to_ns
from .zones import iso_utc


class ReportError(SaiaError):
    """The report cannot be made (e.g. the month's rows were pruned in another zone)."""


@dataclass
class Report:
    data: dict[str, Any]
    notes: list[str] = field(default_factory=list)  # messages for stderr (empty month, unknown user...)

    @property
    def window_label(self) -> str:
        return f"{self.data['month']} ({self.data['tz']})"


def month_figures(
    session: Session,
    window: Window,
    now: float,
    user: str | None,
    service: str | None,
    *,
    all_pairs: bool = False,
    use_ledger: bool = True,
    progress: Progress | None = None,
) -> Figures:
    """The month's figures: from the rollups if the month was rolled up, else from the ledger's
    folded part and the rows of the rest (``assemble``; ``progress`` follows that scan)."""
    if F.has_rollup(session, window):
        return F.load(session, window)
    mark = F.pruned_before(session)
    # In the rollups' zone, every month since the first request was rolled up; a month
    # without a rollup had no request rows, so computing it from the rows is exact.
    if mark is not None and window.start < mark[0] and window.tz != mark[1]:
        raise ReportError(
            f"request rows before {iso_utc(mark[0])} were pruned and {window.month} has no rollup "
            f"in zone {window.tz}; pruned months are kept in zone {mark[1]} (use --tz {mark[1]})"
        )
    conn = F.dbapi(session)
    return assemble(
        conn,
        window,
        now,
        user=user,
        service=service,
        all_pairs=all_pairs,
        use_ledger=use_ledger,
        progress=progress,
    )


def _hours(milli: int) -> float:
    return milli / 1000


def _secs(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _usage_cols(u: Usage) -> dict[str, Any]:
    return {
        "requests": u.requests,
        "ok": u.ok,
        "errors": u.errors,
        "errors_4xx": u.errors_4xx,
        "errors_5xx": u.errors_5xx,
        "aborted": u.aborted,
        "in_flight": u.in_flight,
        "input_tokens": u.input_tokens,
        "output_tokens": u.output_tokens,
        "duration_p50_s": _secs(u.duration_p50),
        "duration_p95_s": _secs(u.duration_p95),
        "ttfb_p50_s": _secs(u.ttfb_p50),
        "ttfb_p95_s": _secs(u.ttfb_p95),
    }


def split_gpu(figs: Figures) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
    """Per service: its GPU total in milli-GPU-hours, and that total split among users + IDLE."""
    totals: dict[str, int] = {}
    shares: dict[str, dict[str, int]] = {}
    for s, g in figs.gpu.items():
        totals[s] = milli_gpu_hours(g.gpu_seconds)
        values = {u: ns for u, ns in figs.gpu_shares.get(s, {}).items() if ns}
        values[IDLE] = to_ns(g.idle_gpu_seconds)
        shares[s] = split(values, totals[s])
    return totals, shares


def build(
    figs: Figures,
    *,
    user: str | None = None,
    service: str | None = None,
    by: str | None = None,
    known_services: set[str] | None = None,
    pseudonym: Callable[[str], str] | None = None,
) -> Report:
    """The report as plain data (the JSON shape) plus notes for the operator."""
    w = figs.window
    notes: list[str] = []
    name = pseudonym or (lambda u: u)
    gpu_total, gpu_share = split_gpu(figs)

    services = sorted({s for (u, s) in figs.usage if u == ALL and s != ALL} | set(figs.gpu))
    users = sorted({u for (u, s) in figs.usage if s == ALL and u != ALL})
    if figs.empty:
        notes.append(f"no requests or jobs in {w.month} ({w.tz})")
    if service is not None and service not in services:
        if known_services is not None and service not in known_services:
            notes.append(f"unknown service {service!r}")
        elif not figs.empty:
            notes.append(f"no requests or jobs of service {service!r} in {w.month} ({w.tz})")
        services = []
    elif service is not None:
        services = [service]
    if user is not None and user not in users:
        if not figs.empty:
            notes.append(f"no requests by user {user!r} in {w.month} ({w.tz})")
        users = []
    elif user is not None:
        users = [user]
    if service is not None:
        users = [u for u in users if (u, service) in figs.usage]
    if user is not None:
        services = [s for s in services if (user, s) in figs.usage]

    per_user: dict[str, int] = {}  # a user's figure: the sum of their rounded per-service shares
    for shares in gpu_share.values():
        for u, milli in shares.items():
            per_user[u] = per_user.get(u, 0) + milli

    def user_gpu(u: str) -> int:
        if service is not None:
            return gpu_share.get(service, {}).get(u, 0)
        return per_user.get(u, 0)

    user_rows: list[dict[str, Any]] = []
    for u in users:
        cell = figs.usage[(u, service if service is not None else ALL)]
        row = {"user": name(u), **_usage_cols(cell), "gpu_hours": _hours(user_gpu(u))}
        user_rows.append(row)
    user_rows.sort(key=lambda r: (-r["gpu_hours"], -r["requests"], r["user"]))

    service_rows: list[dict[str, Any]] = []
    for s in services:
        if user is not None:
            cell = figs.usage[(user, s)]
            service_rows.append(
                {"service": s, **_usage_cols(cell), "gpu_hours": _hours(gpu_share.get(s, {}).get(user, 0))}
            )
            continue
        cell = figs.usage.get((ALL, s), Usage())
        g = figs.gpu.get(s, F.ServiceGPU())
        share = gpu_share.get(s, {})
        idle = share.get(IDLE, 0)
        total = gpu_total.get(s, 0)
        service_rows.append(
            {
                "service": s,
                **_usage_cols(cell),
                "jobs": g.jobs,
                "jobs_open": g.jobs_open,
                "job_hours": _hours(milli_gpu_hours(g.job_seconds)),
                "gpu_hours": _hours(total),
                "attributed_gpu_hours": _hours(total - idle),
                "idle_gpu_hours": _hours(idle),
                "idle_ready_gpu_hours": _hours(milli_gpu_hours(g.idle_ready_gpu_seconds)),
                "ready_hours": _hours(milli_gpu_hours(g.ready_seconds)),
                "submit_to_ready_median_s": _secs(g.submit_to_ready_median),
            }
        )

    # Totals: the level the filters select; GPU-hours as sums of what is displayed above.
    level = (user if user is not None else ALL, service if service is not None else ALL)
    empty = (user is not None and not users) or (service is not None and not services)
    base = Usage() if empty else figs.usage.get(level, Usage())
    totals: dict[str, Any] = {"users": len(users), **_usage_cols(base)}
    if user is not None:
        totals["gpu_hours"] = _hours(0 if empty else user_gpu(user))
    else:
        in_scope = services
        g_sum = sum(gpu_total.get(s, 0) for s in in_scope)
        idle_sum = sum(gpu_share.get(s, {}).get(IDLE, 0) for s in in_scope)
        totals.update(
            {
                "services": len(in_scope),
                "jobs": sum(figs.gpu[s].jobs for s in in_scope if s in figs.gpu),
                "jobs_open": sum(figs.gpu[s].jobs_open for s in in_scope if s in figs.gpu),
                "gpu_hours": _hours(g_sum),
                "attributed_gpu_hours": _hours(g_sum - idle_sum),
                "idle_gpu_hours": _hours(idle_sum),
            }
        )

    days = (
        []
        if user is not None
        else [
            {"day": d, "service": s, "requests": n}
            for (s, d), n in sorted(figs.days.items(), key=lambda kv: (kv[0][1], kv[0][0]))
            if s in services
        ]
    )
    data: dict[str, Any] = {
        "month": w.month,
        "tz": w.tz,
        "from": w.iso(w.start),
        "to": w.iso(w.end),
        "filters": {"user": name(user) if user is not None else None, "service": service, "by": by},
    }
    if by in (None, "user"):
        data["users"] = user_rows
    if by in (None, "service"):
        data["services"] = service_rows
    data["totals"] = totals
    data["days"] = days
    return Report(data, notes)


def monthly_report(
    engine: Engine,
    month: str,
    *,
    tz: str = "UTC",
    now: float,
    user: str | None = None,
    service: str | None = None,
    by: str | None = None,
    anonymize_home: str | None = None,
    use_ledger: bool = True,
    progress: Progress | None = None,
) -> Report:
    """`saia-ctl report`: the month's report, from the rollups, or the ledger and the rows (one
    read transaction); ``use_ledger=False`` makes it from the rows alone (a check, a bench).
    ``progress`` follows the scan of the rows (none when the ledger or a rollup answers)."""
    from ..db import read_session
    from .anonymize import load_key, pseudonymizer
    from .months import month_window

    if by not in (None, "user", "service"):
        raise ReportError(f"--by must be user or service, not {by!r}")
    window = month_window(month, tz)
    pseudonym = pseudonymizer(load_key(anonymize_home)) if anonymize_home is not None else None
    with read_session(engine) as s:
        figs = month_figures(s, window, now, user, service, use_ledger=use_ledger, progress=progress)
        known = {row["id"] for row in F.named(F.dbapi(s)).execute("SELECT id FROM services")}
    return build(figs, user=user, service=service, by=by, known_services=known, pseudonym=pseudonym)
