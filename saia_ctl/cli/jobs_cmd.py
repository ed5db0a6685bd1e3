"""`saia-ctl jobs list`: the backend jobs, for admins."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer

from . import common

app = typer.Typer(help="Backend jobs (Slurm) of the services.", no_args_is_help=True)

COLUMNS = (
    "service",
    "slurm_job_id",
    "state",
    "node",
    "port",
    "in_flight",
    "age",
    "walltime_left",
    "end_reason",
    "slurm_state",
    "exit_code",
)


@app.command("list")
@common.command
def list_jobs(
    all_jobs: Annotated[bool, typer.Option("--all", "-a", help="Ended jobs too.")] = False,
    service: Annotated[str | None, typer.Option("--service", help="Only this service.")] = None,
    since: Annotated[
        str | None,
        typer.Option("--since", help="Only jobs alive at or after this time (YYYY-MM-DD or ISO, UTC)."),
    ] = None,
    fmt: common.FormatOption = common.Format.table,
) -> None:
    """Jobs with state, node, port, requests in flight, age, walltime left, why they ended, and
    Slurm's own end state and exit code (sacct) where the tick could read them."""
    from ..accounting.listing import list_jobs as query
    from ..accounting.months import parse_time
    from ..db import read_session
    from ..durations import format_duration

    since_t = parse_time(since) if since else None
    with read_session(common.engine()) as s:
        rows = query(s, time.time(), all_jobs=all_jobs or since_t is not None, service=service, since=since_t)
    if fmt is common.Format.table:
        table: list[dict[str, Any]] = []
        for r in rows:
            left = r["walltime_left_s"]
            table.append(
                {
                    **r,
                    "age": format_duration(r["age_s"]),
                    "walltime_left": "" if left is None else format_duration(left),
                }
            )
        common.echo(common.render(table, fmt, COLUMNS))
    else:
        common.echo(common.render(rows, fmt, list(rows[0]) if rows else ["service", "slurm_job_id", "state"]))


def register(app_: typer.Typer) -> None:
    app_.add_typer(app, name="jobs")
