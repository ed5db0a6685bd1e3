"""Projects and limits: the admin's side (``saia-ctl projects``, ``saia-ctl limits``).

The request path decides with them (``request_path/admission.py``, which also
holds the membership rule and the window semantics). Every change here clears
the limit counters in the same transaction: the request path rebuilds each one
from the request rows when it next needs it, so a changed membership or a new
limit never starts from a stale or zero count. Functions take a session and
never commit (the caller owns the transaction); bad values raise ``LimitError``
before anything is changed.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from . import wire_spec
from .errors import SaiaError
from .models import LIMIT_KINDS, LIMIT_SCOPES, Limit, LimitCounter, Project, ProjectMember, Service
from .request_path import admission
from .request_path.admission import DEFAULT_PROJECT, is_pattern

PROJECT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
SLURM_ACCOUNT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,63}")
WHOLE_KINDS = tuple(k for k in LIMIT_KINDS if k != "gpu_hours_month")  # counts: whole numbers


class LimitError(SaiaError):
    """A bad project or limit value; nothing was changed."""


def check_project_name(name: str) -> str:
    if not PROJECT_NAME.fullmatch(name):
        raise LimitError(f"project name must be 1-64 letters, digits, '.', '_' or '-' (not {name!r})")
    return name


def check_member(member: str) -> str:
    """A user id (the wire protocol's charset) or a pattern of one with ``*`` and ``?``."""
    allowed = set(wire_spec.USER_CHARS) | {"*", "?"}
    if not member or len(member) > wire_spec.MAX_FIELD or any(c not in allowed for c in member):
        raise LimitError(f"member must be a user id or a pattern such as '*@uni-x.de' (not {member!r})")
    return member


def _clear_counters(s: Session) -> None:
    """Forget the counters (rebuilt from the rows when next needed); the GPU-hours figures
    are rewritten by ``refresh_gpu_figures``, which the commands call after a change."""
    s.execute(delete(LimitCounter).where(LimitCounter.kind != GPU_KIND))


def _project(s: Session, name: str) -> Project:
    p = s.get(Project, name)
    if p is None:
        raise LimitError(f"no project {name!r} (see saia-ctl projects list)")
    return p


def add_project(s: Session, name: str, slurm_account: str | None, members: list[str]) -> None:
    check_project_name(name)
    if slurm_account is not None and not SLURM_ACCOUNT.fullmatch(slurm_account):
        raise LimitError(f"not a Slurm account name: {slurm_account!r}")
    for m in members:
        check_member(m)
    if name == DEFAULT_PROJECT and members:
        raise LimitError("the default project holds every user in no other project; it takes no members")
    if s.get(Project, name) is not None:
        raise LimitError(f"project {name!r} exists already")
    s.add(Project(name=name, slurm_account=slurm_account, created_at=datetime.now(UTC)))
    s.flush()
    add_members(s, name, members)


def set_account(s: Session, name: str, slurm_account: str | None) -> None:
    if slurm_account is not None and not SLURM_ACCOUNT.fullmatch(slurm_account):
        raise LimitError(f"not a Slurm account name: {slurm_account!r}")
    _project(s, name).slurm_account = slurm_account


def add_members(s: Session, name: str, members: list[str]) -> None:
    for m in members:
        check_member(m)
    _project(s, name)
    if name == DEFAULT_PROJECT and members:
        raise LimitError("the default project holds every user in no other project; it takes no members")
    for m in dict.fromkeys(members):
        if s.get(ProjectMember, (name, m)) is None:
            s.add(ProjectMember(project=name, member=m))
    _clear_counters(s)


def remove_members(s: Session, name: str, members: list[str]) -> None:
    _project(s, name)
    missing = [m for m in members if s.get(ProjectMember, (name, m)) is None]
    if missing:
        raise LimitError(f"not a member of {name}: {', '.join(missing)}")
    s.execute(delete(ProjectMember).where(ProjectMember.project == name, ProjectMember.member.in_(members)))
    _clear_counters(s)


def remove_project(s: Session, name: str) -> None:
    _project(s, name)
    s.execute(delete(ProjectMember).where(ProjectMember.project == name))
    s.execute(delete(Limit).where(Limit.scope == "project", Limit.subject == name))
    s.execute(delete(Project).where(Project.name == name))
    _clear_counters(s)


def list_projects(s: Session) -> list[dict[str, Any]]:
    """Every project with its members and patterns (the default project too, even if not stored)."""
    members: dict[str, list[str]] = {}
    for pm in s.scalars(select(ProjectMember).order_by(ProjectMember.project, ProjectMember.member)):
        members.setdefault(pm.project, []).append(pm.member)
    out = []
    names = {p.name: p for p in s.scalars(select(Project))}
    for name in sorted(set(names) | {DEFAULT_PROJECT}):
        p = names.get(name)
        ms = members.get(name, [])
        out.append(
            {
                "project": name,
                "slurm_account": p.slurm_account if p else None,
                "members": [m for m in ms if not is_pattern(m)],
                "patterns": [m for m in ms if is_pattern(m)],
            }
        )
    return out


def show_project(s: Session, name: str) -> dict[str, Any]:
    for row in list_projects(s):
        if row["project"] == name:
            row["limits"] = list_limits(s, scope="project", subject=name)
            return row
    raise LimitError(f"no project {name!r} (see saia-ctl projects list)")


def parse_value(kind: str, text: str) -> float:
    """A limit's value: a whole number >= 0 (GPU-hours: any number >= 0)."""
    if kind not in LIMIT_KINDS:
        raise LimitError(f"unknown limit {kind!r}; one of {', '.join(LIMIT_KINDS)}")
    try:
        value = float(text)
    except ValueError:
        raise LimitError(f"{kind} must be a number, not {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise LimitError(f"{kind} must be a finite number >= 0, not {text!r}")
    if kind in WHOLE_KINDS and value != int(value):
        raise LimitError(f"{kind} must be a whole number, not {text!r}")
    return value


def _subject(s: Session, scope: str, subject: str | None, service: str | None) -> tuple[str, str]:
    if scope not in LIMIT_SCOPES:
        raise LimitError(f"scope must be one of {', '.join(LIMIT_SCOPES)}")
    if scope == "default":
        subject = ""
    elif not subject:
        raise LimitError(f"a {scope} limit needs the {scope}'s name")
    elif scope == "user":
        if is_pattern(subject):
            raise LimitError("a user limit names one user; put a pattern in a project")
        check_member(subject)
    elif subject != DEFAULT_PROJECT:
        _project(s, subject)
    if service and s.get(Service, service) is None:
        raise LimitError(f"no service {service!r} (see saia-ctl services list)")
    return subject, service or ""


def set_limits(
    s: Session, scope: str, subject: str | None, service: str | None, values: dict[str, str]
) -> None:
    """Set limits ``kind -> value`` (text); all are checked before any is written."""
    subj, svc = _subject(s, scope, subject, service)
    if not values:
        raise LimitError("no limit given; e.g. requests_minute=30 (kinds: " + ", ".join(LIMIT_KINDS) + ")")
    parsed = {k: parse_value(k, v) for k, v in values.items()}
    for kind, value in parsed.items():
        row = s.get(Limit, (scope, subj, svc, kind))
        if row is None:
            s.add(Limit(scope=scope, subject=subj, service_id=svc, kind=kind, value=value))
        else:
            row.value = value
    _clear_counters(s)


def remove_limits(s: Session, scope: str, subject: str | None, service: str | None, kinds: list[str]) -> int:
    """Remove the given kinds (all if none) of one subject and service; how many were removed."""
    if scope == "project" and subject and subject != DEFAULT_PROJECT and s.get(Project, subject) is None:
        raise LimitError(f"no project {subject!r} (see saia-ctl projects list)")
    subj = "" if scope == "default" else (subject or "")
    if scope not in LIMIT_SCOPES or (scope != "default" and not subj):
        raise LimitError("say whose limits: --user U, --project P or --default")
    for k in kinds:
        if k not in LIMIT_KINDS:
            raise LimitError(f"unknown limit {k!r}; one of {', '.join(LIMIT_KINDS)}")
    q = delete(Limit).where(Limit.scope == scope, Limit.subject == subj, Limit.service_id == (service or ""))
    if kinds:
        q = q.where(Limit.kind.in_(kinds))
    n = s.execute(q).rowcount  # type: ignore[attr-defined]
    _clear_counters(s)
    return int(n or 0)


def list_limits(s: Session, scope: str | None = None, subject: str | None = None) -> list[dict[str, Any]]:
    q = select(Limit).order_by(Limit.scope, Limit.subject, Limit.service_id, Limit.kind)
    if scope is not None:
        q = q.where(Limit.scope == scope)
    if subject is not None:
        q = q.where(Limit.subject == subject)
    return [
        {
            "scope": r.scope,
            "subject": r.subject,
            "service": r.service_id or "*",
            "limit": r.kind,
            "value": int(r.value) if r.kind in WHOLE_KINDS else r.value,
        }
        for r in s.scalars(q)
    ]


GPU_KIND = "gpu_hours_month"
# A counter row under this subject says when the GPU-hours figures of its month were written:
# with it, a user without a figure row used none; without it, admission cannot decide (503).
GPU_MARK = admission.GPU_MARK


def has_gpu_limits(s: Session) -> bool:
    return s.scalars(select(Limit.kind).where(Limit.kind == GPU_KIND).limit(1)).first() is not None


def gpu_figures(s: Session, tz: str, now: float) -> tuple[str, dict[tuple[str, str], float]]:
    """(month, {(subject, service or ''): attributed GPU-hours}) for every subject a GPU-hours
    limit names: the report's figures (ledger plus the rows not folded yet). Reads only."""
    from .accounting.months import month_window
    from .accounting.report import month_figures, split_gpu
    from .accounting.shares import IDLE
    from .accounting.zones import month_of
    from .request_path.admission import project_in

    month = month_of(now, tz)
    limits = list(s.scalars(select(Limit).where(Limit.kind == GPU_KIND)))
    if not limits:
        return month, {}
    figs = month_figures(s, month_window(month, tz), now, None, None)
    _totals, shares = split_gpu(figs)
    members = [(m.project, m.member) for m in s.scalars(select(ProjectMember))]
    milli: dict[tuple[str, str], int] = {}  # (subject, service or '') -> milli-GPU-hours
    for service, split in shares.items():
        for user, value in split.items():
            if user == IDLE or not value:
                continue
            for subject in (f"user:{user}", f"project:{project_in(members, user)}"):
                for svc in ("", service):
                    milli[(subject, svc)] = milli.get((subject, svc), 0) + value
    wanted: set[tuple[str, str]] = set()
    for lim in limits:
        if lim.scope == "default":
            wanted |= {k for k in milli if k[0].startswith("user:") and k[1] == lim.service_id}
        else:
            wanted.add((f"{lim.scope}:{lim.subject}", lim.service_id))
    return month, {k: milli.get(k, 0) / 1000 for k in sorted(wanted)}


def write_gpu_figures(s: Session, month: str, figures: dict[tuple[str, str], float], now: float) -> None:
    """Replace the GPU-hours counters by ``figures`` and mark the month as written."""
    s.execute(delete(LimitCounter).where(LimitCounter.kind == GPU_KIND))
    if not figures and not has_gpu_limits(s):
        return
    for (subject, svc), hours in figures.items():
        s.add(LimitCounter(subject=subject, service_id=svc, kind=GPU_KIND, window=month, value=hours))
    s.add(LimitCounter(subject=GPU_MARK, service_id="", kind=GPU_KIND, window=month, value=now))


def refresh_gpu_figures(s: Session, tz: str, now: float) -> int:
    """``gpu_figures`` then ``write_gpu_figures`` in one transaction (the CLI's, after a change);
    the number of figures written."""
    month, figures = gpu_figures(s, tz, now)
    write_gpu_figures(s, month, figures, now)
    return len(figures)
