"""`saia-ctl projects ...` and `saia-ctl limits ...`: who belongs together, and who may use how much."""

from __future__ import annotations

from typing import Annotated

import typer

from . import common

projects = typer.Typer(help="Projects: groups of users for limits and billing.", no_args_is_help=True)
limits = typer.Typer(
    help="Limits per user, per project or by default: requests per minute/hour/day/month, "
    "concurrent requests, tokens per day/month, GPU-hours per month.",
    no_args_is_help=True,
)

MembersOption = Annotated[
    list[str] | None,
    typer.Option("--member", "-m", help="A user id or a pattern such as '*@uni-x.de' (repeatable)."),
]
UserOption = Annotated[str | None, typer.Option("--user", help="A user's own limits.")]
ProjectOption = Annotated[
    str | None, typer.Option("--project", help="A project's limits (its users together).")
]
DefaultOption = Annotated[bool, typer.Option("--default", help="The default limits of every user.")]
ServiceOption = Annotated[
    str | None, typer.Option("--service", help="Only this service (default: all together).")
]


@projects.command("add")
@common.command
def add(
    name: Annotated[str, typer.Argument(help="Project name.")],
    account: Annotated[str | None, typer.Option("--account", help="Slurm account it is charged to.")] = None,
    member: MembersOption = None,
) -> None:
    """Add a project with its members and patterns."""
    from ..db import write_session
    from ..limits import add_project

    with write_session(common.engine()) as s:
        add_project(s, name, account, member or [])
    _refresh()
    common.echo(f"project {name} added")


@projects.command("set-account")
@common.command
def set_account(
    name: Annotated[str, typer.Argument(help="Project name.")],
    account: Annotated[str | None, typer.Argument(help="Slurm account (none: no account).")] = None,
) -> None:
    """Set or clear the Slurm account a project is charged to."""
    from ..db import write_session
    from ..limits import set_account as set_

    with write_session(common.engine()) as s:
        set_(s, name, account)
    _refresh()
    common.echo(f"project {name}: account {account or '(none)'}")


@projects.command("add-members")
@common.command
def add_members(
    name: Annotated[str, typer.Argument(help="Project name.")],
    members: Annotated[list[str], typer.Argument(help="User ids or patterns such as '*@uni-x.de'.")],
) -> None:
    """Add members (user ids) or patterns to a project."""
    from ..db import write_session
    from ..limits import add_members as add_

    with write_session(common.engine()) as s:
        add_(s, name, members)
    _refresh()
    common.echo(f"project {name}: {len(members)} added")


@projects.command("remove-members")
@common.command
def remove_members(
    name: Annotated[str, typer.Argument(help="Project name.")],
    members: Annotated[list[str], typer.Argument(help="User ids or patterns, as added.")],
) -> None:
    """Remove members or patterns from a project."""
    from ..db import write_session
    from ..limits import remove_members as remove_

    with write_session(common.engine()) as s:
        remove_(s, name, members)
    _refresh()
    common.echo(f"project {name}: {len(members)} removed")


@projects.command("remove")
@common.command
def remove(name: Annotated[str, typer.Argument(help="Project name.")]) -> None:
    """Remove a project, its members and its limits (its users fall back to the default project)."""
    from ..db import write_session
    from ..limits import remove_project

    with write_session(common.engine()) as s:
        remove_project(s, name)
    _refresh()
    common.echo(f"project {name} removed")


@projects.command("list")
@common.command
def list_(fmt: common.FormatOption = common.Format.table) -> None:
    """Projects with their Slurm account, members and patterns."""
    from ..db import read_session
    from ..limits import list_projects

    with read_session(common.engine()) as s:
        rows = list_projects(s)
    if fmt is not common.Format.json:
        rows = [{**r, "members": " ".join(r["members"]), "patterns": " ".join(r["patterns"])} for r in rows]
    common.echo(common.render(rows, fmt))


@projects.command("show")
@common.command
def show(
    name: Annotated[str, typer.Argument(help="Project name.")], fmt: common.FormatOption = common.Format.table
) -> None:
    """One project: account, members, patterns and limits."""
    import json

    from ..db import read_session
    from ..limits import show_project

    with read_session(common.engine()) as s:
        row = show_project(s, name)
    if fmt is common.Format.json:
        common.echo(json.dumps(row, indent=2))
        return
    head = {k: (" ".join(v) if isinstance(v, list) else v) for k, v in row.items() if k != "limits"}
    common.echo(common.render([head], fmt))
    if fmt is common.Format.table:
        common.echo("")
        common.echo(common.render(row["limits"], fmt))


