"""`saia-ctl requests list`: find a user's request ("my request failed at 14:02")."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from . import common

app = typer.Typer(help="Recorded requests.", no_args_is_help=True)

COLUMNS = (
    "started_at", "user", "service", "status", "outcome", "duration_s", "ttfb_s",
    "input_tokens", "output_tokens", "slurm_job_id", "inference_id", "error",
)  # fmt: skip


@app.command("list")
@common.command
def list_requests(
    user: Annotated[str | None, typer.Option("--user", help="Only this user.")] = None,
    service: Annotated[str | None, typer.Option("--service", help="Only this service.")] = None,
    status: Annotated[
        str | None,
        typer.Option("--status", help="HTTP status (502), class (5xx), ok, error, aborted or in-flight."),
    ] = None,
    since: Annotated[
        str | None, typer.Option("--since", help="Started at or after (YYYY-MM-DD or ISO, UTC).")
    ] = None,
    until: Annotated[
        str | None, typer.Option("--until", help="Started before (YYYY-MM-DD or ISO, UTC).")
    ] = None,
    limit: Annotated[
        int, typer.Option("--limit", "-n", min=0, help="At most this many, newest first.")
    ] = 100,
    fmt: common.FormatOption = common.Format.table,
) -> None:
    """Requests, newest first, with status, outcome, timings and tokens."""
    from ..accounting.listing import list_requests as query
    from ..accounting.listing import parse_status
    from ..accounting.months import parse_time
    from ..db import read_session

    if status is not None:
        parse_status(status)
    since_t = parse_time(since) if since else None
    until_t = parse_time(until) if until else None
    with read_session(common.engine()) as s:
        rows = query(
            s,
            time.time(),
            user=user,
            service=service,
            status=status,
            since=since_t,
            until=until_t,
            limit=limit,
        )
    common.echo(common.render(rows, fmt, COLUMNS if fmt is common.Format.table else None))


def register(app_: typer.Typer) -> None:
    app_.add_typer(app, name="requests")
