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
    s.execute(delete(LimitCounter))


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