def _refresh() -> int:
    """Rewrite the GPU-hours figures the limits need (after any change of limits or projects)."""
    import time

    from ..db import write_session
    from ..limits import refresh_gpu_figures

    with write_session(common.engine()) as s:
        return refresh_gpu_figures(s, common.settings().accounting_tz, time.time())


@limits.command("refresh")
@common.command
def refresh() -> None:
    """Write the month's attributed GPU-hours of every subject with a GPU-hours limit now
    (the tick does it on every run)."""
    common.echo(f"{_refresh()} GPU-hours figure(s) written")


def _scope(user: str | None, project: str | None, default: bool) -> tuple[str, str | None]:
    given = [x for x in (user is not None, project is not None, default) if x]
    if len(given) != 1:
        common.fail("say whose limits: exactly one of --user U, --project P or --default")
    if user is not None:
        return "user", user
    if project is not None:
        return "project", project
    return "default", None


def _pairs(items: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        kind, sep, value = item.partition("=")
        if not sep:
            common.fail(f"limits are KIND=VALUE, e.g. requests_minute=30 (not {item!r})")
        out[kind.strip()] = value.strip()
    return out


@limits.command("set")
@common.command
def set_(
    values: Annotated[
        list[str],
        typer.Argument(
            help="KIND=VALUE, KIND one of requests_minute, requests_hour, requests_day, requests_month, "
            "concurrent, tokens_day, tokens_month, gpu_hours_month."
        ),
    ],
    user: UserOption = None,
    project: ProjectOption = None,
    default: DefaultOption = False,
    service: ServiceOption = None,
) -> None:
    """Set limits of a user, a project or the defaults (all checked before any is written)."""
    from ..db import write_session
    from ..limits import set_limits

    scope, subject = _scope(user, project, default)
    pairs = _pairs(values)
    with write_session(common.engine()) as s:
        set_limits(s, scope, subject, service, pairs)
    _refresh()
    common.echo(f"{len(pairs)} limit(s) set")


@limits.command("remove")
@common.command
def remove_(
    kinds: Annotated[list[str] | None, typer.Argument(help="Kinds to remove (default: all of them).")] = None,
    user: UserOption = None,
    project: ProjectOption = None,
    default: DefaultOption = False,
    service: ServiceOption = None,
) -> None:
    """Remove limits of a user, a project or the defaults."""
    from ..db import write_session
    from ..limits import remove_limits

    scope, subject = _scope(user, project, default)
    with write_session(common.engine()) as s:
        n = remove_limits(s, scope, subject, service, kinds or [])
    _refresh()
    common.echo(f"{n} limit(s) removed")


@limits.command("list")
@common.command
def list_limits_(fmt: common.FormatOption = common.Format.table) -> None:
    """Every limit: scope, subject, service ('*' = all together), kind, value."""
    from ..db import read_session
    from ..limits import list_limits

    with read_session(common.engine()) as s:
        rows = list_limits(s)
    common.echo(common.render(rows, fmt, ("scope", "subject", "service", "limit", "value")))


@common.command
def usage(
    user: Annotated[str | None, typer.Option("--user", help="This user's month so far.")] = None,
    project: Annotated[str | None, typer.Option("--project", help="This project's month so far.")] = None,
    fmt: common.FormatOption = common.Format.table,
) -> None:
    """A user's or a project's month so far (requests, tokens, GPU-hours) and its limits:
    what the user sees at GET /v1/usage."""
    import json

    from ..usage import usage_of_project, usage_of_user

    if (user is None) == (project is None):
        common.fail("say whose usage: --user U or --project P")
    settings = common.settings()
    eng = common.engine()  # a missing or old database: the usual one-line error
    tz = settings.accounting_tz
    if user is not None:
        doc = usage_of_user(settings, user, tz)
    else:
        assert project is not None
        doc = usage_of_project(eng, settings, project, tz)
    if fmt is common.Format.json:
        common.echo(json.dumps(doc, indent=2))
        return
    head = {k: v for k, v in doc.items() if k not in ("limits", "users", "object")}
    common.echo(common.render([head], fmt))
    if fmt is common.Format.table and doc["limits"]:
        common.echo("")
        common.echo(common.render(doc["limits"], fmt))


def register(app: typer.Typer) -> None:
    app.command("usage")(usage)
    app.add_typer(projects, name="projects")
    app.add_typer(limits, name="limits")
