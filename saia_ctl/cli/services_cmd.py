"""`saia-ctl services ...`: the configured services."""

from __future__ import annotations

import json

import typer
from sqlalchemy import select

from . import common

app = typer.Typer(help="Configured services.", no_args_is_help=True)

COLUMNS = (
    "id",
    "name",
    "owned_by",
    "minimum_number_instances",
    "maximum_number_instances",
    "inferences_per_instance",
    "job_expiry_time",
    "enabled",
)


@app.command("list")
@common.command
def list_services(fmt: common.FormatOption = common.Format.table) -> None:
    """List the services imported by `saia-ctl init`."""
    from ..db import read_session
    from ..durations import format_duration
    from ..models import Service

    rows = []
    with read_session(common.engine()) as s:
        for svc in s.scalars(select(Service).order_by(Service.id)):
            rows.append(
                {
                    "id": svc.id,
                    "name": svc.name,
                    "owned_by": svc.owned_by,
                    "input": json.loads(svc.input),
                    "output": json.loads(svc.output),
                    "sbatch": svc.sbatch,
                    "minimum_number_instances": svc.minimum_number_instances,
                    "maximum_number_instances": svc.maximum_number_instances,
                    "inferences_per_instance": svc.inferences_per_instance,
                    "job_expiry_time": format_duration(svc.job_expiry_time),
                    "ready_timeout": svc.ready_timeout,
                    "idle_timeout": svc.idle_timeout,
                    "scale_down_cooldown": svc.scale_down_cooldown,
                    "health_failures": svc.health_failures,
                    "request_hold_time": svc.request_hold_time,
                    "enabled": svc.enabled,
                }
            )
    columns = COLUMNS if fmt is common.Format.table else (list(rows[0]) if rows else COLUMNS)
    common.echo(common.render(rows, fmt, columns))
